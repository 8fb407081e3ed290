"""The report's numbers: every cell pooled over its replicates, with bootstrap intervals and paired comparisons.

A cell (selector cell, baseline or ceiling run) may come in several replicates. Per shot, its pooled per-question
score is the mean over its replicates of each question's score; the reported score is the mean of that, the interval
a bootstrap over questions of the pooled scores, and comparisons pair the pooled scores of two cells question by
question. Scores are x100 here; per-question scores (``pooled``) stay on the 0..1 scale of predictions.parquet.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from lever_lm.paths import VERSIONS
from lever_lm.report.inputs import (
    BASELINE_ORDER,
    IMAGE_SIMILARITY,
    RANDOM,
    SIMILARITY,
    Run,
)
from lever_lm.stats import Interval, UncertaintyConfig, bootstrap_mean, paired_difference

METRIC_LABELS = {"vqa_accuracy": "VQA accuracy", "cider": "CIDEr"}


@dataclass(frozen=True)
class ShotResult:
    """One cell at one shot number, pooled over its replicates."""

    shot: int
    n: int
    score: float  # x100
    interval: Interval  # x100; undefined (NaN ends) when per-question scores are NaN (corpus CIDEr)
    replicate_scores: tuple[float, ...]  # each replicate's metrics score, x100
    pooled: Any = field(default=None, compare=False, repr=False)  # per-question, question ids ascending, or None
    question_ids: Any = field(default=None, compare=False, repr=False)  # ascending, aligned with ``pooled``

    @property
    def replicate_mean(self) -> float:
        return sum(self.replicate_scores) / len(self.replicate_scores)

    @property
    def replicate_sd(self) -> float | None:
        """Sample sd (ddof 1) of the replicates' scores; None with one replicate."""
        k = len(self.replicate_scores)
        if k < 2:
            return None
        mean = self.replicate_mean
        return math.sqrt(sum((s - mean) ** 2 for s in self.replicate_scores) / (k - 1))


@dataclass(frozen=True)
class Result:
    """A selector cell, baseline or ceiling run of one beam model: its replicates' runs and its pooled shots."""

    runs: tuple[Run, ...]  # ordered by replicate
    shots: dict[int, ShotResult]

    @property
    def key(self) -> tuple:
        return self.runs[0].cell_key

    kind = property(lambda self: self.runs[0].kind)
    beam_model = property(lambda self: self.runs[0].beam_model)
    version = property(lambda self: self.runs[0].version)
    sampler = property(lambda self: self.runs[0].sampler)
    baseline = property(lambda self: self.runs[0].baseline)
    label = property(lambda self: self.runs[0].label)

    @property
    def replicates(self) -> tuple[int, ...]:
        return tuple(run.replicate for run in self.runs)

    def score(self, shot: int) -> float | None:
        entry = self.shots.get(shot)
        return None if entry is None else entry.score


@dataclass(frozen=True)
class Comparison:
    """``subject`` minus ``reference`` at one shot number, paired over questions (x100)."""

    subject: Result
    reference: Result
    shot: int
    difference: Interval
    role: str  # "random" (RandomRetriever) or "similarity" (the best SimRetriever; for a ceiling, image to image)

    @property
    def significant(self) -> int:
        return self.difference.significant


def pool_results(runs: Sequence[Run], frames: Mapping[str, Any], uncertainty: UncertaintyConfig) -> list[Result]:
    """One Result per cell (its replicates pooled), in the order the cells first appear in ``runs``."""
    by_cell: dict[tuple, list[Run]] = {}
    for run in runs:
        by_cell.setdefault(run.cell_key, []).append(run)
    results = []
    for key, replicates in by_cell.items():
        replicates = sorted(replicates, key=lambda run: run.replicate)
        shots = sorted({shot for run in replicates for shot in run.scores})
        pooled = {
            shot: _pool_shot(key, shot, [r for r in replicates if shot in r.scores], frames, uncertainty)
            for shot in shots
        }
        results.append(Result(tuple(replicates), pooled))
    return results


def _pool_shot(
    key: tuple, shot: int, runs: Sequence[Run], frames: Mapping[str, Any], uncertainty: UncertaintyConfig
) -> ShotResult:
    import numpy as np

    per_replicate, question_ids = [], None
    for run in runs:
        frame = frames[run.predictions_path]
        rows = frame[frame["shot"] == shot].sort_values("question_id")
        per_replicate.append(rows["score"].to_numpy(dtype=np.float64))
        question_ids = rows["question_id"].to_numpy(dtype=np.int64)
    pooled = np.vstack(per_replicate).mean(axis=0)  # same questions in every replicate (checked on loading)
    replicate_scores = tuple(run.scores[shot] for run in runs)
    if np.isnan(pooled).any():  # corpus metrics have no per-question score: the metrics' score, no interval
        score = sum(replicate_scores) / len(replicate_scores)
        return ShotResult(
            shot,
            len(pooled),
            score,
            Interval(score, math.nan, math.nan, len(pooled)),
            replicate_scores,
            None,
            question_ids,
        )
    interval = bootstrap_mean(pooled, uncertainty, ("score", *key, shot), scale=100.0)
    return ShotResult(shot, len(pooled), interval.estimate, interval, replicate_scores, pooled, question_ids)


