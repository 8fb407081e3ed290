"""Tiny LVLMs of the toy world: pretraining sequences, pretraining into the real local layout, factory fields."""

from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from lever_lm.data import build_records  # noqa: E402
from lever_lm.lvlm.factory import is_pretrained, load_adapter, parse_config, tiny_spec  # noqa: E402
from lever_lm.lvlm.tiny import FlamingoTinyDims, PretrainConfig, QwenTinyDims, load_tiny_dir  # noqa: E402
from lever_lm.toy.data import (  # noqa: E402
    CONVENTIONS,
    ToyDatasetConfig,
    family_of,
    generate_toy_okvqa,
    parse_answer,
    toy_vocabulary,
)
from lever_lm.toy.pretrain import (  # noqa: E402
    learning_rate,
    pretrain_tiny_lvlm,
    pretraining_prompts,
    toy_items,
)

SMALL_QWEN = QwenTinyDims(
    text_hidden=32,
    text_intermediate=64,
    text_layers=1,
    text_heads=2,
    text_kv_heads=1,
    mrope_section=(2, 3, 3),
    vision_depth=1,
    vision_hidden=32,
    vision_intermediate=64,
    vision_heads=2,
)
SMALL_FLAMINGO = FlamingoTinyDims(lang_width=32, lang_layers=1, lang_heads=2, init_std=0.02)
QUICK = PretrainConfig(steps=3, batch_size=4, warmup_steps=1, log_every=1, max_demos=2)


@pytest.fixture(scope="module")
def toy_records(tmp_path_factory):
    root = tmp_path_factory.mktemp("toy") / "okvqa"
    generate_toy_okvqa(root, ToyDatasetConfig(seed=1, train_images=12, val_images=4))
    return {split: build_records("okvqa", root, split) for split in ("train", "val")}


def _convention(example) -> str:
    return parse_answer(example.answer)[1]


def test_pretraining_sequences_keep_one_convention_and_never_repeat_the_query_image(toy_records):
    items = toy_items(toy_records["train"])
    shared = pretraining_prompts(
        items, PretrainConfig(shared_convention_p=1.0, max_demos=4), np.random.default_rng(0), count=200
    )
    assert {len(p.demos) for p in shared} == {0, 1, 2, 3, 4}
    for prompt in shared:
        assert len({_convention(e) for e in (*prompt.demos, prompt.query)}) == 1
        assert all(d.image_path != prompt.query.image_path for d in prompt.demos)
        assert len(set(prompt.demos)) == len(prompt.demos)
    conventions = [_convention(p.query) for p in shared]
    assert 0.3 < conventions.count("code") / len(conventions) < 0.7  # drawn per sequence, not from the cue
    per_type = pretraining_prompts(
        items, PretrainConfig(shared_convention_p=0.0, max_demos=4), np.random.default_rng(0), count=200
    )
    mixed = 0
    for prompt in per_type:
        by_type: dict[str, set] = {}
        for e in (*prompt.demos, prompt.query):
            by_type.setdefault(family_of(e.question, e.answer)[0], set()).add(_convention(e))
        assert all(len(c) == 1 for c in by_type.values())  # consistent per question type inside a sequence
        mixed += len(set().union(*by_type.values())) > 1
    assert mixed > 20  # ... but question types of one sequence may differ
    again = pretraining_prompts(
        items, PretrainConfig(shared_convention_p=1.0, max_demos=4), np.random.default_rng(0), count=200
    )
    assert again == shared


def test_learning_rate_warms_up_then_decays_to_zero():
    cfg = PretrainConfig(steps=100, warmup_steps=10, lr=1.0)
    rates = [learning_rate(step, cfg) for step in range(100)]
    assert rates[0] == pytest.approx(0.1) and rates[9] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(rates[9:], rates[10:])) and rates[-1] < 0.01


def test_pretrain_config_errors_name_the_key():
    with pytest.raises(ValueError, match=r"beam_models\.m\.pretrain\.warmup_steps: must be in \[0, steps\)"):
        PretrainConfig.from_config({"steps": 10, "warmup_steps": 10}, "beam_models.m.pretrain")
    with pytest.raises(ValueError, match=r"unknown config key beam_models\.m\.pretrain\.epochs"):
        PretrainConfig.from_config({"epochs": 1}, "beam_models.m.pretrain")
    with pytest.raises(ValueError, match=r"config key beam_models\.<model>\.pretrain\.lr: 'fast' is not of type"):
        PretrainConfig.from_config({"lr": "fast"})
    assert PretrainConfig.from_config({"lr": 1}).lr == 1
    with pytest.raises(ValueError, match=r"config key beam_models\.m\.pretrain\.precision: 'fp16' is not one of"):
        PretrainConfig.from_config({"precision": "fp16"}, "beam_models.m.pretrain")
    assert PretrainConfig.from_config({"precision": "bf16"}).precision == "bf16"


