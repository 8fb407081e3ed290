"""The imitation ceiling (docs/stages.md, "Imitation ceiling"): a diagnostic, never a method.

The stage-4 InfoScore beam search is run for val queries themselves, each with its gold answer (its record's
``label``, exactly as for anchors), over its test pool (the sampler's candidates for that val query); then the top
beam's ICDs are evaluated like a selector cell's picks. A selector trained to imitate beams can at best pick what the
beams pick, so this row bounds what such a selector can reach; a ceiling below a baseline means InfoScore, not the
selector, limits the result on that data.

Which val queries: those the selector cells evaluate (``inference.max_queries`` / ``query_seed``), or, with
``ceiling.max_queries`` = N, a seeded subset of N of them (``ceiling.query_seed``), the same for every beam model and
sampler, so the ceiling can be compared question by question with every cell.

Which shots: for shot k <= ``beam_search.shot_num`` the first k picks of the top final beam (choice order), placed in
prompt order the way a selector's picks are placed (construct order "left": the first pick nearest the query). A
beam holds ``shot_num`` ICDs, so shots above it are not evaluated: the ceiling's metrics hold the shots of
``inference.shots`` that are <= shot_num and name the others (``ceiling.shots_not_evaluated``).

Files: shards and the gathered ``beams.json`` have the beam-search formats of ``lever_lm.beam_shards``, with
``anchor_id`` holding the val record idx and the header saying ``"query_split": "val"``; ``metrics.json`` and
``predictions.parquet`` have the selector cells' formats (``lever_lm.inference``) with ``"kind": "ceiling"``,
``"version": null``, plus ``beams`` (path, sha256, params) and ``ceiling`` (subset, shot_num, shots left out).

Public API
- ``CeilingConfig.from_config(config["ceiling"])``.
- ``ceiling_query_rows(n_val, ceiling, inference) -> np.ndarray``: the val rows searched and evaluated (sorted).
- ``ceiling_shots(shots, shot_num) -> (evaluated, left_out)``.
- ``top_beam_choices(record, construct_order, source)``: the top final beam's ICDs in choice order.
- ``ceiling_icds(records, construct_order, shots, source) -> {shot: {val row: ICD ids in prompt order}}``.
- ``CeilingRetriever(top_choices, construct_order, shot_num, source)``: the chooser ``inference.evaluate`` takes.
- ``run_ceiling_shard(...)`` (rule ceiling_shard), ``gather_ceiling(...)`` (rule ceiling_gather),
  ``run_ceiling_cell(...)`` (rule ceiling_inference).
Heavy imports (pandas, the adapters, torch) happen inside the functions.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from lever_lm.errors import InputError

if TYPE_CHECKING:
    from lever_lm.beam_search import ExampleTable
    from lever_lm.lvlm.base import LVLMAdapter

log = logging.getLogger(__name__)

QUERY_SPLIT = "val"
IDENTITY_KEYS = ("dataset", "beam_model", "sampler", "ex_name")


@dataclass(frozen=True)
class CeilingConfig:
    """``config["ceiling"]``, typed. Defaults and bounds are the config schema's
    (``lever_lm/schemas/config.schema.yaml``)."""

    enabled: bool
    max_queries: int | None  # None: every val query the cells evaluate; N: a seeded subset of N of them
    query_seed: int
    shards: int

    @classmethod
    def from_config(cls, section: Mapping[str, Any] | None) -> CeilingConfig:
        """From ``config["ceiling"]`` (None: all defaults), validated against the config schema with its defaults
        filled (``lever_lm.config.validate_section``); errors name the key: ``config key ceiling.shards: ...``."""
        from lever_lm.config import validate_section

        section = validate_section("ceiling", section)
        max_queries = section["max_queries"]
        return cls(
            enabled=section["enabled"],
            max_queries=None if max_queries is None else int(max_queries),  # the schema's integers include 2.0
            query_seed=int(section["query_seed"]),
            shards=int(section["shards"]),
        )

    def query_params(self) -> dict[str, Any]:
        """What decides the ceiling's val queries (with the cells' own selection)."""
        return {"max_queries": self.max_queries, "query_seed": self.query_seed}


def ceiling_query_rows(n_val: int, ceiling: CeilingConfig, inference: Mapping[str, Any]) -> np.ndarray:
    """The val rows of the ceiling, sorted: the rows the selector cells evaluate (``inference``'s max_queries and
    query_seed, as ``inference.select_queries`` draws them), or a seeded subset of ``ceiling.max_queries`` of them."""
    from lever_lm.inference.inputs import select_queries

    evaluated = select_queries(n_val, inference.get("max_queries"), int(inference.get("query_seed", 0)))
    if ceiling.max_queries is None or ceiling.max_queries >= len(evaluated):
        return evaluated
    return evaluated[select_queries(len(evaluated), ceiling.max_queries, ceiling.query_seed)]


def ceiling_shots(shots: Sequence[int], shot_num: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """(the shots evaluated, those left out): a beam holds ``shot_num`` ICDs, so only shots 1..shot_num exist."""
    evaluated = tuple(int(k) for k in shots if 1 <= int(k) <= shot_num)
    return evaluated, tuple(int(k) for k in shots if int(k) not in evaluated)


def top_beam_choices(record: Mapping[str, Any], construct_order: str, source: str = "ceiling beams") -> list[int]:
    """The top final beam of one val query (beams are ranked best first) in choice order, first pick first."""
    from lever_lm.selectors.data import to_choice_order

    sequences = record.get("sequences") or []
    if not sequences or not sequences[0]:
        raise InputError(f"{source}: val query {record.get('anchor_id')} has no beam")
    return to_choice_order(sequences[0], construct_order)


def ceiling_icds(
    records: Sequence[Mapping[str, Any]], construct_order: str, shots: Sequence[int], source: str = "ceiling beams"
) -> dict[int, dict[int, list[int]]]:
    """For each shot k <= the beams' length: each val row's first k picks of its top beam, in prompt order (as
    selectors place them). Longer shots are left out (a beam holds no more ICDs)."""
    top = {int(r["anchor_id"]): top_beam_choices(r, construct_order, source) for r in records}
    shot_num = min((len(c) for c in top.values()), default=0)
    chooser = CeilingRetriever(top, construct_order, shot_num, source)
    rows = sorted(top)
    evaluated, _ = ceiling_shots(shots, shot_num)
    return {k: dict(zip(rows, chooser.choose(rows, k))) for k in evaluated}


class CeilingRetriever:
    """The chooser of a ceiling cell: for shot k, the first k picks of a val query's top beam, in prompt order.

    ``top_choices``: val row -> its top beam's ICDs in choice order (``top_beam_choices``); the interface is
    ``lever_lm.retrievers``' (``choose(query_rows, k)``, ``check(query_rows, k)``)."""

    def __init__(
        self,
        top_choices: Mapping[int, Sequence[int]],
        construct_order: str,
        shot_num: int,
        source: str = "ceiling beams",
    ):
        self.top_choices = {int(row): [int(i) for i in ids] for row, ids in top_choices.items()}
        self.construct_order = construct_order
        self.shot_num = int(shot_num)
        self.source = source

    def check(self, query_rows: Sequence[int], k: int) -> None:
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 1 <= k <= self.shot_num:
            raise ValueError(f"ceiling: shot {k!r} must be between 1 and beam_search.shot_num {self.shot_num}")
        missing = [int(r) for r in query_rows if int(r) not in self.top_choices]
        if missing:
            raise InputError(f"{self.source}: no beams for val query idx {missing[:5]}")

    def choose(self, query_rows: Sequence[int], k: int) -> list[list[int]]:
        from lever_lm.selectors.data import to_prompt_order

        self.check(query_rows, k)
        return [to_prompt_order(self.top_choices[int(r)][:k], self.construct_order) for r in query_rows]


