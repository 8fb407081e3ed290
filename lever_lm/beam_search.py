"""InfoScore beam search over ICD sequences, per anchor (docs/stages.md stage 4), or per val query for the imitation
ceiling.

With P̄(y | ctx) = exp(mean log p) over the anchor's label answer tokens plus the end-of-chunk token,

    InfoScore(c; S, x) = P̄(y | c ⊕ S ⊕ x) − P̄(y | S ⊕ x)     construct_order "left"
    InfoScore(c; S, x) = P̄(y | S ⊕ c ⊕ x) − P̄(y | S ⊕ x)     construct_order "right"

Per anchor: ``beams = [((), [])]``; at each of ``shot_num`` steps every beam scores every candidate not
already in it, keeps its own top ``beam_size`` as new sequences (in prompt order), and the next beams are
the top ``beam_size`` of that pool by the step's score, largest first (negative scores included). Ties go
to the earlier beam, then the earlier candidate position.

Public API
- ``BeamSearchConfig`` (frozen), ``config_from_dict(entry)``, ``ex_name(cfg)``.
- ``beam_search_anchor(anchor_id, candidate_ids, sequence_scorer, cfg, question_id=None, query_split="train")
  -> AnchorBeams``:
  the algorithm, with an injectable ``sequence_scorer(list of ICD-id tuples in prompt order) -> P̄ array``.
  It makes exactly one scorer call per step, holding every (beam, candidate) sequence and the beams' baselines
  S ⊕ x not scored before (step 1: the bare query; later baselines were scored when their beam was built).
- ``ExampleTable.from_records(records, name, split="train")``: one split's records as ``Example``s by record idx
  (for train: by ICD id).
- ``make_sequence_scorer(adapter, train_records, anchor_record, fast=True, query_split="train")``: binds the
  anchor's query and scores sequences with ``adapter.score`` (fast) or ``adapter.score_naive`` (reference).
- ``search_anchor(adapter, examples, anchor_id, candidate_ids, cfg, queries=None) -> AnchorBeams``: the above for one
  anchor, then ``adapter.clear_cache(vision=False)`` (its key/values go; its images' features stay for the next
  anchor). ``queries``: the table ``anchor_id`` indexes when the query is not a train anchor (the val records, for
  the imitation ceiling: ``lever_lm.ceiling``); None: a train anchor.

Queries of another split: the scorer and the algorithm are the same (the query's label is its record's ``label``, as
for anchors); only the pool check differs. A train anchor's id is an ICD id, so its pool must not hold it; a val
query's id indexes another table, so comparing it with train ids would mean nothing and is not done.
- ``AnchorBeams.to_record()``: ``{"anchor_id", "question_id", "sequences", "step_scores", "scores"}``.
Sharding, resume and gather live in ``lever_lm.beam_shards``.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:  # import only for type hints; keeps this module light
    import pandas as pd

    from lever_lm.lvlm.base import Example, LVLMAdapter

SUPPORTED_SCORERS = ("infoscore",)
CONSTRUCT_ORDERS = ("left", "right")
#: fields that determine the beams (and so the artifact name); use_fast_path only changes how they are computed
GENERATION_PARAM_FIELDS = ("scorer", "construct_order", "beam_size", "shot_num", "cand_num", "sample_num")
REQUIRED_RECORD_COLUMNS = ("idx", "question_id", "image_path", "question", "label")

SequenceScorer = Callable[[list[tuple[int, ...]]], np.ndarray]


@dataclass(frozen=True)
class BeamSearchConfig:
    """Beam-search parameters; ``cand_num`` and ``sample_num`` name the inputs (candidates per anchor, anchors)."""

    scorer: str = "infoscore"
    construct_order: str = "left"
    beam_size: int = 5
    shot_num: int = 2
    cand_num: int = 64
    sample_num: int = 800
    use_fast_path: bool = True

    def __post_init__(self) -> None:
        if self.scorer not in SUPPORTED_SCORERS:
            raise ValueError(
                f"beam search config: scorer={self.scorer!r} is not supported (known: {SUPPORTED_SCORERS})"
            )
        if self.construct_order not in CONSTRUCT_ORDERS:
            raise ValueError(
                f"beam search config: construct_order={self.construct_order!r} must be one of {CONSTRUCT_ORDERS}"
            )
        for name in ("beam_size", "shot_num", "cand_num", "sample_num"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"beam search config: {name}={value!r} must be a positive integer")
        if not isinstance(self.use_fast_path, bool):
            raise ValueError(f"beam search config: use_fast_path={self.use_fast_path!r} must be true or false")

    def generation_params(self) -> dict[str, Any]:
        """The fields that determine the result (everything but ``use_fast_path``)."""
        return {name: getattr(self, name) for name in GENERATION_PARAM_FIELDS}


def config_from_dict(
    entry: Mapping[str, Any], key: str = "beam_search", ignore: Sequence[str] = (), **overrides: Any
) -> BeamSearchConfig:
    """Build a config from a YAML mapping (plus ``overrides``, e.g. cand_num/sample_num from other sections).

    Keys in ``ignore`` (e.g. the workflow's ``shards``, ``threads``) are skipped; other unknown keys raise
    ValueError naming ``key.<field>``.
    """
    known = {f.name for f in fields(BeamSearchConfig)}
    values = {k: v for k, v in entry.items() if k not in set(ignore)}
    unknown = sorted(set(values) - known) + sorted(set(overrides) - known)
    if unknown:
        raise ValueError(f"{key}: unknown field(s) {', '.join(f'{key}.{u}' for u in unknown)} (known: {sorted(known)})")
    try:
        return BeamSearchConfig(**{**values, **overrides})
    except ValueError as err:
        raise ValueError(f"{key}: {err}") from None


# keys of the config's beam_search section that spread the search over jobs without changing its result
WORKFLOW_KEYS = ("shards", "threads")


def from_pipeline_config(config: Mapping[str, Any]) -> BeamSearchConfig:
    """The beam-search config of a validated pipeline config: its beam_search section plus cand_num and sample_num."""
    return config_from_dict(
        config["beam_search"],
        ignore=WORKFLOW_KEYS,
        cand_num=config["candidates"]["cand_num"],
        sample_num=config["anchors"]["sample_num"],
    )


def ex_name(cfg: BeamSearchConfig) -> str:
    """Artifact name encoding the generation parameters, e.g. ``infoscore_left_beam5_shot2_cand64_sample800``."""
    return (
        f"{cfg.scorer}_{cfg.construct_order}_beam{cfg.beam_size}_shot{cfg.shot_num}"
        f"_cand{cfg.cand_num}_sample{cfg.sample_num}"
    )


@dataclass(frozen=True)
class AnchorBeams:
    """The final beams of one anchor: sequences in prompt order, each with one InfoScore per step."""

    anchor_id: int
    question_id: int | None
    sequences: tuple[tuple[int, ...], ...]
    step_scores: tuple[tuple[float, ...], ...]

    @property
    def scores(self) -> tuple[float, ...]:
        """Final score of each beam: the InfoScore of its last step (what the beams are ranked by)."""
        return tuple(steps[-1] for steps in self.step_scores)

    def to_record(self) -> dict[str, Any]:
        return {
            "anchor_id": int(self.anchor_id),
            "question_id": None if self.question_id is None else int(self.question_id),
            "sequences": [[int(i) for i in seq] for seq in self.sequences],
            "step_scores": [[float(s) for s in steps] for steps in self.step_scores],
            "scores": [float(s) for s in self.scores],
        }


def query_kind(query_split: str) -> str:
    """What a query is called in messages: a train query is an anchor, another split's a "<split> query"."""
    return "anchor" if query_split == "train" else f"{query_split} query"


def _anchor_name(anchor_id: int, question_id: int | None, query_split: str = "train") -> str:
    return f"{query_kind(query_split)} {anchor_id}" + ("" if question_id is None else f" (question_id {question_id})")


def validate_candidate_pool(
    anchor_id: int,
    candidate_ids: Sequence[int],
    cfg: BeamSearchConfig,
    question_id: int | None = None,
    query_split: str = "train",
) -> None:
    """Raise ValueError if the pool is too small, has duplicates, or (for a train anchor) contains the anchor itself.

    ``query_split``: the split ``anchor_id`` indexes; only a train anchor's id can be compared with the train ids of
    its pool."""
    name = _anchor_name(anchor_id, question_id, query_split)
    needed = max(cfg.beam_size, cfg.shot_num)
    if len(candidate_ids) < needed:
        raise ValueError(
            f"{name}: {len(candidate_ids)} candidates, need at least {needed} "
            f"(beam_size={cfg.beam_size}, shot_num={cfg.shot_num})"
        )
    if query_split == "train" and anchor_id in set(candidate_ids):
        raise ValueError(f"{name}: the candidate pool contains the anchor itself")
    duplicates = sorted(c for c, n in Counter(candidate_ids).items() if n > 1)
    if duplicates:
        raise ValueError(f"{name}: duplicate candidate ids {duplicates[:5]}")


def _extend(sequence: tuple[int, ...], candidate: int, order: str) -> tuple[int, ...]:
    return (candidate, *sequence) if order == "left" else (*sequence, candidate)


def _top_indices(scores: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k largest scores, largest first; ties keep the earlier index."""
    return np.argsort(-scores, kind="stable")[:k]


def beam_search_anchor(
    anchor_id: int,
    candidate_ids: Sequence[int],
    sequence_scorer: SequenceScorer,
    cfg: BeamSearchConfig,
    question_id: int | None = None,
    query_split: str = "train",
) -> AnchorBeams:
    """Run the InfoScore beam search for one anchor (or a ``query_split`` query); ``sequence_scorer`` returns P̄ for
    ICD-id tuples."""
    candidates = [int(c) for c in candidate_ids]
    validate_candidate_pool(anchor_id, candidates, cfg, question_id, query_split)
    name = _anchor_name(anchor_id, question_id, query_split)
    order = cfg.construct_order
    beams: list[tuple[tuple[int, ...], tuple[float, ...]]] = [((), ())]
    # P̄ of every sequence scored so far: a beam's baseline S ⊕ x was scored in the step that built S
    known: dict[tuple[int, ...], float] = {}
    for step in range(1, cfg.shot_num + 1):
        # one scoring call per step: the baselines not yet known (step 1: the bare query) and every extension
        requests = [sequence for sequence, _ in beams if sequence not in known]
        layout: list[tuple[tuple[int, ...], list[tuple[int, ...]], np.ndarray]] = []
        for sequence, _ in beams:
            in_beam = set(sequence)
            extensions = [_extend(sequence, c, order) for c in candidates if c not in in_beam]
            positions = np.arange(len(requests), len(requests) + len(extensions))
            requests.extend(extensions)
            layout.append((sequence, extensions, positions))
        probabilities = np.asarray(sequence_scorer(requests), dtype=np.float64)
        if probabilities.shape != (len(requests),):
            raise ValueError(
                f"{name}, step {step}: the scorer returned shape {probabilities.shape} for {len(requests)} sequences"
            )
        if not np.all(np.isfinite(probabilities)):
            bad = [requests[i] for i in np.flatnonzero(~np.isfinite(probabilities))[:3]]
            raise ValueError(f"{name}, step {step}: non-finite P̄ for sequences {bad}")
        known.update(zip(requests, probabilities.tolist()))

        pool: list[tuple[tuple[int, ...], tuple[float, ...]]] = []
        for (_, history), (sequence, extensions, positions) in zip(beams, layout):
            info_scores = probabilities[positions] - known[sequence]
            for j in _top_indices(info_scores, cfg.beam_size):
                pool.append((extensions[j], (*history, float(info_scores[j]))))
        pool_scores = np.array([history[-1] for _, history in pool])
        beams = [pool[k] for k in _top_indices(pool_scores, cfg.beam_size)]

    return AnchorBeams(
        anchor_id=int(anchor_id),
        question_id=None if question_id is None else int(question_id),
        sequences=tuple(seq for seq, _ in beams),
        step_scores=tuple(history for _, history in beams),
    )


class ExampleTable:
    """One split's records as ``Example``s (image_path, question, label as the answer), indexed by record idx (for
    train: the ICD id). ``split`` says which split the ids index; ``source`` names the records in messages."""

    def __init__(
        self,
        image_paths: list[str],
        questions: list[str],
        labels: list[str],
        question_ids: list[int],
        split: str = "train",
        source: str = "train records",
    ):
        self.image_paths = image_paths
        self.questions = questions
        self.labels = labels
        self.question_ids = question_ids
        self.split = split
        self.source = source
        self._cache: dict[int, Example] = {}

    @classmethod
    def from_records(cls, records: pd.DataFrame, name: str = "train records", split: str = "train") -> ExampleTable:
        missing = [c for c in REQUIRED_RECORD_COLUMNS if c not in records.columns]
        if missing:
            raise ValueError(f"{name}: missing column(s) {missing}")
        idx = records["idx"].to_numpy()
        wrong = np.flatnonzero(idx != np.arange(len(records)))
        if wrong.size:
            raise ValueError(
                f"{name}: column idx must be 0..n-1 in row order; first offending rows {wrong[:5].tolist()}"
            )
        return cls(
            image_paths=[str(p) for p in records["image_path"]],
            questions=[str(q) for q in records["question"]],
            labels=["" if lab is None else str(lab) for lab in records["label"]],
            question_ids=[int(q) for q in records["question_id"]],
            split=split,
            source=name,
        )

    def __len__(self) -> int:
        return len(self.labels)

    def example(self, icd_id: int) -> Example:
        """The ICD ``icd_id`` with its label as the answer (built once, then reused)."""
        from lever_lm.lvlm.base import Example

        cached = self._cache.get(icd_id)
        if cached is None:
            cached = Example(self.image_paths[icd_id], self.questions[icd_id], self.labels[icd_id])
            self._cache[icd_id] = cached
        return cached

    def empty_label_ids(self, icd_ids: Sequence[int]) -> list[int]:
        return [i for i in icd_ids if not self.labels[i].strip()]


def _as_table(train_records: pd.DataFrame | ExampleTable) -> ExampleTable:
    return train_records if isinstance(train_records, ExampleTable) else ExampleTable.from_records(train_records)


def make_sequence_scorer(
    adapter: LVLMAdapter,
    train_records: pd.DataFrame | ExampleTable,
    anchor_record: Mapping[str, Any],
    fast: bool = True,
    query_split: str = "train",
) -> SequenceScorer:
    """A scorer of ICD-id sequences for one anchor: P̄ of its label answer given each sequence + its query.

    ``anchor_record`` is the anchor's record (a row with idx, question_id, image_path, question, label): a train
    record, or a ``query_split`` record (a val query, whose label is its gold answer, exactly as for anchors).
    """
    from lever_lm.lvlm.base import Example, Prompt, mean_token_probability

    examples = _as_table(train_records)
    label = anchor_record["label"]
    if label is None or not str(label).strip():
        raise ValueError(
            f"{_anchor_name(int(anchor_record['idx']), int(anchor_record['question_id']), query_split)}: "
            "empty label answer, nothing to score"
        )
    query = Example(str(anchor_record["image_path"]), str(anchor_record["question"]), str(label))
    score_prompts = adapter.score if fast else adapter.score_naive

    def score_sequences(sequences: list[tuple[int, ...]]) -> np.ndarray:
        prompts = [Prompt(demos=tuple(examples.example(i) for i in seq), query=query) for seq in sequences]
        logprobs = score_prompts(prompts)
        if len(logprobs) != len(prompts):
            raise ValueError(f"adapter returned {len(logprobs)} results for {len(prompts)} prompts")
        return np.array([mean_token_probability(np.asarray(lp, dtype=np.float64)) for lp in logprobs])

    return score_sequences


def anchor_record_of(examples: ExampleTable, anchor_id: int) -> dict[str, Any]:
    """The anchor's record (of the table's split) as the mapping ``make_sequence_scorer`` takes."""
    return {
        "idx": anchor_id,
        "question_id": examples.question_ids[anchor_id],
        "image_path": examples.image_paths[anchor_id],
        "question": examples.questions[anchor_id],
        "label": examples.labels[anchor_id],
    }


def search_anchor(
    adapter: LVLMAdapter,
    examples: pd.DataFrame | ExampleTable,
    anchor_id: int,
    candidate_ids: Sequence[int],
    cfg: BeamSearchConfig,
    queries: ExampleTable | None = None,
) -> AnchorBeams:
    """Beam search for one query with a real adapter; clears the adapter's caches afterwards.

    ``examples``: the train records (the ICDs). ``queries``: None for a train anchor (``anchor_id`` is a train id);
    else the table ``anchor_id`` indexes (the val records, for the imitation ceiling)."""
    table = _as_table(examples)
    query_table = table if queries is None else queries
    anchor_record = anchor_record_of(query_table, anchor_id)
    try:
        scorer = make_sequence_scorer(
            adapter, table, anchor_record, fast=cfg.use_fast_path, query_split=query_table.split
        )
        return beam_search_anchor(
            anchor_id,
            candidate_ids,
            scorer,
            cfg,
            question_id=anchor_record["question_id"],
            query_split=query_table.split,
        )
    finally:
        # key/values belong to this query; images recur across queries, so their features stay (bounded)
        adapter.clear_cache(vision=False)