def test_factory_strips_and_checks_the_tiny_only_fields():
    entry = {
        "family": "flamingo",
        "variant": "tiny",
        "seed": 2,
        "tiny": {"lang_width": 64},
        "pretrain": {"steps": 5, "warmup_steps": 1},
    }
    family, dims, pretrain, seed = tiny_spec("f", entry)
    assert (family, dims.lang_width, pretrain.steps, seed) == ("flamingo", 64, 5, 2)
    assert parse_config("f", entry).seed == 2 and is_pretrained(entry)
    assert not is_pretrained({**entry, "pretrain": None}) and tiny_spec("f", {**entry, "pretrain": None})[2] is None
    with pytest.raises(ValueError, match=r"beam_models\.f\.tiny\.lang_width: expected a positive int"):
        parse_config("f", {**entry, "tiny": {"lang_width": 0}})
    with pytest.raises(ValueError, match=r"beam_models\.f\.tiny: lang_width must divide by lang_heads"):
        parse_config("f", {**entry, "tiny": {"lang_width": 30}})


def test_pretraining_reads_the_train_split_only(toy_records, tmp_path):
    with pytest.raises(ValueError, match=r"train split only, got split\(s\) \['val'\]"):
        pretrain_tiny_lvlm("qwen2_5_vl", SMALL_QWEN, QUICK, toy_records["val"], str(tmp_path / "m"))
    assert not (tmp_path / "m").exists()


def _answer_spans_decode(trainer, prompts, family):
    """Every answer span the loss reads is the answer's tokens plus the token that closes it."""
    if family == "qwen2_5_vl":
        tokenizer = trainer.adapter.tokenizer
        assembled = [trainer.adapter.assemble(p, trainer.counts, for_generation=False) for p in prompts]
        closing = {"<|im_end|>", "<|vision_start|>"}
    else:
        from lever_lm.lvlm.flamingo import assemble_prompt

        tokenizer = trainer.tokenizer
        assembled = [assemble_prompt(p, tokenizer, with_answer=True) for p in prompts]
        closing = {"<|endofchunk|>"}
    for prompt, item in zip(prompts, assembled):
        examples = (*prompt.demos, prompt.query)
        assert len(item.answer_spans) == len(examples)
        for example, (start, end) in zip(examples, item.answer_spans):
            tokens = tokenizer.convert_ids_to_tokens(list(item.input_ids[start:end]))
            assert tokens[-1] in closing and " ".join(tokens[:-1]) == example.answer


@pytest.mark.parametrize("family,dims", [("qwen2_5_vl", SMALL_QWEN), ("flamingo", SMALL_FLAMINGO)])
def test_pretrained_dir_loads_through_the_local_loader_and_is_deterministic(toy_records, tmp_path, family, dims):
    from lever_lm.toy.pretrain import _TRAINERS

    torch.set_num_threads(1)
    train = toy_records["train"]
    out = tmp_path / "model"
    summary = pretrain_tiny_lvlm(family, dims, QUICK, train, str(out), seed=0)
    assert len(summary["loss_curve"]) == 3 and np.isfinite(summary["final_loss"])
    assert json.loads((out / "pretraining.json").read_text())["pretrain"]["steps"] == 3
    entry = {
        "family": family,
        "variant": "tiny",
        "seed": 0,
        "precision": "fp32",
        "pretrain": {"steps": 3, "batch_size": 4, "warmup_steps": 1},
    }
    adapter = load_adapter("m", entry, str(out))  # the rule's path: the same local loader as a real model
    again = tmp_path / "again"
    pretrain_tiny_lvlm(family, dims, QUICK, train, str(again), seed=0)
    other = load_adapter("m", entry, str(again))
    state, other_state = adapter.model.state_dict(), other.model.state_dict()
    assert state.keys() == other_state.keys() and all(torch.equal(state[k], other_state[k]) for k in state)
    untrained = _TRAINERS[family](list(train["question"]) + toy_vocabulary(), dims, 0, list(train["image_path"]))
    fresh = untrained.model.state_dict()
    changed = [
        k for k in state if k in fresh and fresh[k].shape == state[k].shape and not torch.equal(fresh[k], state[k])
    ]
    assert changed  # training moved the weights, and the saved dir holds the moved ones
    prompts = pretraining_prompts(toy_items(train), QUICK, np.random.default_rng(5), count=6)
    _answer_spans_decode(untrained, prompts, family)
    scores = adapter.score([p for p in prompts if p.demos][:3])
    assert all(s.size >= 2 and np.isfinite(s).all() for s in scores)