# ----------------------------------------------------------------------------------------------- beam search


@contextlib.contextmanager
def _as_input_errors() -> Iterator[None]:
    """The beam-search checks raise ValueError; here their subject is the user's files, so report them as input
    errors (one line naming the file or record on the terminal)."""
    try:
        yield
    except InputError:
        raise
    except ValueError as err:
        raise InputError(str(err)) from None


def _val_table(val_records: str | os.PathLike) -> ExampleTable:
    from lever_lm.beam_search import ExampleTable
    from lever_lm.data import load_records

    return ExampleTable.from_records(load_records(val_records), name=str(val_records), split=QUERY_SPLIT)


def _train_table(train_records: str | os.PathLike) -> ExampleTable:
    from lever_lm.beam_search import ExampleTable
    from lever_lm.data import load_records

    return ExampleTable.from_records(load_records(train_records), name=str(train_records))


def _read_test_pool(test_pool: str | os.PathLike, sampler: str) -> Any:
    from lever_lm.sampling import read_candidates

    pool_file = read_candidates(test_pool)
    pool_sampler = pool_file.params.get("sampler", sampler)
    if pool_sampler != sampler:
        raise InputError(f"{test_pool}: test pool of sampler {pool_sampler!r}, this ceiling run is {sampler!r}")
    return pool_file


