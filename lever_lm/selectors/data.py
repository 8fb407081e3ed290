"""Training data of the selectors: the beams file, checked against its job, as per-anchor examples.

Each anchor carries its candidate pool (global train ids), its beams in CHOICE order (first-chosen ICD
first; the beams file stores prompt order), each beam's position in the pool per step, and its final score.
Batches hold whole anchors (so v3/v4 see all beams of an anchor together); every beam is one example.
numpy only at import; ``collate`` imports torch when called.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from lever_lm.selectors.config import SelectorConfig, TrainIdentity, TrainPaths
from lever_lm.selectors.features import FeatureTable

#: beams params that must equal the job's identity (the file was made for another cell otherwise)
IDENTITY_KEYS = ("beam_model", "sampler", "ex_name")


@dataclass(frozen=True)
class AnchorExample:
    anchor: int
    pool: np.ndarray  # (P,) int64 train ids
    choices: np.ndarray  # (B, K) int64 train ids, choice order
    positions: np.ndarray  # (B, K) int64 positions of ``choices`` in ``pool``
    scores: np.ndarray  # (B,) float32 final InfoScores


@dataclass(frozen=True)
class BeamData:
    examples: list[AnchorExample]
    params: dict[str, Any]
    construct_order: str
    shot_num: int
    n_dropped: int  # beams dropped for a negative score


def to_choice_order(prompt_order: Sequence[int], construct_order: str) -> list[int]:
    """Prompt order -> choice order: with "left" each new ICD went to the far left, so reverse."""
    ids = [int(i) for i in prompt_order]
    return ids[::-1] if construct_order == "left" else ids


def to_prompt_order(choice_order: Sequence[int], construct_order: str) -> list[int]:
    ids = [int(i) for i in choice_order]
    return ids[::-1] if construct_order == "left" else ids


def load_features(paths: TrainPaths) -> tuple[FeatureTable, dict[str, Any]]:
    """The selector encoder's train embeddings (checked against their meta) as a FeatureTable."""
    from lever_lm.embeddings import EmbeddingPaths, load_embeddings

    result = load_embeddings(
        EmbeddingPaths(paths.train_embeddings_image, paths.train_embeddings_text, paths.train_embeddings_meta)
    )
    if result.meta.get("split") != "train":
        raise ValueError(f"{paths.train_embeddings_meta}: split is {result.meta.get('split')!r}, expected 'train'")
    return FeatureTable(result.image, result.text), result.meta


def check_beams_params(params: Any, identity: TrainIdentity, source: str) -> str:
    """The beams were made for this job's beam model, sampler and generation params; returns construct_order."""
    if not isinstance(params, dict):
        raise ValueError(f"{source}: params must be a mapping")
    for key in IDENTITY_KEYS:
        if params.get(key, "<missing>") != getattr(identity, key):
            raise ValueError(
                f"{source}: params.{key} = {params.get(key, '<missing>')!r} but this job is for "
                f"{key} = {getattr(identity, key)!r}"
            )
    order = params.get("construct_order", "<missing>")
    if order not in ("left", "right"):
        raise ValueError(f"{source}: params.construct_order = {order!r} must be 'left' or 'right'")
    return order


def load_beam_data(cfg: SelectorConfig, identity: TrainIdentity, paths: TrainPaths, n_train: int) -> BeamData:
    """Read and check beams + candidates; every error names the file and the anchor or key."""
    from lever_lm.beam_shards import read_beams
    from lever_lm.sampling import read_candidates

    beams_file = paths.beams
    data = read_beams(beams_file)
    construct_order = check_beams_params(data["params"], identity, beams_file)
    if not data["anchors"]:
        raise ValueError(f"{beams_file}: no anchors")
    candidates = read_candidates(paths.candidates)
    cand_sampler = candidates.params.get("sampler")
    if cand_sampler is not None and cand_sampler != identity.sampler:
        raise ValueError(
            f"{paths.candidates}: params.sampler = {cand_sampler!r} but this job is for sampler = {identity.sampler!r}"
        )
    if "candidates" in data["params"] and data["params"]["candidates"] != candidates.params:
        raise ValueError(
            f"{beams_file}: params.candidates differ from the params of {paths.candidates} "
            "(the beams were searched over another candidate file)"
        )

    anchors = [record["anchor_id"] for record in data["anchors"]]
    repeated = sorted(a for a, n in Counter(map(str, anchors)).items() if n > 1)
    if repeated:
        raise ValueError(f"{beams_file}: anchors listed more than once: {repeated[:5]}")
    examples, n_dropped, lengths = [], 0, set()
    for record in data["anchors"]:
        anchor = record["anchor_id"]
        where = f"{beams_file}: anchor {anchor}"
        if isinstance(anchor, bool) or not isinstance(anchor, int) or not 0 <= anchor < n_train:
            raise ValueError(f"{where}: anchor id outside the train set (0..{n_train - 1})")
        if anchor not in candidates.candidates:
            raise ValueError(f"{where}: no candidate set in {paths.candidates}")
        pool = np.asarray(candidates.candidates[anchor], dtype=np.int64)
        if pool.size and pool.max() >= n_train:
            raise ValueError(
                f"{paths.candidates}: anchor {anchor}: candidate ids outside the train set (0..{n_train - 1})"
            )
        sequences, scores = record["sequences"], record["scores"]
        if not isinstance(sequences, list) or not isinstance(scores, list) or len(sequences) != len(scores):
            raise ValueError(f"{where}: 'sequences' and 'scores' must be lists of the same length")
        position = {int(c): i for i, c in enumerate(pool)}
        choices, keep_scores = [], []
        for b, (sequence, score) in enumerate(zip(sequences, scores)):
            if not isinstance(sequence, list) or not sequence:
                raise ValueError(f"{where}: beam {b} is not a non-empty list of ids")
            not_in_pool = [i for i in sequence if i not in position]
            if not_in_pool:
                raise ValueError(
                    f"{where}: beam {b} has ids {not_in_pool[:5]} not in the anchor's candidate pool "
                    f"({paths.candidates})"
                )
            if len(set(sequence)) != len(sequence):
                raise ValueError(f"{where}: beam {b} repeats an id: {sequence}")
            if isinstance(score, bool) or not isinstance(score, (int, float)) or not np.isfinite(score):
                raise ValueError(f"{where}: beam {b} score {score!r} is not a finite number")
            lengths.add(len(sequence))
            if cfg.drop_negative_beams and score < 0:
                n_dropped += 1
                continue
            choices.append(to_choice_order(sequence, construct_order))
            keep_scores.append(float(score))
        if len(lengths) > 1:
            raise ValueError(f"{where}: beams of different lengths {sorted(lengths)} in one file")
        if not choices:
            continue
        choice_array = np.asarray(choices, dtype=np.int64)
        examples.append(
            AnchorExample(
                anchor=int(anchor),
                pool=pool,
                choices=choice_array,
                positions=np.vectorize(position.__getitem__, otypes=[np.int64])(choice_array),
                scores=np.asarray(keep_scores, dtype=np.float32),
            )
        )
    if not examples:
        raise ValueError(
            f"{beams_file}: no beams left after dropping negative-score beams (selector.drop_negative_beams: true)"
        )
    return BeamData(examples, data["params"], construct_order, lengths.pop(), n_dropped)


