"""v3: a v1 or v2 pointer network (``ranking.base``) trained with cross-entropy plus a ranking loss over the
B beams of each anchor:

    loss = CE(teacher forcing) + λ · ranking(sequence log-likelihoods of the anchor's beams, their InfoScores)

listwise: KL( softmax(scores / T) || softmax(log-likelihoods) ) over an anchor's beams;
pairwise: mean over beam pairs with score_i > score_j of max(0, margin − (logp_i − logp_j)).
Anchors with a single beam add nothing to the ranking term. Decoding is the base's.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from lever_lm.selectors import v1, v2


def build_model(
    params: dict[str, Any], n_train: int, query_dim: int, icd_dim: int, prior: v1.SimilarityPrior | None = None
) -> v1.PointerSelector:
    base = v2 if params["cross_attention"] else v1
    return base.build_model(params, n_train, query_dim, icd_dim, prior=prior)


def beam_logp(logp: torch.Tensor, target: torch.Tensor, index: tuple, beam_mask: torch.Tensor) -> torch.Tensor:
    """Per-step log-probs (N, K, P) -> (A, Bm) sequence log-likelihoods (0 where there is no beam)."""
    picked = logp.gather(-1, target[..., None]).squeeze(-1).sum(-1)
    return torch.zeros(beam_mask.shape, dtype=picked.dtype, device=picked.device).index_put(index, picked)


def masked_log_softmax(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return F.log_softmax(values.masked_fill(~mask, float("-inf")), dim=-1)


def listwise_loss(
    seq_logp: torch.Tensor, scores: torch.Tensor, beam_mask: torch.Tensor, temperature: float
) -> torch.Tensor:
    ranked = beam_mask.sum(-1) >= 2
    if not ranked.any():
        return seq_logp.sum() * 0.0
    mask = beam_mask[ranked]
    target_log = masked_log_softmax(scores[ranked] / temperature, mask)
    model_log = masked_log_softmax(seq_logp[ranked], mask)
    kl = target_log.exp() * (target_log - model_log).masked_fill(~mask, 0.0)
    return kl.sum(-1).mean()


def pairwise_loss(seq_logp: torch.Tensor, scores: torch.Tensor, beam_mask: torch.Tensor, margin: float) -> torch.Tensor:
    pairs = (scores[:, :, None] > scores[:, None, :]) & beam_mask[:, :, None] & beam_mask[:, None, :]
    if not pairs.any():
        return seq_logp.sum() * 0.0
    hinge = F.relu(margin - (seq_logp[:, :, None] - seq_logp[:, None, :]))
    return hinge[pairs].mean()


def ranking_loss(seq_logp: torch.Tensor, batch: dict[str, torch.Tensor], ranking: Any) -> torch.Tensor:
    if ranking.loss == "listwise":
        return listwise_loss(seq_logp, batch["scores"], batch["beam_mask"], ranking.temperature)
    return pairwise_loss(seq_logp, batch["scores"], batch["beam_mask"], ranking.margin)


def loss(model: v1.PointerSelector, batch: dict[str, torch.Tensor], cfg: Any) -> torch.Tensor:
    logp, target, index = model.teacher_forced(batch)
    ce = v1.pointer_ce(logp, target, cfg.label_smoothing)
    seq_logp = beam_logp(logp, target, index, batch["beam_mask"])
    return ce + cfg.ranking.weight * ranking_loss(seq_logp, batch, cfg.ranking)
