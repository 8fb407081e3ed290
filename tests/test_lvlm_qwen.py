"""Qwen2.5-VL adapter: fast scoring equals the reference, caching, span location, generation, config errors."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from lever_lm.lvlm.base import Example, LVLMConfigError, Prompt  # noqa: E402
from lever_lm.lvlm.qwen import (  # noqa: E402
    QWEN2_5_VL_CHAT_TEMPLATE,
    QwenTinyDims,
    assemble_prompt,
    build_tiny_model_dir,
    config_from_dict,
    load_qwen_adapter,
    make_tiny_adapter,
)
from lever_lm.lvlm.tiny_tokenizer import collect_vocabulary  # noqa: E402

QUESTIONS = ["What color is the background?", "How many objects are there?", "What shape is it?"]
ANSWERS = ["red", "# a", "two", "blue", "# b", "three"]
WORDS = collect_vocabulary(QUESTIONS + ANSWERS)


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    from PIL import Image

    folder = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    paths = []
    for index in range(7):
        path = folder / f"image{index}.png"
        Image.fromarray(rng.integers(0, 256, (56, 56, 3), dtype=np.uint8)).save(path)
        paths.append(str(path))
    return paths


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("qwen") / "tiny"
    build_tiny_model_dir(path, WORDS, QwenTinyDims(), seed=0)
    return path


def _sharpened(adapter):
    """Random init gives near-uniform predictions; larger weights make scores depend strongly on context,
    so a wrong key/value or position reuse shows up far above the 1e-4 tolerance."""
    torch.manual_seed(1)
    with torch.no_grad():
        for name, parameter in adapter.model.named_parameters():
            if "norm" not in name:
                parameter.normal_(0.0, 0.15)
    return adapter


@pytest.fixture(scope="module", params=["single_user_message", "multi_turn"])
def adapter(request, tiny_dir):
    torch.set_num_threads(1)
    config = config_from_dict("qwen_test", {
        "family": "qwen2_5_vl", "variant": "tiny", "model_path": str(tiny_dir),
        "prompt_style": request.param, "precision": "fp32", "score_batch_size": 8,
    })
    return _sharpened(load_qwen_adapter(config))


def _examples(images):
    return [Example(images[i], QUESTIONS[i % 3], ANSWERS[i % 6]) for i in range(6)]


def _left_and_right_prompts(images):
    """What beam search asks for: step 1 (query alone + one candidate), step 2 of both construct orders."""
    demos = _examples(images)
    query = Example(images[6], QUESTIONS[0], "blue")
    candidates, beams = demos[:4], demos[4:]
    step1 = [Prompt((), query)] + [Prompt((c,), query) for c in candidates]
    left = [Prompt((b,), query) for b in beams] + [Prompt((c, b), query) for b in beams for c in candidates]
    right = [Prompt((b, c), query) for b in beams for c in candidates]
    three = [Prompt((c, *beams), query) for c in candidates[:2]] + [Prompt((*beams, c), query) for c in candidates[:2]]
    return step1, left, right, three


def _assert_close(fast, naive):
    assert len(fast) == len(naive)
    for got, expected in zip(fast, naive):
        assert got.dtype == np.float64 and got.shape == expected.shape
        np.testing.assert_allclose(got, expected, atol=1e-4, rtol=0)


def test_fast_equals_naive_left_and_right_orders_across_calls(adapter, images):
    step1, left, right, three = _left_and_right_prompts(images)
    adapter.clear_cache()
    for prompts in (step1, left, right, three):  # successive calls reuse cached images and prefixes
        naive = adapter.score_naive(prompts, batch_size=5)
        _assert_close(adapter.score(prompts), naive)
    # the check has teeth: the demos change the scores by far more than the tolerance
    naive_step1 = adapter.score_naive(step1)
    spread = max(abs(float(a.mean()) - float(b.mean())) for a in naive_step1 for b in naive_step1)
    assert spread > 1e-2


def test_fast_equals_naive_in_one_mixed_call_and_on_a_cold_cache(adapter, images):
    step1, left, right, three = _left_and_right_prompts(images)
    mixed = step1 + left + right + three
    adapter.clear_cache()
    _assert_close(adapter.score(mixed), adapter.score_naive(mixed))
    adapter.clear_cache()
    _assert_close(adapter.score(three), adapter.score_naive(three))


def test_vision_encoder_runs_once_per_distinct_image(adapter, images):
    step1, left, right, _ = _left_and_right_prompts(images)
    adapter.clear_cache()
    before = adapter.vision_encoder_calls
    adapter.score(step1)
    assert adapter.vision_encoder_calls - before == 5  # 4 candidates + query
    adapter.score(left + right)
    assert adapter.vision_encoder_calls - before == 7  # + the 2 beam demos, nothing twice
    adapter.clear_cache()
    adapter.score(step1)
    assert adapter.vision_encoder_calls - before == 12  # a cleared cache encodes again
    naive_before = adapter.vision_encoder_calls
    adapter.score_naive(step1)
    assert adapter.vision_encoder_calls - naive_before == sum(len(p.demos) + 1 for p in step1)


def test_left_order_reuses_first_demo_blocks_from_the_previous_step(adapter, images):
    step1, left, _, _ = _left_and_right_prompts(images)
    adapter.clear_cache()
    adapter.score(step1)
    fast = adapter._fast
    prefixes_after_step1 = len(fast.prefixes)
    assert prefixes_after_step1 == 4  # one block per candidate
    tokens_before = fast.tokens_run
    adapter.score(left)
    step2_tokens = fast.tokens_run - tokens_before
    full_tokens = sum(len(s.assembled.input_ids) for s in (fast._sequence(p, {i: 4 for i in images}) for p in left))
    beam_blocks = 2  # the beams' own blocks are new prefixes (each shared by its candidates' baseline)
    assert len(fast.prefixes) == prefixes_after_step1 + beam_blocks
    assert step2_tokens < 0.8 * full_tokens


def test_query_span_decodes_to_answer_and_end_token(adapter, images):
    demo = Example(images[0], QUESTIONS[1], "# a")
    prompt = Prompt((demo,), Example(images[1], QUESTIONS[0], "  two  "))
    assembled = adapter.assemble(prompt, {images[0]: 4, images[1]: 4}, for_generation=False)
    start, end = assembled.query_span
    tokens = adapter.tokenizer.convert_ids_to_tokens(list(assembled.input_ids[start:end]))
    assert tokens == ["two", "<|im_end|>"]
    demo_tokens = adapter.tokenizer.convert_ids_to_tokens(list(assembled.input_ids[slice(*assembled.answer_spans[0])]))
    assert demo_tokens[:2] == ["#", "a"]
    before_answer = ":" if adapter.config.prompt_style == "single_user_message" else "assistant"
    assert adapter.tokenizer.convert_ids_to_tokens(assembled.input_ids[start - 1]) == before_answer
    assert assembled.input_ids.count(adapter.model.config.image_token_id) == 8
    generation = adapter.assemble(prompt, {images[0]: 4, images[1]: 4}, for_generation=True)
    text = adapter.tokenizer.decode(list(generation.input_ids))
    assert text.rstrip().endswith("<|im_start|> assistant") and "two" not in text


def test_answer_is_tokenised_apart_from_the_colon_before_it():
    """With a tokenizer that would merge 'answer:red' into one token, the span is still exactly the answer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import Qwen2TokenizerFast

    from lever_lm.lvlm.qwen import QWEN_SPECIAL_TOKENS

    words = ["system", "You", "are", "a", "helpful", "assistant.", "user", "Question:what?", "Short",
             "answer:", "answer:red", "red", "\n"]
    vocab = {token: index for index, token in enumerate([*QWEN_SPECIAL_TOKENS, "<unk>", *words])}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    backend.decoder = decoders.WordPiece(prefix="##", cleanup=False)
    backend.add_special_tokens(list(QWEN_SPECIAL_TOKENS))
    tokenizer = Qwen2TokenizerFast(tokenizer_object=backend, unk_token="<unk>", eos_token="<|im_end|>",
                                   pad_token="<|endoftext|>", bos_token=None)
    assert tokenizer.convert_ids_to_tokens(tokenizer("Short answer:red")["input_ids"]) == ["Short", "answer:red"]
    prompt = Prompt((), Example("q.png", "what?", "red"))
    assembled = assemble_prompt(prompt, tokenizer, QWEN2_5_VL_CHAT_TEMPLATE, "single_user_message", None,
                                {"q.png": 3}, for_generation=False)
    start, end = assembled.query_span
    assert tokenizer.convert_ids_to_tokens(list(assembled.input_ids[start - 1:end])) == [
        "answer:", "red", "<|im_end|>"]


