"""Artifact paths: one template per stage output, and the target lists the Snakefile expands.

Templates keep Snakemake wildcards ({dataset}, {split}, {encoder}, {sampler}, {beam_model}, {scatteritem}) and are
filled by ``str.format`` where a concrete path is needed. Parameter-dependent names (anchors, candidates,
``ex_name``) are derived from the config, so changing a parameter yields a new artifact instead of overwriting one.
"""

from __future__ import annotations

SPLITS = ("train", "val")

RESULTS = "results/{dataset}"
RECORDS = RESULTS + "/records/{split}.parquet"
EMBEDDING_PREFIX = RESULTS + "/embeddings/{encoder}/{split}"
EMBEDDING_IMAGE = EMBEDDING_PREFIX + ".image.npy"
EMBEDDING_TEXT = EMBEDDING_PREFIX + ".text.npy"
EMBEDDING_META = EMBEDDING_PREFIX + ".meta.json"
INDEX_IMAGE = RESULTS + "/index/{encoder}/train.image.faiss"
INDEX_TEXT = RESULTS + "/index/{encoder}/train.text.faiss"
ANCHORS = RESULTS + "/anchors/{anchor_name}.json"
CANDIDATES = RESULTS + "/candidates/{sampler}/{candidate_name}.json"
TEST_POOL = RESULTS + "/test_pools/{sampler}/{pool_name}.json"
TINY_LVLM = RESULTS + "/models/{beam_model}"
BEAM_DIR = RESULTS + "/beam/{beam_model}/{sampler}/{ex_name}"
BEAM_SHARD = BEAM_DIR + "/shards/{scatteritem}.jsonl"
BEAMS = BEAM_DIR + "/beams.json"


def anchor_name(config: dict) -> str:
    anchors = config["anchors"]
    return f"sample{anchors['sample_num']}_seed{anchors['seed']}"


def candidate_name(config: dict) -> str:
    cands = config["candidates"]
    same_image = "" if cands["exclude_same_image"] else "_sameimg"
    return f"{anchor_name(config)}_cand{cands['cand_num']}_candseed{cands['seed']}{same_image}"


def pool_name(config: dict) -> str:
    cands = config["candidates"]
    return f"cand{cands['cand_num']}_seed{cands['seed']}"


def ex_name(config: dict) -> str:
    """Generation parameters of a beam-search run, e.g. infoscore_left_beam5_shot2_cand64_sample800."""
    from lever_lm import beam_search

    return beam_search.ex_name(beam_search.from_pipeline_config(config))


def fill(template: str, config: dict, **wildcards: str) -> str:
    """A template with the config-derived names and the given wildcards filled; others stay as wildcards."""
    names = {
        "dataset": config["dataset"]["name"],
        "anchor_name": anchor_name(config),
        "candidate_name": candidate_name(config),
        "pool_name": pool_name(config),
        "ex_name": ex_name(config),
    }
    names.update(wildcards)

    class _KeepUnknown(dict):
        def __missing__(self, key):
            return "{" + key + "}"

    return template.format_map(_KeepUnknown(names))


def embedding_targets(config: dict, encoder: str) -> list[str]:
    return [
        fill(template, config, encoder=encoder, split=split)
        for split in SPLITS
        for template in (EMBEDDING_IMAGE, EMBEDDING_TEXT, EMBEDDING_META)
    ]


def all_targets(config: dict) -> list[str]:
    """Every final artifact of the configured matrix that the implemented stages produce."""
    targets = embedding_targets(config, config["selector_encoder"])
    for sampler in config["samplers"]:
        targets.append(fill(CANDIDATES, config, sampler=sampler))
        targets.append(fill(TEST_POOL, config, sampler=sampler))
        for beam_model in config["beam_models"]:
            targets.append(fill(BEAMS, config, sampler=sampler, beam_model=beam_model))
    return targets
