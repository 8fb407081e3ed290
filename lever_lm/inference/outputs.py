"""A job's outputs: ``predictions.parquet`` then ``metrics.json``, both atomic, and the metrics record.

Output formats: ``metrics.json`` and ``predictions.parquet`` as in the shared contracts (kind, dataset, task,
beam_model, metric, version, sampler, baseline, shots {k: {score, n}}, n_queries, max_queries, query_seed,
inference, checkpoint, config_digest; predictions: question_id, shot, icd_ids, raw_output, answer, score).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lever_lm.inference.config import METRIC_OF_TASK

if TYPE_CHECKING:
    import pandas as pd

    from lever_lm.inference.config import InferenceConfig
    from lever_lm.inference.inputs import ValQueries

PREDICTION_COLUMNS = ("question_id", "shot", "icd_ids", "raw_output", "answer", "score")


def write_inference_outputs(
    metrics: Mapping[str, Any],
    predictions: pd.DataFrame,
    metrics_path: str | os.PathLike,
    predictions_path: str | os.PathLike,
) -> None:
    """Predictions first, metrics last, each atomically: a present metrics.json means a complete job."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from lever_lm.io_utils import atomic_path, write_json

    missing = [c for c in PREDICTION_COLUMNS if c not in predictions.columns]
    if missing:
        raise ValueError(f"predictions: missing column(s) {missing}")
    schema = pa.schema(
        [
            ("question_id", pa.int64()),
            ("shot", pa.int64()),
            ("icd_ids", pa.list_(pa.int64())),
            ("raw_output", pa.string()),
            ("answer", pa.string()),
            ("score", pa.float64()),
        ]
    )
    # an explicit schema: the ICD lists stay list<int64> even when all are empty (zero-shot)
    table = pa.Table.from_pandas(predictions[list(PREDICTION_COLUMNS)], schema=schema, preserve_index=False)
    with atomic_path(predictions_path, suffix=".parquet") as tmp:
        pq.write_table(table, tmp)
    write_json(metrics_path, dict(metrics))


def remove_stale_metrics(metrics_path: str | os.PathLike) -> None:
    """A failed job must leave no metrics.json, not even one of an earlier run."""
    Path(metrics_path).unlink(missing_ok=True)


def metrics_record(
    *,
    kind: str,
    dataset: str,
    task: str,
    beam_model: str,
    version: str | None,
    sampler: str | None,
    baseline: str | None,
    shots: dict,
    queries: ValQueries,
    cfg: InferenceConfig,
    checkpoint: dict | None,
    digest: str,
    replicate: int,
) -> dict[str, Any]:
    return {
        "kind": kind,
        "dataset": dataset,
        "task": task,
        "beam_model": beam_model,
        "metric": METRIC_OF_TASK[task],
        "version": version,
        "sampler": sampler,
        "baseline": baseline,
        "replicate": replicate,
        "shots": shots,
        "n_queries": len(queries),
        "max_queries": cfg.max_queries,
        "query_seed": cfg.query_seed,
        "inference": cfg.to_dict(),
        "checkpoint": checkpoint,
        "config_digest": digest,
    }
