"""Stage 3: seeded anchors and candidate sets (docs/stages.md, stage 3).

Ids are record ``idx`` values: train ids index the train records (the ICD ids), query ids index the
query split's records (train for anchors, val for test-time pools).

Public API
----------
- ``draw_anchors(n_train, sample_num, seed) -> list[int]``: sorted, distinct, seeded.
- ``SamplerConfig`` (frozen; ``SamplerConfig.from_config(section)`` reads config.yaml's ``candidates`` section),
  ``SAMPLERS`` (the four sampler names), ``sampler_params(sampler, cfg, **extra) -> dict`` (for file headers).
- ``EmbeddedSplit(image_ids, image=None, text=None, image_index=None, text_index=None)``: one split's image ids
  and L2-normalised embeddings (row i = record idx i), optionally with prebuilt faiss indexes (lever_lm.index)
  over them; without, an exact IndexFlatIP is built on the fly. ``rand_sampler`` needs no embeddings.
  ``load_embedded_split(records_path, image_path, text_path, meta_path=None, image_index_path=None,
  text_index_path=None)`` builds one from stored artifacts (``.encoder_id`` from the embeddings' meta).
- ``sample_candidates(sampler, query_ids, queries, train, cfg, exclude_self) -> {query id: [cand_num train ids]}``
  and the two thin wrappers ``anchor_candidates(sampler, anchors, train, cfg)`` (the anchor itself is always
  excluded) and ``test_pool_candidates(sampler, queries, train, cfg, query_ids=None)`` (val queries vs train).
  Exclusions: other train questions whose image_id equals the query's when ``exclude_same_image``.
- Files: ``write_anchors(path, anchors, params)`` / ``read_anchors(path) -> AnchorFile``;
  ``write_candidates(path, mapping, params)`` / ``read_candidates(path) -> CandidateFile``.

Samplers: rand (uniform without replacement, rng derived from (seed, sampler, query id), so results do not depend
on order or sharding); text_sim / img_sim (exact top-cand_num by inner product, best first, ties by lower id);
mix (text-sim top, then img-sim down its ranking skipping ids taken, then random from what is left; always
cand_num distinct ids).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from lever_lm.errors import InputError
from lever_lm.io_utils import atomic_path, read_json, write_json

SAMPLERS = ("rand_sampler", "text_sim_sampler", "img_sim_sampler", "mix_sampler")
# Distinct random streams per sampler, so the random part of mix_sampler is not rand_sampler's draw.
_RANDOM_STREAM = {"rand_sampler": 1, "mix_sampler": 2}


def draw_anchors(n_train: int, sample_num: int, seed: int) -> list[int]:
    """``sample_num`` distinct train ids drawn without replacement with numpy's Generator(seed), sorted."""
    if sample_num < 1:
        raise ValueError(f"anchors.sample_num must be >= 1, got {sample_num}")
    if sample_num > n_train:
        raise ValueError(f"anchors.sample_num = {sample_num} exceeds the train set size {n_train}")
    if seed < 0:
        raise ValueError(f"anchors.seed must be >= 0, got {seed}")
    rng = np.random.default_rng(seed)
    return sorted(int(i) for i in rng.choice(n_train, size=sample_num, replace=False))


