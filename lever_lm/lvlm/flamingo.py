"""OpenFlamingo adapter: loading (real local weights, or a tiny model dir in the same layout), prompt, scoring,
generation.

Public API
- ``FlamingoConfig``: frozen config; ``config_from_dict(name, entry)`` builds one from the validated YAML entry
  ``beam_models.<name>`` (unknown fields are rejected, naming them; a tiny variant's ``tiny``/``pretrain`` fields are
  the factory's business, see ``lever_lm.lvlm.factory``).
- ``load_flamingo_adapter(config) -> FlamingoAdapter``: loads through ``open_flamingo.create_model_and_transforms``
  from local paths only, then ``checkpoint.pt`` (every Flamingo-trainable tensor must be in it). ``variant: tiny``
  reads the same four paths from a tiny model dir (``model_dir``, built by ``lever_lm.lvlm.tiny``), whose
  ``flamingo_tiny.json`` names them and whose ``open_clip_config/`` holds the tiny ViT's architecture; its recorded
  perceiver and cross-attention sizes are rebuilt before ``checkpoint.pt`` loads (``flamingo_blocks``).
- ``assemble_prompt(prompt, tokenizer, with_answer)``: the ONE prompt assembly, used by score, score_naive, generate
  and the tiny model's pretraining.
- ``FlamingoAdapter``: ``score`` (fast path: vision cache, batching, prefix key/value reuse, see ``flamingo_fast``),
  ``score_naive`` (upstream-style reference), ``generate``, ``clear_cache``, and the counters
  ``vision_encoder_calls`` and ``text_tokens_computed`` (non-pad tokens run through the language model).
- ``trainable_tensor_aliases(model)``: the Flamingo-trainable tensors and their state-dict names (what
  ``checkpoint.pt`` holds; the tiny builders write the same set).
- ``generation_cross_attention(attns, media, index)``: a context in which the gated cross-attention runs each token
  against its own image's latents only (scoring's fast path and generation here, the tiny model's pretraining too);
  ``distinct_images(image_lists)`` builds its media table's paths and index.

Prompt (docs/stages.md stage 4): each ICD ``<image>Question:{q} Short answer:{a}<|endofchunk|>``, then the query
``<image>Question:{q} Short answer:`` followed, when scoring, by ``{a}<|endofchunk|>``; no BOS; texts stripped.
Answer spans come from character offsets of the tokenised text (``base.answer_token_span``, the rule the Qwen
adapter uses too): every token overlapping the answer, then the ``<|endofchunk|>`` that closes it.
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from lever_lm.data import load_image
from lever_lm.lvlm.base import (
    DEFAULT_MAX_CACHED_IMAGES,
    Example,
    LVLMAdapter,
    LVLMConfigError,
    Prompt,
    VisionFeatureCache,
    WorkCounters,
    answer_token_span,
    build_config,
    plan_image_batches,
    select_device_dtype,
    vision_token_budget,
)
from lever_lm.lvlm.flamingo_blocks import FlamingoBlockSizes, resize_flamingo_blocks
from lever_lm.lvlm.kv_pool import KVPool

log = logging.getLogger(__name__)

IMAGE_TOKEN = "<image>"
END_OF_CHUNK_TOKEN = "<|endofchunk|>"
TINY_INFO_FILE = "flamingo_tiny.json"
TINY_OPEN_CLIP_CONFIG_DIR = "open_clip_config"
TINY_VISION_NAME = "lever-tiny-flamingo-vit"
FAMILY = "flamingo"


# ----------------------------------------------------------------------------------------------- config


@dataclass(frozen=True)
class FlamingoConfig:
    name: str
    variant: str  # "local" | "tiny"
    vision_encoder_name: str | None = None  # open_clip architecture, "ViT-L-14" for flamingo_3B
    vision_encoder_path: str | None = None  # local open_clip weights file (clip_vision_encoder_pretrained)
    lang_encoder_path: str | None = None  # local HF dir
    tokenizer_path: str | None = None  # local HF dir
    checkpoint_path: str | None = None  # OpenFlamingo checkpoint.pt
    cross_attn_every_n_layers: int = 1
    decoder_layers_attr_name: str | None = None
    precision: str = "auto"
    score_batch_size: int = 32
    #: padded LM tokens per scoring batch (rows x longest continuation), None: ``score_batch_size`` rows alone
    score_token_budget: int | None = None
    #: image patch tokens per vision-encoder forward (the fast path packs a whole beam step's new images into few)
    vision_token_budget: int | None = None  # None: the device's default (base.DEFAULT_VISION_TOKEN_BUDGET)
    max_cached_prefixes: int = 1024  # key/value blocks kept until clear_cache (least recently used dropped first)
    max_cached_images: int = DEFAULT_MAX_CACHED_IMAGES  # perceiver latents kept across beam-search queries
    seed: int = 0
    model_dir: str | None = None  # tiny: a tiny model dir (lever_lm.lvlm.tiny); every path derives from it

    def key(self, field_name: str) -> str:
        return f"beam_models.{self.name}.{field_name}"


LOCAL_PATH_FIELDS = ("vision_encoder_path", "lang_encoder_path", "tokenizer_path", "checkpoint_path")


def config_from_dict(name: str, entry: Mapping[str, Any]) -> FlamingoConfig:
    """Build a ``FlamingoConfig`` from ``beam_models.<name>`` (``lever_lm.lvlm.base.build_config``: validated against
    the config schema, errors naming the key; ``family``, if present, must be ``flamingo``; the dataclass's defaults);
    variant 'local' needs its paths."""
    config = build_config(FlamingoConfig, FAMILY, name, entry)
    _check_variant_fields(config)
    return config


def _check_variant_fields(config: FlamingoConfig) -> None:
    """Variant 'local' needs its paths (which fields a variant needs is not the schema's). A tiny variant's model_dir
    is checked at load time: the pipeline builds the dir from this same config."""
    if config.variant == "local":
        missing = [f for f in (*LOCAL_PATH_FIELDS, "vision_encoder_name") if not getattr(config, f)]
        if missing:
            raise ValueError(f"{config.key(missing[0])}: required for variant 'local' (missing: {', '.join(missing)})")


@dataclass(frozen=True)
class _ResolvedPaths:
    """Concrete files to load, each with the config key to name in errors."""

    vision_encoder_name: str
    vision_encoder_path: tuple[str, str]
    lang_encoder_path: tuple[str, str]
    tokenizer_path: tuple[str, str]
    checkpoint_path: tuple[str, str]
    open_clip_config_dir: str | None
    cross_attn_every_n_layers: int
    block_sizes: FlamingoBlockSizes = FlamingoBlockSizes()
    # tiny tokenizers are built with <image>/<|endofchunk|>; a real LM's tokenizer gets them from open_flamingo
    tokenizer_needs_special_tokens: bool = False


def _resolve_paths(config: FlamingoConfig) -> _ResolvedPaths:
    if config.variant == "local":
        return _ResolvedPaths(
            vision_encoder_name=config.vision_encoder_name,
            **{f: (getattr(config, f), config.key(f)) for f in LOCAL_PATH_FIELDS},
            open_clip_config_dir=None,
            cross_attn_every_n_layers=config.cross_attn_every_n_layers,
        )
    key = config.key("model_dir")
    if not config.model_dir:
        raise LVLMConfigError(f"{key}: required to load variant 'tiny' (a tiny model dir, built by lever_lm.lvlm.tiny)")
    model_dir = Path(config.model_dir)
    info_path = model_dir / TINY_INFO_FILE
    if not info_path.is_file():
        raise LVLMConfigError(f"{key}: {model_dir} is not a tiny Flamingo dir (no {TINY_INFO_FILE})")
    info = json.loads(info_path.read_text(encoding="utf-8"))
    return _ResolvedPaths(
        vision_encoder_name=info["vision_encoder_name"],
        **{f: (str(model_dir / info["files"][f]), f"{key} ({f})") for f in LOCAL_PATH_FIELDS},
        open_clip_config_dir=str(model_dir / TINY_OPEN_CLIP_CONFIG_DIR),
        cross_attn_every_n_layers=int(info["cross_attn_every_n_layers"]),
        block_sizes=FlamingoBlockSizes.from_mapping(info.get("dims", {})),
        tokenizer_needs_special_tokens=True,
    )


def check_local_files(config: FlamingoConfig) -> None:
    """A variant 'local' entry's files exist and look complete (LVLMConfigError naming the key); loads nothing."""
    if config.variant == "local":
        _check_paths(_resolve_paths(config))


def _check_paths(paths: _ResolvedPaths) -> None:
    """Missing or incomplete local paths -> LVLMConfigError naming the key and the path (before any loading)."""
    for path, key in (paths.vision_encoder_path, paths.checkpoint_path):
        if not Path(path).is_file():
            raise LVLMConfigError(f"{key}: file not found: {path}")
    lang_dir, key = paths.lang_encoder_path
    if not Path(lang_dir).is_dir():
        raise LVLMConfigError(f"{key}: directory not found: {lang_dir}")
    if not (Path(lang_dir) / "config.json").is_file():
        raise LVLMConfigError(f"{key}: {lang_dir} has no config.json")
    weights = [
        p for pattern in ("*.safetensors", "*.bin", "*.safetensors.index.json") for p in Path(lang_dir).glob(pattern)
    ]
    if not weights:
        raise LVLMConfigError(f"{key}: {lang_dir} has no weights (*.safetensors or *.bin)")
    tok_dir, key = paths.tokenizer_path
    if not Path(tok_dir).is_dir():
        raise LVLMConfigError(f"{key}: directory not found: {tok_dir}")
    tokenizer_files = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "tokenizer.model")
    if not any((Path(tok_dir) / f).is_file() for f in tokenizer_files):
        raise LVLMConfigError(f"{key}: {tok_dir} has no tokenizer files ({', '.join(tokenizer_files)})")


# ----------------------------------------------------------------------------------------------- loading


def _read_checkpoint(path: str, key: str) -> dict:
    import pickle

    import torch

    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, AttributeError, EOFError, ValueError) as err:
        # never fall back to a full pickle: unpickling arbitrary objects runs code from the file
        from lever_lm.errors import torch_load_reason

        raise LVLMConfigError(
            f"{key}: {path} refused by torch.load(weights_only=True): {torch_load_reason(err)}"
        ) from None
    if isinstance(state, dict) and "model_state_dict" in state:
        state = state["model_state_dict"]
    if not isinstance(state, dict):
        raise LVLMConfigError(f"{key}: {path} does not hold a state dict")
    return {(k[len("module.") :] if k.startswith("module.") else k): v for k, v in state.items()}


