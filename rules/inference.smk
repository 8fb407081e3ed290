# Stage 6: ICL inference of every selector cell and of the baselines, scored (VQA accuracy or CIDEr).

INFERENCE_INPUTS = dict(
    train_records=path(P.RECORDS, split="train"),
    val_records=path(P.RECORDS, split="val"),
    **selector_embeddings("train"),
    **selector_embeddings("val"),
)
INFERENCE_PARAMS = inference_params(config)


rule icl_inference:
    input:
        **INFERENCE_INPUTS,
        checkpoint=P.SELECTOR_BEST,
        test_pool=path(P.TEST_POOL),
        weights=lvlm_weights,
    output:
        metrics=P.INFERENCE_METRICS,
        predictions=P.INFERENCE_PREDICTIONS,
    log:
        "logs/icl_inference/{dataset}_{version}_{beam_model}_{sampler}_{ex_name}{replicate}_{lever_lm}.log",
    benchmark:
        "benchmarks/icl_inference/{dataset}_{version}_{beam_model}_{sampler}_{ex_name}{replicate}_{lever_lm}.tsv"
    conda:
        CONDA_ENV
    threads: config["threads"]["inference"]
    resources:
        mem_mb=RES.mem_mb("icl_inference"),
        runtime=RES.runtime("icl_inference"),
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
        metrics=P.BASELINE_METRICS,
        predictions=P.BASELINE_PREDICTIONS,
    log:
        "logs/baseline_inference/{dataset}_{beam_model}_{baseline}{replicate}.log",
    benchmark:
        "benchmarks/baseline_inference/{dataset}_{beam_model}_{baseline}{replicate}.tsv"
    conda:
        CONDA_ENV
    threads: config["threads"]["inference"]
    resources:
        mem_mb=RES.mem_mb("baseline_inference"),
        runtime=RES.runtime("baseline_inference"),
        gpu=1,
    params:
        entry=beam_model_entry,
        inference=replicate_inference_params,
        replicate=replicate_seed,
        task=config["task"],
    script:
        "../workflow_scripts/baseline_inference.py"
