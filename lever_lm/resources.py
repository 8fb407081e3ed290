"""Per-rule cluster resources: the memory (``mem_mb``) and wall time (``runtime``, minutes) each job asks for.

Threads come from the config (``threads.*``, ``beam_search.threads``) and GPU rules declare ``gpu=1`` in the rules
themselves; this table is the rest of a job's request, which a scheduler (SLURM) needs and the local executor
ignores unless ``--resources mem_mb=...`` is given. There are two scales, picked per job:

* ``toy``: the embedded default (generated dataset, tiny models). Sized from the default run's
  ``benchmarks/<rule>/*.tsv`` (max RSS) with headroom, so a 24 GB node accepts every job, group jobs included.
* ``real``: OK-VQA with the 3B LVLMs and the HF CLIPs (``configs/okvqa_local.yaml``).

A job is toy-scale when what it loads is: a tiny beam model (beam shards, inference), a tiny encoder
(embeddings), otherwise the generated dataset (``dataset.toy``). Override one rule on the command line with
``--set-resources beam_shard:mem_mb=64000`` (the rules' values are callables, which ``--set-resources`` replaces).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Need:
    mem_mb: int
    runtime: int  # minutes


# toy: the default run's benchmarks/ max RSS (MB, in the comments; a 2-core machine) x 1.5 + 250 MB, rounded up to
# 500 MB, at least 1 GB; runtime at least 3x the slowest job seen on a loaded 2-core machine. real: 3B models load
# on the host first (Flamingo: MPT-1B + ViT-L in fp32 plus its checkpoint, ~20 GB at peak; Qwen2.5-VL: bf16 shards).
TOY: dict[str, Need] = {
    "toy_dataset": Need(mem_mb=1000, runtime=10),  # <1 s, too short to sample
    "records": Need(mem_mb=1000, runtime=10),  # 128
    "embeddings": Need(mem_mb=2000, runtime=15),  # 920
    "faiss_index": Need(mem_mb=1000, runtime=10),  # <1 s
    "anchors": Need(mem_mb=1000, runtime=10),  # 131
    "candidates": Need(mem_mb=1000, runtime=10),  # 146
    "test_pool": Need(mem_mb=1000, runtime=10),  # 147
    "tiny_lvlm": Need(mem_mb=3000, runtime=40),  # 1575; 10 min on the loaded machine
    "beam_shard": Need(mem_mb=2000, runtime=30),  # 1059; 141 s
    "beam_gather": Need(mem_mb=1000, runtime=10),  # 38
    "ceiling_shard": Need(mem_mb=2000, runtime=30),  # as beam_shard: the same search over as many val queries
    "ceiling_gather": Need(mem_mb=1000, runtime=10),  # as beam_gather
    "ceiling_inference": Need(mem_mb=2000, runtime=20),  # as icl_inference
    "train_selector": Need(mem_mb=2000, runtime=20),  # 964
    "icl_inference": Need(mem_mb=2000, runtime=20),  # 1039
    "baseline_inference": Need(mem_mb=2000, runtime=20),  # 1025
    "report": Need(mem_mb=1000, runtime=10),  # 173
}
REAL: dict[str, Need] = {
    "records": Need(mem_mb=2000, runtime=30),
    "embeddings": Need(mem_mb=12000, runtime=120),
    "faiss_index": Need(mem_mb=4000, runtime=30),
    "anchors": Need(mem_mb=2000, runtime=10),
    "candidates": Need(mem_mb=4000, runtime=30),
    "test_pool": Need(mem_mb=4000, runtime=30),
    "beam_shard": Need(mem_mb=32000, runtime=720),
    "beam_gather": Need(mem_mb=2000, runtime=10),
    "ceiling_shard": Need(mem_mb=32000, runtime=720),  # as beam_shard, with as many queries per shard (shards: 8)
    "ceiling_gather": Need(mem_mb=2000, runtime=10),
    "ceiling_inference": Need(mem_mb=32000, runtime=120),  # 500 queries x 2 shots, not 5,046 x 4
    "train_selector": Need(mem_mb=8000, runtime=240),
    "icl_inference": Need(mem_mb=32000, runtime=480),
    "baseline_inference": Need(mem_mb=32000, runtime=480),
    "report": Need(mem_mb=4000, runtime=30),
}
RULES = tuple(TOY)
_BY_BEAM_MODEL = {"beam_shard", "icl_inference", "baseline_inference", "ceiling_shard", "ceiling_inference"}


def scale(config: Mapping[str, Any], rule: str, wildcards: Mapping[str, str] | None = None) -> str:
    """'toy' or 'real': the scale of what one job of ``rule`` loads."""
    wildcards = dict(wildcards or {})
    if rule not in TOY:
        raise KeyError(f"no resources for rule {rule!r}; add it to lever_lm/resources.py")
    if rule not in REAL:  # toy_dataset, tiny_lvlm
        return "toy"
    if rule in _BY_BEAM_MODEL and "beam_model" in wildcards:
        tiny = config["beam_models"][wildcards["beam_model"]]["variant"] == "tiny"
    elif rule == "embeddings" and "encoder" in wildcards:
        tiny = config["encoders"][wildcards["encoder"]]["kind"] == "tiny"
    else:
        tiny = "toy" in config["dataset"]
    return "toy" if tiny else "real"


def need(config: Mapping[str, Any], rule: str, wildcards: Mapping[str, str] | None = None) -> Need:
    return (TOY if scale(config, rule, wildcards) == "toy" else REAL)[rule]


class RuleResources:
    """The rules' ``resources:`` values: ``mem_mb=RES.mem_mb("beam_shard")`` gives a callable of the wildcards."""

    def __init__(self, config: Mapping[str, Any]):
        self.config = config

    def mem_mb(self, rule: str) -> Callable[..., int]:
        scale(self.config, rule)  # an unknown rule fails when the Snakefile is parsed, not at the first job

        def mem_mb(wildcards) -> int:
            return need(self.config, rule, wildcards).mem_mb

        return mem_mb

    def runtime(self, rule: str) -> Callable[..., int]:
        scale(self.config, rule)

        def runtime(wildcards) -> int:
            return need(self.config, rule, wildcards).runtime

        return runtime


def table() -> str:
    """The per-rule table as markdown (README "Running on a cluster")."""
    lines = ["| rule | toy mem_mb | toy runtime (min) | real mem_mb | real runtime (min) |", "|---|---|---|---|---|"]
    for rule in RULES:
        real = REAL.get(rule)
        real_cells = f"{real.mem_mb} | {real.runtime}" if real else "– | –"
        lines.append(f"| `{rule}` | {TOY[rule].mem_mb} | {TOY[rule].runtime} | {real_cells} |")
    return "\n".join(lines)
