"""OpenFlamingo adapter: fast path == naive path, vision cache, span location, loading errors, tiny round trip."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from lever_lm.lvlm import tiny as tiny_lvlm
from lever_lm.lvlm.base import Example, LVLMConfigError, Prompt
from lever_lm.lvlm.flamingo import (
    END_OF_CHUNK_TOKEN,
    assemble_prompt,
    config_from_dict,
    load_flamingo_adapter,
)
from lever_lm.lvlm.flamingo_blocks import FlamingoBlockSizes, resize_flamingo_blocks
from lever_lm.lvlm.tiny import FlamingoTinyDims
from lever_lm.lvlm.tiny_tokenizer import collect_vocabulary, split_words
from tests.adapter_checks import (
    check_batch_past_copies_are_fixed,
    check_vision_budget_regroups_only,
    check_vision_cache_outlives_a_query,
    default_flamingo_dims,
)


def build_tiny_model_dir(out_dir, words, dims=None, seed=0):
    tiny_lvlm.build_tiny_model_dir("flamingo", out_dir, words, dims, seed)


def make_tiny_adapter(words, dims=None, seed=0, **config_fields):
    return tiny_lvlm.make_tiny_adapter("flamingo", words, dims, seed, **config_fields)


QUESTIONS = [
    ("what color is the cat ?", "red"),
    ("how many dogs are there ?", "2"),
    ("is it raining ?", "no"),
    ("what is the man holding ?", "tennis racket"),
    ("where is the bus ?", "street"),
    ("what sport is this ?", "(ski)"),
    ("what animal is shown ?", "zebra"),
]


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    from PIL import Image

    root = tmp_path_factory.mktemp("flamingo_images")
    rng = np.random.default_rng(0)
    paths = []
    for i in range(len(QUESTIONS)):
        path = root / f"img{i}.png"
        Image.fromarray(rng.integers(0, 255, (56, 56, 3), dtype=np.uint8)).save(path)
        paths.append(str(path))
    return paths


@pytest.fixture(scope="module")
def examples(images):
    return [Example(path, q, a) for path, (q, a) in zip(images, QUESTIONS)]


@pytest.fixture(scope="module")
def words():
    return collect_vocabulary([t for pair in QUESTIONS for t in pair])


@pytest.fixture(scope="module")
def adapter(words):
    torch.set_num_threads(1)
    return make_tiny_adapter(words, seed=0, score_batch_size=4)


def _left_order_steps(examples):
    """Beam search "left": step 1 c + x, step 2 c + S + x, step 3 c + S2 + x (0..3 ICDs), baselines included."""
    query, candidates = examples[-1], examples[:-1]
    step1 = [Prompt((), query)] + [Prompt((c,), query) for c in candidates]
    beams = [(candidates[0],), (candidates[2],)]
    step2 = [Prompt(s, query) for s in beams] + [
        Prompt((c, *s), query) for s in beams for c in candidates if c not in s
    ]
    beams2 = [(candidates[1], candidates[0]), (candidates[3], candidates[2])]
    step3 = [Prompt((c, *s), query) for s in beams2 for c in candidates if c not in s]
    return [step1, step2, step3]


def _right_order_steps(examples):
    query, candidates = examples[-1], examples[:-1]
    step1 = [Prompt((), query)] + [Prompt((c,), query) for c in candidates]
    beams = [(candidates[0],), (candidates[2],)]
    step2 = [Prompt(s, query) for s in beams] + [
        Prompt((*s, c), query) for s in beams for c in candidates if c not in s
    ]
    beams2 = [(candidates[0], candidates[1]), (candidates[2], candidates[3])]
    step3 = [Prompt((*s, c), query) for s in beams2 for c in candidates if c not in s]
    return [step1, step2, step3]


def _assert_close(fast, naive):
    assert len(fast) == len(naive)
    for f, n in zip(fast, naive):
        assert f.dtype == np.float64 and f.shape == n.shape
        np.testing.assert_allclose(f, n, atol=1e-4, rtol=0)


@pytest.mark.parametrize("steps", [_left_order_steps, _right_order_steps], ids=["left", "right"])
def test_fast_equals_naive_across_steps(adapter, examples, steps):
    adapter.clear_cache()
    for prompts in steps(examples):
        _assert_close(adapter.score(prompts), adapter.score_naive(prompts, batch_size=5))
    assert len(adapter._prefix_cache) > 0


def test_fast_equals_naive_for_mixed_queries_and_lengths(adapter, examples):
    adapter.clear_cache()
    e = examples
    prompts = [
        Prompt((), e[0]),
        Prompt((e[1],), e[0]),
        Prompt((e[1], e[2]), e[3]),
        Prompt((e[1], e[2], e[4]), e[5]),
        Prompt((e[1], e[2], e[5]), e[4]),
        Prompt((e[6], e[2], e[5]), e[4]),
        Prompt((e[2],), e[1]),
    ]
    _assert_close(adapter.score(prompts), adapter.score_naive(prompts))
    _assert_close(adapter.score(prompts[::-1]), adapter.score_naive(prompts[::-1]))


def test_scores_depend_on_context_and_image(adapter, examples):
    """Guards the equality tests against a model whose output ignores what is being reused."""
    adapter.clear_cache()
    e = examples
    query = e[-1]
    other_image = Example(e[0].image_path, query.question, query.answer)
    scores = adapter.score([Prompt((), query), Prompt((e[0],), query), Prompt((e[1],), query), Prompt((), other_image)])
    means = [s.mean() for s in scores]
    assert abs(means[0] - means[1]) > 1e-3 and abs(means[1] - means[2]) > 1e-3
    assert abs(means[0] - means[3]) > 1e-3


def test_vision_encoder_once_per_distinct_image(adapter, examples):
    adapter.clear_cache()
    adapter.vision_encoder_calls = 0
    steps = _left_order_steps(examples)
    for prompts in steps:
        adapter.score(prompts)
    distinct = {ex.image_path for prompts in steps for p in prompts for ex in (*p.demos, p.query)}
    assert adapter.vision_encoder_calls == len(distinct)
    adapter.clear_cache()
    adapter.score(steps[0][:2])
    assert adapter.vision_encoder_calls == len(distinct) + 2  # query + one ICD image, encoded anew after clear
    adapter.vision_encoder_calls = 0
    adapter.score_naive(steps[1][2:4], batch_size=2)
    assert adapter.vision_encoder_calls == 2 * 3  # naive: every image of every sequence


def test_key_value_reuse_skips_cached_blocks(adapter, examples):
    adapter.clear_cache()
    steps = _left_order_steps(examples)
    adapter.score(steps[0])
    before = adapter.text_tokens_computed
    adapter.score(steps[1])
    fast_tokens = adapter.text_tokens_computed - before
    before = adapter.text_tokens_computed
    adapter.score_naive(steps[1])
    naive_tokens = adapter.text_tokens_computed - before
    # step 2 reuses every first-ICD block computed at step 1 (c + x there): only S + x is run per prompt
    assembled = [adapter.assemble(p, with_answer=True) for p in steps[1]]
    assert naive_tokens == sum(len(a.input_ids) for a in assembled)
    assert fast_tokens == sum(len(a.input_ids) - len(a.block_ids[0]) for a in assembled)


def test_span_decodes_to_answer_and_end_token(adapter, examples):
    e = examples
    for query in (e[5], e[3]):  # "(ski)" starts with punctuation; "tennis racket" has two words
        prompt = Prompt((e[0], e[1]), query)
        item = adapter.assemble(prompt, with_answer=True)
        start, end = item.span
        span_tokens = adapter.tokenizer.convert_ids_to_tokens(item.input_ids[start:end])
        assert span_tokens == split_words(query.answer) + [END_OF_CHUNK_TOKEN]
        assert adapter.tokenizer.convert_ids_to_tokens(item.input_ids[start - 1]) == ":"
        assert len(adapter.score([prompt])[0]) == end - start


def test_blocks_equal_whole_text_tokenisation(adapter, examples):
    prompt = Prompt(tuple(examples[:3]), examples[4])
    item = adapter.assemble(prompt, with_answer=True)
    assert item.input_ids == adapter.tokenizer(item.text, add_special_tokens=False)["input_ids"]
    assert item.text == (
        "<image>Question:what color is the cat ? Short answer:red<|endofchunk|>"
        "<image>Question:how many dogs are there ? Short answer:2<|endofchunk|>"
        "<image>Question:is it raining ? Short answer:no<|endofchunk|>"
        "<image>Question:where is the bus ? Short answer:street<|endofchunk|>"
    )
    assert adapter.assemble(prompt, with_answer=False).text.endswith("Question:where is the bus ? Short answer:")


def test_span_with_merging_subword_tokenizer():
    """A BPE tokenizer without pre-tokenisation merges ':' with the answer's first letters; the span must still
    cover the whole answer (the merged token included) and end with the end-of-chunk token."""
    from tokenizers import Tokenizer, models, trainers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE(unk_token="<unk>"))
    trainer = trainers.BpeTrainer(special_tokens=["<unk>", "<image>", END_OF_CHUNK_TOKEN, "<pad>"], vocab_size=200)
    backend.train_from_iterator(["Question:what color ? Short answer:red", "answer:red :red"] * 50, trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="<pad>", unk_token="<unk>")
    prompt = Prompt((), Example("x.png", "what color ?", "red"))
    item = assemble_prompt(prompt, tokenizer, with_answer=True)
    start, end = item.span
    pieces = tokenizer.convert_ids_to_tokens(item.input_ids[start:end])
    assert pieces[-1] == END_OF_CHUNK_TOKEN
    covered = "".join(pieces[:-1])
    assert covered.endswith("red") and len(covered) > len("red")  # the merged ':red'-style token is in the span
    assert (
        "".join(tokenizer.convert_ids_to_tokens(item.input_ids[:start])) + covered
        == item.text[: -len(END_OF_CHUNK_TOKEN)]
    )


def test_bad_queries_raise(adapter, examples):
    query = examples[0]
    with pytest.raises(ValueError, match="query without an answer.*what color is the cat"):
        adapter.score([Prompt((), Example(query.image_path, query.question, None))])
    with pytest.raises(ValueError, match="empty answer.*what color is the cat"):
        adapter.score_naive([Prompt((), Example(query.image_path, query.question, "  "))])
    with pytest.raises(ValueError, match="ICD without an answer"):
        adapter.score([Prompt((Example(query.image_path, "q ?", None),), query)])


def test_generate_is_deterministic_and_padding_invariant(adapter, examples):
    e = examples
    prompts = [Prompt((e[0], e[1]), e[2]), Prompt((), e[3]), Prompt((e[4],), e[5])]
    first = adapter.generate(prompts, max_new_tokens=4, num_beams=3)
    assert all(isinstance(text, str) for text in first)
    assert first == adapter.generate(prompts, max_new_tokens=4, num_beams=3)
    assert [adapter.generate([p], max_new_tokens=4, num_beams=3)[0] for p in prompts] == first
    assert all("<" not in text for text in first)  # special tokens removed


def test_config_from_dict(tmp_path):
    from lever_lm.lvlm.factory import parse_config, tiny_spec

    entry = {"family": "flamingo", "variant": "tiny", "seed": 3, "tiny": {"lang_layers": 1}}
    cfg = parse_config("flamingo_tiny", entry)
    assert cfg.seed == 3 and cfg.score_batch_size == 32
    assert tiny_spec("flamingo_tiny", entry)[1] == FlamingoTinyDims(lang_layers=1)
    with pytest.raises(ValueError, match=r"unknown config key beam_models\.m\.bogus"):
        config_from_dict("m", {"variant": "tiny", "bogus": 1})
    with pytest.raises(ValueError, match=r"beam_models\.m\.tiny: unknown field\(s\) \['depth'\]"):
        parse_config("m", {"family": "flamingo", "variant": "tiny", "tiny": {"depth": 2}})
    with pytest.raises(ValueError, match=r"beam_models\.m\.variant"):
        config_from_dict("m", {"variant": "huge"})
    with pytest.raises(ValueError, match=r"beam_models\.m\.precision"):
        config_from_dict("m", {"variant": "tiny", "precision": "fp16"})
    with pytest.raises(ValueError, match=r"beam_models\.m\.vision_encoder_path"):
        config_from_dict("m", {"variant": "local", "vision_encoder_name": "ViT-L-14"})


def _local_entry(root):
    return {
        "variant": "local",
        "vision_encoder_name": "ViT-L-14",
        "vision_encoder_path": str(root / "clip.pt"),
        "lang_encoder_path": str(root / "lm"),
        "tokenizer_path": str(root / "lm"),
        "checkpoint_path": str(root / "checkpoint.pt"),
    }


def test_missing_local_paths_name_the_key(tmp_path):
    entry = _local_entry(tmp_path)
    with pytest.raises(LVLMConfigError, match=r"beam_models\.f3b\.vision_encoder_path: file not found: .*clip\.pt"):
        load_flamingo_adapter(config_from_dict("f3b", entry))
    (tmp_path / "clip.pt").write_bytes(b"x")
    (tmp_path / "checkpoint.pt").write_bytes(b"x")
    with pytest.raises(LVLMConfigError, match=r"beam_models\.f3b\.lang_encoder_path: directory not found"):
        load_flamingo_adapter(config_from_dict("f3b", entry))
    (tmp_path / "lm").mkdir()
    with pytest.raises(LVLMConfigError, match=r"beam_models\.f3b\.lang_encoder_path: .*lm has no config\.json"):
        load_flamingo_adapter(config_from_dict("f3b", entry))
    (tmp_path / "lm" / "config.json").write_text("{}")
    with pytest.raises(LVLMConfigError, match=r"beam_models\.f3b\.lang_encoder_path: .*has no weights"):
        load_flamingo_adapter(config_from_dict("f3b", entry))
    with pytest.raises(LVLMConfigError, match=r"beam_models\.t\.model_dir"):
        load_flamingo_adapter(config_from_dict("t", {"variant": "tiny"}))
    with pytest.raises(LVLMConfigError, match=r"beam_models\.t\.model_dir: .*not a tiny Flamingo dir"):
        load_flamingo_adapter(config_from_dict("t", {"variant": "tiny", "model_dir": str(tmp_path)}))


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory, words):
    out = tmp_path_factory.mktemp("tiny") / "flamingo_tiny"
    build_tiny_model_dir(out, words, FlamingoTinyDims(), seed=0)
    return out


def test_tiny_dir_round_trips_through_local_loader(tiny_dir, adapter, examples):
    assert sorted(p.name for p in tiny_dir.iterdir()) == [
        "checkpoint.pt",
        "flamingo_tiny.json",
        "lang_encoder",
        "open_clip_config",
        "tokenizer",
        "vision_encoder.pt",
    ]
    loaded = load_flamingo_adapter(
        config_from_dict("flamingo_tiny", {"variant": "tiny", "model_dir": str(tiny_dir), "score_batch_size": 4})
    )
    prompts = _left_order_steps(examples)[1][:5]
    adapter.clear_cache()
    for a, b in zip(loaded.score(prompts), adapter.score(prompts)):
        np.testing.assert_array_equal(a, b)
    own, other = loaded.model.state_dict(), adapter.model.state_dict()
    assert own.keys() == other.keys() and all(torch.equal(own[k], other[k]) for k in own)
    # the same files through the "local" variant: explicit paths, as for the real flamingo_3B
    info = json.loads((tiny_dir / "flamingo_tiny.json").read_text())
    import open_clip

    open_clip.add_model_config(tiny_dir / "open_clip_config")
    local = load_flamingo_adapter(
        config_from_dict(
            "as_local",
            {
                "variant": "local",
                "vision_encoder_name": info["vision_encoder_name"],
                **{k: str(tiny_dir / v) for k, v in info["files"].items()},
            },
        )
    )
    local_state = local.model.state_dict()
    assert all(torch.equal(local_state[k], own[k]) for k in own)
    for a, b in zip(local.score(prompts[:2]), adapter.score(prompts[:2])):
        np.testing.assert_allclose(a, b, atol=1e-6, rtol=0)  # batch composition differs: float rounding only


@pytest.fixture(scope="module")
def resized(words):
    """The embedded default's sizes: perceiver and cross-attention blocks smaller than open_flamingo's."""
    torch.set_num_threads(1)
    return make_tiny_adapter(words, default_flamingo_dims(), seed=0, score_batch_size=4)


def test_default_block_sizes_keep_open_flamingos_own_modules(adapter):
    model = adapter.model
    perceiver, blocks = model.perceiver, list(model.lang_encoder.gated_cross_attn_layers)
    resize_flamingo_blocks(model, FlamingoBlockSizes())
    assert model.perceiver is perceiver and all(
        a is b for a, b in zip(model.lang_encoder.gated_cross_attn_layers, blocks)
    )
    assert perceiver.latents.shape[0] == 64 and len(perceiver.layers) == 6
    assert {block.attn.heads for block in blocks} == {8}


def test_resized_blocks_fast_equals_naive(resized, examples):
    sizes = default_flamingo_dims().block_sizes()
    assert sizes != FlamingoBlockSizes()
    perceiver = resized.model.perceiver
    assert perceiver.latents.shape[0] == sizes.perceiver_latents and len(perceiver.layers) == sizes.perceiver_depth
    attns = [block.attn for block in resized.model.lang_encoder.gated_cross_attn_layers]
    assert len(attns) == 3 and all(
        a.heads == sizes.cross_attn_heads and a.to_q.out_features == sizes.cross_attn_heads * sizes.cross_attn_dim_head
        for a in attns
    )
    resized.clear_cache()
    for prompts in _left_order_steps(examples):
        _assert_close(resized.score(prompts), resized.score_naive(prompts, batch_size=5))
    e = examples
    image_swapped = [Prompt((e[1],), e[0]), Prompt((e[1],), Example(e[2].image_path, e[0].question, e[0].answer))]
    first, second = resized.score(image_swapped)
    assert not np.allclose(first, second)  # the resized blocks carry the image


def test_resized_blocks_round_trip_and_a_dir_without_their_sizes_is_refused(resized, words, examples, tmp_path):
    out = tmp_path / "flamingo_tiny"
    build_tiny_model_dir(out, words, default_flamingo_dims(), seed=0)
    entry = {"variant": "tiny", "model_dir": str(out), "score_batch_size": 4}
    loaded = load_flamingo_adapter(config_from_dict("flamingo_tiny", entry))
    own, other = loaded.model.state_dict(), resized.model.state_dict()
    assert own.keys() == other.keys() and all(torch.equal(own[k], other[k]) for k in own)
    prompts = _left_order_steps(examples)[1][:5]
    resized.clear_cache()
    for a, b in zip(loaded.score(prompts), resized.score(prompts)):
        np.testing.assert_array_equal(a, b)
    info_path = out / "flamingo_tiny.json"
    info = json.loads(info_path.read_text())
    for field in dataclasses.fields(FlamingoBlockSizes):
        del info["dims"][field.name]  # a dir that does not say its sizes gets open_flamingo's: the checkpoint disagrees
    info_path.write_text(json.dumps(info))
    with pytest.raises(LVLMConfigError, match=r"model_dir \(checkpoint_path\): .*shape mismatch"):
        load_flamingo_adapter(config_from_dict("flamingo_tiny", entry))


def test_checkpoint_missing_trainable_tensor(tiny_dir, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(tiny_dir, broken)
    state = torch.load(broken / "checkpoint.pt", weights_only=True)
    dropped = [k for k in state if k.startswith("perceiver.layers.0.0.to_q")]
    for key in dropped:
        del state[key]
    torch.save(state, broken / "checkpoint.pt")
    with pytest.raises(LVLMConfigError, match=r"beam_models\.b\.model_dir.*lacks 1 Flamingo-trainable.*perceiver"):
        load_flamingo_adapter(config_from_dict("b", {"variant": "tiny", "model_dir": str(broken)}))


def test_tokenizer_without_special_tokens(tiny_dir, tmp_path, words):
    from transformers import PreTrainedTokenizerFast

    from lever_lm.lvlm.tiny_tokenizer import build_word_tokenizer

    broken = tmp_path / "broken"
    shutil.copytree(tiny_dir, broken)
    shutil.rmtree(broken / "tokenizer")
    plain = PreTrainedTokenizerFast(
        tokenizer_object=build_word_tokenizer(words, special_tokens=[]), pad_token="<pad>", unk_token="<unk>"
    )
    plain.save_pretrained(broken / "tokenizer")
    with pytest.raises(
        LVLMConfigError,
        match=r"beam_models\.b\.model_dir \(tokenizer_path\): tokenizer at .*broken/"
        r"tokenizer lacks the special token\(s\) <image>, <\|endofchunk\|>",
    ):
        load_flamingo_adapter(config_from_dict("b", {"variant": "tiny", "model_dir": str(broken)}))
    # variant local: open_flamingo appends the tokens itself (as for MPT-1B); the checkpoint must have been trained
    # with them, so an embedding table of another size is reported as the missing tokens
    smaller = PreTrainedTokenizerFast(
        tokenizer_object=build_word_tokenizer(words[:-3], special_tokens=[]), pad_token="<pad>", unk_token="<unk>"
    )
    smaller.save_pretrained(tmp_path / "smaller_tokenizer")
    info = json.loads((broken / "flamingo_tiny.json").read_text())
    import open_clip

    open_clip.add_model_config(broken / "open_clip_config")
    entry = {
        "variant": "local",
        "vision_encoder_name": info["vision_encoder_name"],
        **{k: str(broken / v) for k, v in info["files"].items()},
        "tokenizer_path": str(tmp_path / "smaller_tokenizer"),
    }
    with pytest.raises(
        LVLMConfigError,
        match=r"beam_models\.l\.tokenizer_path: tokenizer at .*smaller_tokenizer "
        r"lacks the special token\(s\) <image>, <\|endofchunk\|>; .*embedding",
    ):
        load_flamingo_adapter(config_from_dict("l", entry))


def test_tiny_build_is_deterministic(tiny_dir, tmp_path, words):
    again = tmp_path / "again"
    build_tiny_model_dir(again, words, FlamingoTinyDims(), seed=0)
    a = torch.load(tiny_dir / "checkpoint.pt", weights_only=True)
    b = torch.load(again / "checkpoint.pt", weights_only=True)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    other = tmp_path / "other"
    build_tiny_model_dir(other, words, FlamingoTinyDims(), seed=1)
    c = torch.load(other / "checkpoint.pt", weights_only=True)
    assert not torch.equal(a["perceiver.latents"], c["perceiver.latents"])
    assert not list(tmp_path.glob(".*tmp"))  # the temp build dirs are gone


def test_fast_path_without_separate_lm_head(adapter, examples, monkeypatch):
    """Language models that expose no base model / output head (remote-code MPT) get full logits; same numbers."""
    from lever_lm.lvlm import flamingo_fast

    real_parts = flamingo_fast.model_parts
    monkeypatch.setattr(flamingo_fast, "model_parts", lambda lang: (None, None, *real_parts(lang)[2:]))
    adapter.clear_cache()
    for prompts in _right_order_steps(examples)[:2]:
        _assert_close(adapter.score(prompts), adapter.score_naive(prompts))


def test_bf16_precision_runs(words, examples):
    bf16 = make_tiny_adapter(words, seed=0, precision="bf16", score_batch_size=8)
    assert bf16.dtype == torch.bfloat16
    prompts = _left_order_steps(examples)[1][:6]
    for fast, naive in zip(bf16.score(prompts), bf16.score_naive(prompts)):
        assert fast.dtype == np.float64
        np.testing.assert_allclose(fast, naive, atol=0.15)  # bf16 rounding differs between the two paths
    assert all(isinstance(t, str) for t in bf16.generate(prompts[:2], max_new_tokens=3, num_beams=2))


class _TouchOnLoad:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


def test_checkpoint_carrying_code_is_refused_without_a_pickle_fallback(tmp_path):
    import torch

    from lever_lm.lvlm.flamingo import _read_checkpoint

    marker = tmp_path / "code_ran"
    path = tmp_path / "checkpoint.pt"
    torch.save({"model_state_dict": {"w": torch.zeros(2)}, "extra": _TouchOnLoad(str(marker))}, path)
    with pytest.raises(
        LVLMConfigError,
        match=r"beam_models.x.checkpoint_path: .*checkpoint.pt refused by "
        r"torch.load\(weights_only=True\): it holds more than plain tensors",
    ):
        _read_checkpoint(str(path), "beam_models.x.checkpoint_path")
    assert not marker.exists()
    torch.save({"model_state_dict": {"module.w": torch.ones(2)}}, path)
    assert list(_read_checkpoint(str(path), "k")) == ["w"]


def test_scores_do_not_depend_on_the_token_budget(adapter, examples):
    """score_token_budget only regroups the forward rows: scores agree to float rounding whatever the budget."""
    import dataclasses

    steps = _left_order_steps(examples)
    original = adapter.config
    try:
        adapter.clear_cache()
        reference = [adapter.score(p) for p in steps]
        forwards = {}
        for budget, rows in ((1, 4), (60, 4), (10**6, 1000)):
            adapter.config = dataclasses.replace(original, score_token_budget=budget, score_batch_size=rows)
            adapter.clear_cache()
            before = adapter.counters.snapshot()
            for prompts, expected in zip(steps, reference):
                for got, want in zip(adapter.score(prompts), expected):
                    np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)
            forwards[budget] = adapter.counters.since(before)["lm_forward_calls"]
        assert forwards[1] > forwards[60] > forwards[10**6]
        adapter.clear_cache()
        for prompts in steps:
            _assert_close(adapter.score(prompts), adapter.score_naive(prompts))
        with pytest.raises(ValueError, match=r"beam_models\.m\.score_token_budget"):
            config_from_dict("m", {"variant": "tiny", "score_token_budget": -3})
    finally:
        adapter.config = original
        adapter.clear_cache()


def test_vision_token_budget_packs_a_steps_images_into_few_forwards(adapter, examples):
    """A scoring call's new images go through the encoder together; the budget only regroups them."""
    check_vision_budget_regroups_only(adapter, _left_order_steps(examples)[0], config_from_dict, "m")


