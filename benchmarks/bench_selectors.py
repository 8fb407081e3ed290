"""Selector benchmark: training examples/s and decoding latency per query for every version, on this CPU.

Synthetic inputs in the pipeline's file formats (``lever_lm.selectors.synthetic``), at one of two scales:
- ``toy``: the default config's scale (~1020 train ICDs, 32-d CLIP features, 48 anchors x 5 beams, 64-candidate
  pools) with the small networks suggested for it (``TOY_CONFIG``); also times one whole training job in a fresh
  process (imports included), which is what a Snakemake job costs.
- ``okvqa``: OK-VQA's scale (9009 train ICDs, 512-d ViT-B/32 image and text features, 800 anchors) with the
  default networks (GPT-2 2x8x512 for v0, pointer width 256).

    .venv/bin/python benchmarks/bench_selectors.py --preset toy
    .venv/bin/python benchmarks/bench_selectors.py --preset okvqa --epochs 1

Decoding: ``select`` of k ICDs (v0 over the whole train set, v1-v4 within each query's 64-candidate pool),
ms per query at batch 1 and batch 64. ``--learning`` also prints the learning-test table.
"""

from __future__ import annotations

import argparse
import copy
import logging
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lever_lm.selectors import VERSIONS, FeatureTable, SelectorConfig, load_selector, select, train  # noqa: E402
from lever_lm.selectors.synthetic import format_table, learning_table, make_task  # noqa: E402

#: small networks for the toy default: each training job learns in a few seconds on one core
TOY_CONFIG = {
    "epochs": 10,
    "lr": 1e-3,
    "batch_size": 64,
    "v0": {"n_layer": 2, "n_head": 4, "n_embd": 64, "dropout": 0.1},
    "pointer": {"hidden_dim": 64, "temperature": 0.1, "dropout": 0.1},
    "cross_attention": {"heads": 4},
    "ranking": {"base": "v2", "temperature": 0.1},
    "rl": {"rce_epochs": 3, "rce_lr": 3e-4, "grpo_epochs": 3, "grpo_lr": 1e-4},
}
PRESETS = {
    "toy": {"n_train": 1020, "dim": 32, "n_anchors": 48, "config": TOY_CONFIG},
    "okvqa": {"n_train": 9009, "dim": 512, "n_anchors": 800, "config": {}},
}

JOB = """
import time
t0 = time.perf_counter()
import torch
if {version!r} == "v0":
    import transformers.models.gpt2
t1 = time.perf_counter()
from lever_lm.selectors import SelectorConfig, TrainIdentity, TrainPaths, train
metrics = train(SelectorConfig.from_config({config!r}), TrainIdentity(**{identity!r}), TrainPaths(**{paths!r}))
print(t1 - t0, time.perf_counter() - t1)
"""


def time_select(selector, queries: FeatureTable, pools, k: int, batch_size: int, n: int) -> float:
    """ms per query of ``select`` over the first n queries."""
    part = FeatureTable(queries.image[:n], queries.text[:n])
    rows = None if pools is None else pools[:n]
    select(selector, part, k, rows, batch_size=batch_size)  # warm-up
    started = time.perf_counter()
    select(selector, part, k, rows, batch_size=batch_size)
    return 1000 * (time.perf_counter() - started) / n


