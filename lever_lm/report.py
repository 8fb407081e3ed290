"""Stage 6 report: seed-shaped result tables, accuracy-vs-shots plots and the selection diagnostic.

Everything here reads the inference outputs (``metrics.json`` + ``predictions.parquet`` of every selector cell and
baseline) and writes ``tables.md`` (+ ``tables.html``, the same tables as a self-contained page that
``snakemake --report`` shows inline), ``selection_overlap.csv`` and one PNG per (beam model, version).
All inputs are checked before anything is written: a metrics file from an older config, or a predictions file that
disagrees with its metrics, stops the report with one message naming the file, and no output is left behind.

Scores are the ×100 values of metrics.json; they are rounded only for display (2 decimals).
"""

from __future__ import annotations

import html
import json
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from lever_lm.errors import InputError
from lever_lm.io_utils import atomic_path, read_json
from lever_lm.paths import BASELINES, VERSIONS

PathLike = str | os.PathLike

RANDOM = "RandomRetriever"
ZERO_SHOT = "ZeroShot"
SIMILARITY = tuple(b for b in BASELINES if b.startswith("SimRetriever"))
# row order of the similarity / zero-shot table
BASELINE_ORDER = (ZERO_SHOT, *SIMILARITY, RANDOM)
METRIC_LABELS = {"vqa_accuracy": "VQA accuracy", "cider": "CIDEr"}
PREDICTION_COLUMNS = ("question_id", "shot", "icd_ids", "score")
IDENTICAL_WARN = 0.95
SCORE_TOLERANCE = 1e-6  # metrics score vs mean of per-question scores, on the x100 scale
OVERLAP_COLUMNS = ("beam_model", "cell_a", "cell_b", "shot", "n", "identical_share")


class ReportInputError(InputError):
    """An input of the report is stale or inconsistent; the message names the file."""


# --------------------------------------------------------------------------------------------------------------
# inputs


@dataclass(frozen=True)
class Run:
    """One metrics.json (a selector cell or a baseline) with its predictions file."""

    metrics_path: str
    predictions_path: str
    kind: str  # "selector" | "baseline"
    dataset: str
    task: str
    metric: str
    beam_model: str
    version: str | None
    sampler: str | None
    baseline: str | None
    scores: dict[int, float]  # shot -> score x100
    ns: dict[int, int]  # shot -> number of queries
    n_queries: int | None

    @property
    def label(self) -> str:
        return f"{self.version}/{self.sampler}" if self.kind == "selector" else str(self.baseline)


def _normalize(value: Any) -> Any:
    """JSON round trip, so tuples and lists (and int/float keys) compare as they would in metrics.json."""
    return json.loads(json.dumps(value, sort_keys=True, default=str))


def _rule_hint(kind: str) -> str:
    rule = "icl_inference" if kind == "selector" else "baseline_inference"
    return f"rerun it (snakemake --forcerun {rule}, or delete the file and run snakemake)"


def check_inference_settings(metrics: Mapping[str, Any], path: PathLike, expected: Mapping[str, Any]) -> None:
    """Stop when ``metrics`` was produced with inference settings other than ``expected`` (the current config).

    Only the keys of ``expected`` are compared (pass the whole InferenceConfig as a dict to compare all of them);
    a key the file lacks counts as differing.
    """
    recorded = metrics.get("inference")
    kind = metrics.get("kind", "selector")
    if not isinstance(recorded, Mapping):
        raise ReportInputError(
            f"{path} was produced by an older config: it records no inference settings; {_rule_hint(kind)}"
        )
    missing = object()
    differing = []
    for key in expected:
        have = recorded.get(key, missing)
        if have is missing or _normalize(have) != _normalize(expected[key]):
            shown = "absent" if have is missing else json.dumps(_normalize(have))
            differing.append((key, shown, json.dumps(_normalize(expected[key]))))
    if differing:
        keys = ", ".join(f"inference.{key}" for key, _, _ in differing)
        detail = "; ".join(f"{key}: file {have}, config {want}" for key, have, want in differing)
        verb = "differs" if len(differing) == 1 else "differ"
        raise ReportInputError(
            f"{path} was produced by an older config: {keys} {verb} ({detail}); {_rule_hint(kind)}"
        )


def _expected_shots(expected: Mapping[str, Any]) -> list[int] | None:
    shots = expected.get("shots")
    return None if shots is None else [int(s) for s in shots]


