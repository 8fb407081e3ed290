"""Qwen2.5-VL vision tower with one attention call per chunk length instead of one per chunk.

Why: outside ``flash_attention_2``, transformers' ``Qwen2_5_VLVisionAttention.forward`` splits q/k/v at
``cu_seqlens`` and calls attention once per chunk (a window in the windowed layers, an image in the full layers) in a
Python loop. A beam step's 65 images of 224 px make about 260 windows per layer, thousands of tiny calls per vision
forward, so a GPU waits on the host. The chunks of such a step nearly always share one length (the images share one
size), and chunks of equal length stack into one batched attention call.

Public API
- ``grouped_attention(visual, counters=None)``: context manager; while active, each ``Qwen2_5_VLVisionAttention``
  inside ``visual`` (the model's ``model.visual``) runs the grouped forward; the original forwards come back on exit
  (exceptions included). Yields the number of modules it patched.

Every torch / transformers import happens inside functions, so importing this module does not import torch.
"""

from __future__ import annotations

import contextlib
import types
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

#: attributes the grouped forward reads; a module lacking any of them is left alone
_REQUIRED_ATTRIBUTES = ("qkv", "proj", "num_heads", "scaling", "config")
#: the implementation whose stock forward is already one varlen call
_VARLEN_IMPLEMENTATION = "flash_attention_2"
#: chunk plans kept per context: one vision forward uses two ``cu_seqlens`` tensors (windows, whole images)
_PLAN_CACHE_SIZE = 4


@dataclass
class _ChunkPlan:
    """How the chunks of one ``cu_seqlens`` tensor group by length (host numbers, read from the device once)."""

    n_chunks: int
    groups: list[tuple[int, int]]  # (chunk length, chunk count), ascending by length, empty chunks left out
    token_order: Any = None  # device index: tokens grouped by chunk length (mixed lengths only), built on first use

    @property
    def uniform(self) -> bool:
        return len(self.groups) <= 1


class _PlanCache:
    """Chunk plans keyed by the ``cu_seqlens`` tensor object. The tower passes the same tensor to all its windowed
    layers (and another to all its full layers), so one host read per vision forward serves every layer. Entries hold
    the tensor itself: while cached it cannot be freed, so its id cannot be reused by a different tensor."""

    def __init__(self, counters):
        self.counters = counters
        self.entries: dict[int, tuple[Any, int, _ChunkPlan]] = {}

    def plan(self, cu_seqlens, model_device) -> _ChunkPlan:
        entry = self.entries.get(id(cu_seqlens))
        version = _version(cu_seqlens)
        if entry is not None and entry[0] is cu_seqlens and entry[1] == version:
            return entry[2]
        boundaries = cu_seqlens.tolist()  # the one device-to-host read, as the stock forward's lengths.tolist()
        # a device read unless the boundaries are host numbers next to a model on a GPU (grids passed on the host)
        if self.counters is not None and (cu_seqlens.device == model_device or cu_seqlens.device.type != "cpu"):
            self.counters.device_read(boundaries)
        lengths = [end - start for start, end in zip(boundaries[:-1], boundaries[1:])]
        groups = sorted((length, count) for length, count in Counter(lengths).items() if length > 0)
        plan = _ChunkPlan(n_chunks=len(lengths), groups=groups)
        if len(self.entries) >= _PLAN_CACHE_SIZE:
            self.entries.pop(next(iter(self.entries)))
        self.entries[id(cu_seqlens)] = (cu_seqlens, version, plan)
        return plan

    def clear(self) -> None:
        self.entries.clear()


def _version(tensor) -> int | None:
    """The tensor's in-place version counter; None for inference-mode tensors, which keep none (the tower never
    writes its ``cu_seqlens`` in place, so identity alone then keys the plan)."""
    try:
        return tensor._version
    except RuntimeError:
        return None


def _token_order(plan: _ChunkPlan, cu_seqlens):
    """Device index of all tokens, grouped by chunk length in ``plan.groups`` order (chunks of a group in their
    sequence order), computed on the device from ``cu_seqlens``: no host-to-device copy, no further read."""
    import torch

    if plan.token_order is not None:
        return plan.token_order
    starts = cu_seqlens[:-1].long()
    lengths = cu_seqlens[1:].long() - starts
    chunks_by_length = torch.argsort(lengths, stable=True)  # same grouping as the host's sorted(Counter)
    n_empty = plan.n_chunks - sum(count for _, count in plan.groups)
    pieces = []
    offset = n_empty  # empty chunks sort first
    for length, count in plan.groups:
        group_starts = starts.index_select(0, chunks_by_length[offset : offset + count])
        positions = torch.arange(length, device=cu_seqlens.device)
        pieces.append((group_starts[:, None] + positions[None, :]).reshape(-1))
        offset += count
    plan.token_order = torch.cat(pieces)
    return plan.token_order