def test_bf16_pretraining_autocasts_the_forward_and_keeps_fp32_weights(toy_records, tmp_path, monkeypatch):
    """``precision: bf16`` trains under bf16 autocast (the language model's matmuls run in bf16, the weights and
    the loss stay fp32), so its weights differ from an fp32 run's; fp32 runs no autocast."""
    import dataclasses

    from lever_lm.toy.pretrain import _FlamingoTrainer

    torch.set_num_threads(1)
    train = toy_records["train"]
    seen = []
    original = _FlamingoTrainer.loss

    def loss(self, prompts, as_reply):
        seen.append(torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16)
        out = original(self, prompts, as_reply)
        assert out.dtype == torch.float32
        return out

    monkeypatch.setattr(_FlamingoTrainer, "loss", loss)
    bf16 = dataclasses.replace(QUICK, precision="bf16")
    summary = pretrain_tiny_lvlm("flamingo", SMALL_FLAMINGO, bf16, train, str(tmp_path / "bf16"), seed=0)
    assert seen == [True] * QUICK.steps and np.isfinite(summary["final_loss"])
    assert summary["pretrain"]["precision"] == "bf16"
    seen.clear()
    pretrain_tiny_lvlm("flamingo", SMALL_FLAMINGO, QUICK, train, str(tmp_path / "fp32"), seed=0)
    assert seen == [False] * QUICK.steps
    weights = [
        load_tiny_dir("flamingo", tmp_path / name, precision="fp32").model.lang_encoder.state_dict()
        for name in ("bf16", "fp32")
    ]
    assert all(w.dtype == torch.float32 for w in weights[0].values() if w.is_floating_point())
    assert [k for k in weights[0] if not torch.equal(weights[0][k], weights[1][k])]


def test_pretrained_flamingo_dir_holds_exactly_the_trained_model(toy_records, tmp_path):
    """Every tensor of the in-memory model (vision, perceiver, cross-attention, language model) survives the
    open_flamingo layout: vision weights file, lang_encoder dir, checkpoint.pt."""
    from lever_lm.lvlm.tiny import save_flamingo_dir
    from lever_lm.toy.pretrain import _FlamingoTrainer

    torch.set_num_threads(1)
    train = toy_records["train"]
    trainer = _FlamingoTrainer(list(train["question"]) + toy_vocabulary(), SMALL_FLAMINGO, 0, list(train["image_path"]))
    with torch.no_grad():
        for parameter in trainer.model.parameters():
            parameter.add_(0.01 * torch.randn_like(parameter))  # every tensor differs from its init
    save_flamingo_dir(tmp_path / "m", trainer.tiny)
    loaded = load_tiny_dir("flamingo", tmp_path / "m", precision="fp32").model.state_dict()
    own = trainer.model.state_dict()
    assert own.keys() == loaded.keys()
    assert [k for k in own if not torch.equal(own[k], loaded[k])] == []


def test_conventions_constant_is_what_the_sequences_use():
    assert set(CONVENTIONS) == {"word", "code"}


def test_flamingo_pretraining_forward_and_gradients_equal_open_flamingos_own(toy_records):
    """The trainer's grouped cross-attention, which skips the right padding, gives open_flamingo's own logits at
    every real token and the same gradients, on a batch of unequal lengths (same image count: its forward needs it)."""
    from lever_lm.data import load_image
    from lever_lm.lvlm.flamingo import assemble_prompt, distinct_images
    from lever_lm.toy.pretrain import _FlamingoTrainer

    torch.manual_seed(0)
    torch.set_num_threads(1)
    train = toy_records["train"]
    trainer = _FlamingoTrainer(list(train["question"]) + toy_vocabulary(), SMALL_FLAMINGO, 0, list(train["image_path"]))
    with torch.no_grad():
        for layer in trainer.model.lang_encoder.gated_cross_attn_layers:
            if layer is not None:  # open the tanh gates: at init (0) the cross-attention would not show
                layer.attn_gate.fill_(0.7)
                layer.ff_gate.fill_(0.7)
    cfg = PretrainConfig(steps=1, batch_size=64, max_demos=2)
    prompts = [p for p in pretraining_prompts(toy_items(train), cfg, np.random.default_rng(3)) if len(p.demos) == 2]
    prompts = prompts[:4]
    assembled = [assemble_prompt(p, trainer.tokenizer, with_answer=True) for p in prompts]
    lengths = [len(a.input_ids) for a in assembled]
    assert len(prompts) == 4 and len(set(lengths)) > 1  # unequal lengths: right padding to skip
    input_ids, attention_mask = trainer.pad_right(assembled)
    real = attention_mask.bool()
    weights = torch.randn(int(real.sum()), trainer.model.lang_encoder.config.vocab_size)
    params = [p for p in trainer.model.parameters() if p.requires_grad]

    def logits_and_grads(logits):
        (logits[real] * weights).sum().backward()
        grads = [p.grad.clone() for p in params]
        trainer.model.zero_grad(set_to_none=True)
        return logits[real].detach(), grads

    paths, index = distinct_images([a.image_paths for a in assembled])
    media = torch.stack([trainer.latents[p] for p in paths])
    ours, our_grads = logits_and_grads(trainer._logits(input_ids, attention_mask, media, index))
    pixels = torch.stack(
        [torch.stack([trainer.tiny.image_processor(load_image(p)) for p in a.image_paths]) for a in assembled]
    )
    theirs, their_grads = logits_and_grads(
        trainer.model(vision_x=pixels[:, :, None], lang_x=input_ids, attention_mask=attention_mask).logits
    )
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-4)
    assert sum(g.abs().sum() for g in their_grads) > 0
    for ours_grad, theirs_grad in zip(our_grads, their_grads):
        torch.testing.assert_close(ours_grad, theirs_grad, atol=1e-5, rtol=1e-4)


