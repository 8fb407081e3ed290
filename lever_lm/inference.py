"""Stage 6: ICL inference of the selector cells and of the baselines, scored per shot number.

For each shot number k and every evaluated val query, a chooser (``lever_lm.retrievers``) picks k train ICDs in
prompt order; the prompt is the ICDs with their label answers, then the query without one; the LVLM generates
(batched, see ``generate_answers``); VQA answers are post-processed and scored with the official VQA accuracy,
captions with corpus CIDEr. Scores are reported x100, unrounded.

Public API
- ``BASELINES``, ``TASKS``, ``InferenceConfig.from_config(config["inference"], task)``.
- ``InferenceInputs``: the records and selector-encoder embeddings of train and val (rule inputs).
- ``run_selector_cell(...)`` / ``run_baseline(...)``:
  load, check, evaluate, write ``metrics.json`` +
  ``predictions.parquet``. Every bad input (checkpoint of another beam model or version, a val question without
  its answers, a shot of 0 or larger than the test pool, embeddings of another encoder) stops before the LVLM
  loads, with one message naming the culprit, and leaves no ``metrics.json``.
- ``evaluate(adapter, chooser, queries, train, shots, cfg, task)`` -> (per-shot scores, predictions frame).
- ``generate_answers(adapter, prompts, max_new_tokens, num_beams, batch_size, ..., token_budget=None)``: batched
  generation, results in the order given; ``plan_generation_batches(...)`` its batches: ``batch_size`` prompts in
  order of size, or with ``inference.token_budget`` batches of like token length within
  ``rows x (longest prompt + max_new_tokens) x num_beams`` tokens (``adapter.prompt_token_lengths``).
- ``select_queries(n_val, max_queries, seed)``, ``write_inference_outputs(...)`` (predictions first, metrics last,
  both atomic), ``config_digest(...)``.
- ``InferenceJournal``, ``journal_path(predictions_path)``: resume after a crash (below).
The imitation ceiling (``lever_lm.ceiling.run_ceiling_cell``) is evaluated with the same ``evaluate``, journal and
output formats, as ``"kind": "ceiling"``.

Resume: a job appends every generated batch (shot, batch index, the prompts in it, their raw outputs) as one fsynced
json line to ``<predictions>.partial.jsonl``, next to its outputs but NOT a rule output (Snakemake deletes the
declared outputs of a failed job, never this file). Its first line is the job's fingerprint: the sha256 of every
input (records, embeddings, test pool, checkpoint, the LVLM's weights), the inference config, the identity and the
model entry. A rerun with the same fingerprint takes the batches already done from it and generates only the rest,
with the very same batches (generation order and batch composition do not depend on what was done before; the
config in the fingerprint includes ``token_budget`` when set, so batches of another plan are never reused), so
``metrics.json`` and ``predictions.parquet`` come out byte-identical to an uninterrupted run. A torn last line (a
killed writer) is cut; a file with another fingerprint (other inputs or config) is discarded with a warning. The
file is removed once both outputs are written. Edits to the package's code are not part of the fingerprint (nor of
Snakemake's rerun triggers, README "Rerun policy"): after changing generation code, delete the ``.partial.jsonl``.

Output formats: ``metrics.json`` and ``predictions.parquet`` as in the shared contracts (kind, dataset, task,
beam_model, metric, version, sampler, baseline, shots {k: {score, n}}, n_queries, max_queries, query_seed,
inference, checkpoint, config_digest; predictions: question_id, shot, icd_ids, raw_output, answer, score).
Heavy imports (torch, transformers, the adapters, the selectors' networks) happen inside the functions.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping, Sequence

import numpy as np

from lever_lm.io_utils import file_sha256, json_sha256
from lever_lm.paths import BASELINES

if TYPE_CHECKING:
    import pandas as pd

    from lever_lm.beam_search import ExampleTable
    from lever_lm.lvlm.base import LVLMAdapter, Prompt
    from lever_lm.retrievers import Retriever
    from lever_lm.selectors import FeatureTable

log = logging.getLogger(__name__)

TASKS = ("vqa", "caption")
DEFAULT_MAX_NEW_TOKENS = {"vqa": 5, "caption": 20}
METRIC_OF_TASK = {"vqa": "vqa_accuracy", "caption": "cider"}
VQA_ANSWERS_PER_QUESTION = 10
PREDICTION_COLUMNS = ("question_id", "shot", "icd_ids", "raw_output", "answer", "score")
IDENTITY_KEYS = ("dataset", "beam_model", "sampler", "ex_name", "version", "lever_lm")


# ----------------------------------------------------------------------------------------------- config


def _int_field(section: Mapping[str, Any], name: str, default: Any, low: int, allow_none: bool = False) -> Any:
    value = section.get(name, default)
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
        kind = "an integer or null" if allow_none else "an integer"
        raise ValueError(f"inference.{name}: expected {kind} >= {low}, got {value!r}")
    return int(value)


@dataclass(frozen=True)
class InferenceConfig:
    """``config["inference"]``, typed. ``max_new_tokens`` is resolved for the task (null: 5 for vqa, 20 for caption)."""

    shots: tuple[int, ...] = (1, 2, 3, 4)
    max_queries: int | None = None  # None: the full val split; N: a seeded subset of N questions
    query_seed: int = 0
    num_beams: int = 3
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS["vqa"]
    batch_size: int = 16
    retriever_seed: int = 0
    always_normalize: bool = False
    #: None: ``batch_size`` prompts per generation batch; N: batches planned by tokens (``plan_generation_batches``)
    token_budget: int | None = None

    KNOWN_KEYS = ("shots", "max_queries", "query_seed", "num_beams", "max_new_tokens", "batch_size", "retriever_seed",
                  "always_normalize", "token_budget", "baselines")

    @classmethod
    def from_config(cls, section: Mapping[str, Any] | None, task: str) -> "InferenceConfig":
        """Errors name the key: ``inference.shots: ...``. ``baselines`` (which baseline jobs exist) is accepted and
        not part of the config of a job."""
        if task not in TASKS:
            raise ValueError(f"task: expected one of {list(TASKS)}, got {task!r}")
        if section is not None and not isinstance(section, Mapping):
            raise ValueError(f"inference: expected a mapping, got {type(section).__name__}")
        section = dict(section or {})
        unknown = sorted(set(section) - set(cls.KNOWN_KEYS))
        if unknown:
            raise ValueError(f"inference: unknown key(s) {', '.join(unknown)} (known: {', '.join(cls.KNOWN_KEYS)})")
        shots = section.get("shots", list(cls.shots))
        if isinstance(shots, (str, bytes)) or not isinstance(shots, Sequence) or not shots:
            raise ValueError(f"inference.shots: expected a non-empty list of shot numbers, got {shots!r}")
        for shot in shots:
            if isinstance(shot, bool) or not isinstance(shot, (int, np.integer)) or shot < 0:
                raise ValueError(f"inference.shots: shot {shot!r} is not an integer >= 0")
        if len(set(shots)) != len(shots):
            raise ValueError(f"inference.shots: repeated shot numbers in {list(shots)}")
        always = section.get("always_normalize", False)
        if not isinstance(always, bool):
            raise ValueError(f"inference.always_normalize: expected true or false, got {always!r}")
        max_new = _int_field(section, "max_new_tokens", None, 1, allow_none=True)
        return cls(
            shots=tuple(int(s) for s in shots),
            max_queries=_int_field(section, "max_queries", None, 1, allow_none=True),
            query_seed=_int_field(section, "query_seed", 0, 0),
            num_beams=_int_field(section, "num_beams", 3, 1),
            max_new_tokens=DEFAULT_MAX_NEW_TOKENS[task] if max_new is None else max_new,
            batch_size=_int_field(section, "batch_size", 16, 1),
            retriever_seed=_int_field(section, "retriever_seed", 0, 0),
            always_normalize=always,
            token_budget=_int_field(section, "token_budget", None, 1, allow_none=True),
        )

    def to_dict(self) -> dict[str, Any]:
        """What metrics.json records and the digests hash. ``token_budget`` only when set, so a job without one keeps
        the metrics, config digest and resume fingerprint it had before the key existed."""
        out = dataclasses.asdict(self)
        out["shots"] = list(self.shots)
        if self.token_budget is None:
            del out["token_budget"]
        return out


def config_digest(**parts: Any) -> str:
    """sha256 of the canonical json of what decides a job's results (config, identity, model entry)."""
    return json_sha256(parts)