def bench(preset: str, versions, epochs: int | None, k: int, threads: int, workdir: Path) -> list[dict]:
    import torch

    spec = PRESETS[preset]
    torch.set_num_threads(threads)
    started = time.perf_counter()
    task = make_task(
        workdir / "inputs",
        n_train=spec["n_train"],
        dim=spec["dim"],
        n_anchors=spec["n_anchors"],
        pool_size=64,
        beam_size=5,
        shots=2,
        n_heldout=256,
    )
    print(
        f"inputs: {spec['n_train']} train ICDs, {spec['dim']}-d image+text, {spec['n_anchors']} anchors x 5 beams, "
        f"64-candidate pools ({time.perf_counter() - started:.1f}s to make)"
    )
    config = copy.deepcopy(spec["config"])
    if epochs is not None:
        config["epochs"] = epochs
        config["rl"] = {**config.get("rl", {}), "rce_epochs": max(1, epochs // 2), "grpo_epochs": max(1, epochs // 2)}
    cfg = SelectorConfig.from_config(config)
    pools = [example.pool.tolist() for example in task.heldout]
    rows = []
    for version in versions:
        out = workdir / version
        init = workdir / "v3" / "best.ckpt" if version == "v4" else None
        t0 = time.perf_counter()
        metrics = train(cfg, task.identity(version), task.paths(out, init), threads=threads)
        wall = time.perf_counter() - t0
        selector = load_selector(out / "best.ckpt", task.train_features)
        n_params = sum(p.numel() for p in selector.model.parameters())
        use_pools = pools if selector.needs_pools else None
        rows.append(
            {
                "version": version,
                "params_M": n_params / 1e6,
                "epochs": len(metrics["epochs"]),
                "train_ex_s": metrics["train_examples_per_s"],
                "train_wall_s": wall,
                "ms_b1": time_select(selector, task.heldout_features, use_pools, k, 1, 32),
                "ms_b64": time_select(selector, task.heldout_features, use_pools, k, 64, 256),
                "val_top1": metrics["epochs"][-1].get("val_top1"),
            }
        )
    return rows, task, cfg


def job_wall_time(task, cfg, workdir: Path) -> dict[str, float]:
    """Wall time of one training job per version in a fresh interpreter (imports in)."""
    times = {}
    for version in VERSIONS:
        out = workdir / f"job_{version}"
        init = workdir / "job_v3" / "best.ckpt" if version == "v4" else None
        code = JOB.format(
            version=version,
            config=cfg.to_dict(),
            identity=task.identity(version).to_dict(),
            paths=task.paths(out, init).__dict__,
        )
        t0 = time.perf_counter()
        result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
        imports, training = map(float, result.stdout.strip().splitlines()[-1].split())
        times[version] = (time.perf_counter() - t0, imports, training)
    return times


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", choices=sorted(PRESETS), default="toy")
    parser.add_argument("--versions", default=",".join(VERSIONS))
    parser.add_argument("--epochs", type=int, default=None, help="override epochs (v4: half RCE, half GRPO)")
    parser.add_argument("--k", type=int, default=4, help="ICDs selected per query")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--no-job", action="store_true", help="toy: skip the fresh-process job timing")
    parser.add_argument("--learning", action="store_true", help="also print the learning-test table")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    import torch

    versions = args.versions.split(",")
    if "v4" in versions and "v3" not in versions:
        versions.insert(versions.index("v4"), "v3")
    with tempfile.TemporaryDirectory(prefix="bench_selectors_") as tmp:
        workdir = Path(tmp)
        print(f"torch {torch.__version__}, {args.threads} thread(s), preset {args.preset}, k = {args.k}")
        rows, task, cfg = bench(args.preset, versions, args.epochs, args.k, args.threads, workdir)
        print(
            "\n| version | params (M) | epochs | train examples/s | train wall s | select ms/query b1 "
            "| select ms/query b64 | last val top-1 |"
        )
        print("|---|---|---|---|---|---|---|---|")
        for r in rows:
            top1 = "-" if r["val_top1"] is None else f"{r['val_top1']:.3f}"
            print(
                f"| {r['version']} | {r['params_M']:.2f} | {r['epochs']} | {r['train_ex_s']:.0f} | "
                f"{r['train_wall_s']:.1f} | {r['ms_b1']:.2f} | {r['ms_b64']:.3f} | {top1} |"
            )
        if args.preset == "toy" and not args.no_job:
            print("\none training job in a fresh process (1 thread):")
            for version, (total, imports, training) in job_wall_time(task, cfg, workdir).items():
                print(
                    f"  {version}: {total:.1f} s wall = {total - imports - training:.1f} s interpreter start + "
                    f"{imports:.1f} s importing torch{'/transformers' if version == 'v0' else ''} + "
                    f"{training:.1f} s train() (inputs, epochs, outputs)"
                )
        if args.learning:
            print("\nlearning test (synthetic hidden function, held-out queries):")
            print(format_table(learning_table(workdir / "learning", threads=args.threads)))


if __name__ == "__main__":
    main()
