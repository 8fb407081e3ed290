"""The report stage: tables with intervals, paired comparisons, plots, the selection diagnostic, replicates,
ceiling runs and stale-input checks, on synthetic inference outputs.

The last test runs a throwaway Snakemake workflow around build_report, builds `snakemake --report` and opens the
page in headless Chromium through Selenium (tests/browser.py; skipped where chromium or chromedriver is absent).
"""

from __future__ import annotations

import csv
import json
import math
import os
import re
import shutil
import statistics
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from lever_lm import report as R
from lever_lm.io_utils import write_json, write_parquet

REPO = Path(__file__).resolve().parents[1]
MODELS = ("m_a", "m_b")
VERSIONS = ("v0", "v1")
SAMPLERS = ("rand_sampler", "text_sim_sampler")
SHOTS = (1, 2)
QUESTIONS = tuple(range(100, 116))  # 16 val questions: shares are multiples of 1/16
INFERENCE = {
    "shots": list(SHOTS),
    "max_queries": None,
    "query_seed": 0,
    "num_beams": 3,
    "max_new_tokens": None,
    "batch_size": 8,
    "retriever_seed": 0,
    "always_normalize": False,
}
# the pair with identical selections (a simulated silent bug): m_a v0/rand_sampler == m_a v1/rand_sampler
TWINS = (("m_a", "v0", "rand_sampler"), ("m_a", "v1", "rand_sampler"))
# planned significance: v0 · m_a has a clear winner (bold); v1 · m_b has two top cells that differ on one question
WINNER = ("m_a", "v0", "text_sim_sampler")
TIED = ("m_b", "v1")
# a score cell: score (bold or not), interval, optional replicate spread, optional marks
CELL = re.compile(
    r"^(\*\*)?(?P<score>\d+\.\d\d)(\*\*)? \[(?P<low>\d+\.\d\d), (?P<high>\d+\.\d\d)\]"
    r"(?P<spread> \(±\d+\.\d\d sd, \d+ reps\))?(?P<marks>( [▲▼][rsi])*)$"
)


def _scores(seed: int, shot: int) -> np.ndarray:
    rng = np.random.default_rng([seed, shot])
    return 0.5 * rng.random(len(QUESTIONS))  # continuous: no ties at display precision


def _cell_scores(cell: tuple, seed: int, shot: int) -> np.ndarray:
    if cell == WINNER and shot == 2:
        return _scores(seed, shot) + 0.5
    if cell[:2] == TIED and shot == 2:
        shared = _scores(4242, shot) + 0.4
        return shared + (0.01 * (np.arange(len(QUESTIONS)) == 0) if cell[2] == "text_sim_sampler" else 0.0)
    return _scores(seed, shot)


def _selections(seed: int, shot: int) -> list[list[int]]:
    rng = np.random.default_rng([seed, shot, 7])
    return [[int(i) for i in rng.choice(1000, size=shot, replace=False)] for _ in QUESTIONS]


def _write_run(
    metrics_path: Path,
    predictions_path: Path,
    identity: dict,
    seed: int,
    shots=SHOTS,
    selection_seed: int | None = None,
    zero_shot: bool = False,
    replicate: int | None = None,
    score_of=None,
    caption: bool = False,
    questions: int = len(QUESTIONS),
) -> dict:
    """``questions``: answer only the first ones (a ceiling run on a subset)."""
    rows, shot_metrics = [], {}
    for shot in shots:
        scores = (_scores(seed, shot) if score_of is None else score_of(shot))[:questions]
        picks = (
            [[] for _ in QUESTIONS]
            if zero_shot
            else _selections(seed if selection_seed is None else selection_seed, shot)
        )
        for qid, score, ids in zip(QUESTIONS[:questions], scores, picks):
            rows.append(
                {
                    "question_id": qid,
                    "shot": shot,
                    "icd_ids": ids,
                    "raw_output": "x",
                    "answer": "x",
                    "score": float(score),
                }
            )
        shot_metrics[str(shot)] = {"score": float(scores.mean() * 100), "n": questions}
    frame = pd.DataFrame(rows).astype({"question_id": "int64", "shot": "int64"})
    if caption:  # corpus CIDEr: no per-question score
        frame["score"] = math.nan
    metrics = {
        "dataset": "toy",
        "task": "caption" if caption else "vqa",
        "metric": "cider" if caption else "vqa_accuracy",
        "version": None,
        "sampler": None,
        "baseline": None,
        **identity,
        "shots": shot_metrics,
        "n_queries": questions,
        "max_queries": None,
        "query_seed": 0,
        "inference": dict(INFERENCE),
        "checkpoint": None,
        "config_digest": "0" * 64,
    }
    if replicate is not None:
        metrics["replicate"] = replicate
        metrics["inference"]["retriever_seed"] = INFERENCE["retriever_seed"] + replicate
    write_parquet(predictions_path, frame)
    write_json(metrics_path, metrics)
    return metrics


def make_inputs(root: Path, caption: bool = False) -> dict:
    """Synthetic inference outputs: 2 beam models x 2 versions x 2 samplers, and the 5 baselines per model."""
    inputs = {"cell_metrics": [], "cell_predictions": [], "baseline_metrics": [], "baseline_predictions": []}
    cells = {}
    seed = 1
    for version in VERSIONS:
        for model in MODELS:
            for sampler in SAMPLERS:
                folder = root / "icl_inference" / version / model / sampler
                selection_seed = 999 if (model, version, sampler) in TWINS else None
                metrics = _write_run(
                    folder / "metrics.json",
                    folder / "predictions.parquet",
                    {"kind": "selector", "beam_model": model, "version": version, "sampler": sampler},
                    seed,
                    selection_seed=selection_seed,
                    caption=caption,
                    score_of=lambda shot, c=(model, version, sampler), s=seed: _cell_scores(c, s, shot),
                )
                cells[(model, version, sampler)] = metrics
                inputs["cell_metrics"].append(str(folder / "metrics.json"))
                inputs["cell_predictions"].append(str(folder / "predictions.parquet"))
                seed += 1
    baselines = {}
    for model in MODELS:
        for name in R.BASELINES:
            prefix = root / "icl_inference" / "baseline" / f"{model}_{name}_baseline"
            metrics = _write_run(
                Path(f"{prefix}_metrics.json"),
                Path(f"{prefix}_predictions.parquet"),
                {"kind": "baseline", "beam_model": model, "baseline": name},
                seed,
                shots=(0,) if name == "ZeroShot" else SHOTS,
                zero_shot=name == "ZeroShot",
                caption=caption,
            )
            baselines[(model, name)] = metrics
            inputs["baseline_metrics"].append(f"{prefix}_metrics.json")
            inputs["baseline_predictions"].append(f"{prefix}_predictions.parquet")
            seed += 1
    return {"inputs": inputs, "cells": cells, "baselines": baselines}


