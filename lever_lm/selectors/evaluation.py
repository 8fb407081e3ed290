"""Validation metrics of a selector against an anchor's beams (the same code for val anchors and tests).

Per anchor:
- first choice (every version): the target is the first-chosen ICD of the anchor's best beam (highest
  score). The model ranks its candidate space for the first pick (the pool for v1-v4, the whole train set
  for v0); ties rank as greedy decoding breaks them (the earlier position wins).
  ``top1`` = greedy first pick is the target, ``topk`` = target within the first ``top_k``, ``mrr`` = 1 / rank.
- beam ranking (anchors with >= 2 beams): the model ranks the anchor's beams by their sequence
  log-likelihood; ``beam_top1``: its top beam is the best beam, ``beam_mrr``: 1 / rank of the best beam,
  ``beam_ndcg``: NDCG over all the beams with graded relevance B − (true rank), i.e. B for the best beam and
  1 for the worst. Ties in the model's scores are broken against the truth (no credit for a constant model).
``random_*``: the expected value of each under a uniformly random model, for reference.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

FIRST_KEYS = ("top1", "topk", "mrr")
BEAM_KEYS = ("beam_top1", "beam_mrr", "beam_ndcg")


def first_choice_rank(scores: np.ndarray, ids: np.ndarray, target: int) -> int:
    """1-based rank of ``target`` among the finite ``scores``; ties go to the earlier position (as argmax)."""
    where = np.flatnonzero(ids == target)
    if where.size == 0:
        raise ValueError(f"target id {target} is not among the candidates")
    t = where[0]
    valid = np.isfinite(scores)
    earlier = np.arange(len(scores)) < t
    return int(1 + np.sum(valid & (scores > scores[t])) + np.sum(valid & earlier & (scores == scores[t])))


def _discounts(n: int) -> np.ndarray:
    return 1.0 / np.log2(np.arange(n) + 2.0)


def beam_ranking(model_scores: np.ndarray, true_scores: np.ndarray) -> dict[str, float]:
    n = len(true_scores)
    true_order = np.argsort(-true_scores, kind="stable")
    true_rank = np.empty(n, dtype=np.int64)
    true_rank[true_order] = np.arange(n)
    relevance = (n - true_rank).astype(np.float64)
    model_order = np.lexsort((-true_rank, -model_scores))  # by model score, ties: worse beam first
    best = true_order[0]
    disc = _discounts(n)
    ideal = float(np.sum(np.sort(relevance)[::-1] * disc))
    return {
        "beam_top1": float(model_order[0] == best),
        "beam_mrr": 1.0 / (1 + int(np.flatnonzero(model_order == best)[0])),
        "beam_ndcg": float(np.sum(relevance[model_order] * disc)) / ideal,
    }


def random_beam_ndcg(n: int) -> float:
    """Expected NDCG of a random order of n beams: E[DCG] = mean relevance · Σ discounts."""
    relevance = np.arange(n, 0, -1, dtype=np.float64)
    disc = _discounts(n)
    return float(relevance.mean() * disc.sum() / np.sum(relevance * disc))


def anchor_metrics(
    first_scores: np.ndarray,
    first_ids: np.ndarray,
    choices: np.ndarray,
    scores: np.ndarray,
    seq_logp: np.ndarray,
    top_k: int,
) -> dict[str, float]:
    """One anchor: ``first_*`` over its candidate space, ``choices`` (B, K) choice order, ``scores`` (B,)."""
    target = int(choices[int(np.argmax(scores)), 0])  # np.argmax: the first of equal scores
    rank = first_choice_rank(first_scores, first_ids, target)
    n_candidates = int(np.isfinite(first_scores).sum())
    row = {
        "top1": float(rank == 1),
        "topk": float(rank <= top_k),
        "mrr": 1.0 / rank,
        "random_top1": 1.0 / n_candidates,
        "random_topk": min(top_k, n_candidates) / n_candidates,
        "random_mrr": float(np.mean(1.0 / np.arange(1, n_candidates + 1))),
    }
    if len(scores) >= 2:
        row.update(beam_ranking(seq_logp, scores))
        row["random_beam_ndcg"] = random_beam_ndcg(len(scores))
    return row


def batch_metrics(model: Any, batch: dict[str, Any], top_k: int) -> list[dict[str, float]]:
    """Per-anchor metrics of one collated batch (see ``lever_lm.selectors.data.collate``)."""
    import torch

    with torch.no_grad():
        seq_logp = model.sequence_logp(batch).float().cpu().numpy()
        first_scores, first_ids = model.first_step_scores(batch["query"], batch["pool"], batch["pool_mask"])
    first_scores, first_ids = first_scores.float().cpu().numpy(), first_ids.cpu().numpy()
    beam_mask = batch["beam_mask"].cpu().numpy()
    choices, scores = batch["choices"].cpu().numpy(), batch["scores"].cpu().numpy()
    rows = []
    for a in range(len(beam_mask)):
        keep = beam_mask[a]
        rows.append(
            anchor_metrics(first_scores[a], first_ids[a], choices[a][keep], scores[a][keep], seq_logp[a][keep], top_k)
        )
    return rows


def summarize(rows: Iterable[dict[str, float]]) -> dict[str, float | None]:
    """Mean of each metric over the anchors that define it (None where none does)."""
    rows = list(rows)
    keys: list[str] = []
    for row in rows:
        keys.extend(k for k in row if k not in keys)
    out: dict[str, float | None] = {}
    for key in keys:
        values = [row[key] for row in rows if key in row]
        out[key] = float(np.mean(values)) if values else None
    return out


def evaluate_examples(
    model: Any, examples: Sequence[Any], query_features: np.ndarray, top_k: int, batch_anchors: int = 32
) -> dict[str, float | None]:
    """Metrics of a model (eval mode) over anchor examples whose ``anchor`` indexes ``query_features``."""
    from lever_lm.selectors.data import collate

    device = next(model.parameters()).device
    rows = []
    for start in range(0, len(examples), batch_anchors):
        batch = collate(examples[start : start + batch_anchors], query_features)
        rows.extend(batch_metrics(model, {k: v.to(device) for k, v in batch.items()}, top_k))
    return summarize(rows)
