"""The report's predictions files: read, and checked against their metrics.json and against each other."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

from lever_lm.report.inputs import ZERO_SHOT, ReportInputError, Run, rule_hint

PathLike = str | os.PathLike

PREDICTION_COLUMNS = ("question_id", "shot", "icd_ids", "score")
SCORE_TOLERANCE = 1e-6  # metrics score vs mean of per-question scores, on the x100 scale


def read_selections(path: PathLike) -> Any:
    """predictions.parquet as a DataFrame with the columns the report needs; icd_ids become tuples."""
    import pandas as pd

    try:
        frame = pd.read_parquet(path, columns=list(PREDICTION_COLUMNS))
    except (KeyError, ValueError) as err:
        raise ReportInputError(f"{path}: unreadable predictions ({err}); needs columns {PREDICTION_COLUMNS}") from None
    except FileNotFoundError:
        raise ReportInputError(f"{path}: predictions file missing") from None
    frame["question_id"] = frame["question_id"].astype("int64")
    frame["shot"] = frame["shot"].astype("int64")
    frame["score"] = frame["score"].astype("float64")
    frame["icd_ids"] = [tuple(int(i) for i in ids) if ids is not None else () for ids in frame["icd_ids"]]
    return frame


def check_predictions(run: Run, frame: Any) -> None:
    """The predictions file must hold exactly the shots and query counts its metrics.json reports."""
    path = run.predictions_path
    shots = sorted(int(s) for s in frame["shot"].unique())
    if shots != sorted(run.scores):
        raise ReportInputError(
            f"{path} disagrees with {run.metrics_path}: predictions have shots {shots}, metrics {sorted(run.scores)}; "
            f"{rule_hint(run.kind)}"
        )
    duplicated = frame.duplicated(["question_id", "shot"])
    if duplicated.any():
        row = frame[duplicated].iloc[0]
        raise ReportInputError(f"{path}: question {row.question_id} appears twice for shot {row.shot}")
    first_ids = None
    for shot, group in frame.groupby("shot"):
        shot = int(shot)
        if len(group) != run.ns[shot]:
            raise ReportInputError(
                f"{path} disagrees with {run.metrics_path}: {len(group)} questions at {shot} shots, metrics say "
                f"{run.ns[shot]}; {rule_hint(run.kind)}"
            )
        ids = set(group["question_id"])
        if first_ids is None:
            first_ids = ids
        elif ids != first_ids:
            raise ReportInputError(f"{path}: shot {shot} has other question ids than shot {shots[0]}")
        if run.baseline != ZERO_SHOT:
            lengths = {len(ids_) for ids_ in group["icd_ids"]}
            if lengths != {shot}:
                raise ReportInputError(
                    f"{path}: at {shot} shots some icd_ids lists have length {sorted(lengths - {shot})}"
                )
        scores = group["score"]
        if run.metric == "vqa_accuracy" and scores.notna().all() and len(scores):
            mean = float(scores.mean()) * 100.0
            if abs(mean - run.scores[shot]) > SCORE_TOLERANCE:
                raise ReportInputError(
                    f"{path} disagrees with {run.metrics_path}: mean per-question score at {shot} shots is "
                    f"{mean:.4f}, metrics say {run.scores[shot]:.4f}; {rule_hint(run.kind)}"
                )


def check_same_queries(runs: Sequence[Run], frames: Mapping[str, Any]) -> None:
    """Every run answered the same val questions, so the tables (and the paired comparisons) compare like with like;
    a ceiling run may answer a subset of them (``ceiling.max_queries``), the same in each of its replicates."""
    reference = next((run for run in runs if run.kind != "ceiling"), runs[0] if runs else None)
    if reference is None:
        return
    ref_ids = frozenset(frames[reference.predictions_path]["question_id"])
    ceiling_ids: dict[tuple, tuple[Run, frozenset]] = {}
    for run in runs:
        ids = frozenset(frames[run.predictions_path]["question_id"])
        if run.kind == "ceiling" and ids <= ref_ids:
            first = ceiling_ids.setdefault(run.cell_key, (run, ids))
            if first[1] != ids:
                raise ReportInputError(
                    f"{run.predictions_path}: evaluated on other val questions than {first[0].predictions_path}, "
                    f"another replicate of the same ceiling run; {rule_hint(run.kind)}"
                )
            continue
        if ids != ref_ids:
            raise ReportInputError(
                f"{run.predictions_path}: evaluated on other val questions than {reference.predictions_path} "
                f"({len(ids - ref_ids)} extra, {len(ref_ids - ids)} missing); the tables compare like with like, "
                f"{rule_hint(run.kind)}"
            )
