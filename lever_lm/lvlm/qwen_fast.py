"""Fast scoring path of the Qwen2.5-VL adapter: vision cache, padded batches and key/value prefix reuse.

Gives the same log-probs as ``QwenVLAdapter.score_naive`` (up to float rounding) with much less work:

1. Vision cache: each distinct image (keyed by path) goes through the vision tower once per ``clear()``; its
   merged patch embeddings are placed at the ``<|image_pad|>`` positions of ``inputs_embeds``.
2. Positions: the 3-D mrope position ids of the FULL sequence (``qwen_positions.mrope_positions``, equal to the model's
   ``get_rope_index``); a continuation gets its slice. Positions of a prefix depend only on the prefix, so its
   keys/values (which are stored after rotary) are valid in front of any continuation.
3. KV prefixes: the prompt up to the end of demo k's answer depends only on the template and demos 0..k
   (``AssembledPrompt.demo_ends``). Per prompt we use the deepest such prefix that is already cached or shared
   by several prompts of the call, else the first demo's block (so "left"-order beam search, which puts the
   new candidate at the front, finds it again at the next step). Missing prefixes are computed level by level,
   each on top of the deepest shorter prefix already cached. Continuations run in padded batches: past keys and
   values left-padded and masked, continuation right-padded. The prefixes live in one ``kv_pool.KVPool`` tensor,
   so a batch's past is one gather into a preallocated buffer that the forward then fills in place.
Memory: cached prefixes live until ``clear()`` (beam search clears per anchor); the pool's storage is kept.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from lever_lm.lvlm.base import (
    Prompt,
    VisionFeatureCache,
    choose_prefix_depths,
    plan_batches,
    plan_image_batches,
    to_device_packed,
    vision_token_budget,
)
from lever_lm.lvlm.kv_pool import KVPool
from lever_lm.lvlm.qwen_positions import mrope_positions
from lever_lm.lvlm.qwen_vision import grouped_attention

if TYPE_CHECKING:
    from lever_lm.lvlm.qwen import AssembledPrompt, QwenVLAdapter


@dataclass
class _Sequence:
    """One assembled prompt with its full-sequence mrope positions (3, L) on CPU."""

    assembled: AssembledPrompt
    positions: object

    def prefix_key(self, depth: int) -> tuple:
        end = self.assembled.demo_ends[depth - 1]
        return self.assembled.input_ids[:end], self.assembled.image_paths[:depth]


@dataclass
class _Task:
    """Run tokens [start, end) of ``sequence`` on top of the pooled prefix ``past`` (KV of tokens [0, start), or
    None when start is 0)."""

    sequence: _Sequence
    start: int
    end: int
    past: tuple | None
    store_key: tuple | None = None  # keep the resulting KV (tokens [0, end)) under this prefix key
    score: bool = False  # return the query span's log-probs


class FastScorer:
    def __init__(self, adapter: QwenVLAdapter):
        self.adapter = adapter
        self.features = VisionFeatureCache()  # image path -> (merged embeds (n, hidden), grid_thw (3,) on CPU)
        self.prefixes = KVPool(adapter.counters)  # prefix key -> key/values of tokens [0, end of its last demo)
        self.tokens_run = 0  # tokens pushed through the language model (not reset by clear; for benchmarks)

    def clear(self, keep_images: int = 0) -> None:
        """Drop the prefixes and all cached image features but the ``keep_images`` most recently used."""
        self.features.keep(keep_images)
        self.prefixes.clear()

    # -- vision ---------------------------------------------------------------------------------------------

    def encode_images(self, paths: Sequence[str], into: dict | None = None) -> None:
        """Vision features of the images not in ``into`` (default: the scorer's cache) yet, stored there:
        preprocessed together on the host, then as few tower forwards as ``vision_token_budget`` allows (all of a
        beam step's new images in one at the defaults)."""
        import torch

        into = self.features if into is None else into
        missing = list(dict.fromkeys(p for p in paths if p not in into))
        if not missing:
            return
        model = self.adapter.model
        counters = self.adapter.counters
        pixel_values, grid_host = self.adapter.preprocess_images_host(missing)
        patches = grid_host.prod(-1).tolist()  # host tensor: no device read
        first_patch = np.concatenate(([0], np.cumsum(patches)))
        visual = model.model.visual
        # the tower loops over the grids in Python (rotary and window indices): host grids spare a device read per
        # image; flash_attention_2 alone needs its cu_seqlens (made from the grids) on the device
        grids_on_host = visual.config._attn_implementation != "flash_attention_2"
        budget = vision_token_budget(self.adapter.config.vision_token_budget, self.adapter.device)
        for chunk in plan_image_batches(patches, budget):
            lo, hi = chunk[0], chunk[-1] + 1  # batches are consecutive images
            pixels = counters.to_device(
                pixel_values[first_patch[lo] : first_patch[hi]], self.adapter.device, visual.dtype
            )
            grids = grid_host[lo:hi]
            with grouped_attention(visual, counters):
                embeds = visual(pixels, grid_thw=grids if grids_on_host else counters.to_device(grids, pixels.device))
            counts = (grids.prod(-1) // self.adapter.merge_size**2).tolist()
            for path, image_embeds, grid in zip(missing[lo:hi], torch.split(embeds, counts), grids):
                into[path] = (image_embeds, grid)
            self.adapter.vision_encoder_calls += hi - lo
            counters["vision_forward_calls"] += 1
            counters["vision_images"] += hi - lo
            counters["vision_tokens"] += pixels.shape[0]

    # -- scoring --------------------------------------------------------------------------------------------

    def score(self, prompts: Sequence[Prompt]) -> list[np.ndarray]:
        import torch

        with torch.inference_mode():
            paths = [e.image_path for p in prompts for e in (*p.demos, p.query)]
            self.encode_images(paths)
            self.features.touch(paths)
            counts = {path: embeds.shape[0] for path, (embeds, _) in self.features.items()}
            sequences = [self._sequence(p, counts) for p in prompts]
            depths = choose_prefix_depths(
                [[s.prefix_key(d) for d in range(1, len(s.assembled.demo_ends) + 1)] for s in sequences], self.prefixes
            )
            self._compute_missing_prefixes(sequences, depths)
            tasks = []
            for sequence, depth in zip(sequences, depths):
                start = sequence.assembled.demo_ends[depth - 1] if depth else 0
                past = sequence.prefix_key(depth) if depth else None
                tasks.append(_Task(sequence, start, len(sequence.assembled.input_ids), past, score=True))
            return self._run(tasks)

    def _sequence(self, prompt: Prompt, counts: dict[str, int]) -> _Sequence:
        import torch

        assembled = self.adapter.assemble(prompt, counts, for_generation=False)
        grids = [self.features[path][1].tolist() for path in assembled.image_paths]
        positions = mrope_positions(
            assembled.input_ids, self.adapter.model.config.image_token_id, grids, self.adapter.merge_size
        )
        return _Sequence(assembled, torch.from_numpy(positions))

    def _compute_missing_prefixes(self, sequences: Sequence[_Sequence], depths: Sequence[int]) -> None:
        missing: dict[tuple, tuple[_Sequence, int]] = {}
        for sequence, depth in zip(sequences, depths):
            if depth and sequence.prefix_key(depth) not in self.prefixes:
                missing.setdefault(sequence.prefix_key(depth), (sequence, depth))
        for level in sorted({depth for _, depth in missing.values()}):
            tasks = []
            for key, (sequence, depth) in missing.items():
                if depth != level:
                    continue
                base = next((d for d in range(depth - 1, 0, -1) if sequence.prefix_key(d) in self.prefixes), 0)
                start = sequence.assembled.demo_ends[base - 1] if base else 0
                past = sequence.prefix_key(base) if base else None
                tasks.append(_Task(sequence, start, sequence.assembled.demo_ends[depth - 1], past, store_key=key))
            self._run(tasks)

    # -- batched continuation runs --------------------------------------------------------------------------

    def _run(self, tasks: list[_Task]) -> list[np.ndarray]:
        """Run tasks in padded batches; store requested prefixes; return span log-probs of scoring tasks
        in task order."""
        import torch

        config = self.adapter.config
        lengths = [t.end - t.start for t in tasks]
        sort_keys = [(t.start, t.end - t.start) for t in tasks]  # like past lengths together: little KV padding
        order: list[int] = []  # scoring tasks in the order their log-probs sit in ``pieces``
        pieces = []
        for indices in plan_batches(lengths, sort_keys, config.score_batch_size, config.score_token_budget):
            scored, values = self._run_batch([tasks[i] for i in indices])
            order += [indices[k] for k in scored]
            if values is not None:
                pieces.append(values)
        if not pieces:
            return []
        # the log-probs of every batch in ONE device-to-host transfer
        flat = self.adapter.counters.device_read(torch.cat(pieces).cpu().numpy())
        sizes = [tasks[i].sequence.assembled.query_span[1] - tasks[i].sequence.assembled.query_span[0] for i in order]
        by_task = dict(zip(order, np.split(flat, np.cumsum(sizes)[:-1])))
        return [by_task[i] for i in range(len(tasks)) if tasks[i].score]

    def _run_batch(self, tasks: list[_Task]):
        """One padded forward; returns (positions in ``tasks`` of the scoring tasks, their span log-probs
        concatenated, on the device, or None)."""
        import torch

        adapter = self.adapter
        model = adapter.model
        device = adapter.device
        text_model = model.model.language_model
        image_token_id = model.config.image_token_id
        batch = len(tasks)
        past_max = max(t.start for t in tasks)
        cont_max = max(t.end - t.start for t in tasks)
        self.tokens_run += sum(t.end - t.start for t in tasks)
        counters = adapter.counters
        counters["lm_forward_calls"] += 1
        counters["lm_tokens"] += sum(t.end - t.start for t in tasks)
        counters["lm_padded_tokens"] += batch * cont_max

        ids = torch.full((batch, cont_max), adapter._pad_token_id(), dtype=torch.long)
        positions = torch.zeros((3, batch, cont_max), dtype=torch.long)
        mask = torch.zeros((batch, past_max + cont_max), dtype=torch.long)
        image_features = []
        for row, task in enumerate(tasks):
            length = task.end - task.start
            ids[row, :length] = torch.as_tensor(task.sequence.assembled.input_ids[task.start : task.end])
            positions[:, row, :length] = task.sequence.positions[:, task.start : task.end]
            mask[row, past_max - task.start : past_max + length] = 1
            image_features += self._continuation_images(task)
        slots = self.prefixes.slots([t.past for t in tasks])
        ids, positions, mask, slots = to_device_packed(counters, (ids, positions, mask, slots), device)
        embeds = text_model.embed_tokens(ids)
        if image_features:
            image_mask = (ids == image_token_id)[..., None].expand_as(embeds)
            embeds = embeds.masked_scatter(image_mask, torch.cat(image_features).to(embeds.dtype))

        stores = [(row, t) for row, t in enumerate(tasks) if t.store_key is not None]
        cache = buffer = None
        if past_max or stores:  # one buffer for past + new key/values of every layer; the past in one gather
            buffer, cache = self.prefixes.batch_cache(
                text_model.config, slots, past_max, cont_max, embeds.dtype, device, adapter.config.key("model_path")
            )
        hidden = text_model(
            inputs_embeds=embeds,
            attention_mask=mask,
            position_ids=positions,
            past_key_values=cache,
            use_cache=cache is not None,
            cache_position=torch.arange(past_max, past_max + cont_max, device=device),
        ).last_hidden_state

        if stores:  # the row's tokens [0, end) sit at buffer positions [past_max - start, past_max - start + end)
            self.prefixes.put(
                [t.store_key for _, t in stores],
                buffer,
                [row for row, _ in stores],
                [past_max - t.start for _, t in stores],
                [t.end for _, t in stores],
            )
        scoring = [(row, t) for row, t in enumerate(tasks) if t.score]
        if not scoring:
            return [], None
        values = adapter.span_logprobs_on_device(
            hidden,
            [t.sequence.assembled.input_ids for _, t in scoring],
            [row for row, _ in scoring],
            [t.sequence.assembled.query_span for _, t in scoring],
            [t.start for _, t in scoring],
        )
        return [row for row, _ in scoring], values

    def _continuation_images(self, task: _Task) -> list:
        """Cached features of the images whose tokens lie in the task's token range, in order."""
        ids = np.asarray(task.sequence.assembled.input_ids)
        is_image = ids == self.adapter.model.config.image_token_id
        run_starts = np.flatnonzero(is_image & ~np.concatenate(([False], is_image[:-1])))
        return [
            self.features[path][0]
            for path, start in zip(task.sequence.assembled.image_paths, run_starts)
            if task.start <= start < task.end
        ]
