"""v0: GPT-2 over ICD-id tokens (the original ICD-LM).

Vocabulary = the n train ICD ids + BOS, QUERY, EOS. A training sequence is
``[BOS, QUERY, icd_1 ... icd_K, EOS]`` in choice order. The query's CLIP features (linear projection) are added
at the QUERY position; each ICD's features (linear projection) are added to its token embedding. The output
layer is tied to that same feature-augmented embedding table (GPT-2 ties input and output embeddings), so an
ICD's features also shape how likely it is to be chosen, and an ICD never seen as a target is not blind.
Loss: next-token cross-entropy. Decoding: greedy over the whole train set, special tokens and each row's
already chosen ids masked for that row only. With ``selector.similarity_prior`` the ICD logits are the prior's plus
a learned gate times these (similarity.py).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from transformers import GPT2Config, GPT2Model

from lever_lm.selectors.similarity import SimilarityPrior

N_SPECIAL = 3  # BOS, QUERY, EOS


class GPTSelector(nn.Module):
    needs_pools = False

    def __init__(
        self,
        n_train: int,
        query_dim: int,
        icd_dim: int,
        n_layer: int,
        n_head: int,
        n_embd: int,
        dropout: float,
        n_positions: int,
        prior: SimilarityPrior | None = None,
    ) -> None:
        super().__init__()
        self.prior = prior
        self.n_train = n_train
        self.bos, self.query_token, self.eos = n_train, n_train + 1, n_train + 2
        config = GPT2Config(
            vocab_size=n_train + N_SPECIAL,
            n_positions=n_positions,
            n_embd=n_embd,
            n_layer=n_layer,
            n_head=n_head,
            resid_pdrop=dropout,
            embd_pdrop=dropout,
            attn_pdrop=dropout,
            bos_token_id=self.bos,
            eos_token_id=self.eos,
        )
        self.gpt = GPT2Model(config)
        self.query_proj = nn.Linear(query_dim, n_embd)
        self.icd_proj = nn.Linear(icd_dim, n_embd) if icd_dim else None
        # The train features are inputs, not weights: filled by set_icd_features, never saved.
        self.register_buffer("icd_features", torch.zeros(n_train, icd_dim), persistent=False)

    def set_icd_features(self, features: torch.Tensor) -> None:
        self.icd_features = features.to(self.icd_features)

    def embedding_table(self) -> torch.Tensor:
        """(n + 3, E): token embeddings, plus the projected features on the ICD rows."""
        table = self.gpt.wte.weight
        if self.icd_proj is None:
            return table
        return table + F.pad(self.icd_proj(self.icd_features), (0, 0, 0, N_SPECIAL))

    def hidden(self, query: torch.Tensor, tokens: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
        """Last hidden states (N, T, E) of token sequences that start with [BOS, QUERY]."""
        embeds = table[tokens]
        embeds[:, 1] = embeds[:, 1] + self.query_proj(query)  # the QUERY position
        return self.gpt(inputs_embeds=embeds).last_hidden_state

    def prior_logits(self, query: torch.Tensor) -> torch.Tensor | None:
        """The similarity prior over the vocabulary (N, V), 0 on the special tokens; None without a prior. It
        compares the query with each ICD, so it is the same at every position: compute it once per query batch."""
        if self.prior is None:
            return None
        return F.pad(self.prior.scores(query, self.icd_features), (0, N_SPECIAL))

    def logits(self, hidden: torch.Tensor, table: torch.Tensor, prior: torch.Tensor | None) -> torch.Tensor:
        """Next-token logits (N, [T,] V) of hidden states (N, [T,] E): tied output layer, plus ``prior_logits``."""
        learned = hidden @ table.T
        if prior is None:
            return learned
        if learned.dim() == 3:
            prior = prior[:, None]
        return self.prior.combine(prior, learned)

    def prefix(self, n: int, device: torch.device) -> torch.Tensor:
        return torch.tensor([self.bos, self.query_token], device=device).repeat(n, 1)

    def teacher_forced(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, tuple]:
        """Log-probs (N, K + 1, V) of each next token after QUERY, the targets (N, K + 1) (the K ICDs, then
        EOS), and the (anchor, beam) index of each of the N valid beams."""
        a, b = batch["beam_mask"].nonzero(as_tuple=True)
        choices = batch["choices"][a, b]
        n = len(a)
        eos = torch.full((n, 1), self.eos, device=choices.device)
        tokens = torch.cat([self.prefix(n, choices.device), choices, eos], dim=1)
        table = self.embedding_table()
        query = batch["query"][a]
        logits = self.logits(self.hidden(query, tokens[:, :-1], table)[:, 1:], table, self.prior_logits(query))
        return F.log_softmax(logits, dim=-1), tokens[:, 2:], (a, b)

    def sequence_logp(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """(A, Bm) log-likelihood of each beam's ICDs (EOS not counted); 0 where there is no beam."""
        logp, target, (a, b) = self.teacher_forced(batch)
        k = batch["choices"].shape[-1]
        picked = logp[:, :k].gather(-1, target[:, :k, None]).squeeze(-1).sum(-1)
        out = torch.zeros(batch["beam_mask"].shape, dtype=picked.dtype, device=picked.device)
        return out.index_put((a, b), picked)

    @torch.no_grad()
    def first_step_scores(self, query: torch.Tensor, pool: Any = None, pool_mask: Any = None) -> tuple:
        """Logits (Q, n) over every train id for the first pick, and those ids (Q, n)."""
        table = self.embedding_table()
        hidden = self.hidden(query, self.prefix(len(query), query.device), table)[:, -1]
        ids = torch.arange(self.n_train, device=query.device).expand(len(query), -1)
        return self.logits(hidden, table, self.prior_logits(query))[:, : self.n_train], ids

    @torch.no_grad()
    def decode(
        self, query: torch.Tensor, k: int, pool: Any = None, pool_mask: Any = None, table: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Greedy: (Q, k) train ids in choice order, no special token and no repeat within a row.
        ``table``: ``embedding_table()`` computed once for many batches (it projects every train ICD)."""
        n = len(query)
        table = self.embedding_table() if table is None else table
        tokens = self.prefix(n, query.device)
        banned = torch.zeros(n, table.shape[0], dtype=torch.bool, device=query.device)
        banned[:, self.n_train :] = True
        rows = torch.arange(n, device=query.device)
        prior = self.prior_logits(query)  # once: it does not change from step to step
        for _ in range(k):
            logits = self.logits(self.hidden(query, tokens, table)[:, -1], table, prior)
            pick = logits.masked_fill(banned, float("-inf")).argmax(-1)
            banned[rows, pick] = True  # this row only
            tokens = torch.cat([tokens, pick[:, None]], dim=1)
        return tokens[:, 2:]


def build_model(
    params: dict[str, Any],
    n_train: int,
    query_dim: int,
    icd_dim: int,
    max_len: int,
    prior: SimilarityPrior | None = None,
) -> GPTSelector:
    return GPTSelector(
        n_train,
        query_dim,
        icd_dim,
        params["n_layer"],
        params["n_head"],
        params["n_embd"],
        params["dropout"],
        n_positions=2 + max_len + 1,
        prior=prior,
    )


def loss(model: GPTSelector, batch: dict[str, torch.Tensor], cfg: Any) -> torch.Tensor:
    """Next-token cross-entropy over the K ICDs and EOS of every beam (label smoothing from the config)."""
    logp, target, _ = model.teacher_forced(batch)
    if cfg.label_smoothing == 0:
        return F.nll_loss(logp.flatten(0, 1), target.flatten())
    return F.cross_entropy(logp.flatten(0, 1), target.flatten(), label_smoothing=cfg.label_smoothing)
