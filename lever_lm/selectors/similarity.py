"""The similarity prior (config ``selector.similarity_prior``): a selector that starts as similarity retrieval.

A version's logit for ICD c given query q becomes

    prior(q, c) + gate · learned(q, c),    prior(q, c) = Σ_m w_m · cos(q_m, c_m)

over the CLIP modalities m that both the query and the ICD carry (the ``lever_lm`` feature choice). The weights
w_m start at ``image_weight`` / ``text_weight`` and the gate at 0, and all are learned. Before training, a selector
therefore ranks candidates exactly as SimRetriever-i2i does (with the default weights), and training moves it away
only as far as the beams ask. Without the prior, a selector must learn query-ICD matching from a few hundred
beams, and on the toy it ended below random demonstrations (see README, "Selectors").
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from lever_lm.selectors.features import FeatureChoice


@dataclass(frozen=True)
class ModalitySlices:
    """Where one modality sits in the query vector and in the ICD vector (concatenated features)."""

    modality: str
    query: slice
    icd: slice


def _offsets(modalities: tuple[str, ...], dims: Mapping[str, int]) -> dict[str, slice]:
    out, start = {}, 0
    for modality in modalities:
        out[modality] = slice(start, start + int(dims[modality]))
        start += int(dims[modality])
    return out


def shared_modalities(choice: FeatureChoice, dims: Mapping[str, int]) -> list[ModalitySlices]:
    query, icd = _offsets(choice.query, dims), _offsets(choice.icd, dims)
    return [ModalitySlices(m, query[m], icd[m]) for m in choice.query if m in icd]


class SimilarityPrior(nn.Module):
    def __init__(self, choice: FeatureChoice, dims: Mapping[str, int], image_weight: float, text_weight: float) -> None:
        super().__init__()
        self.slices = shared_modalities(choice, dims)
        if not self.slices:
            raise ValueError(
                f"selector.similarity_prior: lever_lm {choice.name!r} gives the query and the ICDs "
                "no modality in common to compare"
            )
        initial = {"image": image_weight, "text": text_weight}
        self.weights = nn.Parameter(torch.tensor([float(initial[s.modality]) for s in self.slices]))
        self.gate = nn.Parameter(torch.zeros(()))

    def scores(self, query: torch.Tensor, icds: torch.Tensor) -> torch.Tensor:
        """Prior logits: query (N, Dq) against icds (N, P, Di) per row, or against one shared (V, Di) table."""
        total = 0.0
        for weight, part in zip(self.weights, self.slices):
            q = F.normalize(query[:, part.query], dim=-1)
            c = F.normalize(icds[..., part.icd], dim=-1)
            cosine = torch.einsum("nd,npd->np", q, c) if c.dim() == 3 else q @ c.T
            total = total + weight * cosine
        return total

    def combine(self, prior: torch.Tensor, learned: torch.Tensor) -> torch.Tensor:
        return prior + self.gate * learned


def build_prior(params: Mapping[str, Any], choice: FeatureChoice, dims: Mapping[str, int]) -> SimilarityPrior | None:
    """The prior a checkpoint's model params ask for (``similarity_prior`` absent: none, the spec's network)."""
    prior = params.get("similarity_prior")
    if not prior:
        return None
    return SimilarityPrior(choice, dims, prior["image_weight"], prior["text_weight"])
