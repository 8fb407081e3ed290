"""Grouped vision attention (``lever_lm.lvlm.qwen_vision``): same outputs as the stock Qwen2.5-VL vision tower,
one attention call per chunk length, honest counters, the stock forwards back after the context."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from lever_lm.lvlm.base import WorkCounters  # noqa: E402
from lever_lm.lvlm.qwen_vision import grouped_attention  # noqa: E402
from lever_lm.lvlm.tiny import QwenTinyDims, new_tiny_qwen  # noqa: E402

# 3 blocks: two windowed (window 112 px = 4x4 merged patches = 64 tokens), the last one full attention
VISION_DEPTH = 3
COUNTING_IMPLEMENTATION = "lever_test_counting_sdpa"


@pytest.fixture(scope="module")
def visual():
    torch.set_num_threads(1)
    model, _ = new_tiny_qwen(["a", "b"], QwenTinyDims(vision_depth=VISION_DEPTH), seed=0)
    tower = model.model.visual
    assert list(tower.fullatt_block_indexes) == [VISION_DEPTH - 1] and tower.window_size == 112
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():  # larger weights: attention then mixes tokens strongly, so a wrong grouping shows
        for name, parameter in tower.named_parameters():
            if "norm" not in name:
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.1)
    return tower


def _pixels(sizes, seed=0):
    """Patches and grids of random PIL images of the given (width, height) sizes (multiples of 28: kept as is)."""
    from PIL import Image
    from transformers import Qwen2VLImageProcessor

    dims = QwenTinyDims()
    processor = Qwen2VLImageProcessor(
        min_pixels=28 * 28,
        max_pixels=512 * 512,
        patch_size=dims.patch_size,
        temporal_patch_size=dims.temporal_patch_size,
        merge_size=dims.spatial_merge_size,
    )
    rng = np.random.default_rng(seed)
    images = [Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)) for width, height in sizes]
    inputs = processor(images=images, return_tensors="pt")
    grid = inputs["image_grid_thw"]
    assert grid[:, 1:].tolist() == [[height // 14, width // 14] for width, height in sizes]
    return inputs["pixel_values"], grid


def _stock_chunk_count(tower, grid) -> int:
    """Attention calls of the stock per-chunk loop: windows in the windowed blocks, images in the full blocks."""
    _, cu_window_seqlens = tower.get_window_index(grid)
    n_windows = len(torch.unique_consecutive(torch.tensor(cu_window_seqlens))) - 1
    n_full = len(tower.fullatt_block_indexes)
    return (len(tower.blocks) - n_full) * n_windows + n_full * len(grid)


def _distinct_length_count(tower, grid) -> int:
    """Attention calls of the grouped forward: distinct non-empty chunk lengths, summed over the blocks."""
    _, cu_window_seqlens = tower.get_window_index(grid)
    window_lengths = set(np.diff(np.unique(cu_window_seqlens)).tolist())
    image_lengths = set((grid[:, 1] * grid[:, 2]).tolist())
    n_full = len(tower.fullatt_block_indexes)
    return (len(tower.blocks) - n_full) * len(window_lengths) + n_full * len(image_lengths)


@pytest.fixture
def counting_attention(visual):
    """The tower configured with a registered attention function that counts its calls (sdpa underneath), so a
    test sees the calls the stock loop and the grouped forward really make."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward
    from transformers.modeling_utils import AttentionInterface

    calls = {"n": 0}

    def counting_sdpa(*args, **kwargs):
        calls["n"] += 1
        return sdpa_attention_forward(*args, **kwargs)

    AttentionInterface.register(COUNTING_IMPLEMENTATION, counting_sdpa)
    previous = visual.config._attn_implementation
    visual.config._attn_implementation = COUNTING_IMPLEMENTATION
    try:
        yield calls
    finally:
        visual.config._attn_implementation = previous
        AttentionInterface._global_mapping.pop(COUNTING_IMPLEMENTATION, None)


@pytest.fixture
def implementation(visual, request):
    previous = visual.config._attn_implementation
    visual.config._attn_implementation = request.param
    try:
        yield request.param
    finally:
        visual.config._attn_implementation = previous


def _stock_and_grouped(tower, pixels, grid, counters=None):
    with torch.no_grad():
        stock = tower(pixels, grid_thw=grid)
        with grouped_attention(tower, counters) as n_patched:
            assert n_patched == VISION_DEPTH
            grouped = tower(pixels, grid_thw=grid)
    return stock, grouped


def _grouped_matches_stock(tower, sizes):
    """Images of ``sizes`` through the stock and the grouped tower: outputs agree; (grid, counters, stock output)."""
    pixels, grid = _pixels(sizes)
    counters = WorkCounters()
    stock, grouped = _stock_and_grouped(tower, pixels, grid, counters)
    torch.testing.assert_close(grouped, stock, rtol=1e-5, atol=1e-5)
    return grid, counters, stock


SAME_SIZES = [(224, 224)] * 4  # 16x16 patches: 4 windows of 64 tokens each
MIXED_SIZES = [(224, 224), (168, 112), (56, 84), (112, 224), (84, 56), (280, 196)]


@pytest.mark.parametrize("implementation", ["sdpa", "eager"], indirect=True)
def test_same_size_images_match_stock_with_one_call_per_block(visual, implementation):
    grid, counters, stock = _grouped_matches_stock(visual, SAME_SIZES)
    assert stock.abs().mean() > 0.1
    assert counters["vision_attention_calls"] == VISION_DEPTH
    assert counters["vision_attention_chunks"] == _stock_chunk_count(visual, grid) == 2 * 16 + 4
    assert counters["host_syncs"] == 2  # window boundaries and image boundaries, each read once for all blocks


