"""Fast scoring for the OpenFlamingo adapter: cached vision latents, padded batches, prefix key/value reuse.

Mechanism. Every prompt block (ICD or query) starts with ``<image>``, and a Flamingo text token cross-attends only
to the most recent preceding image, so the keys/values of a leading run of ICD blocks depend on those blocks alone.
For each prompt we pick a prefix of its ICDs (the longest one already cached, or shared by at least two prompts of
the call; at least the first ICD), compute its key/values once (on top of the longest cached shorter prefix), and run
only the continuation (remaining ICDs + query) over the cached key/values. The continuation is conditioned on its
own images only, with media locations from its own tokens: exactly what the full-sequence forward computes.

This covers both beam-search orders: "left" (c + S + x: the block of c is the prefix, computed at step 1 as
c + x and reused at every later step) and "right" (S + c + x: S is shared by all candidates of a beam).

Batching: prefix key/values of different lengths are left-padded and masked; continuations are right-padded.
The language model used by open_flamingo's flamingo_3B (MPT) uses ALiBi, a per-key bias that is invariant to
padding; models taking ``position_ids`` get the true positions (prefix length + offset). Only the answer
positions go through the LM head when the model exposes its base model and output embeddings.
"""

from __future__ import annotations

import inspect
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from lever_lm.lvlm.base import Example, Prompt, choose_prefix_depths, plan_batches, to_device_packed


@dataclass(frozen=True)
class PrefixKV:
    """Key/values of a run of leading ICD blocks: tensor (layers, 2, *one row's key shape), the sequence axis at
    ``seq_dim + 1`` where ``seq_dim`` is the model's sequence axis of a batched key tensor (2 for HF caches)."""

    kv: Any
    length: int


class PrefixCache:
    """Least-recently-used map from a tuple of leading ICDs to their key/values, bounded in entries."""

    def __init__(self, max_entries: int):
        self.max_entries = max_entries
        self._entries: OrderedDict[tuple[Example, ...], PrefixKV] = OrderedDict()

    def __contains__(self, key) -> bool:
        return key in self._entries

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key) -> PrefixKV | None:
        entry = self._entries.get(key)
        if entry is not None:
            self._entries.move_to_end(key)
        return entry

    def put(self, key, entry: PrefixKV) -> None:
        self._entries[key] = entry
        self._entries.move_to_end(key)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)

    def clear(self) -> None:
        self._entries.clear()


@dataclass
class _Item:
    """One forward row: continuation tokens (with their images) on top of an optional cached prefix."""

    prefix: PrefixKV | None
    ids: Sequence[int]
    images: Sequence[str]
    span: tuple[int, int] | None = None  # answer span in continuation coordinates
    store_key: tuple[Example, ...] | None = None  # keep prefix + continuation key/values under this key

    @property
    def prefix_length(self) -> int:
        return self.prefix.length if self.prefix is not None else 0


def score_with_prefix_reuse(adapter, prompts: Sequence[Prompt], assembled: Sequence[Any]) -> list[np.ndarray]:
    """Per-token answer-span log-probs for ``prompts`` (assembled by the adapter), reusing prefix key/values."""
    cache = adapter._prefix_cache
    # every new image of the call (a whole beam step) through the encoder up front, in budget-sized batches
    adapter.vision_features([e.image_path for p in prompts for e in (*p.demos, p.query)])
    prefix_lengths = choose_prefix_depths([[p.demos[:k] for k in range(1, len(p.demos) + 1)] for p in prompts], cache)
    available: dict[tuple[Example, ...], PrefixKV] = {}
    owners: dict[tuple[Example, ...], int] = {}
    for index, (prompt, k) in enumerate(zip(prompts, prefix_lengths)):
        if k:
            key = prompt.demos[:k]
            owners.setdefault(key, index)
            entry = cache.get(key)
            if entry is not None:
                available[key] = entry
    missing = [key for key in owners if key not in available]
    for length in sorted({len(key) for key in missing}):
        items = []
        for key in (key for key in missing if len(key) == length):
            base = next((j for j in range(length - 1, 0, -1) if key[:j] in available or key[:j] in cache), 0)
            prefix = (available.get(key[:base]) or cache.get(key[:base])) if base else None
            blocks = assembled[owners[key]].block_ids[base:length]
            items.append(_Item(prefix, [t for b in blocks for t in b], [d.image_path for d in key[base:]],
                               store_key=key))
        for key, entry in _run_items(adapter, items, store=True).items():
            available[key] = entry
            cache.put(key, entry)
    items = []
    for prompt, item, k in zip(prompts, assembled, prefix_lengths):
        offset = sum(len(b) for b in item.block_ids[:k])
        start, end = item.span
        items.append(_Item(available[prompt.demos[:k]] if k else None, item.input_ids[offset:],
                           item.image_paths[k:], span=(start - offset, end - offset)))
    scores = _run_items(adapter, items, store=False)
    return [scores[i] for i in range(len(items))]


