"""The sizes of OpenFlamingo's perceiver and gated cross-attention blocks, which open_flamingo's factory fixes, and
``resize_flamingo_blocks``, which rebuilds them at other sizes with open_flamingo's own classes. Light to import:
the tiny model's sizes (``lever_lm.lvlm.tiny.FlamingoTinyDims``) extend ``FlamingoBlockSizes``, and planning reads
those."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any


@dataclass(frozen=True)
class FlamingoBlockSizes:
    """The perceiver's and each gated cross-attention block's sizes, which open_flamingo's factory fixes (its
    defaults here, OpenFlamingo's checkpoints). A tiny model sets its own (``FlamingoTinyDims``): at 8 heads x 64
    and 64 latents the blocks were most of a 64-wide language model's compute."""

    perceiver_depth: int = 6
    perceiver_heads: int = 8
    perceiver_dim_head: int = 64
    perceiver_latents: int = 64
    cross_attn_heads: int = 8
    cross_attn_dim_head: int = 64
    cross_attn_ff_mult: int = 4

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any]) -> FlamingoBlockSizes:
        """The fields present in ``values`` (a tiny dir's recorded dims), open_flamingo's defaults for the rest."""
        return cls(**{f.name: int(values[f.name]) for f in fields(cls) if f.name in values})


def resize_flamingo_blocks(model, sizes: FlamingoBlockSizes) -> None:
    """Rebuild ``model``'s perceiver and gated cross-attention blocks with open_flamingo's own classes at ``sizes``
    (fresh init, in place of the factory's; the blocks stay where ``cross_attn_every_n_layers`` put them). A no-op
    at the defaults, so real checkpoints load exactly as open_flamingo builds them."""
    if sizes == FlamingoBlockSizes():
        return
    from open_flamingo.src.helpers import GatedCrossAttentionBlock, PerceiverResampler
    from torch import nn

    checkpointing = bool(getattr(model, "_use_gradient_checkpointing", False))
    model.perceiver = PerceiverResampler(
        dim=model.vis_dim,
        depth=sizes.perceiver_depth,
        dim_head=sizes.perceiver_dim_head,
        heads=sizes.perceiver_heads,
        num_latents=sizes.perceiver_latents,
    )
    model.perceiver._use_gradient_checkpointing = checkpointing
    lang = model.lang_encoder
    lang.gated_cross_attn_layers = nn.ModuleList(
        None
        if block is None
        else GatedCrossAttentionBlock(
            dim=model.lang_dim,
            dim_visual=model.vis_dim,
            dim_head=sizes.cross_attn_dim_head,
            heads=sizes.cross_attn_heads,
            ff_mult=sizes.cross_attn_ff_mult,
            only_attend_immediate_media=block.attn.only_attend_immediate_media,
        )
        for block in lang.gated_cross_attn_layers
    )
    lang.init_flamingo_layers(checkpointing)  # the FlamingoLayer wrappers pick up the new blocks