def trainable_tensor_aliases(model) -> dict[int, list[str]]:
    """Flamingo-trainable tensors (perceiver, gated cross-attn, LM input embeddings) -> all their state-dict names."""
    aliases: dict[int, list[str]] = {}
    for name, param in model.named_parameters(remove_duplicate=False):
        if param.requires_grad:
            aliases.setdefault(id(param), []).append(name)
    return aliases


def _load_checkpoint_into(
    model,
    tokenizer,
    checkpoint: dict,
    path: str,
    key: str,
    missing_specials: list[str],
    tokenizer_path: tuple[str, str],
) -> None:
    own = model.state_dict()
    aliases = trainable_tensor_aliases(model)
    missing, mismatched = [], []
    for names in aliases.values():
        present = [n for n in names if n in checkpoint]
        if not present:
            missing.append(names[0])
            continue
        for n in present:
            if tuple(checkpoint[n].shape) != tuple(own[n].shape):
                mismatched.append(f"{n} {tuple(checkpoint[n].shape)} vs model {tuple(own[n].shape)}")
    embedding_names = {
        n
        for n, p in model.named_parameters(remove_duplicate=False)
        if p is model.lang_encoder.get_input_embeddings().weight
    }
    if missing_specials and any(m.split(" ")[0] in embedding_names for m in mismatched):
        tok_path, tok_key = tokenizer_path
        raise LVLMConfigError(
            f"{tok_key}: tokenizer at {tok_path} lacks the special token(s) {', '.join(missing_specials)}; "
            f"open_flamingo added them at new ids ({len(tokenizer)} tokens), which the checkpoint's embedding table "
            f"does not have ({'; '.join(mismatched[:3])})"
        )
    if mismatched:
        raise LVLMConfigError(
            f"{key}: {path}: shape mismatch for {len(mismatched)} tensor(s): {'; '.join(mismatched[:5])}"
        )
    if missing:
        raise LVLMConfigError(
            f"{key}: {path} lacks {len(missing)} Flamingo-trainable tensor(s), e.g. {', '.join(missing[:5])}"
        )
    unexpected = sorted(set(checkpoint) - set(own))
    if unexpected:
        log.warning("%s: %d checkpoint key(s) not in the model, ignored, e.g. %s", key, len(unexpected), unexpected[:5])
    model.load_state_dict({k: v for k, v in checkpoint.items() if k in own}, strict=False)