def split_by_anchor(n_anchors: int, val_ratio: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Seeded split of anchor positions: (train, val), each sorted. At least one of each when possible."""
    order = np.random.default_rng([seed, 90_10]).permutation(n_anchors)
    n_val = int(round(val_ratio * n_anchors))
    if val_ratio > 0 and n_anchors >= 2:
        n_val = min(max(n_val, 1), n_anchors - 1)
    else:
        n_val = 0
    return np.sort(order[n_val:]), np.sort(order[:n_val])


class EpochBatches:
    """Batches of anchor positions; the shuffle depends only on (seed, epoch), so a resumed run repeats it.

    ``epoch`` is a callable read when an epoch's iteration starts (the trainer counts completed epochs).
    """

    def __init__(
        self, items: Sequence[int], anchors_per_batch: int, seed: int, shuffle: bool, epoch: Any = lambda: 0
    ) -> None:
        self.items = np.asarray(items, dtype=np.int64)
        self.anchors_per_batch = max(1, int(anchors_per_batch))
        self.seed, self.shuffle, self.epoch = seed, shuffle, epoch

    def batches(self, epoch: int) -> list[list[int]]:
        items = self.items
        if self.shuffle:
            items = items[np.random.default_rng([self.seed, epoch]).permutation(len(items))]
        size = self.anchors_per_batch
        return [items[i : i + size].tolist() for i in range(0, len(items), size)]

    def __iter__(self):
        return iter(self.batches(int(self.epoch())))

    def __len__(self) -> int:
        return -(-len(self.items) // self.anchors_per_batch)


def anchors_per_batch(examples: Sequence[AnchorExample], batch_size: int) -> int:
    """``batch_size`` counts examples (beams); a batch holds whole anchors."""
    mean_beams = float(np.mean([len(e.choices) for e in examples]))
    return max(1, int(round(batch_size / mean_beams)))


def collate(examples: Sequence[AnchorExample], query_features: np.ndarray) -> dict[str, Any]:
    """Pad a list of anchors into tensors: query (A, d), pool/pool_mask (A, P), choices/positions (A, Bm, K),
    beam_mask/scores (A, Bm). Padding: pool -1, choices/positions 0 (masked out)."""
    import torch

    n_anchors = len(examples)
    n_pool = max(len(e.pool) for e in examples)
    n_beams = max(len(e.choices) for e in examples)
    k = examples[0].choices.shape[1]
    pool = np.full((n_anchors, n_pool), -1, dtype=np.int64)
    choices = np.zeros((n_anchors, n_beams, k), dtype=np.int64)
    positions = np.zeros((n_anchors, n_beams, k), dtype=np.int64)
    beam_mask = np.zeros((n_anchors, n_beams), dtype=bool)
    scores = np.zeros((n_anchors, n_beams), dtype=np.float32)
    for row, example in enumerate(examples):
        pool[row, : len(example.pool)] = example.pool
        n = len(example.choices)
        choices[row, :n], positions[row, :n] = example.choices, example.positions
        beam_mask[row, :n], scores[row, :n] = True, example.scores
    anchor_ids = np.asarray([e.anchor for e in examples], dtype=np.int64)
    return {
        "query": torch.from_numpy(np.ascontiguousarray(query_features[anchor_ids])),
        "pool": torch.from_numpy(pool),
        "pool_mask": torch.from_numpy(pool >= 0),
        "choices": torch.from_numpy(choices),
        "positions": torch.from_numpy(positions),
        "beam_mask": torch.from_numpy(beam_mask),
        "scores": torch.from_numpy(scores),
    }
