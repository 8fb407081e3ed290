# The toy world of the embedded default: the generated dataset and the tiny LVLMs (pretrained on its train split,
# or left at random init). lever_lm.toy holds the toy logic (dataset, pretraining); the tiny models themselves are
# built by lever_lm.lvlm.tiny.

if "toy" in config["dataset"]:

    rule toy_dataset:
        output:
            train=directory(split_files("train")["image_dir"]),
            val=directory(split_files("val")["image_dir"]),
            jsons=[
                split_files(split)[kind]
                for split in paths.SPLITS
                for kind in ("questions", "annotations")
            ],
        log:
            f"logs/toy_dataset/{DATASET}.log",
        benchmark:
            f"benchmarks/toy_dataset/{DATASET}.tsv"
        group:
            "prep"
        conda:
            CONDA_ENV
        threads: 1
        resources:
            mem_mb=RULE_RESOURCES.mem_mb("toy_dataset"),
            runtime=RULE_RESOURCES.runtime("toy_dataset"),
        params:
            root=Path(split_files("train")["image_dir"]).parent,
            toy=config["dataset"]["toy"],
        script:
            "../workflow_scripts/toy_dataset.py"


if TINY_BEAM_MODELS:

    rule tiny_lvlm:
        input:
            unpack(tiny_lvlm_inputs),
        output:
            model_dir=directory(paths.TINY_LVLM),
        log:
            "logs/tiny_lvlm/{dataset}_{beam_model}{replicate}.log",
        benchmark:
            "benchmarks/tiny_lvlm/{dataset}_{beam_model}{replicate}.tsv"
        wildcard_constraints:
            beam_model=_one_of(TINY_BEAM_MODELS),
        # the longest jobs, and every LVLM stage waits for them: start them first, the embeddings beside them later
        priority: 10
        conda:
            CONDA_ENV
        # one thread: deterministic, and the two tiny LVLMs pretrain side by side on a 2-core machine
        threads: 1
        resources:
            mem_mb=RULE_RESOURCES.mem_mb("tiny_lvlm"),
            runtime=RULE_RESOURCES.runtime("tiny_lvlm"),
        params:
            entry=beam_model_entry,
        script:
            "../workflow_scripts/tiny_lvlm.py"
