# Config validation, wildcard constraints and path helpers shared by all rules.
import re
import sys
from pathlib import Path

import snakemake.benchmark

from lever_lm import paths
from lever_lm import replicates
from lever_lm.beam_search import WORKFLOW_KEYS
from lever_lm.config import (
    ConfigError,
    check_cand_num_fits_records,
    check_config,
    check_external_paths,
    check_model_files,
    check_output_dirs,
    inference_params,
    split_layout,
    validate_schema,
)
from lever_lm.lvlm.factory import is_pretrained, local_weight_paths

# lever_lm's checks: the schema (lever_lm/schemas/config.schema.yaml), which also fills its defaults, and the
# cross-key checks, each failure one message naming the key (or every missing path), without a traceback. Then what
# the files allow: incomplete weights dirs, and cand_num against the train records when they exist (else the records
# stage checks it).
try:
    check_config(validate_schema(config))
    check_external_paths(config)
    check_model_files(config)
    check_cand_num_fits_records(config)
except ConfigError as err:
    sys.exit(f"Invalid config: {err}")
try:
    check_output_dirs(config)
except ValueError as err:
    sys.exit(f"Cannot write outputs: {err}")

# Snakemake samples a running job's /proc (psutil, smaps_rollup) every 0.5 s for its first 30 samples, then every
# 30 s: here, where most jobs last 5-15 s, that cost the Snakemake process about 10% of a core, beside the jobs. Every
# 3 s still finds a job's peak memory (it plateaus once its imports are done); the wall time `s` is timed apart.
snakemake.benchmark.BENCHMARK_INTERVAL_SHORT = 3

DATASET = config["dataset"]["name"]
TINY_BEAM_MODELS = [
    name for name, entry in config["beam_models"].items() if entry["variant"] == "tiny"
]
CONDA_ENV = "../envs/lever.yaml"
# what determines beam-search results: a change of shards or threads must not rerun the search
BEAM_SEARCH_PARAMS = {
    key: value
    for key, value in config["beam_search"].items()
    if key not in WORKFLOW_KEYS
}


def _one_of(names):
    return "|".join(re.escape(name) for name in names)


wildcard_constraints:
    dataset=re.escape(DATASET),
    split="train|val",
    encoder=_one_of(config["encoders"]),
    sampler=_one_of(config["samplers"]),
    beam_model=_one_of(config["beam_models"]),
    ex_name=re.escape(paths.ex_name(config)),
    scatteritem=r"\d+-of-\d+",
    version="|".join(paths.VERSIONS),
    lever_lm=re.escape(config["lever_lm"]),
    baseline=_one_of(paths.BASELINES),
    replicate=replicates.wildcard_pattern(config),


scattergather:
    beam_shard=config["beam_search"]["shards"],
    ceiling_shard=config["ceiling"]["shards"],


def all_targets(config):
    return paths.all_targets(config)


def path(template, **wildcards):
    """A path template with the config-derived names filled in ({dataset}, {replicate} and others stay wildcards)."""
    return paths.fill(
        template,
        config,
        **{"dataset": "{dataset}", "replicate": "{replicate}", **wildcards},
    )


def replicate_config(wildcards):
    """The config of the job's replicate: seeds offset by the replicate seed (lever_lm.replicates)."""
    return replicates.config_for(config, replicates.seed_of(wildcards.replicate))


def replicate_section(name):
    """An input function: one config section as the job's replicate sees it."""
    return lambda wildcards: replicate_config(wildcards)[name]


def replicate_seed(wildcards):
    return replicates.seed_of(wildcards.replicate)


def beam_model_entry(wildcards):
    """The beam model's config entry in the job's replicate (its seeds differ where pretraining is replicated)."""
    return replicate_config(wildcards)["beam_models"][wildcards.beam_model]


def replicate_inference_params(wildcards):
    return inference_params(replicate_config(wildcards))


def split_files(split):
    """The dataset files one split is read from: questions/annotations json and the image dir."""
    files = split_layout(config["dataset"], split)
    return {key: str(value) for key, value in files.items()}


def raw_split_files(wildcards):
    return split_files(wildcards.split)


def encoder_weights(wildcards):
    """Local weights of a real CLIP encoder, so a missing path is reported before any job runs."""
    encoder = config["encoders"][wildcards.encoder]
    return [] if encoder["kind"] == "tiny" else [encoder["checkpoint"]]


def lvlm_weights(wildcards):
    """The tiny model dir built by rule tiny_lvlm, or the configured local weights of a real LVLM."""
    entry = config["beam_models"][wildcards.beam_model]
    if entry["variant"] == "tiny":
        seed = replicates.seed_of(wildcards.replicate)
        model = replicates.model_suffix(config, wildcards.beam_model, seed)
        return [path(paths.TINY_LVLM, beam_model=wildcards.beam_model, replicate=model)]
    return [weights for _, weights in local_weight_paths(wildcards.beam_model, entry)]


def beam_shard_files(wildcards):
    """The N shard files of one beam-search run (scattergather)."""
    return gather.beam_shard(paths.BEAM_SHARD, **dict(wildcards.items()))


def ceiling_shard_files(wildcards):
    """The N shard files of one imitation-ceiling beam search (scattergather)."""
    return gather.ceiling_shard(paths.CEILING_SHARD, **dict(wildcards.items()))


def selector_embeddings(split):
    """The selector encoder's stored embeddings of one split (image, text and their meta)."""
    encoder = config["selector_encoder"]
    return {
        f"{split}_image": path(paths.EMBEDDING_IMAGE, split=split, encoder=encoder),
        f"{split}_text": path(paths.EMBEDDING_TEXT, split=split, encoder=encoder),
        f"{split}_meta": path(paths.EMBEDDING_META, split=split, encoder=encoder),
    }


SELECTOR_TRAIN_EMBEDDINGS = selector_embeddings("train")


def selector_init_checkpoint(wildcards):
    """v4 starts from (and keeps a KL penalty to) the v3 selector of the same beam model and sampler."""
    if wildcards.version != "v4":
        return []
    return [
        paths.fill(
            paths.SELECTOR_BEST, config, **{**dict(wildcards.items()), "version": "v3"}
        )
    ]


def tiny_lvlm_inputs(wildcards):
    """Pretraining reads the train records only; a random-init build takes its vocabulary from both splits."""
    files = {"train": path(paths.RECORDS, split="train")}
    if not is_pretrained(config["beam_models"][wildcards.beam_model]):
        files["val"] = path(paths.RECORDS, split="val")
    return files
