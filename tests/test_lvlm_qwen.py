"""Qwen2.5-VL adapter: fast scoring equals the reference, caching, span location, generation, config errors."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from lever_lm.lvlm import tiny as tiny_lvlm  # noqa: E402
from lever_lm.lvlm.base import Example, LVLMConfigError, Prompt  # noqa: E402
from lever_lm.lvlm.qwen import (  # noqa: E402
    QWEN2_5_VL_CHAT_TEMPLATE,
    assemble_prompt,
    config_from_dict,
    load_qwen_adapter,
)
from lever_lm.lvlm.tiny import QwenTinyDims  # noqa: E402
from lever_lm.lvlm.tiny_tokenizer import collect_vocabulary  # noqa: E402
from tests.adapter_checks import (  # noqa: E402
    check_batch_past_copies_are_fixed,
    check_vision_budget_regroups_only,
    check_vision_cache_outlives_a_query,
)


def build_tiny_model_dir(out_dir, words, dims=None, seed=0):
    tiny_lvlm.build_tiny_model_dir("qwen2_5_vl", out_dir, words, dims, seed)


def make_tiny_adapter(words, dims=None, seed=0, **options):
    return tiny_lvlm.make_tiny_adapter("qwen2_5_vl", words, dims, seed, **options)


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
    """Larger weights: a wrong key/value or position reuse then shows up far above the 1e-4 tolerance."""
    from lever_lm.lvlm.tiny import sharpen_weights

    return sharpen_weights(adapter)


@pytest.fixture(scope="module", params=["single_user_message", "multi_turn"])
def adapter(request, tiny_dir):
    torch.set_num_threads(1)
    config = config_from_dict(
        "qwen_test",
        {
            "family": "qwen2_5_vl",
            "variant": "tiny",
            "model_path": str(tiny_dir),
            "prompt_style": request.param,
            "precision": "fp32",
            "score_batch_size": 8,
        },
    )
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


def _byte_level_bpe(merges):
    """A byte-level BPE tokenizer with Qwen2's pre-tokenisation (its regex glues one punctuation character to the
    letters after it, so ':red' is one pre-token), built offline: byte alphabet + the given merges."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import Qwen2TokenizerFast

    from lever_lm.lvlm.qwen import QWEN_SPECIAL_TOKENS

    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {token: index for index, token in enumerate(sorted(alphabet))}
    for left, right in merges:
        vocab.setdefault(left + right, len(vocab))
    backend = Tokenizer(models.BPE(vocab=vocab, merges=merges))
    qwen_split = (
        r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
        r"|\s*[\r\n]+|\s+(?!\S)|\s+"
    )
    backend.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(qwen_split), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    backend.decoder = decoders.ByteLevel()
    backend.add_special_tokens(list(QWEN_SPECIAL_TOKENS))
    return Qwen2TokenizerFast(
        tokenizer_object=backend, unk_token=None, eos_token="<|im_end|>", pad_token="<|endoftext|>", bos_token=None
    )


def test_span_from_offsets_with_a_bpe_that_merges_the_colon_into_the_answer():
    """docs/stages.md stage 4: the prompt is tokenised as one string; with a BPE that merges ':red' into one token the
    query's span is that merged token plus <|im_end|> (the token belongs to y), and an answer without such a merge
    ('blue') spans exactly its own tokens plus <|im_end|>. Demo spans follow the same rule."""
    merges = [("r", "e"), ("re", "d"), (":", "red"), ("b", "l"), ("bl", "u"), ("blu", "e"), ("#", "e")]
    tokenizer = _byte_level_bpe(merges)
    convert = tokenizer.convert_ids_to_tokens
    assert convert(tokenizer("er:red")["input_ids"]) == ["e", "r", ":red"]  # merged with the ':'
    assert convert(tokenizer("er:blue")["input_ids"]) == ["e", "r", ":", "blue"]  # not merged
    for style in ("single_user_message", "multi_turn"):
        demo = Example("d.png", "What color is it?", "red")
        for answer, expected in (("red", [":red"]), ("blue", ["blue"]), ("# e", ["#", "Ġ", "e"])):
            prompt = Prompt((demo,), Example("q.png", "What color is it?", answer))
            assembled = assemble_prompt(
                prompt, tokenizer, QWEN2_5_VL_CHAT_TEMPLATE, style, None, {"d.png": 2, "q.png": 3}, for_generation=False
            )
            start, end = assembled.query_span
            if style == "multi_turn":  # the answer is alone in the assistant turn: nothing to merge with
                expected = convert(tokenizer(answer)["input_ids"])
            assert convert(list(assembled.input_ids[start:end])) == [*expected, "<|im_end|>"], (style, answer)
            # the whole prompt is the tokenizer's own tokenisation of the rendered text (image pads expanded)
            text = tokenizer.decode(list(assembled.input_ids))
            ids = [
                t
                for t in tokenizer(
                    text.replace("<|image_pad|>" * 3, "<|image_pad|>").replace("<|image_pad|>" * 2, "<|image_pad|>")
                )["input_ids"]
            ]
            expanded = []
            counts = iter([2, 3])
            for token in ids:
                expanded += [token] * (next(counts) if token == tokenizer.convert_tokens_to_ids("<|image_pad|>") else 1)
            assert expanded == list(assembled.input_ids)
            demo_start, demo_end = assembled.answer_spans[0]
            demo_tokens = convert(list(assembled.input_ids[demo_start:demo_end]))
            assert demo_tokens[0] == (":red" if style == "single_user_message" else "red")
            assert demo_end - 1 == assembled.demo_ends[0]


