"""Fast scoring for the OpenFlamingo adapter: cached vision latents, padded batches, prefix key/value reuse.

Mechanism. Every prompt block (ICD or query) starts with ``<image>``, and a Flamingo text token cross-attends only
to the most recent preceding image, so the keys/values of a leading run of ICD blocks depend on those blocks alone.
For each prompt we pick a prefix of its ICDs (the longest one already cached, or shared by at least two prompts of
the call; at least the first ICD), compute its key/values once (on top of the longest cached shorter prefix), and run
only the continuation (remaining ICDs + query) over the cached key/values. The continuation is conditioned on its
own images only, with media locations from its own tokens: exactly what the full-sequence forward computes. Its
cross-attention scores each token against its own image's latents only (``flamingo.batch_media``: what open_flamingo's
masked cross-attention keeps, without scoring every image slot of the row first; 1.6x on the tiny model's beams).

This covers both beam-search orders: "left" (c + S + x: the block of c is the prefix, computed at step 1 as
c + x and reused at every later step) and "right" (S + c + x: S is shared by all candidates of a beam).

Batching: prefix key/values of different lengths are left-padded and masked; continuations are right-padded.
Prefixes live in one ``kv_pool.KVPool`` tensor: a batch's past is one gather, and with an HF-native cache the
forward writes the continuation's key/values in place into the same buffer, from which new prefixes are stored.
The language model used by open_flamingo's flamingo_3B (MPT) uses ALiBi, a per-key bias that is invariant to
padding; models taking ``position_ids`` get the true positions (prefix length + offset). Only the answer
positions go through the LM head when the model exposes its base model and output embeddings.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from lever_lm.lvlm.base import Example, Prompt, choose_prefix_depths, plan_batches, to_device_packed


@dataclass
class _Item:
    """One forward row: continuation tokens (with their images) on top of an optional pooled prefix."""

    prefix: tuple[Example, ...] | None  # key of the prefix in the adapter's KVPool
    prefix_length: int
    ids: Sequence[int]
    images: Sequence[str]
    span: tuple[int, int] | None = None  # answer span in continuation coordinates
    store_key: tuple[Example, ...] | None = None  # keep prefix + continuation key/values under this key


def score_with_prefix_reuse(adapter, prompts: Sequence[Prompt], assembled: Sequence[Any]) -> list[np.ndarray]:
    """Per-token answer-span log-probs for ``prompts`` (assembled by the adapter), reusing prefix key/values."""
    pool = adapter._prefix_cache
    # every new image of the call (a whole beam step) through the encoder up front, in budget-sized batches
    adapter.vision_features([e.image_path for p in prompts for e in (*p.demos, p.query)])
    prefix_lengths = choose_prefix_depths([[p.demos[:k] for k in range(1, len(p.demos) + 1)] for p in prompts], pool)
    # entries this call may read stay; older ones beyond max_cached_prefixes go (new ones are dropped next call)
    pool.trim(keep={p.demos[:j] for p, k in zip(prompts, prefix_lengths) for j in range(1, k + 1)})
    owners: dict[tuple[Example, ...], int] = {}
    for index, (prompt, k) in enumerate(zip(prompts, prefix_lengths)):
        if k:
            owners.setdefault(prompt.demos[:k], index)
    missing = [key for key in owners if key not in pool]
    for length in sorted({len(key) for key in missing}):
        items = []
        for key in (key for key in missing if len(key) == length):
            base = next((j for j in range(length - 1, 0, -1) if key[:j] in pool), 0)
            blocks = assembled[owners[key]].block_ids[base:length]
            items.append(
                _Item(
                    key[:base] if base else None,
                    pool.length(key[:base]) if base else 0,
                    [t for b in blocks for t in b],
                    [d.image_path for d in key[base:]],
                    store_key=key,
                )
            )
        _run_items(adapter, items, store=True)
    items = []
    for prompt, item, k in zip(prompts, assembled, prefix_lengths):
        offset = sum(len(b) for b in item.block_ids[:k])
        start, end = item.span
        items.append(
            _Item(
                prompt.demos[:k] if k else None,
                pool.length(prompt.demos[:k]) if k else 0,
                item.input_ids[offset:],
                item.image_paths[k:],
                span=(start - offset, end - offset),
            )
        )
    scores = _run_items(adapter, items, store=False)
    return [scores[i] for i in range(len(items))]


def _run_items(adapter, items: list[_Item], store: bool) -> dict:
    """Run items in padded batches grouped by continuation length (``base.plan_batches``: ``score_batch_size`` rows,
    and at most ``score_token_budget`` padded tokens when set); stores their key/values in the pool (``store``) or
    returns {index: scores}."""
    import torch

    config = adapter.config
    lengths = [len(item.ids) for item in items]
    sort_keys = [(len(item.ids), item.prefix_length) for item in items]
    results: dict = {}
    order: list[int] = []
    pieces = []
    for chosen in plan_batches(lengths, sort_keys, config.score_batch_size, config.score_token_budget):
        outputs = _forward_batch(adapter, [items[i] for i in chosen], store)
        if not store:
            order += chosen
            pieces.append(outputs)
    if not store and pieces:
        # the span log-probs of every batch in ONE device-to-host transfer
        flat = adapter.counters.device_read(torch.cat(pieces).cpu().numpy())
        sizes = [items[i].span[1] - items[i].span[0] for i in order]
        results = dict(zip(order, np.split(flat, np.cumsum(sizes)[:-1])))
    return results


def model_parts(lang):
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
    base, head, takes_positions, native_cache = model_parts(lang)
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
    pool = adapter._prefix_cache
    slots = pool.slots([item.prefix for item in batch])
    input_ids, mask, positions, slots = to_device_packed(counters, (input_ids, mask, positions, slots), device)

    past = buffer = None
    if native_cache and (prefix_max or store):
        # one buffer for past + new key/values of every layer; the past in one gather, the new ones written in place
        buffer, past = pool.batch_cache(
            (base if base is not None else lang).config,
            slots,
            prefix_max,
            cont_max,
            dtype,
            device,
            adapter.config.key("lang_encoder_path"),
        )
    elif prefix_max:
        # remote-code MPT: its own per-layer (keys, values) list, concatenated (and written back) inside the model
        shape = list(pool.data.shape)
        shape[2], shape[3 + pool.seq_axis] = rows, prefix_max
        kv = torch.empty(shape, dtype=pool.data.dtype, device=pool.data.device)
        pool.past_into(kv, slots, prefix_max)
        past = [(kv[layer, 0], kv[layer, 1]) for layer in range(kv.shape[0])]

    vision, cross_attention, _ = adapter.batch_media([item.images for item in batch])
    media_locations = input_ids == adapter.media_token_id
    kwargs: dict[str, Any] = dict(
        input_ids=input_ids, attention_mask=mask, past_key_values=past, use_cache=store or past is not None
    )
    if takes_positions:
        kwargs["position_ids"] = positions
    try:
        with torch.inference_mode(), cross_attention:
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
                _store_prefixes(
                    adapter, batch, buffer if native_cache else output.past_key_values, prefix_max, cont_max
                )
                return []
            return _span_logprobs(batch, input_ids, hidden, logits, head, counters)
    finally:
        lang.clear_conditioned_layers()


def _sequence_dim(adapter, keys, total: int) -> int:
    """Axis of the sequence in a remote-code model's batched key tensor (e.g. (batch, seq, width) in MosaicGPT),
    found by its length, then fixed for the adapter's lifetime."""
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


def _store_prefixes(adapter, batch: list[_Item], source, prefix_max: int, cont_max: int) -> None:
    """Keep each row's prefix + continuation key/values in the pool. ``source``: the ``prefilled_cache`` buffer
    (native caches) or a remote-code model's returned per-layer (keys, values) list."""
    import torch

    seq_axis = 1  # (heads, seq, head dim) rows of HF caches
    if not torch.is_tensor(source):
        seq_axis = _sequence_dim(adapter, source[0][0], prefix_max + cont_max) - 1
        flat = torch.stack([tensor for layer in source for tensor in layer])  # one copy: (layers * 2, batch, ...)
        source = flat.view(len(source), 2, *flat.shape[1:])
        adapter.counters["kv_copy_ops"] += 1
    adapter._prefix_cache.put(
        [item.store_key for item in batch],
        source,
        list(range(len(batch))),
        [prefix_max - item.prefix_length for item in batch],
        [item.prefix_length + len(item.ids) for item in batch],
        seq_axis=seq_axis,
    )


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