def _parse_metrics(path: PathLike, want_kind: str, expected: Mapping[str, Any]) -> dict[str, Any]:
    metrics = read_json(path)
    if not isinstance(metrics, dict):
        raise ReportInputError(f"{path}: not a metrics object")
    kind = metrics.get("kind")
    if kind != want_kind:
        raise ReportInputError(f"{path}: kind is {kind!r}, expected {want_kind!r} here")
    needed = ["beam_model", "shots", "metric"] + (["version", "sampler"] if kind == "selector" else ["baseline"])
    for key in needed:
        if metrics.get(key) in (None, ""):
            raise ReportInputError(f"{path}: missing key {key!r}")
    if not isinstance(metrics["shots"], Mapping) or not metrics["shots"]:
        raise ReportInputError(f"{path}: 'shots' must be a non-empty mapping shot -> {{score, n}}")
    check_inference_settings(metrics, path, expected)
    shots = sorted(int(k) for k in metrics["shots"])
    want = _expected_shots(expected)
    is_zero_shot = metrics.get("baseline") == ZERO_SHOT
    if want is not None and shots != sorted(want) and not (is_zero_shot and shots == [0]):
        raise ReportInputError(
            f"{path}: its shots {shots} do not match inference.shots {sorted(want)}; {_rule_hint(kind)}"
        )
    return metrics


def _to_run(metrics: Mapping[str, Any], metrics_path: PathLike, predictions_path: PathLike) -> Run:
    scores, ns = {}, {}
    for key, entry in metrics["shots"].items():
        try:
            scores[int(key)] = float(entry["score"])
            ns[int(key)] = int(entry["n"])
        except (KeyError, TypeError, ValueError):
            raise ReportInputError(f"{metrics_path}: shots.{key} needs a numeric 'score' and 'n'") from None
    return Run(
        metrics_path=str(metrics_path),
        predictions_path=str(predictions_path),
        kind=metrics["kind"],
        dataset=str(metrics.get("dataset", "")),
        task=str(metrics.get("task", "")),
        metric=str(metrics["metric"]),
        beam_model=str(metrics["beam_model"]),
        version=metrics.get("version"),
        sampler=metrics.get("sampler"),
        baseline=metrics.get("baseline"),
        scores=dict(sorted(scores.items())),
        ns=dict(sorted(ns.items())),
        n_queries=metrics.get("n_queries"),
    )


def load_runs(
    metrics_paths: Sequence[PathLike],
    predictions_paths: Sequence[PathLike],
    kind: str,
    expected_inference: Mapping[str, Any],
) -> list[Run]:
    """Read and check the metrics files of one kind ("selector" or "baseline"); predictions are paired by position."""
    runs, problems = _collect_runs(metrics_paths, predictions_paths, kind, expected_inference)
    _raise_first(problems)
    return runs


def _collect_runs(
    metrics_paths: Sequence[PathLike],
    predictions_paths: Sequence[PathLike],
    kind: str,
    expected_inference: Mapping[str, Any],
) -> tuple[list[Run], list[tuple[str, str]]]:
    """The runs that passed the checks, and (file, message) for each that did not."""
    if len(metrics_paths) != len(predictions_paths):
        raise ReportInputError(
            f"{len(metrics_paths)} {kind} metrics files but {len(predictions_paths)} predictions files: "
            "they are paired by position"
        )
    runs, problems = [], []
    seen: dict[tuple, str] = {}
    for metrics_path, predictions_path in zip(metrics_paths, predictions_paths):
        try:
            run = _to_run(_parse_metrics(metrics_path, kind, expected_inference), metrics_path, predictions_path)
        except ReportInputError as err:
            problems.append((str(metrics_path), str(err)))
            continue
        key = (run.beam_model, run.version, run.sampler, run.baseline)
        if key in seen:
            problems.append((str(metrics_path), f"{metrics_path}: the same cell as {seen[key]} "
                                                f"({run.beam_model}, {run.label})"))
            continue
        seen[key] = str(metrics_path)
        runs.append(run)
    return runs, problems


def _raise_first(problems: Sequence[tuple[str, str]]) -> None:
    """One message: the first problem in full, then how many other files have one (and which)."""
    if not problems:
        return
    message = problems[0][1]
    others = [path for path, _ in problems[1:]]
    if others:
        named = ", ".join(others[:3]) + (", ..." if len(others) > 3 else "")
        message += f" [{len(others)} more input file(s) with a problem: {named}]"
    raise ReportInputError(message)


def read_selections(path: PathLike) -> "Any":
    """predictions.parquet as a DataFrame with the columns the report needs; icd_ids become tuples."""
    import pandas as pd

    try:
        frame = pd.read_parquet(path, columns=list(PREDICTION_COLUMNS))
    except (KeyError, ValueError) as err:
        raise ReportInputError(f"{path}: unreadable predictions ({err}); needs columns {PREDICTION_COLUMNS}") from None
    except FileNotFoundError:
        raise ReportInputError(f"{path}: predictions file missing") from None
    frame["question_id"] = frame["question_id"].astype("int64")
    frame["shot"] = frame["shot"].astype("int64")
    frame["icd_ids"] = [tuple(int(i) for i in ids) if ids is not None else () for ids in frame["icd_ids"]]
    return frame


