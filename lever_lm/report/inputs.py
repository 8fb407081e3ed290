"""The report's runs: every metrics.json, checked before any predictions file is read.

A run is one metrics file: a selector cell, a baseline or an imitation-ceiling run, of one replicate. A metrics file
from an older config stops the report with one message naming the file (lever_lm.report.predictions checks the
predictions files against their metrics).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from lever_lm.errors import InputError
from lever_lm.io_utils import read_json
from lever_lm.paths import BASELINES

PathLike = str | os.PathLike

RANDOM = "RandomRetriever"
ZERO_SHOT = "ZeroShot"
IMAGE_SIMILARITY = "SimRetriever-i2i"
SIMILARITY = tuple(b for b in BASELINES if b.startswith("SimRetriever"))
# row order of the similarity / zero-shot table
BASELINE_ORDER = (ZERO_SHOT, *SIMILARITY, RANDOM)
KINDS = ("selector", "baseline", "ceiling")


class ReportInputError(InputError):
    """An input of the report is stale or inconsistent; the message names the file."""


@dataclass(frozen=True)
class Run:
    """One metrics.json (a selector cell, a baseline or a ceiling run, of one replicate) with its predictions."""

    metrics_path: str
    predictions_path: str
    kind: str  # one of KINDS
    dataset: str
    task: str
    metric: str
    beam_model: str
    version: str | None
    sampler: str | None
    baseline: str | None
    scores: dict[int, float]  # shot -> score x100
    ns: dict[int, int]  # shot -> number of queries
    n_queries: int | None
    replicate: int = 0  # the replicate seed: its run used inference.retriever_seed + replicate

    @property
    def cell_key(self) -> tuple:
        """What identifies the cell; the replicates of one cell share it."""
        return (self.kind, self.beam_model, self.version, self.sampler, self.baseline)

    @property
    def label(self) -> str:
        if self.kind == "selector":
            return f"{self.version}/{self.sampler}"
        if self.kind == "ceiling":
            return f"ceiling/{self.sampler}"
        return str(self.baseline)


def normalize(value: Any) -> Any:
    """JSON round trip, so tuples and lists (and int/float keys) compare as they would in metrics.json."""
    return json.loads(json.dumps(value, sort_keys=True, default=str))


def rule_hint(kind: str) -> str:
    rule = {"selector": "icl_inference", "ceiling": "ceiling_inference"}.get(kind, "baseline_inference")
    return f"rerun it (snakemake --forcerun {rule}, or delete the file and run snakemake)"


def check_inference_settings(metrics: Mapping[str, Any], path: PathLike, expected: Mapping[str, Any]) -> None:
    """Stop when ``metrics`` was produced with inference settings other than ``expected`` (the current config).

    Only the keys of ``expected`` are compared (pass the whole InferenceConfig as a dict to compare all of them);
    a key the file lacks counts as differing. Replicate r of a run records ``retriever_seed`` + r.
    """
    recorded = metrics.get("inference")
    kind = metrics.get("kind", "selector")
    if not isinstance(recorded, Mapping):
        raise ReportInputError(
            f"{path} was produced by an older config: it records no inference settings; {rule_hint(kind)}"
        )
    replicate = replicate_of(metrics, path)
    missing = object()
    differing = []
    for key in expected:
        want, want_text = expected[key], json.dumps(normalize(expected[key]))
        if key == "retriever_seed" and replicate and isinstance(want, int):
            want = want + replicate
            want_text = f"{want} (retriever_seed {expected[key]} + replicate {replicate})"
        have = recorded.get(key, missing)
        if have is missing or normalize(have) != normalize(want):
            shown = "absent" if have is missing else json.dumps(normalize(have))
            differing.append((key, shown, want_text))
    if differing:
        keys = ", ".join(f"inference.{key}" for key, _, _ in differing)
        detail = "; ".join(f"{key}: file {have}, config {want}" for key, have, want in differing)
        verb = "differs" if len(differing) == 1 else "differ"
        raise ReportInputError(f"{path} was produced by an older config: {keys} {verb} ({detail}); {rule_hint(kind)}")


def replicate_of(metrics: Mapping[str, Any], path: PathLike) -> int:
    """The metrics file's replicate seed (absent: 0)."""
    replicate = metrics.get("replicate", 0)
    if replicate is None:
        return 0
    if isinstance(replicate, bool) or not isinstance(replicate, int) or replicate < 0:
        raise ReportInputError(f"{path}: 'replicate' must be an integer >= 0, got {replicate!r}")
    return replicate


def expected_shots(expected: Mapping[str, Any]) -> list[int] | None:
    shots = expected.get("shots")
    return None if shots is None else [int(s) for s in shots]