def _load_model(paths: _ResolvedPaths, decoder_layers_attr_name: str | None):
    """open_flamingo factory from local files, then checkpoint.pt. Returns (model, image_processor, tokenizer)."""
    import contextlib
    import io

    import open_clip
    from open_flamingo import create_model_and_transforms
    from transformers import AutoTokenizer

    _check_paths(paths)
    if paths.vision_encoder_name == "ViT-L-14":
        log.warning(
            "%s: open_clip builds 'ViT-L-14' with GELU; OpenAI CLIP weights (as in OpenFlamingo-3B) need "
            "'ViT-L-14-quickgelu' when given as a local file",
            paths.vision_encoder_path[1],
        )
    if paths.open_clip_config_dir is not None:
        open_clip.add_model_config(paths.open_clip_config_dir)
    if open_clip.get_model_config(paths.vision_encoder_name) is None:
        raise LVLMConfigError(
            f"{paths.vision_encoder_path[1]}: unknown open_clip architecture {paths.vision_encoder_name!r}"
        )
    tok_dir, _ = paths.tokenizer_path
    raw_tokenizer = AutoTokenizer.from_pretrained(tok_dir, local_files_only=True, trust_remote_code=True)
    missing_specials = [t for t in (IMAGE_TOKEN, END_OF_CHUNK_TOKEN) if t not in raw_tokenizer.get_vocab()]
    if missing_specials and paths.tokenizer_needs_special_tokens:
        raise LVLMConfigError(
            f"{paths.tokenizer_path[1]}: tokenizer at {tok_dir} lacks the special token(s) "
            f"{', '.join(missing_specials)}"
        )
    checkpoint = _read_checkpoint(*paths.checkpoint_path)
    with contextlib.redirect_stdout(io.StringIO()):  # the factory prints a parameter count
        model, image_processor, tokenizer = create_model_and_transforms(
            clip_vision_encoder_path=paths.vision_encoder_name,
            clip_vision_encoder_pretrained=paths.vision_encoder_path[0],
            lang_encoder_path=paths.lang_encoder_path[0],
            tokenizer_path=tok_dir,
            cross_attn_every_n_layers=paths.cross_attn_every_n_layers,
            use_local_files=True,
            decoder_layers_attr_name=decoder_layers_attr_name,
        )
    resize_flamingo_blocks(model, paths.block_sizes)
    checkpoint_file, checkpoint_key = paths.checkpoint_path
    _load_checkpoint_into(
        model, tokenizer, checkpoint, checkpoint_file, checkpoint_key, missing_specials, paths.tokenizer_path
    )
    for token in (IMAGE_TOKEN, END_OF_CHUNK_TOKEN):
        ids = tokenizer.encode(token, add_special_tokens=False)
        if len(ids) != 1:
            raise LVLMConfigError(
                f"{paths.tokenizer_path[1]}: tokenizer at {tok_dir} does not map {token} to one token"
            )
    model.requires_grad_(False)
    model.eval()
    return model, image_processor, tokenizer