def test_a_batch_past_costs_a_fixed_number_of_copies(adapter, examples):
    """Key/value reuse copies per forward, not per (row, layer): each batch's past is one gather from the pool."""
    steps = _left_order_steps(examples)
    check_batch_past_copies_are_fixed(adapter, steps[0], steps[1])


def test_vision_features_outlive_a_query_up_to_max_cached_images(adapter, examples):
    check_vision_cache_outlives_a_query(adapter, _left_order_steps(examples)[0])


@pytest.mark.parametrize("ratio", [1, 10**6], ids=["by_image", "by_pair"])
def test_grouped_cross_attention_equals_open_flamingos_masked_cross_attention(ratio, monkeypatch):
    """Both token layouts of ``generation_cross_attention`` (tokens run image by image when rows share images, else
    padded per (row, image) pair) give open_flamingo's own masked cross-attention at every token after an image."""
    from open_flamingo.src.helpers import MaskedCrossAttention

    from lever_lm.lvlm import flamingo

    torch.manual_seed(0)
    monkeypatch.setattr(flamingo, "SHARED_IMAGE_RATIO", ratio)
    attn = MaskedCrossAttention(dim=32, dim_visual=24, dim_head=8, heads=4)
    media = torch.randn(3, 5, 24)  # 3 distinct images, 5 latents each
    index = torch.tensor([[0, 2], [2, -1], [1, 2], [2, 0]])  # rows' images in order; image 2 is shared
    media_locations = torch.zeros(4, 9, dtype=torch.bool)
    media_locations[0, [1, 5]] = media_locations[1, 3] = media_locations[2, [0, 4]] = media_locations[3, [2, 3]] = True
    x = torch.randn(4, 9, 32)
    layout: list = []
    with torch.no_grad():
        theirs = attn(x, media[index.clamp(min=0)], media_locations=media_locations)
        ours = flamingo._GenerationCrossAttention(attn, media, index, layout)(x, media, media_locations)
    assert layout[0][1][0] == ("by_image" if ratio == 1 else "by_pair")
    after_image = media_locations.cumsum(dim=-1) > 0
    torch.testing.assert_close(ours[after_image], theirs[after_image], atol=1e-6, rtol=1e-5)
    assert torch.count_nonzero(ours[~after_image]) == 0
