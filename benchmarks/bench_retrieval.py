"""Throughput of stages 2-3 on this machine (prints, never asserts).

1. Record embeddings with a tiny open_clip encoder: synthetic images on disk, several questions per image.
2. Candidate sampling, each of the 4 samplers: 800 anchors over 9,009 synthetic train records
   (random L2-normalised 768-d embeddings, about 1.8 questions per image), as for OK-VQA with ViT-L/14.

Usage: .venv/bin/python benchmarks/bench_retrieval.py [--threads N] [--records 400]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402


def synthetic_records(folder: Path, n_records: int, questions_per_image: int, image_size: int) -> pd.DataFrame:
    from PIL import Image

    rng = np.random.default_rng(0)
    rows = []
    for idx in range(n_records):
        image_id = idx // questions_per_image
        path = folder / f"COCO_train2014_{image_id:012d}.jpg"
        if not path.exists():
            pixels = rng.integers(0, 256, (image_size, image_size * 4 // 3, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(path, quality=90)
        rows.append(
            dict(
                idx=idx,
                split="train",
                question_id=idx * 10,
                image_id=image_id,
                image_path=str(path),
                question=f"what is the object number {idx} in this picture?",
                answers=["x"] * 10,
                label="x",
            )
        )
    return pd.DataFrame(rows)


def bench_embeddings(threads: int, n_records: int) -> None:
    import torch

    from lever_lm.embeddings import ClipEncoderConfig, TinyClipDims, build_clip_encoder, compute_record_embeddings

    cfg = ClipEncoderConfig(
        name="clip_tiny_l",
        kind="tiny",
        seed=1,
        batch_size=64,
        tiny=TinyClipDims(
            embed_dim=64,
            image_size=56,
            patch_size=8,
            width=64,
            layers=2,
            heads=4,
            text_width=64,
            text_layers=2,
            text_heads=4,
            context_length=32,
        ),
    )
    torch.set_num_threads(threads)
    start = time.perf_counter()
    encoder = build_clip_encoder(cfg)
    build_s = time.perf_counter() - start
    with tempfile.TemporaryDirectory() as tmp:
        # 480x640-ish JPEGs like COCO, so decoding cost is realistic.
        records = synthetic_records(Path(tmp), n_records, questions_per_image=3, image_size=480)
        start = time.perf_counter()
        result = compute_record_embeddings(records, cfg, num_threads=threads, encoder=encoder)
        elapsed = time.perf_counter() - start
    n_images = result.meta["n_distinct_images"]
    print(
        f"[embeddings] tiny CLIP ({encoder.encoder_id}), {threads} thread(s): build {build_s:.2f} s; "
        f"{len(records)} records / {n_images} images in {elapsed:.2f} s = {len(records) / elapsed:.0f} records/s, "
        f"{n_images / elapsed:.0f} images/s"
    )


def bench_sampling(threads: int) -> None:
    import faiss

    from lever_lm.sampling import SAMPLERS, EmbeddedSplit, SamplerConfig, anchor_candidates, draw_anchors

    faiss.omp_set_num_threads(threads)
    rng = np.random.default_rng(0)
    n_train, dim = 9009, 768
    # 1 + Poisson(0.8) questions per image: about 1.8, as in OK-VQA train.
    image_ids = np.repeat(np.arange(n_train), 1 + rng.poisson(0.8, n_train))[:n_train]
    distinct, row_to_image = np.unique(image_ids, return_inverse=True)

    def normalised(n):
        matrix = rng.standard_normal((n, dim)).astype(np.float32)
        return matrix / np.linalg.norm(matrix, axis=1, keepdims=True)

    train = EmbeddedSplit(image_ids=image_ids, image=normalised(len(distinct))[row_to_image], text=normalised(n_train))
    anchors = draw_anchors(n_train, 800, seed=42)
    cfg = SamplerConfig()
    print(
        f"[sampling] {len(anchors)} anchors over {n_train} train records ({n_train / len(distinct):.2f} "
        f"questions/image), dim {dim}, cand_num {cfg.cand_num}, {threads} thread(s)"
    )
    for sampler in SAMPLERS:
        timings = []
        for _ in range(3):
            start = time.perf_counter()
            anchor_candidates(sampler, anchors, train, cfg)
            timings.append(time.perf_counter() - start)
        best = min(timings)
        print(f"  {sampler:17s} best of 3: {best:.3f} s  ({len(anchors) / best:,.0f} anchors/s)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--records", type=int, default=450)
    args = parser.parse_args()
    bench_sampling(args.threads)
    bench_embeddings(args.threads, args.records)


if __name__ == "__main__":
    main()
