# Stages 2-3: CLIP embeddings, faiss index, seeded anchors, candidate sets and test-time pools per sampler.


rule embeddings:
    input:
        records=paths.RECORDS,
        weights=encoder_weights,
    output:
        image=paths.EMBEDDING_IMAGE,
        text=paths.EMBEDDING_TEXT,
        meta=paths.EMBEDDING_META,
    log:
        "logs/embeddings/{dataset}_{encoder}_{split}.log",
    benchmark:
        "benchmarks/embeddings/{dataset}_{encoder}_{split}.tsv"
    conda:
        CONDA_ENV
    threads: config["threads"]["embeddings"]
    resources:
        mem_mb=RULE_RESOURCES.mem_mb("embeddings"),
        runtime=RULE_RESOURCES.runtime("embeddings"),
        gpu=1,
    params:
        encoder=lookup(dpath="encoders/{encoder}", within=config),
    script:
        "../workflow_scripts/embeddings.py"


rule faiss_index:
    input:
        image=path(paths.EMBEDDING_IMAGE, split="train"),
        text=path(paths.EMBEDDING_TEXT, split="train"),
        meta=path(paths.EMBEDDING_META, split="train"),
    output:
        image=paths.INDEX_IMAGE,
        text=paths.INDEX_TEXT,
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
        mem_mb=RULE_RESOURCES.mem_mb("faiss_index"),
        runtime=RULE_RESOURCES.runtime("faiss_index"),
    script:
        "../workflow_scripts/faiss_index.py"


rule anchors:
    input:
        records=path(paths.RECORDS, split="train"),
    output:
        anchors=path(paths.ANCHORS),
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
        mem_mb=RULE_RESOURCES.mem_mb("anchors"),
        runtime=RULE_RESOURCES.runtime("anchors"),
    params:
        anchors=replicate_section("anchors"),
    script:
        "../workflow_scripts/anchors.py"


SAMPLER_INPUTS = dict(
    train_records=path(paths.RECORDS, split="train"),
    train_image=path(
        paths.EMBEDDING_IMAGE, split="train", encoder=config["sampler_encoder"]
    ),
    train_text=path(
        paths.EMBEDDING_TEXT, split="train", encoder=config["sampler_encoder"]
    ),
    index_image=path(paths.INDEX_IMAGE, encoder=config["sampler_encoder"]),
    index_text=path(paths.INDEX_TEXT, encoder=config["sampler_encoder"]),
)


rule candidates:
    input:
        **SAMPLER_INPUTS,
        anchors=path(paths.ANCHORS),
    output:
        candidates=path(paths.CANDIDATES),
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
        mem_mb=RULE_RESOURCES.mem_mb("candidates"),
        runtime=RULE_RESOURCES.runtime("candidates"),
    params:
        candidates=config["candidates"],
    script:
        "../workflow_scripts/sample_candidates.py"


rule test_pool:
    input:
        **SAMPLER_INPUTS,
        query_records=path(paths.RECORDS, split="val"),
        query_image=path(
            paths.EMBEDDING_IMAGE, split="val", encoder=config["sampler_encoder"]
        ),
        query_text=path(
            paths.EMBEDDING_TEXT, split="val", encoder=config["sampler_encoder"]
        ),
    output:
        pool=path(paths.TEST_POOL),
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
        mem_mb=RULE_RESOURCES.mem_mb("test_pool"),
        runtime=RULE_RESOURCES.runtime("test_pool"),
    params:
        candidates=config["candidates"],
    script:
        "../workflow_scripts/sample_candidates.py"