# ----------------------------------------------------------------------------------------------- inputs


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
    def from_named(cls, named: Any) -> "InferenceInputs":
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
    records: "pd.DataFrame"
    features: "FeatureTable"
    meta: dict
    meta_path: str


def _load_split(inputs: InferenceInputs, split: str) -> _Split:
    from lever_lm.data import load_records
    from lever_lm.embeddings import EmbeddingPaths, load_embeddings
    from lever_lm.selectors import FeatureTable

    records_path = getattr(inputs, f"{split}_records")
    meta_path = inputs.meta_path(split)
    result = load_embeddings(EmbeddingPaths(Path(getattr(inputs, f"{split}_image")),
                                            Path(getattr(inputs, f"{split}_text")), Path(meta_path)))
    if result.meta.get("split", split) != split:
        raise ValueError(f"{meta_path}: split is {result.meta.get('split')!r}, expected {split!r}")
    records = load_records(records_path)
    if len(records) != len(result.image):
        raise ValueError(f"{records_path}: {len(records)} records but {meta_path} says n = {len(result.image)}")
    if not np.array_equal(records["idx"].to_numpy(), np.arange(len(records))):
        raise ValueError(f"{records_path}: column idx must be 0..n-1 in row order (embedding rows follow it)")
    return _Split(records, FeatureTable(result.image, result.text), dict(result.meta), meta_path)