def check_predictions(run: Run, frame: "Any") -> None:
    """The predictions file must hold exactly the shots and query counts its metrics.json reports."""
    path = run.predictions_path
    shots = sorted(int(s) for s in frame["shot"].unique())
    if shots != sorted(run.scores):
        raise ReportInputError(
            f"{path} disagrees with {run.metrics_path}: predictions have shots {shots}, metrics {sorted(run.scores)}; "
            f"{_rule_hint(run.kind)}"
        )
    duplicated = frame.duplicated(["question_id", "shot"])
    if duplicated.any():
        row = frame[duplicated].iloc[0]
        raise ReportInputError(f"{path}: question {row.question_id} appears twice for shot {row.shot}")
    per_shot = {int(shot): group for shot, group in frame.groupby("shot")}
    first_ids = None
    for shot, group in per_shot.items():
        if len(group) != run.ns[shot]:
            raise ReportInputError(
                f"{path} disagrees with {run.metrics_path}: {len(group)} questions at {shot} shots, metrics say "
                f"{run.ns[shot]}; {_rule_hint(run.kind)}"
            )
        ids = set(group["question_id"])
        if first_ids is None:
            first_ids = ids
        elif ids != first_ids:
            raise ReportInputError(f"{path}: shot {shot} has other question ids than shot {shots[0]}")
        if run.baseline != ZERO_SHOT:
            lengths = {len(ids_) for ids_ in group["icd_ids"]}
            if lengths != {shot}:
                raise ReportInputError(
                    f"{path}: at {shot} shots some icd_ids lists have length {sorted(lengths - {shot})}"
                )
        scores = group["score"].astype("float64")
        if run.metric == "vqa_accuracy" and scores.notna().all() and len(scores):
            mean = float(scores.mean()) * 100.0
            if abs(mean - run.scores[shot]) > SCORE_TOLERANCE:
                raise ReportInputError(
                    f"{path} disagrees with {run.metrics_path}: mean per-question score at {shot} shots is "
                    f"{mean:.4f}, metrics say {run.scores[shot]:.4f}; {_rule_hint(run.kind)}"
                )


def _check_same_queries(runs: Sequence[Run], frames: Mapping[str, Any]) -> None:
    reference = None
    for run in runs:
        ids = frozenset(frames[run.predictions_path]["question_id"])
        if reference is None:
            reference = (run, ids)
            continue
        ref_run, ref_ids = reference
        if ids != ref_ids:
            raise ReportInputError(
                f"{run.predictions_path}: evaluated on other val questions than {ref_run.predictions_path} "
                f"({len(ids - ref_ids)} extra, {len(ref_ids - ids)} missing); the tables compare like with like, "
                f"{_rule_hint(run.kind)}"
            )


def _check_common(runs: Sequence[Run]) -> tuple[str, str, str]:
    first = runs[0]
    for run in runs[1:]:
        for attr in ("dataset", "metric", "task"):
            if getattr(run, attr) != getattr(first, attr):
                raise ReportInputError(
                    f"{run.metrics_path}: {attr} {getattr(run, attr)!r} differs from {getattr(first, attr)!r} "
                    f"of {first.metrics_path}"
                )
    return first.dataset, first.task, first.metric


# --------------------------------------------------------------------------------------------------------------
# the selection diagnostic


def selection_overlap(cells: Sequence[Run], frames: Mapping[str, Any]) -> list[dict[str, Any]]:
    """For every pair of selector cells of one beam model: share of (question, shot) with identical ICD id lists.

    One row per pair and shot, plus a row with shot "all" over all shots together. Pairs are joined on
    (question_id, shot); ``n`` is the number of joined rows and ``identical_share`` is in [0, 1] (NaN when n = 0).
    """
    import numpy as np
    import pandas as pd

    rows: list[dict[str, Any]] = []
    by_model: dict[str, list[Run]] = {}
    for run in cells:
        by_model.setdefault(run.beam_model, []).append(run)
    for beam_model, runs in by_model.items():
        keyed = []
        for run in runs:
            frame = frames[run.predictions_path]
            keyed.append(frame.set_index(["question_id", "shot"])["icd_ids"])
        if len(keyed) < 2:
            continue
        table = pd.concat(keyed, axis=1, keys=range(len(keyed)), join="outer").sort_index()
        # one integer code per distinct ICD list (shared over cells); -1 where a cell lacks the row
        flat = [ids if isinstance(ids, tuple) else None for ids in table.to_numpy(dtype=object).ravel()]
        codes_flat, _ = pd.factorize(pd.Series(flat, dtype=object))
        codes = np.asarray(codes_flat, dtype=np.int64).reshape(table.shape)
        shots = table.index.get_level_values("shot").to_numpy()
        shot_values = sorted(set(int(s) for s in shots))
        for a in range(len(runs)):
            for b in range(a + 1, len(runs)):
                both = (codes[:, a] >= 0) & (codes[:, b] >= 0)
                same = both & (codes[:, a] == codes[:, b])
                for shot in [*shot_values, "all"]:
                    mask = both if shot == "all" else both & (shots == shot)
                    n = int(mask.sum())
                    share = float((same & mask).sum() / n) if n else math.nan
                    rows.append(
                        {
                            "beam_model": beam_model,
                            "cell_a": runs[a].label,
                            "cell_b": runs[b].label,
                            "shot": shot,
                            "n": n,
                            "identical_share": share,
                        }
                    )
    return rows


