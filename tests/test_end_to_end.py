"""End-to-end tier: the embedded default config runs from scratch, and a second plan has nothing left to do."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from lever_lm import paths as P
from lever_lm.config import load_config

REPO = Path(__file__).resolve().parents[1]
SNAKEMAKE = str(Path(sys.executable).parent / "snakemake")


@pytest.mark.slow
def test_default_pipeline_runs_end_to_end(tmp_path):
    command = [SNAKEMAKE, "--snakefile", str(REPO / "Snakefile"), "--configfile", str(REPO / "config.yaml"),
               "--directory", str(tmp_path), "--cores", "2"]
    run = subprocess.run(command, capture_output=True, text=True, timeout=3600)
    assert run.returncode == 0, run.stderr[-5000:]

    config = load_config(REPO / "config.yaml")
    for target in P.all_targets(config):
        assert (tmp_path / target).is_file(), target

    anchors = json.loads((tmp_path / P.fill(P.ANCHORS, config)).read_text())["anchors"]
    assert len(anchors) == config["anchors"]["sample_num"]
    beam_size, shots = config["beam_search"]["beam_size"], config["beam_search"]["shot_num"]
    for sampler in config["samplers"]:
        candidates = json.loads((tmp_path / P.fill(P.CANDIDATES, config, sampler=sampler)).read_text())
        for beam_model in config["beam_models"]:
            beams = json.loads((tmp_path / P.fill(P.BEAMS, config, sampler=sampler, beam_model=beam_model)).read_text())
            assert beams["params"]["beam_model"] == beam_model and beams["params"]["sampler"] == sampler
            assert [record["anchor_id"] for record in beams["anchors"]] == anchors
            for record in beams["anchors"]:
                pool = set(candidates["candidates"][str(record["anchor_id"])])
                assert len(record["sequences"]) == beam_size
                assert all(len(seq) == shots and set(seq) <= pool for seq in record["sequences"])
                assert record["scores"] == sorted(record["scores"], reverse=True)
                assert [steps[-1] for steps in record["step_scores"]] == record["scores"]

    plan = subprocess.run(command + ["-n"], capture_output=True, text=True, timeout=600)
    assert plan.returncode == 0
    assert "Nothing to be done" in plan.stdout + plan.stderr
    records = yaml.safe_load((REPO / "config.yaml").read_text())["dataset"]
    assert (tmp_path / records["root"] / "train2014").is_dir()
