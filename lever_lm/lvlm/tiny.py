"""Tiny LVLMs of the real architectures (Qwen2.5-VL, OpenFlamingo) for the toy world: sizes, builders, model dirs.

Public API
- ``QwenTinyDims`` / ``FlamingoTinyDims`` (frozen): the sizes of each tiny model; ``tiny_dims(name, family,
  section)`` builds one from ``beam_models.<name>.tiny`` (unknown or bad fields raise ValueError naming the key).
- ``PretrainConfig`` (frozen): ``PretrainConfig.from_config(section, where)`` from ``beam_models.<name>.pretrain``,
  checked at planning time; the pretraining loop that reads it belongs to the toy world (rule ``tiny_lvlm``).
- ``new_tiny_qwen(words, dims, seed) -> (model, processor)`` and ``save_qwen_dir(out_dir, model, processor)``:
  a seeded random-init ``Qwen2_5_VLForConditionalGeneration`` with a word-level tokenizer and the real chat
  template; the saved dir is a ``save_pretrained`` model + processor dir, loaded by ``qwen.load_qwen_adapter``
  exactly like the 3B model's dir.
- ``new_tiny_flamingo(words, dims, seed) -> TinyFlamingo`` and ``save_flamingo_dir(out_dir, tiny)``: an OpenFlamingo
  (tiny open_clip ViT, tiny HF ``MptForCausalLM``, perceiver and gated cross-attention from open_flamingo's own
  factory); the saved dir has the open_flamingo checkpoint layout (``vision_encoder.pt`` open_clip weights,
  ``lang_encoder/`` HF dir, ``tokenizer/`` HF dir, ``checkpoint.pt`` with the Flamingo-trainable tensors) plus
  ``open_clip_config/`` (the tiny ViT's architecture) and ``flamingo_tiny.json`` (which file is which), loaded by
  ``flamingo.load_flamingo_adapter`` through the same local loader as the 3B model.
- ``build_tiny_model_dir(family, out_dir, words, dims=None, seed=0)``: new + save (random init).
- ``make_tiny_adapter(family, words, dims=None, seed=0, **config_fields)``: build into a temp dir and load through
  the family's local loader (tests, benchmarks).
- ``tiny_vocabulary(texts)``: the word list of a tiny tokenizer: the words of ``texts``, the prompt-template words
  and the Qwen chat-template words (roles, default system prompt), so one list serves both families.

Tiny language model of the Flamingo: HF-native ``MptForCausalLM``, the architecture family of the real flamingo_3B
language model (MPT-1B: ALiBi attention, no position ids, tied embeddings, decoder layers at ``transformer.blocks``
which open_flamingo's layer lookup knows), so the tiny model exercises the same attention/masking behaviour.

Every heavy import (torch, transformers, open_clip, open_flamingo) happens inside functions.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lever_lm.io_utils import atomic_dir
from lever_lm.lvlm.flamingo_blocks import FlamingoBlockSizes, resize_flamingo_blocks

FAMILIES = ("flamingo", "qwen2_5_vl")
PRETRAINING_FILE = "pretraining.json"  # the training summary, in a pretrained model's dir


# ----------------------------------------------------------------------------------------------- sizes


@dataclass(frozen=True)
class QwenTinyDims:
    """Sizes of a tiny Qwen2.5-VL (defaults: ~0.8M parameters; a 56x56 image becomes 4 image tokens)."""

    text_hidden: int = 128
    text_intermediate: int = 256
    text_layers: int = 3
    text_heads: int = 4
    text_kv_heads: int = 2
    mrope_section: tuple[int, int, int] = (4, 6, 6)
    rope_theta: float = 1e4
    max_position_embeddings: int = 4096
    vision_depth: int = 2
    vision_hidden: int = 64
    vision_intermediate: int = 128
    vision_heads: int = 4
    patch_size: int = 14
    spatial_merge_size: int = 2
    temporal_patch_size: int = 2
    image_min_pixels: int = 56 * 56
    image_max_pixels: int = 56 * 56

    def validate(self, where: str = "dims") -> None:
        head_dim, remainder = divmod(self.text_hidden, self.text_heads)
        if remainder or self.text_heads % self.text_kv_heads:
            raise ValueError(f"{where}: text_hidden must divide by text_heads, text_heads by text_kv_heads")
        if sum(self.mrope_section) * 2 != head_dim:
            raise ValueError(
                f"{where}.mrope_section: must sum to head_dim/2 = {head_dim // 2}, got {list(self.mrope_section)}"
            )
        if self.vision_hidden % self.vision_heads:
            raise ValueError(f"{where}: vision_hidden must divide by vision_heads")


@dataclass(frozen=True)
class FlamingoTinyDims(FlamingoBlockSizes):
    """Sizes of the tiny OpenFlamingo. Defaults keep a forward of a small batch well under 1 s on one CPU core.

    The perceiver's and the gated cross-attention blocks' sizes are the inherited ``FlamingoBlockSizes`` fields,
    open_flamingo's by default (8 heads x 64, 64 latents, 6 perceiver layers); ``resize_flamingo_blocks`` builds
    others.
    """

    lang_width: int = 32
    lang_layers: int = 2
    lang_heads: int = 4
    max_seq_len: int = 512
    vision_width: int = 32
    vision_layers: int = 1
    vision_head_width: int = 16
    image_size: int = 28
    patch_size: int = 14
    clip_embed_dim: int = 16
    init_std: float = 0.3  # random init: large enough that scores depend visibly on the context (tests need that)

    def block_sizes(self) -> FlamingoBlockSizes:
        return FlamingoBlockSizes.from_mapping(dataclasses.asdict(self))

    def validate(self, where: str = "dims") -> None:
        if self.lang_width % self.lang_heads:
            raise ValueError(f"{where}: lang_width must divide by lang_heads")
        if self.vision_width % self.vision_head_width:
            raise ValueError(f"{where}: vision_width must divide by vision_head_width")
        if self.image_size % self.patch_size:
            raise ValueError(f"{where}: image_size must divide by patch_size")


@dataclass(frozen=True)
class PretrainConfig:
    """Pretraining of a tiny LVLM (``beam_models.<name>.pretrain``); the toy world's pretraining loop reads it."""

    steps: int = 1000
    batch_size: int = 32
    lr: float = 3e-3
    warmup_steps: int = 50
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    max_demos: int = 4
    shared_convention_p: float = 0.5
    reply_p: float = 0.5
    seed: int = 0
    log_every: int = 50
    precision: str = "fp32"  # or "bf16": autocast of the forward, see pretrain_tiny_lvlm
    vision: str | None = None  # None: the family's own ("trained" for Qwen, "frozen" for Flamingo)

    @classmethod
    def from_config(
        cls, section: Mapping[str, Any] | None, where: str = "beam_models.<model>.pretrain"
    ) -> PretrainConfig:
        """From ``beam_models.<name>.pretrain`` (``where`` names it so), validated against the config schema, which
        holds the fields' types and bounds (``lever_lm.config.validate_section``; errors name the key: ``config key
        beam_models.m.pretrain.lr: ...``). The defaults are the dataclass's: a schema default would add them to the
        model entry, which the rules' params and the digests hold."""
        from lever_lm.config import validate_section

        model = where.removeprefix("beam_models.").removesuffix(".pretrain")  # a model's name may hold dots
        section = validate_section(("beam_models", model, "pretrain"), section)
        ints = {f.name for f in dataclasses.fields(cls) if f.type in ("int", int)}
        cfg = cls(**{key: int(value) if key in ints else value for key, value in section.items()})
        if cfg.warmup_steps >= cfg.steps:
            raise ValueError(f"{where}.warmup_steps: must be in [0, steps), got {cfg.warmup_steps!r}")
        return cfg

    def vision_frozen(self, family: str, where: str = "beam_models.<model>.pretrain") -> bool:
        """Whether pretraining keeps the vision side at its seeded init: always for Flamingo (its trainer caches the
        perceiver's output), for Qwen with ``vision: frozen``."""
        if family == "flamingo":
            if self.vision == "trained":
                raise ValueError(
                    f"{where}.vision: Flamingo's pretraining keeps its vision encoder and perceiver frozen; "
                    "use frozen or leave the key out"
                )
            return True
        return self.vision == "frozen"


