"""The job entry points: ``run_selector_cell`` (rule icl_inference) and ``run_baseline`` (rule baseline_inference);
``start_cell`` is what every cell job (these and the ceiling's) does first."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from lever_lm.inference.config import InferenceConfig, config_digest
from lever_lm.inference.evaluation import evaluate
from lever_lm.inference.inputs import (
    InferenceInputs,
    check_same_encoder,
    load_lvlm,
    load_split,
    select_queries,
    val_queries,
)
from lever_lm.inference.journal import InferenceJournal, job_fingerprint, journal_path
from lever_lm.inference.outputs import metrics_record, remove_stale_metrics, write_inference_outputs
from lever_lm.io_utils import file_sha256
from lever_lm.paths import BASELINES

if TYPE_CHECKING:
    from lever_lm.lvlm.base import LVLMAdapter

log = logging.getLogger("lever_lm.inference")  # one logger for the package: log lines say [lever_lm.inference]

IDENTITY_KEYS = ("dataset", "beam_model", "sampler", "ex_name", "version", "lever_lm")


def start_cell(
    kind: str,
    identity: Mapping[str, str],
    keys: Sequence[str],
    metrics_path: str | os.PathLike,
    inference: Mapping[str, Any] | None,
    task: str,
) -> InferenceConfig:
    """What every cell job does first: drop a stale metrics.json, check the identity's keys, read the settings."""
    remove_stale_metrics(metrics_path)
    missing = [key for key in keys if key not in identity]
    if missing:
        raise ValueError(f"{kind} cell identity: missing {', '.join(missing)}")
    return InferenceConfig.from_config(inference, task)


def _retriever_shots(cfg: InferenceConfig, baseline: str, n_train: int) -> tuple[int, ...]:
    if baseline == "ZeroShot":
        return (0,)
    for shot in cfg.shots:  # each >= 1 (the config schema)
        if shot > n_train:
            raise ValueError(f"inference.shots: shot {shot} exceeds the {n_train} train ICDs")
    return cfg.shots


def run_selector_cell(
    *,
    identity: Mapping[str, str],
    checkpoint: str,
    test_pool: str | None,
    inputs: InferenceInputs,
    weights: Sequence[str] | None,
    entry: Mapping[str, Any],
    inference: Mapping[str, Any] | None,
    task: str,
    metrics_path: str,
    predictions_path: str,
    adapter: LVLMAdapter | None = None,
    logger: logging.Logger | None = None,
    replicate: int = 0,
) -> dict[str, Any]:
    """ICL inference of one selector cell (rule icl_inference); returns the metrics written.

    ``replicate``: the replicate seed (lever_lm.replicates) the cell belongs to, recorded in metrics.json.

    ``identity``: dataset, beam_model, sampler, ex_name, version, lever_lm of the rule (the checkpoint's meta must
    agree). ``test_pool``: the sampler's test-pool json (val idx -> train ids; v1-v4 select within it).
    ``adapter``: an already loaded LVLM (tests); else loaded from ``entry`` (``weights[0]`` is a tiny model's dir).
    """
    from lever_lm.beam_search import ExampleTable
    from lever_lm.retrievers import SelectorRetriever
    from lever_lm.selectors import load_selector

    logger = logger or log
    cfg = start_cell("selector", identity, IDENTITY_KEYS, metrics_path, inference, task)
    train, val = load_split(inputs, "train"), load_split(inputs, "val")
    encoder_id = check_same_encoder(train, val)
    selector = load_selector(checkpoint, train.features, expect={key: identity[key] for key in IDENTITY_KEYS})
    if "encoder_id" in selector.meta and str(selector.meta["encoder_id"]) != encoder_id:
        raise ValueError(
            f"{checkpoint}: selector trained on encoder {selector.meta['encoder_id']!r} features but the "
            f"val embeddings ({val.meta_path}) come from {encoder_id!r}"
        )
    pools = None
    if selector.needs_pools:
        if not test_pool:
            raise ValueError(f"{checkpoint}: a {selector.version} selector needs the test pool of its sampler")
        from lever_lm.sampling import read_candidates

        pool_file = read_candidates(test_pool)
        pool_sampler = pool_file.params.get("sampler", identity["sampler"])
        if pool_sampler != identity["sampler"]:
            raise ValueError(
                f"{test_pool}: test pool of sampler {pool_sampler!r}, this cell is {identity['sampler']!r}"
            )
        pools = pool_file.candidates
    rows = select_queries(len(val.records), cfg.max_queries, cfg.query_seed)
    queries = val_queries(val.records, rows, task, inputs.val_records)
    chooser = SelectorRetriever(selector, val.features, pools, pool_source=str(test_pool))
    for shot in cfg.shots:
        chooser.check(rows, shot)
    examples = ExampleTable.from_records(train.records, name=inputs.train_records)
    adapter = adapter or load_lvlm(identity["beam_model"], entry, weights)
    logger.info(
        "%s %s %s: %d val queries, shots %s",
        identity["version"],
        identity["beam_model"],
        identity["sampler"],
        len(queries),
        list(cfg.shots),
    )
    fingerprint = job_fingerprint(
        inputs,
        {"checkpoint": checkpoint, "test_pool": test_pool, "weights": weights or []},
        kind="selector",
        task=task,
        inference=cfg.to_dict(),
        identity=dict(identity),
        entry=dict(entry),
    )
    with InferenceJournal(journal_path(predictions_path), fingerprint, logger) as journal:
        shots, predictions = evaluate(adapter, chooser, queries, examples, cfg.shots, cfg, task, logger, journal)
    checkpoint_info = {"path": str(checkpoint), "sha256": file_sha256(checkpoint), "meta": selector.meta}
    digest = config_digest(
        kind="selector",
        task=task,
        inference=cfg.to_dict(),
        identity=dict(identity),
        entry=dict(entry),
        checkpoint_sha256=checkpoint_info["sha256"],
    )
    metrics = metrics_record(
        kind="selector",
        dataset=identity["dataset"],
        task=task,
        beam_model=identity["beam_model"],
        version=identity["version"],
        sampler=identity["sampler"],
        baseline=None,
        shots=shots,
        queries=queries,
        cfg=cfg,
        checkpoint=checkpoint_info,
        digest=digest,
        replicate=replicate,
    )
    write_inference_outputs(metrics, predictions, metrics_path, predictions_path)
    journal.remove()
    return metrics


