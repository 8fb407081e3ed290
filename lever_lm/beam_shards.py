"""Beam search spread over shards: deterministic split, resumable jsonl shards, and a checked gather.

Shard file (jsonl): line 1 is a header ``{"params": {...}}`` (ex_name, the generation parameters, plus the
caller's ``run_params`` such as beam_model, sampler and the candidate file's params); then one
``AnchorBeams.to_record()`` line per finished anchor, appended with fsync, so a killed job loses at most
the line it was writing.

Resume and Snakemake: Snakemake deletes the declared outputs of a failed job, so the workflow script runs
``run_beam_shard`` on ``partial_path(output)`` (``<output>.partial``, NOT a declared output) and, when it
returns, calls ``finalize_shard(partial, output)`` (an atomic rename). A rerun after a crash finds the
``.partial`` file, cuts a torn last line, checks that the header params are identical (else ValueError
naming the file and the differing keys), skips the anchors already done and appends the rest.
The workflow also passes ``input_fingerprint`` (``inputs_fingerprint`` of the rule's input files: anchors,
candidates, train records, the LVLM's weights): with the params and the shard's anchors it is stamped in
``<output>.partial.fingerprint``, and a partial file made from other inputs or config (a rebuilt model, say) is
discarded with a warning instead of being resumed. ``finalize_shard`` removes the stamp.

Public API
- ``parse_scatter_item("3-of-8") -> (2, 8)`` (0-based shard index, shard count).
- ``shard_anchors(anchor_ids, n_shards, shard_index) -> list[int]``: strided, ``anchor_ids[shard_index::n_shards]``,
  so every shard gets a spread of the anchors file (balanced even if cost drifts along it).
- ``shard_params(cfg, run_params) -> dict``; ``partial_path(final)``; ``finalize_shard(partial, final)``.
- ``run_beam_shard(anchor_ids, candidates, train_records, adapter, cfg, out_path, run_params=None, log=...,
  progress_interval_s=30, input_fingerprint=None, queries=None, candidates_source=None)``. ``queries``: the val
  records' ``ExampleTable`` when the queries are val questions (the imitation ceiling, ``lever_lm.ceiling``): then
  ``anchor_id`` in the records is a val record idx, the header says ``"query_split": "val"``, and the pools are
  checked as train ids without comparing them with the query's id (another split's). None: train anchors, as always.
- ``validate_shard_inputs(anchor_ids, candidates, examples, cfg, queries=None, candidates_source=None)``: the checks
  ``run_beam_shard`` makes before writing anything, for callers that want them before loading the LVLM.
- ``read_beam_shard(path) -> (params, records)``.
- ``gather_beam_shards(shard_paths, expected_anchor_ids, out_path)``: one json ``{"params", "anchors"}``, anchors in
  the order of ``expected_anchor_ids``; every anchor exactly once across shards, params identical.
- ``read_beams(path) -> dict``: the gathered file, checked.
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lever_lm.beam_search import (
    BeamSearchConfig,
    ExampleTable,
    ex_name,
    query_kind,
    search_anchor,
    validate_candidate_pool,
)
from lever_lm.io_utils import append_jsonl, atomic_path, cut_torn_tail, json_sha256, read_json, read_jsonl, write_json
from lever_lm.progress import ProgressReporter

if TYPE_CHECKING:
    import pandas as pd

    from lever_lm.lvlm.base import LVLMAdapter

logger = logging.getLogger(__name__)

_SCATTER_ITEM = re.compile(r"^(\d+)-of-(\d+)$")
_RECORD_KEYS = ("anchor_id", "question_id", "sequences", "step_scores", "scores")


def _first(items: Sequence[Any], n: int = 5) -> str:
    items = list(items)
    return f"{items[:n]}" + (f" (+{len(items) - n} more)" if len(items) > n else "")


def parse_scatter_item(item: str) -> tuple[int, int]:
    """Snakemake scattergather item ``"3-of-8"`` -> ``(2, 8)``: 0-based shard index and shard count."""
    match = _SCATTER_ITEM.match(str(item).strip())
    if not match:
        raise ValueError(f"scatter item {item!r}: expected '<i>-of-<n>' such as '3-of-8'")
    one_based, count = int(match.group(1)), int(match.group(2))
    if not 1 <= one_based <= count:
        raise ValueError(f"scatter item {item!r}: index must be between 1 and {count}")
    return one_based - 1, count


def shard_anchors(anchor_ids: Sequence[int], n_shards: int, shard_index: int) -> list[int]:
    """The anchors of one shard: strided over the anchors file, ``anchor_ids[shard_index::n_shards]``."""
    if n_shards < 1:
        raise ValueError(f"n_shards must be >= 1, got {n_shards}")
    if not 0 <= shard_index < n_shards:
        raise ValueError(f"shard_index {shard_index} out of range for {n_shards} shards")
    return [int(a) for a in list(anchor_ids)[shard_index::n_shards]]


def shard_params(cfg: BeamSearchConfig, run_params: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Header params of a shard: ex_name, the generation parameters, then the caller's run params."""
    params: dict[str, Any] = {"ex_name": ex_name(cfg), **cfg.generation_params()}
    for key, value in (run_params or {}).items():
        if key in params and params[key] != value:
            raise ValueError(f"run_params[{key!r}]={value!r} contradicts the beam search config ({params[key]!r})")
        params[key] = value
    return json.loads(json.dumps(params))  # normalise (tuples -> lists) so it compares equal to a re-read header


