"""Qwen2.5-VL adapter: loader, prompt assembly, reference scoring and generation.

Public API
----------
- ``QwenVLConfig`` (frozen), ``config_from_dict(name, entry) -> QwenVLConfig`` (``entry`` is the YAML entry
  ``beam_models.<name>``; unknown fields are rejected; a tiny variant's ``tiny``/``pretrain`` fields are the
  factory's business, see ``lever_lm.lvlm.factory``).
- ``load_qwen_adapter(config) -> QwenVLAdapter``: loads model, tokenizer and image processor from
  ``config.model_path`` (local files only). ``variant: tiny`` loads a tiny model dir (built by ``lever_lm.lvlm.tiny``,
  ``save_pretrained`` layout) through the very same code.
- ``QwenVLAdapter``: ``score`` (fast path, see ``qwen_fast``), ``score_naive`` (reference), ``generate``,
  ``clear_cache``, ``assemble`` (the one prompt assembly, also used to pretrain the tiny model).

Prompt (docs/stages.md stage 4). ``single_user_message`` (default): one user message interleaving, per ICD, its image
and ``Question:{q} Short answer:{a}``, then the query image and ``Question:{q} Short answer:`` (+ ``{a}`` when
scoring). ``multi_turn``: per ICD a user turn (image + ``Question:{q} Short answer:``) and an assistant turn
``{a}``; the query is a user turn followed, when scoring, by an assistant turn with its answer. The model's own
chat template renders the messages (generation prompt only for inference).

Tokenisation (docs/stages.md stage 4): the rendered text is tokenised AS ONE STRING, as the model's own processor does,
so with Qwen's byte-level BPE ``:red`` or ``:no`` stays one token, as in every text the model was trained on. Each
answer's span comes from the tokenizer's character offsets (``base.answer_token_span``, the rule the Flamingo
adapter uses too): every token overlapping the answer (a token merging the ``:`` with the answer's first
characters included), then the one token that closes it; for the query that must be ``<|im_end|>``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from lever_lm.data import image_size, load_image
from lever_lm.lvlm.base import (
    DEFAULT_MAX_CACHED_IMAGES,
    Example,
    LVLMAdapter,
    LVLMConfigError,
    Prompt,
    WorkCounters,
    answer_token_span,
    build_config,
    select_device_dtype,
)
from lever_lm.lvlm.qwen_positions import mrope_positions

FAMILY = "qwen2_5_vl"
LOCAL_PATH_FIELDS = ("model_path",)  # what variant "local" reads

IMAGE_TOKEN = "<|image_pad|>"
END_TOKEN = "<|im_end|>"
REQUIRED_SPECIAL_TOKENS = ("<|im_start|>", END_TOKEN, "<|vision_start|>", "<|vision_end|>", IMAGE_TOKEN)
QWEN_SPECIAL_TOKENS = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|object_ref_start|>",
    "<|object_ref_end|>",
    "<|box_start|>",
    "<|box_end|>",
    "<|quad_start|>",
    "<|quad_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
)
DEFAULT_SYSTEM_PROMPT = "You are a helpful assistant."
# Qwen2.5-VL-Instruct's chat template (the one shipped with the model); the tiny model gets the same.
QWEN2_5_VL_CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\n" + DEFAULT_SYSTEM_PROMPT + "<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}{% if add_vision_id %}Picture {{ image_count.value }}: "
    "{% endif %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}{% set video_count.value = video_count.value + 1 %}"
    "{% if add_vision_id %}Video {{ video_count.value }}: {% endif %}<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
# private-use characters marking answer boundaries in the rendered text; never tokenised
_ANSWER_START = "\ue000"
_ANSWER_END = "\ue001"


@dataclass(frozen=True)
class QwenVLConfig:
    """One ``beam_models.<name>`` entry of family ``qwen2_5_vl``."""

    name: str
    variant: str = "local"
    model_path: str | None = None
    system_prompt: str | None = None
    prompt_style: str = "single_user_message"
    min_pixels: int | None = None
    max_pixels: int | None = None
    precision: str = "auto"
    score_batch_size: int = 32
    #: padded LM tokens per scoring batch (rows x longest continuation), None: ``score_batch_size`` rows alone
    score_token_budget: int | None = None
    #: image patch tokens per vision-tower forward (the fast path packs a whole beam step's new images into few)
    vision_token_budget: int | None = None  # None: the device's default (base.DEFAULT_VISION_TOKEN_BUDGET)
    max_cached_images: int = DEFAULT_MAX_CACHED_IMAGES  # merged patch embeddings kept across beam-search queries
    seed: int = 0

    def key(self, field_name: str) -> str:
        return f"beam_models.{self.name}.{field_name}"


def config_from_dict(name: str, entry: Mapping[str, Any]) -> QwenVLConfig:
    """Build a ``QwenVLConfig`` from ``beam_models.<name>`` (``lever_lm.lvlm.base.build_config``: validated against the
    config schema, errors naming the key; ``family``, if present, must be ``qwen2_5_vl``; the dataclass's defaults)."""
    return build_config(QwenVLConfig, FAMILY, name, entry)


# ---------------------------------------------------------------------------------------------------------
# loading


def check_local_files(config: QwenVLConfig) -> None:
    """A variant 'local' entry's model dir exists and looks complete (LVLMConfigError naming the key)."""
    if config.variant == "local":
        _check_model_dir(config)


def _check_model_dir(config: QwenVLConfig) -> Path:
    key = config.key("model_path")
    if not config.model_path:
        raise LVLMConfigError(f"{key}: not set (a local model directory is required)")
    path = Path(config.model_path)
    if not path.is_dir():
        raise LVLMConfigError(f"{key}: directory {path} does not exist")
    required = {
        "config.json": ["config.json"],
        "weights": [
            "model.safetensors",
            "model.safetensors.index.json",
            "pytorch_model.bin",
            "pytorch_model.bin.index.json",
        ],
        "tokenizer": ["tokenizer.json", "vocab.json"],
        "image processor config": ["preprocessor_config.json"],
    }
    missing = [
        f"{what} ({' or '.join(names)})"
        for what, names in required.items()
        if not any((path / n).is_file() for n in names)
    ]
    if missing:
        raise LVLMConfigError(f"{key}: model directory {path} is incomplete, missing: {', '.join(missing)}")
    return path


def load_qwen_adapter(config: QwenVLConfig) -> QwenVLAdapter:
    """Load model + processor from ``config.model_path`` (never the hub) and wrap them in an adapter."""
    import torch
    from transformers import AutoProcessor, Qwen2_5_VLForConditionalGeneration

    path = _check_model_dir(config)
    device, dtype = select_device_dtype(config.precision)
    processor = AutoProcessor.from_pretrained(path, local_files_only=True, use_fast=True)
    tokenizer = processor.tokenizer
    vocab = tokenizer.get_vocab()
    for token in REQUIRED_SPECIAL_TOKENS:
        if token not in vocab:
            raise LVLMConfigError(f"{config.key('model_path')}: tokenizer in {path} lacks the special token {token}")
    if not (processor.chat_template or tokenizer.chat_template):
        raise LVLMConfigError(f"{config.key('model_path')}: no chat template in {path}")
    torch.manual_seed(config.seed)
    model = (
        Qwen2_5_VLForConditionalGeneration.from_pretrained(
            path, local_files_only=True, dtype=dtype, attn_implementation="sdpa"
        )
        .to(device)
        .eval()
    )
    if model.config.image_token_id != vocab[IMAGE_TOKEN]:
        raise LVLMConfigError(
            f"{config.key('model_path')}: config.json image_token_id {model.config.image_token_id} differs from "
            f"the tokenizer's {IMAGE_TOKEN} id {vocab[IMAGE_TOKEN]} in {path}"
        )
    return QwenVLAdapter(config, model, processor)


# ---------------------------------------------------------------------------------------------------------
# prompt assembly


@dataclass(frozen=True)
class AssembledPrompt:
    """Token ids of one prompt, its images in order, and where each answer sits.

    ``answer_spans[i]`` is ``(start, end)``: the answer tokens of the i-th answered example (demos in order,
    then the query when scoring) plus the one token after them. ``demo_ends[i]`` is the position just after
    demo i's answer: the prompt up to there depends only on the template and demos 0..i (a reusable KV prefix).
    """

    input_ids: tuple[int, ...]
    image_paths: tuple[str, ...]
    answer_spans: tuple[tuple[int, int], ...]
    demo_ends: tuple[int, ...]

    @property
    def query_span(self) -> tuple[int, int]:
        return self.answer_spans[-1]


def _describe(example: Example) -> str:
    return f"image_path={example.image_path!r}, question={example.question!r}"


def _checked_text(text: str | None, what: str, example: Example) -> str:
    if text is None:
        raise ValueError(f"{what} has no answer ({_describe(example)})")
    text = text.strip()
    if not text:
        raise ValueError(f"{what} has an empty {'answer' if 'answer' in what else 'text'} ({_describe(example)})")
    if _ANSWER_START in text or _ANSWER_END in text:
        raise ValueError(f"{what} contains a reserved private-use character U+E000/U+E001 ({_describe(example)})")
    return text


def build_messages(
    prompt: Prompt, style: str, system_prompt: str | None, with_query_answer: bool, query_answer_as_reply: bool = False
) -> list[dict]:
    """Chat messages of a prompt; answers are wrapped in boundary markers (see ``assemble_prompt``).

    ``query_answer_as_reply``: the query's answer is the assistant's reply after the query's user turn (what
    ``generate`` expects the model to write), also in ``single_user_message`` style."""
    messages: list[dict] = []
    if system_prompt is not None and system_prompt.strip():
        messages.append({"role": "system", "content": system_prompt.strip()})
    examples = [(demo, True) for demo in prompt.demos] + [(prompt.query, with_query_answer)]
    user_content: list[dict] = []
    for position, (example, answered) in enumerate(examples):
        is_query = position == len(prompt.demos)
        what = "query" if is_query else f"demo {position}"
        question = _checked_text(example.question, f"{what} question", example)
        answer = _checked_text(example.answer, f"{what} answer", example) if answered else None
        marked_answer = f"{_ANSWER_START}{answer}{_ANSWER_END}" if answer is not None else ""
        if style == "single_user_message":
            inline = "" if is_query and query_answer_as_reply else marked_answer
            user_content += [
                {"type": "image"},
                {"type": "text", "text": f"Question:{question} Short answer:{inline}"},
            ]
        else:
            messages.append(
                {
                    "role": "user",
                    "content": [{"type": "image"}, {"type": "text", "text": f"Question:{question} Short answer:"}],
                }
            )
            if answer is not None:
                messages.append({"role": "assistant", "content": marked_answer})
    if style == "single_user_message":
        messages.append({"role": "user", "content": user_content})
        if query_answer_as_reply and with_query_answer:
            messages.append({"role": "assistant", "content": marked_answer})
    return messages


def render_chat(tokenizer, chat_template: str, messages: list[dict], add_generation_prompt: bool) -> str:
    """``tokenizer.apply_chat_template(..., tokenize=False)`` without its per-call overhead (~0.7 ms, which
    adds up over 300k beam-search prompts); tests check that both give the same text."""
    try:
        from transformers.utils.chat_template_utils import _compile_jinja_template
    except ImportError:  # private helper gone in another transformers version: take the public route
        return tokenizer.apply_chat_template(
            messages, chat_template=chat_template, tokenize=False, add_generation_prompt=add_generation_prompt
        )
    return _compile_jinja_template(chat_template).render(
        messages=messages,
        tools=None,
        documents=None,
        add_generation_prompt=add_generation_prompt,
        **tokenizer.special_tokens_map,
    )


def _strip_answer_markers(marked: str) -> tuple[str, list[tuple[int, int]]]:
    """The rendered text without the answer markers, and each answer's character range ``[start, end)`` in it."""
    pieces = marked.replace(_ANSWER_END, _ANSWER_START).split(_ANSWER_START)
    if len(pieces) % 2 == 0:
        raise ValueError("chat template dropped an answer boundary marker")
    ranges, length = [], 0
    for index, piece in enumerate(pieces):
        if index % 2 == 1:
            ranges.append((length, length + len(piece)))
        length += len(piece)
    return "".join(pieces), ranges


def assemble_prompt(
    prompt: Prompt,
    tokenizer,
    chat_template: str,
    style: str,
    system_prompt: str | None,
    image_token_counts: Mapping[str, int],
    for_generation: bool,
    answer_as_reply: bool = False,
) -> AssembledPrompt:
    """THE prompt assembly (scoring, reference scoring, generation and pretraining all use it).

    Renders the chat template (with the generation prompt iff ``for_generation``; with ``answer_as_reply`` the
    query's answer follows as the assistant's reply, the sequence ``generate`` should produce, which pretraining
    teaches the tiny model), tokenises the rendered text AS
    ONE STRING, as the model's own processor does (docs/stages.md stage 4), locates each answer from the tokenizer's
    character offsets (``base.answer_token_span``: a token merging the ``:`` with the answer's first characters
    belongs to the answer), and expands each ``<|image_pad|>`` to the image's number of merged patches.
    """
    if for_generation and answer_as_reply:
        raise ValueError("assemble_prompt: answer_as_reply needs the query's answer; for_generation has none")
    messages = build_messages(prompt, style, system_prompt, not for_generation, answer_as_reply)
    text, answer_chars = _strip_answer_markers(render_chat(tokenizer, chat_template, messages, for_generation))
    encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids, offsets = encoded["input_ids"], encoded["offset_mapping"]
    image_token_id = tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)
    image_paths = [demo.image_path for demo in prompt.demos] + [prompt.query.image_path]
    # token index -> position in the expanded sequence (each <|image_pad|> becomes the image's merged patches)
    input_ids: list[int] = []
    position_of: list[int] = []
    images_seen = 0
    for token in ids:
        position_of.append(len(input_ids))
        if token == image_token_id:
            if images_seen >= len(image_paths):
                raise ValueError(f"chat template rendered more images than the prompt has ({image_paths})")
            input_ids.extend([token] * image_token_counts[image_paths[images_seen]])
            images_seen += 1
        else:
            input_ids.append(token)
    if images_seen != len(image_paths):
        raise ValueError(f"chat template rendered {images_seen} images for a prompt with {len(image_paths)}")
    answer_spans = []
    for char_start, char_end in answer_chars:
        # every token overlapping the answer's characters: a token that merges the ':' before the answer with its
        # first characters (Qwen's BPE has ':red', ':no') is part of y
        first, stop = answer_token_span(offsets, char_start, char_end)
        if stop >= len(ids):
            raise LVLMConfigError("chat template puts nothing after an answer: no end-of-answer token to score")
        if ids[stop] == image_token_id:
            raise LVLMConfigError("chat template puts an image right after an answer: no end-of-answer token")
        # the answer's tokens plus the one token that closes it
        answer_spans.append((position_of[first], position_of[stop] + 1))
    if not for_generation:
        end_token_id = tokenizer.convert_tokens_to_ids(END_TOKEN)
        if input_ids[answer_spans[-1][1] - 1] != end_token_id:
            raise LVLMConfigError(f"chat template does not close the query answer with {END_TOKEN}")
    return AssembledPrompt(
        input_ids=tuple(input_ids),
        image_paths=tuple(image_paths),
        answer_spans=tuple(answer_spans),
        demo_ends=tuple(end - 1 for _, end in answer_spans[: len(prompt.demos)]),
    )