def test_score_rejects_queries_without_answer(adapter, images):
    query = Example(images[0], QUESTIONS[0], None)
    with pytest.raises(ValueError, match="query has no answer.*image0"):
        adapter.score([Prompt((), query)])
    with pytest.raises(ValueError, match="query has an empty answer"):
        adapter.score_naive([Prompt((), Example(images[0], QUESTIONS[0], "   "))])
    demo = Example(images[1], QUESTIONS[1], "")
    with pytest.raises(ValueError, match="demo 0 answer"):
        adapter.score([Prompt((demo,), Example(images[0], QUESTIONS[0], "red"))])


def test_generate_returns_deterministic_strings(adapter, images):
    demos = _examples(images)
    prompts = [Prompt((), Example(images[6], QUESTIONS[0])), Prompt((demos[0], demos[1]), Example(images[6], QUESTIONS[2]))]
    first = adapter.generate(prompts, max_new_tokens=4, num_beams=1)
    assert first == adapter.generate(prompts, max_new_tokens=4, num_beams=1)
    assert all(isinstance(text, str) and text == text.strip() and "<|" not in text for text in first)
    beams = adapter.generate(prompts, max_new_tokens=4, num_beams=2)
    assert len(beams) == 2 and all(isinstance(text, str) for text in beams)