def partial_path(final_path: str | os.PathLike) -> Path:
    """In-progress sibling of a shard output: ``<final>.partial`` (never a declared Snakemake output)."""
    final = Path(final_path)
    return final.with_name(final.name + ".partial")


def fingerprint_path(partial: str | os.PathLike) -> Path:
    """The stamp of what a partial shard file was made from: ``<partial>.fingerprint``."""
    partial = Path(partial)
    return partial.with_name(partial.name + ".fingerprint")


def finalize_shard(partial: str | os.PathLike, final: str | os.PathLike) -> None:
    """Atomically publish a finished shard file under its final name (and drop its fingerprint stamp)."""
    os.replace(partial, final)
    fingerprint_path(partial).unlink(missing_ok=True)


def _check_fingerprint(path: Path, key: str, log: logging.Logger) -> None:
    """Discard a partial file stamped with another fingerprint (or none), then stamp this run's."""
    stamp = fingerprint_path(path)
    old = stamp.read_text(encoding="utf-8").strip() if stamp.is_file() else None
    if old == key:
        return
    if path.exists():
        log.warning("%s was made from other inputs or config: starting over", path)
        path.unlink()
    with atomic_path(stamp) as tmp:
        tmp.write_text(key + "\n", encoding="utf-8")


def _differing_keys(a: Mapping[str, Any], b: Mapping[str, Any]) -> list[str]:
    return sorted(k for k in set(a) | set(b) if a.get(k, "<missing>") != b.get(k, "<missing>"))