def overlap_warnings(rows: Iterable[Mapping[str, Any]], threshold: float = IDENTICAL_WARN) -> list[str]:
    """One warning line per pair whose overall identical share exceeds ``threshold``."""
    warnings = []
    for row in rows:
        if row["shot"] != "all" or not (row["identical_share"] > threshold):
            continue
        warnings.append(
            f"{row['beam_model']}: {row['cell_a']} and {row['cell_b']} select identical ICD lists for "
            f"{row['identical_share'] * 100:.2f}% of {row['n']} (question, shot) pairs (> {threshold * 100:.0f}%). "
            "Two cells that should differ but select the same demonstrations suggest a silent bug "
            "(the same checkpoint, pool or decoding path); check them before reading their rows as separate results."
        )
    return warnings


def _write_overlap_csv(path: PathLike, rows: Sequence[Mapping[str, Any]]) -> None:
    import csv

    with atomic_path(path, suffix=".csv") as tmp:
        with open(tmp, "w", encoding="utf-8", newline="") as fh:
            writer = csv.writer(fh, lineterminator="\n")
            writer.writerow(OVERLAP_COLUMNS)
            for row in rows:
                share = row["identical_share"]
                writer.writerow(
                    [
                        row["beam_model"],
                        row["cell_a"],
                        row["cell_b"],
                        row["shot"],
                        row["n"],
                        "" if math.isnan(share) else f"{share:.6f}",
                    ]
                )


# --------------------------------------------------------------------------------------------------------------
# the document: blocks rendered both to Markdown and to HTML


@dataclass
class Cell:
    text: str
    bold: bool = False


@dataclass
class Table:
    header: list[str]
    rows: list[list[Cell]]
    left_columns: int = 1  # the leading label columns, left-aligned; the rest are numbers, right-aligned


@dataclass
class Block:
    kind: str  # "h1" | "h2" | "h3" | "p" | "table" | "warning" | "note"
    text: str = ""
    table: Table | None = None


@dataclass
class Document:
    title: str
    blocks: list[Block] = field(default_factory=list)

    def add(self, kind: str, text: str = "", table: Table | None = None) -> None:
        self.blocks.append(Block(kind, text, table))


def fmt_score(value: float | None) -> str:
    return "–" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.2f}"


def _shots_word(shot: int) -> str:
    return "zero-shot" if shot == 0 else f"{shot} shot" + ("" if shot == 1 else "s")


def _bold_max(values: Sequence[float | None]) -> list[bool]:
    """Bold every value equal (at display precision) to the largest; nothing when fewer than two values exist."""
    shown = [round(v, 2) for v in values if v is not None]
    if len(shown) < 2:
        return [False] * len(values)
    top = max(shown)
    return [v is not None and round(v, 2) == top for v in values]


def _n_line(runs: Iterable[Run]) -> str:
    ns = sorted({n for run in runs for n in run.ns.values()})
    if not ns:
        return ""
    if len(ns) == 1:
        return f"n = {ns[0]} val questions per cell."
    return f"n = {ns[0]}–{ns[-1]} val questions per cell (differs between cells)."


def _md_escape(text: str) -> str:
    return re.sub(r"([|*`<\\])", r"\\\1", text)


def _grid(
    row_labels: Sequence[str],
    column_labels: Sequence[str],
    values: Sequence[Sequence[float | None]],
    corner: str,
    bold_by: str,
) -> Table:
    """A table of scores; ``bold_by`` "all" bolds the overall maximum, "column" the maximum of each column."""
    bold = [[False] * len(column_labels) for _ in row_labels]
    if bold_by == "all":
        flat = [v for row in values for v in row]
        marks = _bold_max(flat)
        for i in range(len(row_labels)):
            bold[i] = marks[i * len(column_labels) : (i + 1) * len(column_labels)]
    elif bold_by == "column":
        for j in range(len(column_labels)):
            marks = _bold_max([row[j] for row in values])
            for i in range(len(row_labels)):
                bold[i][j] = marks[i]
    rows = [
        [Cell(label)] + [Cell(fmt_score(v), b) for v, b in zip(values[i], bold[i])]
        for i, label in enumerate(row_labels)
    ]
    return Table([corner, *column_labels], rows)