def run_ceiling_shard(
    *,
    scatteritem: str,
    val_records: str,
    train_records: str,
    test_pool: str,
    weights: Sequence[str],
    beam_model: str,
    sampler: str,
    entry: Mapping[str, Any],
    beam_search: Mapping[str, Any],
    cand_num: int,
    sample_num: int,
    ceiling: Mapping[str, Any] | None,
    inference: Mapping[str, Any] | None,
    out_path: str,
    input_fingerprint: Any = None,
    adapter: LVLMAdapter | None = None,
    logger: logging.Logger | None = None,
) -> None:
    """Rule ceiling_shard: beam search for one shard of the ceiling's val queries, resumable like a beam shard.

    Every input is checked (val labels, pool entries and ids, cand_num) before the LVLM loads; bad input leaves no
    file. Writes ``<out_path>.partial`` one query at a time, then renames it to ``out_path``."""
    from lever_lm.beam_search import config_from_dict
    from lever_lm.beam_shards import (
        finalize_shard,
        parse_scatter_item,
        partial_path,
        run_beam_shard,
        shard_anchors,
        validate_shard_inputs,
    )
    from lever_lm.lvlm.factory import load_adapter

    logger = logger or log
    evaluated = dict(inference or {})
    cfg = config_from_dict(beam_search, cand_num=cand_num, sample_num=sample_num)
    ceiling_cfg = CeilingConfig.from_config(ceiling)
    shard_index, n_shards = parse_scatter_item(scatteritem)
    queries, examples = _val_table(val_records), _train_table(train_records)
    rows = ceiling_query_rows(len(queries), ceiling_cfg, evaluated)
    shard = shard_anchors(rows.tolist(), n_shards, shard_index)
    pool_file = _read_test_pool(test_pool, sampler)
    with _as_input_errors():
        validate_shard_inputs(shard, pool_file.candidates, examples, cfg, queries, candidates_source=str(test_pool))
    if adapter is None:
        tiny_dir = str(weights[0]) if entry.get("variant") == "tiny" else None
        adapter = load_adapter(beam_model, dict(entry), tiny_dir)
    partial = partial_path(out_path)
    run_params = {
        "beam_model": beam_model,
        "sampler": sampler,
        "test_pool": pool_file.params,
        "queries": {
            "n_val": len(queries),
            "ceiling": ceiling_cfg.query_params(),
            "inference": {
                "max_queries": evaluated.get("max_queries"),
                "query_seed": int(evaluated.get("query_seed", 0)),
            },
        },
    }
    run_beam_shard(
        shard,
        pool_file.candidates,
        examples,
        adapter,
        cfg,
        partial,
        run_params=run_params,
        log=logger,
        input_fingerprint=input_fingerprint,
        queries=queries,
        candidates_source=str(test_pool),
    )
    finalize_shard(partial, out_path)