def test_qwen_frozen_vision_gives_the_models_own_forward_and_keeps_the_tower_at_init(toy_records, tmp_path):
    """``vision: frozen``: the cached features in the image-token slots and the host's 3-D rope positions give the
    hidden states of the model's own forward over the pixels (right-padded rows of unequal image counts); the loss
    reaches no vision weight, so the saved tower is the seeded init while the language model moved."""
    import dataclasses

    from lever_lm.toy.pretrain import _QwenTrainer

    torch.set_num_threads(1)
    train = toy_records["train"]
    words, paths = list(train["question"]) + toy_vocabulary(), list(train["image_path"])
    trainer = _QwenTrainer(words, SMALL_QWEN, 0, paths, frozen_vision=True)
    reference = _QwenTrainer(words, SMALL_QWEN, 0, paths)  # same seed: the same weights, vision trained
    prompts = pretraining_prompts(toy_items(train), QUICK, np.random.default_rng(7), count=6)
    assert len({len(p.demos) for p in prompts}) > 1
    assembled = [trainer.adapter.assemble(p, trainer.counts, for_generation=False) for p in prompts]
    input_ids, attention_mask = trainer.adapter.pad_batch([a.input_ids for a in assembled], left=False)
    with torch.no_grad():
        ours = trainer._hidden_from_features(assembled, input_ids, attention_mask)
        image_paths = [p for a in assembled for p in a.image_paths]
        pixel_values, grid_thw = reference.adapter.preprocess_images(image_paths)
        theirs = reference.adapter.hidden_states(input_ids, attention_mask, pixel_values, grid_thw)
    real = attention_mask.bool()
    torch.testing.assert_close(ours[real], theirs[real], atol=1e-5, rtol=1e-4)

    frozen = dataclasses.replace(QUICK, vision="frozen")
    pretrain_tiny_lvlm("qwen2_5_vl", SMALL_QWEN, frozen, train, str(tmp_path / "frozen"), seed=0)
    saved = load_tiny_dir("qwen2_5_vl", tmp_path / "frozen", precision="fp32").model.state_dict()
    init = reference.model.state_dict()
    vision = [k for k in init if ".visual." in f".{k}"]
    assert vision and all(torch.equal(saved[k], init[k]) for k in vision)
    assert [k for k in init if k not in vision and not torch.equal(saved[k], init[k])]


def test_pretraining_vision_key_is_checked_per_family():
    assert PretrainConfig.from_config({"vision": "frozen"}).vision_frozen("qwen2_5_vl")
    assert not PretrainConfig.from_config({}).vision_frozen("qwen2_5_vl")
    assert PretrainConfig.from_config({}).vision_frozen("flamingo")
    with pytest.raises(ValueError, match=r"config key beam_models\.m\.pretrain\.vision: 'thawed' is not one of"):
        PretrainConfig.from_config({"vision": "thawed"}, "beam_models.m.pretrain")
    entry = {"family": "flamingo", "variant": "tiny", "pretrain": {"steps": 5, "warmup_steps": 1, "vision": "trained"}}
    with pytest.raises(ValueError, match=r"beam_models\.f\.pretrain\.vision: Flamingo's pretraining keeps"):
        parse_config("f", entry)