_DIMS = {"qwen2_5_vl": QwenTinyDims, "flamingo": FlamingoTinyDims}


def tiny_dims(name: str, family: str, section: Mapping[str, Any] | None) -> QwenTinyDims | FlamingoTinyDims:
    """The sizes from ``beam_models.<name>.tiny`` (defaults for absent fields)."""
    where = f"beam_models.{name}.tiny"
    if family not in _DIMS:
        raise ValueError(f"beam_models.{name}.family: {family!r} is not one of {sorted(_DIMS)}")
    section = dict(section or {})
    if not isinstance(section, dict):
        raise ValueError(f"{where}: expected a mapping")
    cls = _DIMS[family]
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(section) - set(fields))
    if unknown:
        raise ValueError(f"{where}: unknown field(s) {unknown}; allowed: {sorted(fields)}")
    for key, value in section.items():
        if key == "mrope_section":
            if not (isinstance(value, (list, tuple)) and len(value) == 3 and all(isinstance(v, int) for v in value)):
                raise ValueError(f"{where}.mrope_section: expected 3 integers, got {value!r}")
            section[key] = tuple(value)
            continue
        wanted = float if fields[key].type in ("float", float) else int
        if (
            isinstance(value, bool)
            or not isinstance(value, (int, float))
            or value <= 0
            or (wanted is int and not isinstance(value, int))
        ):
            raise ValueError(f"{where}.{key}: expected a positive {wanted.__name__}, got {value!r}")
    dims = cls(**section)
    dims.validate(where)
    return dims