def _check_same_encoder(train: _Split, val: _Split) -> str:
    a, b = train.meta.get("encoder_id"), val.meta.get("encoder_id")
    if a != b:
        raise ValueError(f"{val.meta_path}: val embeddings come from encoder {b!r} but the train embeddings "
                         f"({train.meta_path}) from {a!r}")
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


def val_queries(records: "pd.DataFrame", rows: np.ndarray, task: str, source: str) -> ValQueries:
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
            raise ValueError(f"{source}: val question_id {qid} has {len(refs)} answers, "
                             f"expected {VQA_ANSWERS_PER_QUESTION}")
        examples.append(Example(str(record["image_path"]), str(record["question"])))
        answers.append(refs)
        qids.append(qid)
    return ValQueries(np.asarray(rows, dtype=np.int64), np.asarray(qids, dtype=np.int64), examples, answers)


# ----------------------------------------------------------------------------------------------- generation


def _prompt_size(prompt: "Prompt") -> tuple[int, int]:
    examples = (*prompt.demos, prompt.query)
    return len(examples), sum(len(e.question) + len(e.answer or "") for e in examples)


def plan_generation_batches(adapter: "LVLMAdapter", prompts: Sequence["Prompt"], max_new_tokens: int,
                            num_beams: int, batch_size: int, token_budget: int | None = None) -> list[list[int]]:
    """Generation batches, as lists of prompt positions; deterministic for given prompts and settings (resume needs
    the same batches again).

    ``token_budget`` None: prompts sorted by size (image count, text length), ``batch_size`` at a time. With a
    budget: ``base.plan_batches`` over each prompt's cost ``(prompt tokens + max_new_tokens) x num_beams``
    (``adapter.prompt_token_lengths``: tokens as the language model sees them), so a batch holds at most
    ``batch_size`` prompts and ``rows x (longest prompt + max_new_tokens) x num_beams`` stays within the budget: the
    key/value cache of the batch's beams at the last step, what memory scales with. Prompts are sorted by token
    length, so batch-mates pad little; a prompt over the budget runs alone.
    """
    from lever_lm.lvlm.base import plan_batches

    if batch_size < 1:
        raise ValueError(f"inference.batch_size: expected >= 1, got {batch_size}")
    keys = [_prompt_size(p) for p in prompts]
    if token_budget is None:
        return plan_batches([0] * len(prompts), keys, batch_size, None)
    if isinstance(token_budget, bool) or token_budget < 1:
        raise ValueError(f"inference.token_budget: expected an integer >= 1 or null, got {token_budget!r}")
    lengths = adapter.prompt_token_lengths(prompts)
    if len(lengths) != len(prompts):
        raise RuntimeError(f"adapter.prompt_token_lengths returned {len(lengths)} lengths for {len(prompts)} prompts")
    costs = [(int(n) + max_new_tokens) * num_beams for n in lengths]
    return plan_batches(costs, keys, batch_size, token_budget)


