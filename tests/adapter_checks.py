"""Checks shared by the Qwen and Flamingo adapter tests (both adapters promise the same fast-path behaviour)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest


def check_vision_budget_regroups_only(adapter, prompts, config_from_dict, name: str) -> None:
    """A budget large enough for every image gives one vision forward for the call; one image per forward (budget 1)
    gives the same scores; a zero budget is refused naming ``beam_models.<name>.vision_token_budget``."""
    distinct = len({e.image_path for p in prompts for e in (*p.demos, p.query)})
    original = adapter.config
    try:
        reference = None
        for budget in (10**6, 1):
            adapter.config = dataclasses.replace(original, vision_token_budget=budget)
            adapter.clear_cache()
            before = adapter.counters.snapshot()
            scores = adapter.score(prompts)
            counts = adapter.counters.since(before)
            if reference is None:
                reference = scores
                assert counts["vision_forward_calls"] == 1
            else:
                for got, want in zip(scores, reference):
                    np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)
                assert counts["vision_forward_calls"] == counts["vision_images"] == distinct
        with pytest.raises(ValueError, match=rf"beam_models\.{name}\.vision_token_budget"):
            config_from_dict(name, {"variant": "tiny", "vision_token_budget": 0})
    finally:
        adapter.config = original
        adapter.clear_cache()


def check_batch_past_copies_are_fixed(adapter, warm_prompts, prompts) -> None:
    """After ``warm_prompts`` cached their prefixes, scoring ``prompts`` in one batch copies key/values a fixed
    number of times per forward (one gather per batch past, plus stores), not once per row and layer."""
    original = adapter.config
    try:
        adapter.config = dataclasses.replace(original, score_batch_size=1000)
        adapter.clear_cache()
        adapter.score(warm_prompts)
        before = adapter.counters.snapshot()
        adapter.score(prompts)
        counts = adapter.counters.since(before)
        assert len(prompts) > 2
        assert 0 < counts["kv_copy_ops"] <= 3 * counts["lm_forward_calls"] + 1  # +1: the pool may grow once
    finally:
        adapter.config = original
        adapter.clear_cache()


def check_vision_cache_outlives_a_query(adapter, prompts) -> None:
    """``clear_cache(vision=False)`` (beam search, between queries) keeps the images' features, so scoring the same
    images again encodes none and gives the same scores; it keeps only the ``max_cached_images`` most recently used;
    a plain ``clear_cache()`` drops them all."""
    distinct = len({e.image_path for p in prompts for e in (*p.demos, p.query)})
    original = adapter.config
    try:
        adapter.clear_cache()
        reference = adapter.score(prompts)
        for capacity, encoded in ((original.max_cached_images, 0), (2, distinct - 2)):
            adapter.config = dataclasses.replace(original, max_cached_images=capacity)
            adapter.clear_cache(vision=False)
            before = adapter.counters.snapshot()
            scores = adapter.score(prompts)
            assert adapter.counters.since(before)["vision_images"] == encoded
            for got, want in zip(scores, reference):
                np.testing.assert_array_equal(got, want)
        adapter.clear_cache()
        before = adapter.counters.snapshot()
        adapter.score(prompts)
        assert adapter.counters.since(before)["vision_images"] == distinct
    finally:
        adapter.config = original
        adapter.clear_cache()


def default_flamingo_dims():
    """The embedded default's Flamingo-tiny sizes (config.yaml: its resized perceiver and cross-attention blocks),
    at the random-init tests' ``init_std`` so that answers and scores depend visibly on the prompt."""
    from pathlib import Path

    from lever_lm.config import load_config
    from lever_lm.lvlm.factory import tiny_spec
    from lever_lm.lvlm.tiny import FlamingoTinyDims

    config = load_config(Path(__file__).resolve().parents[1] / "config.yaml")
    dims = tiny_spec("flamingo_tiny", config["beam_models"]["flamingo_tiny"])[1]
    return dataclasses.replace(dims, init_std=FlamingoTinyDims.init_std)
