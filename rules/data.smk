# Stage 1: raw dataset (a generated toy one, rules/toy.smk, or the user's local copy) -> normalised records per split.


rule records:
    input:
        unpack(raw_split_files),
    output:
        records=paths.RECORDS,
    log:
        "logs/records/{dataset}_{split}.log",
    benchmark:
        "benchmarks/records/{dataset}_{split}.tsv"
    group:
        "prep"
    conda:
        CONDA_ENV
    threads: 1
    resources:
        mem_mb=RULE_RESOURCES.mem_mb("records"),
        runtime=RULE_RESOURCES.runtime("records"),
    params:
        format=config["dataset"]["format"],
        caption_year=config["dataset"]["caption_year"],
    script:
        "../workflow_scripts/records.py"