@dataclass(frozen=True)
class SamplerConfig:
    """``mix_ratios`` = (random, text, image). ``search_margin``: extra neighbours fetched beyond the exact
    number needed, so ties at the cut are ordered by id rather than by faiss's heap order."""

    cand_num: int = 64
    exclude_same_image: bool = True
    seed: int = 0
    mix_ratios: tuple[float, float, float] = (0.5, 0.25, 0.25)
    search_margin: int = 8

    def __post_init__(self) -> None:
        # cand_num, seed and each ratio's bounds are the config schema's (``from_config``); not the ratios' sum
        if self.search_margin < 0:
            raise ValueError(f"candidates.search_margin must be >= 0, got {self.search_margin}")
        ratios = tuple(float(r) for r in self.mix_ratios)
        if len(ratios) != 3 or min(ratios) < 0 or abs(sum(ratios) - 1.0) > 1e-6:
            raise ValueError(
                f"candidates.mix_ratios must be three non-negative numbers (random, text, image) summing to 1, "
                f"got {self.mix_ratios}"
            )
        object.__setattr__(self, "mix_ratios", ratios)

    @classmethod
    def from_config(cls, section: Mapping[str, Any]) -> SamplerConfig:
        """From the ``candidates`` section, validated against the config schema with its defaults filled
        (``lever_lm.config.validate_section``; errors name the key: ``config key candidates.cand_num: ...``).
        ``mix_ratios`` is a mapping {random, text, image}; absent, the dataclass's (not a schema default, which would
        add it to the rules' params)."""
        from lever_lm.config import validate_section

        section = validate_section("candidates", section)
        values: dict[str, Any] = {
            "cand_num": int(section["cand_num"]),
            "exclude_same_image": section["exclude_same_image"],
            "seed": int(section["seed"]),
        }
        ratios = section.get("mix_ratios")
        if ratios is not None:
            values["mix_ratios"] = (ratios["random"], ratios["text"], ratios["image"])
        return cls(**values)

    def mix_counts(self) -> tuple[int, int, int]:
        """(random, text, image) counts; the sim parts are floored and the rounding remainder goes to random."""
        _, text_ratio, image_ratio = self.mix_ratios
        n_text = int(np.floor(self.cand_num * text_ratio + 1e-9))
        n_image = int(np.floor(self.cand_num * image_ratio + 1e-9))
        return self.cand_num - n_text - n_image, n_text, n_image


def sampler_params(sampler: str, cfg: SamplerConfig, **extra: Any) -> dict:
    """The parameters that define a candidate file (plus e.g. encoder_id, anchors file params)."""
    _check_sampler(sampler)
    params = {
        "sampler": sampler,
        "cand_num": cfg.cand_num,
        "exclude_same_image": cfg.exclude_same_image,
        "seed": cfg.seed,
    }
    if sampler == "mix_sampler":
        params["mix_ratios"] = dict(zip(("random", "text", "image"), cfg.mix_ratios))
    params.update(extra)
    return params


@dataclass(frozen=True)
class EmbeddedSplit:
    """One split: image_id per record row, and optionally its image / text embeddings (row = record idx)."""

    image_ids: np.ndarray
    image: np.ndarray | None = None
    text: np.ndarray | None = None
    # Optional prebuilt faiss indexes over this split's image / text embeddings (else built on the fly, a copy).
    image_index: Any = field(default=None, repr=False)
    text_index: Any = field(default=None, repr=False)
    encoder_id: str | None = None  # of the embeddings; queries and train must agree when both are known
    question_ids: np.ndarray | None = field(default=None, repr=False)  # per row, to name rows in errors

    def __post_init__(self) -> None:
        object.__setattr__(self, "image_ids", np.asarray(self.image_ids, dtype=np.int64).reshape(-1))
        if self.question_ids is not None:
            question_ids = np.asarray(self.question_ids, dtype=np.int64).reshape(-1)
            if len(question_ids) != len(self.image_ids):
                raise ValueError(f"question_ids: {len(question_ids)} ids for {len(self.image_ids)} records")
            object.__setattr__(self, "question_ids", question_ids)
        for name in ("image", "text"):
            array = getattr(self, name)
            if array is None:
                continue
            array = np.ascontiguousarray(array, dtype=np.float32)
            if array.ndim != 2 or array.shape[0] != len(self.image_ids):
                raise ValueError(f"{name} embeddings: shape {array.shape} does not match {len(self.image_ids)} records")
            object.__setattr__(self, name, array)
            index = getattr(self, f"{name}_index")
            if index is not None and (index.ntotal != array.shape[0] or index.d != array.shape[1]):
                raise ValueError(
                    f"{name} index: {index.ntotal} x {index.d} does not match its embeddings {array.shape}"
                )

    def __len__(self) -> int:
        return len(self.image_ids)


