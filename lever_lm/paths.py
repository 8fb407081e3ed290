"""Artifact paths: one template per stage output, and the target lists the Snakefile expands.

Templates keep Snakemake wildcards ({dataset}, {split}, {encoder}, {sampler}, {beam_model}, {scatteritem}) and are
filled by ``str.format`` where a concrete path is needed. Parameter-dependent names (anchors, candidates,
``ex_name``) are derived from the config, so changing a parameter yields a new artifact instead of overwriting one.
"""

from __future__ import annotations

SPLITS = ("train", "val")
VERSIONS = ("v0", "v1", "v2", "v3", "v4")
# ICL baselines that need no beams or selector; SimRetriever-{i2i,t2t,i2t}: RICES-style similarity retrieval
BASELINES = ("RandomRetriever", "ZeroShot", "SimRetriever-i2i", "SimRetriever-t2t", "SimRetriever-i2t")

RESULTS = "results/{dataset}"
RECORDS = RESULTS + "/records/{split}.parquet"
EMBEDDING_PREFIX = RESULTS + "/embeddings/{encoder}/{split}"
EMBEDDING_IMAGE = EMBEDDING_PREFIX + ".image.npy"
EMBEDDING_TEXT = EMBEDDING_PREFIX + ".text.npy"
EMBEDDING_META = EMBEDDING_PREFIX + ".meta.json"
INDEX_IMAGE = RESULTS + "/index/{encoder}/train.image.faiss"
INDEX_TEXT = RESULTS + "/index/{encoder}/train.text.faiss"
ANCHORS = RESULTS + "/anchors/{anchor_name}{replicate}.json"
CANDIDATES = RESULTS + "/candidates/{sampler}/{candidate_name}{replicate}.json"
TEST_POOL = RESULTS + "/test_pools/{sampler}/{pool_name}.json"
TINY_LVLM = RESULTS + "/models/{beam_model}{replicate}"
BEAM_DIR = RESULTS + "/beam/{beam_model}/{sampler}/{ex_name}{replicate}"
BEAM_SHARD = BEAM_DIR + "/shards/{scatteritem}.jsonl"
BEAMS = BEAM_DIR + "/beams.json"
# Stage 5: one selector per (version, beam_model, sampler), under the seed's model_cpk/{version} prefix (the seed's
# name for its checkpoint folder, kept because users know its paths; {lever_lm} is the feature choice, config key
# `lever_lm`).
SELECTOR_DIR = RESULTS + "/model_cpk/{version}/{beam_model}/{sampler}/{ex_name}{replicate}/{lever_lm}"
SELECTOR_BEST = SELECTOR_DIR + "/best.ckpt"
SELECTOR_LAST = SELECTOR_DIR + "/last.ckpt"
SELECTOR_METRICS = SELECTOR_DIR + "/metrics.json"
SELECTOR_RESUME = SELECTOR_DIR + "/resume"  # not a rule output: survives a killed job, so training resumes
# Stage 6: ICL inference of one selector cell, and the baselines (which need no beams or selector).
INFERENCE_DIR = RESULTS + "/icl_inference/{version}/{beam_model}/{sampler}/{ex_name}{replicate}/{lever_lm}"
INFERENCE_METRICS = INFERENCE_DIR + "/metrics.json"
INFERENCE_PREDICTIONS = INFERENCE_DIR + "/predictions.parquet"
BASELINE_PREFIX = RESULTS + "/icl_inference/baseline/{beam_model}_{baseline}_baseline{replicate}"
BASELINE_METRICS = BASELINE_PREFIX + "_metrics.json"
BASELINE_PREDICTIONS = BASELINE_PREFIX + "_predictions.parquet"
# The imitation ceiling (a diagnostic): beam search for val queries over their test pool, and its top beams evaluated.
CEILING_DIR = RESULTS + "/ceiling/{beam_model}/{sampler}/{ex_name}{replicate}"
CEILING_SHARD = CEILING_DIR + "/shards/{scatteritem}.jsonl"
CEILING_BEAMS = CEILING_DIR + "/beams.json"
CEILING_METRICS = CEILING_DIR + "/metrics.json"
CEILING_PREDICTIONS = CEILING_DIR + "/predictions.parquet"
REPORT_DIR = RESULTS + "/{report_name}"
REPORT_TABLES = REPORT_DIR + "/tables.md"
REPORT_TABLES_HTML = REPORT_DIR + "/tables.html"  # what `snakemake --report` shows inline (it cannot render .md)
REPORT_OVERLAP = REPORT_DIR + "/selection_overlap.csv"
REPORT_SCORES = REPORT_DIR + "/scores.csv"  # every cell x shot with its bootstrap interval and replicate spread
REPORT_COMPARISONS = REPORT_DIR + "/comparisons.csv"  # paired differences of selector cells vs the baselines
REPORT_PLOT = REPORT_DIR + "/plots/{beam_model}_{version}.png"


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
    """A template with the config-derived names and the given wildcards filled; others stay as wildcards.

    ``{replicate}`` defaults to "" (replicate 0, the config as written); pass ``replicate="{replicate}"`` to keep it.
    """
    names = {
        "dataset": config["dataset"]["name"],
        "anchor_name": anchor_name(config),
        "candidate_name": candidate_name(config),
        "pool_name": pool_name(config),
        "ex_name": ex_name(config),
        "lever_lm": config["lever_lm"],
        "replicate": "",
        "report_name": config.get("report", {}).get("name", "report"),
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


def selector_cells(config: dict) -> list[dict[str, str]]:
    """The (version, beam_model, sampler, replicate) wildcards of every configured selector, in table order."""
    from lever_lm import replicates

    return [
        {"version": version, "beam_model": beam_model, "sampler": sampler, "replicate": replicates.suffix(seed)}
        for seed in replicates.seeds(config)
        for version in config["versions"]
        for beam_model in config["beam_models"]
        for sampler in config["samplers"]
    ]


def baseline_cells(config: dict) -> list[dict[str, str]]:
    """Every baseline run: the random one per replicate, the others per replicate of their beam model's weights."""
    from lever_lm import replicates

    cells = [
        {
            "beam_model": beam_model,
            "baseline": baseline,
            "replicate": replicates.baseline_suffix(config, beam_model, baseline, seed),
        }
        for seed in replicates.seeds(config)
        for beam_model in config["beam_models"]
        for baseline in config["inference"]["baselines"]
    ]
    return list({tuple(cell.values()): cell for cell in cells}.values())


def ceiling_enabled(config: dict) -> bool:
    return bool(config.get("ceiling", {}).get("enabled", True))


def ceiling_cells(config: dict) -> list[dict[str, str]]:
    """Every imitation-ceiling run (none when ``ceiling.enabled`` is false): per beam model and sampler, and per
    replicate only where the beam model's weights change with it (the ceiling uses no seed of its own)."""
    from lever_lm import replicates

    if not ceiling_enabled(config):
        return []
    cells = [
        {"beam_model": beam_model, "sampler": sampler, "replicate": replicates.model_suffix(config, beam_model, seed)}
        for seed in replicates.seeds(config)
        for beam_model in config["beam_models"]
        for sampler in config["samplers"]
    ]
    return list({tuple(cell.values()): cell for cell in cells}.values())


def plot_cells(config: dict) -> list[dict[str, str]]:
    """One accuracy-vs-shots plot per (version, beam_model)."""
    return [
        {"version": version, "beam_model": beam_model}
        for version in config["versions"]
        for beam_model in config["beam_models"]
    ]


def all_targets(config: dict) -> list[str]:
    """Every final artifact of the configured matrix: beams, selectors, inference cells, baselines, the imitation
    ceiling (when enabled), report."""
    from lever_lm import replicates

    targets = embedding_targets(config, config["selector_encoder"])
    for sampler in config["samplers"]:
        targets.append(fill(TEST_POOL, config, sampler=sampler))
        for seed in replicates.seeds(config):
            replicate = replicates.suffix(seed)
            targets.append(fill(CANDIDATES, config, sampler=sampler, replicate=replicate))
            for beam_model in config["beam_models"]:
                targets.append(fill(BEAMS, config, sampler=sampler, beam_model=beam_model, replicate=replicate))
    for cell in selector_cells(config):
        targets.append(fill(SELECTOR_METRICS, config, **cell))
        targets.append(fill(INFERENCE_METRICS, config, **cell))
    targets += [fill(BASELINE_METRICS, config, **cell) for cell in baseline_cells(config)]
    targets += [fill(CEILING_METRICS, config, **cell) for cell in ceiling_cells(config)]
    targets.append(fill(REPORT_TABLES, config))
    return targets
