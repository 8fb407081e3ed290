"""Checks that the toy benchmark means something: do demonstrations matter to a (pretrained) tiny LVLM?

Public API
- ``ToyExampleTable.from_records(records)``: a split's records with each label's (question type, value, convention).
- ``demo_conditions(...)``: which demonstrations each condition puts in front of a query.
- ``icl_accuracy(adapter, train, val, shots, conditions, ...) -> list[dict]``: VQA accuracy (x100) per condition and
  shot number, plus the share of answers written in the query's convention and the share with the right value.
- ``infoscore_sanity(adapter, train, queries, n, seed) -> dict``: for triples (query, same-convention demo,
  other-convention demo of the same question type) the share where the same-convention demo gets the higher
  InfoScore (docs/stages.md stage 4, one-shot: InfoScore(c; {}, x) = P(y | c + x) - P(y | x); the baseline cancels).

Conditions (the demonstrations are train records with their own labels, hence their own cue-tied convention):
``zero_shot``; ``random``; ``same_convention`` (records whose convention is the query's, any question type: what a
selector that reads the cue can find); ``same_family`` (same question type and convention); ``other_convention``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from lever_lm.lvlm.base import Example, Prompt, mean_token_probability

CONDITIONS = ("zero_shot", "random", "same_convention", "same_family", "other_convention")


@dataclass(frozen=True)
class ToyExampleTable:
    examples: tuple[Example, ...]  # with the label as answer
    answers: tuple[tuple[str, ...], ...]  # the 10 annotator answers
    question_type: np.ndarray
    value: np.ndarray
    convention: np.ndarray

    @classmethod
    def from_records(cls, records) -> ToyExampleTable:
        from lever_lm.toy.data import family_of, parse_answer

        families = [family_of(q, label) for q, label in zip(records["question"], records["label"])]
        return cls(
            examples=tuple(
                Example(str(p), str(q), str(a))
                for p, q, a in zip(records["image_path"], records["question"], records["label"])
            ),
            answers=tuple(tuple(a) for a in records["answers"]),
            question_type=np.array([f[0] for f in families]),
            value=np.array([parse_answer(label)[0] for label in records["label"]]),
            convention=np.array([f[1] for f in families]),
        )

    def __len__(self) -> int:
        return len(self.examples)


def demo_conditions(
    train: ToyExampleTable, val: ToyExampleTable, query: int, condition: str, k: int, rng: np.random.Generator
) -> list[int]:
    """Train ids of ``k`` demonstrations for val query ``query`` under ``condition`` (prompt order irrelevant)."""
    if condition == "zero_shot" or k == 0:
        return []
    same_convention = train.convention == val.convention[query]
    pools = {
        "random": np.ones(len(train), dtype=bool),
        "same_convention": same_convention,
        "same_family": same_convention & (train.question_type == val.question_type[query]),
        "other_convention": ~same_convention,
    }
    if condition not in pools:
        raise ValueError(f"unknown condition {condition!r}; expected one of {CONDITIONS}")
    pool = np.flatnonzero(pools[condition])
    return [int(i) for i in rng.choice(pool, size=k, replace=False)]


def icl_accuracy(
    adapter,
    train: ToyExampleTable,
    val: ToyExampleTable,
    shots: Sequence[int] = (1, 2),
    conditions: Sequence[str] = CONDITIONS,
    max_queries: int | None = None,
    seed: int = 0,
    num_beams: int = 1,
    max_new_tokens: int = 5,
    batch_size: int = 32,
) -> list[dict[str, Any]]:
    """One row per (condition, shot): accuracy x100, convention share, value share, n."""
    from lever_lm.inference import generate_answers
    from lever_lm.metrics import postprocess_vqa, vqa_accuracy
    from lever_lm.toy.data import parse_answer

    queries = np.arange(len(val))
    if max_queries is not None and max_queries < len(val):
        queries = np.sort(np.random.default_rng(seed).choice(len(val), size=max_queries, replace=False))
    rows = []
    for condition in conditions:
        for k in [0] if condition == "zero_shot" else shots:
            rng = np.random.default_rng([seed, k, CONDITIONS.index(condition)])
            prompts = []
            for q in queries:
                demos = demo_conditions(train, val, int(q), condition, k, rng)
                query = val.examples[q]
                prompts.append(
                    Prompt(tuple(train.examples[i] for i in demos), Example(query.image_path, query.question))
                )
            raw = generate_answers(adapter, prompts, max_new_tokens, num_beams, batch_size)
            answers = [postprocess_vqa(r) for r in raw]
            scores, conventions, values = [], [], []
            for q, answer in zip(queries, answers):
                scores.append(vqa_accuracy(answer, list(val.answers[q])))
                try:
                    value, convention = parse_answer(answer)
                except ValueError:
                    value, convention = None, None
                conventions.append(convention == val.convention[q])
                values.append(value == val.value[q])
            rows.append(
                {
                    "condition": condition,
                    "shots": k,
                    "accuracy": 100.0 * float(np.mean(scores)),
                    "convention_share": float(np.mean(conventions)),
                    "value_share": float(np.mean(values)),
                    "n": len(queries),
                }
            )
    return rows


def infoscore_sanity(
    adapter,
    train: ToyExampleTable,
    queries: ToyExampleTable,
    n: int = 200,
    seed: int = 0,
    exclude_same_image: bool = True,
) -> dict[str, Any]:
    """Share of ``n`` random triples where a same-convention demonstration outscores an other-convention one of
    the same question type (InfoScore, one shot; ties count as failures)."""
    rng = np.random.default_rng(seed)
    triples, prompts = [], []
    for _ in range(n):
        q = int(rng.integers(len(queries)))
        same_type = train.question_type == queries.question_type[q]
        if exclude_same_image:
            same_type &= np.array([e.image_path != queries.examples[q].image_path for e in train.examples])
        same = np.flatnonzero(same_type & (train.convention == queries.convention[q]))
        other = np.flatnonzero(same_type & (train.convention != queries.convention[q]))
        pair = (int(rng.choice(same)), int(rng.choice(other)))
        triples.append((q, *pair))
        query = queries.examples[q]
        prompts += [Prompt((), query)] + [Prompt((train.examples[c],), query) for c in pair]
    scores = adapter.score(prompts)
    adapter.clear_cache()
    wins, margins = [], []
    for t in range(n):
        base, same, other = (mean_token_probability(s) for s in scores[3 * t : 3 * t + 3])
        wins.append((same - base) > (other - base))
        margins.append(same - other)
    return {"n": n, "same_convention_wins": float(np.mean(wins)), "mean_margin": float(np.mean(margins)), "seed": seed}


def cue_agreement(
    records,
    image: np.ndarray,
    text: np.ndarray,
    anchors: Sequence[int],
    cand_num: int = 64,
    samplers: Sequence[str] = ("rand_sampler", "img_sim_sampler", "text_sim_sampler", "mix_sampler"),
    seed: int = 0,
) -> dict[str, float]:
    """Per sampler, the share of anchor candidates whose convention (the cue) matches their anchor's, with the
    pipeline's own samplers on the given train embeddings (row i = record idx i); ``{sampler}/code`` counts the
    anchors with the cue (the code convention) only."""
    from lever_lm.sampling import EmbeddedSplit, SamplerConfig, anchor_candidates

    table = ToyExampleTable.from_records(records)
    split = EmbeddedSplit(records["image_id"].to_numpy(), image=image, text=text)
    cfg = SamplerConfig.from_config({"cand_num": cand_num, "seed": seed})
    out = {}
    for sampler in samplers:
        candidates = anchor_candidates(sampler, list(anchors), split, cfg)
        out[sampler] = float(
            np.mean([table.convention[c] == table.convention[a] for a, cands in candidates.items() for c in cands])
        )
        cued = [
            table.convention[c] == "code"
            for a, cands in candidates.items()
            if table.convention[a] == "code"
            for c in cands
        ]
        if cued:
            out[f"{sampler}/code"] = float(np.mean(cued))
    return out