def _all_from_journal(done: Mapping[int, tuple[Sequence[int], Sequence[str]]], n: int) -> list[str] | None:
    """The raw outputs of all ``n`` prompts when ``done`` holds batches 0..m-1 that together hold every position once
    (each with its texts); else None."""
    if not n or sorted(done) != list(range(len(done))) or any(len(b) != len(t) for b, t in done.values()):
        return None
    out: dict[int, str] = {int(i): str(text) for batch, texts in done.values() for i, text in zip(batch, texts)}
    count = sum(len(batch) for batch, _ in done.values())
    return [out[i] for i in range(n)] if count == n and sorted(out) == list(range(n)) else None


def generate_answers(adapter: "LVLMAdapter", prompts: Sequence["Prompt"], max_new_tokens: int, num_beams: int,
                     batch_size: int, progress: Callable[[int, int], None] | None = None,
                     done: Mapping[int, tuple[Sequence[int], Sequence[str]]] | None = None,
                     on_batch: Callable[[int, list[int], list[str]], None] | None = None,
                     token_budget: int | None = None) -> list[str]:
    """Raw generations, batched by ``plan_generation_batches`` (``batch_size`` prompts in order of size, or
    token-budget batches), each batch through ``adapter.generate``; results in the order of ``prompts``.

    The adapters handle batches of mixed image counts exactly (tests: batched answers == batch-1 answers).
    Resume: ``done`` maps a batch index to (its prompt positions, their raw outputs) from an earlier run; such a
    batch is not generated again if it holds the same prompts (a batch of another plan, e.g. another token budget,
    is generated again). ``on_batch(index, positions, texts)`` is called after each batch that was generated.
    """
    done = done or {}
    plan = plan_generation_batches(adapter, prompts, max_new_tokens, num_beams, batch_size, token_budget)
    out: list[str | None] = [None] * len(prompts)
    finished = 0
    for index, chunk in enumerate(plan):
        earlier = done.get(index)
        if earlier is not None and list(earlier[0]) == chunk and len(earlier[1]) == len(chunk):
            texts = [str(text) for text in earlier[1]]
        else:
            texts = adapter.generate([prompts[i] for i in chunk], max_new_tokens, num_beams, batch_size)
            if len(texts) != len(chunk):
                raise RuntimeError(f"adapter.generate returned {len(texts)} answers for {len(chunk)} prompts")
            if on_batch is not None:
                on_batch(index, list(chunk), list(texts))
        for i, text in zip(chunk, texts):
            out[i] = text
        finished += len(chunk)
        if progress is not None:
            progress(finished, len(prompts))
    return out  # type: ignore[return-value]


# ----------------------------------------------------------------------------------------------- evaluation


def _checked_icds(icds: Sequence[Sequence[int]], n_queries: int, k: int, n_train: int, who: str) -> list[list[int]]:
    if len(icds) != n_queries:
        raise RuntimeError(f"{who}: chose ICDs for {len(icds)} of {n_queries} queries (shot {k})")
    out = []
    for ids in icds:
        ids = [int(i) for i in ids]
        if len(ids) != k or len(set(ids)) != k or any(i < 0 or i >= n_train for i in ids):
            raise RuntimeError(f"{who}: shot {k}: expected {k} distinct train ids in 0..{n_train - 1}, got {ids}")
        out.append(ids)
    return out


def score_answers(task: str, answers: Sequence[str], references: Sequence[Sequence[str]],
                  question_ids: Sequence[int], always_normalize: bool) -> tuple[list[float], float]:
    """(per-question scores, the shot's score x100): VQA accuracy per question and its mean, or corpus CIDEr
    (per-question NaN)."""
    from lever_lm import metrics

    if task == "vqa":
        per_question = [metrics.vqa_accuracy(a, list(r), always_normalize) for a, r in zip(answers, references)]
        return per_question, 100.0 * float(np.mean(per_question))
    corpus = metrics.cider(dict(zip((int(q) for q in question_ids), answers)),
                           {int(q): list(r) for q, r in zip(question_ids, references)})
    return [float("nan")] * len(answers), 100.0 * float(corpus)


def postprocess(task: str, raw: str) -> str:
    from lever_lm.metrics import postprocess_vqa

    return postprocess_vqa(raw) if task == "vqa" else raw.strip()


