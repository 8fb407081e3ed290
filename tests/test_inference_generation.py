"""Batched generation is exact: for prompts of MIXED image counts (0-4 ICDs + the query) in one batch, both tiny
LVLMs give the same answers batched as one prompt at a time, greedy and with 3 beams, and the same answers as the
libraries' own unoptimised generate (open_flamingo's cross-attention over all padded media with HF beam search over
the whole prompt per beam; Qwen2.5-VL's generate with pixel values)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lever_lm.lvlm.base import Example, Prompt
from lever_lm.lvlm.reference import flamingo_reference, qwen_reference
from lever_lm.lvlm.tiny_tokenizer import collect_vocabulary

QA = [
    ("what color is the cat ?", "red"),
    ("how many dogs are there ?", "2"),
    ("is it raining ?", "no"),
    ("what is the man holding ?", "tennis racket"),
    ("where is the bus ?", "street"),
    ("what sport is this ?", "ski"),
    ("what animal is shown ?", "zebra"),
    ("what color is the sky ?", "blue"),
]
WORDS = collect_vocabulary([t for pair in QA for t in pair])


@pytest.fixture(scope="module")
def prompts(tmp_path_factory):
    from PIL import Image

    root = tmp_path_factory.mktemp("generation_images")
    rng = np.random.default_rng(0)
    paths = []
    for i in range(len(QA)):
        path = root / f"img{i}.png"
        Image.fromarray(rng.integers(0, 255, (56, 56, 3), dtype=np.uint8)).save(path)
        paths.append(str(path))
    demos = [Example(paths[i], q, a) for i, (q, a) in enumerate(QA)]
    # 0..4 ICDs, interleaved so that every batch mixes image counts and prompt lengths
    return [
        Prompt(
            tuple(demos[(i + j + 1) % len(demos)] for j in range(i % 5)),
            Example(paths[i % len(paths)], QA[(3 * i) % len(QA)][0]),
        )
        for i in range(12)
    ]


@pytest.fixture(scope="module")
def flamingo():
    from lever_lm.lvlm.tiny import make_tiny_adapter

    torch.set_num_threads(1)
    return make_tiny_adapter(
        "flamingo", WORDS, seed=0, score_batch_size=16, precision="fp32"
    )  # exact equality: no bf16


@pytest.fixture(scope="module")
def flamingo_default_blocks():
    """The embedded default's sizes: perceiver and cross-attention blocks resized (fewer heads and latents)."""
    from lever_lm.lvlm.tiny import make_tiny_adapter
    from tests.adapter_checks import default_flamingo_dims

    torch.set_num_threads(1)
    return make_tiny_adapter("flamingo", WORDS, default_flamingo_dims(), seed=0, score_batch_size=16, precision="fp32")


@pytest.fixture(scope="module")
def qwen():
    from lever_lm.lvlm.tiny import make_tiny_adapter, sharpen_weights

    torch.set_num_threads(1)
    adapter = make_tiny_adapter("qwen2_5_vl", WORDS, seed=0, score_batch_size=16, precision="fp32")
    return sharpen_weights(adapter)


@pytest.mark.parametrize("family", ["flamingo", "flamingo_default_blocks", "qwen"])
@pytest.mark.parametrize("num_beams", [1, 3])
def test_batched_generation_equals_batch_one_and_the_reference(request, prompts, family, num_beams):
    adapter = request.getfixturevalue(family)
    reference = flamingo_reference if family.startswith("flamingo") else qwen_reference
    batched = adapter.generate(prompts, max_new_tokens=5, num_beams=num_beams)  # one batch of 12, 1-5 images
    single = [adapter.generate([p], max_new_tokens=5, num_beams=num_beams)[0] for p in prompts]
    assert len({len(p.demos) for p in prompts}) == 5
    assert len(set(single)) >= 6, single  # answers depend on the prompt, so a mix-up between rows would show
    assert batched == single
    assert [reference(adapter, p, num_beams, 5) for p in prompts] == single
    # smaller batches (sorted by length inside generate) give the same answers in the order given
    assert adapter.generate(prompts, max_new_tokens=5, num_beams=num_beams, batch_size=5) == batched
    assert all("<" not in text for text in batched)  # special tokens removed


def test_flamingo_generate_restores_the_model(flamingo, prompts, monkeypatch):
    """The generation-only cross-attention is swapped in for the call and out afterwards, also on errors."""
    lang = flamingo.model.lang_encoder
    attns = [layer.attn for layer in lang.gated_cross_attn_layers if layer is not None]

    def restored() -> bool:
        return (
            all("forward" not in vars(attn) for attn in attns)
            and not lang._use_cached_vision_x
            and not any(layer.is_conditioned() for layer in lang._get_decoder_layers())
        )

    flamingo.generate(prompts[:3], max_new_tokens=2, num_beams=2)
    assert restored()

    def broken(*args, **kwargs):
        assert all("forward" in vars(attn) for attn in attns)  # swapped in during the call
        raise RuntimeError("boom")

    monkeypatch.setattr(lang, "generate", broken)
    with pytest.raises(RuntimeError, match="boom"):
        flamingo.generate(prompts[:3], max_new_tokens=2, num_beams=2)
    assert restored()


def test_generate_checks_its_arguments(flamingo, qwen, prompts):
    for adapter in (flamingo, qwen):
        with pytest.raises(ValueError, match="batch_size"):
            adapter.generate(prompts[:3], max_new_tokens=2, num_beams=2, batch_size=0)
        with pytest.raises(ValueError, match="num_beams"):
            adapter.generate(prompts[:3], max_new_tokens=2, num_beams=0)


def test_generate_of_no_prompts(flamingo, qwen):
    assert flamingo.generate([], max_new_tokens=3, num_beams=3) == [] == qwen.generate([], 3, 3)


