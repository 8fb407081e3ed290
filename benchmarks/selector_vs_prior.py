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
        adapter, whole_train_scores = None, {}
        for sampler in config["samplers"]:
            (pool_file,) = sorted((root / "test_pools" / sampler).glob("*.json"))
            pool_picks = prior_lists(scores, json.loads(pool_file.read_text())["candidates"], shots)
            pool_scores: dict = {}
            rows = []
            for path in sorted(root.glob(f"icl_inference/v*/{model}/{sampler}/*/*/predictions.parquet")):
                version = path.relative_to(root / "icl_inference").parts[0]
                picks = whole_train_picks if version == "v0" else pool_picks
                prior_scores = {}
                if args.generate:
                    cache = whole_train_scores if version == "v0" else pool_scores
                    if not cache:
                        found, adapter = evaluate_prior(
                            picks, records, entry["family"], root / "models" / model, inference, adapter
                        )
                        cache.update(found)
                    prior_scores = cache
                frame = pd.read_parquet(path, columns=["question_id", "shot", "icd_ids", "score"])
                for shot, group in frame.groupby("shot"):
                    queries = [row_of[int(q)] for q in group["question_id"]]
                    same = [
                        tuple(int(i) for i in ids) == picks[(q, int(shot))] for q, ids in zip(queries, group["icd_ids"])
                    ]
                    row = {"version": version, "shot": int(shot), "identical_to_prior": float(np.mean(same))}
                    if prior_scores:
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


def evaluate_prior(picks, records, family: str, model_dir: Path, inference, adapter):
    """Per-question VQA accuracy of the prior's lists (inference's answer post-processing and metric)."""
    from lever_lm.inference import generate_answers
    from lever_lm.lvlm.base import Example, Prompt
    from lever_lm.lvlm.tiny import load_tiny_dir
    from lever_lm.metrics import postprocess_vqa, vqa_accuracy

    adapter = adapter or load_tiny_dir(family, model_dir, precision="fp32")
    train, val = records["train"], records["val"]
    if not (train["idx"].to_numpy() == np.arange(len(train))).all():
        raise ValueError("train records: idx must equal the row number")
    keys = sorted(picks)
    prompts = [
        Prompt(
            tuple(Example(train.image_path[i], train.question[i], train.label[i]) for i in picks[key]),
            Example(val.image_path[key[0]], val.question[key[0]]),
        )
        for key in keys
    ]
    answers = generate_answers(adapter, prompts, inference.max_new_tokens, inference.num_beams, inference.batch_size)
    return {
        key: vqa_accuracy(postprocess_vqa(answer), list(val.answers[key[0]])) for key, answer in zip(keys, answers)
    }, adapter


if __name__ == "__main__":
    main()