def _parse_metrics(path: PathLike, want_kind: str, expected: Mapping[str, Any]) -> dict[str, Any]:
    metrics = read_json(path)
    if not isinstance(metrics, dict):
        raise ReportInputError(f"{path}: not a metrics object")
    kind = metrics.get("kind")
    if kind != want_kind:
        raise ReportInputError(f"{path}: kind is {kind!r}, expected {want_kind!r} here")
    identity = {"selector": ["version", "sampler"], "baseline": ["baseline"], "ceiling": ["sampler"]}[kind]
    for key in ["beam_model", "shots", "metric", *identity]:
        if metrics.get(key) in (None, ""):
            raise ReportInputError(f"{path}: missing key {key!r}")
    if kind == "ceiling" and metrics.get("version") is not None:
        raise ReportInputError(f"{path}: a ceiling run has no version, found {metrics['version']!r}")
    if not isinstance(metrics["shots"], Mapping) or not metrics["shots"]:
        raise ReportInputError(f"{path}: 'shots' must be a non-empty mapping shot -> {{score, n}}")
    check_inference_settings(metrics, path, expected)
    shots = sorted(int(k) for k in metrics["shots"])
    want = expected_shots(expected)
    is_zero_shot = metrics.get("baseline") == ZERO_SHOT
    # a ceiling evaluates the configured shots a beam can fill (those <= beam_search.shot_num)
    is_ceiling_subset = kind == "ceiling" and want is not None and set(shots) <= set(want)
    if want is not None and shots != sorted(want) and not (is_zero_shot and shots == [0]) and not is_ceiling_subset:
        raise ReportInputError(
            f"{path}: its shots {shots} do not match inference.shots {sorted(want)}; {rule_hint(kind)}"
        )
    return metrics


def _to_run(metrics: Mapping[str, Any], metrics_path: PathLike, predictions_path: PathLike) -> Run:
    scores, ns = {}, {}
    for key, entry in metrics["shots"].items():
        try:
            scores[int(key)] = float(entry["score"])
            ns[int(key)] = int(entry["n"])
        except (KeyError, TypeError, ValueError):
            raise ReportInputError(f"{metrics_path}: shots.{key} needs a numeric 'score' and 'n'") from None
    return Run(
        metrics_path=str(metrics_path),
        predictions_path=str(predictions_path),
        kind=metrics["kind"],
        dataset=str(metrics.get("dataset", "")),
        task=str(metrics.get("task", "")),
        metric=str(metrics["metric"]),
        beam_model=str(metrics["beam_model"]),
        version=metrics.get("version"),
        sampler=metrics.get("sampler"),
        baseline=metrics.get("baseline"),
        scores=dict(sorted(scores.items())),
        ns=dict(sorted(ns.items())),
        n_queries=metrics.get("n_queries"),
        replicate=replicate_of(metrics, metrics_path),
    )


def load_runs(
    metrics_paths: Sequence[PathLike],
    predictions_paths: Sequence[PathLike],
    kind: str,
    expected_inference: Mapping[str, Any],
) -> list[Run]:
    """Read and check the metrics files of one kind (see KINDS); predictions are paired by position."""
    runs, problems = collect_runs(metrics_paths, predictions_paths, kind, expected_inference)
    raise_first(problems)
    return runs


def collect_runs(
    metrics_paths: Sequence[PathLike],
    predictions_paths: Sequence[PathLike],
    kind: str,
    expected_inference: Mapping[str, Any],
) -> tuple[list[Run], list[tuple[str, str]]]:
    """The runs that passed the checks, and (file, message) for each that did not.

    The same pair of files listed twice counts once (a baseline that does not change with the replicate may be
    listed for each replicate); two files for one cell and one replicate are an error naming both.
    """
    if len(metrics_paths) != len(predictions_paths):
        raise ReportInputError(
            f"{len(metrics_paths)} {kind} metrics files but {len(predictions_paths)} predictions files: "
            "they are paired by position"
        )
    runs, problems = [], []
    seen: dict[tuple, str] = {}
    pairs = dict.fromkeys((str(m), str(p)) for m, p in zip(metrics_paths, predictions_paths))
    for metrics_path, predictions_path in pairs:
        try:
            run = _to_run(_parse_metrics(metrics_path, kind, expected_inference), metrics_path, predictions_path)
        except ReportInputError as err:
            problems.append((metrics_path, str(err)))
            continue
        key = (*run.cell_key, run.replicate)
        if key in seen:
            replicate = f", replicate {run.replicate}" if run.replicate else ""
            problems.append(
                (
                    metrics_path,
                    f"{metrics_path}: the same cell as {seen[key]} ({run.beam_model}, {run.label}{replicate})",
                )
            )
            continue
        seen[key] = metrics_path
        runs.append(run)
    return runs, problems


def raise_first(problems: Sequence[tuple[str, str]]) -> None:
    """One message: the first problem in full, then how many other files have one (and which)."""
    if not problems:
        return
    message = problems[0][1]
    others = [path for path, _ in problems[1:]]
    if others:
        named = ", ".join(others[:3]) + (", ..." if len(others) > 3 else "")
        message += f" [{len(others)} more input file(s) with a problem: {named}]"
    raise ReportInputError(message)


def check_common(runs: Sequence[Run]) -> tuple[str, str, str]:
    """(dataset, task, metric), which every run must share."""
    first = runs[0]
    for run in runs[1:]:
        for attr in ("dataset", "metric", "task"):
            if getattr(run, attr) != getattr(first, attr):
                raise ReportInputError(
                    f"{run.metrics_path}: {attr} {getattr(run, attr)!r} differs from {getattr(first, attr)!r} "
                    f"of {first.metrics_path}"
                )
    return first.dataset, first.task, first.metric