# ----------------------------------------------------------------------------------------------- token budgets


class Recording:
    """An adapter wrapper that records the batches ``generate_answers`` hands to ``generate``."""

    def __init__(self, adapter):
        self.adapter, self.batches = adapter, []

    def prompt_token_lengths(self, prompts):
        return self.adapter.prompt_token_lengths(prompts)

    def generate(self, prompts, max_new_tokens, num_beams, batch_size=None):
        self.batches.append(list(prompts))
        return self.adapter.generate(prompts, max_new_tokens, num_beams, batch_size)


@pytest.mark.parametrize("family", ["flamingo", "qwen"])
@pytest.mark.parametrize("num_beams", [1, 3])
def test_token_budget_generation_equals_batch_one(request, prompts, family, num_beams):
    from lever_lm.inference.generation import generate_answers

    adapter = request.getfixturevalue(family)
    lengths = adapter.prompt_token_lengths(prompts)
    budget = 3 * (int(np.median(lengths)) + 5) * num_beams  # about three rows a batch
    recording = Recording(adapter)
    answers = generate_answers(recording, prompts, 5, num_beams, batch_size=16, token_budget=budget)
    single = [adapter.generate([p], max_new_tokens=5, num_beams=num_beams)[0] for p in prompts]
    assert len(set(single)) >= 6, single
    assert answers == single
    length_of = {id(p): n for p, n in zip(prompts, lengths)}
    batch_lengths = [[length_of[id(p)] for p in batch] for batch in recording.batches]
    assert [n for batch in batch_lengths for n in batch] == sorted(lengths)  # sorted by token length
    assert len(recording.batches) > 2 and max(len(b) for b in recording.batches) > 1
    for batch in batch_lengths:
        assert len(batch) * (max(batch) + 5) * num_beams <= budget or len(batch) == 1


def _image_of_size(folder, width, height):
    from PIL import Image

    path = folder / f"{width}x{height}.png"
    Image.fromarray(
        np.random.default_rng(width * 1000 + height).integers(0, 255, (height, width, 3), dtype=np.uint8)
    ).save(path)
    return str(path)


SIZES = [(56, 56), (30, 200), (640, 480), (13, 17), (100, 37), (224, 224), (301, 97), (8, 8)]


@pytest.mark.parametrize(
    "pixels",
    [
        {},
        {"max_pixels": 3000},
        {"min_pixels": 20000},
        {"min_pixels": 1000, "max_pixels": 5000},
        {"min_pixels": 56 * 56, "max_pixels": 28 * 28 * 1280},
    ],
)  # the last: Qwen's own
def test_qwen_image_token_count_from_the_header_equals_the_processor(qwen, tmp_path, pixels):
    """Header size + smart_resize == what preprocess_images_host makes (grid prod // merge_size**2), for the
    adapter's min_pixels / max_pixels overrides; and prompt_token_lengths == the assembled generation prompts."""
    paths = [_image_of_size(tmp_path, w, h) for w, h in SIZES]
    saved = qwen._image_kwargs
    qwen._image_kwargs = dict(pixels)  # what QwenVLConfig's min_pixels / max_pixels set
    try:
        _, grid = qwen.preprocess_images_host(paths)
        expected = (grid.prod(-1) // qwen.merge_size**2).tolist()
        assert [qwen.image_token_count(p) for p in paths] == expected
        assert len(set(expected)) >= 3, expected  # the sizes give different counts
        prompts = [
            Prompt(
                tuple(Example(paths[(i + j) % len(paths)], QA[j][0], QA[j][1]) for j in range(i % 4)),
                Example(paths[i], QA[i][0]),
            )
            for i in range(len(paths))
        ]
        counts = dict(zip(paths, expected))
        assert qwen.prompt_token_lengths(prompts) == [
            len(qwen.assemble(p, counts, for_generation=True).input_ids) for p in prompts
        ]
    finally:
        qwen._image_kwargs = saved


def test_qwen_image_token_count_with_configured_pixels(tmp_path):
    """The overrides as a config sets them (``beam_models.<name>.min_pixels / max_pixels``)."""
    from lever_lm.lvlm.tiny import make_tiny_adapter

    adapter = make_tiny_adapter("qwen2_5_vl", WORDS, seed=0, precision="fp32", min_pixels=1000, max_pixels=9000)
    paths = [_image_of_size(tmp_path, w, h) for w, h in SIZES]
    _, grid = adapter.preprocess_images_host(paths)
    assert [adapter.image_token_count(p) for p in paths] == (grid.prod(-1) // adapter.merge_size**2).tolist()


def test_prompt_token_lengths_are_the_generation_inputs(flamingo, qwen, prompts):
    """Both adapters count the prompt their ``generate`` runs: Flamingo one <image> token per image, Qwen each
    image's merged patches (from the vision features generate computes)."""
    assert flamingo.prompt_token_lengths(prompts) == [
        len(flamingo.assemble(p, with_answer=False).input_ids) for p in prompts
    ]
    ids = [flamingo.assemble(p, with_answer=False).input_ids for p in prompts]
    assert [row.count(flamingo.media_token_id) for row in ids] == [len(p.demos) + 1 for p in prompts]
    paths = list(dict.fromkeys(e.image_path for p in prompts for e in (*p.demos, p.query)))
    _, grid = qwen.preprocess_images_host(paths)
    counts = dict(zip(paths, (grid.prod(-1) // qwen.merge_size**2).tolist()))
    assert qwen.prompt_token_lengths(prompts) == [
        len(qwen.assemble(p, counts, for_generation=True).input_ids) for p in prompts
    ]
    assert qwen.prompt_token_lengths([]) == [] == flamingo.prompt_token_lengths([])