def outputs(root: Path) -> dict:
    report = root / "report"
    return {
        "out_tables": report / "tables.md",
        "out_overlap": report / "selection_overlap.csv",
        "out_plots": {(m, v): report / "plots" / f"{m}_{v}.png" for v in VERSIONS for m in MODELS},
    }


def _csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = tmp_path_factory.mktemp("report")
    made = make_inputs(root / "in")
    outs = outputs(root)
    warnings = R.build_report(
        **made["inputs"], expected_inference=INFERENCE, **outs, beam_models=list(MODELS), samplers=list(SAMPLERS)
    )
    report = outs["out_tables"].parent
    return {
        "root": root,
        "made": made,
        "outs": outs,
        "warnings": warnings,
        "md": outs["out_tables"].read_text(encoding="utf-8"),
        "html": (report / "tables.html").read_text(encoding="utf-8"),
        "scores": _csv(report / "scores.csv"),
        "comparisons": _csv(report / "comparisons.csv"),
    }


def _section(md: str, heading: str) -> str:
    """The text of one heading's section, up to the next heading of the same or a higher level."""
    lines = md.splitlines()
    start = lines.index(heading)
    level = len(heading) - len(heading.lstrip("#"))
    end = next(
        (
            i
            for i in range(start + 1, len(lines))
            if lines[i].startswith("#") and len(lines[i]) - len(lines[i].lstrip("#")) <= level
        ),
        len(lines),
    )
    return "\n".join(lines[start:end])


def _table(section: str) -> list[list[str]]:
    rows = [line for line in section.splitlines() if line.startswith("|")]
    return [[c.strip() for c in row.strip("|").split("|")] for row in rows[:1] + rows[2:]]


def _cell(text: str) -> re.Match:
    match = CELL.match(text)
    assert match, text
    return match


def _score_row(built: dict, **identity) -> dict[str, str]:
    rows = [r for r in built["scores"] if all(r[k] == str(v) for k, v in identity.items())]
    assert len(rows) == 1, (identity, rows)
    return rows[0]


def _marks(built: dict, model: str, version: str, sampler: str, shot: int) -> set[str]:
    """The marks comparisons.csv implies for a selector cell."""
    marks = set()
    for row in built["comparisons"]:
        if (row["beam_model"], row["version"], row["sampler"], row["shot"]) == (model, version, sampler, str(shot)):
            sign = int(row["significant"])
            if sign:
                marks.add(("▲" if sign > 0 else "▼") + ("r" if row["reference"] == "RandomRetriever" else "s"))
    return marks


def test_selector_tables_show_intervals_marks_and_bold_only_a_significant_best(built):
    md, cells = built["md"], built["made"]["cells"]
    for version in VERSIONS:
        for model in MODELS:
            section = _section(md, f"### {version} · {model}")
            table = _table(section)
            assert table[0] == ["Shots", *SAMPLERS]
            assert [row[0] for row in table[1:]] == [str(s) for s in SHOTS]
            values = {
                (shot, sampler): cells[(model, version, sampler)]["shots"][str(shot)]["score"]
                for shot in SHOTS
                for sampler in SAMPLERS
            }
            ranked = sorted(values.items(), key=lambda kv: -kv[1])
            (best_shot, best_sampler), best = ranked[0]
            (second_shot, second_sampler), second = ranked[1]
            bold = [
                (int(row[0]), SAMPLERS[j]) for row in table[1:] for j, c in enumerate(row[1:]) if c.startswith("**")
            ]
            for row in table[1:]:
                for sampler, text in zip(SAMPLERS, row[1:]):
                    shot = int(row[0])
                    match = _cell(text)
                    assert match["score"] == f"{values[(shot, sampler)]:.2f}"
                    csv_row = _score_row(
                        built, beam_model=model, kind="selector", version=version, sampler=sampler, shot=shot
                    )
                    assert (match["low"], match["high"]) == (
                        f"{float(csv_row['ci_low']):.2f}",
                        f"{float(csv_row['ci_high']):.2f}",
                    )
                    assert float(match["low"]) <= float(match["score"]) <= float(match["high"])
                    assert match["spread"] is None  # one replicate: nothing extra
                    assert set(match["marks"].split()) == _marks(built, model, version, sampler, shot)
            word = "shot" if best_shot == 1 else "shots"
            assert f"best: {best:.2f} ({best_sampler}, {best_shot} {word})" in section
            assert f"n = {len(QUESTIONS)} val questions per cell." in section
            tied = [line for line in section.splitlines() if line.startswith("top cells tied: ")]
            if bold:
                assert bold == [(best_shot, best_sampler)] and not tied
            else:
                second_word = "shot" if second_shot == 1 else "shots"
                assert len(tied) == 1 and tied[0].startswith(
                    f"top cells tied: {best:.2f} ({best_sampler}, {best_shot} {word}) vs "
                    f"{second:.2f} ({second_sampler}, {second_shot} {second_word}), paired difference +"
                )
    winner = _table(_section(md, "### v0 · m_a"))
    assert winner[2][2].startswith("**") and "▲r" in winner[2][2]  # the planned clear winner
    tied = _section(md, "### v1 · m_b")
    assert not any(c.startswith("**") for row in _table(tied)[1:] for c in row)
    # they differ by 0.01 on one of 16 questions: +0.0625 points, an interval from 0 up
    assert re.search(
        r"top cells tied: \d+\.\d\d \(text_sim_sampler, 2 shots\) vs \d+\.\d\d \(rand_sampler, 2 shots\), "
        r"paired difference \+0\.06 \[0\.00, 0\.\d\d\]",
        tied,
    ), tied