# ----------------------------------------------------------------------------------------------- vocabulary


def tiny_vocabulary(texts: Iterable[str]) -> list[str]:
    """Sorted words of ``texts`` plus the prompt-template and Qwen chat-template words."""
    from lever_lm.lvlm.qwen import DEFAULT_SYSTEM_PROMPT
    from lever_lm.lvlm.tiny_tokenizer import collect_vocabulary

    return collect_vocabulary([*texts, DEFAULT_SYSTEM_PROMPT, "system user assistant"])


def _write_extra(staging: Path, extra: Mapping[str, Any] | None) -> None:
    if extra is not None:
        (staging / PRETRAINING_FILE).write_text(json.dumps(extra, indent=1, sort_keys=True), encoding="utf-8")


# ----------------------------------------------------------------------------------------------- Qwen2.5-VL


def new_tiny_qwen(words: Sequence[str], dims: QwenTinyDims | None = None, seed: int = 0):
    """A seeded random-init tiny ``Qwen2_5_VLForConditionalGeneration`` and its ``Qwen2_5_VLProcessor``."""
    import torch
    from transformers import (
        GenerationConfig,
        Qwen2_5_VLConfig,
        Qwen2_5_VLForConditionalGeneration,
        Qwen2_5_VLProcessor,
        Qwen2TokenizerFast,
        Qwen2VLImageProcessor,
    )
    from transformers.models.qwen2_vl.video_processing_qwen2_vl import Qwen2VLVideoProcessor

    from lever_lm.lvlm.qwen import END_TOKEN, IMAGE_TOKEN, QWEN2_5_VL_CHAT_TEMPLATE, QWEN_SPECIAL_TOKENS
    from lever_lm.lvlm.tiny_tokenizer import build_word_tokenizer

    dims = dims or QwenTinyDims()
    dims.validate()
    word_tokenizer = build_word_tokenizer(tiny_vocabulary(words), QWEN_SPECIAL_TOKENS)
    tokenizer = Qwen2TokenizerFast(
        tokenizer_object=word_tokenizer,
        unk_token="<unk>",
        eos_token=END_TOKEN,
        pad_token="<|endoftext|>",
        bos_token=None,
        chat_template=QWEN2_5_VL_CHAT_TEMPLATE,
    )
    token_id = tokenizer.convert_tokens_to_ids
    image_processor = Qwen2VLImageProcessor(
        min_pixels=dims.image_min_pixels,
        max_pixels=dims.image_max_pixels,
        patch_size=dims.patch_size,
        temporal_patch_size=dims.temporal_patch_size,
        merge_size=dims.spatial_merge_size,
    )
    video_processor = Qwen2VLVideoProcessor(
        patch_size=dims.patch_size, temporal_patch_size=dims.temporal_patch_size, merge_size=dims.spatial_merge_size
    )
    processor = Qwen2_5_VLProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        video_processor=video_processor,
        chat_template=QWEN2_5_VL_CHAT_TEMPLATE,
    )
    config = Qwen2_5_VLConfig(
        text_config=dict(
            vocab_size=len(tokenizer),
            hidden_size=dims.text_hidden,
            intermediate_size=dims.text_intermediate,
            num_hidden_layers=dims.text_layers,
            num_attention_heads=dims.text_heads,
            num_key_value_heads=dims.text_kv_heads,
            max_position_embeddings=dims.max_position_embeddings,
            max_window_layers=dims.text_layers,
            rope_theta=dims.rope_theta,
            rope_scaling={"type": "mrope", "mrope_section": list(dims.mrope_section)},
            tie_word_embeddings=True,
            bos_token_id=None,
            eos_token_id=token_id(END_TOKEN),
        ),
        vision_config=dict(
            depth=dims.vision_depth,
            hidden_size=dims.vision_hidden,
            intermediate_size=dims.vision_intermediate,
            num_heads=dims.vision_heads,
            patch_size=dims.patch_size,
            spatial_merge_size=dims.spatial_merge_size,
            temporal_patch_size=dims.temporal_patch_size,
            window_size=dims.patch_size * dims.spatial_merge_size * 4,
            out_hidden_size=dims.text_hidden,
            fullatt_block_indexes=[dims.vision_depth - 1],
        ),
        image_token_id=token_id(IMAGE_TOKEN),
        video_token_id=token_id("<|video_pad|>"),
        vision_start_token_id=token_id("<|vision_start|>"),
        vision_end_token_id=token_id("<|vision_end|>"),
        tie_word_embeddings=True,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = Qwen2_5_VLForConditionalGeneration(config).eval()
    model.generation_config = GenerationConfig(
        eos_token_id=[token_id(END_TOKEN), token_id("<|endoftext|>")],
        pad_token_id=token_id("<|endoftext|>"),
        do_sample=False,
    )
    return model, processor


def save_qwen_dir(out_dir: str | os.PathLike, model, processor, extra: Mapping[str, Any] | None = None) -> None:
    """``save_pretrained`` of model and processor into ``out_dir`` atomically (+ ``extra`` as ``pretraining.json``)."""
    with atomic_dir(out_dir) as staging:
        model.save_pretrained(staging, safe_serialization=True)
        processor.save_pretrained(staging)
        _write_extra(staging, extra)


# ----------------------------------------------------------------------------------------------- OpenFlamingo


@dataclass
class TinyFlamingo:
    """An in-memory tiny OpenFlamingo with everything ``save_flamingo_dir`` needs to write its checkpoint layout."""

    model: Any  # open_flamingo Flamingo
    image_processor: Any
    tokenizer: Any
    dims: FlamingoTinyDims
    seed: int
    clip_state: dict  # the full open_clip CLIP state dict (the visual tower is model.vision_encoder)
    lm_config: Any  # the MptConfig of the language model
    trainable_names: tuple[str, ...]  # Flamingo-trainable tensors (perceiver, gated cross-attn, embeddings)


def _tiny_open_clip_config(dims: FlamingoTinyDims) -> dict:
    return {
        "embed_dim": dims.clip_embed_dim,
        "vision_cfg": {
            "image_size": dims.image_size,
            "layers": dims.vision_layers,
            "width": dims.vision_width,
            "head_width": dims.vision_head_width,
            "patch_size": dims.patch_size,
        },
        # CLIP always builds a text tower; Flamingo never uses it, so it stays minimal
        "text_cfg": {"context_length": 8, "vocab_size": 16, "width": 16, "heads": 2, "layers": 1},
    }


def _flamingo_tokenizer(words: Sequence[str]):
    from transformers import PreTrainedTokenizerFast

    from lever_lm.lvlm.flamingo import END_OF_CHUNK_TOKEN, IMAGE_TOKEN
    from lever_lm.lvlm.tiny_tokenizer import PAD_TOKEN, UNK_TOKEN, build_word_tokenizer

    backend = build_word_tokenizer(words, special_tokens=[IMAGE_TOKEN, END_OF_CHUNK_TOKEN])
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        pad_token=PAD_TOKEN,
        unk_token=UNK_TOKEN,
        additional_special_tokens=[END_OF_CHUNK_TOKEN, IMAGE_TOKEN],
    )