def _run_items(adapter, items: list[_Item], store: bool) -> dict:
    """Run items in padded batches grouped by continuation length (``base.plan_batches``: ``score_batch_size`` rows,
    and at most ``score_token_budget`` padded tokens when set); returns {store_key: PrefixKV} or {index: scores}."""
    import torch

    config = adapter.config
    lengths = [len(item.ids) for item in items]
    sort_keys = [(len(item.ids), item.prefix_length) for item in items]
    results: dict = {}
    order: list[int] = []
    pieces = []
    for chosen in plan_batches(lengths, sort_keys, config.score_batch_size, config.score_token_budget):
        outputs = _forward_batch(adapter, [items[i] for i in chosen], store)
        if store:
            for i, out in zip(chosen, outputs):
                results[items[i].store_key] = out
        else:
            order += chosen
            pieces.append(outputs)
    if not store and pieces:
        # the span log-probs of every batch in ONE device-to-host transfer
        flat = adapter.counters.device_read(torch.cat(pieces).cpu().numpy())
        sizes = [items[i].span[1] - items[i].span[0] for i in order]
        results = dict(zip(order, np.split(flat, np.cumsum(sizes)[:-1])))
    return results


def _model_parts(lang):
    """(base model, output head, takes position_ids, native HF cache) of the Flamingo-extended language model."""
    base = getattr(lang, getattr(lang, "base_model_prefix", ""), None)
    head = lang.get_output_embeddings() if hasattr(lang, "get_output_embeddings") else None
    if base is None or head is None or base is lang:
        base, head = None, None
    target = base if base is not None else lang
    takes_positions = "position_ids" in inspect.signature(target.forward).parameters
    native_cache = type(target).__module__.startswith("transformers.")
    return base, head, takes_positions, native_cache


def _forward_batch(adapter, batch: list[_Item], store: bool) -> list:
    import torch

    device, dtype = adapter.device, adapter.dtype
    lang = adapter.model.lang_encoder
    base, head, takes_positions, native_cache = _model_parts(lang)
    rows = len(batch)
    prefix_max = max(item.prefix_length for item in batch)
    cont_max = max(len(item.ids) for item in batch)
    input_ids = torch.full((rows, cont_max), adapter.pad_token_id, dtype=torch.long)
    mask = torch.zeros((rows, prefix_max + cont_max), dtype=torch.long)
    positions = torch.zeros((rows, cont_max), dtype=torch.long)
    for row, item in enumerate(batch):
        input_ids[row, : len(item.ids)] = torch.tensor(list(item.ids))
        mask[row, prefix_max - item.prefix_length : prefix_max + len(item.ids)] = 1
        positions[row] = item.prefix_length + torch.arange(cont_max)
    adapter.text_tokens_computed += sum(len(item.ids) for item in batch)
    counters = adapter.counters
    counters["lm_forward_calls"] += 1
    counters["lm_tokens"] += sum(len(item.ids) for item in batch)
    counters["lm_padded_tokens"] += rows * cont_max
    input_ids, mask, positions = to_device_packed(counters, (input_ids, mask, positions), device)

    past = None
    if prefix_max:
        seq_dim = adapter._kv_seq_dim
        sample = next(item.prefix.kv for item in batch if item.prefix is not None)
        shape = list(sample.shape)
        shape[seq_dim + 1] = prefix_max
        kv = torch.zeros((*shape[:2], rows, *shape[2:]), dtype=sample.dtype, device=sample.device)
        for row, item in enumerate(batch):
            if item.prefix is not None:  # left padding: the prefix ends where the continuation starts
                kv[:, :, row].narrow(seq_dim + 1, prefix_max - item.prefix.length, item.prefix.length).copy_(item.prefix.kv)
        legacy = [(kv[layer, 0], kv[layer, 1]) for layer in range(kv.shape[0])]
        if native_cache:
            from transformers import DynamicCache

            past = DynamicCache.from_legacy_cache(tuple(legacy))
        else:
            past = legacy  # remote-code MPT writes its per-layer entries back into this list

    vision = adapter.stack_vision([item.images for item in batch])
    media_locations = input_ids == adapter.media_token_id
    kwargs: dict[str, Any] = dict(input_ids=input_ids, attention_mask=mask, past_key_values=past, use_cache=store)
    if takes_positions:
        kwargs["position_ids"] = positions
    try:
        with torch.inference_mode():
            for layer in lang._get_decoder_layers():
                layer.condition_vis_x(vision)
                layer.condition_media_locations(media_locations)
                layer.condition_use_cached_media(False)
            if base is not None:
                output = base(**kwargs, return_dict=True)
                hidden, logits = output.last_hidden_state, None
            else:
                output = lang(**kwargs)
                hidden, logits = None, output.logits
            if store:
                return _extract_prefixes(adapter, batch, output.past_key_values, prefix_max, cont_max, native_cache)
            return _span_logprobs(batch, input_ids, hidden, logits, head, counters)
    finally:
        lang.clear_conditioned_layers()