def best_line(samplers: Sequence[str], shots: Sequence[int], values: Sequence[Sequence[float | None]]) -> str:
    """``best: 25.28 (rand_sampler, 4 shots)``; ties at display precision are all named."""
    cells = [(round(v, 2), v, sampler, shot) for i, shot in enumerate(shots)
             for j, sampler in enumerate(samplers) if (v := values[i][j]) is not None]
    if not cells:
        return "best: – (no results)"
    top = max(c[0] for c in cells)
    winners = [c for c in cells if c[0] == top]
    by_shot: dict[int, list[str]] = {}
    for _, _, sampler, shot in winners:
        by_shot.setdefault(shot, []).append(sampler)
    where = "; ".join(f"{'/'.join(names)}, {_shots_word(shot)}" for shot, names in by_shot.items())
    return f"best: {fmt_score(max(c[1] for c in winners))} ({where})"


def _version_key(version: str) -> tuple:
    if version in VERSIONS:
        return (0, VERSIONS.index(version), version)
    digits = re.findall(r"\d+", version)
    return (1, int(digits[0]) if digits else 0, version)


def _ordered(found: Iterable[str], preferred: Sequence[str] | None) -> list[str]:
    found = list(dict.fromkeys(found))
    preferred = [p for p in (preferred or []) if p in found]
    return preferred + [f for f in found if f not in preferred]


@dataclass
class ReportData:
    dataset: str
    task: str
    metric: str
    shots: list[int]
    beam_models: list[str]
    versions: list[str]
    samplers: list[str]
    cells: list[Run]
    baselines: list[Run]
    overlap: list[dict[str, Any]]
    warnings: list[str]
    settings: Mapping[str, Any]
    identical_warn: float = IDENTICAL_WARN

    def cell(self, beam_model: str, version: str, sampler: str) -> Run | None:
        for run in self.cells:
            if (run.beam_model, run.version, run.sampler) == (beam_model, version, sampler):
                return run
        return None

    def baseline(self, beam_model: str, name: str) -> Run | None:
        for run in self.baselines:
            if (run.beam_model, run.baseline) == (beam_model, name):
                return run
        return None

    @property
    def metric_label(self) -> str:
        return METRIC_LABELS.get(self.metric, self.metric)


def _baseline_shots(data: ReportData, runs: Iterable[Run]) -> list[int]:
    return sorted({*data.shots, *(s for run in runs for s in run.scores)})


def _shot_header(shot: int) -> str:
    return "0 (zero-shot)" if shot == 0 else str(shot)


def best_sampler(data: ReportData, beam_model: str, version: str) -> str | None:
    """The sampler of a version with the highest mean score over the configured shots (ties: first in order)."""
    best, best_mean = None, -math.inf
    for sampler in data.samplers:
        run = data.cell(beam_model, version, sampler)
        if run is None:
            continue
        values = [run.scores[s] for s in data.shots if s in run.scores]
        mean = sum(values) / len(values) if values else -math.inf
        if mean > best_mean:
            best, best_mean = sampler, mean
    return best


