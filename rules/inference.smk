# Stage 6: ICL inference of every selector cell and of the baselines, scored (VQA accuracy or CIDEr).

INFERENCE_INPUTS = dict(
    train_records=path(paths.RECORDS, split="train"),
    val_records=path(paths.RECORDS, split="val"),
    **selector_embeddings("train"),
    **selector_embeddings("val"),
)
INFERENCE_PARAMS = inference_params(config)


rule icl_inference:
    input:
        **INFERENCE_INPUTS,
        checkpoint=paths.SELECTOR_BEST,
        test_pool=path(paths.TEST_POOL),
        weights=lvlm_weights,
    output:
        metrics=paths.INFERENCE_METRICS,
        predictions=paths.INFERENCE_PREDICTIONS,
    log:
        "logs/icl_inference/{dataset}_{version}_{beam_model}_{sampler}_{ex_name}{replicate}_{lever_lm}.log",
    benchmark:
        "benchmarks/icl_inference/{dataset}_{version}_{beam_model}_{sampler}_{ex_name}{replicate}_{lever_lm}.tsv"
    conda:
        CONDA_ENV
    threads: config["threads"]["inference"]
    resources:
        mem_mb=RULE_RESOURCES.mem_mb("icl_inference"),
        runtime=RULE_RESOURCES.runtime("icl_inference"),
        gpu=1,
    params:
        entry=beam_model_entry,
        inference=replicate_inference_params,
        replicate=replicate_seed,
        task=config["task"],
    script:
        "../workflow_scripts/icl_inference.py"


rule baseline_inference:
    input:
        **INFERENCE_INPUTS,
        weights=lvlm_weights,
    output:
        metrics=paths.BASELINE_METRICS,
        predictions=paths.BASELINE_PREDICTIONS,
    log:
        "logs/baseline_inference/{dataset}_{beam_model}_{baseline}{replicate}.log",
    benchmark:
        "benchmarks/baseline_inference/{dataset}_{beam_model}_{baseline}{replicate}.tsv"
    conda:
        CONDA_ENV
    threads: config["threads"]["inference"]
    resources:
        mem_mb=RULE_RESOURCES.mem_mb("baseline_inference"),
        runtime=RULE_RESOURCES.runtime("baseline_inference"),
        gpu=1,
    params:
        entry=beam_model_entry,
        inference=replicate_inference_params,
        replicate=replicate_seed,
        task=config["task"],
    script:
        "../workflow_scripts/baseline_inference.py"
