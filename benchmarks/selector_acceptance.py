"""Issue 17's acceptance criteria, read off a finished run's report CSVs and predictions.

Per beam model: selector cells significantly below RandomRetriever (must be 0); the best selector against the best
similarity baseline per shot (never significantly below, above at 2+ shots); the largest share of val queries one
ICD list serves per cell (at most a quarter); and the v2/v3/v4 identical-selection shares per sampler (below 95%
somewhere). Also the headline numbers (zero-shot, best random, best i2i, best selector) for the seed-spread tables.

    .venv/bin/python benchmarks/selector_acceptance.py results/toy_okvqa [--report report]
"""

from __future__ import annotations

import argparse
from collections import Counter
from pathlib import Path

import pandas as pd


def top_list_shares(root: Path) -> pd.DataFrame:
    rows = []
    for path in sorted(root.glob("icl_inference/v*/*/*/*/*/predictions.parquet")):
        frame = pd.read_parquet(path, columns=["shot", "icd_ids"])
        for shot, group in frame.groupby("shot"):
            lists = Counter(tuple(int(i) for i in ids) for ids in group["icd_ids"])
            rows.append(
                {
                    "beam_model": path.parts[-5],
                    "version": path.parts[-6],
                    "sampler": path.parts[-4],
                    "replicate": path.parts[-3],
                    "shot": int(shot),
                    "top_list_share": lists.most_common(1)[0][1] / len(group),
                }
            )
    return pd.DataFrame(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("results", type=Path, help="results/{dataset} of a finished run")
    parser.add_argument("--report", default="report", help="the report folder name (config report.name)")
    args = parser.parse_args()
    report = args.results / args.report
    scores = pd.read_csv(report / "scores.csv")
    comparisons = pd.read_csv(report / "comparisons.csv")
    overlap = pd.read_csv(report / "selection_overlap.csv")
    selectors = comparisons[comparisons["version"] != "ceiling"]
    for model, cells in selectors.groupby("beam_model"):
        vs_random = cells[cells["reference"] == "RandomRetriever"]
        vs_sim = cells[cells["reference"] != "RandomRetriever"]
        print(f"## {model}")
        print(
            f"cells significantly below random: {int((vs_random['significant'] < 0).sum())} / {len(vs_random)}; "
            f"above: {int((vs_random['significant'] > 0).sum())}"
        )
        print(
            f"cells significantly below the best similarity baseline: {int((vs_sim['significant'] < 0).sum())} "
            f"/ {len(vs_sim)}; above: {int((vs_sim['significant'] > 0).sum())}"
        )
        model_scores = scores[(scores["beam_model"] == model)]
        selector_scores = model_scores[model_scores["kind"] == "selector"]
        for shot, group in selector_scores.groupby("shot"):
            best = group.loc[group["score"].idxmax()]
            row = vs_sim[
                (vs_sim["version"] == best["version"])
                & (vs_sim["sampler"] == best["sampler"])
                & (vs_sim["shot"] == shot)
            ].iloc[0]
            print(
                f"  shot {shot}: best selector {best['version']}/{best['sampler']} {best['score']:.2f}; vs "
                f"{row['reference']} {row['diff']:+.2f} [{row['ci_low']:+.2f}, {row['ci_high']:+.2f}]"
            )
        versions = overlap[(overlap["beam_model"] == model) & (overlap["shot"] == "all")]
        for pair in (("v2", "v3"), ("v3", "v4"), ("v2", "v4")):
            for sampler in sorted(selector_scores["sampler"].dropna().unique()):
                hit = versions[
                    (versions["cell_a"] == f"{pair[0]}/{sampler}") & (versions["cell_b"] == f"{pair[1]}/{sampler}")
                ]
                if len(hit):
                    print(f"  identical {pair[0]} vs {pair[1]} on {sampler}: {hit['identical_share'].iloc[0]:.1%}")
        baselines = model_scores[model_scores["kind"] == "baseline"]
        zero = baselines[baselines["baseline"] == "ZeroShot"]["score"]
        random = baselines[baselines["baseline"] == "RandomRetriever"]["score"]
        i2i = baselines[baselines["baseline"] == "SimRetriever-i2i"]["score"]
        print(
            f"headline: zero-shot {zero.max():.2f} / best random {random.max():.2f} / best i2i {i2i.max():.2f} / "
            f"best selector {selector_scores['score'].max():.2f}"
        )
    shares = top_list_shares(args.results)
    if len(shares):
        worst = shares.sort_values("top_list_share", ascending=False).head(5)
        print("\nlargest share of val queries served by one ICD list (cells):")
        print(worst.to_string(index=False))


if __name__ == "__main__":
    main()
