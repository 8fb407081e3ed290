"""Batched vs batch-1 generation on the tiny LVLMs (stage 6 ICL inference), prompts of MIXED image counts.

The seed generated one prompt at a time "to avoid image-count mismatches". Here each tiny LVLM (OpenFlamingo and
Qwen2.5-VL, the default tiny dims of the toy pipeline) answers the same prompts (0-4 ICDs + the query; distinct
query images, ICDs drawn from a pool of train images) in two ways:
- batch-1: ``adapter.generate([prompt])`` per prompt (the seed's way);
- batched: ``lever_lm.inference.generate_answers`` (what the inference rules run: prompts sorted by size, then
  ``--batch-size`` per ``generate`` call).
Two scenarios: "cold" clears the vision caches before each timed run, so each distinct image is encoded in the run
(the tiny Flamingo's perceiver, fixed at 8 heads x 64 over 64 latents by open_flamingo, costs ~4 ms per image on
one core, the same in both modes); "warm" has every image's vision features cached first (the adapters' own caches:
an inference job answers every query at each shot number, so its images come back), which isolates the generation
itself. A third mode, "library batch-1", is the libraries' own unoptimised generation one prompt at a time (what the
seed ran: open_flamingo's cross-attention over all media and HF beam search over the whole prompt per beam; Qwen's
generate from pixel values), the reference the tests compare with. Each mode runs ``--repeats`` times and the
fastest run counts (this machine is shared). Prints queries/s of the modes, the ratios, and whether the answers are
identical (they must be). The tiny Qwen's weights are scaled up (as in its tests) so that answers depend on the prompt;
at random init it answers almost the same for every prompt, which would make the identity check toothless.

``--token-budget N [N ...]`` adds, per N, the mode "budget N": ``generate_answers`` with ``inference.token_budget``
N (batches of like token length, at most ``--batch-size`` prompts, rows x (longest prompt + max_new_tokens) x beams
<= N), and a second table that compares each with the fixed batches ("batched") of the same run: batches, padded
prompt-token share (1 - real / (rows x longest prompt), summed over batches), the largest batch's cost in the
budget's units, queries/s, the ratio to "batched", and whether the answers are identical. ``--only-batched`` skips
the two batch-1 modes (and the first table).

Usage: .venv/bin/python benchmarks/bench_inference.py [--queries 64] [--batch-size 16] [--threads 1]
       [--beams 1 3] [--families flamingo qwen] [--max-new-tokens 5] [--repeats 3]
       [--token-budget 600 1200 ...] [--only-batched]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # lever_lm

import numpy as np  # noqa: E402

QA = [
    ("what color is the cat ?", "red"),
    ("how many dogs are there ?", "2"),
    ("is it raining ?", "no"),
    ("what is the man holding ?", "tennis racket"),
    ("where is the bus ?", "street"),
    ("what sport is this ?", "ski"),
    ("what animal is shown ?", "zebra"),
    ("what color is the sky ?", "blue"),
]


def make_prompts(folder: Path, n_queries: int, n_train: int = 32, max_icds: int = 4, image_size: int = 56) -> list:
    from PIL import Image

    from lever_lm.lvlm.base import Example, Prompt

    rng = np.random.default_rng(0)

    def image(name: str) -> str:
        path = folder / f"{name}.png"
        Image.fromarray(rng.integers(0, 256, (image_size, image_size, 3), dtype=np.uint8)).save(path)
        return str(path)

    train = [Example(image(f"train{i}"), *QA[i % len(QA)]) for i in range(n_train)]
    prompts = []
    for i in range(n_queries):
        k = i % (max_icds + 1)  # 0..4 ICDs: every batch mixes image counts
        icds = tuple(train[j] for j in rng.choice(n_train, size=k, replace=False))
        prompts.append(Prompt(icds, Example(image(f"val{i}"), QA[(3 * i) % len(QA)][0])))
    return prompts


def build_adapter(family: str, words: list[str]):

    from lever_lm.lvlm.tiny import make_tiny_adapter, sharpen_weights

    if family == "flamingo":
        return make_tiny_adapter("flamingo", words, seed=0)
    adapter = make_tiny_adapter("qwen2_5_vl", words, seed=0, precision="fp32")
    return sharpen_weights(adapter)


def timed(fn):
    start = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - start


def warm_vision(adapter, prompts) -> None:
    """Fill the adapter's vision cache with every image of ``prompts`` (generate reads it)."""
    paths = list(dict.fromkeys(e.image_path for p in prompts for e in (*p.demos, p.query)))
    if hasattr(adapter, "vision_features"):  # Flamingo: perceiver latents per image
        adapter.vision_features(paths)
    else:  # Qwen: the scoring path's cache of merged patch embeddings, which generate also reads
        import torch

        with torch.inference_mode():
            adapter._fast.encode_images(paths)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--queries", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--beams", type=int, nargs="+", default=[1, 3])
    parser.add_argument("--families", nargs="+", default=["flamingo", "qwen"], choices=["flamingo", "qwen"])
    parser.add_argument("--max-new-tokens", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per mode; the fastest counts")
    parser.add_argument(
        "--token-budget",
        type=int,
        nargs="+",
        default=[],
        metavar="N",
        help="also run token-budget batching with each N and compare it with the fixed batches",
    )
    parser.add_argument("--only-batched", action="store_true", help="skip the batch-1 modes (and their table)")
    args = parser.parse_args()
    if any(n < 1 for n in args.token_budget):
        parser.error("--token-budget: every N must be >= 1")

    import torch

    from lever_lm.inference.generation import generate_answers, plan_generation_batches
    from lever_lm.lvlm.reference import flamingo_reference, qwen_reference
    from lever_lm.lvlm.tiny_tokenizer import collect_vocabulary

    torch.set_num_threads(args.threads)
    words = collect_vocabulary([t for pair in QA for t in pair])
    rows, budget_rows = [], []
    modes = ([] if args.only_batched else ["library batch-1", "batch-1"]) + ["batched"]
    budgets = {"batched": None, **{f"budget {n}": n for n in args.token_budget}}
    with tempfile.TemporaryDirectory() as tmp:
        prompts = make_prompts(Path(tmp), args.queries)
        counts = sorted({len(p.demos) + 1 for p in prompts})
        n_images = len({e.image_path for p in prompts for e in (*p.demos, p.query)})
        print(
            f"{len(prompts)} prompts with {counts[0]}-{counts[-1]} images each ({n_images} distinct images), "
            f"batch size {args.batch_size}, {args.threads} thread(s), max_new_tokens {args.max_new_tokens}, cpu\n"
        )
        for family in args.families:
            adapter = build_adapter(family, words)
            reference = flamingo_reference if family == "flamingo" else qwen_reference
            lengths = adapter.prompt_token_lengths(prompts)
            print(f"{family}: prompt tokens {min(lengths)}-{max(lengths)} (mean {np.mean(lengths):.1f})")
            for beams in args.beams:
                plans = {
                    mode: plan_generation_batches(adapter, prompts, args.max_new_tokens, beams, args.batch_size, budget)
                    for mode, budget in budgets.items()
                }
                generate_answers(adapter, prompts[:6], args.max_new_tokens, beams, args.batch_size)  # warm-up
                adapter.generate(prompts[:1], args.max_new_tokens, beams)
                for scenario in ("cold", "warm"):
                    results = {}
                    for mode in modes + [m for m in budgets if m != "batched"]:

                        def run(mode=mode):
                            if mode == "library batch-1":
                                return [reference(adapter, p, beams, args.max_new_tokens) for p in prompts]
                            if mode == "batch-1":
                                return [adapter.generate([p], args.max_new_tokens, beams)[0] for p in prompts]
                            return generate_answers(
                                adapter,
                                prompts,
                                args.max_new_tokens,
                                beams,
                                args.batch_size,
                                token_budget=budgets[mode],
                            )

                        runs = []
                        for _ in range(args.repeats):  # a shared machine: the fastest run is the least disturbed
                            adapter.clear_cache()
                            if scenario == "warm":
                                warm_vision(adapter, prompts)
                            runs.append(timed(run))
                        answers = {tuple(answer) for answer, _ in runs}
                        if len(answers) != 1:
                            sys.exit(f"{family} {mode}: answers differ between repeated runs")
                        results[mode] = min(runs, key=lambda r: r[1])
                    batched, batched_s = results["batched"]
                    n = len(prompts)
                    if not args.only_batched:
                        (library, library_s), (single, single_s) = results["library batch-1"], results["batch-1"]
                        rows.append(
                            (
                                family,
                                beams,
                                scenario,
                                n / library_s,
                                n / single_s,
                                n / batched_s,
                                single_s / batched_s,
                                library_s / batched_s,
                                batched == single == library,
                                len(set(single)),
                            )
                        )
                    for mode, plan in plans.items():
                        answers, seconds = results[mode]
                        padded = sum(len(b) * max(lengths[i] for i in b) for b in plan)
                        peak = max(len(b) * (max(lengths[i] for i in b) + args.max_new_tokens) * beams for b in plan)
                        budget_rows.append(
                            (
                                family,
                                beams,
                                scenario,
                                mode,
                                len(plan),
                                1 - sum(lengths) / padded,
                                peak,
                                n / seconds,
                                batched_s / seconds,
                                answers == batched,
                            )
                        )
            adapter.clear_cache()
    if rows:
        header = (
            "LVLM (tiny)",
            "beams",
            "vision",
            "library batch-1 q/s",
            "batch-1 q/s",
            "batched q/s",
            "batched / batch-1",
            "batched / library",
            "identical",
            "distinct answers",
        )
        print("| " + " | ".join(header) + " |")
        print("|" + "|".join("---" for _ in header) + "|")
        for family, beams, scenario, library_qps, single_qps, batched_qps, ratio, ratio_lib, same, distinct in rows:
            print(
                f"| {family} | {beams} | {scenario} | {library_qps:.1f} | {single_qps:.1f} | {batched_qps:.1f} | "
                f"{ratio:.2f}x | {ratio_lib:.2f}x | {'yes' if same else 'NO'} | {distinct}/{args.queries} |"
            )
    if args.token_budget:
        print(
            f"\nfixed batches of {args.batch_size} (batched) vs token budgets; cost = rows x (longest prompt + "
            f"max_new_tokens) x beams"
        )
        header = (
            "LVLM (tiny)",
            "beams",
            "vision",
            "setting",
            "batches",
            "padded prompt tokens",
            "largest batch cost",
            "q/s",
            "vs batched",
            "identical",
        )
        print("| " + " | ".join(header) + " |")
        print("|" + "|".join("---" for _ in header) + "|")
        for family, beams, scenario, mode, n_batches, share, peak, qps, ratio, same in budget_rows:
            print(
                f"| {family} | {beams} | {scenario} | {mode} | {n_batches} | {100 * share:.1f}% | {peak} | "
                f"{qps:.1f} | {ratio:.2f}x | {'yes' if same else 'NO'} |"
            )
    if not all(row[8] for row in rows) or not all(row[-1] for row in budget_rows):
        sys.exit("answers differ between the modes")


if __name__ == "__main__":
    main()