def _attention_interface(module):
    """The attention function the stock forward would call for this module's configured implementation."""
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
    from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import eager_attention_forward

    implementation = module.config._attn_implementation
    if implementation == "eager":
        return eager_attention_forward
    return ALL_ATTENTION_FUNCTIONS[implementation]


def _grouped_forward(
    self,
    original_forward,
    plans: _PlanCache,
    counters,
    hidden_states,
    cu_seqlens,
    rotary_pos_emb=None,
    position_embeddings=None,
    **kwargs,
):
    """The stock ``Qwen2_5_VLVisionAttention.forward``, with the per-chunk loop replaced by one batched attention
    call per distinct chunk length on stacked chunks ``(n_chunks, heads, length, head_dim)``."""
    import torch
    from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import apply_rotary_pos_emb_vision

    if self.config._attn_implementation == _VARLEN_IMPLEMENTATION:  # configured after the patch: stock is varlen
        return original_forward(
            hidden_states, cu_seqlens, rotary_pos_emb=rotary_pos_emb, position_embeddings=position_embeddings, **kwargs
        )
    seq_length = hidden_states.shape[0]
    query, key, value = self.qkv(hidden_states).reshape(seq_length, 3, self.num_heads, -1).permute(1, 0, 2, 3).unbind(0)
    cos, sin = position_embeddings
    query, key = apply_rotary_pos_emb_vision(query, key, cos, sin)  # (seq, heads, head_dim) each
    heads, head_dim = query.shape[1], query.shape[2]

    plan = plans.plan(cu_seqlens, hidden_states.device)
    attention = _attention_interface(self)
    dropout = 0.0 if not self.training else self.attention_dropout

    def attend(q, k, v, count, length):
        """Attention over ``count`` consecutive chunks of ``length`` tokens; returns (count * length, heads, dim)."""
        stacked = [t.reshape(count, length, heads, head_dim).transpose(1, 2) for t in (q, k, v)]
        output = attention(
            self, *stacked, attention_mask=None, scaling=self.scaling, dropout=dropout, is_causal=False, **kwargs
        )[0]  # (count, length, heads, head_dim)
        return output.reshape(count * length, heads, head_dim)

    if not plan.groups:  # no tokens at all: nothing to attend
        attn_output = query.new_zeros(seq_length, heads, head_dim)
    elif plan.uniform:  # the common case: chunks are consecutive equal slices, stacked by a view, no gather
        length, count = plan.groups[0]
        attn_output = attend(query, key, value, count, length)
    else:
        order = _token_order(plan, cu_seqlens)
        grouped = [t.index_select(0, order) for t in (query, key, value)]
        outputs = []
        offset = 0
        for length, count in plan.groups:
            size = length * count
            outputs.append(attend(*(t[offset : offset + size] for t in grouped), count, length))
            offset += size
        attn_output = outputs[0].new_empty(seq_length, heads, head_dim)
        attn_output.index_copy_(0, order, torch.cat(outputs))  # one scatter back to sequence order
    if counters is not None:
        counters["vision_attention_calls"] += len(plan.groups)
        counters["vision_attention_chunks"] += plan.n_chunks

    attn_output = attn_output.reshape(seq_length, -1).contiguous()
    return self.proj(attn_output)


def _patchable_attention_modules(visual) -> list:
    """The vision attention modules of ``visual`` the grouped forward can stand in for."""
    from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import Qwen2_5_VLVisionAttention

    found = []
    for module in visual.modules():
        if not isinstance(module, Qwen2_5_VLVisionAttention):
            continue
        if not all(hasattr(module, name) for name in _REQUIRED_ATTRIBUTES):
            continue
        if getattr(module.config, "_attn_implementation", None) == _VARLEN_IMPLEMENTATION:
            continue
        found.append(module)
    return found


@contextlib.contextmanager
def grouped_attention(visual, counters=None) -> Iterator[int]:
    """While active, the Qwen2.5-VL vision attention modules inside ``visual`` make one attention call per distinct
    chunk length (same outputs as the stock forward). ``counters`` (a ``WorkCounters`` or None) receives
    ``vision_attention_calls``, ``vision_attention_chunks`` and one ``host_syncs`` per ``cu_seqlens`` tensor read.
    Modules configured for ``flash_attention_2`` (already one varlen call) or not shaped like the stock class are
    left alone. Yields the number of patched modules."""
    plans = _PlanCache(counters)
    patched: list[tuple[Any, bool, Any]] = []  # (module, had an instance forward, that forward)
    try:
        for module in _patchable_attention_modules(visual):
            had_own = "forward" in module.__dict__
            previous = module.__dict__.get("forward")
            original_forward = module.forward

            def forward(self, hidden_states, cu_seqlens, *args, _original=original_forward, **kwargs):
                return _grouped_forward(self, _original, plans, counters, hidden_states, cu_seqlens, *args, **kwargs)

            patched.append((module, had_own, previous))
            module.forward = types.MethodType(forward, module)
        yield len(patched)
    finally:
        for module, had_own, previous in reversed(patched):
            if had_own:
                module.forward = previous
            else:
                del module.forward
        plans.clear()
