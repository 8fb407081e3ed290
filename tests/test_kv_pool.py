"""KVPool: prefixes right-aligned in one tensor, a batch's past in one gather, stores in one gather + index_copy."""

import pytest
import torch

from lever_lm.lvlm import kv_pool
from lever_lm.lvlm.base import WorkCounters
from lever_lm.lvlm.kv_pool import KVPool, prefilled_cache


def _source(rows: int, width: int, seed: int = 0, layers: int = 3):
    generator = torch.Generator().manual_seed(seed)
    return torch.randn((layers, 2, rows, 2, width, 4), generator=generator)  # (layers, 2, rows, heads, seq, dim)


def _past(pool: KVPool, keys, past_max: int):
    out = torch.full((*pool.data.shape[:2], len(keys), *pool.data.shape[3:]), float("nan"))
    out = out.narrow(4, 0, past_max).clone()
    pool.past_into(out, torch.tensor([pool.entry(k)[0] for k in keys]), past_max)
    return out


def test_stored_prefixes_come_back_left_padded_in_one_gather():
    counters = WorkCounters()
    pool = KVPool(counters)
    source = _source(rows=3, width=9)
    firsts, lengths = [0, 2, 5], [9, 4, 3]
    pool.put(["a", "b", "c"], source, [0, 1, 2], firsts, lengths)
    assert len(pool) == 3 and pool.length("b") == 4
    before = counters.snapshot()
    past = _past(pool, ["c", "a", "b"], past_max=9)
    assert counters.since(before)["kv_copy_ops"] == 2  # whatever the rows and layers
    for row, (source_row, first, length) in enumerate(((2, 5, 3), (0, 0, 9), (1, 2, 4))):
        torch.testing.assert_close(
            past[:, :, row, :, 9 - length :], source[:, :, source_row, :, first : first + length], rtol=0, atol=0
        )
    assert torch.isfinite(past).all()  # positions in front of an entry are masked later, never NaN or inf


def test_growth_keeps_earlier_entries_and_alignment(monkeypatch):
    monkeypatch.setattr(kv_pool, "_SLOT_STEP", 2)
    monkeypatch.setattr(kv_pool, "_WIDTH_STEP", 4)
    pool = KVPool(WorkCounters())
    first = _source(rows=2, width=3, seed=1)
    pool.put(["x", "y"], first, [0, 1], [0, 1], [3, 2])
    assert pool.data.shape[2] == 2 and pool.width == 4
    longer = _source(rows=3, width=10, seed=2)
    pool.put(["p", "q", "r"], longer, [0, 1, 2], [0, 0, 0], [10, 1, 5])  # more slots and a wider entry
    assert pool.data.shape[2] == 6 and pool.width == 12
    past = _past(pool, ["x", "y", "p"], past_max=10)
    torch.testing.assert_close(past[:, :, 0, :, 7:], first[:, :, 0, :, 0:3], rtol=0, atol=0)
    torch.testing.assert_close(past[:, :, 1, :, 8:], first[:, :, 1, :, 1:3], rtol=0, atol=0)
    torch.testing.assert_close(past[:, :, 2], longer[:, :, 0], rtol=0, atol=0)


def test_other_sequence_axes_and_selected_rows():
    """Remote-code models (MosaicGPT) keep keys as (batch, seq, width): rows (seq, width), sequence axis 0."""
    pool = KVPool(WorkCounters())
    source = torch.arange(3 * 2 * 4 * 6 * 5, dtype=torch.float32).view(3, 2, 4, 6, 5)
    pool.put(["m", "n"], source, [3, 1], [2, 0], [4, 6], seq_axis=0)
    out = torch.empty((3, 2, 2, 4, 5))
    pool.past_into(out, torch.tensor([pool.entry("m")[0], pool.entry("n")[0]]), 4)
    torch.testing.assert_close(out[:, :, 0], source[:, :, 3, 2:6], rtol=0, atol=0)
    torch.testing.assert_close(out[:, :, 1], source[:, :, 1, 2:6], rtol=0, atol=0)
    with pytest.raises(ValueError, match="sequence axis"):
        pool.put(["o"], _source(1, 3), [0], [0], [3], seq_axis=1)


def test_trim_drops_least_recently_used_but_never_what_a_call_reads():
    pool = KVPool(WorkCounters(), max_entries=2)
    source = _source(rows=4, width=2)
    pool.put(["a", "b", "c", "d"], source, [0, 1, 2, 3], [0] * 4, [2] * 4)
    pool.entry("a")  # a is now the most recently used
    pool.trim(keep={"b"})
    assert set(pool._entries) == {"a", "b"}
    slots = pool.data.shape[2]
    pool.put(["e", "f"], source, [0, 1], [0, 0], [2, 2])  # the freed slots are reused
    assert pool.data.shape[2] == slots
    pool.clear()
    assert len(pool) == 0 and "a" not in pool and pool.data.shape[2] == slots  # storage kept for the next anchor


def test_prefilled_cache_matches_a_dynamic_cache():
    """A tiny HF decoder continuing from a prefilled buffer gives the logits of a DynamicCache continuation."""
    from transformers import DynamicCache, MptConfig, MptForCausalLM

    torch.manual_seed(0)
    model = MptForCausalLM(MptConfig(d_model=16, n_heads=2, n_layers=2, vocab_size=50, max_seq_len=64)).eval()
    ids = torch.randint(0, 50, (2, 9))
    with torch.inference_mode():
        prefix = model(ids[:, :5], use_cache=True).past_key_values
        expected = model(ids[:, 5:], past_key_values=DynamicCache.from_legacy_cache(prefix.to_legacy_cache())).logits
        buffer = torch.empty((2, 2, 2, 2, 9, 8))
        for layer, (keys, values) in enumerate(prefix.to_legacy_cache()):
            buffer[layer, 0, :, :, :5], buffer[layer, 1, :, :, :5] = keys, values
        got = model(ids[:, 5:], past_key_values=prefilled_cache(buffer, 5), use_cache=True).logits
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-6)
    full = model(ids).logits
    torch.testing.assert_close(got, full[:, 5:], rtol=0, atol=1e-5)