def load_embedded_split(
    records_path: str | os.PathLike,
    image_path: str | os.PathLike,
    text_path: str | os.PathLike,
    meta_path: str | os.PathLike | None = None,
    image_index_path: str | os.PathLike | None = None,
    text_index_path: str | os.PathLike | None = None,
) -> EmbeddedSplit:
    """Records' image ids + stored embeddings (validated against their meta.json) + optional faiss indexes.

    ``meta_path`` defaults to the sibling ``{split}.meta.json`` of ``{split}.image.npy``.
    """
    from lever_lm.data import load_records
    from lever_lm.embeddings import EmbeddingPaths, load_embeddings

    image_path = Path(image_path)
    if meta_path is None:
        if not image_path.name.endswith(".image.npy"):
            raise ValueError(f"{image_path}: cannot derive the meta file; expected a name like train.image.npy")
        meta_path = image_path.with_name(image_path.name.removesuffix(".image.npy") + ".meta.json")
    embeddings = load_embeddings(EmbeddingPaths(image_path, Path(text_path), Path(meta_path)))
    records = load_records(records_path)
    if len(records) != embeddings.meta["n"]:
        raise ValueError(f"{records_path}: {len(records)} records but {meta_path} says n = {embeddings.meta['n']}")
    if not np.array_equal(records["idx"].to_numpy(), np.arange(len(records))):
        raise ValueError(f"{records_path}: column idx must be 0..n-1 in row order (embedding rows follow it)")
    indexes = {}
    for name, path in (("image_index", image_index_path), ("text_index", text_index_path)):
        if path is not None:
            from lever_lm.index import read_index

            indexes[name] = read_index(path)
    return EmbeddedSplit(
        image_ids=records["image_id"].to_numpy(),
        image=embeddings.image,
        text=embeddings.text,
        encoder_id=embeddings.meta["encoder_id"],
        question_ids=records["question_id"].to_numpy(),
        **indexes,
    )


def _check_sampler(sampler: str) -> None:
    if sampler not in SAMPLERS:
        raise ValueError(f"unknown sampler {sampler!r}; known samplers: {list(SAMPLERS)}")


def _check_query_ids(query_ids: Sequence[int], n_queries: int) -> np.ndarray:
    ids = np.asarray(list(query_ids), dtype=np.int64).reshape(-1)
    if len(ids) == 0:
        raise ValueError("query ids: empty list")
    out_of_range = ids[(ids < 0) | (ids >= n_queries)]
    if len(out_of_range):
        raise ValueError(f"query ids out of range 0..{n_queries - 1}: {out_of_range[:5].tolist()}")
    unique, counts = np.unique(ids, return_counts=True)
    if (counts > 1).any():
        raise ValueError(f"query ids repeated: {unique[counts > 1][:5].tolist()}")
    return ids


def _embeddings_for(sampler: str, modality: str, queries: EmbeddedSplit, train: EmbeddedSplit) -> tuple:
    """(query embeddings, train faiss index) of one modality."""
    query_emb, train_emb = getattr(queries, modality), getattr(train, modality)
    if query_emb is None or train_emb is None:
        raise ValueError(f"{sampler} needs {modality} embeddings of both the queries and the train set")
    if query_emb.shape[1] != train_emb.shape[1]:
        raise ValueError(
            f"{sampler}: {modality} embedding dims differ (queries {query_emb.shape[1]}, train {train_emb.shape[1]})"
        )
    index = getattr(train, f"{modality}_index")
    if index is None:
        from lever_lm.index import build_flat_ip_index

        index = build_flat_ip_index(train_emb)
    return query_emb, index


@dataclass
class _QueryBatch:
    ids: np.ndarray  # query ids (rows of the query split)
    image_ids: np.ndarray  # their image ids
    n_excluded: np.ndarray  # how many train ids each query may not use
    exclude_self: bool
    exclude_same_image: bool
    train_image_ids: np.ndarray = field(repr=False)

    def excluded(self, train_ids: np.ndarray, rows: slice | np.ndarray = slice(None)) -> np.ndarray:
        """Boolean mask, same shape as ``train_ids`` ([nq, k] for the rows selected), True where not allowed."""
        mask = np.zeros(train_ids.shape, dtype=bool)
        if self.exclude_same_image:
            mask |= self.train_image_ids[train_ids] == self.image_ids[rows, None]
        if self.exclude_self:
            mask |= train_ids == self.ids[rows, None]
        return mask