def test_marks_and_intervals_in_html(built):
    html = built["html"]
    assert '<span class="ci">[' in html
    assert '<span class="up">▲r</span>' in html and "<strong>" in html
    assert "top cells tied: " in html


def test_baseline_table_is_shots_by_beam_model(built):
    md, baselines = built["md"], built["made"]["baselines"]
    section = _section(md, "## 1. Random-ICD baseline (RandomRetriever)")
    table = _table(section)
    assert table[0] == ["Shots", *MODELS]
    for row in table[1:]:
        for model, cell in zip(MODELS, row[1:]):
            want = baselines[(model, "RandomRetriever")]["shots"][row[0]]["score"]
            assert _cell(cell)["score"] == f"{want:.2f}"
    for j, model in enumerate(MODELS):  # bold: the best shot of each beam model, where significant
        column = {row[0]: row[1 + j] for row in table[1:]}
        best = max(SHOTS, key=lambda s: baselines[(model, "RandomRetriever")]["shots"][str(s)]["score"])
        bold = [k for k, v in column.items() if v.startswith("**")]
        assert bold in ([str(best)], [])
        assert (f"for {model}: " in section) == (not bold)


def test_similarity_and_summary_tables(built):
    md, baselines, cells = built["md"], built["made"]["baselines"], built["made"]["cells"]
    table = _table(_section(_section(md, "## 3. Similarity retrieval and zero-shot baselines"), "### m_b"))
    assert table[0] == ["Baseline", "0 (zero-shot)", "1", "2"]
    assert [row[0] for row in table[1:]] == list(R.BASELINE_ORDER)
    assert _cell(table[1][1])["score"] == f"{baselines[('m_b', 'ZeroShot')]['shots']['0']['score']:.2f}"
    assert table[1][2:] == ["–", "–"]
    summary_section = _section(_section(md, "## 4. Summary: baselines and selectors"), "### m_a")
    summary = _table(summary_section)
    labels = [row[0] for row in summary[1:]]
    assert labels[:2] == ["zero-shot", "random ICDs"] and labels[2:5] == list(R.SIMILARITY)
    for version, label in zip(VERSIONS, labels[5:]):
        means = {s: np.mean([cells[("m_a", version, s)]["shots"][str(k)]["score"] for k in SHOTS]) for s in SAMPLERS}
        assert label == f"{version} ({max(means, key=means.get)})"
    # column-wise: each shot's best setting is bold or named in the tie line, never both
    for j, header in enumerate(summary[0][1:], start=1):
        column = [row[j] for row in summary[1:] if row[j] != "–"]
        if len(column) < 2:
            assert not any(c.startswith("**") for c in column)
            continue
        shot = int(header.split()[0])
        named = f"at {shot} shot{'' if shot == 1 else 's'}: " in summary_section
        assert sum(c.startswith("**") for c in column) == (0 if named else 1)


def test_scores_and_comparisons_csv(built):
    scores, comparisons = built["scores"], built["comparisons"]
    assert list(scores[0]) == list(R.SCORE_COLUMNS)
    assert list(comparisons[0]) == list(R.COMPARISON_COLUMNS)
    n_baseline_rows = len(MODELS) * (1 + (len(R.BASELINES) - 1) * len(SHOTS))
    assert len(scores) == len(MODELS) * len(VERSIONS) * len(SAMPLERS) * len(SHOTS) + n_baseline_rows
    for row in scores:
        assert float(row["ci_low"]) <= float(row["score"]) <= float(row["ci_high"])
        assert (row["n"], row["replicates"], row["replicate_sd"]) == (str(len(QUESTIONS)), "1", "")
        assert float(row["replicate_mean"]) == pytest.approx(float(row["score"]), abs=1e-6)
    cell = built["made"]["cells"][WINNER]
    assert float(
        _score_row(built, beam_model="m_a", kind="selector", version="v0", sampler=WINNER[2], shot=2)["score"]
    ) == pytest.approx(cell["shots"]["2"]["score"], abs=1e-6)
    # each selector cell and shot against random and the best similarity baseline at that shot
    assert len(comparisons) == 2 * len(MODELS) * len(VERSIONS) * len(SAMPLERS) * len(SHOTS)
    baselines = built["made"]["baselines"]
    for row in comparisons:
        low, high, sign = float(row["ci_low"]), float(row["ci_high"]), int(row["significant"])
        assert low <= float(row["diff"]) <= high
        assert sign == (1 if low > 0 else -1 if high < 0 else 0)
        if row["reference"] != "RandomRetriever":
            shot = row["shot"]
            best = max(R.SIMILARITY, key=lambda name: baselines[(row["beam_model"], name)]["shots"][shot]["score"])
            assert row["reference"] == best
        subject = built["made"]["cells"][(row["beam_model"], row["version"], row["sampler"])]
        reference = baselines[(row["beam_model"], row["reference"])]
        want = subject["shots"][row["shot"]]["score"] - reference["shots"][row["shot"]]["score"]
        assert float(row["diff"]) == pytest.approx(want, abs=1e-5)
    assert {int(r["significant"]) for r in comparisons} == {-1, 0, 1}