def _sequence_dim(adapter, keys, total: int, native_cache: bool) -> int:
    """Axis of the sequence in a batched key tensor: 2 for HF caches (batch, heads, seq, dim); found by its length
    for remote-code models (e.g. (batch, seq, width) in MosaicGPT), then fixed for the adapter's lifetime."""
    if native_cache:
        found = [2] if keys.dim() == 4 and keys.shape[2] == total else []
    else:
        found = [d for d in range(1, keys.dim()) if keys.shape[d] == total]
    if adapter._kv_seq_dim is not None and adapter._kv_seq_dim in found:
        return adapter._kv_seq_dim
    if len(found) != 1:
        raise RuntimeError(
            f"cannot tell the sequence axis of key/value tensors of shape {tuple(keys.shape)} (sequence length "
            f"{total}); prefix key/value reuse needs it"
        )
    adapter._kv_seq_dim = found[0]
    return found[0]


def _extract_prefixes(adapter, batch: list[_Item], past, prefix_max: int, cont_max: int,
                      native_cache: bool) -> list[PrefixKV]:
    import torch

    legacy = past.to_legacy_cache() if hasattr(past, "to_legacy_cache") else past
    seq_dim = _sequence_dim(adapter, legacy[0][0], prefix_max + cont_max, native_cache)
    entries = []
    for row, item in enumerate(batch):
        first, stop = prefix_max - item.prefix_length, prefix_max + len(item.ids)
        kv = torch.stack([torch.stack([k[row], v[row]]) for k, v in legacy])
        entries.append(PrefixKV(kv.narrow(seq_dim + 1, first, stop - first).contiguous(), stop - first))
    return entries


def _span_logprobs(batch: list[_Item], input_ids, hidden, logits, head, counters):
    """The batch's span log-probs, rows in order, as one flat float64 tensor left on the device (the caller reads
    all batches back at once); row and column indices go over in one host-to-device copy."""
    import torch

    rows, cols = [], []
    for row, item in enumerate(batch):
        start, end = item.span
        rows.extend([row] * (end - start))
        cols.extend(range(start - 1, end - 1))  # token t is predicted at position t - 1
    index = counters.to_device(torch.tensor([rows, cols], dtype=torch.long), input_ids.device)
    rows_t, cols_t = index[0], index[1]
    picked = head(hidden[rows_t, cols_t]) if logits is None else logits[rows_t, cols_t]
    logprobs = torch.log_softmax(picked.float(), dim=-1)
    targets = input_ids[rows_t, cols_t + 1]
    return logprobs.gather(-1, targets[:, None])[:, 0].double()
