"""Beam-search benchmark: the naive (upstream-style) scoring path against the fast path, in one process.

Both paths run the same InfoScore beam search (``lever_lm.beam_search.search_anchor``) on the same anchors with a
randomly initialised, scaled-down model whose proportions follow the 3B models (see ``model_dims``):
224x224 images, so vision encoding is a real share of the work, ~10-word questions and 1-2 word answers.

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/bench_beam_search.py --model both --anchors 3 --cand 64

Prints per model: the dims, anchors/s of each path, the speed-up, vision-encoder calls per anchor (the fast path
should equal the number of distinct images, 1 + cand), and the max |Δ step score| between the paths.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lever_lm.beam_search import BeamSearchConfig, ExampleTable, search_anchor  # noqa: E402
from lever_lm.toy.tokenizer import collect_vocabulary  # noqa: E402

IMAGE_SIZE = 224
SUBJECTS = ["man", "woman", "dog", "cat", "boy", "girl", "bus", "train", "horse", "bird", "player", "child"]
OBJECTS = ["umbrella", "kite", "plate", "frisbee", "bicycle", "sign", "table", "boat", "bench", "clock"]
QUESTION_TEMPLATES = [
    "What is the {s} in this picture holding in the hand?",
    "What kind of {o} is shown next to the {s} here?",
    "Why is the {s} standing near the {o} on the street?",
    "What color is the {o} that the {s} is looking at?",
    "Which sport is the {s} playing with the {o} today?",
    "Where would you usually find a {o} like this one?",
]
ANSWERS = ["red", "tennis", "blue", "wood", "on the road", "baseball", "summer", "metal", "two", "fire truck",
           "kitchen", "green", "surfing", "yes", "white", "park"]


def make_records(image_dir: Path, n_train: int, seed: int) -> pd.DataFrame:
    """Synthetic train records with one distinct 224x224 image each (coloured background and blocks)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    rows = []
    for idx in range(n_train):
        pixels = np.empty((IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.uint8)
        pixels[:] = rng.integers(0, 256, size=3)
        for _ in range(3):
            y, x = rng.integers(0, IMAGE_SIZE - 60, size=2)
            h, w = rng.integers(20, 60, size=2)
            pixels[y : y + h, x : x + w] = rng.integers(0, 256, size=3)
        path = image_dir / f"img_{idx:04d}.jpg"
        Image.fromarray(pixels).save(path, quality=90)
        template = QUESTION_TEMPLATES[rng.integers(len(QUESTION_TEMPLATES))]
        question = template.format(s=SUBJECTS[rng.integers(len(SUBJECTS))], o=OBJECTS[rng.integers(len(OBJECTS))])
        label = ANSWERS[rng.integers(len(ANSWERS))]
        rows.append({"idx": idx, "split": "train", "question_id": 100000 + idx, "image_id": idx,
                     "image_path": str(path), "question": question, "answers": [label] * 10, "label": label})
    return pd.DataFrame(rows)


def model_dims(model: str):
    """Scaled-down dims in the proportions of the 3B models (depth:width ratios, image tokens per image)."""
    if model == "flamingo":
        from lever_lm.toy.lvlm import FlamingoTinyDims

        # ViT-L/14 at 224px: 257 tokens (24 layers x 1024) -> 6 x 256; MPT-1B (24 x 2048) -> 6 x 512;
        # perceiver 64 latents (fixed by open_flamingo), cross-attention every layer
        return FlamingoTinyDims(lang_width=512, lang_layers=6, lang_heads=8, max_seq_len=1024, vision_width=256,
                                vision_layers=6, vision_head_width=64, image_size=IMAGE_SIZE, patch_size=14,
                                clip_embed_dim=256, init_std=0.02)
    from lever_lm.toy.lvlm import QwenTinyDims

    # Qwen2.5-VL-3B: LM 36 x 2048 (16 heads, 2 kv heads), vision 32 x 1280 -> LM 8 x 512, vision 6 x 256;
    # 224x224 -> 16x16 patches -> 2x2 merge -> 64 image tokens
    return QwenTinyDims(text_hidden=512, text_intermediate=1408, text_layers=8, text_heads=8, text_kv_heads=2,
                        mrope_section=(8, 12, 12), vision_depth=6, vision_hidden=256, vision_intermediate=1024,
                        vision_heads=4, image_min_pixels=IMAGE_SIZE * IMAGE_SIZE, image_max_pixels=IMAGE_SIZE * IMAGE_SIZE)


def build_adapter(model: str, words: list[str], seed: int, batch_size: int):
    from lever_lm.toy.lvlm import make_tiny_adapter

    dims = model_dims(model)
    family = "flamingo" if model == "flamingo" else "qwen2_5_vl"
    return make_tiny_adapter(family, words, dims, seed=seed, precision="fp32", score_batch_size=batch_size), dims


def parameter_count(adapter) -> int:
    return sum(p.numel() for p in adapter.model.parameters()) if hasattr(adapter, "model") else -1


def run_paths(adapter, table, anchors, candidates, base_cfg):
    """Both paths, interleaved anchor by anchor, so load from other processes hits both alike."""
    totals = {name: {"results": [], "seconds": 0.0, "vision": 0, "lm_tokens": 0} for name in ("fast", "naive")}
    for anchor in anchors:
        for name in ("fast", "naive"):
            cfg = BeamSearchConfig(**base_cfg, use_fast_path=name == "fast")
            adapter.vision_encoder_calls = 0
            adapter.text_tokens_computed = 0  # counted by adapters that track LM work; harmless otherwise
            started = time.perf_counter()
            totals[name]["results"].append(search_anchor(adapter, table, anchor, candidates[anchor], cfg))
            totals[name]["seconds"] += time.perf_counter() - started
            totals[name]["vision"] += adapter.vision_encoder_calls
            totals[name]["lm_tokens"] += adapter.text_tokens_computed
    return totals


def compare(fast, naive):
    same_sequences = all(f.sequences == n.sequences for f, n in zip(fast, naive))
    deltas = [abs(a - b) for f, n in zip(fast, naive) for fs, ns in zip(f.step_scores, n.step_scores)
              for a, b in zip(fs, ns)]
    return same_sequences, max(deltas) if deltas else float("nan")


def bench_model(model: str, args, records: pd.DataFrame, anchors: list[int], candidates: dict[int, list[int]]):
    words = collect_vocabulary(list(records["question"]) + list(records["label"]))
    t0 = time.perf_counter()
    adapter, dims = build_adapter(model, words, args.seed, args.batch_size)
    print(f"\n=== {model}: built in {time.perf_counter() - t0:.1f}s, {parameter_count(adapter) / 1e6:.1f}M parameters")
    print(f"dims: {asdict(dims)}")
    table = ExampleTable.from_records(records)
    base = dict(construct_order=args.order, beam_size=args.beam, shot_num=args.shot, cand_num=args.cand,
                sample_num=len(anchors))
    # warm-up: one-time allocations and lazy imports stay out of the timings
    warm = {anchors[0]: candidates[anchors[0]][: max(args.beam, args.shot)]}
    warm_cfg = BeamSearchConfig(**{**base, "cand_num": len(warm[anchors[0]])})
    for fast in (True, False):
        search_anchor(adapter, table, anchors[0], warm[anchors[0]], BeamSearchConfig(**{**asdict(warm_cfg), "use_fast_path": fast}))

    timings = run_paths(adapter, table, anchors, candidates, base)
    for name, run in timings.items():
        lm_text = f", LM tokens/anchor {run['lm_tokens'] / len(anchors):.0f}" if run["lm_tokens"] else ""
        print(f"{name:>5}: {len(anchors) / run['seconds']:.4f} anchors/s ({run['seconds'] / len(anchors):.1f} s/anchor), "
              f"vision encoder calls/anchor {run['vision'] / len(anchors):.0f}{lm_text}")
    same, max_delta = compare(timings["fast"]["results"], timings["naive"]["results"])
    distinct_images = len({table.image_paths[i] for i in [anchors[0], *candidates[anchors[0]]]})
    print(f"speed-up {timings['naive']['seconds'] / timings['fast']['seconds']:.2f}x | distinct images per anchor "
          f"{distinct_images} | same sequences: {same} | max |delta step score| {max_delta:.2e}", flush=True)
    return timings


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=["flamingo", "qwen", "both"], default="both")
    parser.add_argument("--anchors", type=int, default=3)
    parser.add_argument("--cand", type=int, default=64)
    parser.add_argument("--beam", type=int, default=5)
    parser.add_argument("--shot", type=int, default=2)
    parser.add_argument("--order", choices=["left", "right"], default="left")
    parser.add_argument("--batch-size", type=int, default=32, help="score batch size (both paths)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    n_train = args.cand + args.anchors + 16
    with tempfile.TemporaryDirectory(prefix="bench_beam_") as tmp:
        records = make_records(Path(tmp), n_train, args.seed)
        anchors = [int(a) for a in rng.choice(n_train, size=args.anchors, replace=False)]
        candidates = {a: [int(c) for c in rng.permutation([i for i in range(n_train) if i != a])[: args.cand]]
                      for a in anchors}
        print(f"torch {torch.__version__}, {args.threads} threads | anchors {anchors} | beam {args.beam} shot {args.shot} "
              f"cand {args.cand} order {args.order} | {n_train} train records with distinct {IMAGE_SIZE}px images")
        models = ["flamingo", "qwen"] if args.model == "both" else [args.model]
        for model in models:
            bench_model(model, args, records, anchors, candidates)


if __name__ == "__main__":
    main()