_FLAMINGO_FILES = {
    "vision_encoder_path": "vision_encoder.pt",
    "lang_encoder_path": "lang_encoder",
    "tokenizer_path": "tokenizer",
    "checkpoint_path": "checkpoint.pt",
}


def new_tiny_flamingo(words: Sequence[str], dims: FlamingoTinyDims | None = None, seed: int = 0) -> TinyFlamingo:
    """A seeded tiny OpenFlamingo built by open_flamingo's own factory from freshly written tiny parts."""
    import contextlib
    import io

    import open_clip
    import torch
    from open_flamingo import create_model_and_transforms
    from transformers import MptConfig, MptForCausalLM

    from lever_lm.lvlm.flamingo import (
        END_OF_CHUNK_TOKEN,
        TINY_OPEN_CLIP_CONFIG_DIR,
        TINY_VISION_NAME,
        trainable_tensor_aliases,
    )

    dims = dims or FlamingoTinyDims()
    dims.validate()
    words = list(words)
    if not words:
        raise ValueError("new_tiny_flamingo: empty word list")
    scratch = Path(tempfile.mkdtemp(prefix="lever_tiny_flamingo_"))
    try:
        clip_dir = scratch / TINY_OPEN_CLIP_CONFIG_DIR
        clip_dir.mkdir()
        (clip_dir / f"{TINY_VISION_NAME}.json").write_text(json.dumps(_tiny_open_clip_config(dims), indent=1))
        open_clip.add_model_config(clip_dir)
        tokenizer = _flamingo_tokenizer(tiny_vocabulary(words))
        tokenizer.save_pretrained(scratch / "tokenizer")
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            clip_state = open_clip.create_model(TINY_VISION_NAME, pretrained=None).state_dict()
            torch.save(clip_state, scratch / "vision_encoder.pt")
            lm_config = MptConfig(
                d_model=dims.lang_width,
                n_heads=dims.lang_heads,
                n_layers=dims.lang_layers,
                expansion_ratio=4,
                max_seq_len=dims.max_seq_len,
                vocab_size=len(tokenizer),
                initializer_range=dims.init_std,
                no_bias=True,
                use_cache=True,
                pad_token_id=tokenizer.pad_token_id,
                eos_token_id=tokenizer.convert_tokens_to_ids(END_OF_CHUNK_TOKEN),
                bos_token_id=None,
            )
            MptForCausalLM(lm_config).save_pretrained(scratch / "lang_encoder", safe_serialization=True)
            with contextlib.redirect_stdout(io.StringIO()):  # the factory prints a parameter count
                model, image_processor, tokenizer = create_model_and_transforms(
                    clip_vision_encoder_path=TINY_VISION_NAME,
                    clip_vision_encoder_pretrained=str(scratch / "vision_encoder.pt"),
                    lang_encoder_path=str(scratch / "lang_encoder"),
                    tokenizer_path=str(scratch / "tokenizer"),
                    cross_attn_every_n_layers=1,
                    use_local_files=True,
                )
            resize_flamingo_blocks(model, dims.block_sizes())
            for layer in model.lang_encoder.gated_cross_attn_layers:
                # open_flamingo starts the gates at 0 (images ignored); non-zero gates make images matter
                layer.attn_gate.data.uniform_(0.5, 1.0)
                layer.ff_gate.data.uniform_(0.5, 1.0)
        trainable = tuple(name for names in trainable_tensor_aliases(model).values() for name in names)
        return TinyFlamingo(model, image_processor, tokenizer, dims, seed, clip_state, lm_config, trainable)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _mpt_state_dict(model) -> dict:
    """The language model's own (MPT) tensors from a Flamingo state dict: decoder blocks sit under
    ``old_decoder_blocks`` there (open_flamingo wraps ``transformer.blocks`` in FlamingoLayers)."""
    state = model.state_dict()
    lang = {}
    for key, value in state.items():
        if not key.startswith("lang_encoder."):
            continue
        name = key[len("lang_encoder.") :]
        if name.startswith(("transformer.blocks.", "gated_cross_attn_layers.")):  # FlamingoLayer wrappers, cross-attn
            continue
        if name.startswith("old_decoder_blocks."):
            name = "transformer.blocks." + name[len("old_decoder_blocks.") :]
        lang[name] = value
    return lang