def test_span_rule_is_shared_and_covers_merged_and_plain_answers():
    from lever_lm.lvlm.base import answer_token_span

    text = "Short answer:red<|im_end|>"
    offsets = [(0, 5), (5, 12), (12, 16), (16, 26)]  # 'Short', ' answer', ':red', '<|im_end|>'
    assert answer_token_span(offsets, 13, 16) == (2, 3)  # the ':red' token overlaps the answer
    offsets = [(0, 5), (5, 12), (12, 13), (13, 16), (16, 26)]
    assert answer_token_span(offsets, 13, 16) == (3, 4)
    with pytest.raises(ValueError, match="no token overlaps"):
        answer_token_span(offsets[:3], 13, 16)
    assert text[13:16] == "red"


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
    prompts = [
        Prompt((), Example(images[6], QUESTIONS[0])),
        Prompt((demos[0], demos[1]), Example(images[6], QUESTIONS[2])),
    ]
    first = adapter.generate(prompts, max_new_tokens=4, num_beams=1)
    assert first == adapter.generate(prompts, max_new_tokens=4, num_beams=1)
    assert all(isinstance(text, str) and text == text.strip() and "<|" not in text for text in first)
    beams = adapter.generate(prompts, max_new_tokens=4, num_beams=2)
    assert len(beams) == 2 and all(isinstance(text, str) for text in beams)


def test_tiny_dir_round_trips_through_the_local_loader(tmp_path, images):
    dims = QwenTinyDims(text_layers=2)
    build_tiny_model_dir(tmp_path / "tiny", WORDS, dims, seed=3)
    loaded = load_qwen_adapter(
        config_from_dict("qwen_rt", {"variant": "local", "model_path": str(tmp_path / "tiny"), "precision": "fp32"})
    )
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
    tokenizer = Qwen2TokenizerFast(
        tokenizer_object=build_word_tokenizer(WORDS, specials),
        unk_token="<unk>",
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        bos_token=None,
    )
    tokenizer.save_pretrained(broken)
    with pytest.raises(LVLMConfigError, match=rf"<\|image_pad\|>.*{broken}|{broken}.*<\|image_pad\|>"):
        load_qwen_adapter(config_from_dict("qwen_x", {"variant": "local", "model_path": str(broken)}))


