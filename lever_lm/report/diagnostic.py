"""The selection diagnostic: how often two selector cells pick exactly the same ICD lists.

Two cells that should differ (another version or sampler) but select the same demonstrations point to a silent bug
(a shared checkpoint, pool or decoding path).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from lever_lm.report.inputs import Run

IDENTICAL_WARN = 0.95
OVERLAP_COLUMNS = ("beam_model", "cell_a", "cell_b", "shot", "n", "identical_share")


def selection_overlap(cells: Sequence[Run], frames: Mapping[str, Any]) -> list[dict[str, Any]]:
    """For every pair of selector cells of one beam model: share of (question, shot) with identical ICD id lists.

    One row per pair and shot, plus a row with shot "all" over all shots together. Cells are paired within a
    replicate (replicate r of one cell with replicate r of the other) and the counts summed over replicates; pairs
    are joined on (question_id, shot). ``n`` is the number of joined rows and ``identical_share`` is in [0, 1]
    (NaN when n = 0).
    """
    counts: dict[tuple, list[int]] = {}  # (beam_model, cell_a, cell_b, shot) -> [n, identical]
    groups: dict[tuple[str, int], list[Run]] = {}
    for run in cells:
        groups.setdefault((run.beam_model, run.replicate), []).append(run)
    labels_by_model: dict[str, list[str]] = {}
    for run in cells:
        labels = labels_by_model.setdefault(run.beam_model, [])
        if run.label not in labels:
            labels.append(run.label)
    for (beam_model, _), runs in groups.items():
        order = labels_by_model[beam_model]  # each pair is counted as (earlier cell, later cell) in every replicate
        _count_identical(beam_model, sorted(runs, key=lambda run: order.index(run.label)), frames, counts)
    rows: list[dict[str, Any]] = []
    for beam_model, labels in labels_by_model.items():  # pairs in input order, as the tables list the cells
        for a in range(len(labels)):
            for b in range(a + 1, len(labels)):
                shots = sorted({key[3] for key in counts if key[:3] == (beam_model, labels[a], labels[b])} - {"all"})
                for shot in [*shots, "all"] if shots else []:
                    n, same = counts[(beam_model, labels[a], labels[b], shot)]
                    rows.append(
                        {
                            "beam_model": beam_model,
                            "cell_a": labels[a],
                            "cell_b": labels[b],
                            "shot": shot,
                            "n": n,
                            "identical_share": same / n if n else math.nan,
                        }
                    )
    return rows


def _count_identical(
    beam_model: str, runs: Sequence[Run], frames: Mapping[str, Any], counts: dict[tuple, list[int]]
) -> None:
    """Add the (n, identical) counts of every pair of ``runs`` (one beam model, one replicate) to ``counts``."""
    import numpy as np
    import pandas as pd

    if len(runs) < 2:
        return
    keyed = [frames[run.predictions_path].set_index(["question_id", "shot"])["icd_ids"] for run in runs]
    table = pd.concat(keyed, axis=1, keys=range(len(keyed)), join="outer").sort_index()
    # one integer code per distinct ICD list (shared over cells); -1 where a cell lacks the row
    flat = [ids if isinstance(ids, tuple) else None for ids in table.to_numpy(dtype=object).ravel()]
    codes_flat, _ = pd.factorize(pd.Series(flat, dtype=object))
    codes = np.asarray(codes_flat, dtype=np.int64).reshape(table.shape)
    shots = table.index.get_level_values("shot").to_numpy()
    shot_values = sorted(set(int(s) for s in shots))
    for a in range(len(runs)):
        for b in range(a + 1, len(runs)):
            both = (codes[:, a] >= 0) & (codes[:, b] >= 0)
            same = both & (codes[:, a] == codes[:, b])
            for shot in [*shot_values, "all"]:
                mask = both if shot == "all" else both & (shots == shot)
                entry = counts.setdefault((beam_model, runs[a].label, runs[b].label, shot), [0, 0])
                entry[0] += int(mask.sum())
                entry[1] += int((same & mask).sum())


def overlap_warnings(rows: Iterable[Mapping[str, Any]], threshold: float = IDENTICAL_WARN) -> list[str]:
    """One warning line per pair whose overall identical share exceeds ``threshold``."""
    warnings = []
    for row in rows:
        if row["shot"] != "all" or not (row["identical_share"] > threshold):
            continue
        warnings.append(
            f"{row['beam_model']}: {row['cell_a']} and {row['cell_b']} select identical ICD lists for "
            f"{row['identical_share'] * 100:.2f}% of {row['n']} (question, shot) pairs (> {threshold * 100:.0f}%). "
            "Two cells that should differ but select the same demonstrations suggest a silent bug "
            "(the same checkpoint, pool or decoding path); check them before reading their rows as separate results."
        )
    return warnings
