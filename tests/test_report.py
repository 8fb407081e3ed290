"""The report stage: tables, plots, the selection diagnostic and stale-input checks, on synthetic inference outputs.

The last test runs a throwaway Snakemake workflow around build_report, builds `snakemake --report` and opens the
page in headless Chromium (skipped where Chromium is absent).
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
import textwrap
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


def _scores(seed: int, shot: int) -> np.ndarray:
    rng = np.random.default_rng([seed, shot])
    return rng.random(len(QUESTIONS))  # continuous: no ties at display precision


def _selections(seed: int, shot: int) -> list[list[int]]:
    rng = np.random.default_rng([seed, shot, 7])
    return [[int(i) for i in rng.choice(1000, size=shot, replace=False)] for _ in QUESTIONS]


def _write_run(metrics_path: Path, predictions_path: Path, identity: dict, seed: int, shots=SHOTS,
               selection_seed: int | None = None, zero_shot: bool = False) -> dict:
    rows, shot_metrics = [], {}
    for shot in shots:
        scores = _scores(seed, shot)
        picks = [[] for _ in QUESTIONS] if zero_shot else _selections(
            seed if selection_seed is None else selection_seed, shot)
        for qid, score, ids in zip(QUESTIONS, scores, picks):
            rows.append({"question_id": qid, "shot": shot, "icd_ids": ids, "raw_output": "x", "answer": "x",
                         "score": float(score)})
        shot_metrics[str(shot)] = {"score": float(scores.mean() * 100), "n": len(QUESTIONS)}
    frame = pd.DataFrame(rows).astype({"question_id": "int64", "shot": "int64"})
    metrics = {
        "dataset": "toy", "task": "vqa", "metric": "vqa_accuracy", "version": None, "sampler": None,
        "baseline": None, **identity, "shots": shot_metrics, "n_queries": len(QUESTIONS), "max_queries": None,
        "query_seed": 0, "inference": dict(INFERENCE), "checkpoint": None, "config_digest": "0" * 64,
    }
    write_parquet(predictions_path, frame)
    write_json(metrics_path, metrics)
    return metrics


def make_inputs(root: Path) -> dict:
    """Synthetic inference outputs: 2 beam models x 2 versions x 2 samplers, and the 5 baselines per model."""
    inputs = {"cell_metrics": [], "cell_predictions": [], "baseline_metrics": [], "baseline_predictions": []}
    cells = {}
    seed = 1
    for version in VERSIONS:
        for model in MODELS:
            for sampler in SAMPLERS:
                folder = root / "icl_inference" / version / model / sampler
                selection_seed = 999 if (model, version, sampler) in TWINS else None
                metrics = _write_run(folder / "metrics.json", folder / "predictions.parquet",
                                     {"kind": "selector", "beam_model": model, "version": version,
                                      "sampler": sampler}, seed, selection_seed=selection_seed)
                cells[(model, version, sampler)] = metrics
                inputs["cell_metrics"].append(str(folder / "metrics.json"))
                inputs["cell_predictions"].append(str(folder / "predictions.parquet"))
                seed += 1
    baselines = {}
    for model in MODELS:
        for name in R.BASELINES:
            prefix = root / "icl_inference" / "baseline" / f"{model}_{name}_baseline"
            metrics = _write_run(Path(f"{prefix}_metrics.json"), Path(f"{prefix}_predictions.parquet"),
                                 {"kind": "baseline", "beam_model": model, "baseline": name}, seed,
                                 shots=(0,) if name == "ZeroShot" else SHOTS, zero_shot=name == "ZeroShot")
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


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = tmp_path_factory.mktemp("report")
    made = make_inputs(root / "in")
    outs = outputs(root)
    warnings = R.build_report(**made["inputs"], expected_inference=INFERENCE, **outs,
                              beam_models=list(MODELS), samplers=list(SAMPLERS))
    return {"root": root, "made": made, "outs": outs, "warnings": warnings,
            "md": outs["out_tables"].read_text(encoding="utf-8")}


def _section(md: str, heading: str) -> str:
    """The text of one heading's section, up to the next heading of the same or a higher level."""
    lines = md.splitlines()
    start = lines.index(heading)
    level = len(heading) - len(heading.lstrip("#"))
    end = next((i for i in range(start + 1, len(lines))
                if lines[i].startswith("#") and len(lines[i]) - len(lines[i].lstrip("#")) <= level), len(lines))
    return "\n".join(lines[start:end])