def compare(a: Result, shot_a: int, b: Result, shot_b: int, uncertainty: UncertaintyConfig) -> Interval:
    """Paired difference a - b (x100) over the questions both answered (all of them, except for a ceiling run on
    a subset); undefined where either lacks per-question scores."""
    import numpy as np

    first, second = a.shots[shot_a], b.shots[shot_b]
    if first.pooled is None or second.pooled is None:
        return Interval(first.score - second.score, math.nan, math.nan, min(first.n, second.n))
    first_scores, second_scores = first.pooled, second.pooled
    if not np.array_equal(first.question_ids, second.question_ids):
        _, in_first, in_second = np.intersect1d(
            first.question_ids, second.question_ids, assume_unique=True, return_indices=True
        )
        first_scores, second_scores = first_scores[in_first], second_scores[in_second]
    return paired_difference(first_scores, second_scores, uncertainty, (*a.key, shot_a, *b.key, shot_b), scale=100.0)


@dataclass
class ReportData:
    """Everything the tables, plots and CSV files show; ``results`` are ordered as the CSV lists them."""

    dataset: str
    task: str
    metric: str
    shots: list[int]
    beam_models: list[str]
    versions: list[str]
    samplers: list[str]
    results: list[Result]
    overlap: list[dict[str, Any]]
    warnings: list[str]
    settings: Mapping[str, Any]
    uncertainty: UncertaintyConfig
    identical_warn: float
    comparisons: list[Comparison] = field(default_factory=list)
    _differences: dict[tuple, Interval] = field(default_factory=dict, repr=False)

    @property
    def cells(self) -> list[Result]:
        return [r for r in self.results if r.kind == "selector"]

    @property
    def baselines(self) -> list[Result]:
        return [r for r in self.results if r.kind == "baseline"]

    @property
    def ceilings(self) -> list[Result]:
        return [r for r in self.results if r.kind == "ceiling"]

    @property
    def metric_label(self) -> str:
        return METRIC_LABELS.get(self.metric, self.metric)

    def cell(self, beam_model: str, version: str, sampler: str) -> Result | None:
        return self._find("selector", beam_model, version, sampler, None)

    def baseline(self, beam_model: str, name: str) -> Result | None:
        return self._find("baseline", beam_model, None, None, name)

    def ceiling(self, beam_model: str, sampler: str) -> Result | None:
        return self._find("ceiling", beam_model, None, sampler, None)

    def _find(self, *key: Any) -> Result | None:
        return next((r for r in self.results if r.key == key), None)

    def best_similarity(self, beam_model: str, shot: int) -> Result | None:
        """The SimRetriever-* of ``beam_model`` with the highest score at ``shot`` (ties: the first in order)."""
        best = None
        for name in SIMILARITY:
            run = self.baseline(beam_model, name)
            if run is not None and shot in run.shots and (best is None or run.score(shot) > best.score(shot)):
                best = run
        return best

    def compare(self, a: Result, shot_a: int, b: Result, shot_b: int) -> Interval:
        """a - b paired over questions (cached: the tables ask for the same pairs more than once)."""
        key = (a.key, shot_a, b.key, shot_b)
        if key not in self._differences:
            self._differences[key] = compare(a, shot_a, b, shot_b, self.uncertainty)
        return self._differences[key]

    def comparison(self, subject: Result, shot: int, role: str) -> Comparison | None:
        """The comparison of ``subject`` at ``shot`` with its "random" or "similarity" reference, if any."""
        return next((c for c in self.comparisons if c.subject is subject and c.shot == shot and c.role == role), None)


def reference_baselines(data: ReportData, subject: Result, shot: int) -> dict[str, Result]:
    """What a cell is compared with, by role: random ICDs, and the best similarity baseline (a ceiling: i2i)."""
    if subject.kind == "ceiling":
        similarity = data.baseline(subject.beam_model, IMAGE_SIMILARITY)
    else:
        similarity = data.best_similarity(subject.beam_model, shot)
    references = {"random": data.baseline(subject.beam_model, RANDOM), "similarity": similarity}
    return {role: r for role, r in references.items() if r is not None and shot in r.shots}


def paired_comparisons(data: ReportData) -> list[Comparison]:
    """Every selector and ceiling cell at every shot against its reference baselines at the same shot."""
    out = []
    for subject in [*data.cells, *data.ceilings]:
        for shot in sorted(subject.shots):
            for role, reference in reference_baselines(data, subject, shot).items():
                out.append(Comparison(subject, reference, shot, data.compare(subject, shot, reference, shot), role))
    return out


def version_key(version: str) -> tuple:
    if version in VERSIONS:
        return (0, VERSIONS.index(version), version)
    digits = re.findall(r"\d+", version)
    return (1, int(digits[0]) if digits else 0, version)


def ordered(found: Iterable[str], preferred: Sequence[str] | None) -> list[str]:
    """``found`` (deduplicated), the names of ``preferred`` first in that order, the rest in order of appearance."""
    found = list(dict.fromkeys(found))
    preferred = [p for p in (preferred or []) if p in found]
    return preferred + [f for f in found if f not in preferred]


def result_order(
    results: Sequence[Result], beam_models: Sequence[str], versions: Sequence[str], samplers: Sequence[str]
) -> list[Result]:
    """Selector cells (version, beam model, sampler), then baselines (beam model, table order), then ceilings."""

    def rank(result: Result) -> tuple:
        model = beam_models.index(result.beam_model)
        if result.kind == "selector":
            return (0, versions.index(result.version), model, samplers.index(result.sampler))
        if result.kind == "baseline":
            name = result.baseline
            return (1, model, BASELINE_ORDER.index(name) if name in BASELINE_ORDER else len(BASELINE_ORDER), name)
        return (2, model, samplers.index(result.sampler))

    return sorted(results, key=rank)