def test_tiny_dir_round_trips_through_the_local_loader(tmp_path, images):
    dims = QwenTinyDims(text_layers=2)
    build_tiny_model_dir(tmp_path / "tiny", WORDS, dims, seed=3)
    loaded = load_qwen_adapter(config_from_dict("qwen_rt", {
        "variant": "local", "model_path": str(tmp_path / "tiny"), "precision": "fp32"}))
    made = make_tiny_adapter(WORDS, dims, seed=3, precision="fp32")
    prompts = _left_and_right_prompts(images)[1][:4]
    for got, expected in zip(loaded.score(prompts), made.score(prompts)):
        np.testing.assert_array_equal(got, expected)
    other_seed = make_tiny_adapter(WORDS, dims, seed=4, precision="fp32").score(prompts)
    assert not np.allclose(other_seed[0], made.score(prompts)[0])


def test_missing_or_incomplete_model_dir_names_the_key(tmp_path, tiny_dir):
    with pytest.raises(LVLMConfigError, match=r"beam_models\.qwen_x\.model_path: not set"):
        load_qwen_adapter(config_from_dict("qwen_x", {"variant": "local"}))
    missing = tmp_path / "nowhere"
    with pytest.raises(LVLMConfigError, match=rf"beam_models\.qwen_x\.model_path.*{missing}"):
        load_qwen_adapter(config_from_dict("qwen_x", {"variant": "local", "model_path": str(missing)}))
    incomplete = tmp_path / "incomplete"
    shutil.copytree(tiny_dir, incomplete)
    (incomplete / "model.safetensors").unlink()
    with pytest.raises(LVLMConfigError, match=r"beam_models\.qwen_x\.model_path.*incomplete.*weights"):
        load_qwen_adapter(config_from_dict("qwen_x", {"variant": "local", "model_path": str(incomplete)}))


def test_tokenizer_without_image_token_is_rejected(tmp_path, tiny_dir):
    from transformers import Qwen2TokenizerFast

    from lever_lm.lvlm.qwen import QWEN_SPECIAL_TOKENS
    from lever_lm.lvlm.tiny_tokenizer import build_word_tokenizer

    broken = tmp_path / "broken"
    shutil.copytree(tiny_dir, broken)
    specials = [t for t in QWEN_SPECIAL_TOKENS if t != "<|image_pad|>"]
    tokenizer = Qwen2TokenizerFast(tokenizer_object=build_word_tokenizer(WORDS, specials), unk_token="<unk>",
                                   eos_token="<|im_end|>", pad_token="<|endoftext|>", bos_token=None)
    tokenizer.save_pretrained(broken)
    with pytest.raises(LVLMConfigError, match=rf"<\|image_pad\|>.*{broken}|{broken}.*<\|image_pad\|>"):
        load_qwen_adapter(config_from_dict("qwen_x", {"variant": "local", "model_path": str(broken)}))