def read_beam_shard(path: str | os.PathLike) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Header params and anchor records of a shard file (a torn last line is ignored)."""
    lines = read_jsonl(path)
    if not lines or not isinstance(lines[0], dict) or set(lines[0]) != {"params"}:
        raise ValueError(f"{path}: first line must be a header {{'params': ...}}")
    records = lines[1:]
    for lineno, record in enumerate(records, start=2):
        if not isinstance(record, dict) or any(k not in record for k in _RECORD_KEYS):
            raise ValueError(f"{path}:{lineno}: not an anchor record (need keys {list(_RECORD_KEYS)})")
    return lines[0]["params"], records


def validate_shard_inputs(
    anchor_ids: Sequence[int],
    candidates: Mapping[int, Sequence[int]],
    examples: ExampleTable,
    cfg: BeamSearchConfig,
    queries: ExampleTable | None = None,
    candidates_source: str | None = None,
) -> None:
    """Check every anchor (or val query) of the shard up front, so bad input fails before anything is written.

    Messages about a pool start with ``candidates_source`` (the file) when given; about a query, they name its
    record (idx and question_id, and the query records' ``source`` for another split than train)."""
    n_train = len(examples)
    table = examples if queries is None else queries
    split, n_queries = table.split, len(table)
    plural = "anchors" if split == "train" else f"{split} queries"
    pools = f"{candidates_source}: " if candidates_source else ""
    records = "" if split == "train" else f"{table.source}: "
    duplicated = sorted(a for a, n in Counter(anchor_ids).items() if n > 1)
    if duplicated:
        raise ValueError(f"{plural} listed more than once: {_first(duplicated)}")
    out_of_range = [a for a in anchor_ids if not 0 <= a < n_queries]
    if out_of_range:
        kind = "anchor ids" if split == "train" else f"{split} query ids"
        raise ValueError(f"{records}{kind} outside the {split} split (0..{n_queries - 1}): {_first(out_of_range)}")
    no_candidates = [a for a in anchor_ids if a not in candidates]
    if no_candidates:
        raise ValueError(f"{pools}{plural} without a candidate set: {_first(no_candidates)}")
    wrong_size = [a for a in anchor_ids if len(candidates[a]) != cfg.cand_num]
    if wrong_size:
        sizes = [len(candidates[a]) for a in wrong_size[:5]]
        raise ValueError(f"{pools}cand_num={cfg.cand_num} but {plural} {_first(wrong_size)} have {sizes} candidates")
    for anchor in anchor_ids:
        question_id = table.question_ids[anchor]
        try:
            validate_candidate_pool(anchor, candidates[anchor], cfg, question_id, split)
        except ValueError as err:
            raise ValueError(f"{pools}{err}") from None
        bad_ids = [c for c in candidates[anchor] if not 0 <= c < n_train]
        if bad_ids:
            raise ValueError(
                f"{pools}{query_kind(split)} {anchor} (question_id {question_id}): candidate ids outside the train "
                f"split {_first(bad_ids)} (train ids are 0..{n_train - 1})"
            )
    empty_anchors = table.empty_label_ids(anchor_ids)
    if empty_anchors:
        named = [f"{a} (question_id {table.question_ids[a]})" for a in empty_anchors[:5]]
        raise ValueError(
            f"{records}{plural} with an empty label answer: {named}" + (" ..." if len(empty_anchors) > 5 else "")
        )
    used = sorted({c for a in anchor_ids for c in candidates[a]})
    empty_icds = examples.empty_label_ids(used)
    if empty_icds:
        raise ValueError(f"candidate ICDs with an empty label answer (train ids): {_first(empty_icds)}")


def _resume_state(path: Path, params: Mapping[str, Any], anchor_ids: Sequence[int]) -> tuple[bool, set[int]]:
    """(header already written, anchors already done) for an in-progress shard file."""
    if not path.exists():
        return False, set()
    cut_torn_tail(path)
    if path.stat().st_size == 0:
        return False, set()
    old_params, records = read_beam_shard(path)
    differing = _differing_keys(old_params, params)
    if differing:
        details = ", ".join(
            f"{k}: {old_params.get(k, '<missing>')!r} -> {params.get(k, '<missing>')!r}" for k in differing
        )
        raise ValueError(
            f"{path}: written with different params ({details}); delete it to start over, or restore the config"
        )
    done = [int(r["anchor_id"]) for r in records]
    repeated = sorted(a for a, n in Counter(done).items() if n > 1)
    if repeated:
        raise ValueError(f"{path}: anchors recorded more than once: {_first(repeated)}")
    foreign = sorted(set(done) - set(anchor_ids))
    if foreign:
        raise ValueError(f"{path}: holds anchors that are not in this shard: {_first(foreign)}")
    return True, set(done)


def run_beam_shard(
    anchor_ids: Sequence[int],
    candidates: Mapping[int, Sequence[int]],
    train_records: pd.DataFrame | ExampleTable,
    adapter: LVLMAdapter,
    cfg: BeamSearchConfig,
    out_path: str | os.PathLike,
    run_params: Mapping[str, Any] | None = None,
    log: logging.Logger = logger,
    progress_interval_s: float = 30.0,
    input_fingerprint: str | Mapping[str, Any] | None = None,
    queries: ExampleTable | None = None,
    candidates_source: str | None = None,
) -> None:
    """Beam-search ``anchor_ids`` into the jsonl ``out_path`` (the ``.partial`` file), resuming where it stopped.

    ``input_fingerprint``: what the inputs' bytes give (``io_utils.inputs_fingerprint``); with it, a partial file
    made from other inputs, params or anchors is discarded rather than resumed. ``queries``: the table the ids of
    ``anchor_ids`` index when they are not train anchors (the val records); ``candidates_source``: the candidate
    file's name for messages."""
    anchor_ids = [int(a) for a in anchor_ids]
    candidates = {int(a): [int(c) for c in cands] for a, cands in candidates.items()}
    examples = train_records if isinstance(train_records, ExampleTable) else ExampleTable.from_records(train_records)
    validate_shard_inputs(anchor_ids, candidates, examples, cfg, queries, candidates_source)
    query_split = examples.split if queries is None else queries.split
    # the header says when the ids are not train anchors; train anchors keep their header (and bytes) unchanged
    extra = {} if query_split == "train" else {"query_split": query_split}
    params = shard_params(cfg, {**(run_params or {}), **extra})

    path = Path(out_path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if input_fingerprint is not None:
        key = {"inputs": input_fingerprint, "params": params, "anchors": anchor_ids}
        _check_fingerprint(path, json_sha256(key), log)
    has_header, done = _resume_state(path, params, anchor_ids)
    remaining = [a for a in anchor_ids if a not in done]
    unit = "anchors" if query_split == "train" else f"{query_split} queries"
    log.info(
        "beam shard %s: %s, %d %s, %d done before, %d to go (%s path)",
        path,
        params["ex_name"],
        len(anchor_ids),
        unit,
        len(done),
        len(remaining),
        "fast" if cfg.use_fast_path else "naive",
    )
    progress = ProgressReporter(len(anchor_ids), unit, progress_interval_s, log, already_done=len(done))
    with open(path, "a" if has_header else "w", encoding="utf-8") as handle:
        if not has_header:
            append_jsonl(handle, {"params": params})
        for anchor in remaining:
            beams = search_anchor(adapter, examples, anchor, candidates[anchor], cfg, queries)
            append_jsonl(handle, beams.to_record())
            progress.advance()
    progress.finish()


def gather_beam_shards(
    shard_paths: Sequence[str | os.PathLike], expected_anchor_ids: Sequence[int], out_path: str | os.PathLike
) -> None:
    """Merge shard files into one json, checking params agree and every expected anchor appears exactly once."""
    if not shard_paths:
        raise ValueError("gather: no shard files given")
    expected = [int(a) for a in expected_anchor_ids]
    first_params: dict[str, Any] | None = None
    where: dict[int, list[str]] = {}
    by_anchor: dict[int, dict[str, Any]] = {}
    for shard in shard_paths:
        params, records = read_beam_shard(shard)
        if first_params is None:
            first_params = params
        elif params != first_params:
            raise ValueError(
                f"gather: {shard} has params differing from {shard_paths[0]} in {_differing_keys(first_params, params)}"
            )
        for record in records:
            anchor = int(record["anchor_id"])
            where.setdefault(anchor, []).append(str(shard))
            by_anchor[anchor] = record
    problems = []
    missing = [a for a in expected if a not in where]
    if missing:
        problems.append(f"missing anchors {_first(missing)}")
    duplicated = {a: files for a, files in where.items() if len(files) > 1}
    if duplicated:
        problems.append(
            "anchors in more than one place " + "; ".join(f"{a}: {f}" for a, f in list(duplicated.items())[:5])
        )
    unexpected = sorted(set(where) - set(expected))
    if unexpected:
        problems.append(
            f"anchors not in the anchors file {_first(unexpected)} (in {sorted({where[a][0] for a in unexpected})})"
        )
    if problems:
        raise ValueError(f"gather over {[str(p) for p in shard_paths]}: " + " | ".join(problems))
    write_json(out_path, {"params": first_params, "anchors": [by_anchor[a] for a in expected]}, indent=None)


def read_beams(path: str | os.PathLike) -> dict[str, Any]:
    """The gathered beam file ``{"params", "anchors"}``, with each anchor record's keys checked."""
    data = read_json(path)
    if not isinstance(data, dict) or set(data) != {"params", "anchors"}:
        raise ValueError(f"{path}: expected a json object with keys 'params' and 'anchors'")
    for position, record in enumerate(data["anchors"]):
        if not isinstance(record, dict) or any(k not in record for k in _RECORD_KEYS):
            raise ValueError(f"{path}: anchors[{position}] is not an anchor record (need keys {list(_RECORD_KEYS)})")
    return data
