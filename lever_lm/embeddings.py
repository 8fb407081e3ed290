"""Stage 2a: CLIP image and text embeddings of records, computed once and stored.

Public API
----------
- ``ClipEncoderConfig`` / ``TinyClipDims``: frozen encoder config; ``ClipEncoderConfig.from_config(name, section)``
  builds one from the ``encoders.<name>`` section of config.yaml.
- ``build_clip_encoder(cfg) -> ClipEncoder``: one interface for the three kinds
    * ``tiny``: a real open_clip ``CLIP`` with tiny dims, seeded random init, real CLIP BPE tokenizer
      (``lever_lm.tiny_clip`` builds it);
    * ``open_clip``: an open_clip architecture (``model_name``) with weights from a local file (``checkpoint``);
    * ``hf_clip``: transformers ``CLIPModel`` + ``CLIPProcessor`` from a local directory (``checkpoint``).
  ``encoder.encode_images(list[PIL.Image])`` / ``encoder.encode_texts(list[str])`` return float32 [n, dim],
  L2-normalised; ``encoder.dim``; ``encoder.encoder_id`` identifies architecture + weights.
- ``compute_record_embeddings(records, cfg, num_threads=1, encoder=None) -> EmbeddingResult``: image and text
  embedding per record row (row i = record idx i); every distinct image file is loaded and encoded once.
  Text = the question, or the label (caption) where the question is empty.
- ``embedding_paths(directory, split) -> EmbeddingPaths`` ({split}.image.npy, {split}.text.npy, {split}.meta.json),
  ``save_embeddings(paths, result)``, ``load_embeddings(paths) -> EmbeddingResult`` (validated against meta).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from lever_lm.io_utils import read_json, save_npy, write_json
from lever_lm.tiny_clip import TinyClipDims, tiny_model_name  # noqa: F401  (re-exported from lever_lm.tiny_clip)

if TYPE_CHECKING:  # pandas (and lever_lm.data, which imports it) only where records are embedded: the jobs that
    import pandas as pd  # only load stored embeddings (faiss_index, train_selector) do not pay for it


ENCODER_KINDS = ("tiny", "open_clip", "hf_clip")
_HF_WEIGHT_FILES = (
    "model.safetensors",
    "pytorch_model.bin",
    "model.safetensors.index.json",
    "pytorch_model.bin.index.json",
)


@dataclass(frozen=True)
class ClipEncoderConfig:
    """One CLIP encoder. ``name`` is its key under ``encoders`` in config.yaml (used in error messages).

    ``model_name``: open_clip architecture for kind open_clip (for OpenAI weights use the ``-quickgelu``
    variant, e.g. ``ViT-L-14-quickgelu``). ``checkpoint``: weights file (open_clip) or directory (hf_clip).
    ``device``: "cpu", "cuda", or "auto" (cuda when available).
    """

    name: str
    kind: str = "tiny"
    model_name: str | None = None
    checkpoint: str | None = None
    tiny: TinyClipDims = field(default_factory=TinyClipDims)
    seed: int = 0
    batch_size: int = 64
    device: str = "cpu"

    def __post_init__(self) -> None:
        # kind and batch_size: for direct construction (tests, benchmarks); from_config has the schema's checks
        if self.kind not in ENCODER_KINDS:
            raise ValueError(f"encoders.{self.name}.kind: unknown kind {self.kind!r}; known: {list(ENCODER_KINDS)}")
        if self.batch_size < 1:
            raise ValueError(f"encoders.{self.name}.batch_size must be >= 1, got {self.batch_size}")
        if self.kind == "open_clip" and not self.model_name:
            raise ValueError(f"encoders.{self.name}.model_name is required for kind open_clip (e.g. ViT-L-14)")
        if self.kind in ("open_clip", "hf_clip") and not self.checkpoint:
            raise ValueError(f"encoders.{self.name}.checkpoint is required for kind {self.kind}")

    @classmethod
    def from_config(cls, name: str, section: Mapping[str, Any]) -> ClipEncoderConfig:
        """Build from the ``encoders.<name>`` mapping of config.yaml, validated against the config schema with its
        defaults filled (``lever_lm.config.validate_section``: keys, kind, bounds, the tiny sizes' names; errors name
        the key: ``unknown config key encoders.<name>.colour``). Which keys a kind needs is checked here."""
        from lever_lm.config import validate_section

        values = validate_section(("encoders", name), section)
        return cls(name=name, tiny=TinyClipDims(**(values.pop("tiny", None) or {})), **values)


class ClipEncoder:
    """Common interface: subclasses implement ``_encode_image_batch`` and ``_encode_text_batch`` (torch tensors)."""

    def __init__(self, model: Any, encoder_id: str, dim: int, batch_size: int, device: Any) -> None:
        self.model = model
        self.encoder_id = encoder_id
        self.dim = dim
        self.batch_size = batch_size
        self.device = device

    def encode_images(self, images: Sequence[Any]) -> np.ndarray:
        return self._encode_batched(list(images), self._encode_image_batch)

    def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        return self._encode_batched([str(t) for t in texts], self._encode_text_batch)

    def _encode_batched(self, items: list, encode_batch: Any) -> np.ndarray:
        import torch

        if not items:
            return np.zeros((0, self.dim), dtype=np.float32)
        chunks = []
        with torch.inference_mode():
            for start in range(0, len(items), self.batch_size):
                features = encode_batch(items[start : start + self.batch_size]).float()
                features = torch.nn.functional.normalize(features, dim=-1)
                chunks.append(features.cpu().numpy())
        return np.ascontiguousarray(np.concatenate(chunks, axis=0), dtype=np.float32)

    def _encode_image_batch(self, images: list) -> Any:
        raise NotImplementedError

    def _encode_text_batch(self, texts: list[str]) -> Any:
        raise NotImplementedError


class _OpenClipEncoder(ClipEncoder):
    def __init__(self, model: Any, preprocess: Any, tokenizer: Any, **kwargs: Any) -> None:
        super().__init__(model, **kwargs)
        self.preprocess = preprocess
        self.tokenizer = tokenizer

    def _encode_image_batch(self, images: list) -> Any:
        import torch

        pixels = torch.stack([self.preprocess(image) for image in images]).to(self.device)
        return self.model.encode_image(pixels)

    def _encode_text_batch(self, texts: list[str]) -> Any:
        return self.model.encode_text(self.tokenizer(texts).to(self.device))


class _HfClipEncoder(ClipEncoder):
    def __init__(self, model: Any, processor: Any, **kwargs: Any) -> None:
        super().__init__(model, **kwargs)
        self.processor = processor

    def _encode_image_batch(self, images: list) -> Any:
        inputs = self.processor(images=images, return_tensors="pt")
        return _as_tensor(self.model.get_image_features(pixel_values=inputs["pixel_values"].to(self.device)))

    def _encode_text_batch(self, texts: list[str]) -> Any:
        max_length = self.model.config.text_config.max_position_embeddings
        inputs = self.processor(text=texts, return_tensors="pt", padding=True, truncation=True, max_length=max_length)
        inputs = {key: value.to(self.device) for key, value in inputs.items()}
        return _as_tensor(self.model.get_text_features(**inputs))


def _as_tensor(output: Any) -> Any:
    # Some transformers versions wrap features in a ModelOutput; the pooled projection is what we want.
    if hasattr(output, "pooler_output"):
        return output.pooler_output
    return output


def _resolve_device(cfg: ClipEncoderConfig) -> Any:
    import torch

    if cfg.device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(cfg.device)


def _sha256_prefix(paths: Sequence[Path], length: int = 16) -> str:
    digest = hashlib.sha256()
    for path in paths:
        with open(path, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 22), b""):
                digest.update(block)
    return digest.hexdigest()[:length]


def _build_tiny(cfg: ClipEncoderConfig) -> ClipEncoder:
    from lever_lm.tiny_clip import new_tiny_clip

    device = _resolve_device(cfg)
    model, preprocess, tokenizer, model_name = new_tiny_clip(cfg.tiny, cfg.seed)
    model = model.to(device).eval()
    return _OpenClipEncoder(
        model,
        preprocess,
        tokenizer,
        encoder_id=f"tiny:{model_name.removeprefix('lever-tiny-clip-')}",
        dim=cfg.tiny.embed_dim,
        batch_size=cfg.batch_size,
        device=device,
    )


def _build_open_clip(cfg: ClipEncoderConfig) -> ClipEncoder:
    import open_clip

    checkpoint = Path(cfg.checkpoint)
    if not checkpoint.is_file():
        raise FileNotFoundError(f"encoders.{cfg.name}.checkpoint: weights file not found: {checkpoint}")
    if cfg.model_name not in open_clip.list_models():
        raise ValueError(f"encoders.{cfg.name}.model_name: unknown open_clip architecture {cfg.model_name!r}")
    device = _resolve_device(cfg)
    model, _, preprocess = open_clip.create_model_and_transforms(cfg.model_name, pretrained=str(checkpoint))
    model = model.to(device).eval()
    tokenizer = open_clip.get_tokenizer(cfg.model_name)
    dim = int(open_clip.get_model_config(cfg.model_name)["embed_dim"])
    return _OpenClipEncoder(
        model,
        preprocess,
        tokenizer,
        encoder_id=f"open_clip:{cfg.model_name}:{_sha256_prefix([checkpoint])}",
        dim=dim,
        batch_size=cfg.batch_size,
        device=device,
    )


def check_local_files(cfg: ClipEncoderConfig) -> None:
    """A real encoder's weights file (open_clip) or model dir (hf_clip) exists and looks complete; loads nothing.
    Raises FileNotFoundError naming the config key and the path."""
    key = f"encoders.{cfg.name}.checkpoint"
    if cfg.kind == "open_clip":
        if not Path(cfg.checkpoint).is_file():
            raise FileNotFoundError(f"{key}: weights file not found: {cfg.checkpoint}")
    elif cfg.kind == "hf_clip":
        folder = Path(cfg.checkpoint)
        if not folder.is_dir():
            raise FileNotFoundError(f"{key}: model directory not found: {folder}")
        missing = [name for name in ("config.json", "preprocessor_config.json") if not (folder / name).is_file()]
        if not any((folder / name).is_file() for name in _HF_WEIGHT_FILES):
            missing.append(" or ".join(_HF_WEIGHT_FILES[:2]))
        has_tokenizer = (folder / "tokenizer.json").is_file() or (
            (folder / "vocab.json").is_file() and (folder / "merges.txt").is_file()
        )
        if not has_tokenizer:
            missing.append("tokenizer.json or vocab.json+merges.txt")
        if missing:
            raise FileNotFoundError(f"{key}: incomplete CLIP directory {folder}; missing: {missing}")


def _build_hf_clip(cfg: ClipEncoderConfig) -> ClipEncoder:
    from transformers import CLIPModel, CLIPProcessor

    folder = Path(cfg.checkpoint)
    check_local_files(cfg)
    weights = [folder / name for name in _HF_WEIGHT_FILES if (folder / name).is_file()]
    device = _resolve_device(cfg)
    model = CLIPModel.from_pretrained(str(folder), local_files_only=True).to(device).eval()
    processor = CLIPProcessor.from_pretrained(str(folder), local_files_only=True)
    # Sharded checkpoints: hash the index plus every shard it names.
    hashed = []
    for weight in weights[:1]:
        hashed.append(weight)
        if weight.name.endswith(".index.json"):
            shards = sorted(set(json.loads(weight.read_text())["weight_map"].values()))
            hashed.extend(folder / shard for shard in shards)
    return _HfClipEncoder(
        model,
        processor,
        encoder_id=f"hf_clip:{folder.name}:{_sha256_prefix([folder / 'config.json', *hashed])}",
        dim=int(model.config.projection_dim),
        batch_size=cfg.batch_size,
        device=device,
    )


def build_clip_encoder(cfg: ClipEncoderConfig) -> ClipEncoder:
    """Build the encoder named by ``cfg.kind``; missing weights raise an error naming the config key."""
    builders = {"tiny": _build_tiny, "open_clip": _build_open_clip, "hf_clip": _build_hf_clip}
    return builders[cfg.kind](cfg)


@dataclass(frozen=True)
class EmbeddingResult:
    """Row i of ``image`` / ``text`` belongs to the record with idx i."""

    image: np.ndarray
    text: np.ndarray
    meta: dict


@dataclass(frozen=True)
class EmbeddingPaths:
    image: Path
    text: Path
    meta: Path


def embedding_paths(directory: str | os.PathLike, split: str) -> EmbeddingPaths:
    folder = Path(directory)
    return EmbeddingPaths(folder / f"{split}.image.npy", folder / f"{split}.text.npy", folder / f"{split}.meta.json")


def record_texts(records: pd.DataFrame) -> list[str]:
    """The text to embed per record: the question, or the label caption where the question is empty."""
    questions = records["question"].fillna("").astype(str).str.strip()
    labels = records["label"].fillna("").astype(str).str.strip()
    texts = questions.where(questions != "", labels)
    empty = records.loc[texts == "", "question_id"].tolist()
    if empty:
        raise ValueError(f"records: {len(empty)} records have neither question nor label, question_id {empty[:5]}")
    return texts.tolist()


def _validate_records(records: pd.DataFrame) -> str:
    required = ["idx", "split", "question_id", "image_path", "question", "label"]
    missing = [column for column in required if column not in records.columns]
    if missing:
        raise ValueError(f"records: missing columns {missing}")
    if len(records) == 0:
        raise ValueError("records: empty, nothing to embed")
    idx = records["idx"].to_numpy()
    if not np.array_equal(idx, np.arange(len(records))):
        bad = records.loc[idx != np.arange(len(records)), "question_id"].tolist()
        raise ValueError(f"records: column idx must be 0..n-1 in row order; first offending question_id {bad[:5]}")
    splits = sorted(records["split"].astype(str).unique())
    if len(splits) != 1:
        raise ValueError(f"records: expected one split, found {splits}")
    return splits[0]


def compute_record_embeddings(
    records: pd.DataFrame,
    cfg: ClipEncoderConfig,
    num_threads: int = 1,
    encoder: ClipEncoder | None = None,
) -> EmbeddingResult:
    """Embed every record's image and text; each distinct ``image_path`` is loaded and encoded once.

    ``encoder`` may be passed to reuse an already built one (it must come from ``cfg``).
    """
    import torch

    from lever_lm.data import load_image

    split = _validate_records(records)
    if num_threads < 1:
        raise ValueError(f"num_threads must be >= 1, got {num_threads}")
    torch.set_num_threads(num_threads)
    texts = record_texts(records)
    image_paths = records["image_path"].astype(str)
    missing = sorted(p for p in image_paths.unique() if not os.path.isfile(p))
    if missing:
        from lever_lm.data import DatasetError

        listed = []
        for path in missing[:5]:
            ids = sorted(int(i) for i in records.loc[image_paths == path, "question_id"])
            listed.append(f"{path} (question_id{'s' if len(ids) > 1 else ''} {', '.join(map(str, ids))})")
        more = f", ... ({len(missing) - 5} more)" if len(missing) > 5 else ""
        raise DatasetError(
            f"records ({split}): {len(missing)} image file(s) missing since the records were built: "
            f"{', '.join(listed)}{more}"
        )
    if encoder is None:
        encoder = build_clip_encoder(cfg)

    distinct_paths, row_to_image = np.unique(image_paths.to_numpy(), return_inverse=True)
    image_features = np.empty((len(distinct_paths), encoder.dim), dtype=np.float32)
    # Decode the next batch of images in threads while the current one is encoded.
    with ThreadPoolExecutor(max_workers=max(1, num_threads)) as pool:
        starts = range(0, len(distinct_paths), encoder.batch_size)
        batches = [distinct_paths[s : s + encoder.batch_size] for s in starts]
        pending = list(pool.map(load_image, batches[0])) if batches else []
        for number, start in enumerate(starts):
            following = [pool.submit(load_image, p) for p in batches[number + 1]] if number + 1 < len(batches) else []
            image_features[start : start + len(pending)] = encoder.encode_images(pending)
            pending = [future.result() for future in following]
    text_features = encoder.encode_texts(texts)
    meta = {
        "encoder_id": encoder.encoder_id,
        "encoder_name": cfg.name,
        "dim": int(encoder.dim),
        "n": int(len(records)),
        "n_distinct_images": int(len(distinct_paths)),
        "split": split,
        "normalized": True,
        "dtype": "float32",
    }
    return EmbeddingResult(image=image_features[row_to_image], text=text_features, meta=meta)


def save_embeddings(paths: EmbeddingPaths, result: EmbeddingResult) -> None:
    """Write image, text, then meta (meta last, so a present meta means complete arrays), each atomically."""
    _check_result(result, source="embedding result")
    save_npy(paths.image, result.image.astype(np.float32, copy=False))
    save_npy(paths.text, result.text.astype(np.float32, copy=False))
    write_json(paths.meta, result.meta)


def load_embeddings(paths: EmbeddingPaths) -> EmbeddingResult:
    """Load and validate against meta.json: shapes (n, dim), float32; errors name the offending file."""
    for path in (paths.meta, paths.image, paths.text):
        if not Path(path).is_file():
            raise FileNotFoundError(f"{path}: embedding file not found")
    meta = read_json(paths.meta)
    missing = [key for key in ("encoder_id", "dim", "n", "split", "normalized", "dtype") if key not in meta]
    if missing:
        raise ValueError(f"{paths.meta}: missing keys {missing}")
    image = np.load(paths.image, allow_pickle=False)
    text = np.load(paths.text, allow_pickle=False)
    expected = (int(meta["n"]), int(meta["dim"]))
    for path, array in ((paths.image, image), (paths.text, text)):
        if array.shape != expected:
            raise ValueError(f"{path}: shape {array.shape} does not match {paths.meta} (n, dim) = {expected}")
        if array.dtype != np.dtype(meta["dtype"]):
            raise ValueError(f"{path}: dtype {array.dtype} does not match {paths.meta} dtype {meta['dtype']}")
    return EmbeddingResult(image=image, text=text, meta=meta)


def _check_result(result: EmbeddingResult, source: str) -> None:
    n, dim = int(result.meta["n"]), int(result.meta["dim"])
    for name, array in (("image", result.image), ("text", result.text)):
        if array.shape != (n, dim):
            raise ValueError(f"{source}: {name} array shape {array.shape} != (n, dim) = {(n, dim)} from meta")
