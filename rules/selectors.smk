# Stage 5: one selector ("Lever-LM", versions v0-v4) per (beam_model, sampler, version), trained on the beams.


rule train_selector:
    input:
        **SELECTOR_TRAIN_EMBEDDINGS,
        beams=path(paths.BEAMS),
        candidates=path(paths.CANDIDATES),
        init_checkpoint=selector_init_checkpoint,
    output:
        best=paths.SELECTOR_BEST,
        last=paths.SELECTOR_LAST,
        metrics=paths.SELECTOR_METRICS,
    log:
        "logs/train_selector/{dataset}_{version}_{beam_model}_{sampler}_{ex_name}{replicate}_{lever_lm}.log",
    benchmark:
        "benchmarks/train_selector/{dataset}_{version}_{beam_model}_{sampler}_{ex_name}{replicate}_{lever_lm}.tsv"
    conda:
        CONDA_ENV
    threads: config["threads"]["selector"]
    resources:
        mem_mb=RULE_RESOURCES.mem_mb("train_selector"),
        runtime=RULE_RESOURCES.runtime("train_selector"),
        gpu=1,
    params:
        selector=replicate_section("selector"),
    script:
        "../workflow_scripts/train_selector.py"