def _query_batch(
    query_ids: np.ndarray, queries: EmbeddedSplit, train: EmbeddedSplit, cfg: SamplerConfig, exclude_self: bool
) -> _QueryBatch:
    n_train = len(train)
    if exclude_self and len(queries) != n_train:
        raise ValueError("exclude_self needs the queries to be the train set itself (anchors)")
    query_image_ids = queries.image_ids[query_ids]
    n_excluded = np.zeros(len(query_ids), dtype=np.int64)
    if cfg.exclude_same_image:
        image_values, image_counts = np.unique(train.image_ids, return_counts=True)
        position = np.clip(np.searchsorted(image_values, query_image_ids), 0, len(image_values) - 1)
        n_excluded += np.where(image_values[position] == query_image_ids, image_counts[position], 0)
    if exclude_self:
        # The anchor itself is already counted when its own image is excluded.
        self_counted = cfg.exclude_same_image & (train.image_ids[query_ids] == query_image_ids)
        n_excluded += ~self_counted
    too_few = n_train - n_excluded < cfg.cand_num
    if too_few.any():
        rows = query_ids[too_few]
        names = "row" if queries.question_ids is None else "question_id"
        shown = rows if queries.question_ids is None else queries.question_ids[rows]
        listed = ", ".join(str(int(i)) for i in shown[:5]) + (f", ... ({len(rows) - 5} more)" if len(rows) > 5 else "")
        raise InputError(
            f"config key candidates.cand_num: {cfg.cand_num} exceeds the train ids allowed "
            f"({n_train} minus exclusions, at most {int(n_train - n_excluded.max())} for every query) "
            f"for {len(rows)} {'anchor' if exclude_self else 'query'} {names}(s) {listed}"
        )
    return _QueryBatch(query_ids, query_image_ids, n_excluded, exclude_self, cfg.exclude_same_image, train.image_ids)


def _ranked_allowed(query_emb: np.ndarray, index: Any, batch: _QueryBatch, depth: int, margin: int) -> np.ndarray:
    """[nq, depth] allowed train ids per query, by descending inner product, ties by ascending id.

    Searching depth + (most exclusions of any query) neighbours guarantees ``depth`` allowed ones remain.
    """
    from lever_lm.index import search

    k = min(int(index.ntotal), depth + int(batch.n_excluded.max()) + margin)
    scores, ids = search(index, query_emb[batch.ids], k)
    order = np.lexsort((ids, -scores), axis=-1)
    ids = np.take_along_axis(ids, order, axis=-1)
    excluded = batch.excluded(ids)
    allowed_first = np.argsort(excluded, axis=-1, kind="stable")[:, :depth]
    return np.take_along_axis(ids, allowed_first, axis=-1)


def check_cand_num_fits(
    image_ids: Sequence[int], question_ids: Sequence[int], cand_num: int, exclude_same_image: bool, source: str
) -> None:
    """Every train question, as an anchor, leaves at least ``cand_num`` allowed train ids (not itself, nor, with
    ``exclude_same_image``, its image's other questions); InputError naming the question ids otherwise.

    This bounds the test pools too: a val query excludes at most the train questions of one image.
    Run on the train records alone, so it can fail in the records stage, before any embedding is computed.
    """
    image_ids = np.asarray(image_ids, dtype=np.int64).reshape(-1)
    question_ids = np.asarray(question_ids, dtype=np.int64).reshape(-1)
    n_train = len(image_ids)
    if exclude_same_image:
        _, inverse, counts = np.unique(image_ids, return_inverse=True, return_counts=True)
        excluded = counts[inverse.reshape(-1)]
    else:
        excluded = np.ones(n_train, dtype=np.int64)
    too_few = n_train - excluded < cand_num
    if too_few.any():
        shown = question_ids[too_few]
        listed = ", ".join(str(int(i)) for i in shown[:5]) + (
            f", ... ({len(shown) - 5} more)" if len(shown) > 5 else ""
        )
        same_image = " and its image's other questions" if exclude_same_image else ""
        raise InputError(
            f"config key candidates.cand_num: {cand_num} exceeds the {n_train} train questions of {source} minus "
            f"the anchor itself{same_image} (at most {int(n_train - excluded.max()) if n_train else 0} fits) "
            f"for {len(shown)} question_id(s) {listed}"
        )