def load_flamingo_adapter(config: FlamingoConfig) -> FlamingoAdapter:
    """Load the configured OpenFlamingo (local weights or a materialised tiny dir) behind the adapter interface."""
    _check_variant_fields(config)
    paths = _resolve_paths(config)
    model, image_processor, tokenizer = _load_model(paths, config.decoder_layers_attr_name)
    device, dtype = select_device_dtype(config.precision)
    model.to(device=device, dtype=dtype)
    return FlamingoAdapter(model, image_processor, tokenizer, config, device, dtype)


# ----------------------------------------------------------------------------------------------- prompt


@dataclass(frozen=True)
class AssembledPrompt:
    """Token ids per block (one block per ICD, then the query), the images in order, and where answers sit.

    ``answer_spans[i]`` is (start, end) in the concatenated ids: the answer tokens of the i-th answered example
    (the ICDs in order, then the query when scoring) plus the end-of-chunk token. ``span``: the query's, or None.
    """

    text: str
    block_ids: tuple[tuple[int, ...], ...]
    image_paths: tuple[str, ...]
    answer_spans: tuple[tuple[int, int], ...]
    with_answer: bool

    @property
    def span(self) -> tuple[int, int] | None:
        return self.answer_spans[-1] if self.with_answer else None

    @property
    def input_ids(self) -> list[int]:
        return [t for block in self.block_ids for t in block]


def _describe(example: Example) -> str:
    return f"question {example.question!r} (image {example.image_path})"


def _checked_answer(example: Example, role: str) -> str:
    if example.answer is None:
        raise ValueError(f"{role} without an answer: {_describe(example)}")
    answer = example.answer.strip()
    if not answer:
        raise ValueError(f"{role} with an empty answer: {_describe(example)}")
    return answer


def demo_text(example: Example) -> str:
    answer = _checked_answer(example, "ICD")
    return f"{IMAGE_TOKEN}Question:{example.question.strip()} Short answer:{answer}{END_OF_CHUNK_TOKEN}"


def query_text(example: Example) -> str:
    return f"{IMAGE_TOKEN}Question:{example.question.strip()} Short answer:"


def _tokenise_block(
    text: str, answer_chars: tuple[int, int] | None, tokenizer, example: Example, eoc_id: int
) -> tuple[tuple[int, ...], tuple[int, int] | None]:
    """Ids of one block and, for an answered block, its answer span (block coordinates) by the shared offset rule."""
    if answer_chars is None:
        return tuple(tokenizer(text, add_special_tokens=False)["input_ids"]), None
    encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids = tuple(encoded["input_ids"])
    try:  # a token that merges the ':' with the answer's first characters overlaps the answer: it is part of y
        first, stop = answer_token_span(encoded["offset_mapping"], *answer_chars)
    except ValueError as err:
        raise ValueError(f"cannot locate the answer span of {_describe(example)} in {text!r}: {err}") from None
    if stop != len(ids) - 1 or ids[stop] != eoc_id:
        raise ValueError(f"the answer of {_describe(example)} is not closed by {END_OF_CHUNK_TOKEN} in {text!r}")
    return ids, (first, stop + 1)


def assemble_prompt(prompt: Prompt, tokenizer, with_answer: bool, cache: dict | None = None) -> AssembledPrompt:
    """The one prompt assembly. Each block starts with ``<image>`` and ICDs end with ``<|endofchunk|>``, special
    tokens that split tokenisation, so per-block ids equal the ids of the whole text. Answer spans come from the
    character offsets of each block (``base.answer_token_span``): every token overlapping the answer (a token that
    merges the ``:`` with the answer's first characters included), then the end-of-chunk token.
    ``cache`` (block text -> ids and span) saves re-tokenising ICD blocks that recur across prompts."""
    cache = cache if cache is not None else {}
    eoc_id = tokenizer.convert_tokens_to_ids(END_OF_CHUNK_TOKEN)
    blocks, texts, spans = [], [], []
    offset = 0
    answered = [(demo, True) for demo in prompt.demos] + [(prompt.query, with_answer)]
    for number, (example, has_answer) in enumerate(answered):
        is_query = number == len(prompt.demos)
        head = query_text(example)
        if has_answer:
            answer = _checked_answer(example, "query" if is_query else "ICD")
            text, chars = head + answer + END_OF_CHUNK_TOKEN, (len(head), len(head) + len(answer))
        else:
            text, chars = head, None
        if text not in cache:
            cache[text] = _tokenise_block(text, chars, tokenizer, example, eoc_id)
        ids, span = cache[text]
        if span is not None:
            spans.append((offset + span[0], offset + span[1]))
        blocks.append(ids)
        texts.append(text)
        offset += len(ids)
    images = tuple(d.image_path for d in prompt.demos) + (prompt.query.image_path,)
    return AssembledPrompt("".join(texts), tuple(blocks), images, tuple(spans), with_answer)


# ----------------------------------------------------------------------------------------------- adapter