def build_document(data: ReportData) -> Document:
    doc = Document(f"Lever-Plus results: {data.dataset}")
    label = data.metric_label
    doc.add("h1", doc.title)
    settings = ", ".join(f"{k} = {json.dumps(_normalize(v))}" for k, v in data.settings.items())
    doc.add(
        "p",
        f"{label} ×100 on the val split of {data.dataset} (task {data.task}), shown with 2 decimals; "
        "the best cell of each table is in bold. Generated by the report rule from the inference outputs; "
        f"inference settings: {settings or '–'}.",
    )

    # 1. random-ICD baseline, shots x beam model
    doc.add("h2", "1. Random-ICD baseline (RandomRetriever)")
    randoms = [data.baseline(m, RANDOM) for m in data.beam_models]
    if any(randoms):
        doc.add("p", _n_line(r for r in randoms if r))
        values = [[r.scores.get(s) if r else None for r in randoms] for s in data.shots]
        doc.add("table", table=_grid([str(s) for s in data.shots], data.beam_models, values, "Shots", "column"))
        bests = []
        for model, run in zip(data.beam_models, randoms):
            if run:
                shot = max((s for s in data.shots if s in run.scores), key=lambda s: run.scores[s], default=None)
                if shot is not None:
                    bests.append(f"{model} {fmt_score(run.scores[shot])} ({_shots_word(shot)})")
        doc.add("p", "best: " + "; ".join(bests))
    else:
        doc.add("note", "No RandomRetriever results in this run.")

    # 2. per version and beam model, shots x sampler
    doc.add("h2", "2. Selector results (shots × sampler)")
    for version in data.versions:
        for model in data.beam_models:
            runs = [data.cell(model, version, s) for s in data.samplers]
            if not any(runs):
                continue
            doc.add("h3", f"{version} · {model}")
            doc.add("p", _n_line(r for r in runs if r))
            values = [[r.scores.get(s) if r else None for r in runs] for s in data.shots]
            doc.add("table", table=_grid([str(s) for s in data.shots], data.samplers, values, "Shots", "all"))
            doc.add("p", best_line(data.samplers, data.shots, values))

    # 3. similarity retrieval and zero-shot, baseline x shots
    doc.add("h2", "3. Similarity retrieval and zero-shot baselines")
    doc.add(
        "p",
        "SimRetriever-i2i: query image vs ICD image; -t2t: question text vs ICD question text; "
        "-i2t: query image vs ICD text; the most similar ICD is nearest the query. "
        "RandomRetriever: random ICDs from the whole train set.",
    )
    any_baseline = False
    for model in data.beam_models:
        runs = [r for name in BASELINE_ORDER if (r := data.baseline(model, name))]
        if not runs:
            continue
        any_baseline = True
        shots = _baseline_shots(data, runs)
        doc.add("h3", model)
        doc.add("p", _n_line(runs))
        values = [[r.scores.get(s) for s in shots] for r in runs]
        doc.add(
            "table",
            table=_grid([str(r.baseline) for r in runs], [_shot_header(s) for s in shots], values, "Baseline",
                        "column"),
        )
    if not any_baseline:
        doc.add("note", "No baseline results in this run.")

    # 4. summary per beam model: zero-shot, random, similarity, each version's best sampler
    doc.add("h2", "4. Summary: baselines and selectors")
    doc.add(
        "p",
        "One row per setting; a selector version is shown with its best sampler (highest mean over the shots). "
        "Bold: the best setting at each shot number.",
    )
    for model in data.beam_models:
        names, runs = [], []
        for name, row_label in ((ZERO_SHOT, "zero-shot"), (RANDOM, "random ICDs")):
            if run := data.baseline(model, name):
                names.append(row_label)
                runs.append(run)
        for name in SIMILARITY:
            if run := data.baseline(model, name):
                names.append(name)
                runs.append(run)
        for version in data.versions:
            sampler = best_sampler(data, model, version)
            if sampler is not None:
                names.append(f"{version} ({sampler})")
                runs.append(data.cell(model, version, sampler))
        if not runs:
            continue
        shots = _baseline_shots(data, runs)
        doc.add("h3", model)
        doc.add("p", _n_line(runs))
        values = [[r.scores.get(s) for s in shots] for r in runs]
        doc.add("table", table=_grid(names, [_shot_header(s) for s in shots], values, "Setting", "column"))

    # 5. selection diagnostic
    doc.add("h2", "5. Selection diagnostic")
    doc.add(
        "p",
        "For every pair of selector cells (version/sampler) of one beam model: the share of (val question, shot) "
        "pairs whose selected ICD id lists (prompt order) are identical. All pairs and shots are in "
        f"selection_overlap.csv. A share above {data.identical_warn * 100:.0f}% is flagged.",
    )
    for warning in data.warnings:
        doc.add("warning", warning)
    for model in data.beam_models:
        overall = [r for r in data.overlap if r["beam_model"] == model and r["shot"] == "all"]
        if not overall:
            continue
        top = sorted(overall, key=lambda r: (-_nan_low(r["identical_share"]), r["cell_a"], r["cell_b"]))[:5]
        doc.add("h3", f"{model}: most similar selections")
        rows = [
            [Cell(r["cell_a"]), Cell(r["cell_b"]), Cell(str(r["n"])),
             Cell(fmt_score(r["identical_share"] * 100), r["identical_share"] > data.identical_warn)]
            for r in top
        ]
        doc.add("table", table=Table(["Cell A", "Cell B", "n (question, shot)", "identical %"], rows, 2))
    if not data.warnings:
        doc.add("p", f"No pair of cells selects identically for more than {data.identical_warn * 100:.0f}% of "
                     "questions.")
    return doc


def _nan_low(value: float) -> float:
    return -1.0 if math.isnan(value) else value


def to_markdown(doc: Document) -> str:
    out: list[str] = []
    for block in doc.blocks:
        if block.kind in ("h1", "h2", "h3"):
            out.append("#" * int(block.kind[1]) + " " + _md_escape(block.text))
        elif block.kind == "p":
            out.append(_md_escape(block.text))
        elif block.kind == "note":
            out.append("_" + _md_escape(block.text) + "_")
        elif block.kind == "warning":
            out.append("> **WARNING:** " + _md_escape(block.text))
        elif block.kind == "table":
            table = block.table
            header = "| " + " | ".join(_md_escape(h) for h in table.header) + " |"
            align = "|" + "|".join(":---" if i < table.left_columns else "---:"
                                   for i in range(len(table.header))) + "|"
            lines = [header, align]
            for row in table.rows:
                cells = [f"**{_md_escape(c.text)}**" if c.bold else _md_escape(c.text) for c in row]
                lines.append("| " + " | ".join(cells) + " |")
            out.append("\n".join(lines))
    return "\n\n".join(out) + "\n"