def test_config_from_dict_rejects_bad_fields():
    with pytest.raises(ValueError, match=r"beam_models\.q: unknown field\(s\) \['beams'\]"):
        config_from_dict("q", {"variant": "tiny", "beams": 3})
    with pytest.raises(ValueError, match=r"beam_models\.q\.prompt_style"):
        config_from_dict("q", {"variant": "tiny", "prompt_style": "chat"})
    with pytest.raises(ValueError, match=r"beam_models\.q\.tiny: unknown field\(s\) \['width'\]"):
        config_from_dict("q", {"variant": "tiny", "tiny": {"width": 3}})
    with pytest.raises(ValueError, match=r"beam_models\.q\.tiny\.mrope_section"):
        config_from_dict("q", {"variant": "tiny", "tiny": {"mrope_section": [4, 4, 4]}})
    with pytest.raises(ValueError, match=r"beam_models\.q\.family"):
        config_from_dict("q", {"family": "flamingo", "variant": "tiny"})
    config = config_from_dict("q", {"family": "qwen2_5_vl", "variant": "tiny", "seed": 2, "tiny": {"text_layers": 1}})
    assert config.tiny.text_layers == 1 and config.seed == 2 and config.score_batch_size == 32


def test_non_square_images_positions_and_fast_path(tmp_path, tiny_dir, images):
    """mrope positions match the model's get_rope_index, and fast == naive, for images of several shapes."""
    from PIL import Image

    from lever_lm.lvlm.qwen import mrope_positions

    rng = np.random.default_rng(5)
    shaped = []
    for index, (height, width) in enumerate([(56, 112), (112, 56), (84, 56), (112, 112)]):
        path = tmp_path / f"shaped{index}.png"
        Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).save(path)
        shaped.append(str(path))
    adapter = _sharpened(load_qwen_adapter(config_from_dict("qwen_shapes", {
        "variant": "tiny", "model_path": str(tiny_dir), "precision": "fp32", "max_pixels": 112 * 112})))
    demos = [Example(p, QUESTIONS[i % 3], ANSWERS[i]) for i, p in enumerate(shaped)]
    query = Example(images[0], QUESTIONS[0], "red")
    prompts = [Prompt(tuple(demos[:k]), query) for k in range(4)] + [Prompt((demos[3], demos[1]), query)]
    _assert_close(adapter.score(prompts), adapter.score_naive(prompts))
    _, grid_thw = adapter.preprocess_images(shaped)
    assert len({tuple(g) for g in grid_thw.tolist()}) == 4  # really four different grids
    for prompt in prompts:
        sequence = adapter._fast._sequence(prompt, {p: f[0].shape[0] for p, f in adapter._fast.features.items()})
        grids = torch.stack([adapter._fast.features[p][1] for p in sequence.assembled.image_paths])
        expected, _ = adapter.model.model.get_rope_index(torch.as_tensor(sequence.assembled.input_ids)[None], grids)
        ours = mrope_positions(sequence.assembled.input_ids, adapter.model.config.image_token_id,
                               grids.tolist(), adapter.merge_size)
        np.testing.assert_array_equal(ours, expected[:, 0].numpy())


def test_fast_template_rendering_equals_apply_chat_template(adapter, images):
    from lever_lm.lvlm.qwen import build_messages, render_chat

    demos = _examples(images)
    prompt = Prompt((demos[0], demos[1]), Example(images[2], QUESTIONS[2], "two"))
    for system_prompt in (None, "Answer briefly."):
        for for_generation in (False, True):
            messages = build_messages(prompt, adapter.config.prompt_style, system_prompt, not for_generation)
            expected = adapter.tokenizer.apply_chat_template(
                messages, chat_template=adapter.chat_template, tokenize=False, add_generation_prompt=for_generation)
            assert render_chat(adapter.tokenizer, adapter.chat_template, messages, for_generation) == expected


def test_empty_call_returns_empty_lists(adapter):
    assert adapter.score([]) == [] and adapter.score_naive([]) == [] and adapter.generate([], 3, 1) == []
