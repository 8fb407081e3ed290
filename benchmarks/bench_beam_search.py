"""Beam-search benchmark: the naive (upstream-style) scoring path against the fast path, in one process.

Both paths run the same InfoScore beam search (``lever_lm.beam_search.search_anchor``) on the same anchors with a
randomly initialised model (``--dims``): ``scaled`` (default) is scaled down in the proportions of the 3B models,
``3b_width`` has the real widths and a third of the depth, ``3b`` the real Qwen2.5-VL-3B / OpenFlamingo-3B sizes
(tiny word-level vocabulary, so no large embedding table). 224x224 images, so vision encoding is a real share of
the work, ~10-word questions and 1-2 word answers.

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/bench_beam_search.py --model both --anchors 3 --cand 64
    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/bench_beam_search.py --device cuda --precision bf16 --dims 3b \\
        --fast-settings 32 128 512:16384 --naive-anchors 1 --profile

Paths: ``naive`` (``score_naive``, ``--batch-size`` sequences per batch) and one fast path per ``--fast-settings``
entry ``ROWS[:BUDGET]`` (``score_batch_size`` ROWS, ``score_token_budget`` BUDGET padded tokens per batch, none
when left out), all interleaved anchor by anchor so load from other processes hits every path alike; compare
paths within one run only.

Prints per model and path: anchors/s, s/anchor, LM tokens/anchor (real and padded), LM forward calls, vision
forward calls, vision images, host syncs and H2D copies per anchor (the adapters' ``counters``), achieved TFLOP/s
and MFU, peak GPU memory (CUDA); then exactness: max |delta step score| and the share of identical beams between
each fast path and the naive path (over the naive path's anchors) and between the fast paths.
FLOPs (forward only): 2 x LM parameters without the token-embedding table x real LM tokens + 2 x vision parameters
(ViT + merger / perceiver) x vision patch tokens; attention-score FLOPs (which grow with the context) are left out,
so the figure is a lower bound of the work done. MFU = achieved / peak, peak by ``--peak-tflops`` (default: H100
SXM dense, 989 TFLOP/s bf16, 67 TFLOP/s fp32 without tensor cores); n/a on the CPU.
``--count-ops``: one more anchor per path with every non-view aten op counted (each one kernel launch on a GPU):
total, copy ops (copy_/cat/index_select/gather/...) and attention calls per anchor; measurable on the CPU.
``--profile`` (CUDA): one more anchor per path under torch.profiler: GPU kernel time / wall, matmul share of kernel
time, kernel launches, cudaStreamSynchronize / cudaMemcpyAsync calls and the top device ops. On the CPU it prints
the top CPU ops.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lever_lm.beam_search import BeamSearchConfig, ExampleTable, search_anchor  # noqa: E402
from lever_lm.lvlm.tiny_tokenizer import collect_vocabulary  # noqa: E402

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
ANSWERS = [
    "red",
    "tennis",
    "blue",
    "wood",
    "on the road",
    "baseball",
    "summer",
    "metal",
    "two",
    "fire truck",
    "kitchen",
    "green",
    "surfing",
    "yes",
    "white",
    "park",
]
DIMS = ("scaled", "3b_width", "3b")
#: dense peak TFLOP/s of an H100 SXM: bf16 tensor cores, fp32 without tensor cores (TF32 is off by default)
PEAK_TFLOPS = {"bf16": 989.0, "fp32": 67.0}
COUNTER_COLUMNS = (
    ("lm_forward_calls", "LM fwd"),
    ("vision_forward_calls", "vis fwd"),
    ("vision_images", "vis img"),
    ("host_syncs", "syncs"),
    ("h2d_copies", "H2D"),
    ("kv_copy_ops", "KV copies"),
    ("vision_attention_calls", "vis attn calls"),
)
#: aten ops that write a copy of their input (each one kernel on a GPU)
COPY_OPS = frozenset(
    {
        "copy_",
        "_to_copy",
        "cat",
        "index_select",
        "gather",
        "index_copy_",
        "index_put_",
        "clone",
        "fill_",
        "zero_",
        "masked_scatter",
        "constant_pad_nd",
        "slice_scatter",
        "new_zeros",
        "zeros",
        "full",
        "repeat",
        "expand_copy",
        "index",
        "narrow_copy",
    }
)
ATTENTION_OPS = frozenset(
    {
        "scaled_dot_product_attention",
        "_scaled_dot_product_flash_attention_for_cpu",
        "_scaled_dot_product_efficient_attention",
        "_scaled_dot_product_flash_attention",
        "_scaled_dot_product_cudnn_attention",
    }
)


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
        rows.append(
            {
                "idx": idx,
                "split": "train",
                "question_id": 100000 + idx,
                "image_id": idx,
                "image_path": str(path),
                "question": question,
                "answers": [label] * 10,
                "label": label,
            }
        )
    return pd.DataFrame(rows)


def model_dims(model: str, dims: str = "scaled"):
    """Model sizes: ``scaled`` keeps the 3B models' proportions (depth:width, image tokens per image) at a fraction of
    the cost; ``3b`` is the real Qwen2.5-VL-3B / OpenFlamingo-3B (MPT-1B + ViT-L/14); ``3b_width`` the real widths
    with a third of the depth (Qwen LM 12 x 2048, vision 8 x 1280; Flamingo MPT 8 x 2048, ViT 8 x 1024)."""
    if dims not in DIMS:
        raise ValueError(f"dims: expected one of {DIMS}, got {dims!r}")
    if model == "flamingo":
        from lever_lm.lvlm.tiny import FlamingoTinyDims

        if dims == "scaled":
            # ViT-L/14 at 224px: 257 tokens (24 layers x 1024) -> 6 x 256; MPT-1B (24 x 2048) -> 6 x 512;
            # perceiver 64 latents (fixed by open_flamingo), cross-attention every layer
            return FlamingoTinyDims(
                lang_width=512,
                lang_layers=6,
                lang_heads=8,
                max_seq_len=1024,
                vision_width=256,
                vision_layers=6,
                vision_head_width=64,
                image_size=IMAGE_SIZE,
                patch_size=14,
                clip_embed_dim=256,
                init_std=0.02,
            )
        layers = 24 if dims == "3b" else 8
        return FlamingoTinyDims(
            lang_width=2048,
            lang_layers=layers,
            lang_heads=16,
            max_seq_len=2048,
            vision_width=1024,
            vision_layers=layers,
            vision_head_width=64,
            image_size=IMAGE_SIZE,
            patch_size=14,
            clip_embed_dim=768,
            init_std=0.02,
        )
    from lever_lm.lvlm.tiny import QwenTinyDims

    pixels = dict(image_min_pixels=IMAGE_SIZE * IMAGE_SIZE, image_max_pixels=IMAGE_SIZE * IMAGE_SIZE)
    if dims == "scaled":
        # Qwen2.5-VL-3B: LM 36 x 2048 (16 heads, 2 kv heads), vision 32 x 1280 -> LM 8 x 512, vision 6 x 256;
        # 224x224 -> 16x16 patches -> 2x2 merge -> 64 image tokens
        return QwenTinyDims(
            text_hidden=512,
            text_intermediate=1408,
            text_layers=8,
            text_heads=8,
            text_kv_heads=2,
            mrope_section=(8, 12, 12),
            vision_depth=6,
            vision_hidden=256,
            vision_intermediate=1024,
            vision_heads=4,
            **pixels,
        )
    full = dims == "3b"
    return QwenTinyDims(
        text_hidden=2048,
        text_intermediate=11008,
        text_layers=36 if full else 12,
        text_heads=16,
        text_kv_heads=2,
        mrope_section=(16, 24, 24),
        vision_depth=32 if full else 8,
        vision_hidden=1280,
        vision_intermediate=3420,
        vision_heads=16,
        **pixels,
    )


def estimated_parameters(model: str, dims) -> int:
    """Parameter count from the sizes alone (for the memory check before building; the tiny vocabulary is left
    out): Qwen exact up to norms and biases, Flamingo from open_clip's ViT, open_flamingo's perceiver (6 layers,
    8 x 64 heads, 64 latents) and gated cross-attention (8 x 64 heads, ff x4) in every layer, and MPT blocks."""
    if model == "flamingo":
        w, v, e = dims.lang_width, dims.vision_width, dims.clip_embed_dim
        vit = (
            dims.vision_layers * 12 * v * v
            + (dims.image_size // dims.patch_size) ** 2 * v
            + 3 * dims.patch_size**2 * v
            + v * e
        )
        perceiver = 6 * (v * 2048 + 8 * v * v) + 64 * v
        cross = dims.lang_layers * (w * 512 + v * 1024 + 512 * w + 8 * w * w)
        return vit + perceiver + cross + dims.lang_layers * 12 * w * w
    h, head_dim = dims.text_hidden, dims.text_hidden // dims.text_heads
    lm = dims.text_layers * (2 * h * h + 2 * h * dims.text_kv_heads * head_dim + 3 * h * dims.text_intermediate)
    vh = dims.vision_hidden
    merged = vh * dims.spatial_merge_size**2
    vision = dims.vision_depth * (4 * vh * vh + 3 * vh * dims.vision_intermediate) + merged * merged + merged * h
    return lm + vision


def available_memory_bytes() -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def check_buildable(model: str, dims_name: str, dims, device: str, cpu_build: bool = False) -> str | None:
    """Why this model should not be built here (None: go ahead). The tiny builder makes an fp32 model, saves it and
    loads it again (about 3 fp32 copies at the peak); on a GPU machine host memory is ample (128 GiB). On the CPU a
    model of the real widths is built only with ``--cpu-build`` (one anchor takes hours there)."""
    needed = 3 * 4 * estimated_parameters(model, dims)
    available = available_memory_bytes()
    if device == "cpu" and not cpu_build:
        return (
            f"{model} --dims {dims_name} on the CPU: not built (a beam-search anchor at these sizes takes hours on "
            f"a CPU; pass --cpu-build to build it anyway, or run on CUDA)"
        )
    if device == "cpu" and available is not None and needed > 0.8 * available:
        return (
            f"{model} --dims {dims_name}: ~{estimated_parameters(model, dims) / 1e9:.2f}B parameters need about "
            f"{needed / 2**30:.0f} GiB of host memory to build, {available / 2**30:.0f} GiB available: skipped "
            f"(build it on a GPU machine)"
        )
    return None


def meta_construct(model: str, dims, words) -> int | None:
    """Build the model on the ``meta`` device (no memory, no init) and return its parameter count; None where the
    builder cannot run on meta (the Flamingo builder saves and reloads its parts)."""
    if model != "qwen":
        return None
    import torch

    from lever_lm.lvlm.tiny import new_tiny_qwen

    with torch.device("meta"):
        built, _ = new_tiny_qwen(words, dims)
    return sum(p.numel() for p in built.parameters())


def build_adapter(
    model: str, words: list[str], seed: int, batch_size: int, dims_name: str = "scaled", precision: str = "fp32"
):
    from lever_lm.lvlm.tiny import make_tiny_adapter

    dims = model_dims(model, dims_name)
    family = "flamingo" if model == "flamingo" else "qwen2_5_vl"
    adapter = make_tiny_adapter(family, words, dims, seed=seed, precision=precision, score_batch_size=batch_size)
    return adapter, dims


def parameter_count(adapter) -> int:
    return sum(p.numel() for p in adapter.model.parameters()) if hasattr(adapter, "model") else -1


def flop_parameters(adapter) -> tuple[int, int]:
    """(LM parameters without the token-embedding table, vision parameters incl. merger / perceiver)."""
    model = adapter.model

    def count(module) -> int:
        return sum(p.numel() for p in module.parameters())

    if hasattr(model, "lang_encoder"):  # OpenFlamingo
        lang = model.lang_encoder
        return count(lang) - lang.get_input_embeddings().weight.numel(), count(
            model.vision_encoder.visual if hasattr(model.vision_encoder, "visual") else model.vision_encoder
        ) + count(model.perceiver)
    text = model.model.language_model
    return count(text) - text.embed_tokens.weight.numel(), count(model.model.visual)


def parse_setting(text: str) -> tuple[int, int | None]:
    rows, _, budget = text.partition(":")
    return int(rows), (int(budget) if budget else None)


def setting_name(rows: int, budget: int | None) -> str:
    return f"fast b{rows}" + (f" t{budget}" if budget else "")


def apply_setting(adapter, rows: int, budget: int | None) -> None:
    fields = {"score_batch_size": rows}
    if any(f.name == "score_token_budget" for f in dataclasses.fields(adapter.config)):
        fields["score_token_budget"] = budget
    elif budget is not None:
        raise SystemExit("this adapter has no score_token_budget: run without :BUDGET in --fast-settings")
    adapter.config = dataclasses.replace(adapter.config, **fields)


def sync_device(device: str) -> None:
    if device == "cuda":
        import torch

        torch.cuda.synchronize()


def run_paths(adapter, table, anchors, candidates, base_cfg, settings, naive_anchors, device):
    """Every path, interleaved anchor by anchor, so load from other processes hits all paths alike."""
    import torch

    paths = [("naive", None)] + [(setting_name(*s), s) for s in settings]
    totals = {name: {"results": [], "seconds": 0.0, "anchors": 0, "counts": {}, "peak_mb": 0.0} for name, _ in paths}
    for number, anchor in enumerate(anchors):
        for name, setting in paths:
            if setting is None and number >= naive_anchors:
                continue
            if setting is not None:
                apply_setting(adapter, *setting)
            cfg = BeamSearchConfig(**base_cfg, use_fast_path=setting is not None)
            if device == "cuda":
                torch.cuda.reset_peak_memory_stats()
            sync_device(device)
            before = adapter.counters.snapshot()
            started = time.perf_counter()
            totals[name]["results"].append(search_anchor(adapter, table, anchor, candidates[anchor], cfg))
            sync_device(device)
            totals[name]["seconds"] += time.perf_counter() - started
            totals[name]["anchors"] += 1
            for key, value in adapter.counters.since(before).items():
                totals[name]["counts"][key] = totals[name]["counts"].get(key, 0) + value
            if device == "cuda":
                totals[name]["peak_mb"] = max(totals[name]["peak_mb"], torch.cuda.max_memory_allocated() / 2**20)
    return totals


def compare(first, second):
    """(share of identical beams, position by position; max |delta step score|) over the anchors both have."""
    same = total = 0
    deltas = []
    for a, b in zip(first, second):
        for seq_a, seq_b, steps_a, steps_b in zip(a.sequences, b.sequences, a.step_scores, b.step_scores):
            total += 1
            same += seq_a == seq_b
            deltas += [abs(x - y) for x, y in zip(steps_a, steps_b)]
    return (same / total if total else float("nan")), (max(deltas) if deltas else float("nan"))


def print_path(name, run, flop_params, peak_tflops, device):
    n = run["anchors"]
    counts = {k: v / n for k, v in run["counts"].items()}
    seconds = run["seconds"] / n
    lm_params, vision_params = flop_params
    flops = 2 * lm_params * counts["lm_tokens"] + 2 * vision_params * counts["vision_tokens"]
    tflops = flops / seconds / 1e12
    mfu = f"{100 * tflops / peak_tflops:.1f}%" if device == "cuda" else "n/a"
    padding = counts["lm_padded_tokens"] / counts["lm_tokens"] if counts["lm_tokens"] else float("nan")
    counter_text = " ".join(
        f"{label} {counts[key]:.0f}" if key in counts else f"{label} n/a" for key, label in COUNTER_COLUMNS
    )
    memory = f" | peak GPU mem {run['peak_mb'] / 1024:.2f} GiB" if device == "cuda" else ""
    print(
        f"{name:>17}: {n / run['seconds']:.4f} anchors/s, {seconds:.3f} s/anchor | LM tokens/anchor "
        f"{counts['lm_tokens']:.0f} (padded x{padding:.2f}) | per anchor: {counter_text} | "
        f"{flops / 1e12:.2f} TFLOP/anchor, {tflops:.2f} TFLOP/s, MFU {mfu}{memory}",
        flush=True,
    )


def count_device_ops(adapter, table, anchor, candidates, base_cfg, name, setting):
    """One anchor of one path with every aten op counted (``TorchDispatchMode``): non-view ops are what a GPU would
    launch as kernels, so the counts are a device-independent proxy for launch overhead; printed per anchor."""
    import collections

    import torch
    from torch.utils._python_dispatch import TorchDispatchMode

    counts = collections.Counter()

    class Counting(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if not getattr(func, "is_view", False):
                counts[func.overloadpacket.__name__] += 1
            return func(*args, **(kwargs or {}))

    if setting is not None:
        apply_setting(adapter, *setting)
    cfg = BeamSearchConfig(**base_cfg, use_fast_path=setting is not None)
    with torch.inference_mode(), Counting():
        search_anchor(adapter, table, anchor, candidates, cfg)
    total = sum(counts.values())
    copies = sum(v for k, v in counts.items() if k in COPY_OPS)
    attention = sum(v for k, v in counts.items() if k in ATTENTION_OPS)
    top = ", ".join(f"{k} {v}" for k, v in counts.most_common(8))
    print(
        f"  ops {name}: {total} device ops/anchor (kernel-launch proxy), {copies} copy ops, {attention} attention "
        f"calls | top: {top}",
        flush=True,
    )


def profile_anchor(adapter, table, anchor, candidates, base_cfg, name, setting, device):
    """One anchor of one path under torch.profiler: where the time goes, and how often the host waits."""
    from torch.profiler import ProfilerActivity, profile

    if setting is not None:
        apply_setting(adapter, *setting)
    cfg = BeamSearchConfig(**base_cfg, use_fast_path=setting is not None)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device == "cuda" else [])
    sync_device(device)
    started = time.perf_counter()
    with profile(activities=activities) as prof:
        search_anchor(adapter, table, anchor, candidates, cfg)
        sync_device(device)
    wall_us = (time.perf_counter() - started) * 1e6
    events = prof.key_averages()
    if device != "cuda":
        top = sorted(events, key=lambda e: e.self_cpu_time_total, reverse=True)[:8]
        total = sum(e.self_cpu_time_total for e in events)
        print(
            f"  profile {name} (CPU): top ops by self CPU time: "
            + ", ".join(f"{e.key} {100 * e.self_cpu_time_total / total:.0f}%" for e in top)
        )
        return

    def device_time(e):
        return getattr(e, "self_device_time_total", None) or getattr(e, "self_cuda_time_total", 0) or 0

    kernel_us = sum(device_time(e) for e in events)
    matmul_us = sum(
        device_time(e)
        for e in events
        if e.key
        in (
            "aten::mm",
            "aten::addmm",
            "aten::bmm",
            "aten::baddbmm",
            "aten::_scaled_dot_product_cudnn_attention",
            "aten::_scaled_dot_product_flash_attention",
            "aten::_scaled_dot_product_efficient_attention",
            "aten::_efficient_attention_forward",
            "aten::_flash_attention_forward",
        )
    )
    # runtime API calls by name prefix (the launch call is cudaLaunchKernel or cudaLaunchKernelExC by CUDA version)
    calls = {
        label: sum(e.count for e in events if e.key.startswith(prefixes))
        for label, prefixes in (
            ("kernel launches", ("cudaLaunchKernel", "cuLaunchKernel")),
            ("cudaStreamSynchronize", ("cudaStreamSynchronize",)),
            ("cudaDeviceSynchronize", ("cudaDeviceSynchronize",)),
            ("cudaMemcpy*", ("cudaMemcpy",)),
        )
    }
    top = sorted((e for e in events if e.key.startswith("aten::")), key=device_time, reverse=True)[:8]
    print(
        f"  profile {name}: GPU kernel time / wall {100 * kernel_us / wall_us:.0f}% | matmul+attention share of "
        f"kernel time {100 * matmul_us / max(kernel_us, 1):.0f}% | per anchor: "
        + ", ".join(f"{k} {v}" for k, v in calls.items())
    )
    print(
        "    top device ops: " + ", ".join(f"{e.key} {100 * device_time(e) / max(kernel_us, 1):.0f}%" for e in top),
        flush=True,
    )


def bench_model(model: str, args, records: pd.DataFrame, anchors: list[int], candidates: dict[int, list[int]]):
    words = collect_vocabulary(list(records["question"]) + list(records["label"]))
    dims = model_dims(model, args.dims)
    if args.dims != "scaled":
        meta_count = meta_construct(model, dims, words)
        estimate = estimated_parameters(model, dims)
        built_on_meta = f", built on meta: {meta_count / 1e9:.3f}B" if meta_count else ""
        print(f"\n=== {model} --dims {args.dims}: estimated {estimate / 1e9:.2f}B parameters{built_on_meta}")
        reason = check_buildable(model, args.dims, dims, args.device, args.cpu_build)
        if reason or args.meta_only:
            print(reason or "--meta-only: not built", flush=True)
            return None
    elif args.meta_only:
        print(f"\n=== {model} --dims scaled: estimated {estimated_parameters(model, dims) / 1e6:.1f}M parameters")
        return None
    t0 = time.perf_counter()
    settings = [parse_setting(s) for s in args.fast_settings]
    adapter, dims = build_adapter(model, words, args.seed, args.batch_size, args.dims, args.precision)
    lm_params, vision_params = flop_parameters(adapter)
    print(
        f"\n=== {model} ({args.dims}, {args.precision}, {adapter.device}): built in {time.perf_counter() - t0:.1f}s, "
        f"{parameter_count(adapter) / 1e6:.1f}M parameters (LM without embeddings {lm_params / 1e6:.1f}M, "
        f"vision {vision_params / 1e6:.1f}M)"
    )
    print(f"dims: {asdict(dims)}")
    table = ExampleTable.from_records(records)
    base = dict(
        construct_order=args.order, beam_size=args.beam, shot_num=args.shot, cand_num=args.cand, sample_num=len(anchors)
    )
    # warm-up: one-time allocations and lazy imports stay out of the timings
    warm = candidates[anchors[0]][: max(args.beam, args.shot)]
    warm_base = {**base, "cand_num": len(warm)}
    for setting in [None, *settings]:
        if setting is not None:
            apply_setting(adapter, *setting)
        search_anchor(
            adapter, table, anchors[0], warm, BeamSearchConfig(**warm_base, use_fast_path=setting is not None)
        )

    naive_anchors = len(anchors) if args.naive_anchors is None else args.naive_anchors
    timings = run_paths(adapter, table, anchors, candidates, base, settings, naive_anchors, args.device)
    peak = args.peak_tflops or PEAK_TFLOPS[args.precision]
    print(
        f"FLOPs = 2 x {lm_params / 1e6:.1f}M x LM tokens + 2 x {vision_params / 1e6:.1f}M x vision tokens; "
        f"MFU against {peak:.0f} TFLOP/s" + ("" if args.device == "cuda" else " (n/a on CPU)")
    )
    for name, run in timings.items():
        if run["anchors"]:
            print_path(name, run, (lm_params, vision_params), peak, args.device)
    fast_names = [setting_name(*s) for s in settings]
    naive = timings["naive"]
    distinct_images = len({table.image_paths[i] for i in [anchors[0], *candidates[anchors[0]]]})
    print(f"distinct images per anchor {distinct_images}")
    for name in fast_names:
        line = f"exactness {name}:"
        if naive["anchors"]:
            share, delta = compare(timings[name]["results"], naive["results"])
            speedup = (naive["seconds"] / naive["anchors"]) / (timings[name]["seconds"] / timings[name]["anchors"])
            line += (
                f" vs naive ({naive['anchors']} anchors): identical beams {100 * share:.0f}%, max |delta step "
                f"score| {delta:.2e}, speed-up {speedup:.2f}x"
            )
        if name != fast_names[0]:
            share, delta = compare(timings[name]["results"], timings[fast_names[0]]["results"])
            ratio = timings[fast_names[0]]["seconds"] / timings[name]["seconds"]
            line += (
                f" | vs {fast_names[0]}: identical beams {100 * share:.0f}%, max |delta| {delta:.2e}, "
                f"time ratio {fast_names[0]}/this {ratio:.2f}"
            )
        print(line, flush=True)
    if args.count_ops:
        anchor = anchors[-1]
        for name, setting in [("naive", None)] + [(setting_name(*s), s) for s in settings]:
            count_device_ops(adapter, table, anchor, candidates[anchor], base, name, setting)
    if args.profile:
        anchor = anchors[-1]
        for name, setting in [(setting_name(*s), s) for s in settings] + (
            [("naive", None)] if args.profile_naive else []
        ):
            try:
                profile_anchor(adapter, table, anchor, candidates[anchor], base, name, setting, args.device)
            except Exception as err:  # noqa: BLE001 - a profiler hiccup must not cost the other model's run
                print(f"  profile {name}: failed: {type(err).__name__}: {err}", flush=True)
    del adapter
    if args.device == "cuda":
        import torch

        torch.cuda.empty_cache()
    return timings


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=["flamingo", "qwen", "both"], default="both")
    parser.add_argument(
        "--device", choices=["cpu", "cuda"], default=None, help="default: cuda when available, else cpu"
    )
    parser.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    parser.add_argument("--dims", choices=DIMS, default="scaled")
    parser.add_argument("--anchors", type=int, default=3)
    parser.add_argument(
        "--naive-anchors", type=int, default=None, help="run the naive path on the first N anchors only (default: all)"
    )
    parser.add_argument("--cand", type=int, default=64)
    parser.add_argument("--beam", type=int, default=5)
    parser.add_argument("--shot", type=int, default=2)
    parser.add_argument("--order", choices=["left", "right"], default="left")
    parser.add_argument("--batch-size", type=int, default=32, help="naive path batch size (and the default fast one)")
    parser.add_argument(
        "--fast-settings",
        nargs="+",
        default=None,
        metavar="ROWS[:BUDGET]",
        help="fast paths to time: score_batch_size[:score_token_budget] (default: --batch-size)",
    )
    parser.add_argument("--profile", action="store_true", help="one more anchor per fast path under torch.profiler")
    parser.add_argument("--profile-naive", action="store_true", help="with --profile, the naive path too")
    parser.add_argument(
        "--count-ops",
        action="store_true",
        help="one more anchor per path with every aten op counted (a kernel-launch proxy)",
    )
    parser.add_argument("--peak-tflops", type=float, default=None, help="peak for MFU (default: H100 SXM dense)")
    parser.add_argument(
        "--meta-only",
        action="store_true",
        help="print parameter counts (Qwen built on the meta device) and build nothing",
    )
    parser.add_argument(
        "--cpu-build",
        action="store_true",
        help="build --dims 3b_width / 3b models on the CPU too (when host memory allows)",
    )
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    args.fast_settings = args.fast_settings or [str(args.batch_size)]
    for text in args.fast_settings:
        try:
            parse_setting(text)
        except ValueError:
            parser.error(f"--fast-settings: {text!r} is not ROWS or ROWS:BUDGET")

    if args.device == "cpu" and "torch" not in sys.modules:
        os.environ["CUDA_VISIBLE_DEVICES"] = ""  # the adapters take CUDA whenever it is visible
    import torch

    if args.device is None:
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: CUDA is not available here")
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    n_train = args.cand + args.anchors + 16
    with tempfile.TemporaryDirectory(prefix="bench_beam_") as tmp:
        records = make_records(Path(tmp), n_train, args.seed)
        anchors = [int(a) for a in rng.choice(n_train, size=args.anchors, replace=False)]
        candidates = {
            a: [int(c) for c in rng.permutation([i for i in range(n_train) if i != a])[: args.cand]] for a in anchors
        }
        gpu = f", {torch.cuda.get_device_name()}" if args.device == "cuda" else ""
        print(
            f"torch {torch.__version__}, device {args.device}{gpu}, {args.precision}, dims {args.dims}, "
            f"{args.threads} threads | anchors {anchors} | beam {args.beam} shot {args.shot} cand {args.cand} "
            f"order {args.order} | {n_train} train records with distinct {IMAGE_SIZE}px images"
        )
        models = ["flamingo", "qwen"] if args.model == "both" else [args.model]
        for model in models:
            try:
                bench_model(model, args, records, anchors, candidates)
            except Exception as err:  # noqa: BLE001 - report and go on with the other model
                import traceback

                traceback.print_exc()
                print(f"=== {model}: FAILED: {type(err).__name__}: {err}", flush=True)
                if args.device == "cuda":
                    torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
