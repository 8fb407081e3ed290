"""v4: v3 plus offline reinforcement learning on the beams, starting from the v3 checkpoint.

Phase 1, RCE warm-up (``rl.rce_epochs``, learning rate ``rl.rce_lr``): reward-weighted cross-entropy; an
anchor's beams are weighted by softmax(score / τ) over that anchor's beams.
Phase 2, GRPO (``rl.grpo_epochs``, learning rate ``rl.grpo_lr``): the group is an anchor's beams, the reward
a beam's InfoScore, the advantage (r − mean) / std within the group. Per step (token) the PPO-clipped
surrogate min(ρA, clip(ρ, 1 − ε, 1 + ε)A) with ρ = π(a) / π_old(a), π_old = the policy at the start of the
GRPO phase (fixed: the beams are offline data, so the clip bounds the total drift from it, not a per-epoch
step), plus β · KL(π || π_v3) to the frozen v3 policy, exact over the pool at each teacher-forced step.
Validation uses the RCE objective in both phases (it ranks checkpoints by how much probability goes to the
high-reward beams). Network and decoding are v3's (hence v1's or v2's).
"""

from __future__ import annotations

from typing import Any

import torch

from lever_lm.selectors import v3
from lever_lm.selectors.v1 import PointerSelector

build_model = v3.build_model


def phase(epoch: int, rl: Any) -> str:
    return "rce" if epoch < rl.rce_epochs else "grpo"


def rce_loss(model: PointerSelector, batch: dict[str, torch.Tensor], temperature: float) -> torch.Tensor:
    logp, target, index = model.teacher_forced(batch)
    mask = batch["beam_mask"]
    seq_logp = v3.beam_logp(logp, target, index, mask) / target.shape[1]  # per step, like the CE
    weights = v3.masked_log_softmax(batch["scores"] / temperature, mask).exp()
    return -(weights * seq_logp).sum(-1).mean()


def group_advantages(scores: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(A, Bm) standardised rewards within each anchor's beams; 0 for padding and one-beam groups."""
    weight = mask.to(scores.dtype)
    n = weight.sum(-1, keepdim=True).clamp(min=1)
    mean = (scores * weight).sum(-1, keepdim=True) / n
    std = (((scores - mean) ** 2 * weight).sum(-1, keepdim=True) / n).sqrt()
    return (scores - mean) / (std + 1e-6) * weight


def grpo_loss(
    model: PointerSelector, old: PointerSelector, ref: PointerSelector, batch: dict[str, torch.Tensor], rl: Any
) -> torch.Tensor:
    logp, target, index = model.teacher_forced(batch)
    with torch.no_grad():
        old_logp, _, _ = old.teacher_forced(batch)
        ref_logp, _, _ = ref.teacher_forced(batch)
    taken = logp.gather(-1, target[..., None]).squeeze(-1)  # (N, K)
    old_taken = old_logp.gather(-1, target[..., None]).squeeze(-1)
    advantage = group_advantages(batch["scores"], batch["beam_mask"])[index][:, None]
    ratio = (taken - old_taken).exp()
    surrogate = torch.minimum(ratio * advantage, ratio.clamp(1 - rl.clip_eps, 1 + rl.clip_eps) * advantage)
    allowed = torch.isfinite(logp)  # the same positions are blocked under every policy
    # masked_fill, not where: a where over -inf - -inf would send NaN gradients back
    kl = (logp.exp() * (logp - ref_logp).masked_fill(~allowed, 0.0)).sum(-1)
    return -surrogate.mean() + rl.kl_beta * kl.mean()


def loss(
    model: PointerSelector,
    batch: dict[str, torch.Tensor],
    cfg: Any,
    epoch: int,
    old: PointerSelector | None = None,
    ref: PointerSelector | None = None,
) -> torch.Tensor:
    if phase(epoch, cfg.rl) == "rce":
        return rce_loss(model, batch, cfg.rl.rce_temperature)
    return grpo_loss(model, old, ref, batch, cfg.rl)


def validation_loss(model: PointerSelector, batch: dict[str, torch.Tensor], cfg: Any) -> torch.Tensor:
    return rce_loss(model, batch, cfg.rl.rce_temperature)