def test_config_from_dict_rejects_bad_fields():
    from lever_lm.lvlm.factory import parse_config

    with pytest.raises(ValueError, match=r"unknown config key beam_models\.q\.beams"):
        config_from_dict("q", {"variant": "tiny", "beams": 3})
    with pytest.raises(ValueError, match=r"beam_models\.q\.prompt_style"):
        config_from_dict("q", {"variant": "tiny", "prompt_style": "chat"})
    with pytest.raises(ValueError, match=r"beam_models\.q\.tiny: not an adapter field"):
        config_from_dict("q", {"variant": "tiny", "tiny": {}})  # the factory strips a tiny variant's sizes
    entry = {"family": "qwen2_5_vl", "variant": "tiny"}
    with pytest.raises(ValueError, match=r"beam_models\.q\.tiny: unknown field\(s\) \['width'\]"):
        parse_config("q", {**entry, "tiny": {"width": 3}})
    with pytest.raises(ValueError, match=r"beam_models\.q\.tiny\.mrope_section"):
        parse_config("q", {**entry, "tiny": {"mrope_section": [4, 4, 4]}})
    with pytest.raises(ValueError, match=r"beam_models\.q\.pretrain\.steps"):
        parse_config("q", {**entry, "pretrain": {"steps": 0}})
    with pytest.raises(ValueError, match=r"beam_models\.q\.pretrain: only a variant 'tiny'"):
        parse_config("q", {**entry, "variant": "local", "model_path": "x", "pretrain": {}})
    with pytest.raises(ValueError, match=r"beam_models\.q\.family"):
        config_from_dict("q", {"family": "flamingo", "variant": "tiny"})
    config = parse_config("q", {**entry, "seed": 2, "tiny": {"text_layers": 1}})
    assert config.seed == 2 and config.score_batch_size == 32


def test_non_square_images_positions_and_fast_path(tmp_path, tiny_dir, images):
    """mrope positions match the model's get_rope_index, and fast == naive, for images of several shapes."""
    from PIL import Image

    from lever_lm.lvlm.qwen_positions import mrope_positions

    rng = np.random.default_rng(5)
    shaped = []
    for index, (height, width) in enumerate([(56, 112), (112, 56), (84, 56), (112, 112)]):
        path = tmp_path / f"shaped{index}.png"
        Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).save(path)
        shaped.append(str(path))
    adapter = _sharpened(
        load_qwen_adapter(
            config_from_dict(
                "qwen_shapes",
                {"variant": "tiny", "model_path": str(tiny_dir), "precision": "fp32", "max_pixels": 112 * 112},
            )
        )
    )
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
        ours = mrope_positions(
            sequence.assembled.input_ids, adapter.model.config.image_token_id, grids.tolist(), adapter.merge_size
        )
        np.testing.assert_array_equal(ours, expected[:, 0].numpy())


def test_fast_template_rendering_equals_apply_chat_template(adapter, images):
    from lever_lm.lvlm.qwen import build_messages, render_chat

    demos = _examples(images)
    prompt = Prompt((demos[0], demos[1]), Example(images[2], QUESTIONS[2], "two"))
    for system_prompt in (None, "Answer briefly."):
        for for_generation in (False, True):
            messages = build_messages(prompt, adapter.config.prompt_style, system_prompt, not for_generation)
            expected = adapter.tokenizer.apply_chat_template(
                messages, chat_template=adapter.chat_template, tokenize=False, add_generation_prompt=for_generation
            )
            assert render_chat(adapter.tokenizer, adapter.chat_template, messages, for_generation) == expected


def test_empty_call_returns_empty_lists(adapter):
    assert adapter.score([]) == [] and adapter.score_naive([]) == [] and adapter.generate([], 3, 1) == []


def test_answer_as_reply_continues_the_generation_prompt(adapter, images):
    """Pretraining's second format: the query's answer as the assistant reply, i.e. exactly the generation prompt
    followed by the answer and <|im_end|> (the sequence ``generate`` should produce)."""
    demo = Example(images[0], QUESTIONS[1], "# a")
    prompt = Prompt((demo,), Example(images[1], QUESTIONS[0], "two"))
    counts = {images[0]: 4, images[1]: 4}
    reply = adapter.assemble(prompt, counts, for_generation=False, answer_as_reply=True)
    generation = adapter.assemble(prompt, counts, for_generation=True)
    start, end = reply.query_span
    assert reply.input_ids[:start] == generation.input_ids
    assert adapter.tokenizer.convert_ids_to_tokens(list(reply.input_ids[start:end])) == ["two", "<|im_end|>"]
    assert reply.answer_spans[0] == adapter.assemble(prompt, counts, for_generation=False).answer_spans[0]
    with pytest.raises(ValueError, match="answer_as_reply"):
        adapter.assemble(prompt, counts, for_generation=True, answer_as_reply=True)


