"""End-to-end tier: the toy default runs from scratch to the report, and a second plan has nothing left to do.

The run covers every stage and the full selector matrix (5 versions x 2 tiny LVLMs) on CI-sized slices of the
toy default: two samplers (one random, one similarity), half the anchors, a seeded subset of val queries and of
ceiling queries, and a short pretraining of the tiny LVLMs (the pretraining code runs; the models' quality is
not what this test checks). The README's first command runs the full default.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

from lever_lm import paths
from lever_lm.config import load_config

REPO = Path(__file__).resolve().parents[1]
SNAKEMAKE = str(Path(sys.executable).parent / "snakemake")
E2E_OVERRIDES = {"samplers": ["rand_sampler", "img_sim_sampler"]}
E2E_INFERENCE = {"max_queries": 48}
E2E_ANCHORS = 32
E2E_CEILING_QUERIES = 16
E2E_PRETRAIN = {"steps": 100, "warmup_steps": 10}  # of 900-1,000: about 6 of the test's 11 minutes went there


def e2e_config(tmp_path: Path) -> Path:
    config = yaml.safe_load((REPO / "config.yaml").read_text())
    config.update(E2E_OVERRIDES)
    config["inference"] = {**config.get("inference", {}), **E2E_INFERENCE}
    config["anchors"]["sample_num"] = E2E_ANCHORS
    config["ceiling"]["max_queries"] = E2E_CEILING_QUERIES
    for entry in config["beam_models"].values():
        if "pretrain" in entry:
            entry["pretrain"].update(E2E_PRETRAIN)
    path = tmp_path / "e2e_config.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def check_beams(tmp_path: Path, config: dict) -> None:
    anchors = json.loads((tmp_path / paths.fill(paths.ANCHORS, config)).read_text())["anchors"]
    assert len(anchors) == config["anchors"]["sample_num"]
    beam_size, shots = config["beam_search"]["beam_size"], config["beam_search"]["shot_num"]
    for sampler in config["samplers"]:
        candidates = json.loads((tmp_path / paths.fill(paths.CANDIDATES, config, sampler=sampler)).read_text())
        for beam_model in config["beam_models"]:
            beams = json.loads(
                (tmp_path / paths.fill(paths.BEAMS, config, sampler=sampler, beam_model=beam_model)).read_text()
            )
            assert beams["params"]["beam_model"] == beam_model and beams["params"]["sampler"] == sampler
            assert [record["anchor_id"] for record in beams["anchors"]] == anchors
            for record in beams["anchors"]:
                pool = set(candidates["candidates"][str(record["anchor_id"])])
                assert len(record["sequences"]) == beam_size
                assert all(len(seq) == shots and set(seq) <= pool for seq in record["sequences"])
                assert record["scores"] == sorted(record["scores"], reverse=True)
                assert [steps[-1] for steps in record["step_scores"]] == record["scores"]


def check_inference(tmp_path: Path, config: dict) -> None:
    shots = config["inference"]["shots"]
    n_queries = config["inference"]["max_queries"]
    val = pd.read_parquet(tmp_path / paths.fill(paths.RECORDS, config, split="val"))
    val_row = dict(zip(val["question_id"], val["idx"]))
    for cell in paths.selector_cells(config):
        assert (tmp_path / paths.fill(paths.SELECTOR_BEST, config, **cell)).is_file(), cell
        metrics = json.loads((tmp_path / paths.fill(paths.INFERENCE_METRICS, config, **cell)).read_text())
        assert (metrics["version"], metrics["beam_model"], metrics["sampler"]) == (
            cell["version"],
            cell["beam_model"],
            cell["sampler"],
        )
        assert sorted(int(k) for k in metrics["shots"]) == shots
        assert metrics["n_queries"] == n_queries
        predictions = pd.read_parquet(tmp_path / paths.fill(paths.INFERENCE_PREDICTIONS, config, **cell))
        assert len(predictions) == n_queries * len(shots)
        assert all(len(ids) == shot for ids, shot in zip(predictions["icd_ids"], predictions["shot"]))
        if cell["version"] != "v0":  # v1-v4 choose inside the query's test pool
            pools = json.loads((tmp_path / paths.fill(paths.TEST_POOL, config, sampler=cell["sampler"])).read_text())
            for ids, qid in zip(predictions["icd_ids"], predictions["question_id"]):
                assert set(ids) <= set(pools["candidates"][str(val_row[qid])]), (cell, qid)
    for cell in paths.baseline_cells(config):
        metrics = json.loads((tmp_path / paths.fill(paths.BASELINE_METRICS, config, **cell)).read_text())
        assert metrics["baseline"] == cell["baseline"]


@pytest.mark.slow
def test_default_pipeline_runs_end_to_end(tmp_path):
    config_path = e2e_config(tmp_path)
    command = [
        SNAKEMAKE,
        "--snakefile",
        str(REPO / "Snakefile"),
        "--configfile",
        str(config_path),
        "--directory",
        str(tmp_path),
        "--cores",
        "2",
    ]
    run = subprocess.run(command, capture_output=True, text=True, timeout=3600)
    assert run.returncode == 0, run.stderr[-5000:]

    config = load_config(config_path)
    for target in paths.all_targets(config):
        assert (tmp_path / target).is_file(), target
    check_beams(tmp_path, config)
    check_inference(tmp_path, config)
    tables = (tmp_path / paths.fill(paths.REPORT_TABLES, config)).read_text()
    for version in config["versions"]:
        for beam_model in config["beam_models"]:
            assert f"{version} · {beam_model}" in tables

    plan = subprocess.run(command + ["-n"], capture_output=True, text=True, timeout=600)
    assert plan.returncode == 0
    assert "Nothing to be done" in plan.stdout + plan.stderr
    records = yaml.safe_load((REPO / "config.yaml").read_text())["dataset"]
    assert (tmp_path / records["root"] / "train2014").is_dir()

    check_html_report(command, tmp_path, config)


def check_html_report(command: list[str], tmp_path: Path, config: dict) -> None:
    """`snakemake --report` gives one page where the tables and every plot render without console errors."""
    from tests.browser import browser_missing, render_snakemake_report

    report = subprocess.run(
        command + ["--report", str(tmp_path / "report.html")], capture_output=True, text=True, timeout=600
    )
    assert report.returncode == 0, report.stderr[-3000:]
    if reason := browser_missing():
        pytest.skip(f"the HTML report was built but not opened in a browser: {reason}")
    page = render_snakemake_report(tmp_path / "report.html")
    assert page.console_errors == []
    assert page.broken_images() == []
    views = {view.label: view for view in page.views}
    plots = {Path(paths.fill(paths.REPORT_PLOT, config, **cell)).name for cell in paths.plot_cells(config)}
    assert {"tables.html", *plots} <= set(views), sorted(views)
    assert "Random-ICD baseline" in views["tables.html"].text
    for name in plots:
        images = [image for image in views[name].images if f"filename={name};" in image.src]
        assert len(images) == 1 and images[0].loaded, name
