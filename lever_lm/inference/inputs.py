"""What a job loads: the rule inputs (records and selector-encoder embeddings of train and val), the evaluated val
queries, and the LVLM."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import pandas as pd

    from lever_lm.lvlm.base import LVLMAdapter
    from lever_lm.selectors import FeatureTable

VQA_ANSWERS_PER_QUESTION = 10


@dataclass(frozen=True)
class InferenceInputs:
    """Rule inputs: records and the selector encoder's embeddings of both splits (meta: sibling ``{split}.meta.json``
    of ``{split}.image.npy`` when not given)."""

    train_records: str
    val_records: str
    train_image: str
    train_text: str
    val_image: str
    val_text: str
    train_meta: str | None = None
    val_meta: str | None = None

    @classmethod
    def from_named(cls, named: Any) -> InferenceInputs:
        """From ``snakemake.input`` (or any object/mapping with these names)."""

        def get(name: str) -> Any:
            value = named.get(name) if isinstance(named, Mapping) else getattr(named, name, None)
            return None if value is None else str(value)

        values = {f.name: get(f.name) for f in dataclasses.fields(cls)}
        missing = [name for name, value in values.items() if value is None and not name.endswith("_meta")]
        if missing:
            raise ValueError(f"inference inputs: missing {', '.join(missing)}")
        return cls(**values)

    def meta_path(self, split: str) -> str:
        given = getattr(self, f"{split}_meta")
        if given:
            return given
        image = Path(getattr(self, f"{split}_image"))
        if not image.name.endswith(".image.npy"):
            raise ValueError(f"{image}: cannot derive the meta file; expected a name like {split}.image.npy")
        return str(image.with_name(image.name.removesuffix(".image.npy") + ".meta.json"))


@dataclass(frozen=True)
class _Split:
    records: pd.DataFrame
    features: FeatureTable
    meta: dict
    meta_path: str


def load_split(inputs: InferenceInputs, split: str) -> _Split:
    from lever_lm.data import load_records
    from lever_lm.embeddings import EmbeddingPaths, load_embeddings
    from lever_lm.selectors import FeatureTable

    records_path = getattr(inputs, f"{split}_records")
    meta_path = inputs.meta_path(split)
    result = load_embeddings(
        EmbeddingPaths(Path(getattr(inputs, f"{split}_image")), Path(getattr(inputs, f"{split}_text")), Path(meta_path))
    )
    if result.meta.get("split", split) != split:
        raise ValueError(f"{meta_path}: split is {result.meta.get('split')!r}, expected {split!r}")
    records = load_records(records_path)
    if len(records) != len(result.image):
        raise ValueError(f"{records_path}: {len(records)} records but {meta_path} says n = {len(result.image)}")
    if not np.array_equal(records["idx"].to_numpy(), np.arange(len(records))):
        raise ValueError(f"{records_path}: column idx must be 0..n-1 in row order (embedding rows follow it)")
    return _Split(records, FeatureTable(result.image, result.text), dict(result.meta), meta_path)


def check_same_encoder(train: _Split, val: _Split) -> str:
    a, b = train.meta.get("encoder_id"), val.meta.get("encoder_id")
    if a != b:
        raise ValueError(
            f"{val.meta_path}: val embeddings come from encoder {b!r} but the train embeddings "
            f"({train.meta_path}) from {a!r}"
        )
    return str(a)


@dataclass(frozen=True)
class ValQueries:
    """The evaluated val queries: record rows (idx), question ids, the queries as ``Example``s, their references."""

    rows: np.ndarray
    question_ids: np.ndarray
    examples: list
    answers: list[list[str]]

    def __len__(self) -> int:
        return len(self.rows)


def select_queries(n_val: int, max_queries: int | None, seed: int) -> np.ndarray:
    """Val rows to evaluate: all of them, or a seeded subset of ``max_queries`` (sorted)."""
    if max_queries is None or max_queries >= n_val:
        return np.arange(n_val, dtype=np.int64)
    return np.sort(np.random.default_rng(seed).choice(n_val, size=max_queries, replace=False)).astype(np.int64)


def val_queries(records: pd.DataFrame, rows: np.ndarray, task: str, source: str) -> ValQueries:
    """The queries of ``rows``; a question without its reference answers (VQA: 10) is an error naming it."""
    from lever_lm.lvlm.base import Example

    examples, answers, qids = [], [], []
    for row in rows:
        record = records.iloc[int(row)]
        qid = int(record["question_id"])
        refs = record["answers"]
        refs = [] if refs is None or (isinstance(refs, float) and math.isnan(refs)) else list(refs)
        if not refs or not all(isinstance(a, str) for a in refs) or not any(a.strip() for a in refs):
            raise ValueError(f"{source}: val question_id {qid} has no reference answers")
        if task == "vqa" and len(refs) != VQA_ANSWERS_PER_QUESTION:
            raise ValueError(
                f"{source}: val question_id {qid} has {len(refs)} answers, expected {VQA_ANSWERS_PER_QUESTION}"
            )
        examples.append(Example(str(record["image_path"]), str(record["question"])))
        answers.append(refs)
        qids.append(qid)
    return ValQueries(np.asarray(rows, dtype=np.int64), np.asarray(qids, dtype=np.int64), examples, answers)


def load_lvlm(beam_model: str, entry: Mapping[str, Any], weights: Sequence[str] | None) -> LVLMAdapter:
    from lever_lm.lvlm.factory import load_adapter

    tiny_dir = None
    if entry.get("variant") == "tiny":
        if not weights:
            raise ValueError(f"beam_models.{beam_model}: a tiny variant needs its model dir as the first weights input")
        tiny_dir = str(weights[0])
    return load_adapter(beam_model, dict(entry), tiny_dir)