def save_flamingo_dir(out_dir: str | os.PathLike, tiny: TinyFlamingo, extra: Mapping[str, Any] | None = None) -> None:
    """Write ``tiny`` in the open_flamingo checkpoint layout (see the module docstring), atomically
    (+ ``extra`` as ``pretraining.json``)."""
    import torch
    from transformers import MptForCausalLM

    from lever_lm.lvlm.flamingo import TINY_INFO_FILE, TINY_OPEN_CLIP_CONFIG_DIR, TINY_VISION_NAME

    with atomic_dir(out_dir) as staging:
        clip_dir = staging / TINY_OPEN_CLIP_CONFIG_DIR
        clip_dir.mkdir()
        (clip_dir / f"{TINY_VISION_NAME}.json").write_text(json.dumps(_tiny_open_clip_config(tiny.dims), indent=1))
        tiny.tokenizer.save_pretrained(staging / _FLAMINGO_FILES["tokenizer_path"])
        # open_clip weights file: the whole CLIP, its visual tower as trained inside Flamingo
        visual = {f"visual.{k}": v.detach().clone() for k, v in tiny.model.vision_encoder.state_dict().items()}
        clip_state = {**tiny.clip_state, **visual}
        torch.save(clip_state, staging / _FLAMINGO_FILES["vision_encoder_path"])
        lm = MptForCausalLM(tiny.lm_config)
        lm.resize_token_embeddings(len(tiny.tokenizer))
        missing, unexpected = lm.load_state_dict(_mpt_state_dict(tiny.model), strict=False)
        missing = [m for m in missing if m != "lm_head.weight"]  # tied to the input embeddings
        if missing or unexpected:
            raise RuntimeError(
                f"save_flamingo_dir: language model tensors do not map (missing {missing[:3]}, "
                f"unexpected {unexpected[:3]})"
            )
        lm.save_pretrained(staging / _FLAMINGO_FILES["lang_encoder_path"], safe_serialization=True)
        state = tiny.model.state_dict()
        torch.save(
            {name: state[name].detach().clone() for name in tiny.trainable_names},
            staging / _FLAMINGO_FILES["checkpoint_path"],
        )
        info = {
            "vision_encoder_name": TINY_VISION_NAME,
            "cross_attn_every_n_layers": 1,
            "seed": tiny.seed,
            "dims": dataclasses.asdict(tiny.dims),
            "files": _FLAMINGO_FILES,
            "n_words": len(tiny.tokenizer),
        }
        (staging / TINY_INFO_FILE).write_text(json.dumps(info, indent=1, sort_keys=True), encoding="utf-8")
        _write_extra(staging, extra)


