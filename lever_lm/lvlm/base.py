"""The one interface every LVLM adapter implements, shared by beam search and ICL inference.

A prompt is a sequence of in-context demonstrations (ICDs, in prompt order, left to right) followed by
a query. ``score`` returns the per-token log-probabilities of the query's answer span (the label answer
plus the end-of-chunk token), located by token positions in the assembled input. ``generate`` returns
the model's answer text for queries without an answer.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections import Counter, OrderedDict
from collections.abc import Container, Hashable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from lever_lm.errors import InputError


@dataclass(frozen=True)
class Example:
    """One image + question (+ answer). ``image_path`` doubles as the key of the vision-feature cache."""

    image_path: str
    question: str
    answer: str | None = None


@dataclass(frozen=True)
class Prompt:
    """ICDs in prompt order (each with an answer), then the query (with its label answer when scoring)."""

    demos: tuple[Example, ...]
    query: Example


class LVLMConfigError(InputError):
    """A configured model path is missing or incomplete; the message names the config key."""


class WorkCounters(dict):
    """Cumulative counts of the work a scoring call does, kept by the adapters at their call sites (plain integer
    additions, so counting costs nothing measurable); read deltas with ``snapshot()`` / ``since(snapshot)``.

    - ``lm_forward_calls``: language-model forward passes (one per padded batch).
    - ``vision_forward_calls``: vision-tower forward passes (one per image batch); ``vision_images`` the images in
      them and ``vision_tokens`` the patch tokens (what the tower's compute scales with).
    - ``lm_tokens``: non-pad tokens run through the language model; ``lm_padded_tokens`` rows x width of each
      batch (what it costs); their ratio is the padding overhead.
    - ``host_syncs``: device-to-host reads in the scoring path (``.cpu()``, ``.item()``, ``.tolist()``,
      ``.numpy()`` on a tensor that lives on the model's device), each a blocking wait on a GPU; counted through
      ``device_read`` at every such call site, so the number is the same on the CPU as on a GPU. Syncs inside
      transformers / open_flamingo code are not counted.
    - ``h2d_copies``: host-to-device copies issued in the scoring path (``.to(device)`` of host tensors).
    - ``kv_copy_ops``: tensor operations of the fast paths that copy cached key/values (assembling a batch's past,
      storing a prefix), each about one kernel launch on a GPU; ``kv_copy_bytes`` the bytes they write. Copies
      inside the model's own cache update are not counted.
    - ``vision_attention_calls``: attention calls of Qwen's vision tower under ``qwen_vision.grouped_attention``,
      against ``vision_attention_chunks``, the per-window / per-image calls the stock tower makes for the same input.
    """

    KEYS = (
        "lm_forward_calls",
        "vision_forward_calls",
        "vision_images",
        "vision_tokens",
        "lm_tokens",
        "lm_padded_tokens",
        "host_syncs",
        "h2d_copies",
        "kv_copy_ops",
        "kv_copy_bytes",
        "vision_attention_calls",
        "vision_attention_chunks",
    )

    def __init__(self):
        super().__init__({key: 0 for key in self.KEYS})

    def reset(self) -> None:
        for key in self.KEYS:
            self[key] = 0

    def snapshot(self) -> dict[str, int]:
        return dict(self)

    def since(self, snapshot: dict[str, int]) -> dict[str, int]:
        """Counts accumulated after ``snapshot`` was taken."""
        return {key: self[key] - snapshot.get(key, 0) for key in self.KEYS}

    def device_read(self, value):
        """Count one device-to-host read and pass its result through: ``counters.device_read(t.cpu())``."""
        self["host_syncs"] += 1
        return value

    def to_device(self, tensor, device, *args, **kwargs):
        """``tensor.to(device, ...)``, counted as one host-to-device copy. To a GPU the copy is issued
        non-blocking: PyTorch's blocking copy waits for the whole stream (a host sync per copy), while an
        asynchronous copy from pageable memory is staged by the driver before the call returns, so the host
        tensor may change or go right after."""
        self["h2d_copies"] += 1
        if str(device).startswith("cuda") and tensor.device.type == "cpu":
            kwargs.setdefault("non_blocking", True)
        return tensor.to(device, *args, **kwargs)


def to_device_packed(counters: WorkCounters, tensors: Sequence, device) -> list:
    """Host integer tensors moved to ``device`` in ONE copy (flattened, concatenated, split and reshaped there)."""
    import torch

    flat = counters.to_device(torch.cat([t.reshape(-1) for t in tensors]), device)
    pieces = torch.split(flat, [t.numel() for t in tensors])
    return [piece.view(t.shape) for piece, t in zip(pieces, tensors)]


class LVLMAdapter(ABC):
    """Base class of the OpenFlamingo and Qwen2.5-VL adapters."""

    #: number of images pushed through the vision encoder so far (the benchmark reads it)
    vision_encoder_calls: int = 0
    #: work counters of the scoring paths (``WorkCounters``); each adapter sets its own in ``__init__``
    counters: WorkCounters

    @abstractmethod
    def score(self, prompts: Sequence[Prompt]) -> list[np.ndarray]:
        """Fast path: per-token log-probs (float64 arrays) of each query's answer + end-of-chunk token.

        Reuses cached vision features and key/value blocks across calls until ``clear_cache``.
        """

    @abstractmethod
    def score_naive(self, prompts: Sequence[Prompt], batch_size: int = 32) -> list[np.ndarray]:
        """Reference path: recomputes everything (vision included) per sequence, in batches.

        Used only by tests (as the equality oracle) and by the benchmark (as the baseline).
        """

    @abstractmethod
    def generate(
        self, prompts: Sequence[Prompt], max_new_tokens: int, num_beams: int, batch_size: int | None = None
    ) -> list[str]:
        """Answer text for each prompt's query (the query's ``answer`` is ignored), ``batch_size`` prompts at a
        time (default: the adapter's ``score_batch_size``); rows may hold different numbers of images."""

    def prompt_token_lengths(self, prompts: Sequence[Prompt]) -> list[int]:
        """Tokens the language model sees for each generation prompt (no query answer), images included, computed
        without running the model: ICL inference plans its token-budget batches from them."""
        raise NotImplementedError(f"{type(self).__name__} does not count prompt tokens")

    def clear_cache(self, vision: bool = True) -> None:  # noqa: B027  (optional hook for adapters with caches)
        """Drop cached key/value blocks, and the cached vision features unless ``vision`` is False: then only those
        beyond the config's ``max_cached_images``, least recently used first (beam search, per query: an image's
        features depend on the image alone, and the anchors of a job share most of their candidates' images)."""


#: image patch tokens per vision-tower forward when the config leaves it unset, per device: on a GPU a whole beam
#: step's new images (cand 64 at 224 px: 65 x 256 patches) in one forward; on the CPU, batches past ~16 such images
#: ran 1.2-1.4x slower (measured, scaled dims, 2 threads: cache-bound), so 4096
DEFAULT_VISION_TOKEN_BUDGET = {"cuda": 32768, "cpu": 4096}


def build_config(cls: type, family: str, name: str, entry: Mapping[str, Any]):
    """An adapter's config dataclass ``cls`` from ``beam_models.<name>`` of ``family`` (``entry["family"]``, if
    present, must be it), validated against the config schema, which holds the keys of each family, their types,
    bounds and choices (``lever_lm.config.validate_section``; errors name the key: ``config key
    beam_models.m.precision: ...``). The defaults are the dataclass's: a schema default would add them to the entry,
    which the rules' params and the model digests hold. Integer fields are made ints (the schema takes 2.0 for an
    integer). A tiny variant's ``tiny``/``pretrain`` are ``lever_lm.lvlm.factory``'s, which strips them first: here
    they are an error naming the key. ``name`` (Flamingo: ignored) is the entry's key."""
    import dataclasses

    from lever_lm.config import validate_section

    if not isinstance(entry, Mapping):  # the family is added below; the schema checks the type of the rest
        raise ValueError(f"beam_models.{name}: expected a mapping, got {type(entry).__name__}")
    if entry.get("family", family) != family:
        raise ValueError(f"beam_models.{name}.family: expected {family!r}, got {entry['family']!r}")
    entry = validate_section(("beam_models", name), {**entry, "family": family})
    values = {key: value for key, value in entry.items() if key not in ("family", "name")}
    fields = {f.name: f for f in dataclasses.fields(cls)}
    stray = sorted(set(values) - set(fields))
    if stray:
        raise ValueError(
            f"beam_models.{name}.{stray[0]}: not an adapter field (lever_lm.lvlm.factory parses a tiny variant's "
            f"tiny/pretrain: parse_config, load_adapter)"
        )
    for key, value in values.items():
        if value is not None and str(fields[key].type).split(" | ")[0] == "int":
            values[key] = int(value)
    return cls(**values, name=name)


def vision_token_budget(configured: int | None, device) -> int:
    """The configured ``vision_token_budget``, else the device's default."""
    if configured is not None:
        return configured
    return DEFAULT_VISION_TOKEN_BUDGET["cuda" if str(device).startswith("cuda") else "cpu"]


def plan_image_batches(patch_counts: Sequence[int], token_budget: int) -> list[list[int]]:
    """Vision-encoder batches, as lists of image indices in the given order: consecutive images while their patch
    tokens stay within ``token_budget`` (an image larger than the budget goes alone)."""
    if token_budget < 1:
        raise ValueError(f"vision token_budget must be >= 1, got {token_budget}")
    batches: list[list[int]] = []
    total = 0
    for index, count in enumerate(patch_counts):
        if batches and total + count <= token_budget:
            batches[-1].append(index)
            total += count
        else:
            batches.append([index])
            total = count
    return batches


#: vision features an adapter keeps from one beam-search query to the next (``max_cached_images``): the toy's every
#: image; for OK-VQA with the 3B models ~128 MB (Flamingo latents) to ~1 GB (Qwen's merged patches at 448 px)
DEFAULT_MAX_CACHED_IMAGES = 1024


class VisionFeatureCache(OrderedDict):
    """Vision features by image path, in order of last use. Entries are only dropped by ``keep``, between queries,
    so a call never loses an image it is using."""

    def touch(self, paths: Sequence[str]) -> None:
        """Mark these (cached) images as the most recently used."""
        for path in paths:
            if path in self:
                self.move_to_end(path)

    def keep(self, capacity: int) -> None:
        """Drop the least recently used entries beyond ``capacity``."""
        while len(self) > capacity:
            self.popitem(last=False)


def select_device_dtype(precision: str):
    """CUDA when available; ``auto`` means bf16 there and fp32 on the CPU."""
    import torch

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if precision == "bf16" or (precision == "auto" and device.type == "cuda"):
        return device, torch.bfloat16
    return device, torch.float32


def mean_token_probability(token_logprobs: np.ndarray) -> float:
    """P̄(y|ctx): geometric mean token probability, exp(mean log p)."""
    if token_logprobs.size == 0:
        raise ValueError("empty answer span: cannot compute a mean token probability")
    return float(np.exp(np.mean(token_logprobs)))


def answer_token_span(offsets: Sequence[tuple[int, int]], char_start: int, char_end: int) -> tuple[int, int]:
    """Token indices ``[first, stop)`` of the answer occupying characters ``[char_start, char_end)`` of a text
    tokenised AS ONE STRING, from the tokenizer's offset mapping (docs/stages.md stage 4, both adapters).

    The answer's tokens are every token whose characters overlap the answer's. A token that merges the ``:``
    before the answer with its first characters (Qwen's byte-level BPE has ``:red``, ``:no``, ``:white``) overlaps
    the answer, so it belongs to y: the model must produce it to produce the answer, and splitting the text at the
    ``:`` instead would feed the model a token stream its tokenizer never produces. The caller adds the closing
    end token (``stop`` is its index) and checks that it is the expected one.
    """
    if char_end <= char_start:
        raise ValueError(f"empty answer at characters [{char_start}, {char_end})")
    inside = [i for i, (start, end) in enumerate(offsets) if start < char_end and end > char_start]
    if not inside:
        raise ValueError(f"no token overlaps the answer at characters [{char_start}, {char_end})")
    return inside[0], inside[-1] + 1


def plan_batches(
    lengths: Sequence[int], sort_keys: Sequence[tuple], max_rows: int, token_budget: int | None
) -> list[list[int]]:
    """Batches of the fast paths' forward rows, as lists of row indices.

    ``lengths[i]`` is row i's continuation length (the tokens it runs through the language model), ``sort_keys[i]``
    the adapter's batching order. Without a token budget: rows sorted by ``sort_keys``, ``max_rows`` at a time
    (``score_batch_size``; the behaviour before budgets existed). With ``token_budget``: rows sorted by length (then
    ``sort_keys``), so rows of like length share a batch and little is padded, and each batch filled while
    ``rows x longest continuation`` (the padded tokens the language model runs) stays within the budget and the
    rows within ``max_rows``; a row longer than the budget runs alone. Batching changes only float summation order,
    never which tokens a row sees.
    """
    if max_rows < 1:
        raise ValueError(f"max_rows must be >= 1, got {max_rows}")
    if token_budget is None:
        order = sorted(range(len(lengths)), key=lambda i: sort_keys[i])
        return [order[first : first + max_rows] for first in range(0, len(order), max_rows)]
    if token_budget < 1:
        raise ValueError(f"token_budget must be >= 1 or None, got {token_budget}")
    order = sorted(range(len(lengths)), key=lambda i: (lengths[i], sort_keys[i]))
    batches: list[list[int]] = []
    current: list[int] = []
    longest = 0
    for index in order:
        length = lengths[index]
        widest = max(longest, length)
        if current and (len(current) >= max_rows or (len(current) + 1) * widest > token_budget):
            batches.append(current)
            current, widest = [], length
        current.append(index)
        longest = widest
    if current:
        batches.append(current)
    return batches


def choose_prefix_depths(prefix_keys: Sequence[Sequence[Hashable]], cached: Container) -> list[int]:
    """Per prompt, how many leading ICDs to serve from the key/value cache (the fast paths' shared policy).

    ``prefix_keys[i][d - 1]`` identifies prompt i's first d ICDs. The choice is the deepest prefix already cached
    or shared by two or more prompts of the call; else the first ICD, the block that "left"-order beam search
    finds again at its next step; 0 for a prompt without ICDs.
    """
    shared = Counter(key for keys in prefix_keys for key in keys)
    return [
        next(
            (d for d in range(len(keys), 0, -1) if keys[d - 1] in cached or shared[keys[d - 1]] >= 2), min(1, len(keys))
        )
        for keys in prefix_keys
    ]
