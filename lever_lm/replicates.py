"""Replicate seeds (config key ``replicates``): the same experiment under other seeds, as a DAG dimension.

Replicate ``r`` runs with ``anchors.seed + r``, ``selector.seed + r`` and ``inference.retriever_seed + r``; with
``replicates.pretrain`` also each tiny beam model's ``seed + r`` and ``pretrain.seed + r`` (the toy's tiny LVLMs,
whose pretraining is where results move between machines). ``r = 0`` is the config as written: its artifacts keep
their unsuffixed names, so adding replicates to a finished run adds jobs and reruns none. Replicate ``r > 0``
appends ``_rep{r}`` to the names of the artifacts it changes (the ``{replicate}`` wildcard of lever_lm.paths).
"""

from __future__ import annotations

import copy
import re
from collections.abc import Mapping
from typing import Any

RANDOM_BASELINE = "RandomRetriever"  # the only baseline with a seed of its own
_SUFFIX = re.compile(r"_rep(\d+)")


def suffix(seed: int) -> str:
    """The ``{replicate}`` wildcard value of a replicate seed: "" for 0, ``_rep{seed}`` otherwise."""
    return "" if seed == 0 else f"_rep{seed}"


def seed_of(value: str) -> int:
    """The replicate seed of a ``{replicate}`` wildcard value (the inverse of ``suffix``)."""
    if value == "":
        return 0
    match = _SUFFIX.fullmatch(value)
    if match is None or match.group(1) == "0":
        raise ValueError(f"replicate wildcard {value!r}: expected '' or '_rep<seed>' with seed > 0")
    return int(match.group(1))


def seeds(config: Mapping[str, Any]) -> list[int]:
    return list(config.get("replicates", {}).get("seeds", [0]))


def replicates_pretraining(config: Mapping[str, Any], beam_model: str) -> bool:
    entry = config["beam_models"][beam_model]
    return bool(config.get("replicates", {}).get("pretrain", False)) and entry.get("variant") == "tiny"


def model_suffix(config: Mapping[str, Any], beam_model: str, seed: int) -> str:
    """The replicate suffix of a beam model's weights: its own only where its pretraining is replicated."""
    return suffix(seed) if replicates_pretraining(config, beam_model) else ""


def baseline_suffix(config: Mapping[str, Any], beam_model: str, baseline: str, seed: int) -> str:
    """Baselines other than the random one change with a replicate only through its beam model's weights."""
    if baseline == RANDOM_BASELINE:
        return suffix(seed)
    return model_suffix(config, beam_model, seed)


def config_for(config: Mapping[str, Any], seed: int) -> dict[str, Any]:
    """The config of replicate ``seed``: every seed in the replicate's scope offset by ``seed`` (a deep copy)."""
    out = copy.deepcopy(dict(config))
    if seed == 0:
        return out
    out["anchors"]["seed"] += seed
    selector = out.setdefault("selector", {})
    selector["seed"] = selector.get("seed", 0) + seed
    inference = out.setdefault("inference", {})
    inference["retriever_seed"] = inference.get("retriever_seed", 0) + seed
    for name, entry in out["beam_models"].items():
        if replicates_pretraining(config, name):
            entry["seed"] = entry.get("seed", 0) + seed
            if "pretrain" in entry:
                entry["pretrain"]["seed"] = entry["pretrain"].get("seed", 0) + seed
    return out


def wildcard_pattern(config: Mapping[str, Any]) -> str:
    """The ``{replicate}`` wildcard constraint: exactly the configured replicates' suffixes."""
    # a group, never an empty string: Snakemake reads an empty constraint as none (and then matches 1+ chars)
    return "(?:" + "|".join(re.escape(suffix(seed)) for seed in seeds(config)) + ")"
