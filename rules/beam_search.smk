# Stage 4: InfoScore beam search per (beam_model, sampler), sharded by anchor (one GPU job per shard), then gathered.
# A tiny beam model's dir comes from rule tiny_lvlm (rules/toy.smk).


rule beam_shard:
    input:
        anchors=path(paths.ANCHORS),
        candidates=path(paths.CANDIDATES),
        train_records=path(paths.RECORDS, split="train"),
        weights=lvlm_weights,
    output:
        shard=paths.BEAM_SHARD,
    log:
        "logs/beam_shard/{dataset}_{beam_model}_{sampler}_{ex_name}{replicate}_{scatteritem}.log",
    benchmark:
        "benchmarks/beam_shard/{dataset}_{beam_model}_{sampler}_{ex_name}{replicate}_{scatteritem}.tsv"
    conda:
        CONDA_ENV
    threads: config["beam_search"]["threads"]
    resources:
        mem_mb=RULE_RESOURCES.mem_mb("beam_shard"),
        runtime=RULE_RESOURCES.runtime("beam_shard"),
        gpu=1,
    params:
        entry=beam_model_entry,
        beam_search=BEAM_SEARCH_PARAMS,
        cand_num=config["candidates"]["cand_num"],
        sample_num=config["anchors"]["sample_num"],
    script:
        "../workflow_scripts/beam_shard.py"


rule beam_gather:
    input:
        anchors=path(paths.ANCHORS),
        shards=beam_shard_files,
    output:
        beams=paths.BEAMS,
    log:
        "logs/beam_gather/{dataset}_{beam_model}_{sampler}_{ex_name}{replicate}.log",
    benchmark:
        "benchmarks/beam_gather/{dataset}_{beam_model}_{sampler}_{ex_name}{replicate}.tsv"
    localrule: True
    conda:
        CONDA_ENV
    threads: 1
    resources:
        mem_mb=RULE_RESOURCES.mem_mb("beam_gather"),
        runtime=RULE_RESOURCES.runtime("beam_gather"),
    script:
        "../workflow_scripts/beam_gather.py"