def _random_allowed(
    rng: np.random.Generator, batch: _QueryBatch, row: int, count: int, taken: np.ndarray, n_train: int
) -> np.ndarray:
    """``count`` uniform draws without replacement from the allowed ids not in ``taken``.

    A random ordered sample of all ids, filtered, is a random ordered sample of the allowed ones; drawing
    count + (excluded) + (taken) ids guarantees ``count`` survive.
    """
    if count == 0:
        return np.zeros(0, dtype=np.int64)
    draw = rng.choice(n_train, size=count + int(batch.n_excluded[row]) + len(taken), replace=False)
    keep = ~batch.excluded(draw[None, :], rows=np.array([row]))[0]
    if len(taken):
        keep &= ~_membership(taken, n_train)[draw]
    return draw[keep][:count].astype(np.int64)


def _membership(ids: np.ndarray, n_train: int) -> np.ndarray:
    """Boolean mask over train ids; much cheaper than np.isin for a few dozen ids."""
    mask = np.zeros(n_train, dtype=bool)
    mask[ids] = True
    return mask


def _query_rng(seed: int, sampler: str, query_id: int) -> np.random.Generator:
    return np.random.default_rng([seed, _RANDOM_STREAM[sampler], int(query_id)])


def sample_candidates(
    sampler: str,
    query_ids: Iterable[int],
    queries: EmbeddedSplit,
    train: EmbeddedSplit,
    cfg: SamplerConfig,
    exclude_self: bool,
) -> dict[int, list[int]]:
    """``cfg.cand_num`` distinct allowed train ids per query id (see module docstring)."""
    _check_sampler(sampler)
    if queries.encoder_id and train.encoder_id and queries.encoder_id != train.encoder_id:
        raise ValueError(
            f"query embeddings ({queries.encoder_id}) and train embeddings ({train.encoder_id}) come from "
            "different encoders"
        )
    ids = _check_query_ids(list(query_ids), len(queries))
    batch = _query_batch(ids, queries, train, cfg, exclude_self)
    n_train = len(train)
    empty = np.zeros(0, dtype=np.int64)

    if sampler == "rand_sampler":
        rows = [
            _random_allowed(_query_rng(cfg.seed, sampler, qid), batch, row, cfg.cand_num, empty, n_train)
            for row, qid in enumerate(ids)
        ]
        chosen = np.stack(rows)
    elif sampler in ("text_sim_sampler", "img_sim_sampler"):
        modality = "text" if sampler == "text_sim_sampler" else "image"
        query_emb, train_index = _embeddings_for(sampler, modality, queries, train)
        chosen = _ranked_allowed(query_emb, train_index, batch, cfg.cand_num, cfg.search_margin)
    else:
        chosen = _mix(batch, queries, train, cfg)
    return {int(qid): [int(t) for t in row] for qid, row in zip(ids, chosen)}


def _mix(batch: _QueryBatch, queries: EmbeddedSplit, train: EmbeddedSplit, cfg: SamplerConfig) -> np.ndarray:
    _, n_text, n_image = cfg.mix_counts()
    nq = len(batch.ids)
    text_part = np.zeros((nq, 0), dtype=np.int64)
    if n_text:
        query_emb, train_index = _embeddings_for("mix_sampler", "text", queries, train)
        text_part = _ranked_allowed(query_emb, train_index, batch, n_text, cfg.search_margin)
    image_ranking = np.zeros((nq, 0), dtype=np.int64)
    if n_image:
        query_emb, train_index = _embeddings_for("mix_sampler", "image", queries, train)
        # Deep enough to still hold n_image ids after skipping every text-part id.
        image_ranking = _ranked_allowed(query_emb, train_index, batch, n_image + n_text, cfg.search_margin)
    rows = []
    for row, qid in enumerate(batch.ids):
        taken = text_part[row]
        image_part = image_ranking[row][~_membership(taken, len(train))[image_ranking[row]]][:n_image]
        taken = np.concatenate([taken, image_part])
        rng = _query_rng(cfg.seed, "mix_sampler", qid)
        random_part = _random_allowed(rng, batch, row, cfg.cand_num - len(taken), taken, len(train))
        rows.append(np.concatenate([taken, random_part]))
    return np.stack(rows)


def anchor_candidates(
    sampler: str, anchors: Sequence[int], train: EmbeddedSplit, cfg: SamplerConfig
) -> dict[int, list[int]]:
    """Candidate sets of train anchors: never the anchor itself (nor its image's questions if configured)."""
    return sample_candidates(sampler, anchors, train, train, cfg, exclude_self=True)


