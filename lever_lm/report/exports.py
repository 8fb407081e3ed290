"""The report's CSV files: selection_overlap.csv, scores.csv and comparisons.csv, each written atomically."""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from lever_lm.io_utils import atomic_path
from lever_lm.report.diagnostic import OVERLAP_COLUMNS
from lever_lm.report.results import Comparison, Result

PathLike = str | os.PathLike

SCORE_COLUMNS = (
    "beam_model",
    "kind",
    "version",
    "sampler",
    "baseline",
    "shot",
    "n",
    "score",
    "ci_low",
    "ci_high",
    "replicates",
    "replicate_mean",
    "replicate_sd",
)
COMPARISON_COLUMNS = (
    "beam_model",
    "version",
    "sampler",
    "shot",
    "reference",
    "diff",
    "ci_low",
    "ci_high",
    "significant",
)


def _number(value: float | None) -> str:
    """Six decimals; empty for a missing or NaN value."""
    return "" if value is None or math.isnan(value) else f"{value:.6f}"


def _write_csv(path: PathLike, columns: Sequence[str], rows: Iterable[Sequence[Any]]) -> None:
    import csv

    with atomic_path(path, suffix=".csv") as tmp:
        with open(tmp, "w", encoding="utf-8", newline="") as fh:
            writer = csv.writer(fh, lineterminator="\n")
            writer.writerow(columns)
            writer.writerows(rows)


def write_overlap_csv(path: PathLike, rows: Sequence[Mapping[str, Any]]) -> None:
    _write_csv(
        path,
        OVERLAP_COLUMNS,
        (
            [row["beam_model"], row["cell_a"], row["cell_b"], row["shot"], row["n"], _number(row["identical_share"])]
            for row in rows
        ),
    )


def score_rows(results: Sequence[Result]) -> list[list[Any]]:
    """One row per (cell, shot): the pooled score with its interval, and the replicates' mean and sd."""
    rows = []
    for result in results:
        for shot, entry in sorted(result.shots.items()):
            rows.append(
                [
                    result.beam_model,
                    result.kind,
                    result.version or "",
                    result.sampler or "",
                    result.baseline or "",
                    shot,
                    entry.n,
                    _number(entry.score),
                    _number(entry.interval.low),
                    _number(entry.interval.high),
                    len(entry.replicate_scores),
                    _number(entry.replicate_mean),
                    _number(entry.replicate_sd),
                ]
            )
    return rows


def comparison_rows(comparisons: Sequence[Comparison]) -> list[list[Any]]:
    """One row per (selector or ceiling cell, shot, reference baseline); a ceiling's version reads "ceiling"."""
    rows = []
    for item in comparisons:
        subject, difference = item.subject, item.difference
        version = "ceiling" if subject.kind == "ceiling" else subject.version
        rows.append(
            [
                subject.beam_model,
                version,
                subject.sampler,
                item.shot,
                item.reference.baseline,
                _number(difference.estimate),
                _number(difference.low),
                _number(difference.high),
                item.significant,
            ]
        )
    return rows


def write_scores_csv(path: PathLike, results: Sequence[Result]) -> None:
    _write_csv(path, SCORE_COLUMNS, score_rows(results))


def write_comparisons_csv(path: PathLike, comparisons: Sequence[Comparison]) -> None:
    _write_csv(path, COMPARISON_COLUMNS, comparison_rows(comparisons))