def _table(section: str) -> list[list[str]]:
    rows = [line for line in section.splitlines() if line.startswith("|")]
    return [[c.strip() for c in row.strip("|").split("|")] for row in rows[:1] + rows[2:]]


def test_selector_tables_bold_the_true_max_and_name_it(built):
    md, cells = built["md"], built["made"]["cells"]
    for version in VERSIONS:
        for model in MODELS:
            section = _section(md, f"### {version} · {model}")
            table = _table(section)
            assert table[0] == ["Shots", *SAMPLERS]
            assert [row[0] for row in table[1:]] == [str(s) for s in SHOTS]
            values = {(shot, sampler): cells[(model, version, sampler)]["shots"][str(shot)]["score"]
                      for shot in SHOTS for sampler in SAMPLERS}
            (best_shot, best_sampler), best = max(values.items(), key=lambda kv: kv[1])
            bold = [(int(row[0]), SAMPLERS[j]) for row in table[1:] for j, c in enumerate(row[1:])
                    if c.startswith("**")]
            assert bold == [(best_shot, best_sampler)]
            for row in table[1:]:
                for sampler, cell in zip(SAMPLERS, row[1:]):
                    assert cell.strip("*") == f"{values[(int(row[0]), sampler)]:.2f}"
            word = "shot" if best_shot == 1 else "shots"
            assert f"best: {best:.2f} ({best_sampler}, {best_shot} {word})" in section
            assert f"n = {len(QUESTIONS)} val questions per cell." in section


def test_baseline_table_is_shots_by_beam_model(built):
    md, baselines = built["md"], built["made"]["baselines"]
    table = _table(_section(md, "## 1. Random-ICD baseline (RandomRetriever)"))
    assert table[0] == ["Shots", *MODELS]
    for row in table[1:]:
        for model, cell in zip(MODELS, row[1:]):
            want = baselines[(model, "RandomRetriever")]["shots"][row[0]]["score"]
            assert cell.strip("*") == f"{want:.2f}"
    for j, model in enumerate(MODELS):  # bold: the best shot of each beam model
        column = {row[0]: row[1 + j] for row in table[1:]}
        best = max(SHOTS, key=lambda s: baselines[(model, "RandomRetriever")]["shots"][str(s)]["score"])
        assert [k for k, v in column.items() if v.startswith("**")] == [str(best)]


def test_similarity_and_summary_tables(built):
    md, baselines, cells = built["md"], built["made"]["baselines"], built["made"]["cells"]
    table = _table(_section(_section(md, "## 3. Similarity retrieval and zero-shot baselines"), "### m_b"))
    assert table[0] == ["Baseline", "0 (zero-shot)", "1", "2"]
    assert [row[0] for row in table[1:]] == list(R.BASELINE_ORDER)
    assert table[1][1] == f"{baselines[('m_b', 'ZeroShot')]['shots']['0']['score']:.2f}"
    assert table[1][2:] == ["–", "–"]
    summary = _table(_section(_section(md, "## 4. Summary: baselines and selectors"), "### m_a"))
    labels = [row[0] for row in summary[1:]]
    assert labels[:2] == ["zero-shot", "random ICDs"] and labels[2:5] == list(R.SIMILARITY)
    for version, label in zip(VERSIONS, labels[5:]):
        means = {s: np.mean([cells[("m_a", version, s)]["shots"][str(k)]["score"] for k in SHOTS]) for s in SAMPLERS}
        assert label == f"{version} ({max(means, key=means.get)})"


