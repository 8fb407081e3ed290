# Stages 2-3: CLIP embeddings, faiss index, seeded anchors, candidate sets and test-time pools per sampler.


rule embeddings:
    input:
        records=P.RECORDS,
        weights=encoder_weights,
    output:
        image=P.EMBEDDING_IMAGE,
        text=P.EMBEDDING_TEXT,
        meta=P.EMBEDDING_META,
    log:
        "logs/embeddings/{dataset}_{encoder}_{split}.log",
    benchmark:
        "benchmarks/embeddings/{dataset}_{encoder}_{split}.tsv"
    conda:
        CONDA_ENV
    threads: config["threads"]["embeddings"]
    resources:
        mem_mb=RES.mem_mb("embeddings"),
        runtime=RES.runtime("embeddings"),
        gpu=1,
    params:
        encoder=lambda wildcards: config["encoders"][wildcards.encoder],
    script:
        "../workflow_scripts/embeddings.py"


rule faiss_index:
    input:
        image=path(P.EMBEDDING_IMAGE, split="train"),
        text=path(P.EMBEDDING_TEXT, split="train"),
        meta=path(P.EMBEDDING_META, split="train"),
    output:
        image=P.INDEX_IMAGE,
        text=P.INDEX_TEXT,
    log:
        "logs/faiss_index/{dataset}_{encoder}.log",
    benchmark:
        "benchmarks/faiss_index/{dataset}_{encoder}.tsv"
    group:
        "sampling"
    conda:
        CONDA_ENV
    threads: 1
    resources:
        mem_mb=RES.mem_mb("faiss_index"),
        runtime=RES.runtime("faiss_index"),
    script:
        "../workflow_scripts/faiss_index.py"


rule anchors:
    input:
        records=path(P.RECORDS, split="train"),
    output:
        anchors=path(P.ANCHORS),
    log:
        "logs/anchors/{dataset}{replicate}.log",
    benchmark:
        "benchmarks/anchors/{dataset}{replicate}.tsv"
    group:
        "prep"
    conda:
        CONDA_ENV
    threads: 1
    resources:
        mem_mb=RES.mem_mb("anchors"),
        runtime=RES.runtime("anchors"),
    params:
        anchors=lambda wildcards: replicate_config(wildcards)["anchors"],
    script:
        "../workflow_scripts/anchors.py"


SAMPLER_INPUTS = dict(
    train_records=path(P.RECORDS, split="train"),
    train_image=path(
        P.EMBEDDING_IMAGE, split="train", encoder=config["sampler_encoder"]
    ),
    train_text=path(P.EMBEDDING_TEXT, split="train", encoder=config["sampler_encoder"]),
    index_image=path(P.INDEX_IMAGE, encoder=config["sampler_encoder"]),
    index_text=path(P.INDEX_TEXT, encoder=config["sampler_encoder"]),
)


rule candidates:
    input:
        **SAMPLER_INPUTS,
        anchors=path(P.ANCHORS),
    output:
        candidates=path(P.CANDIDATES),
    log:
        "logs/candidates/{dataset}_{sampler}{replicate}.log",
    benchmark:
        "benchmarks/candidates/{dataset}_{sampler}{replicate}.tsv"
    group:
        "sampling"
    conda:
        CONDA_ENV
    threads: config["threads"]["sampling"]
    resources:
        mem_mb=RES.mem_mb("candidates"),
        runtime=RES.runtime("candidates"),
    params:
        candidates=config["candidates"],
    script:
        "../workflow_scripts/sample_candidates.py"


rule test_pool:
    input:
        **SAMPLER_INPUTS,
        query_records=path(P.RECORDS, split="val"),
        query_image=path(
            P.EMBEDDING_IMAGE, split="val", encoder=config["sampler_encoder"]
        ),
        query_text=path(
            P.EMBEDDING_TEXT, split="val", encoder=config["sampler_encoder"]
        ),
    output:
        pool=path(P.TEST_POOL),
    log:
        "logs/test_pool/{dataset}_{sampler}.log",
    benchmark:
        "benchmarks/test_pool/{dataset}_{sampler}.tsv"
    group:
        "sampling"
    conda:
        CONDA_ENV
    threads: config["threads"]["sampling"]
    resources:
        mem_mb=RES.mem_mb("test_pool"),
        runtime=RES.runtime("test_pool"),
    params:
        candidates=config["candidates"],
    script:
        "../workflow_scripts/sample_candidates.py"
