# The imitation ceiling (a diagnostic, never a method): InfoScore beam search for the val queries themselves, with
# their gold answers, over each sampler's test pool (sharded like beam_shard), then the top beams' ICDs evaluated
# like a selector cell. Planned only when ceiling.enabled; a beam model's replicates share it unless its weights
# differ (lever_lm.paths.ceiling_cells).

# what picks the ceiling's val queries: its own subset of the val queries the selector cells evaluate
CEILING_QUERY_PARAMS = {
    key: config["ceiling"][key] for key in ("max_queries", "query_seed")
}
EVALUATED_QUERY_PARAMS = {
    key: config["inference"][key] for key in ("max_queries", "query_seed")
}


rule ceiling_shard:
    input:
        val_records=path(paths.RECORDS, split="val"),
        train_records=path(paths.RECORDS, split="train"),
        test_pool=path(paths.TEST_POOL),
        weights=lvlm_weights,
    output:
        shard=paths.CEILING_SHARD,
    log:
        "logs/ceiling_shard/{dataset}_{beam_model}_{sampler}_{ex_name}{replicate}_{scatteritem}.log",
    benchmark:
        "benchmarks/ceiling_shard/{dataset}_{beam_model}_{sampler}_{ex_name}{replicate}_{scatteritem}.tsv"
    conda:
        CONDA_ENV
    threads: config["beam_search"]["threads"]
    resources:
        mem_mb=RULE_RESOURCES.mem_mb("ceiling_shard"),
        runtime=RULE_RESOURCES.runtime("ceiling_shard"),
        gpu=1,
    params:
        entry=beam_model_entry,
        beam_search=BEAM_SEARCH_PARAMS,
        cand_num=config["candidates"]["cand_num"],
        sample_num=config["anchors"]["sample_num"],
        ceiling=CEILING_QUERY_PARAMS,
        evaluated_queries=EVALUATED_QUERY_PARAMS,
    script:
        "../workflow_scripts/ceiling_shard.py"


rule ceiling_gather:
    input:
        val_records=path(paths.RECORDS, split="val"),
        shards=ceiling_shard_files,
    output:
        beams=paths.CEILING_BEAMS,
    log:
        "logs/ceiling_gather/{dataset}_{beam_model}_{sampler}_{ex_name}{replicate}.log",
    benchmark:
        "benchmarks/ceiling_gather/{dataset}_{beam_model}_{sampler}_{ex_name}{replicate}.tsv"
    localrule: True
    conda:
        CONDA_ENV
    threads: 1
    resources:
        mem_mb=RULE_RESOURCES.mem_mb("ceiling_gather"),
        runtime=RULE_RESOURCES.runtime("ceiling_gather"),
    params:
        ceiling=CEILING_QUERY_PARAMS,
        evaluated_queries=EVALUATED_QUERY_PARAMS,
    script:
        "../workflow_scripts/ceiling_gather.py"


rule ceiling_inference:
    input:
        beams=paths.CEILING_BEAMS,
        train_records=path(paths.RECORDS, split="train"),
        val_records=path(paths.RECORDS, split="val"),
        weights=lvlm_weights,
    output:
        metrics=paths.CEILING_METRICS,
        predictions=paths.CEILING_PREDICTIONS,
    log:
        "logs/ceiling_inference/{dataset}_{beam_model}_{sampler}_{ex_name}{replicate}.log",
    benchmark:
        "benchmarks/ceiling_inference/{dataset}_{beam_model}_{sampler}_{ex_name}{replicate}.tsv"
    conda:
        CONDA_ENV
    threads: config["threads"]["inference"]
    resources:
        mem_mb=RULE_RESOURCES.mem_mb("ceiling_inference"),
        runtime=RULE_RESOURCES.runtime("ceiling_inference"),
        gpu=1,
    params:
        entry=beam_model_entry,
        inference=replicate_inference_params,
        ceiling=CEILING_QUERY_PARAMS,
        replicate=replicate_seed,
        task=config["task"],
    script:
        "../workflow_scripts/ceiling_inference.py"