def test_selection_overlap_flags_the_identical_pair_only(built):
    with open(built["outs"]["out_overlap"], newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    assert list(rows[0]) == list(R.OVERLAP_COLUMNS)
    pairs_per_model = len(VERSIONS) * len(SAMPLERS) * (len(VERSIONS) * len(SAMPLERS) - 1) // 2
    assert len(rows) == len(MODELS) * pairs_per_model * (len(SHOTS) + 1)
    twin = [r for r in rows if (r["beam_model"], r["cell_a"], r["cell_b"]) == ("m_a", "v0/rand_sampler",
                                                                                 "v1/rand_sampler")]
    assert {r["shot"]: (int(r["n"]), float(r["identical_share"])) for r in twin} == {
        "1": (16, 1.0), "2": (16, 1.0), "all": (32, 1.0)}
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
    R.build_report(**built["made"]["inputs"], expected_inference=INFERENCE, **again,
                   beam_models=list(MODELS), samplers=list(SAMPLERS))
    for key, path in built["outs"]["out_plots"].items():
        assert path.read_bytes() == again["out_plots"][key].read_bytes(), key
        from PIL import Image

        with Image.open(path) as image:
            image.load()  # decodes fully: a truncated file fails here
            assert image.size[0] > 300 and image.size[1] > 200
    assert again["out_tables"].read_text(encoding="utf-8") == built["md"]
    html = again["out_tables"].with_suffix(".html").read_text(encoding="utf-8")
    assert "<table>" in html and "http" not in html and "<script" not in html
    assert not list(again["out_tables"].parent.rglob(".*.tmp*"))  # no leftover temp files


def test_plot_folder_form(built, tmp_path):
    outs = outputs(tmp_path)
    outs["out_plots"] = tmp_path / "plots"
    R.build_report(**built["made"]["inputs"], expected_inference=INFERENCE, **outs)
    assert sorted(p.name for p in (tmp_path / "plots").iterdir()) == sorted(
        f"{m}_{v}.png" for m in MODELS for v in VERSIONS)


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


def test_ties_are_all_bold_and_named():
    values = [[20.0, 24.291], [24.29, 10.0]]
    assert R.best_line(["a", "b"], [1, 2], values) == "best: 24.29 (b, 1 shot; a, 2 shots)"
    table = R._grid(["1", "2"], ["a", "b"], values, "Shots", "all")
    assert [[c.bold for c in row[1:]] for row in table.rows] == [[False, True], [True, False]]


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
            out_plots={{(m, v): p for (m, v, _), p in zip(PLOTS, output.plots)}},
        )
"""


@pytest.mark.skipif(not Path("/usr/bin/chromium").exists(), reason="Debian's chromium is not installed")
def test_snakemake_report_renders_in_chromium(tmp_path):
    from tests.browser import render_snakemake_report

    made = make_inputs(tmp_path / "in")
    (tmp_path / "inputs.json").write_text(json.dumps(made["inputs"]))
    (tmp_path / "inference.json").write_text(json.dumps(INFERENCE))
    shutil.copytree(REPO / "report", tmp_path / "report")
    plots = [(m, v, f"out/plots/{m}_{v}.png") for v in VERSIONS for m in MODELS]
    (tmp_path / "Snakefile").write_text(textwrap.dedent(SNAKEFILE.format(plots=plots)))
    snakemake = str(Path(sys.executable).with_name("snakemake"))
    env = dict(os.environ, PYTHONPATH=str(REPO))
    for args in (["--cores", "1"], ["--report", "report.html"]):
        done = subprocess.run([snakemake, *args], cwd=tmp_path, env=env, capture_output=True, text=True,
                              timeout=300)
        assert done.returncode == 0, done.stderr[-3000:]

    page = render_snakemake_report(tmp_path / "report.html")
    assert page.console_errors == []
    views = {view.label: view for view in page.views}
    assert set(views) == {"loaded", "tables.html", *(Path(p).name for _, _, p in plots)}, sorted(views)
    tables = views["tables.html"]
    text = tables.text
    for heading in ("1. Random-ICD baseline (RandomRetriever)", "2. Selector results (shots × sampler)",
                    "5. Selection diagnostic", "v1 · m_b"):
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