def run_baseline(
    *,
    dataset: str,
    beam_model: str,
    baseline: str,
    inputs: InferenceInputs,
    weights: Sequence[str] | None,
    entry: Mapping[str, Any],
    inference: Mapping[str, Any] | None,
    task: str,
    metrics_path: str,
    predictions_path: str,
    adapter: LVLMAdapter | None = None,
    logger: logging.Logger | None = None,
    replicate: int = 0,
) -> dict[str, Any]:
    """ICL inference of one baseline (rule baseline_inference): RandomRetriever, ZeroShot or SimRetriever-*.

    ``replicate``: the replicate seed the run belongs to, recorded in metrics.json.
    """
    from lever_lm.beam_search import ExampleTable
    from lever_lm.retrievers import make_baseline_retriever

    logger = logger or log
    remove_stale_metrics(metrics_path)
    if baseline not in BASELINES:
        raise ValueError(f"baseline {baseline!r} is not one of {list(BASELINES)}")
    cfg = InferenceConfig.from_config(inference, task)
    train, val = load_split(inputs, "train"), load_split(inputs, "val")
    check_same_encoder(train, val)
    shots = _retriever_shots(cfg, baseline, len(train.records))
    rows = select_queries(len(val.records), cfg.max_queries, cfg.query_seed)
    queries = val_queries(val.records, rows, task, inputs.val_records)
    chooser = make_baseline_retriever(baseline, len(train.records), cfg.retriever_seed, val.features, train.features)
    examples = ExampleTable.from_records(train.records, name=inputs.train_records)
    adapter = adapter or load_lvlm(beam_model, entry, weights)
    logger.info("%s %s: %d val queries, shots %s", baseline, beam_model, len(queries), list(shots))
    fingerprint = job_fingerprint(
        inputs,
        {"weights": weights or []},
        kind="baseline",
        task=task,
        inference=cfg.to_dict(),
        dataset=dataset,
        beam_model=beam_model,
        baseline=baseline,
        entry=dict(entry),
    )
    with InferenceJournal(journal_path(predictions_path), fingerprint, logger) as journal:
        scores, predictions = evaluate(adapter, chooser, queries, examples, shots, cfg, task, logger, journal)
    digest = config_digest(
        kind="baseline",
        task=task,
        inference=cfg.to_dict(),
        dataset=dataset,
        beam_model=beam_model,
        baseline=baseline,
        entry=dict(entry),
    )
    metrics = metrics_record(
        kind="baseline",
        dataset=dataset,
        task=task,
        beam_model=beam_model,
        version=None,
        sampler=None,
        baseline=baseline,
        shots=scores,
        queries=queries,
        cfg=cfg,
        checkpoint=None,
        digest=digest,
        replicate=replicate,
    )
    write_inference_outputs(metrics, predictions, metrics_path, predictions_path)
    journal.remove()
    return metrics