HTML_STYLE = """
body { font-family: -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; margin: 1.5em; color: #1f2328;
       line-height: 1.45; max-width: 60em; }
h1 { font-size: 1.6em; border-bottom: 1px solid #d0d7de; padding-bottom: .3em; }
h2 { font-size: 1.3em; margin-top: 1.6em; border-bottom: 1px solid #d0d7de; padding-bottom: .2em; }
h3 { font-size: 1.05em; margin-top: 1.2em; }
table { border-collapse: collapse; margin: .4em 0 .8em; font-variant-numeric: tabular-nums; }
th, td { border: 1px solid #d0d7de; padding: .25em .7em; }
th { background: #f6f8fa; }
td.num, th.num { text-align: right; }
.warning { background: #fff8c5; border-left: 4px solid #d4a72c; padding: .5em .8em; margin: .6em 0; }
.note { color: #59636e; font-style: italic; }
""".strip()


def to_html(doc: Document) -> str:
    """A self-contained page (inline CSS, no scripts, no external resources) with the same content."""
    esc = html.escape
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en">',
        "<head>",
        '<meta charset="utf-8">',
        f"<title>{esc(doc.title)}</title>",
        f"<style>\n{HTML_STYLE}\n</style>",
        "</head>",
        "<body>",
    ]
    for block in doc.blocks:
        if block.kind in ("h1", "h2", "h3"):
            parts.append(f"<{block.kind}>{esc(block.text)}</{block.kind}>")
        elif block.kind == "p":
            parts.append(f"<p>{esc(block.text)}</p>")
        elif block.kind == "note":
            parts.append(f'<p class="note">{esc(block.text)}</p>')
        elif block.kind == "warning":
            parts.append(f'<p class="warning"><strong>WARNING:</strong> {esc(block.text)}</p>')
        elif block.kind == "table":
            table = block.table
            num = ' class="num"'
            head = "".join(
                f"<th{'' if i < table.left_columns else num}>{esc(h)}</th>"
                for i, h in enumerate(table.header)
            )
            rows = []
            for row in table.rows:
                cells = []
                for i, cell in enumerate(row):
                    text = f"<strong>{esc(cell.text)}</strong>" if cell.bold else esc(cell.text)
                    cells.append(f"<td{'' if i < table.left_columns else num}>{text}</td>")
                rows.append("<tr>" + "".join(cells) + "</tr>")
            parts.append(f"<table>\n<thead><tr>{head}</tr></thead>\n<tbody>\n" + "\n".join(rows) +
                         "\n</tbody>\n</table>")
    parts += ["</body>", "</html>"]
    return "\n".join(parts) + "\n"


# --------------------------------------------------------------------------------------------------------------
# plots


