# Stage 4: InfoScore beam search per (beam_model, sampler), sharded by anchor (one GPU job per shard), then gathered.

if TINY_BEAM_MODELS:

    rule tiny_lvlm:
        input:
            train=path(P.RECORDS, split="train"),
            val=path(P.RECORDS, split="val"),
        output:
            model_dir=directory(P.TINY_LVLM),
        log:
            "logs/tiny_lvlm/{dataset}_{beam_model}.log",
        benchmark:
            "benchmarks/tiny_lvlm/{dataset}_{beam_model}.tsv"
        wildcard_constraints:
            beam_model=_one_of(TINY_BEAM_MODELS),
        conda:
            CONDA_ENV
        threads: 1
        params:
            entry=lambda wildcards: config["beam_models"][wildcards.beam_model],
        script:
            "../workflow_scripts/tiny_lvlm.py"


rule beam_shard:
    input:
        anchors=path(P.ANCHORS),
        candidates=path(P.CANDIDATES),
        train_records=path(P.RECORDS, split="train"),
        weights=lvlm_weights,
    output:
        shard=P.BEAM_SHARD,
    log:
        "logs/beam_shard/{dataset}_{beam_model}_{sampler}_{ex_name}_{scatteritem}.log",
    benchmark:
        "benchmarks/beam_shard/{dataset}_{beam_model}_{sampler}_{ex_name}_{scatteritem}.tsv"
    conda:
        CONDA_ENV
    threads: config["beam_search"]["threads"]
    resources:
        gpu=1,
    params:
        entry=lambda wildcards: config["beam_models"][wildcards.beam_model],
        beam_search=BEAM_SEARCH_PARAMS,
        cand_num=config["candidates"]["cand_num"],
        sample_num=config["anchors"]["sample_num"],
    script:
        "../workflow_scripts/beam_shard.py"


rule beam_gather:
    input:
        anchors=path(P.ANCHORS),
        shards=beam_shard_files,
    output:
        beams=P.BEAMS,
    log:
        "logs/beam_gather/{dataset}_{beam_model}_{sampler}_{ex_name}.log",
    benchmark:
        "benchmarks/beam_gather/{dataset}_{beam_model}_{sampler}_{ex_name}.tsv"
    conda:
        CONDA_ENV
    threads: 1
    script:
        "../workflow_scripts/beam_gather.py"