def test_scores_do_not_depend_on_the_token_budget(adapter, images):
    """score_token_budget only regroups the forward rows: scores agree to float rounding whatever the budget (a row
    per batch, small and huge budgets), and still equal the naive path's."""
    import dataclasses

    step1, left, right, three = _left_and_right_prompts(images)
    mixed = step1 + left + right + three
    original = adapter.config
    try:
        adapter.clear_cache()
        reference = [adapter.score(p) for p in (step1, left, three)]
        forwards = {}
        for budget, rows in ((1, 8), (150, 8), (600, 1000), (10**6, 1000)):
            adapter.config = dataclasses.replace(original, score_token_budget=budget, score_batch_size=rows)
            adapter.clear_cache()
            before = adapter.counters.snapshot()
            for prompts, expected in zip((step1, left, three), reference):
                for got, want in zip(adapter.score(prompts), expected):
                    np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)
            forwards[budget] = adapter.counters.since(before)["lm_forward_calls"]
        assert forwards[1] > forwards[150] > forwards[10**6]  # the budget sets the batch sizes
        adapter.clear_cache()
        _assert_close(adapter.score(mixed), adapter.score_naive(mixed))
    finally:
        adapter.config = original
        adapter.clear_cache()


def test_plan_batches_fills_a_token_budget_in_length_order():
    from lever_lm.lvlm.base import plan_batches

    lengths = [5, 1, 4, 2, 9, 3]
    keys = [(0, n) for n in lengths]
    assert plan_batches(lengths, keys, 4, None) == [[1, 3, 5, 2], [0, 4]]  # no budget: max_rows rows at a time
    # length order 1,2,3,4,5,9: rows x longest <= 8 -> [1,2,3] would be 3x3 = 9 > 8
    assert plan_batches(lengths, keys, 10, 8) == [[1, 3], [5, 2], [0], [4]]  # 9 alone, over the budget
    assert plan_batches(lengths, keys, 1, 100) == [[i] for i in (1, 3, 5, 2, 0, 4)]
    with pytest.raises(ValueError):
        plan_batches(lengths, keys, 4, 0)
    with pytest.raises(ValueError, match=r"beam_models\.q\.score_token_budget"):
        config_from_dict("q", {"variant": "tiny", "score_token_budget": 0})
    assert config_from_dict("q", {"variant": "tiny", "score_token_budget": 4096}).score_token_budget == 4096


def test_vision_token_budget_packs_a_steps_images_into_few_forwards(adapter, images):
    """A scoring call's new images go through the tower together; the budget only regroups them."""
    check_vision_budget_regroups_only(adapter, _left_and_right_prompts(images)[0], config_from_dict, "q")


def test_plan_image_batches_packs_consecutive_images_within_the_budget():
    from lever_lm.lvlm.base import plan_image_batches, vision_token_budget

    assert plan_image_batches([4, 4, 4, 9, 1, 2], 8) == [[0, 1], [2], [3], [4, 5]]  # 9 alone, over the budget
    assert vision_token_budget(None, "cuda:0") == 32768 and vision_token_budget(None, "cpu") == 4096
    assert vision_token_budget(100, "cuda") == 100
    assert config_from_dict("q", {"variant": "tiny", "vision_token_budget": None}).vision_token_budget is None
    assert plan_image_batches([4] * 5, 10**6) == [[0, 1, 2, 3, 4]]
    assert plan_image_batches([], 8) == []
    with pytest.raises(ValueError):
        plan_image_batches([1], 0)


def test_a_batch_past_costs_a_fixed_number_of_copies(adapter, images):
    """Key/value reuse copies per forward, not per (row, layer): each batch's past is one gather from the pool."""
    step1, left, right, _ = _left_and_right_prompts(images)
    check_batch_past_copies_are_fixed(adapter, step1, left + right)


def test_fast_path_vision_runs_one_attention_call_per_chunk_length(adapter, images):
    """The fast path's tower runs under qwen_vision.grouped_attention: the images of a step share a size, so each
    vision block makes one attention call where the stock loop makes one per window or image."""
    step1 = _left_and_right_prompts(images)[0]
    adapter.clear_cache()
    before = adapter.counters.snapshot()
    adapter.score(step1)
    counts = adapter.counters.since(before)
    blocks = len(adapter.model.model.visual.blocks)
    assert counts["vision_forward_calls"] == 1
    assert counts["vision_attention_calls"] == blocks < counts["vision_attention_chunks"]
    adapter.clear_cache()


def test_vision_features_outlive_a_query_up_to_max_cached_images(adapter, images):
    check_vision_cache_outlives_a_query(adapter, _left_and_right_prompts(images)[0])
