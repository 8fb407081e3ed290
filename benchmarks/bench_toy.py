"""Toy-benchmark checks on a (pretrained) tiny LVLM dir: do demonstrations matter, and does InfoScore see it?

    .venv/bin/python benchmarks/bench_toy.py --family qwen2_5_vl --model-dir results/toy_okvqa/models/qwen2.5_vl_tiny \
        --train results/toy_okvqa/records/train.parquet --val results/toy_okvqa/records/val.parquet

Prints (and writes as JSON with --out) the VQA accuracy on val of: zero-shot, random demonstrations, demonstrations of
the query's convention (what a cue-reading selector can find), of its family (question type + convention), and of the
other convention, for each shot number; plus the InfoScore sanity rate (same-convention demonstration above an
other-convention one of the same question type, 1-shot, on val queries).

    .venv/bin/python benchmarks/bench_toy.py --cue --train results/toy_okvqa/records/train.parquet

prints instead, per CLIP encoder of config.yaml, the share of each sampler's anchor candidates whose convention (the
cue) matches their anchor's (random init tiny CLIPs: img_sim_sampler 93-95% against 50% for rand_sampler).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--family", choices=["flamingo", "qwen2_5_vl"])
    parser.add_argument("--model-dir")
    parser.add_argument("--train", required=True)
    parser.add_argument("--val")
    parser.add_argument("--cue", action="store_true", help="measure the samplers' cue agreement instead")
    parser.add_argument("--config", default="config.yaml", help="--cue: the config whose encoders to use")
    parser.add_argument("--anchors", type=int, default=200, help="--cue: anchors drawn (seed 42)")
    parser.add_argument("--shots", default="1,2,4")
    parser.add_argument("--conditions", default="zero_shot,random,same_convention,same_family,other_convention")
    parser.add_argument("--max-queries", type=int, default=None)
    parser.add_argument("--num-beams", type=int, default=1)
    parser.add_argument("--triples", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    if args.cue:
        cue(args)
        return
    if not (args.family and args.model_dir and args.val):
        parser.error("--family, --model-dir and --val are required (unless --cue)")

    from lever_lm.data import load_records
    from lever_lm.lvlm.tiny import load_tiny_dir
    from lever_lm.toy.evaluate import ToyExampleTable, icl_accuracy, infoscore_sanity

    adapter = load_tiny_dir(args.family, args.model_dir, precision="fp32")
    train = ToyExampleTable.from_records(load_records(args.train))
    val = ToyExampleTable.from_records(load_records(args.val))
    started = time.monotonic()
    rows = icl_accuracy(
        adapter,
        train,
        val,
        [int(s) for s in args.shots.split(",")],
        args.conditions.split(","),
        args.max_queries,
        args.seed,
        args.num_beams,
    )
    accuracy_seconds = time.monotonic() - started
    print(f"{'condition':<18}{'shots':>6}{'acc':>8}{'conv':>7}{'value':>7}{'n':>6}")
    for row in rows:
        print(
            f"{row['condition']:<18}{row['shots']:>6}{row['accuracy']:>8.1f}{row['convention_share']:>7.2f}"
            f"{row['value_share']:>7.2f}{row['n']:>6}"
        )
    started = time.monotonic()
    sanity = infoscore_sanity(adapter, train, val, n=args.triples, seed=args.seed) if args.triples else None
    if sanity:
        print(
            f"InfoScore sanity: same-convention demo wins {100 * sanity['same_convention_wins']:.1f}% of "
            f"{sanity['n']} triples (mean P-bar margin {sanity['mean_margin']:.3f})"
        )
    print(f"seconds: accuracy {accuracy_seconds:.0f}, infoscore {time.monotonic() - started:.0f}")
    if args.out:
        Path(args.out).write_text(json.dumps({"accuracy": rows, "infoscore": sanity, "args": vars(args)}, indent=1))


def cue(args) -> None:
    import yaml

    from lever_lm.data import load_records
    from lever_lm.embeddings import ClipEncoderConfig, compute_record_embeddings
    from lever_lm.sampling import draw_anchors
    from lever_lm.toy.evaluate import cue_agreement

    records = load_records(args.train)
    anchors = draw_anchors(len(records), min(args.anchors, len(records)), 42)
    config = yaml.safe_load(Path(args.config).read_text())
    rows = {}
    for name, section in config["encoders"].items():
        embedded = compute_record_embeddings(records, ClipEncoderConfig.from_config(name, section), args.threads)
        rows[name] = cue_agreement(records, embedded.image, embedded.text, anchors)
        print(name, "  ".join(f"{sampler} {share:.3f}" for sampler, share in rows[name].items()))
    if args.out:
        Path(args.out).write_text(json.dumps({"cue_agreement": rows, "args": vars(args)}, indent=1))


if __name__ == "__main__":
    main()
