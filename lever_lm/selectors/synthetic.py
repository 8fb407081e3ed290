"""Synthetic selector inputs where the best ICDs are a hidden function of the features, and the learning table.

The hidden function: with q and f_c the [image, text] features of the query and of a candidate, a candidate's
merit is h(c) = <W q, f_c> for a fixed random W, standardised over the pool. Beams come from the stage-4 beam
search run on a stand-in InfoScore, step t adding 0.05 · 0.5^t · z(c_t) to the running score, minus 0.05 (so
scores are small and decrease down the beams, some below zero). Beams, candidates and embeddings are written
in the pipeline's real file formats. Held-out queries are fresh feature vectors (val-like) with their own pools
and beams made the same way; ``learning_table`` trains every version on the files and scores its best.ckpt on
them with the validation metrics of ``lever_lm.selectors.evaluation``.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from lever_lm.selectors.config import VERSIONS, SelectorConfig, TrainIdentity, TrainPaths
from lever_lm.selectors.data import AnchorExample, to_prompt_order
from lever_lm.selectors.features import DEFAULT_FEATURE_CHOICE, FeatureTable

BEAM_MODEL, SAMPLER, DATASET = "synthetic_lvlm", "rand_sampler", "synthetic"


def _unit(rng: np.random.Generator, n: int, dim: int) -> np.ndarray:
    x = rng.standard_normal((n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def synthetic_beams(merit: np.ndarray, pool: np.ndarray, beam_size: int, shots: int) -> tuple[list, list]:
    """Beam search over ``pool`` (merit = z-scores over the pool) -> (choice-order sequences, step scores)."""
    beams: list[tuple[tuple[int, ...], list[float]]] = [((), [])]
    for step in range(shots):
        grown = []
        for sequence, steps in beams:
            base = steps[-1] if steps else -0.05
            for position, c in enumerate(pool):
                if int(c) not in sequence:
                    grown.append((sequence + (int(c),), steps + [base + 0.05 * 0.5**step * float(merit[position])]))
        grown.sort(key=lambda item: -item[1][-1])  # stable: ties keep the earlier beam and candidate
        beams = grown[:beam_size]
    return [list(s) for s, _ in beams], [steps for _, steps in beams]


@dataclass(frozen=True)
class SyntheticTask:
    root: Path
    train_features: FeatureTable
    heldout_features: FeatureTable
    heldout: list[AnchorExample]  # ``anchor`` indexes heldout_features
    ex_name: str
    beams: Path
    candidates: Path
    embeddings: tuple[Path, Path, Path]

    def identity(self, version: str, lever_lm: str = DEFAULT_FEATURE_CHOICE, **changes: str) -> TrainIdentity:
        values = {
            "dataset": DATASET,
            "beam_model": BEAM_MODEL,
            "sampler": SAMPLER,
            "ex_name": self.ex_name,
            "version": version,
            "lever_lm": lever_lm,
            **changes,
        }
        return TrainIdentity(**values)

    def paths(self, out_dir: str | Path, init_checkpoint: str | Path | None = None, **changes: Any) -> TrainPaths:
        image, text, meta = self.embeddings
        paths = TrainPaths(
            str(self.beams),
            str(self.candidates),
            str(image),
            str(text),
            str(meta),
            str(out_dir),
            None if init_checkpoint is None else str(init_checkpoint),
        )
        return replace(paths, **changes)


def make_task(
    root: str | Path,
    n_train: int = 400,
    dim: int = 16,
    n_anchors: int = 320,
    pool_size: int = 64,
    beam_size: int = 5,
    shots: int = 2,
    n_heldout: int = 200,
    seed: int = 0,
    construct_order: str = "left",
    hidden_rank: int = 4,
) -> SyntheticTask:
    from lever_lm.embeddings import EmbeddingResult, embedding_paths, save_embeddings
    from lever_lm.io_utils import write_json
    from lever_lm.sampling import write_candidates

    root = Path(root)
    rng = np.random.default_rng(seed)
    train = FeatureTable(_unit(rng, n_train, dim), _unit(rng, n_train, dim))
    heldout_table = FeatureTable(_unit(rng, n_heldout, dim), _unit(rng, n_heldout, dim))
    # low rank, so a few hundred beams pin it down well enough to rank beams, not only to find the best ICD
    hidden = rng.standard_normal((2 * dim, hidden_rank)) @ rng.standard_normal((hidden_rank, 2 * dim))
    hidden = hidden.astype(np.float32)
    icd = np.concatenate([train.image, train.text], axis=1)

    def pool_and_beams(query: np.ndarray, exclude: int | None) -> tuple[np.ndarray, list, list]:
        allowed = np.setdiff1d(np.arange(n_train), [] if exclude is None else [exclude])
        pool = rng.choice(allowed, size=pool_size, replace=False)
        merit = icd[pool] @ (hidden @ query)
        merit = (merit - merit.mean()) / merit.std()
        choices, steps = synthetic_beams(merit, pool, beam_size, shots)
        return pool, choices, steps

    anchors = np.sort(rng.choice(n_train, size=n_anchors, replace=False))
    ex_name = f"infoscore_{construct_order}_beam{beam_size}_shot{shots}_cand{pool_size}_sample{n_anchors}"
    cand_params = {
        "sampler": SAMPLER,
        "cand_num": pool_size,
        "exclude_same_image": True,
        "seed": seed,
        "encoder_id": "synthetic",
    }
    pools, records = {}, []
    for anchor in anchors:
        query = np.concatenate([train.image[anchor], train.text[anchor]])
        pool, choices, steps = pool_and_beams(query, int(anchor))
        pools[int(anchor)] = pool.tolist()
        records.append(
            {
                "anchor_id": int(anchor),
                "question_id": 100000 + int(anchor),
                "sequences": [to_prompt_order(c, construct_order) for c in choices],
                "step_scores": steps,
                "scores": [s[-1] for s in steps],
            }
        )
    params = {
        "ex_name": ex_name,
        "scorer": "infoscore",
        "construct_order": construct_order,
        "beam_size": beam_size,
        "shot_num": shots,
        "cand_num": pool_size,
        "sample_num": n_anchors,
        "beam_model": BEAM_MODEL,
        "sampler": SAMPLER,
        "candidates": cand_params,
    }
    beams_path = root / "beam" / BEAM_MODEL / SAMPLER / ex_name / "beams.json"
    candidates_path = root / "candidates" / SAMPLER / "anchors.json"
    write_json(beams_path, {"params": params, "anchors": records}, indent=None)
    write_candidates(candidates_path, pools, cand_params)
    emb = embedding_paths(root / "embeddings" / "synthetic_clip", "train")
    meta = {
        "encoder_id": "synthetic",
        "encoder_name": "synthetic_clip",
        "dim": dim,
        "n": n_train,
        "split": "train",
        "normalized": True,
        "dtype": "float32",
    }
    save_embeddings(emb, EmbeddingResult(train.image, train.text, meta))

    heldout = []
    for row in range(n_heldout):
        query = np.concatenate([heldout_table.image[row], heldout_table.text[row]])
        pool, choices, steps = pool_and_beams(query, None)
        positions = {int(c): i for i, c in enumerate(pool)}
        choice_array = np.asarray(choices, dtype=np.int64)
        heldout.append(
            AnchorExample(
                row,
                pool.astype(np.int64),
                choice_array,
                np.vectorize(positions.__getitem__, otypes=[np.int64])(choice_array),
                np.asarray([s[-1] for s in steps], dtype=np.float32),
            )
        )
    return SyntheticTask(
        root, train, heldout_table, heldout, ex_name, beams_path, candidates_path, (emb.image, emb.text, emb.meta)
    )


#: small, fast settings under which every version learns the synthetic task in a few seconds on one core
LEARNING_CONFIG = {
    "seed": 0,
    "epochs": 15,
    "batch_size": 64,
    "lr": 3e-3,
    "weight_decay": 1e-3,
    "warmup_ratio": 0.05,
    "v0": {"n_layer": 2, "n_head": 4, "n_embd": 64, "dropout": 0.0},
    "pointer": {"hidden_dim": 64, "temperature": 0.1, "dropout": 0.0},
    "cross_attention": {"heads": 4},
    "ranking": {"base": "v2", "loss": "listwise", "weight": 1.0, "temperature": 0.01},
    "rl": {
        "rce_epochs": 3,
        "rce_lr": 1e-4,
        "rce_temperature": 0.01,
        "grpo_epochs": 3,
        "grpo_lr": 3e-5,
        "clip_eps": 0.2,
        "kl_beta": 0.1,
    },
}


def learning_table(
    root: str | Path,
    versions: Sequence[str] = VERSIONS,
    config: dict | None = None,
    threads: int = 1,
    task: SyntheticTask | None = None,
) -> list[dict[str, Any]]:
    """Train each version on the synthetic task (v4 from v3's best.ckpt; v3 is trained for v4 if not listed)
    and score best.ckpt on the held-out queries. One row per version."""
    from lever_lm.selectors.checkpoint import load_selector
    from lever_lm.selectors.evaluation import evaluate_examples
    from lever_lm.selectors.features import parse_feature_choice
    from lever_lm.selectors.training import train

    root = Path(root)
    task = task or make_task(root / "inputs")
    cfg = SelectorConfig.from_config(config or LEARNING_CONFIG)
    needed = list(versions) + (["v3"] if "v4" in versions and "v3" not in versions else [])
    rows = []
    for version in sorted(needed):
        out_dir = root / "model_cpk" / version
        init = root / "model_cpk" / "v3" / "best.ckpt" if version == "v4" else None
        started = time.perf_counter()
        metrics = train(cfg, task.identity(version), task.paths(out_dir, init), threads=threads)
        seconds = time.perf_counter() - started
        if version not in versions:
            continue
        selector = load_selector(out_dir / "best.ckpt", task.train_features)
        query = task.heldout_features.matrix(parse_feature_choice(selector.meta["lever_lm"]).query)
        summary = evaluate_examples(selector.model, task.heldout, query, cfg.top_k)
        rows.append(
            {
                "version": version,
                **{
                    k: summary[k]
                    for k in ("top1", "topk", "mrr", "beam_ndcg", "random_top1", "random_topk", "random_beam_ndcg")
                },
                "best_epoch": metrics["best"]["epoch"],
                "train_seconds": seconds,
            }
        )
    return rows


def format_table(rows: Sequence[dict[str, Any]], top_k: int = 5) -> str:
    header = (
        f"| version | top-1 | top-{top_k} | MRR | beam NDCG | random top-1 | random top-{top_k} "
        "| random NDCG | best epoch | train s |"
    )
    lines = [header, "|" + "---|" * (header.count("|") - 1)]
    for r in rows:
        lines.append(
            f"| {r['version']} | {r['top1']:.3f} | {r['topk']:.3f} | {r['mrr']:.3f} | {r['beam_ndcg']:.3f} "
            f"| {r['random_top1']:.3f} | {r['random_topk']:.3f} | {r['random_beam_ndcg']:.3f} "
            f"| {r['best_epoch']} | {r['train_seconds']:.1f} |"
        )
    return "\n".join(lines)
