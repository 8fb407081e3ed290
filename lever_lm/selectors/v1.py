"""v1: bi-encoder pointer network over the query's candidate pool.

Query and candidates each go through their own encoder (MLP + LayerNorm). At every step the scores over the
pool are cos(state, candidate) / τ (unit vectors, so τ alone sets the logit scale), with already chosen and
padding positions masked; after a pick the state is updated with the chosen candidate's encoding (a GRU
cell). Trained with teacher forcing on the beams (cross-entropy, optional label smoothing); decodes greedily.
With ``selector.similarity_prior`` the logits are the prior's plus a learned gate times these (similarity.py).
It points at positions of the pool, so it only ever returns pool members. v2 adds a cross-attention layer
(``cross_attention``); v3 and v4 reuse this network with other losses.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from lever_lm.selectors.similarity import SimilarityPrior


def mlp(in_dim: int, hidden_dim: int, dropout: float) -> nn.Sequential:
    return nn.Sequential(
        nn.Linear(in_dim, hidden_dim),
        nn.GELU(),
        nn.Dropout(dropout),
        nn.Linear(hidden_dim, hidden_dim),
        nn.LayerNorm(hidden_dim),
    )


class PointerSelector(nn.Module):
    needs_pools = True

    def __init__(
        self,
        n_train: int,
        query_dim: int,
        icd_dim: int,
        hidden_dim: int,
        temperature: float,
        dropout: float,
        cross_attention: nn.Module | None = None,
        prior: SimilarityPrior | None = None,
    ) -> None:
        super().__init__()
        self.temperature = temperature
        self.query_encoder = mlp(query_dim, hidden_dim, dropout)
        # icd "idx": no features, so each train id gets a learned vector to point at
        self.icd_embedding = nn.Embedding(n_train, hidden_dim) if not icd_dim else None
        self.candidate_encoder = mlp(icd_dim or hidden_dim, hidden_dim, dropout)
        self.cross_attention = cross_attention
        self.update = nn.GRUCell(hidden_dim, hidden_dim)
        self.prior = prior
        self.register_buffer("icd_features", torch.zeros(n_train, icd_dim), persistent=False)

    def set_icd_features(self, features: torch.Tensor) -> None:
        self.icd_features = features.to(self.icd_features)

    def encode(self, query: torch.Tensor, pool: torch.Tensor, pool_mask: torch.Tensor) -> tuple:
        """Initial state (A, H), candidate encodings (A, P, H) and the similarity prior's logits (A, P) or None."""
        ids = pool.clamp(min=0)  # padding (-1) is masked later
        features = self.icd_features[ids] if self.icd_embedding is None else None
        candidates = self.candidate_encoder(features if features is not None else self.icd_embedding(ids))
        state = self.query_encoder(query)
        if self.cross_attention is not None:
            state = self.cross_attention(state, candidates, pool_mask)
        prior = self.prior.scores(query, features) if self.prior is not None else None
        return state, candidates, prior

    def step_logits(
        self, state: torch.Tensor, candidates: torch.Tensor, blocked: torch.Tensor, prior: torch.Tensor | None
    ) -> torch.Tensor:
        scores = torch.einsum("nh,nph->np", F.normalize(state, dim=-1), F.normalize(candidates, dim=-1))
        scores = scores / self.temperature
        if prior is not None:
            scores = self.prior.combine(prior, scores)
        return scores.masked_fill(blocked, float("-inf"))

    def step(self, state: torch.Tensor, candidates: torch.Tensor, blocked: torch.Tensor, pick: torch.Tensor):
        """Block the picked positions (per row) and fold the picked candidates into the state."""
        rows = torch.arange(len(pick), device=pick.device)
        blocked = blocked | F.one_hot(pick, blocked.shape[1]).bool()
        return self.update(candidates[rows, pick], state), blocked

    def teacher_forced(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, tuple]:
        """Log-probs (N, K, P) over the pool at each step of each of the N valid beams, the target positions
        (N, K), and each beam's (anchor, beam) index."""
        a, b = batch["beam_mask"].nonzero(as_tuple=True)
        state, candidates, prior = self.encode(batch["query"], batch["pool"], batch["pool_mask"])
        state, candidates, blocked = state[a], candidates[a], ~batch["pool_mask"][a]
        prior = prior[a] if prior is not None else None
        target = batch["positions"][a, b]
        steps = []
        for t in range(target.shape[1]):
            steps.append(F.log_softmax(self.step_logits(state, candidates, blocked, prior), dim=-1))
            state, blocked = self.step(state, candidates, blocked, target[:, t])
        return torch.stack(steps, dim=1), target, (a, b)

    def sequence_logp(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """(A, Bm) log-likelihood of each beam; 0 where there is no beam."""
        logp, target, (a, b) = self.teacher_forced(batch)
        picked = logp.gather(-1, target[..., None]).squeeze(-1).sum(-1)
        out = torch.zeros(batch["beam_mask"].shape, dtype=picked.dtype, device=picked.device)
        return out.index_put((a, b), picked)

    @torch.no_grad()
    def first_step_scores(self, query: torch.Tensor, pool: torch.Tensor, pool_mask: torch.Tensor) -> tuple:
        """Logits (Q, P) of the first pick over each pool (padding -inf), and the pool ids (Q, P)."""
        state, candidates, prior = self.encode(query, pool, pool_mask)
        return self.step_logits(state, candidates, ~pool_mask, prior), pool

    @torch.no_grad()
    def decode(self, query: torch.Tensor, k: int, pool: torch.Tensor, pool_mask: torch.Tensor) -> torch.Tensor:
        """Greedy: (Q, k) train ids in choice order, each a distinct member of its row's pool."""
        state, candidates, prior = self.encode(query, pool, pool_mask)
        blocked = ~pool_mask
        picks = []
        for _ in range(k):
            pick = self.step_logits(state, candidates, blocked, prior).argmax(-1)
            picks.append(pool.gather(1, pick[:, None]))
            state, blocked = self.step(state, candidates, blocked, pick)
        return torch.cat(picks, dim=1)


def build_model(
    params: dict[str, Any],
    n_train: int,
    query_dim: int,
    icd_dim: int,
    cross_attention: nn.Module | None = None,
    prior: SimilarityPrior | None = None,
) -> PointerSelector:
    return PointerSelector(
        n_train,
        query_dim,
        icd_dim,
        params["hidden_dim"],
        params["temperature"],
        params["dropout"],
        cross_attention,
        prior,
    )


def pointer_ce(logp: torch.Tensor, target: torch.Tensor, label_smoothing: float) -> torch.Tensor:
    """Mean cross-entropy over beams and steps; smoothing spreads over the allowed positions only."""
    nll = -logp.gather(-1, target[..., None]).squeeze(-1)
    if label_smoothing == 0:
        return nll.mean()
    allowed = torch.isfinite(logp)
    uniform = -logp.masked_fill(~allowed, 0.0).sum(-1) / allowed.sum(-1)
    return ((1 - label_smoothing) * nll + label_smoothing * uniform).mean()


def loss(model: PointerSelector, batch: dict[str, torch.Tensor], cfg: Any) -> torch.Tensor:
    logp, target, _ = model.teacher_forced(batch)
    return pointer_ce(logp, target, cfg.label_smoothing)
