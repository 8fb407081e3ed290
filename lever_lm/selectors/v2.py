"""v2: the v1 pointer network plus one cross-attention layer before pointing.

The query's encoding attends to the encodings of its pool's candidates (multi-head, padding masked), with a
residual connection and LayerNorm, so the state that points knows what the pool offers. Everything else
(encoders, GRU state update, masking, loss, greedy decoding) is v1's.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn

from lever_lm.selectors import v1


class CrossAttention(nn.Module):
    def __init__(self, hidden_dim: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.attention = nn.MultiheadAttention(hidden_dim, heads, dropout=dropout, batch_first=True)
        self.norm = nn.LayerNorm(hidden_dim)

    def forward(self, query: torch.Tensor, candidates: torch.Tensor, pool_mask: torch.Tensor) -> torch.Tensor:
        attended, _ = self.attention(
            query[:, None], candidates, candidates, key_padding_mask=~pool_mask, need_weights=False
        )
        return self.norm(query + attended[:, 0])


def build_model(
    params: dict[str, Any], n_train: int, query_dim: int, icd_dim: int, prior: v1.SimilarityPrior | None = None
) -> v1.PointerSelector:
    attention = CrossAttention(params["hidden_dim"], params["heads"], params["dropout"])
    return v1.build_model(params, n_train, query_dim, icd_dim, cross_attention=attention, prior=prior)


loss = v1.loss