@pytest.mark.parametrize("implementation", ["sdpa", "eager"], indirect=True)
def test_mixed_size_images_match_stock(visual, implementation):
    grid, counters, _ = _grouped_matches_stock(visual, MIXED_SIZES)
    expected_calls = _distinct_length_count(visual, grid)
    assert expected_calls > VISION_DEPTH + 2  # mixed lengths in every block: the gather/scatter path ran
    assert counters["vision_attention_calls"] == expected_calls
    assert counters["vision_attention_chunks"] == _stock_chunk_count(visual, grid)
    assert counters["host_syncs"] == 2


def test_counters_match_the_attention_calls_really_made(visual, counting_attention):
    pixels, grid = _pixels(MIXED_SIZES[:3] + SAME_SIZES)
    with torch.no_grad():
        stock = visual(pixels, grid_thw=grid)
        stock_calls = counting_attention["n"]
        counting_attention["n"] = 0
        counters = WorkCounters()
        with grouped_attention(visual, counters):
            grouped = visual(pixels, grid_thw=grid)
    torch.testing.assert_close(grouped, stock, rtol=1e-5, atol=1e-5)
    assert counting_attention["n"] == counters["vision_attention_calls"] < stock_calls
    assert counters["vision_attention_chunks"] == stock_calls


def test_one_context_over_several_forwards_stays_exact(visual):
    """Each forward makes new ``cu_seqlens`` tensors: cached chunk plans must never serve another forward's."""
    batches = [
        _pixels(SAME_SIZES),
        _pixels(MIXED_SIZES, seed=1),
        _pixels(SAME_SIZES[:2], seed=2),
        _pixels(MIXED_SIZES[::-1], seed=3),
    ]
    with torch.no_grad():
        stocks = [visual(pixels, grid_thw=grid) for pixels, grid in batches]
        counters = WorkCounters()
        with grouped_attention(visual, counters):
            grouped = [visual(pixels, grid_thw=grid) for pixels, grid in batches]
    for expected, actual in zip(stocks, grouped):
        torch.testing.assert_close(actual, expected, rtol=1e-5, atol=1e-5)
    assert counters["host_syncs"] == 2 * len(batches)


def test_attention_module_with_interleaved_lengths_matches_stock(visual):
    """One module called directly, chunk lengths interleaved out of order (and one empty chunk)."""
    attention = visual.blocks[0].attn
    lengths = [5, 3, 0, 5, 7, 3, 5, 1]
    cu_seqlens = torch.tensor(np.concatenate([[0], np.cumsum(lengths)]), dtype=torch.int32)
    generator = torch.Generator().manual_seed(3)
    hidden = torch.randn(sum(lengths), attention.qkv.in_features, generator=generator)
    angles = torch.randn(sum(lengths), attention.head_dim, generator=generator)
    position_embeddings = (angles.cos(), angles.sin())
    nonempty = torch.tensor(np.concatenate([[0], np.cumsum([n for n in lengths if n])]), dtype=torch.int32)
    counters = WorkCounters()
    with torch.no_grad():
        stock = attention(hidden, cu_seqlens=nonempty, position_embeddings=position_embeddings)
        with grouped_attention(visual, counters):
            grouped = attention(hidden, cu_seqlens=cu_seqlens, position_embeddings=position_embeddings)
    torch.testing.assert_close(grouped, stock, rtol=1e-5, atol=1e-5)
    assert counters["vision_attention_calls"] == 4  # lengths 1, 3, 5, 7
    assert counters["vision_attention_chunks"] == len(lengths)
    assert counters["host_syncs"] == 1


def _instance_forwards(tower):
    return [block.attn.__dict__.get("forward") for block in tower.blocks]


def test_stock_forwards_restored_after_exit_and_after_an_exception(visual):
    assert _instance_forwards(visual) == [None] * VISION_DEPTH
    with grouped_attention(visual):
        assert all(forward is not None for forward in _instance_forwards(visual))
    assert _instance_forwards(visual) == [None] * VISION_DEPTH
    with pytest.raises(RuntimeError, match="inside"):
        with grouped_attention(visual):
            raise RuntimeError("inside the context")
    assert _instance_forwards(visual) == [None] * VISION_DEPTH


def test_an_earlier_instance_forward_comes_back(visual):
    attention = visual.blocks[0].attn
    own_forward = attention.forward  # bound stock forward, set on the instance as someone else's patch would be
    attention.forward = own_forward
    try:
        with grouped_attention(visual):
            assert attention.__dict__["forward"] is not own_forward
        assert attention.__dict__["forward"] is own_forward
    finally:
        del attention.forward


def test_flash_attention_2_keeps_the_stock_forward(visual):
    previous = visual.config._attn_implementation
    visual.config._attn_implementation = "flash_attention_2"
    try:
        with grouped_attention(visual) as n_patched:
            assert n_patched == 0
            assert _instance_forwards(visual) == [None] * VISION_DEPTH
    finally:
        visual.config._attn_implementation = previous


def test_module_not_shaped_like_the_stock_class_is_left_alone(visual):
    import copy

    odd = copy.deepcopy(visual.blocks[0].attn)
    del odd.scaling
    container = torch.nn.ModuleList([odd, copy.deepcopy(visual.blocks[0].attn)])
    with grouped_attention(container) as n_patched:
        assert n_patched == 1
        assert "forward" not in odd.__dict__ and "forward" in container[1].__dict__


def test_import_does_not_import_torch():
    code = "import sys, lever_lm.lvlm.qwen_vision; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0