def test_pool_candidates(
    sampler: str,
    queries: EmbeddedSplit,
    train: EmbeddedSplit,
    cfg: SamplerConfig,
    query_ids: Sequence[int] | None = None,
) -> dict[int, list[int]]:
    """Test-time pools: each val query (all rows by default) searched against the train set."""
    ids = range(len(queries)) if query_ids is None else query_ids
    return sample_candidates(sampler, ids, queries, train, cfg, exclude_self=False)


test_pool_candidates.__test__ = False  # not a pytest test despite its name


# ---------------------------------------------------------------- files


@dataclass(frozen=True)
class AnchorFile:
    params: dict
    anchors: list[int]


@dataclass(frozen=True)
class CandidateFile:
    params: dict
    candidates: dict[int, list[int]]


def _as_int(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise InputError(f"{what}: expected an integer, got {value!r}")
    return int(value)


def write_anchors(path: str | os.PathLike, anchors: Sequence[int], params: Mapping[str, Any]) -> None:
    values = [_as_int(a, f"anchors ({path})") for a in anchors]
    if len(set(values)) != len(values):
        repeated = sorted({a for a in values if values.count(a) > 1})
        raise ValueError(f"anchors ({path}): repeated ids {repeated[:5]}")
    write_json(path, {"params": dict(params), "anchors": values}, indent=None)


def read_anchors(path: str | os.PathLike) -> AnchorFile:
    data = read_json(path)
    if (
        not isinstance(data, dict)
        or not isinstance(data.get("params"), dict)
        or not isinstance(data.get("anchors"), list)
    ):
        raise InputError(f"{path}: expected {{'params': {{...}}, 'anchors': [...]}}")
    anchors = [_as_int(a, f"{path}: anchors") for a in data["anchors"]]
    if len(set(anchors)) != len(anchors):
        raise InputError(f"{path}: repeated anchor ids")
    return AnchorFile(params=data["params"], anchors=anchors)


def _validated_candidates(
    mapping: Mapping[Any, Sequence[Any]], source: str, cand_num: int | None
) -> dict[int, list[int]]:
    result: dict[int, list[int]] = {}
    bad: list[str] = []
    for key, values in mapping.items():
        try:
            qid = int(key)
        except (TypeError, ValueError):
            raise InputError(f"{source}: query id {key!r} is not an integer") from None
        ids = [_as_int(v, f"{source}: query id {qid}") for v in values]
        if len(set(ids)) != len(ids) or min(ids, default=0) < 0 or (cand_num is not None and len(ids) != cand_num):
            bad.append(str(qid))
        result[qid] = ids
    if bad:
        raise InputError(
            f"{source}: candidate lists must hold {cand_num if cand_num is not None else 'the same number of'} "
            f"distinct non-negative ids; offending query ids {bad[:5]}"
        )
    lengths = {len(ids) for ids in result.values()}
    if len(lengths) > 1:
        raise InputError(f"{source}: candidate lists have different lengths {sorted(lengths)}")
    return result


def write_candidates(path: str | os.PathLike, mapping: Mapping[int, Sequence[int]], params: Mapping[str, Any]) -> None:
    """Atomic json {"params": {...}, "candidates": {"<query id>": [...]}}, one query per line."""
    cand_num = params.get("cand_num")
    candidates = _validated_candidates(mapping, f"candidates ({path})", cand_num)
    lines = [f" {json.dumps(str(qid))}: {json.dumps(ids)}" for qid, ids in sorted(candidates.items())]
    text = (
        '{"params": ' + json.dumps(dict(params), sort_keys=True) + ',\n"candidates": {\n' + ",\n".join(lines) + "\n}}\n"
    )
    with atomic_path(path, suffix=".json") as tmp:
        tmp.write_text(text, encoding="utf-8")


def read_candidates(path: str | os.PathLike) -> CandidateFile:
    if not Path(path).is_file():
        raise FileNotFoundError(f"{path}: candidate file not found")
    data = read_json(path)
    if (
        not isinstance(data, dict)
        or not isinstance(data.get("params"), dict)
        or not isinstance(data.get("candidates"), dict)
    ):
        raise InputError(f"{path}: expected {{'params': {{...}}, 'candidates': {{...}}}}")
    candidates = _validated_candidates(data["candidates"], str(path), data["params"].get("cand_num"))
    return CandidateFile(params=data["params"], candidates=candidates)