def test_counts_section_matches_comparisons(built):
    section = _section(built["md"], "## 6. Paired comparisons: how many selector cells beat the baselines")
    for model in MODELS:
        table = _table(_section(section, f"### {model}"))
        assert [row[0] for row in table[1:]] == [*VERSIONS, "all versions"]
        for row in table[1:]:
            versions = VERSIONS if row[0] == "all versions" else (row[0],)
            expected = []
            for random in (True, False):
                rows = [
                    r
                    for r in built["comparisons"]
                    if r["beam_model"] == model
                    and r["version"] in versions
                    and (r["reference"] == "RandomRetriever") == random
                ]
                for sign in ("1", "-1"):
                    expected.append(f"{sum(r['significant'] == sign for r in rows)} / {len(rows)}")
            assert row[1:] == expected


def test_selection_overlap_flags_the_identical_pair_only(built):
    with open(built["outs"]["out_overlap"], newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    assert list(rows[0]) == list(R.OVERLAP_COLUMNS)
    pairs_per_model = len(VERSIONS) * len(SAMPLERS) * (len(VERSIONS) * len(SAMPLERS) - 1) // 2
    assert len(rows) == len(MODELS) * pairs_per_model * (len(SHOTS) + 1)
    twin = [
        r for r in rows if (r["beam_model"], r["cell_a"], r["cell_b"]) == ("m_a", "v0/rand_sampler", "v1/rand_sampler")
    ]
    assert {r["shot"]: (int(r["n"]), float(r["identical_share"])) for r in twin} == {
        "1": (16, 1.0),
        "2": (16, 1.0),
        "all": (32, 1.0),
    }
    others = [float(r["identical_share"]) for r in rows if r not in twin]
    assert max(others) < 0.5
    assert len(built["warnings"]) == 1 and "v0/rand_sampler and v1/rand_sampler" in built["warnings"][0]
    diagnostic = _section(built["md"], "## 5. Selection diagnostic")
    warnings = [line for line in diagnostic.splitlines() if line.startswith("> **WARNING:**")]
    assert len(warnings) == 1 and "m_a: v0/rand_sampler and v1/rand_sampler" in warnings[0]
    assert "100.00% of 32" in warnings[0]


def test_overlap_counts_partially_identical_selections():
    frames, runs = {}, []
    for name, ids in (("a", [(1,), (2,), (3,), (4,)]), ("b", [(1,), (2,), (9,), (9,)])):
        frames[name] = pd.DataFrame({"question_id": [1, 2, 3, 4], "shot": [1, 1, 2, 2], "icd_ids": ids})
        runs.append(R.Run(name, name, "selector", "d", "vqa", "vqa_accuracy", "m", "v0", name, None, {}, {}, 4))
    rows = {r["shot"]: r["identical_share"] for r in R.selection_overlap(runs, frames)}
    assert rows == {1: 1.0, 2: 0.0, "all": 0.5}
    assert R.overlap_warnings(R.selection_overlap(runs, frames)) == []


def test_plots_are_deterministic_pngs(built, tmp_path):
    for path in built["outs"]["out_plots"].values():
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    again = outputs(tmp_path)
    R.build_report(
        **built["made"]["inputs"],
        expected_inference=INFERENCE,
        **again,
        beam_models=list(MODELS),
        samplers=list(SAMPLERS),
    )
    for key, path in built["outs"]["out_plots"].items():
        assert path.read_bytes() == again["out_plots"][key].read_bytes(), key
        from PIL import Image

        with Image.open(path) as image:
            image.load()  # decodes fully: a truncated file fails here
            assert image.size[0] > 300 and image.size[1] > 200
    assert again["out_tables"].read_text(encoding="utf-8") == built["md"]
    for name in ("tables.html", "scores.csv", "comparisons.csv", "selection_overlap.csv"):  # byte-identical
        assert (again["out_tables"].parent / name).read_bytes() == (
            built["outs"]["out_tables"].parent / name
        ).read_bytes(), name
    html = again["out_tables"].with_suffix(".html").read_text(encoding="utf-8")
    assert "<table>" in html and "http" not in html and "<script" not in html
    assert not list(again["out_tables"].parent.rglob(".*.tmp*"))  # no leftover temp files


def test_plot_folder_form(built, tmp_path):
    outs = outputs(tmp_path)
    outs["out_plots"] = tmp_path / "plots"
    R.build_report(**built["made"]["inputs"], expected_inference=INFERENCE, **outs)
    assert sorted(p.name for p in (tmp_path / "plots").iterdir()) == sorted(
        f"{m}_{v}.png" for m in MODELS for v in VERSIONS
    )


def _assert_nothing_written(outs: dict) -> None:
    assert not outs["out_tables"].parent.exists() or not any(outs["out_tables"].parent.rglob("*"))


def test_stale_inference_settings_stop_with_one_message_and_no_outputs(built, tmp_path):
    inputs = json.loads(json.dumps(built["made"]["inputs"]))
    stale = Path(inputs["cell_metrics"][3])
    copy = tmp_path / "stale_metrics.json"
    metrics = json.loads(stale.read_text())
    metrics["inference"]["num_beams"] = 1
    write_json(copy, metrics)
    inputs["cell_metrics"][3] = str(copy)
    outs = outputs(tmp_path)
    with pytest.raises(R.ReportInputError) as err:
        R.build_report(**inputs, expected_inference=INFERENCE, **outs)
    message = str(err.value)
    assert str(copy) in message and "older config" in message and "inference.num_beams differs" in message
    assert "file 1, config 3" in message and "rerun" in message and "more input file" not in message
    _assert_nothing_written(outs)


def test_shots_of_an_older_config_are_named(built, tmp_path):
    expected = dict(INFERENCE, shots=[1, 2, 3])
    outs = outputs(tmp_path)
    with pytest.raises(R.ReportInputError, match=r"inference\.shots differs .*rerun") as err:
        R.build_report(**built["made"]["inputs"], expected_inference=expected, **outs)
    assert str(err.value).startswith(built["made"]["inputs"]["cell_metrics"][0] + " was produced by an older config")
    n_files = len(built["made"]["inputs"]["cell_metrics"]) + len(built["made"]["inputs"]["baseline_metrics"])
    assert f"[{n_files - 1} more input file(s) with a problem: " in str(err.value)  # still one message
    _assert_nothing_written(outs)
    # a metrics file whose shot results do not match its own recorded settings is named too
    metrics = json.loads(Path(built["made"]["inputs"]["cell_metrics"][0]).read_text())
    del metrics["shots"]["2"]
    write_json(tmp_path / "short.json", metrics)
    with pytest.raises(R.ReportInputError, match=r"short\.json: its shots \[1\] do not match inference\.shots"):
        R.load_runs([tmp_path / "short.json"], ["unused.parquet"], "selector", INFERENCE)


def test_predictions_that_disagree_with_their_metrics_are_named(built, tmp_path):
    inputs = json.loads(json.dumps(built["made"]["inputs"]))
    source = Path(inputs["cell_predictions"][2])
    frame = pd.read_parquet(source)
    cases = {
        "dropped_shot.parquet": frame[frame["shot"] == 1],
        "dropped_question.parquet": frame[frame["question_id"] != QUESTIONS[0]],
        "other_scores.parquet": frame.assign(score=1.0),
    }
    for name, broken in cases.items():
        path = tmp_path / name
        write_parquet(path, broken)
        inputs["cell_predictions"][2] = str(path)
        outs = outputs(tmp_path / name.split(".")[0])
        with pytest.raises(R.ReportInputError, match="disagrees with") as err:
            R.build_report(**inputs, expected_inference=INFERENCE, **outs)
        assert str(path) in str(err.value) and inputs["cell_metrics"][2] in str(err.value)
        _assert_nothing_written(outs)


def test_cells_evaluated_on_other_questions_are_named(tmp_path):
    made = make_inputs(tmp_path / "in")
    inputs = made["inputs"]
    path = Path(inputs["baseline_predictions"][1])
    metrics_path = Path(inputs["baseline_metrics"][1])
    frame = pd.read_parquet(path)
    frame.loc[frame["question_id"] == QUESTIONS[0], "question_id"] = 9999
    write_parquet(path, frame)
    with pytest.raises(R.ReportInputError, match="other val questions") as err:
        R.build_report(**inputs, expected_inference=INFERENCE, **outputs(tmp_path))
    assert str(path) in str(err.value)
    assert metrics_path.exists()


def test_missing_cells_show_a_dash(built, tmp_path):
    inputs = json.loads(json.dumps(built["made"]["inputs"]))
    drop = next(i for i, p in enumerate(inputs["cell_metrics"]) if "/v1/m_b/text_sim_sampler/" in p)
    for key in ("cell_metrics", "cell_predictions"):
        del inputs[key][drop]
    outs = outputs(tmp_path)
    R.build_report(**inputs, expected_inference=INFERENCE, **outs, samplers=list(SAMPLERS))
    table = _table(_section(outs["out_tables"].read_text(encoding="utf-8"), "### v1 · m_b"))
    assert [row[2] for row in table[1:]] == ["–", "–"]


def _add_run(
    inputs: dict,
    root: Path,
    identity: dict,
    seed: int,
    replicate: int | None = None,
    retriever_seed: int | None = None,
    score_of=None,
    **options,
) -> str:
    """Write one more run (a replicate, a ceiling) and list it in ``inputs``; returns its metrics path."""
    kind = identity["kind"]
    name = "_".join(str(v) for v in identity.values() if v) + f"_rep{replicate}_{seed}"
    metrics_path, predictions_path = root / f"{name}_metrics.json", root / f"{name}_predictions.parquet"
    _write_run(metrics_path, predictions_path, identity, seed, replicate=replicate, score_of=score_of, **options)
    if retriever_seed is not None:
        metrics = json.loads(metrics_path.read_text())
        metrics["inference"]["retriever_seed"] = retriever_seed
        write_json(metrics_path, metrics)
    prefix = {"selector": "cell", "baseline": "baseline", "ceiling": "ceiling"}[kind]
    inputs.setdefault(f"{prefix}_metrics", []).append(str(metrics_path))
    inputs.setdefault(f"{prefix}_predictions", []).append(str(predictions_path))
    return str(metrics_path)


def _selector(model: str, version: str, sampler: str) -> dict:
    return {"kind": "selector", "beam_model": model, "version": version, "sampler": sampler}


def test_replicates_are_pooled_with_mean_and_sd(tmp_path):
    made = make_inputs(tmp_path / "in")
    inputs = made["inputs"]
    extra = {("m_a", "v0", "rand_sampler"): 501, ("m_a", "v0", "text_sim_sampler"): 502}
    for cell, seed in extra.items():
        _add_run(inputs, tmp_path / "in", _selector(*cell), seed, replicate=1)
    _add_run(
        inputs,
        tmp_path / "in",
        {"kind": "baseline", "beam_model": "m_a", "baseline": "RandomRetriever"},
        503,
        replicate=1,
    )
    # a baseline listed once per replicate (the same files) counts once
    inputs["baseline_metrics"].append(inputs["baseline_metrics"][0])
    inputs["baseline_predictions"].append(inputs["baseline_predictions"][0])
    outs = outputs(tmp_path)
    R.build_report(**inputs, expected_inference=INFERENCE, **outs, samplers=list(SAMPLERS))
    md = outs["out_tables"].read_text(encoding="utf-8")
    scores = _csv(outs["out_tables"].parent / "scores.csv")
    table = _table(_section(md, "### v0 · m_a"))
    for row in table[1:]:
        shot = int(row[0])
        first = made["cells"][("m_a", "v0", "rand_sampler")]["shots"][str(shot)]["score"]
        second = float(_scores(501, shot).mean() * 100)
        match = _cell(row[1])
        assert match["score"] == f"{(first + second) / 2:.2f}"
        assert match["spread"] == f" (±{statistics.stdev([first, second]):.2f} sd, 2 reps)"
        csv_row = next(
            r
            for r in scores
            if (r["kind"], r["version"], r["sampler"], r["shot"]) == ("selector", "v0", "rand_sampler", str(shot))
            and r["beam_model"] == "m_a"
        )
        assert csv_row["replicates"] == "2"
        assert float(csv_row["replicate_sd"]) == pytest.approx(statistics.stdev([first, second]), abs=1e-5)
        assert float(csv_row["score"]) == pytest.approx((first + second) / 2, abs=1e-5)
    assert _cell(_table(_section(md, "### v0 · m_b"))[1][1])["spread"] is None
    assert (
        "Replicates pooled per cell: 1–2 for selector cells, RandomRetriever; 1 for ZeroShot, "
        "SimRetriever-i2i, SimRetriever-t2t, SimRetriever-i2t."
    ) in md
    # the diagnostic pairs cells within a replicate: v0/rand vs v0/text_sim of m_a meet in both replicates
    overlap = _csv(outs["out_overlap"])
    pair = {
        r["shot"]: int(r["n"])
        for r in overlap
        if (r["beam_model"], r["cell_a"], r["cell_b"]) == ("m_a", "v0/rand_sampler", "v0/text_sim_sampler")
    }
    assert pair == {"1": 32, "2": 32, "all": 64}
    twin = {
        r["shot"]: int(r["n"])
        for r in overlap
        if (r["beam_model"], r["cell_a"], r["cell_b"]) == ("m_a", "v0/rand_sampler", "v1/rand_sampler")
    }
    assert twin == {"1": 16, "2": 16, "all": 32}


def test_replicate_seeds_are_checked(tmp_path):
    made = make_inputs(tmp_path / "in")
    outs = outputs(tmp_path)
    # replicate 1 must record retriever_seed 0 + 1; 0 (the unshifted seed) and 5 are refused
    for replicate, seed_recorded, shown in (
        (1, 0, "file 0, config 1 (retriever_seed 0 + replicate 1)"),
        (2, 5, "file 5, config 2 (retriever_seed 0 + replicate 2)"),
    ):
        inputs = json.loads(json.dumps(made["inputs"]))
        path = _add_run(
            inputs,
            tmp_path / "in",
            _selector("m_a", "v1", "rand_sampler"),
            600 + replicate,
            replicate=replicate,
            retriever_seed=seed_recorded,
        )
        with pytest.raises(R.ReportInputError) as err:
            R.build_report(**inputs, expected_inference=INFERENCE, **outs)
        assert str(err.value).startswith(f"{path} was produced by an older config: inference.retriever_seed differs")
        assert shown in str(err.value)
        _assert_nothing_written(outs)
    # two files for one cell and one replicate: both named
    inputs = json.loads(json.dumps(made["inputs"]))
    first = _add_run(inputs, tmp_path / "in", _selector("m_b", "v0", "rand_sampler"), 701, replicate=3)
    second = _add_run(inputs, tmp_path / "in", _selector("m_b", "v0", "rand_sampler"), 702, replicate=3)
    with pytest.raises(R.ReportInputError, match="the same cell as") as err:
        R.build_report(**inputs, expected_inference=INFERENCE, **outs)
    assert first in str(err.value) and second in str(err.value) and "replicate 3" in str(err.value)
    _assert_nothing_written(outs)
    metrics = json.loads(Path(first).read_text())
    metrics["replicate"] = "one"
    write_json(Path(first), metrics)
    with pytest.raises(R.ReportInputError, match="'replicate' must be an integer"):
        R.load_runs([first], ["unused.parquet"], "selector", INFERENCE)


def test_imitation_ceiling_runs_are_optional_inputs(built, tmp_path):
    assert "## 7. Imitation ceiling" not in built["md"]
    assert not any(r["version"] == "ceiling" for r in built["comparisons"])
    inputs = json.loads(json.dumps(built["made"]["inputs"]))
    for seed, (model, sampler) in enumerate(((m, s) for m in MODELS for s in SAMPLERS), start=800):
        # m_a's ceiling lies far below every baseline; m_b's far above
        lift = 0.0 if model == "m_a" else 0.5
        _add_run(
            inputs,
            tmp_path / "ceiling",
            {"kind": "ceiling", "beam_model": model, "version": None, "sampler": sampler},
            seed,
            score_of=lambda shot, s=seed, lift=lift: _scores(s, shot) * 0.1 + lift,
        )
    outs = outputs(tmp_path / "out")
    R.build_report(**inputs, expected_inference=INFERENCE, **outs, samplers=list(SAMPLERS))
    md = outs["out_tables"].read_text(encoding="utf-8")
    section = _section(md, "## 7. Imitation ceiling")
    assert "a diagnostic, not a method" in section
    for model in MODELS:
        table = _table(_section(section, f"### imitation ceiling · {model}"))
        assert table[0] == ["Shots", *SAMPLERS]
        for row in table[1:]:
            for text in row[1:]:
                assert set(_cell(text)["marks"].split()) == ({"▼r", "▼i"} if model == "m_a" else {"▲r", "▲i"})
    assert re.search(
        r"m_a: the best ceiling cell, .* is significantly below RandomRetriever \(-\d+\.\d\d \[.*\]\) and "
        r"SimRetriever-i2i \(.*\): InfoScore is the bottleneck on this data\.",
        section,
    )
    assert re.search(
        r"m_b: the best ceiling cell, \d+\.\d\d \((rand|text_sim)_sampler, \d shots?\), is not "
        r"significantly below RandomRetriever or SimRetriever-i2i\.",
        section,
    )
    comparisons = _csv(outs["out_tables"].parent / "comparisons.csv")
    ceiling_rows = [r for r in comparisons if r["version"] == "ceiling"]
    assert len(ceiling_rows) == len(MODELS) * len(SAMPLERS) * len(SHOTS) * 2
    assert {r["reference"] for r in ceiling_rows} == {"RandomRetriever", "SimRetriever-i2i"}
    assert {r["significant"] for r in ceiling_rows if r["beam_model"] == "m_a"} == {"-1"}
    scores = _csv(outs["out_tables"].parent / "scores.csv")
    assert sum(r["kind"] == "ceiling" and r["version"] == "" for r in scores) == len(MODELS) * len(SAMPLERS) * 2
    # the selector tables did not change
    assert _section(md, "### v0 · m_a") == _section(built["md"], "### v0 · m_a")
    # a ceiling run names no version
    bad = json.loads(Path(inputs["ceiling_metrics"][0]).read_text())
    bad["version"] = "v0"
    write_json(tmp_path / "bad_ceiling.json", bad)
    with pytest.raises(R.ReportInputError, match="a ceiling run has no version"):
        R.load_runs([tmp_path / "bad_ceiling.json"], ["unused.parquet"], "ceiling", INFERENCE)


def test_a_ceiling_on_a_subset_of_questions_and_shots_is_compared_on_that_subset(built, tmp_path):
    inputs = json.loads(json.dumps(built["made"]["inputs"]))
    ceiling = {"kind": "ceiling", "beam_model": "m_a", "version": None, "sampler": "rand_sampler"}
    _add_run(inputs, tmp_path, ceiling, 900, shots=(1,), questions=8)  # beam_search.shot_num 1, max_queries 8
    outs = outputs(tmp_path / "out")
    R.build_report(**inputs, expected_inference=INFERENCE, **outs, samplers=list(SAMPLERS))
    report = outs["out_tables"].parent
    [score] = [r for r in _csv(report / "scores.csv") if r["kind"] == "ceiling"]
    assert (score["shot"], score["n"]) == ("1", "8")
    rows = {r["reference"]: r for r in _csv(report / "comparisons.csv") if r["version"] == "ceiling"}
    assert set(rows) == {"RandomRetriever", "SimRetriever-i2i"} and {r["shot"] for r in rows.values()} == {"1"}
    random = pd.read_parquet(inputs["baseline_predictions"][0]).query("shot == 1").sort_values("question_id")
    want = (_scores(900, 1)[:8] - random["score"].to_numpy()[:8]).mean() * 100
    assert float(rows["RandomRetriever"]["diff"]) == pytest.approx(want, abs=1e-6)
    section = _section(outs["out_tables"].read_text(encoding="utf-8"), "### imitation ceiling · m_a")
    assert "n = 8 val questions per cell." in section
    assert _table(section)[2][1] == "–"  # 2 shots: not evaluated
    # a ceiling answering a question the others did not is refused
    inputs = json.loads(json.dumps(built["made"]["inputs"]))
    path = tmp_path / "stray.parquet"
    _add_run(inputs, tmp_path / "stray", ceiling, 901)
    frame = pd.read_parquet(inputs["ceiling_predictions"][0])
    frame.loc[frame["question_id"] == QUESTIONS[0], "question_id"] = 9999
    write_parquet(path, frame)
    inputs["ceiling_predictions"][0] = str(path)
    with pytest.raises(R.ReportInputError, match="other val questions"):
        R.build_report(**inputs, expected_inference=INFERENCE, **outputs(tmp_path / "out2"))


def test_corpus_metric_without_per_question_scores(tmp_path):
    made = make_inputs(tmp_path / "in", caption=True)
    outs = outputs(tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        R.build_report(**made["inputs"], expected_inference=INFERENCE, **outs)
    md = outs["out_tables"].read_text(encoding="utf-8")
    assert "CIDEr ×100" in md and "nan" not in md.lower()
    section = _section(md, "### v0 · m_a")
    for row in _table(section)[1:]:
        for text in row[1:]:
            assert re.fullmatch(r"\d+\.\d\d \[–\]", text), text  # no bold, no marks: nothing to compare
    assert "not compared (no per-question scores)" in section
    scores = _csv(outs["out_tables"].parent / "scores.csv")
    assert all(r["ci_low"] == r["ci_high"] == "" and r["score"] for r in scores)
    comparisons = _csv(outs["out_tables"].parent / "comparisons.csv")
    assert comparisons and all(r["significant"] == "0" and r["ci_low"] == "" and r["diff"] for r in comparisons)
    counts = _table(
        _section(_section(md, "## 6. Paired comparisons: how many selector cells beat the baselines"), "### m_a")
    )
    assert counts[1][1:] == ["–"] * 4


def _fake_result(sampler: str, per_shot: dict[int, np.ndarray]) -> R.Result:
    """A one-replicate selector cell with the given per-question scores (0..1) per shot."""
    from lever_lm.stats import bootstrap_mean

    scores = {shot: float(v.mean() * 100) for shot, v in per_shot.items()}
    run = R.Run(
        sampler,
        sampler,
        "selector",
        "d",
        "vqa",
        "vqa_accuracy",
        "m",
        "v0",
        sampler,
        None,
        scores,
        {shot: len(v) for shot, v in per_shot.items()},
        8,
    )
    shots = {
        shot: R.ShotResult(
            shot,
            len(v),
            scores[shot],
            bootstrap_mean(v, R.UncertaintyConfig.from_config(None), (sampler, shot), scale=100.0),
            (scores[shot],),
            v,
        )
        for shot, v in per_shot.items()
    }
    return R.Result((run,), shots)


def _fake_data(results: list) -> R.ReportData:
    return R.ReportData(
        dataset="d",
        task="vqa",
        metric="vqa_accuracy",
        shots=[1, 2],
        beam_models=["m"],
        versions=["v0"],
        samplers=[r.sampler for r in results],
        results=results,
        overlap=[],
        warnings=[],
        settings={},
        uncertainty=R.UncertaintyConfig.from_config(None),
        identical_warn=0.95,
    )


def _grid_of(data: R.ReportData) -> list[list[R.Entry]]:
    return [[R.Entry(r, shot, f"{r.sampler}, {shot}") for r in data.results] for shot in (1, 2)]


def test_display_ties_are_all_named_in_the_best_line():
    a = _fake_result("a", {1: np.full(8, 0.20), 2: np.full(8, 0.2429)})
    b = _fake_result("b", {1: np.full(8, 0.24291), 2: np.full(8, 0.10)})
    data = _fake_data([a, b])
    assert R.best_line([e for row in _grid_of(data) for e in row]) == "best: 24.29 (b, 1 shot; a, 2 shots)"


def test_bold_needs_a_significant_paired_difference_to_the_runner_up():
    rng = np.random.default_rng(0)
    base = rng.random(40) * 0.5
    clear = _fake_data([_fake_result("a", {1: base + 0.4, 2: base}), _fake_result("b", {1: base, 2: base + 0.1})])
    table, tie = R.score_grid(clear, ["1", "2"], ["a", "b"], _grid_of(clear), "Shots", "all")
    assert [[c.bold for c in row[1:]] for row in table.rows] == [[True, False], [False, False]] and tie == ""
    nudged = base.copy()
    nudged[0] += 0.01
    close = _fake_data([_fake_result("a", {1: nudged, 2: base}), _fake_result("b", {1: base, 2: base - 0.1})])
    table, tie = R.score_grid(close, ["1", "2"], ["a", "b"], _grid_of(close), "Shots", "all")
    assert not any(c.bold for row in table.rows for c in row)
    top = f"{nudged.mean() * 100:.2f}"
    # the runner-up is b at 1 shot (equal to a at 2 shots, and first in the table); one question differs by 0.01
    assert re.fullmatch(
        rf"top cells tied: {top} \(a, 1\) vs {base.mean() * 100:.2f} \(b, 1\), "
        r"paired difference \+0\.0\d \[0\.00, 0\.\d\d\]",
        tie,
    ), tie
    # a column-wise table names each tied column
    table, tie = R.score_grid(
        close,
        ["a", "b"],
        ["1", "2"],
        [list(col) for col in zip(*_grid_of(close))],
        "Cell",
        "column",
        column_names=["at 1 shot", "at 2 shots"],
    )
    assert tie.startswith("top cells tied at 1 shot: ") and "at 2 shots" not in tie
    assert [[c.bold for c in row[1:]] for row in table.rows] == [[False, True], [False, False]]


# --------------------------------------------------------------------------------------------------------------
# snakemake --report in a real browser

SNAKEFILE = """
import json
from lever_lm.report import build_report

report: "report/workflow.rst"

INPUTS = json.load(open("inputs.json"))
PLOTS = {plots!r}


rule report:
    input:
        **INPUTS,
    output:
        tables=report("out/tables.md", caption="report/tables.rst", category="Result tables"),
        html=report("out/tables.html", caption="report/tables.rst", category="Result tables"),
        overlap=report("out/selection_overlap.csv", caption="report/overlap.rst", category="Selection diagnostic"),
        scores=report("out/scores.csv", caption="report/scores.rst", category="Result tables"),
        comparisons=report("out/comparisons.csv", caption="report/comparisons.rst", category="Result tables"),
        plots=[
            report(path, caption="report/plot.rst", category="Accuracy vs shots", subcategory=model,
                   labels={{"beam model": model, "version": version}})
            for model, version, path in PLOTS
        ],
    run:
        build_report(
            input.cell_metrics, input.cell_predictions, input.baseline_metrics, input.baseline_predictions,
            expected_inference=json.load(open("inference.json")),
            out_tables=output.tables, out_overlap=output.overlap, out_html=output.html,
            out_scores=output.scores, out_comparisons=output.comparisons,
            out_plots={{(m, v): p for (m, v, _), p in zip(PLOTS, output.plots)}},
        )
"""


def test_snakemake_report_renders_in_chromium(tmp_path):
    from tests.browser import browser_missing, render_snakemake_report

    if reason := browser_missing():
        pytest.skip(f"no headless Chromium for Selenium: {reason}")

    made = make_inputs(tmp_path / "in")
    (tmp_path / "inputs.json").write_text(json.dumps(made["inputs"]))
    (tmp_path / "inference.json").write_text(json.dumps(INFERENCE))
    shutil.copytree(REPO / "report", tmp_path / "report")
    plots = [(m, v, f"out/plots/{m}_{v}.png") for v in VERSIONS for m in MODELS]
    (tmp_path / "Snakefile").write_text(textwrap.dedent(SNAKEFILE.format(plots=plots)))
    snakemake = str(Path(sys.executable).with_name("snakemake"))
    env = dict(os.environ, PYTHONPATH=str(REPO))
    for args in (["--cores", "1"], ["--report", "report.html"]):
        done = subprocess.run([snakemake, *args], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-3000:]

    page = render_snakemake_report(tmp_path / "report.html")
    assert page.console_errors == []
    views = {view.label: view for view in page.views}
    assert set(views) == {"loaded", "tables.html", *(Path(p).name for _, _, p in plots)}, sorted(views)
    tables = views["tables.html"]
    text = tables.text
    for heading in (
        "1. Random-ICD baseline (RandomRetriever)",
        "2. Selector results (shots × sampler)",
        "5. Selection diagnostic",
        "v1 · m_b",
    ):
        assert heading in text
    assert "WARNING: m_a: v0/rand_sampler and v1/rand_sampler" in text
    best = max(made["cells"][("m_a", "v0", s)]["shots"][str(k)]["score"] for s in SAMPLERS for k in SHOTS)
    assert f"{best:.2f}" in tables.bold_texts
    assert tables.tables >= 1 + len(VERSIONS) * len(MODELS)
    for name in (Path(p).name for _, _, p in plots):
        images = [img for img in views[name].images if f"filename={name};" in img.src]  # not the logo
        assert len(images) == 1 and images[0].loaded, (name, views[name].images)
        assert images[0].natural_width > 300
    assert page.broken_images() == []
    assert "Result tables" in page.dom_text and "Accuracy vs shots" in page.dom_text
    assert "Lever-Plus learns which in-context demonstrations" in page.dom_text  # report/workflow.rst
