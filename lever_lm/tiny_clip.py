"""The tiny CLIP of the toy world: a real open_clip ``CLIP`` with tiny dims, seeded random init, the real CLIP BPE
tokenizer. ``lever_lm.embeddings`` builds it for ``encoders.<name>.kind: tiny``.

Public API: ``TinyClipDims`` (frozen), ``tiny_model_name(dims, seed)`` (a deterministic architecture name; the
encoder id derives from it), ``new_tiny_clip(dims, seed) -> (model, preprocess, tokenizer, model_name)``.

Measured on the default toy dataset (``benchmarks/bench_toy.py --cue``): the random-init features already separate
the visual cue (the magenta frame), so no CLIP pretraining is needed: with the default ``clip_tiny_l`` 93% of
``img_sim_sampler`` candidates share their anchor's convention (``clip_tiny_b``: 95%), against 50% for
``rand_sampler`` and ``text_sim_sampler`` (the question text is the same under both conventions).
"""

from __future__ import annotations

import hashlib
import json
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path


@dataclass(frozen=True)
class TinyClipDims:
    """Dimensions of the tiny open_clip CLIP (vision ViT + text transformer)."""

    embed_dim: int = 64
    image_size: int = 64
    patch_size: int = 16
    width: int = 64
    layers: int = 2
    heads: int = 2
    text_width: int = 64
    text_layers: int = 2
    text_heads: int = 2
    context_length: int = 32


def tiny_model_name(dims: TinyClipDims, seed: int) -> str:
    """Deterministic name of the tiny architecture + init seed; the encoder id is derived from it."""
    payload = json.dumps({"dims": asdict(dims), "seed": seed}, sort_keys=True)
    return "lever-tiny-clip-" + hashlib.sha256(payload.encode()).hexdigest()[:12]


def _open_clip_tiny_config(dims: TinyClipDims) -> dict:
    if dims.width % dims.heads or dims.text_width % dims.text_heads:
        raise ValueError(f"tiny CLIP dims: width must be divisible by heads (got {asdict(dims)})")
    if dims.image_size % dims.patch_size:
        raise ValueError(f"tiny CLIP dims: image_size must be divisible by patch_size (got {asdict(dims)})")
    return {
        "embed_dim": dims.embed_dim,
        "vision_cfg": {
            "image_size": dims.image_size,
            "layers": dims.layers,
            "width": dims.width,
            "head_width": dims.width // dims.heads,
            "patch_size": dims.patch_size,
        },
        "text_cfg": {
            "context_length": dims.context_length,
            "vocab_size": 49408,  # the real CLIP BPE vocabulary
            "width": dims.text_width,
            "heads": dims.text_heads,
            "layers": dims.text_layers,
        },
    }


def _register_tiny_config(model_name: str, dims: TinyClipDims) -> None:
    import open_clip

    if model_name in open_clip.list_models():
        return
    # open_clip's registry only reads json files; it keeps what it read, and a rescan skips a file that is gone.
    with tempfile.TemporaryDirectory(prefix="lever_tiny_clip_") as folder:
        config_file = Path(folder) / f"{model_name}.json"
        config_file.write_text(json.dumps(_open_clip_tiny_config(dims)), encoding="utf-8")
        open_clip.add_model_config(config_file)


def new_tiny_clip(dims: TinyClipDims, seed: int):
    """The seeded tiny CLIP (on the CPU, eval mode), its image preprocessing, its tokenizer and its model name."""
    import open_clip
    import torch

    model_name = tiny_model_name(dims, seed)
    _register_tiny_config(model_name, dims)
    # Seed only inside a forked RNG so building an encoder never shifts the caller's random stream.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model, _, preprocess = open_clip.create_model_and_transforms(model_name, pretrained=None)
    return model.eval(), preprocess, open_clip.get_tokenizer(model_name), model_name
