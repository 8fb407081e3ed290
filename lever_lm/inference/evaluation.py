"""The evaluation core: for every shot, choose ICDs, generate (resuming from the journal), post-process, score."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from lever_lm.inference.config import METRIC_OF_TASK
from lever_lm.inference.generation import generate_answers
from lever_lm.inference.journal import all_from_journal
from lever_lm.inference.outputs import PREDICTION_COLUMNS

if TYPE_CHECKING:
    import pandas as pd

    from lever_lm.beam_search import ExampleTable
    from lever_lm.inference.config import InferenceConfig
    from lever_lm.inference.inputs import ValQueries
    from lever_lm.inference.journal import InferenceJournal
    from lever_lm.lvlm.base import LVLMAdapter, Prompt
    from lever_lm.retrievers import Retriever

log = logging.getLogger("lever_lm.inference")  # one logger for the package: log lines say [lever_lm.inference]


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


def score_answers(
    task: str,
    answers: Sequence[str],
    references: Sequence[Sequence[str]],
    question_ids: Sequence[int],
    always_normalize: bool,
) -> tuple[list[float], float]:
    """(per-question scores, the shot's score x100): VQA accuracy per question and its mean, or corpus CIDEr
    (per-question NaN)."""
    from lever_lm import metrics

    if task == "vqa":
        per_question = [metrics.vqa_accuracy(a, list(r), always_normalize) for a, r in zip(answers, references)]
        return per_question, 100.0 * float(np.mean(per_question))
    corpus = metrics.cider(
        dict(zip((int(q) for q in question_ids), answers)), {int(q): list(r) for q, r in zip(question_ids, references)}
    )
    return [float("nan")] * len(answers), 100.0 * float(corpus)


def postprocess(task: str, raw: str) -> str:
    from lever_lm.metrics import postprocess_vqa

    return postprocess_vqa(raw) if task == "vqa" else raw.strip()


def evaluate(
    adapter: LVLMAdapter | Callable[[], LVLMAdapter],
    chooser: Retriever,
    queries: ValQueries,
    train: ExampleTable,
    shots: Sequence[int],
    cfg: InferenceConfig,
    task: str,
    logger: logging.Logger | None = None,
    journal: InferenceJournal | None = None,
) -> tuple[dict[str, dict[str, Any]], pd.DataFrame]:
    """Every shot for every query: choose ICDs, generate, post-process, score. Returns (shots dict, predictions).

    ``adapter``: the LVLM, or a function that loads it (called only if a batch is left to generate). ``journal``:
    the job's resume file; batches it holds are not generated again, the others are appended to it.
    """
    import pandas as pd

    from lever_lm.lvlm.base import Prompt

    logger = logger or log
    lvlm = LazyAdapter(adapter)
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
                logger.info(
                    "shot %d: generated %d/%d (%.1f queries/s)",
                    k,
                    done,
                    total,
                    done / max(1e-9, time.perf_counter() - started),
                )

        done = journal.batches(k) if journal is not None else {}
        if done:
            logger.info("shot %d: %d batch(es) taken from %s", k, len(done), journal.path)
        on_batch = (lambda index, positions, texts: journal.record(k, index, positions, texts)) if journal else None
        # a token-budget plan needs the LVLM's token counts; a shot the journal (fingerprint: same config and inputs,
        # so the same plan) holds entirely needs no plan, so a fully resumed job still never loads the LVLM
        raw = all_from_journal(done, len(prompts)) if cfg.token_budget is not None else None
        if raw is None:
            raw = generate_answers(
                lvlm,
                prompts,
                cfg.max_new_tokens,
                cfg.num_beams,
                cfg.batch_size,
                progress,
                done=done,
                on_batch=on_batch,
                token_budget=cfg.token_budget,
            )
        answers = [postprocess(task, text) for text in raw]
        per_question, score = score_answers(task, answers, queries.answers, queries.question_ids, cfg.always_normalize)
        shot_scores[str(k)] = {"score": score, "n": len(queries)}
        logger.info(
            "shot %d: %s %.2f over %d queries in %.1f s",
            k,
            METRIC_OF_TASK[task],
            score,
            len(queries),
            time.perf_counter() - started,
        )
        frames.append(
            pd.DataFrame(
                {
                    "question_id": pd.Series(queries.question_ids, dtype="int64"),
                    "shot": pd.Series(np.full(len(queries), k), dtype="int64"),
                    "icd_ids": pd.Series(icds, dtype=object),
                    "raw_output": pd.Series(raw, dtype=object),
                    "answer": pd.Series(answers, dtype=object),
                    "score": pd.Series(per_question, dtype="float64"),
                }
            )
        )
    predictions = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=list(PREDICTION_COLUMNS))
    return shot_scores, predictions


class LazyAdapter:
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

    def prompt_token_lengths(self, prompts: Sequence[Prompt]) -> list[int]:
        return self._adapter().prompt_token_lengths(prompts)