# ---------------------------------------------------------------------------------------------------------
# adapter


class QwenVLAdapter(LVLMAdapter):
    """Qwen2.5-VL behind ``LVLMAdapter``. Build it with ``load_qwen_adapter``."""

    def __init__(self, config: QwenVLConfig, model, processor):
        from lever_lm.lvlm.qwen_fast import FastScorer

        self.config = config
        self.model = model
        self.processor = processor
        self.tokenizer = processor.tokenizer
        self.chat_template = processor.chat_template or self.tokenizer.chat_template
        self.device = next(model.parameters()).device
        self.dtype = next(model.parameters()).dtype
        self.merge_size = model.config.vision_config.spatial_merge_size
        self.vision_encoder_calls = 0
        self.counters = WorkCounters()  # work per scoring call, counted at the call sites (base.WorkCounters)
        self._image_token_counts: dict[tuple, int] = {}  # (path, min, max pixels) -> tokens (image_token_count)
        self._image_kwargs = {
            k: v for k, v in (("min_pixels", config.min_pixels), ("max_pixels", config.max_pixels)) if v is not None
        }
        self._fast = FastScorer(self)

    # -- shared pieces ------------------------------------------------------------------------------------

    def assemble(
        self, prompt: Prompt, image_token_counts: Mapping[str, int], for_generation: bool, answer_as_reply: bool = False
    ) -> AssembledPrompt:
        return assemble_prompt(
            prompt,
            self.tokenizer,
            self.chat_template,
            self.config.prompt_style,
            self.config.system_prompt,
            image_token_counts,
            for_generation,
            answer_as_reply,
        )

    def preprocess_images(self, paths: Sequence[str]):
        """Pixel patches and (t, h, w) grids of ``paths`` (in order), on the model's device."""
        pixel_values, grid_thw = self.preprocess_images_host(paths)
        return (
            self.counters.to_device(pixel_values, self.device, self.dtype),
            self.counters.to_device(grid_thw, self.device),
        )

    def preprocess_images_host(self, paths: Sequence[str]):
        """``preprocess_images`` on the host: what the fast path moves to the device once, keeping the grids (and
        the image token counts they give) on the host, so it never reads them back."""
        inputs = self.processor.image_processor(
            images=[load_image(p) for p in paths], return_tensors="pt", **self._image_kwargs
        )
        return inputs["pixel_values"], inputs["image_grid_thw"]

    def image_features(self, paths: Sequence[str]) -> dict[str, tuple]:
        """path -> (merged image embeddings, (t, h, w) grid) of ``paths``, through the scoring path's vision encoder
        (budgeted batches, grouped attention), outside its cache; autograd as the caller sets it."""
        features: dict[str, tuple] = {}
        self._fast.encode_images(paths, into=features)
        return features

    def tokens_per_image(self, grid_thw) -> list[int]:
        return self.counters.device_read((grid_thw.prod(-1) // self.merge_size**2).tolist())

    def span_logprobs(self, hidden, input_ids, batch_rows, spans, offsets) -> list[np.ndarray]:
        """Log-probs of span tokens: row ``batch_rows[i]`` of ``hidden`` predicts ``spans[i]`` (absolute
        positions, hidden index = position - 1 - offsets[i])."""
        import torch

        results = []
        for row, (start, end), offset, ids in zip(batch_rows, spans, offsets, input_ids):
            states = hidden[row, start - 1 - offset : end - 1 - offset]
            logits = self.model.lm_head(states).float()
            targets = self.counters.to_device(torch.as_tensor(ids[start:end]), logits.device)
            logprobs = torch.log_softmax(logits, dim=-1).gather(-1, targets[:, None])[:, 0]
            results.append(self.counters.device_read(logprobs.double().cpu().numpy()))
        return results

    def span_logprobs_on_device(self, hidden, input_ids, batch_rows, spans, offsets):
        """``span_logprobs`` for a whole batch in one go, left on the device: a flat float64 tensor of every span's
        log-probs in order (split it by the span lengths). One host-to-device copy (row, column and target indices
        together), one LM-head pass over the picked states, no read back."""
        import torch

        rows, cols, targets = [], [], []
        for row, (start, end), offset, ids in zip(batch_rows, spans, offsets, input_ids):
            rows += [row] * (end - start)
            cols += range(start - 1 - offset, end - 1 - offset)  # token t is predicted at position t - 1
            targets += ids[start:end]
        index = self.counters.to_device(torch.tensor([rows, cols, targets], dtype=torch.long), hidden.device)
        logits = self.model.lm_head(hidden[index[0], index[1]]).float()
        return torch.log_softmax(logits, dim=-1).gather(-1, index[2][:, None])[:, 0].double()

    def _check_scorable(self, prompts: Sequence[Prompt]) -> None:
        for number, prompt in enumerate(prompts):
            if prompt.query.answer is None or not prompt.query.answer.strip():
                problem = "no answer" if prompt.query.answer is None else "an empty answer"
                raise ValueError(f"prompt {number}: query has {problem} to score ({_describe(prompt.query)})")

    # -- LVLMAdapter --------------------------------------------------------------------------------------

    def score(self, prompts: Sequence[Prompt]) -> list[np.ndarray]:
        self._check_scorable(prompts)
        return self._fast.score(prompts)

    def hidden_states(self, input_ids, attention_mask, pixel_values, grid_thw):
        """The language model's last hidden states of a whole batch, images encoded in the same forward (no cache)."""
        return self.model.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            pixel_values=pixel_values,
            image_grid_thw=grid_thw,
            use_cache=False,
        ).last_hidden_state

    def score_naive(self, prompts: Sequence[Prompt], batch_size: int = 32) -> list[np.ndarray]:
        """Reference: per batch, preprocess every image of every sequence and run the whole model."""
        import torch

        self._check_scorable(prompts)
        results: list[np.ndarray] = []
        with torch.inference_mode():
            for first in range(0, len(prompts), batch_size):
                batch = prompts[first : first + batch_size]
                paths = [e.image_path for p in batch for e in (*p.demos, p.query)]
                pixel_values, grid_thw = self.preprocess_images(paths)
                counts = dict(zip(paths, self.tokens_per_image(grid_thw)))
                assembled = [self.assemble(p, counts, for_generation=False) for p in batch]
                input_ids, attention_mask = self.pad_batch([a.input_ids for a in assembled], left=False)
                hidden = self.hidden_states(input_ids, attention_mask, pixel_values, grid_thw)
                self.vision_encoder_calls += len(paths)
                counters = self.counters
                counters["lm_forward_calls"] += 1
                counters["vision_forward_calls"] += 1
                counters["vision_images"] += len(paths)
                counters["vision_tokens"] += pixel_values.shape[0]
                counters["lm_tokens"] += sum(len(a.input_ids) for a in assembled)
                counters["lm_padded_tokens"] += input_ids.numel()
                results += self.span_logprobs(
                    hidden,
                    [a.input_ids for a in assembled],
                    range(len(batch)),
                    [a.query_span for a in assembled],
                    [0] * len(batch),
                )
        return results

    def generate(
        self, prompts: Sequence[Prompt], max_new_tokens: int, num_beams: int, batch_size: int | None = None
    ) -> list[str]:
        """Batched beam search (greedy for ``num_beams=1``) with left padding; the new text of each prompt.

        Prompts of one call may hold different image counts: each row's image embeddings go to its own
        ``<|image_pad|>`` positions (row-major, images in prompt order), and its 3-D rope positions are computed from
        its unpadded tokens and its own image grids (``get_rope_index`` with the attention mask), so a row's answer
        does not depend on its batch-mates (tests compare with batch 1). Rows are batched in order of size
        (image count, then text length) to cut padding, ``batch_size`` rows (default ``score_batch_size``), and
        returned in the order given. See ``_generate_batch`` for what keeps it cheap.
        """
        import torch

        size = self.config.score_batch_size if batch_size is None else batch_size
        if size < 1:
            raise ValueError(f"generate: batch_size must be >= 1, got {size}")
        if num_beams < 1 or max_new_tokens < 1:
            raise ValueError(f"generate: num_beams and max_new_tokens must be >= 1, got {num_beams}, {max_new_tokens}")

        def prompt_size(i: int) -> tuple[int, int]:
            examples = (*prompts[i].demos, prompts[i].query)
            return len(examples), sum(len(e.question) + len(e.answer or "") for e in examples)

        order = sorted(range(len(prompts)), key=prompt_size)
        outputs: list[str] = [""] * len(prompts)
        with torch.inference_mode():
            for first in range(0, len(order), size):
                rows = order[first : first + size]
                texts = self._generate_batch([prompts[i] for i in rows], max_new_tokens, num_beams)
                for i, text in zip(rows, texts):
                    outputs[i] = text
        return outputs

    def prompt_token_lengths(self, prompts: Sequence[Prompt]) -> list[int]:
        """Token count of each assembled generation prompt, every ``<|image_pad|>`` expanded to its image's tokens
        (``image_token_count``: from the image header, no decode, no vision tower)."""
        paths = dict.fromkeys(e.image_path for p in prompts for e in (*p.demos, p.query))
        counts = {path: self.image_token_count(path) for path in paths}
        return [len(self.assemble(p, counts, for_generation=True).input_ids) for p in prompts]

    def image_token_count(self, path: str) -> int:
        """Merged-patch tokens of one image, as ``preprocess_images_host`` would make them (grid prod //
        merge_size**2), from its header size and the image processor's own ``smart_resize`` (patch_size,
        merge_size, min/max pixels with the adapter's overrides); cached per path and pixel limits."""
        processor = self.processor.image_processor
        size = dict(getattr(processor, "size", None) or {})
        low = self._image_kwargs.get("min_pixels", size.get("shortest_edge", getattr(processor, "min_pixels", None)))
        high = self._image_kwargs.get("max_pixels", size.get("longest_edge", getattr(processor, "max_pixels", None)))
        key = (path, low, high)
        cache = self._image_token_counts
        if key not in cache:
            width, height = image_size(path)  # the header only
            patch, merge = processor.patch_size, processor.merge_size
            if getattr(processor, "do_resize", True):
                from transformers.models.qwen2_vl.image_processing_qwen2_vl import smart_resize

                height, width = smart_resize(height, width, factor=patch * merge, min_pixels=low, max_pixels=high)
            cache[key] = (height // patch) * (width // patch) // self.merge_size**2
        return cache[key]

    def _generate_batch(self, batch: Sequence[Prompt], max_new_tokens: int, num_beams: int) -> list[str]:
        """One left-padded batch: vision once per distinct image, prompt prefilled once per row, then HF ``generate``.

        HF's own path runs the vision tower on every image of every row and the whole prompt once per BEAM (it expands
        the inputs before the first step). Here the distinct images of the batch are encoded once (or taken from the
        scoring cache), the prompt minus its last token is prefilled once per row, its key/values are repeated for
        the beams, and ``generate`` continues from them; the rope deltas set on the model after the prefill carry the
        3-D positions on (``prepare_inputs_for_generation`` repeats them per beam).
        """
        import torch

        model = self.model
        paths = list(dict.fromkeys(e.image_path for p in batch for e in (*p.demos, p.query)))
        cached = self._fast.features
        features = {p: cached[p] for p in paths if p in cached}
        # the batch's other images through the fast path's encoder (budgeted batches, grouped attention), kept
        # for this batch only: generation over a val split would otherwise hold every image's features
        self._fast.encode_images([p for p in paths if p not in cached], into=features)
        counts = {path: embeds.shape[0] for path, (embeds, _) in features.items()}
        assembled = [self.assemble(p, counts, for_generation=True) for p in batch]
        input_ids, attention_mask = self.pad_batch([a.input_ids for a in assembled], left=True)
        occurrences = [path for a in assembled for path in a.image_paths]  # row-major, prompt order
        prefix_ids, prefix_mask = input_ids[:, :-1], attention_mask[:, :-1]  # a prompt never ends with an image
        inputs_embeds = model.model.get_input_embeddings()(prefix_ids)
        image_mask = (prefix_ids == model.config.image_token_id).unsqueeze(-1).expand_as(inputs_embeds)
        image_embeds = torch.cat([features[p][0] for p in occurrences]).to(inputs_embeds.dtype)
        inputs_embeds = inputs_embeds.masked_scatter(image_mask, image_embeds)
        # 3-D rope positions of each row's unpadded prefix (``mrope_positions`` equals the model's get_rope_index,
        # which loops in Python per row); the rope delta of a row makes token L-1 (its last) take the next position
        width = prefix_ids.shape[1]
        positions = np.ones((3, len(batch), width), dtype=np.int64)
        deltas = np.zeros((len(batch), 1), dtype=np.int64)
        for row, item in enumerate(assembled):
            ids = item.input_ids[:-1]
            grids = [features[p][1].tolist() for p in item.image_paths]
            own = mrope_positions(ids, model.config.image_token_id, grids, self.merge_size)
            positions[:, row, width - len(ids) :] = own
            deltas[row, 0] = own.max() + 1 - width
        prefix = model.model(
            input_ids=prefix_ids,
            inputs_embeds=inputs_embeds,
            attention_mask=prefix_mask,
            position_ids=self.counters.to_device(torch.from_numpy(positions), self.device),
            use_cache=True,
        )
        model.model.rope_deltas = self.counters.to_device(torch.from_numpy(deltas), self.device)
        past = prefix.past_key_values
        past.batch_repeat_interleave(num_beams)
        try:
            generated = model.generate(
                input_ids=input_ids,
                attention_mask=attention_mask,
                past_key_values=past,
                max_new_tokens=max_new_tokens,
                num_beams=num_beams,
                do_sample=False,
                temperature=None,
                top_p=None,
                top_k=None,
                pad_token_id=self._pad_token_id(),
            )
        finally:
            model.model.rope_deltas = None
        new_tokens = generated[:, input_ids.shape[1] :]
        return [t.strip() for t in self.tokenizer.batch_decode(new_tokens, skip_special_tokens=True)]

    def clear_cache(self, vision: bool = True) -> None:
        self._fast.clear(keep_images=0 if vision else self.config.max_cached_images)

    # -- helpers ------------------------------------------------------------------------------------------

    def _pad_token_id(self) -> int:
        if self.tokenizer.pad_token_id is not None:
            return self.tokenizer.pad_token_id
        return self.tokenizer.convert_tokens_to_ids("<|endoftext|>")

    def pad_batch(self, sequences: Sequence[Sequence[int]], left: bool):
        """Token id rows padded to one length (left for generation, right for scoring) and their attention mask."""
        import torch

        length = max(len(s) for s in sequences)
        ids = torch.full((len(sequences), length), self._pad_token_id(), dtype=torch.long)
        mask = torch.zeros((len(sequences), length), dtype=torch.long)
        for row, sequence in enumerate(sequences):
            span = slice(length - len(sequence), length) if left else slice(0, len(sequence))
            ids[row, span] = torch.as_tensor(sequence)
            mask[row, span] = 1
        return self.counters.to_device(ids, self.device), self.counters.to_device(mask, self.device)