def gather_ceiling(
    shard_paths: Sequence[str],
    val_records: str,
    ceiling: Mapping[str, Any] | None,
    inference: Mapping[str, Any] | None,
    out_path: str,
    logger: logging.Logger | None = None,
) -> None:
    """Rule ceiling_gather: every ceiling val query exactly once across the shards, merged in row order."""
    from lever_lm.beam_shards import gather_beam_shards
    from lever_lm.data import load_records

    rows = ceiling_query_rows(len(load_records(val_records)), CeilingConfig.from_config(ceiling), inference or {})
    with _as_input_errors():
        gather_beam_shards(shard_paths, rows.tolist(), out_path)
    (logger or log).info("merged %d shards, %d val queries", len(shard_paths), len(rows))


# ----------------------------------------------------------------------------------------------- evaluation


def _checked_beams(
    beams: str, identity: Mapping[str, str], rows: np.ndarray, val_question_ids: Sequence[int], n_train: int
) -> tuple[dict[str, Any], dict[int, list[int]], str, int]:
    """(params, val row -> top beam in choice order, construct_order, shot_num) of a gathered ceiling beams file,
    checked against the cell, the configured val queries and the records."""
    from lever_lm.beam_shards import read_beams

    with _as_input_errors():
        data = read_beams(beams)
    params = data["params"]
    if params.get("query_split") != QUERY_SPLIT:
        raise InputError(f"{beams}: not ceiling beams (query_split {params.get('query_split')!r}, expected 'val')")
    for key in ("beam_model", "sampler", "ex_name"):
        if params.get(key) != identity[key]:
            raise InputError(f"{beams}: made for {key} {params.get(key)!r}, this ceiling cell is {identity[key]!r}")
    construct_order, shot_num = params.get("construct_order"), params.get("shot_num")
    if construct_order not in ("left", "right") or not isinstance(shot_num, int) or shot_num < 1:
        raise InputError(
            f"{beams}: params need construct_order left/right and shot_num >= 1, got {construct_order!r}, {shot_num!r}"
        )
    found = [int(r["anchor_id"]) for r in data["anchors"]]
    if found != rows.tolist():
        extra, missing = sorted(set(found) - set(rows.tolist())), sorted(set(rows.tolist()) - set(found))
        raise InputError(
            f"{beams}: holds other val queries than the config's ceiling (not asked for: {extra[:5]}, "
            f"missing: {missing[:5]}); rerun ceiling_shard/ceiling_gather"
        )
    top: dict[int, list[int]] = {}
    for record in data["anchors"]:
        row = int(record["anchor_id"])
        if record.get("question_id") is not None and int(record["question_id"]) != int(val_question_ids[row]):
            raise InputError(
                f"{beams}: val query {row} has question_id {record['question_id']}, the val records "
                f"{val_question_ids[row]}; the beams come from other val records"
            )
        choices = top_beam_choices(record, construct_order, str(beams))
        if len(choices) != shot_num or len(set(choices)) != shot_num or any(not 0 <= i < n_train for i in choices):
            raise InputError(
                f"{beams}: val query {row}: the top beam {record['sequences'][0]} is not {shot_num} "
                f"distinct train ids in 0..{n_train - 1}"
            )
        top[row] = choices
    return params, top, construct_order, shot_num


