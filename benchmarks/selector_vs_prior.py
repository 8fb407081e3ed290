"""What do the selectors learn from the beams beyond their similarity prior? Trained cells against the untrained prior.

With ``selector.similarity_prior`` on, a selector before training ranks its pool by
``image_weight · cos(image) + text_weight · cos(question)`` (``lever_lm/selectors/similarity.py``). This takes
that untrained ranking over the same test pools (v0 decodes over the whole train set, so over that for v0; the top
k, in prompt order for construct order ``left``) and prints, per beam model, sampler, version and shot:
1. the share of val queries whose trained selection is the prior's ICD list (1.0: training changed nothing);
2. with ``--generate`` (tiny LVLM dirs of a toy run only): the prior's own VQA accuracy on val, generated like
   inference does, and the paired difference trained − prior with its bootstrap interval (the report's settings).

    .venv/bin/python benchmarks/selector_vs_prior.py results/toy_okvqa [--config config.yaml ...] [--generate]
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def merged(base: dict, overlay: dict) -> dict:
    """Snakemake's --configfile layering: mappings merge key by key, anything else is replaced."""
    out = dict(base)
    for key, value in overlay.items():
        out[key] = merged(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def prior_lists(scores: np.ndarray, pools: dict[str, list[int]], shots: list[int]) -> dict[tuple[int, int], tuple]:
    """(val row, shot) -> the prior's ICD list in prompt order (most similar next to the query)."""
    out = {}
    for query, candidates in pools.items():
        candidates = np.asarray(candidates)
        ranked = candidates[np.argsort(-scores[int(query), candidates], kind="stable")]
        for shot in shots:
            out[(int(query), shot)] = tuple(int(i) for i in ranked[:shot][::-1])
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("results", type=Path, help="results/{dataset} of a finished run")
    parser.add_argument(
        "--config", nargs="+", default=["config.yaml"], help="the run's config files, merged in order as Snakemake does"
    )
    parser.add_argument("--generate", action="store_true", help="also evaluate the prior's lists with the LVLM")
    args = parser.parse_args()

    from lever_lm.config import validate_schema
    from lever_lm.data import load_records
    from lever_lm.inference import InferenceConfig
    from lever_lm.stats import UncertaintyConfig, paired_difference

    config = {}
    for path in args.config:
        config = merged(config, yaml.safe_load(Path(path).read_text()))
    config = validate_schema(config)
    prior = config["selector"]["similarity_prior"]
    root, encoder = args.results, config["selector_encoder"]
    records = {split: load_records(root / "records" / f"{split}.parquet") for split in ("train", "val")}

    def normed(split: str, modality: str) -> np.ndarray:
        array = np.load(root / "embeddings" / encoder / f"{split}.{modality}.npy").astype(np.float64)
        return array / np.linalg.norm(array, axis=1, keepdims=True)

    scores = sum(
        prior[f"{modality}_weight"] * (normed("val", modality) @ normed("train", modality).T)
        for modality in ("image", "text")
    )
    shots = [int(s) for s in config["inference"]["shots"]]
    row_of = {int(q): i for i, q in enumerate(records["val"]["question_id"])}
    uncertainty = UncertaintyConfig.from_config(config.get("report"))
    inference = InferenceConfig.from_config(config["inference"], config["task"])
    pd.set_option("display.width", 200, "display.max_rows", 500)

    whole_train = {str(q): list(range(len(records["train"]))) for q in range(len(records["val"]))}
    whole_train_picks = prior_lists(scores, whole_train, shots)
    for model, entry in config["beam_models"].items():
        evaluation = PriorEvaluation(records, entry["family"], root / "models" / model, inference, config["task"])
        for sampler in config["samplers"]:
            (pool_file,) = sorted((root / "test_pools" / sampler).glob("*.json"))
            pool_picks = prior_lists(scores, json.loads(pool_file.read_text())["candidates"], shots)
            rows = []
            for path in sorted(root.glob(f"icl_inference/v*/{model}/{sampler}/*/*/predictions.parquet")):
                if re.search(r"_rep\d+$", path.parts[-3]):
                    continue  # a replicate's cell: its own anchors, and maybe its own LVLM, not the prior's
                version = path.relative_to(root / "icl_inference").parts[0]
                # v0 decodes over the whole train set, the others over the sampler's test pool
                pool, picks = ("whole train set", whole_train_picks) if version == "v0" else (sampler, pool_picks)
                prior_scores = evaluation.scores(pool, picks) if args.generate else None
                frame = pd.read_parquet(path, columns=["question_id", "shot", "icd_ids", "score"])
                for shot, group in frame.groupby("shot"):
                    queries = [row_of[int(q)] for q in group["question_id"]]
                    same = [
                        tuple(int(i) for i in ids) == picks[(q, int(shot))] for q, ids in zip(queries, group["icd_ids"])
                    ]
                    row = {"version": version, "shot": int(shot), "identical_to_prior": float(np.mean(same))}
                    if prior_scores is not None:
                        trained = group["score"].to_numpy(dtype=float)
                        untrained = np.array([prior_scores[(q, int(shot))] for q in queries])
                        diff = paired_difference(trained, untrained, uncertainty, (model, sampler, version, shot), 100)
                        row.update(
                            trained=100 * trained.mean(),
                            prior=100 * untrained.mean(),
                            trained_minus_prior=f"{diff.estimate:+.2f} [{diff.low:+.2f}, {diff.high:+.2f}]",
                        )
                    rows.append(row)
            print(f"## {model} · {sampler}")
            print(pd.DataFrame(rows).round(3).to_string(index=False), "\n")


class FixedPicks:
    """A ``lever_lm.retrievers.Retriever`` over precomputed lists: (val row, shot) -> ICD ids in prompt order."""

    def __init__(self, picks: dict[tuple[int, int], tuple]) -> None:
        self.picks = picks

    def choose(self, query_rows, k: int) -> list[list[int]]:
        return [list(self.picks[(int(row), k)]) for row in query_rows]


class PriorEvaluation:
    """Per-question scores of the prior's lists through inference's own ``evaluate`` (prompts, generation,
    post-processing, metric), once per pool; the tiny LVLM is loaded on first use and kept."""

    def __init__(self, records, family: str, model_dir: Path, inference, task: str) -> None:
        from lever_lm.beam_search import ExampleTable
        from lever_lm.inference.inputs import val_queries

        self.family, self.model_dir, self.inference, self.task = family, model_dir, inference, task
        self.train = ExampleTable.from_records(records["train"])
        self.queries = val_queries(records["val"], np.arange(len(records["val"])), task, "val records")
        self.adapter = None
        self.by_pool: dict[str, dict[tuple[int, int], float]] = {}

    def scores(self, pool: str, picks: dict[tuple[int, int], tuple]) -> dict[tuple[int, int], float]:
        from lever_lm.inference import evaluate
        from lever_lm.lvlm.tiny import load_tiny_dir

        if pool not in self.by_pool:
            self.adapter = self.adapter or load_tiny_dir(self.family, self.model_dir, precision="fp32")
            shots = sorted({shot for _, shot in picks})
            _, predictions = evaluate(
                self.adapter, FixedPicks(picks), self.queries, self.train, shots, self.inference, self.task
            )
            row_of = dict(zip(self.queries.question_ids.tolist(), self.queries.rows.tolist()))
            self.by_pool[pool] = {
                (row_of[int(q)], int(shot)): float(score)
                for q, shot, score in zip(predictions["question_id"], predictions["shot"], predictions["score"])
            }
        return self.by_pool[pool]


if __name__ == "__main__":
    main()
