"""Where do the selectors go wrong on the toy? Picks by answer convention and family, per step and per query type.

On the toy, a query's answer convention (a code "# e" on cued images, a word elsewhere) is what demonstrations must
teach, so an ICD "matches" a query when their labels share the convention; it is of the query's "family" when it
also asks the same question (the tiny LVLMs pretrained with one convention per question type take a question's
convention from demonstrations of that question only). For a finished results dir this prints:
1. the beams (train anchors): the share of matching and same-family picks per choice step, for cued and uncued
   anchors, against the pool's shares (what random picks would give);
2. every selector cell, baseline and ceiling on val: per shot, the share of matching ICDs and the accuracy, split
   cued / uncued, the share of prompts holding at least one ICD of the query's family, and how many val queries
   the most frequent ICD list serves.

    .venv/bin/python benchmarks/diagnose_toy_selections.py results/toy_okvqa [--shot 2]
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lever_lm.selectors.data import to_choice_order  # noqa: E402

BASELINE_FILE = re.compile(
    r"(?P<model>.+)_(?P<baseline>RandomRetriever|ZeroShot|SimRetriever-\w+)_baseline"
    r"(?P<replicate>(_rep\d+)?)_predictions\.parquet"
)
REPLICATE = re.compile(r"(_rep\d+)?$")


def replicate_of(name: str) -> str:
    return REPLICATE.search(name).group(0)


def is_code(labels: pd.Series) -> np.ndarray:
    return labels.astype(str).str.startswith("#").to_numpy()


def beam_table(root: Path, train_code: np.ndarray, train_question: np.ndarray) -> pd.DataFrame:
    rows = []
    for beams_path in sorted(root.glob("beam/*/*/*/beams.json")):
        model, sampler = beams_path.parts[-4], beams_path.parts[-3]
        data = json.loads(beams_path.read_text())
        order = data["params"].get("construct_order", "left")
        replicate = replicate_of(beams_path.parts[-2])
        pool_files = [p for p in root.glob(f"candidates/{sampler}/*.json") if replicate_of(p.stem) == replicate]
        pools = json.loads(pool_files[0].read_text())["candidates"] if len(pool_files) == 1 else {}
        for record in data["anchors"]:
            anchor = int(record["anchor_id"])
            cued = bool(train_code[anchor])
            pool = pools.get(str(anchor), [])
            pool_match = float(np.mean(train_code[pool] == cued)) if len(pool) else np.nan
            family = (train_code == cued) & (train_question == train_question[anchor])
            pool_family = float(np.mean(family[pool])) if len(pool) else np.nan
            for rank, sequence in enumerate(record["sequences"]):
                for step, icd in enumerate(to_choice_order(sequence, order), start=1):
                    rows.append(
                        {
                            "beam_model": model,
                            "sampler": sampler,
                            "cued": cued,
                            "beam_rank": rank,
                            "step": step,
                            "match": train_code[icd] == cued,
                            "pool_match": pool_match,
                            "family": bool(family[icd]),
                            "pool_family": pool_family,
                        }
                    )
    return pd.DataFrame(rows)


def selection_rows(path: Path, label: str, model: str, val: dict, train: dict, val_index: dict[int, int]) -> list[dict]:
    val_code, train_code = val["code"], train["code"]
    frame = pd.read_parquet(path, columns=["question_id", "shot", "icd_ids", "score"])
    rows = []
    for shot, group in frame.groupby("shot"):
        cued = np.array([val_code[val_index[int(q)]] for q in group["question_id"]])
        lists = [tuple(int(i) for i in ids) for ids in group["icd_ids"]]
        match = np.array([np.mean(train_code[list(ids)] == c) if ids else np.nan for ids, c in zip(lists, cued)])
        questions = [val["question"][val_index[int(q)]] for q in group["question_id"]]
        any_family = [
            any(train_code[i] == c and train["question"][i] == question for i in ids)
            for ids, c, question in zip(lists, cued, questions)
        ]
        score = group["score"].to_numpy(dtype=float) * 100
        top_list_share = Counter(lists).most_common(1)[0][1] / len(lists)
        rows.append(
            {
                "beam_model": model,
                "cell": label,
                "shot": int(shot),
                "match_cued": np.nanmean(match[cued]) if cued.any() else np.nan,
                "match_uncued": np.nanmean(match[~cued]) if (~cued).any() else np.nan,
                "acc_cued": score[cued].mean(),
                "acc_uncued": score[~cued].mean(),
                "acc": score.mean(),
                "any_family": float(np.mean(any_family)),
                "top_list_share": top_list_share,
                "distinct_lists": len(set(lists)),
            }
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("results", type=Path, help="results/{dataset} of a finished toy run")
    parser.add_argument("--shot", type=int, default=None, help="only this shot number in the selection table")
    args = parser.parse_args()
    root = args.results
    train = pd.read_parquet(root / "records" / "train.parquet", columns=["idx", "question", "label"])
    val = pd.read_parquet(root / "records" / "val.parquet", columns=["idx", "question_id", "question", "label"])
    train_code, val_code = is_code(train["label"]), is_code(val["label"])
    train_arrays = {"code": train_code, "question": train["question"].to_numpy()}
    val_arrays = {"code": val_code, "question": val["question"].to_numpy()}
    val_index = {int(q): i for i, q in enumerate(val["question_id"])}
    pd.set_option("display.width", 200, "display.max_rows", 500, "display.precision", 2)

    beams = beam_table(root, train_code, train_arrays["question"])
    if len(beams):
        print("## Beams on train anchors: share of picks matching the anchor's convention / family, per choice step")
        top = beams[beams["beam_rank"] == 0]
        summary = top.groupby(["beam_model", "sampler", "cued", "step"]).agg(
            top_beam_match=("match", "mean"),
            pool_match=("pool_match", "mean"),
            top_beam_family=("family", "mean"),
            pool_family=("pool_family", "mean"),
            anchors=("match", "size"),
        )
        summary["all_beams_match"] = beams.groupby(["beam_model", "sampler", "cued", "step"])["match"].mean()
        print(summary.round(2).to_string(), "\n")

    rows = []
    for path in sorted(root.glob("icl_inference/v*/*/*/*/*/predictions.parquet")):
        version, model, sampler = path.parts[-6], path.parts[-5], path.parts[-4]
        label = f"{version}/{sampler}{replicate_of(path.parts[-3])}"
        rows += selection_rows(path, label, model, val_arrays, train_arrays, val_index)
    for path in sorted(root.glob("icl_inference/baseline/*_predictions.parquet")):
        match = BASELINE_FILE.fullmatch(path.name)
        if match and match["baseline"] in ("RandomRetriever", "SimRetriever-i2i", "ZeroShot"):
            rows += selection_rows(
                path, match["baseline"] + match["replicate"], match["model"], val_arrays, train_arrays, val_index
            )
    for path in sorted(root.glob("ceiling/*/*/*/predictions.parquet")):
        rows += selection_rows(path, f"ceiling/{path.parts[-3]}", path.parts[-4], val_arrays, train_arrays, val_index)
    table = pd.DataFrame(rows)
    if args.shot is not None:
        table = table[table["shot"].isin([args.shot, 0])]
    print(
        "## Val selections: convention match and accuracy, cued vs uncued queries "
        f"({int(val_code.sum())} cued of {len(val_code)})"
    )
    print(table.sort_values(["beam_model", "shot", "cell"]).round(2).to_string(index=False))


if __name__ == "__main__":
    main()