def run_ceiling_cell(
    *,
    identity: Mapping[str, str],
    beams: str,
    train_records: str,
    val_records: str,
    weights: Sequence[str] | None,
    entry: Mapping[str, Any],
    inference: Mapping[str, Any] | None,
    ceiling: Mapping[str, Any] | None,
    task: str,
    metrics_path: str,
    predictions_path: str,
    adapter: LVLMAdapter | None = None,
    logger: logging.Logger | None = None,
    replicate: int = 0,
) -> dict[str, Any]:
    """Rule ceiling_inference: the LVLM answers the ceiling's val queries with their top beams' ICDs, per shot
    (those <= shot_num); writes metrics.json and predictions.parquet like a selector cell; returns the metrics.

    ``identity``: dataset, beam_model, sampler, ex_name (the beams' params must agree). Every check runs before the
    LVLM loads (it loads only if a batch is left to generate: a journal from a killed run is resumed), and a
    failed job leaves no metrics.json."""
    from lever_lm.data import load_records
    from lever_lm.inference.config import config_digest
    from lever_lm.inference.evaluation import evaluate
    from lever_lm.inference.inputs import load_lvlm, val_queries
    from lever_lm.inference.jobs import start_cell
    from lever_lm.inference.journal import InferenceJournal, journal_path
    from lever_lm.inference.outputs import metrics_record, write_inference_outputs
    from lever_lm.io_utils import file_sha256, inputs_fingerprint

    logger = logger or log
    cfg = start_cell("ceiling", identity, IDENTITY_KEYS, metrics_path, inference, task)
    ceiling_cfg = CeilingConfig.from_config(ceiling)
    val, examples = load_records(val_records), _train_table(train_records)
    rows = ceiling_query_rows(len(val), ceiling_cfg, cfg.to_dict())
    params, top, construct_order, shot_num = _checked_beams(
        beams, identity, rows, val["question_id"].tolist(), len(examples)
    )
    shots, left_out = ceiling_shots(cfg.shots, shot_num)
    if not shots:
        raise InputError(
            f"inference.shots {list(cfg.shots)}: none is <= beam_search.shot_num {shot_num}, so the "
            "ceiling has nothing to evaluate (set ceiling.enabled: false)"
        )
    if left_out:
        logger.info("shots %s are not evaluated: a beam holds beam_search.shot_num = %d ICDs", list(left_out), shot_num)
    queries = val_queries(val, rows, task, val_records)
    chooser = CeilingRetriever(top, construct_order, shot_num, str(beams))
    for shot in shots:
        chooser.check(rows, shot)
    logger.info(
        "ceiling %s %s: %d val queries, shots %s",
        identity["beam_model"],
        identity["sampler"],
        len(queries),
        list(shots),
    )
    beams_sha256 = file_sha256(beams)
    ceiling_info = {
        **ceiling_cfg.query_params(),
        "shot_num": shot_num,
        "construct_order": construct_order,
        "shots_not_evaluated": list(left_out),
    }
    parts = dict(
        kind="ceiling",
        task=task,
        inference=cfg.to_dict(),
        identity=dict(identity),
        entry=dict(entry),
        ceiling=ceiling_info,
    )
    files = {"train_records": train_records, "val_records": val_records, "beams": beams, "weights": list(weights or [])}
    fingerprint = config_digest(inputs=inputs_fingerprint(files), **parts)

    def load() -> LVLMAdapter:
        return load_lvlm(identity["beam_model"], entry, weights)

    with InferenceJournal(journal_path(predictions_path), fingerprint, logger) as journal:
        scores, predictions = evaluate(adapter or load, chooser, queries, examples, shots, cfg, task, logger, journal)
    digest = config_digest(**parts, beams_sha256=beams_sha256)
    metrics = metrics_record(
        kind="ceiling",
        dataset=identity["dataset"],
        task=task,
        beam_model=identity["beam_model"],
        version=None,
        sampler=identity["sampler"],
        baseline=None,
        shots=scores,
        queries=queries,
        cfg=cfg,
        checkpoint=None,
        digest=digest,
        replicate=replicate,
    )
    metrics["beams"] = {"path": str(beams), "sha256": beams_sha256, "params": params}
    metrics["ceiling"] = ceiling_info
    write_inference_outputs(metrics, predictions, metrics_path, predictions_path)
    journal.remove()
    return metrics
