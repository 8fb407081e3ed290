# Stage 1: raw dataset (a generated toy one, or the user's local copy) -> normalised records per split.

if "toy" in config["dataset"]:

    rule toy_dataset:
        output:
            train=directory(split_files("train")["image_dir"]),
            val=directory(split_files("val")["image_dir"]),
            jsons=[
                split_files(split)[kind]
                for split in P.SPLITS
                for kind in ("questions", "annotations")
            ],
        log:
            f"logs/toy_dataset/{DATASET}.log",
        benchmark:
            f"benchmarks/toy_dataset/{DATASET}.tsv"
        conda:
            CONDA_ENV
        threads: 1
        params:
            root=lambda wildcards, output: Path(output.train).parent,
            toy=config["dataset"]["toy"],
        script:
            "../workflow_scripts/toy_dataset.py"


rule records:
    input:
        unpack(raw_split_files),
    output:
        records=P.RECORDS,
    log:
        "logs/records/{dataset}_{split}.log",
    benchmark:
        "benchmarks/records/{dataset}_{split}.tsv"
    conda:
        CONDA_ENV
    threads: 1
    params:
        format=config["dataset"]["format"],
        root=config["dataset"]["root"],
        caption_year=config["dataset"]["caption_year"],
    script:
        "../workflow_scripts/records.py"