def plot_version(data: ReportData, beam_model: str, version: str, path: PathLike) -> None:
    """Accuracy vs shots, one line per sampler, the random baseline dashed, zero-shot as a horizontal line."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    import matplotlib

    with matplotlib.rc_context(rc=matplotlib.rcParamsDefault):
        fig = Figure(figsize=(6.4, 4.2), dpi=100)
        FigureCanvasAgg(fig)
        ax = fig.add_subplot()
        runs = []
        for sampler in data.samplers:
            run = data.cell(beam_model, version, sampler)
            if run is None:
                continue
            runs.append(run)
            shots = [s for s in data.shots if s in run.scores]
            ax.plot(shots, [run.scores[s] for s in shots], marker="o", label=sampler)
        random = data.baseline(beam_model, RANDOM)
        if random is not None:
            shots = [s for s in data.shots if s in random.scores]
            ax.plot(shots, [random.scores[s] for s in shots], linestyle="--", color="black", marker="x",
                    label="random ICDs")
        zero = data.baseline(beam_model, ZERO_SHOT)
        if zero is not None and zero.scores:
            level = zero.scores[0] if 0 in zero.scores else sum(zero.scores.values()) / len(zero.scores)
            ax.axhline(level, linestyle=":", color="gray", label="zero-shot")
        ns = sorted({n for run in [*runs, *(r for r in (random, zero) if r)] for n in run.ns.values()})
        n_text = f"n = {ns[0]}" if len(ns) == 1 else (f"n = {ns[0]}–{ns[-1]}" if ns else "")
        ax.set_title(f"{version} · {beam_model} ({data.dataset}, {n_text})")
        ax.set_xlabel("shots (ICDs in the prompt)")
        ax.set_ylabel(f"{data.metric_label} ×100")
        ax.set_xticks(data.shots)
        ax.grid(True, alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize="small")
        fig.tight_layout()
        with atomic_path(path, suffix=".png") as tmp:
            fig.savefig(tmp, format="png", metadata={"Software": None})


# --------------------------------------------------------------------------------------------------------------
# entry point


def load_report_data(
    cell_metrics: Sequence[PathLike],
    cell_predictions: Sequence[PathLike],
    baseline_metrics: Sequence[PathLike],
    baseline_predictions: Sequence[PathLike],
    expected_inference: Mapping[str, Any],
    beam_models: Sequence[str] | None = None,
    samplers: Sequence[str] | None = None,
    identical_warn: float = IDENTICAL_WARN,
) -> ReportData:
    """Read and check every input (metrics first, so a stale config stops before any parquet is read)."""
    cells, cell_problems = _collect_runs(cell_metrics, cell_predictions, "selector", expected_inference)
    baselines, baseline_problems = _collect_runs(
        baseline_metrics, baseline_predictions, "baseline", expected_inference
    )
    _raise_first([*cell_problems, *baseline_problems])  # every metrics file is checked before any parquet is read
    runs = [*cells, *baselines]
    if not runs:
        raise ReportInputError("the report has no inputs: no selector cell and no baseline metrics")
    dataset, task, metric = _check_common(runs)
    frames = {}
    for run in runs:
        frame = read_selections(run.predictions_path)
        check_predictions(run, frame)
        frames[run.predictions_path] = frame
    _check_same_queries(runs, frames)
    overlap = selection_overlap(cells, frames)
    shots = _expected_shots(expected_inference)
    if shots is None:
        shots = sorted({s for run in runs for s in run.scores if s > 0})
    return ReportData(
        dataset=dataset,
        task=task,
        metric=metric,
        shots=sorted(shots),
        beam_models=_ordered((r.beam_model for r in runs), beam_models),
        versions=sorted({r.version for r in cells}, key=_version_key),
        samplers=_ordered((r.sampler for r in cells), samplers),
        cells=cells,
        baselines=baselines,
        overlap=overlap,
        warnings=overlap_warnings(overlap, identical_warn),
        settings=dict(expected_inference),
        identical_warn=identical_warn,
    )


def _plot_targets(
    data: ReportData, out_plots: Mapping[tuple[str, str], PathLike] | PathLike
) -> dict[tuple[str, str], Path]:
    if isinstance(out_plots, Mapping):
        targets = {(str(m), str(v)): Path(p) for (m, v), p in out_plots.items()}
        for model, version in targets:
            if not any(r.beam_model == model and r.version == version for r in data.cells):
                raise ReportInputError(f"plot {targets[(model, version)]}: no selector cell of {version} · {model}")
        return targets
    folder = Path(out_plots)
    pairs = dict.fromkeys((r.beam_model, r.version) for r in data.cells)
    return {(m, v): folder / f"{m}_{v}.png" for m, v in pairs}


def build_report(
    cell_metrics: Sequence[PathLike],
    cell_predictions: Sequence[PathLike],
    baseline_metrics: Sequence[PathLike],
    baseline_predictions: Sequence[PathLike],
    expected_inference: Mapping[str, Any],
    out_tables: PathLike,
    out_overlap: PathLike,
    out_plots: Mapping[tuple[str, str], PathLike] | PathLike,
    out_html: PathLike | None = None,
    beam_models: Sequence[str] | None = None,
    samplers: Sequence[str] | None = None,
    identical_warn: float = IDENTICAL_WARN,
) -> list[str]:
    """Write tables.md (+ tables.html), selection_overlap.csv and the plots; return the diagnostic warnings.

    ``cell_metrics``/``cell_predictions`` (selector cells) and ``baseline_metrics``/``baseline_predictions`` are
    parallel lists, paired by position. ``expected_inference`` is the current config's InferenceConfig as a dict
    (``dataclasses.asdict``); a metrics file recording other settings stops the report. ``out_plots`` maps
    (beam_model, version) to a PNG path, or is a folder that receives ``{beam_model}_{version}.png``.
    ``out_html`` defaults to ``out_tables`` with the suffix ``.html``. ``beam_models``/``samplers`` give the
    column order (config order); names not listed follow in order of appearance.
    Every input is checked before the first file is written; each output is written atomically.
    """
    data = load_report_data(
        cell_metrics, cell_predictions, baseline_metrics, baseline_predictions, expected_inference,
        beam_models=beam_models, samplers=samplers, identical_warn=identical_warn,
    )
    targets = _plot_targets(data, out_plots)
    doc = build_document(data)
    markdown, page = to_markdown(doc), to_html(doc)
    out_html = Path(out_tables).with_suffix(".html") if out_html is None else Path(out_html)
    _write_overlap_csv(out_overlap, data.overlap)
    for (model, version), path in targets.items():
        plot_version(data, model, version, path)
    with atomic_path(out_html, suffix=".html") as tmp:
        tmp.write_text(page, encoding="utf-8")
    with atomic_path(out_tables, suffix=".md") as tmp:
        tmp.write_text(markdown, encoding="utf-8")
    return data.warnings