def evaluate(adapter: "LVLMAdapter | Callable[[], LVLMAdapter]", chooser: "Retriever", queries: ValQueries,
             train: "ExampleTable", shots: Sequence[int], cfg: InferenceConfig, task: str,
             logger: logging.Logger | None = None,
             journal: "InferenceJournal | None" = None) -> tuple[dict[str, dict[str, Any]], "pd.DataFrame"]:
    """Every shot for every query: choose ICDs, generate, post-process, score. Returns (shots dict, predictions).

    ``adapter``: the LVLM, or a function that loads it (called only if a batch is left to generate). ``journal``:
    the job's resume file; batches it holds are not generated again, the others are appended to it.
    """
    import pandas as pd

    from lever_lm.lvlm.base import Prompt

    logger = logger or log
    lvlm = _Lazy(adapter)
    who = type(chooser).__name__
    shot_scores: dict[str, dict[str, Any]] = {}
    frames = []
    for k in shots:
        started = time.perf_counter()
        icds = _checked_icds(chooser.choose(queries.rows, k), len(queries), k, len(train), who)
        empty = train.empty_label_ids(sorted({i for ids in icds for i in ids}))
        if empty:
            raise ValueError(f"train records: ICD id(s) {empty[:5]} have an empty label answer (shot {k})")
        prompts = [Prompt(tuple(train.example(i) for i in ids), query) for ids, query in zip(icds, queries.examples)]
        step = max(1, len(prompts) // 10)
        last = [0]

        def progress(done: int, total: int) -> None:
            if done - last[0] >= step or done == total:
                last[0] = done
                logger.info("shot %d: generated %d/%d (%.1f queries/s)", k, done, total,
                            done / max(1e-9, time.perf_counter() - started))

        done = journal.batches(k) if journal is not None else {}
        if done:
            logger.info("shot %d: %d batch(es) taken from %s", k, len(done), journal.path)
        on_batch = (lambda index, positions, texts: journal.record(k, index, positions, texts)) if journal else None
        # a token-budget plan needs the LVLM's token counts; a shot the journal (fingerprint: same config and inputs,
        # so the same plan) holds entirely needs no plan, so a fully resumed job still never loads the LVLM
        raw = _all_from_journal(done, len(prompts)) if cfg.token_budget is not None else None
        if raw is None:
            raw = generate_answers(lvlm, prompts, cfg.max_new_tokens, cfg.num_beams, cfg.batch_size, progress,
                                   done=done, on_batch=on_batch, token_budget=cfg.token_budget)
        answers = [postprocess(task, text) for text in raw]
        per_question, score = score_answers(task, answers, queries.answers, queries.question_ids,
                                            cfg.always_normalize)
        shot_scores[str(k)] = {"score": score, "n": len(queries)}
        logger.info("shot %d: %s %.2f over %d queries in %.1f s", k, METRIC_OF_TASK[task], score, len(queries),
                    time.perf_counter() - started)
        frames.append(pd.DataFrame({
            "question_id": pd.Series(queries.question_ids, dtype="int64"),
            "shot": pd.Series(np.full(len(queries), k), dtype="int64"),
            "icd_ids": pd.Series(icds, dtype=object),
            "raw_output": pd.Series(raw, dtype=object),
            "answer": pd.Series(answers, dtype=object),
            "score": pd.Series(per_question, dtype="float64"),
        }))
    predictions = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=list(PREDICTION_COLUMNS))
    return shot_scores, predictions


class _Lazy:
    """An adapter, or a loader of one called at the first ``generate`` or ``prompt_token_lengths`` (a fully resumed
    job never loads the LVLM)."""

    def __init__(self, source: Any) -> None:
        self._source, self._loaded = source, None

    def _adapter(self) -> Any:
        if self._loaded is None:
            self._loaded = self._source if hasattr(self._source, "generate") else self._source()
        return self._loaded

    def generate(self, *args: Any, **kwargs: Any) -> list[str]:
        return self._adapter().generate(*args, **kwargs)

    def prompt_token_lengths(self, prompts: Sequence["Prompt"]) -> list[int]:
        return self._adapter().prompt_token_lengths(prompts)


def journal_path(predictions_path: str | os.PathLike) -> Path:
    """The resume file of a job: ``<predictions>.partial.jsonl`` (never a declared Snakemake output)."""
    path = Path(predictions_path)
    return path.with_name(path.name + ".partial.jsonl")