class FlamingoAdapter(LVLMAdapter):
    """OpenFlamingo behind ``LVLMAdapter``. ``model`` is open_flamingo's ``Flamingo``; everything runs in inference
    mode."""

    def __init__(self, model, image_processor, tokenizer, config: FlamingoConfig, device, dtype):
        self.model = model
        self.image_processor = image_processor
        self.tokenizer = tokenizer
        self.config = config
        self.device = device
        self.dtype = dtype
        self.vision_encoder_calls = 0
        self.text_tokens_computed = 0  # non-pad tokens run through the language model (benchmark counter)
        self.counters = WorkCounters()  # work per scoring call, counted at the call sites (base.WorkCounters)
        self.media_token_id = tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)
        self.eoc_token_id = tokenizer.convert_tokens_to_ids(END_OF_CHUNK_TOKEN)
        self.pad_token_id = tokenizer.pad_token_id
        self._text_ids: dict[str, tuple[int, ...]] = {}
        self._vision_cache = VisionFeatureCache()  # image_path -> perceiver output (latents, dim)
        self._prefix_cache = KVPool(self.counters, config.max_cached_prefixes)
        self._kv_seq_dim: int | None = None  # sequence axis of the language model's key/value tensors

    # -- shared pieces

    def assemble(self, prompt: Prompt, with_answer: bool) -> AssembledPrompt:
        return assemble_prompt(prompt, self.tokenizer, with_answer, self._text_ids)

    def _pixels(self, image_path: str):
        return self.image_processor(load_image(image_path))

    def _encode_images(self, pixels):
        """(N, C, H, W) -> perceiver latents (N, n, d): Flamingo._encode_vision_x with T = F = 1 per image."""
        model = self.model
        tokens = model.vision_encoder(self.counters.to_device(pixels, self.device, self.dtype))[1]
        latents = model.perceiver(tokens[:, None, None])  # (N, 1, n, d)
        self.vision_encoder_calls += pixels.shape[0]
        self.counters["vision_forward_calls"] += 1
        self.counters["vision_images"] += pixels.shape[0]
        self.counters["vision_tokens"] += tokens.shape[0] * tokens.shape[1]
        return latents[:, 0]

    def vision_features(self, image_paths: Sequence[str]) -> dict[str, Any]:
        """Cached perceiver output per distinct image; each new image goes through the encoder once, as many per
        forward as ``vision_token_budget`` patch tokens allow."""
        import torch

        missing = list(dict.fromkeys(p for p in image_paths if p not in self._vision_cache))
        patches = [max(1, self._vision_tokens_per_image())] * len(missing)
        for indices in plan_image_batches(patches, vision_token_budget(self.config.vision_token_budget, self.device)):
            chunk = [missing[i] for i in indices]
            with torch.inference_mode():
                latents = self._encode_images(torch.stack([self._pixels(p) for p in chunk]))
            for path, feats in zip(chunk, latents):
                self._vision_cache[path] = feats
        self._vision_cache.touch(image_paths)
        return {p: self._vision_cache[p] for p in image_paths}

    def _vision_tokens_per_image(self) -> int:
        """Patch tokens the ViT puts out per image, as the fast path counts them (the naive path's counter)."""
        grid = getattr(self.model.vision_encoder, "grid_size", None)
        return int(grid[0] * grid[1]) if grid is not None else 0

    def clear_cache(self, vision: bool = True) -> None:
        self._vision_cache.keep(0 if vision else self.config.max_cached_images)
        self._prefix_cache.clear()

    # -- scoring

    def score(self, prompts: Sequence[Prompt]) -> list[np.ndarray]:
        from lever_lm.lvlm.flamingo_fast import score_with_prefix_reuse

        assembled = [self.assemble(p, with_answer=True) for p in prompts]
        return score_with_prefix_reuse(self, prompts, assembled)

    def score_naive(self, prompts: Sequence[Prompt], batch_size: int = 32) -> list[np.ndarray]:
        """Upstream-style: per batch, preprocess every image of every sequence, full Flamingo forward, read spans."""
        import torch

        assembled = [self.assemble(p, with_answer=True) for p in prompts]
        results: list[np.ndarray] = []
        for start in range(0, len(assembled), batch_size):
            batch = assembled[start : start + batch_size]
            max_len = max(len(a.input_ids) for a in batch)
            max_images = max(len(a.image_paths) for a in batch)
            input_ids = torch.full((len(batch), max_len), self.pad_token_id, dtype=torch.long)
            attention_mask = torch.zeros((len(batch), max_len), dtype=torch.long)
            pixels = None
            for row, item in enumerate(batch):
                ids = item.input_ids
                input_ids[row, : len(ids)] = torch.tensor(ids)  # right padding keeps every row's positions
                attention_mask[row, : len(ids)] = 1
                for slot, path in enumerate(item.image_paths):
                    image = self._pixels(path)
                    if pixels is None:
                        pixels = torch.zeros((len(batch), max_images, 1, *image.shape))
                    pixels[row, slot, 0] = image
            counters = self.counters
            with torch.inference_mode():
                logits = self.model(
                    vision_x=counters.to_device(pixels, self.device, self.dtype),
                    lang_x=counters.to_device(input_ids, self.device),
                    attention_mask=counters.to_device(attention_mask, self.device),
                ).logits
                self.vision_encoder_calls += len(batch) * max_images  # padded image slots are encoded too
                self.text_tokens_computed += int(attention_mask.sum())  # host tensor: no device sync
                counters["lm_forward_calls"] += 1
                counters["vision_forward_calls"] += 1
                counters["vision_images"] += len(batch) * max_images
                counters["vision_tokens"] += len(batch) * max_images * self._vision_tokens_per_image()
                counters["lm_tokens"] += int(attention_mask.sum())
                counters["lm_padded_tokens"] += attention_mask.numel()
                logprobs = torch.log_softmax(logits.float(), dim=-1)
                for row, item in enumerate(batch):
                    s, e = item.span
                    targets = counters.to_device(input_ids[row, s:e], self.device)
                    picked = logprobs[row, s - 1 : e - 1].gather(-1, targets[:, None])[:, 0]
                    results.append(counters.device_read(picked.double().cpu().numpy()))
        return results

    # -- generation

    def generate(
        self, prompts: Sequence[Prompt], max_new_tokens: int, num_beams: int, batch_size: int | None = None
    ) -> list[str]:
        """Batched beam search (greedy for ``num_beams=1``) with left padding on cached vision features; new text only.

        Prompts of one call may hold different image counts: each row names its own images, in order, in the batch's
        table of distinct images, and its text attends only to its own images (media locations are per row; ALiBi
        and the padding mask make left padding exact), so a row's answer does not depend on its batch-mates (tests
        compare with batch 1 and with open_flamingo's own generation path).
        Rows are batched in order of token length to cut padding (``batch_size`` rows, default
        ``score_batch_size``) and returned in the order given. See ``_generate_batch`` for what keeps it exact and
        cheap.
        """
        size = self.config.score_batch_size if batch_size is None else batch_size
        if size < 1:
            raise ValueError(f"generate: batch_size must be >= 1, got {size}")
        if num_beams < 1 or max_new_tokens < 1:
            raise ValueError(f"generate: num_beams and max_new_tokens must be >= 1, got {num_beams}, {max_new_tokens}")
        assembled = [self.assemble(p, with_answer=False) for p in prompts]
        order = sorted(range(len(assembled)), key=lambda i: len(assembled[i].input_ids))
        outputs: list[str] = [""] * len(assembled)
        for start in range(0, len(order), size):
            rows = order[start : start + size]
            for i, text in zip(rows, self._generate_batch([assembled[i] for i in rows], max_new_tokens, num_beams)):
                outputs[i] = text
        return outputs

    def prompt_token_lengths(self, prompts: Sequence[Prompt]) -> list[int]:
        """Token count of each assembled generation prompt; an image is its one ``<image>`` token in the language
        model (its latents come in through cross-attention), so the text alone decides it."""
        return [len(self.assemble(p, with_answer=False).input_ids) for p in prompts]

    def _generate_batch(self, batch: Sequence[AssembledPrompt], max_new_tokens: int, num_beams: int) -> list[str]:
        """One left-padded batch through HF ``generate`` of the Flamingo-extended language model.

        - The ``<image>`` token is never generated: open_flamingo recomputes the media locations of the WHOLE batch
          from a step's new tokens as soon as one row emits it, which would change every other row's cross-attention
          (batched answers would then differ from batch-1 answers); an answer has no use for it anyway.
        - With a native HF cache, the prompt is prefilled ONCE per row (all but its last token) and its key/values
          are repeated for the beams; HF beam search alone runs the whole prompt once per beam.
        - Cross-attention does only the work its mask keeps (``_GenerationCrossAttention``): the distinct images'
          keys/values once per batch, each prompt token against its own image, each new token against its row's
          last image (open_flamingo's cached-media mode), instead of every token against every padded image slot.
        """
        import torch

        from lever_lm.lvlm.flamingo_fast import model_parts

        lang = self.model.lang_encoder
        max_len = max(len(a.input_ids) for a in batch)
        input_ids = torch.full((len(batch), max_len), self.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros((len(batch), max_len), dtype=torch.long)
        for row, item in enumerate(batch):
            ids = item.input_ids
            input_ids[row, max_len - len(ids) :] = torch.tensor(ids)
            attention_mask[row, max_len - len(ids) :] = 1
        input_ids, attention_mask = (self.counters.to_device(t, self.device) for t in (input_ids, attention_mask))
        base, _, _, native_cache = model_parts(lang)
        vision, context, per_row = self.batch_media([a.image_paths for a in batch])
        kwargs: dict[str, Any] = {}
        try:
            with torch.inference_mode(), context:
                lang._use_cached_vision_x = True
                for layer in lang._get_decoder_layers():
                    layer.condition_vis_x(vision)
                if native_cache and max_len > 1:
                    media_locations = input_ids[:, :-1] == self.media_token_id
                    for layer in lang._get_decoder_layers():
                        layer.condition_media_locations(media_locations)
                        layer.condition_use_cached_media(False)
                    prefix = (base or lang)(
                        input_ids=input_ids[:, :-1], attention_mask=attention_mask[:, :-1], use_cache=True
                    )
                    past = prefix.past_key_values
                    past.batch_repeat_interleave(num_beams)
                    kwargs["past_key_values"] = past
                    # the remaining steps see no <image> token: each row attends to its last image (cached media)
                    media_locations = media_locations.repeat_interleave(num_beams, dim=0)
                    for layer in lang._get_decoder_layers():
                        layer.condition_media_locations(media_locations)
                if per_row:  # open_flamingo's own cross-attention reads a vision row per beam
                    for layer in lang._get_decoder_layers():
                        layer.condition_vis_x(vision.repeat_interleave(num_beams, dim=0))
                generated = lang.generate(
                    input_ids=input_ids,
                    attention_mask=attention_mask,
                    max_new_tokens=max_new_tokens,
                    num_beams=num_beams,
                    do_sample=False,
                    eos_token_id=self.eoc_token_id,
                    pad_token_id=self.pad_token_id,
                    suppress_tokens=[self.media_token_id],
                    **kwargs,
                )
        finally:
            lang.clear_conditioned_layers()
            lang._use_cached_vision_x = False
        texts = self.tokenizer.batch_decode(
            self.counters.device_read(generated[:, max_len:].cpu()), skip_special_tokens=True
        )
        return [t.strip() for t in texts]

    def batch_media(self, image_lists: Sequence[Sequence[str]]):
        """(vision, context, per_row) for one language-model forward over rows with these images: with open_flamingo's
        ``only_attend_immediate_media`` (its models' setting), the batch's distinct images (U, n, d) and a
        ``generation_cross_attention`` context in which each text token attends to its own image only; else every
        row's padded image slots (``stack_vision``, per_row True) for open_flamingo's own cross-attention."""
        import torch

        lang = self.model.lang_encoder
        attns = [layer.attn for layer in getattr(lang, "gated_cross_attn_layers", []) if layer is not None]
        if not attns or not all(getattr(a, "only_attend_immediate_media", False) for a in attns):
            return self.stack_vision(image_lists), contextlib.nullcontext(), True
        paths, index = distinct_images(image_lists)
        features = self.vision_features(paths)
        media = torch.stack([features[p] for p in paths])  # (U, n, d)
        return media, generation_cross_attention(attns, media, self.counters.to_device(index, media.device)), False

    def stack_vision(self, image_lists: Sequence[Sequence[str]]):
        """(B, T_max, n, d) cached latents, zero-padded; a row never attends past its own media count."""
        import torch

        features = self.vision_features([p for paths in image_lists for p in paths])
        distinct = list(features)
        sample = features[distinct[0]]
        table = torch.stack([*features.values(), sample.new_zeros(sample.shape)])  # last row: the padding
        slot_of = {path: i for i, path in enumerate(distinct)}
        max_images = max(len(paths) for paths in image_lists)
        index = torch.full((len(image_lists), max_images), len(distinct), dtype=torch.long)
        for row, paths in enumerate(image_lists):
            index[row, : len(paths)] = torch.tensor([slot_of[p] for p in paths], dtype=torch.long)
        # one gather, not a copy per (row, image)
        return table[self.counters.to_device(index, table.device)]


def distinct_images(image_lists: Sequence[Sequence[str]]):
    """(the distinct images in first-seen order, (B, T) long tensor of each row's images as indices into them, -1
    where a row has fewer): the media table and index of ``generation_cross_attention``."""
    import torch

    paths = list(dict.fromkeys(p for images in image_lists for p in images))
    slot = {p: u for u, p in enumerate(paths)}
    index = torch.full((len(image_lists), max(len(images) for images in image_lists)), -1, dtype=torch.long)
    for row, images in enumerate(image_lists):
        index[row, : len(images)] = torch.tensor([slot[p] for p in images], dtype=torch.long)
    return paths, index


#: lay the tokens out by image once the (row, image) pairs are this many times the distinct images among them
SHARED_IMAGE_RATIO = 4


class _GenerationCrossAttention:
    """Exact stand-in for open_flamingo's ``MaskedCrossAttention.forward`` (``only_attend_immediate_media``) during
    ``generate``, doing only the work its mask keeps.

    open_flamingo scores every text token against the latents of EVERY (padded) image slot of its row, masks all but
    its immediate image, and re-projects the media to keys/values at every decoding step. Here ``media`` is the
    table of the batch's DISTINCT images (U, n, d) and ``index`` (B, T) names each prompt's images in order (-1:
    none); rows beyond B are beams (row r belongs to prompt r // (rows / B)). Keys/values are projected once per
    image; a prompt token is scored only against its own image (tokens grouped by image into a padded
    (row, image, token) layout, moved there and back as rows of flat views; when many rows share few images, the
    tokens of one image in one run against its keys/values, not a copy of them per row); a token in cached-media
    mode only against its row's last image. Masked scores are
    exactly 0 after open_flamingo's softmax, so the results agree up to float summation order (tests compare
    ``generate`` with open_flamingo's own path).
    """

    def __init__(self, attn, media, index, layout: list, token_mask=None):
        self.attn, self.media, self.index, self.token_mask = attn, media, index, token_mask
        self._kv = None
        self._last: dict = {}
        self._layout = layout  # [(media_locations, groups)] of the last call, shared by the layers of one forward

    def _media_kv(self):
        """(k, v) of the distinct images, each (U, heads, n, d_head), projected once."""
        if self._kv is None:
            u, n, _ = self.media.shape
            k, v = self.attn.to_kv(self.media).chunk(2, dim=-1)
            self._kv = tuple(z.reshape(u, n, self.attn.heads, -1).transpose(1, 2).contiguous() for z in (k, v))
        return self._kv

    def __call__(self, x, media, media_locations=None, use_cached_media=False):
        import torch

        attn = self.attn
        if media_locations is None:
            raise RuntimeError("generate: cross-attention called without media locations")
        k, v = self._media_kv()
        rows, n_txt = x.shape[:2]
        heads = attn.heads
        index = self.index.repeat_interleave(rows // self.index.shape[0], dim=0)  # prompt rows -> beam rows
        if use_cached_media:  # every token comes after its row's last image
            q = attn.to_q(attn.norm(x)).reshape(rows, n_txt, heads, -1).transpose(1, 2) * attn.scale  # (B, h, L, d)
            out = torch.zeros_like(q)
            if rows not in self._last:  # fixed for the batch: beam search only reorders beams of one prompt
                count = torch.count_nonzero(media_locations, dim=1)
                has = torch.nonzero(count > 0).flatten()
                last = index[has, count[has] - 1]
                self._last[rows] = (has, k[last], v[last])
            has, k_last, v_last = self._last[rows]
            if has.numel():
                sim = q[has] @ k_last.transpose(-1, -2)  # (b, h, L, n)
                sim = sim - sim.amax(dim=-1, keepdim=True)
                out[has] = sim.softmax(dim=-1) @ v_last
            return attn.to_out(out.transpose(1, 2).reshape(rows, n_txt, -1))
        q = attn.to_q(attn.norm(x)) * attn.scale  # (B, L, h * d)
        width = q.shape[-1]
        out = q.new_zeros((rows * n_txt, width))
        groups = self._groups(media_locations, index, rows // self.index.shape[0])
        if groups is not None and groups[0] == "by_image":
            _, tokens, runs = groups
            picked = q.reshape(-1, width).index_select(0, tokens)  # the tokens, image by image
            attended = torch.cat(
                [self._attend_one_image(picked[start:end], k[image], v[image]) for image, start, end in runs]
            )
            out = out.index_copy(0, tokens, attended)
        elif groups is not None:
            _, tokens, slots, images, pairs, group = groups
            # rows of the flat (B * L, h * d) view in and out: contiguous row copies, cheap both ways under autograd
            picked = q.reshape(-1, width).index_select(0, tokens)
            grouped = q.new_zeros((pairs * group, width)).index_copy(0, slots, picked)
            grouped = grouped.reshape(pairs, group, heads, -1).transpose(1, 2).contiguous()  # (pairs, h, group, d)
            sim = grouped @ k.index_select(0, images).transpose(-1, -2)  # (pairs, h, group, n)
            sim = sim - sim.amax(dim=-1, keepdim=True)
            attended = (sim.softmax(dim=-1) @ v.index_select(0, images)).transpose(1, 2).reshape(-1, width)
            out = out.index_copy(0, tokens, attended.index_select(0, slots))
        return attn.to_out(out.reshape(rows, n_txt, width))

    def _attend_one_image(self, q, k, v):
        """(tokens, h * d) queries against one image's keys/values (h, n, d), no copy of them per row."""
        heads = self.attn.heads
        q = q.reshape(q.shape[0], heads, -1).transpose(0, 1)  # (h, tokens, d)
        sim = q @ k.transpose(-1, -2)
        sim = sim - sim.amax(dim=-1, keepdim=True)
        return (sim.softmax(dim=-1) @ v).transpose(0, 1).reshape(q.shape[1], -1)

    def _groups(self, media_locations, index, beams: int):
        """The tokens that attend an image, laid out for it; None when no token follows an image. Either
        ("by_pair", flat token positions, their slots in the padded (pair, rank) layout, each pair's image, pairs,
        group size), one group per ``<image>`` token in order, or, when the pairs share few images, ("by_image",
        flat token positions sorted by image, [(image, start, end)] runs of them). Computed once per media
        locations: every layer of a forward shares it. Tokens outside ``token_mask`` (right padding) are left out:
        their output is 0, read by no real token."""
        import torch

        if self._layout and self._layout[0][0] is media_locations:
            return self._layout[0][1]
        n_txt = media_locations.shape[1]
        text_time = media_locations.cumsum(dim=-1)  # the image (1-based) each token attends to; 0: none
        attends = text_time > 0
        if self.token_mask is not None:
            attends &= self.token_mask.repeat_interleave(beams, dim=0).bool()
        row_idx, pos_idx = torch.nonzero(attends, as_tuple=True)
        groups = None
        if row_idx.numel():
            m_row, m_pos = torch.nonzero(media_locations, as_tuple=True)  # the pairs, row-major
            counts = media_locations.sum(dim=-1)
            first_pair = torch.cumsum(counts, dim=0) - counts
            pair = first_pair[row_idx] + text_time[row_idx, pos_idx] - 1
            rank = pos_idx - m_pos[pair]  # position inside the pair's token group
            group = int(rank.max()) + 1
            images = index[m_row, text_time[m_row, m_pos] - 1]
            tokens = row_idx * n_txt + pos_idx
            token_image = images[pair]
            distinct, counts = torch.unique(token_image, return_counts=True)
            if len(distinct) * SHARED_IMAGE_RATIO <= len(m_row):
                # many rows attend the same few images (scoring candidates after one shared query or demo): the
                # tokens of each image in one run, instead of that image's keys/values copied for every row
                ends = counts.cumsum(0).tolist()
                runs = [(u, end - n, end) for u, n, end in zip(distinct.tolist(), counts.tolist(), ends)]
                groups = ("by_image", tokens[torch.argsort(token_image, stable=True)], runs)
            else:
                groups = ("by_pair", tokens, pair * group + rank, images, len(m_row), group)
        self._layout[:] = [(media_locations, groups)]
        return groups


@contextlib.contextmanager
def generation_cross_attention(attns, media, index, token_mask=None):
    """Route the given cross-attention modules through ``_GenerationCrossAttention`` for the block, then restore.
    ``token_mask`` (B, L): the real tokens of a right-padded batch, if the padding's outputs are never read."""
    layout: list = []  # the token grouping of a forward, computed by its first cross-attention layer
    try:
        for attn in attns:
            routed = _GenerationCrossAttention(attn, media, index, layout, token_mask)
            object.__setattr__(attn, "forward", routed)  # instance attribute
        yield
    finally:
        for attn in attns:
            attn.__dict__.pop("forward", None)