# ----------------------------------------------------------------------------------------------- both families


def build_tiny_model_dir(
    family: str, out_dir: str | os.PathLike, words: Sequence[str], dims=None, seed: int = 0
) -> None:
    """Materialise a random-init tiny model of ``family`` at ``out_dir`` (deterministic in ``seed``)."""
    if family == "qwen2_5_vl":
        save_qwen_dir(out_dir, *new_tiny_qwen(words, dims, seed))
    elif family == "flamingo":
        save_flamingo_dir(out_dir, new_tiny_flamingo(words, dims, seed))
    else:
        raise ValueError(f"unknown LVLM family {family!r}; expected one of {FAMILIES}")


def load_tiny_dir(family: str, model_dir: str | os.PathLike, name: str | None = None, **config_fields: Any):
    """Load a tiny model dir through the family's local loader (``config_fields``: further adapter config fields)."""
    entry = {"variant": "tiny", **config_fields}
    if family == "qwen2_5_vl":
        from lever_lm.lvlm.qwen import config_from_dict, load_qwen_adapter

        return load_qwen_adapter(config_from_dict(name or "qwen_tiny", {**entry, "model_path": str(model_dir)}))
    if family == "flamingo":
        from lever_lm.lvlm.flamingo import config_from_dict, load_flamingo_adapter

        return load_flamingo_adapter(config_from_dict(name or "tiny_flamingo", {**entry, "model_dir": str(model_dir)}))
    raise ValueError(f"unknown LVLM family {family!r}; expected one of {FAMILIES}")


def make_tiny_adapter(family: str, words: Sequence[str], dims=None, seed: int = 0, **config_fields: Any):
    """Build a random-init tiny model in a temp dir and load it through the local loader (tests, benchmarks)."""
    tmp_root = Path(tempfile.mkdtemp(prefix=f"lever_tiny_{family}_"))
    try:
        build_tiny_model_dir(family, tmp_root / "model", words, dims, seed)
        return load_tiny_dir(family, tmp_root / "model", seed=seed, **config_fields)
    finally:
        shutil.rmtree(tmp_root, ignore_errors=True)  # weights stay in memory


def sharpen_weights(adapter, std: float = 0.15, seed: int = 1):
    """Redraw a random-init model's weights (not its norms) larger: random init answers near-uniformly, and
    larger weights make outputs depend strongly on the prompt, so a wrong cache or position shows in tests."""
    import torch

    torch.manual_seed(seed)
    with torch.no_grad():
        for name, parameter in adapter.model.named_parameters():
            if "norm" not in name:
                parameter.normal_(0.0, std)
    return adapter