class InferenceJournal:
    """Append-only resume file of one inference job (see the module docstring).

    Line 1 ``{"fingerprint": ...}``; then one ``{"shot", "batch", "prompts", "raw"}`` line per generated batch, each
    flushed and fsynced, so a killed job loses at most the batch in flight.
    """

    def __init__(self, path: str | os.PathLike, fingerprint: str, logger: logging.Logger | None = None) -> None:
        from lever_lm.io_utils import append_jsonl, cut_torn_tail, read_jsonl

        self.path = Path(path)
        self.fingerprint = fingerprint
        self._done: dict[int, dict[int, tuple[list[int], list[str]]]] = {}
        logger = logger or log
        keep = False
        if self.path.is_file():
            cut_torn_tail(self.path)
            try:
                lines = read_jsonl(self.path)
            except (ValueError, UnicodeDecodeError):
                lines = []
            if lines and lines[0] == {"fingerprint": fingerprint}:
                keep = True
                for line in lines[1:]:  # a batch generated twice (never expected): the later line wins
                    self._done.setdefault(int(line["shot"]), {})[int(line["batch"])] = (
                        [int(i) for i in line["prompts"]], [str(t) for t in line["raw"]])
                logger.info("resuming from %s: %d batch(es) done", self.path,
                            sum(len(b) for b in self._done.values()))
            elif self.path.stat().st_size:
                logger.warning("%s was made from other inputs or config: starting over", self.path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._handle = open(self.path, "a" if keep else "w", encoding="utf-8")
        self._append = append_jsonl
        if not keep:
            append_jsonl(self._handle, {"fingerprint": fingerprint})

    def batches(self, shot: int) -> dict[int, tuple[list[int], list[str]]]:
        return dict(self._done.get(int(shot), {}))

    def record(self, shot: int, batch: int, prompts: Sequence[int], raw: Sequence[str]) -> None:
        self._append(self._handle, {"shot": int(shot), "batch": int(batch), "prompts": [int(i) for i in prompts],
                                    "raw": [str(t) for t in raw]})

    def close(self) -> None:
        if not self._handle.closed:
            self._handle.close()

    def remove(self) -> None:
        self.close()
        self.path.unlink(missing_ok=True)

    def __enter__(self) -> "InferenceJournal":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def _job_fingerprint(inputs: InferenceInputs, extra_files: Mapping[str, Any], **parts: Any) -> str:
    """What decides a job's results: every input's bytes (weights of 256 MiB+ by size and mtime) and ``parts``."""
    from lever_lm.io_utils import inputs_fingerprint

    files = {f.name: getattr(inputs, f.name) for f in dataclasses.fields(inputs)}
    files.update({f"{split}_meta": inputs.meta_path(split) for split in ("train", "val")})
    files.update(extra_files)
    return config_digest(inputs=inputs_fingerprint(files), **parts)


def write_inference_outputs(metrics: Mapping[str, Any], predictions: "pd.DataFrame", metrics_path: str | os.PathLike,
                            predictions_path: str | os.PathLike) -> None:
    """Predictions first, metrics last, each atomically: a present metrics.json means a complete job."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from lever_lm.io_utils import atomic_path, write_json

    missing = [c for c in PREDICTION_COLUMNS if c not in predictions.columns]
    if missing:
        raise ValueError(f"predictions: missing column(s) {missing}")
    schema = pa.schema([("question_id", pa.int64()), ("shot", pa.int64()), ("icd_ids", pa.list_(pa.int64())),
                        ("raw_output", pa.string()), ("answer", pa.string()), ("score", pa.float64())])
    # an explicit schema: the ICD lists stay list<int64> even when all are empty (zero-shot)
    table = pa.Table.from_pandas(predictions[list(PREDICTION_COLUMNS)], schema=schema, preserve_index=False)
    with atomic_path(predictions_path, suffix=".parquet") as tmp:
        pq.write_table(table, tmp)
    write_json(metrics_path, dict(metrics))


def remove_stale_metrics(metrics_path: str | os.PathLike) -> None:
    """A failed job must leave no metrics.json, not even one of an earlier run."""
    Path(metrics_path).unlink(missing_ok=True)


def metrics_record(*, kind: str, dataset: str, task: str, beam_model: str, version: str | None, sampler: str | None,
             baseline: str | None, shots: dict, queries: ValQueries, cfg: InferenceConfig,
             checkpoint: dict | None, digest: str, replicate: int) -> dict[str, Any]:
    return {
        "kind": kind, "dataset": dataset, "task": task, "beam_model": beam_model, "metric": METRIC_OF_TASK[task],
        "version": version, "sampler": sampler, "baseline": baseline, "replicate": replicate, "shots": shots,
        "n_queries": len(queries), "max_queries": cfg.max_queries, "query_seed": cfg.query_seed,
        "inference": cfg.to_dict(), "checkpoint": checkpoint, "config_digest": digest,
    }


def start_cell(kind: str, identity: Mapping[str, str], keys: Sequence[str], metrics_path: str | os.PathLike,
               inference: Mapping[str, Any] | None, task: str) -> "InferenceConfig":
    """What every cell job does first: drop a stale metrics.json, check the identity's keys, read the settings."""
    remove_stale_metrics(metrics_path)
    missing = [key for key in keys if key not in identity]
    if missing:
        raise ValueError(f"{kind} cell identity: missing {', '.join(missing)}")
    return InferenceConfig.from_config(inference, task)


def load_lvlm(beam_model: str, entry: Mapping[str, Any], weights: Sequence[str] | None) -> "LVLMAdapter":
    from lever_lm.lvlm.factory import load_adapter

    tiny_dir = None
    if entry.get("variant") == "tiny":
        if not weights:
            raise ValueError(f"beam_models.{beam_model}: a tiny variant needs its model dir as the first weights input")
        tiny_dir = str(weights[0])
    return load_adapter(beam_model, dict(entry), tiny_dir)


def _retriever_shots(cfg: InferenceConfig, baseline: str, n_train: int) -> tuple[int, ...]:
    if baseline == "ZeroShot":
        return (0,)
    for shot in cfg.shots:
        if shot < 1:
            raise ValueError(f"inference.shots: shot {shot} is not valid for {baseline} (use the ZeroShot baseline)")
        if shot > n_train:
            raise ValueError(f"inference.shots: shot {shot} exceeds the {n_train} train ICDs")
    return cfg.shots


# ----------------------------------------------------------------------------------------------- jobs


def run_selector_cell(*, identity: Mapping[str, str], checkpoint: str, test_pool: str | None, inputs: InferenceInputs,
                      weights: Sequence[str] | None, entry: Mapping[str, Any], inference: Mapping[str, Any] | None,
                      task: str, metrics_path: str, predictions_path: str, adapter: "LVLMAdapter | None" = None,
                      logger: logging.Logger | None = None, replicate: int = 0) -> dict[str, Any]:
    """ICL inference of one selector cell (rule icl_inference); returns the metrics written.

    ``replicate``: the replicate seed (lever_lm.replicates) the cell belongs to, recorded in metrics.json.

    ``identity``: dataset, beam_model, sampler, ex_name, version, lever_lm of the rule (the checkpoint's meta must
    agree). ``test_pool``: the sampler's test-pool json (val idx -> train ids; v1-v4 select within it).
    ``adapter``: an already loaded LVLM (tests); else loaded from ``entry`` (``weights[0]`` is a tiny model's dir).
    """
    from lever_lm.beam_search import ExampleTable
    from lever_lm.selectors import load_selector
    from lever_lm.retrievers import SelectorRetriever

    logger = logger or log
    cfg = start_cell("selector", identity, IDENTITY_KEYS, metrics_path, inference, task)
    for shot in cfg.shots:
        if shot < 1:
            raise ValueError(f"inference.shots: shot {shot} is not valid for a selector cell (shots must be >= 1)")
    train, val = _load_split(inputs, "train"), _load_split(inputs, "val")
    encoder_id = _check_same_encoder(train, val)
    selector = load_selector(checkpoint, train.features, expect={key: identity[key] for key in IDENTITY_KEYS})
    if "encoder_id" in selector.meta and str(selector.meta["encoder_id"]) != encoder_id:
        raise ValueError(f"{checkpoint}: selector trained on encoder {selector.meta['encoder_id']!r} features but the "
                         f"val embeddings ({val.meta_path}) come from {encoder_id!r}")
    pools = None
    if selector.needs_pools:
        if not test_pool:
            raise ValueError(f"{checkpoint}: a {selector.version} selector needs the test pool of its sampler")
        from lever_lm.sampling import read_candidates

        pool_file = read_candidates(test_pool)
        pool_sampler = pool_file.params.get("sampler", identity["sampler"])
        if pool_sampler != identity["sampler"]:
            raise ValueError(f"{test_pool}: test pool of sampler {pool_sampler!r}, "
                             f"this cell is {identity['sampler']!r}")
        pools = pool_file.candidates
    rows = select_queries(len(val.records), cfg.max_queries, cfg.query_seed)
    queries = val_queries(val.records, rows, task, inputs.val_records)
    chooser = SelectorRetriever(selector, val.features, pools, pool_source=str(test_pool))
    for shot in cfg.shots:
        chooser.check(rows, shot)
    examples = ExampleTable.from_records(train.records, name=inputs.train_records)
    adapter = adapter or load_lvlm(identity["beam_model"], entry, weights)
    logger.info("%s %s %s: %d val queries, shots %s", identity["version"], identity["beam_model"], identity["sampler"],
                len(queries), list(cfg.shots))
    fingerprint = _job_fingerprint(inputs, {"checkpoint": checkpoint, "test_pool": test_pool, "weights": weights or []},
                                   kind="selector", task=task, inference=cfg.to_dict(), identity=dict(identity),
                                   entry=dict(entry))
    with InferenceJournal(journal_path(predictions_path), fingerprint, logger) as journal:
        shots, predictions = evaluate(adapter, chooser, queries, examples, cfg.shots, cfg, task, logger, journal)
    checkpoint_info = {"path": str(checkpoint), "sha256": file_sha256(checkpoint), "meta": selector.meta}
    digest = config_digest(kind="selector", task=task, inference=cfg.to_dict(), identity=dict(identity),
                           entry=dict(entry), checkpoint_sha256=checkpoint_info["sha256"])
    metrics = metrics_record(kind="selector", dataset=identity["dataset"], task=task, beam_model=identity["beam_model"],
                       version=identity["version"], sampler=identity["sampler"], baseline=None, shots=shots,
                       queries=queries, cfg=cfg, checkpoint=checkpoint_info, digest=digest, replicate=replicate)
    write_inference_outputs(metrics, predictions, metrics_path, predictions_path)
    journal.remove()
    return metrics


def run_baseline(*, dataset: str, beam_model: str, baseline: str, inputs: InferenceInputs,
                 weights: Sequence[str] | None, entry: Mapping[str, Any], inference: Mapping[str, Any] | None,
                 task: str, metrics_path: str, predictions_path: str, adapter: "LVLMAdapter | None" = None,
                 logger: logging.Logger | None = None, replicate: int = 0) -> dict[str, Any]:
    """ICL inference of one baseline (rule baseline_inference): RandomRetriever, ZeroShot or SimRetriever-*.

    ``replicate``: the replicate seed the run belongs to, recorded in metrics.json.
    """
    from lever_lm.beam_search import ExampleTable
    from lever_lm.retrievers import make_baseline_retriever

    logger = logger or log
    remove_stale_metrics(metrics_path)
    if baseline not in BASELINES:
        raise ValueError(f"baseline {baseline!r} is not one of {list(BASELINES)}")
    cfg = InferenceConfig.from_config(inference, task)
    train, val = _load_split(inputs, "train"), _load_split(inputs, "val")
    _check_same_encoder(train, val)
    shots = _retriever_shots(cfg, baseline, len(train.records))
    rows = select_queries(len(val.records), cfg.max_queries, cfg.query_seed)
    queries = val_queries(val.records, rows, task, inputs.val_records)
    chooser = make_baseline_retriever(baseline, len(train.records), cfg.retriever_seed, val.features, train.features)
    examples = ExampleTable.from_records(train.records, name=inputs.train_records)
    adapter = adapter or load_lvlm(beam_model, entry, weights)
    logger.info("%s %s: %d val queries, shots %s", baseline, beam_model, len(queries), list(shots))
    fingerprint = _job_fingerprint(inputs, {"weights": weights or []}, kind="baseline", task=task,
                                   inference=cfg.to_dict(), dataset=dataset, beam_model=beam_model, baseline=baseline,
                                   entry=dict(entry))
    with InferenceJournal(journal_path(predictions_path), fingerprint, logger) as journal:
        scores, predictions = evaluate(adapter, chooser, queries, examples, shots, cfg, task, logger, journal)
    digest = config_digest(kind="baseline", task=task, inference=cfg.to_dict(), dataset=dataset,
                           beam_model=beam_model, baseline=baseline, entry=dict(entry))
    metrics = metrics_record(kind="baseline", dataset=dataset, task=task, beam_model=beam_model, version=None, sampler=None,
                       baseline=baseline, shots=scores, queries=queries, cfg=cfg, checkpoint=None, digest=digest,
                       replicate=replicate)
    write_inference_outputs(metrics, predictions, metrics_path, predictions_path)
    journal.remove()
    return metrics

