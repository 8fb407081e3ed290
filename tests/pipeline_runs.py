"""Real `snakemake` runs of a reduced toy config, shared by the determinism and kill/resume tests.

``reduced_config`` shrinks the toy default so that one clean run takes about a minute and a half on two cores
while keeping every stage and both LVLM families: 180 train / 36 val questions, 16 anchors in 2 beam-search shards
of 8, beams of 2 over 8 candidates, one sampler, tiny LVLMs pretrained for 10 steps (the pretraining code runs,
briefly), selectors v0 and v4 (so v3 trains too), the RandomRetriever baseline, the imitation ceiling (every val
question, 2 shards), and the report.
Epochs and inference batches are set so that a selector job and an inference job each last long enough
(about a second of real work) to be caught mid-way by a watcher.
"""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import yaml

from lever_lm import paths

REPO = Path(__file__).resolve().parents[1]
SNAKEMAKE = str(Path(sys.executable).parent / "snakemake")


def reduced_config(beam_models: tuple[str, ...] | None = None) -> dict:
    config = yaml.safe_load((REPO / "config.yaml").read_text())
    config["dataset"]["toy"].update(train_images=60, val_images=12)
    config["sampler_encoder"] = config["selector_encoder"]  # one encoder: two embedding jobs fewer
    config["anchors"]["sample_num"] = 16
    config["candidates"]["cand_num"] = 8
    config["samplers"] = ["rand_sampler"]
    for entry in config["beam_models"].values():
        entry["pretrain"].update(steps=10, batch_size=8, warmup_steps=2)
    if beam_models is not None:
        config["beam_models"] = {name: config["beam_models"][name] for name in beam_models}
    config["beam_search"].update(beam_size=2, shot_num=2, shards=2)
    config["versions"] = ["v0", "v4"]
    config["selector"]["epochs"] = 12
    config["selector"]["rl"].update(rce_epochs=3, grpo_epochs=3)
    config["inference"].update(shots=[1, 2], batch_size=4, baselines=["RandomRetriever"])
    return config


def write_config(workdir: Path, config: dict) -> Path:
    workdir.mkdir(parents=True, exist_ok=True)
    path = workdir / "config.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def snakemake_command(workdir: Path, *extra: str) -> list[str]:
    return [
        SNAKEMAKE,
        "--snakefile",
        str(REPO / "Snakefile"),
        "--configfile",
        str(workdir / "config.yaml"),
        "--directory",
        str(workdir),
        "--cores",
        "2",
        *extra,
    ]


def run_snakemake(workdir: Path, *extra: str, timeout: float = 1200) -> subprocess.CompletedProcess:
    run = subprocess.run(snakemake_command(workdir, *extra), capture_output=True, text=True, timeout=timeout)
    assert run.returncode == 0, (run.stdout + run.stderr)[-5000:]
    return run


def clean_run(workdir: Path, config: dict) -> Path:
    write_config(workdir, config)
    run_snakemake(workdir)
    return workdir


def kill_when(
    workdir: Path, ready: Callable[[], object], *extra: str, timeout: float = 600, poll_s: float = 0.01
) -> object:
    """Start `snakemake` in its own process group, wait until ``ready()`` returns something truthy, SIGKILL the
    whole group at once (Snakemake and every job: nothing gets to clean up), and return what ``ready`` saw.
    Fails if the run ends before ``ready`` is seen."""
    log = open(workdir / f"killed_run_{time.monotonic_ns()}.log", "w")
    proc = subprocess.Popen(
        snakemake_command(workdir, *extra), stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            seen = ready()
            if seen:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=60)
                _wait_group_gone(proc.pid)
                return seen
            if proc.poll() is not None:
                raise AssertionError(f"snakemake ended (rc {proc.returncode}) before the kill point; see {log.name}")
            time.sleep(poll_s)
        raise AssertionError(f"kill point not reached in {timeout} s; see {log.name}")
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()


def _wait_group_gone(pgid: int, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.05)
    raise AssertionError(f"process group {pgid} still alive after SIGKILL")


def complete_lines(path: Path) -> int:
    try:
        return path.read_bytes().count(b"\n")
    except FileNotFoundError:
        return 0


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def compared_artifacts(config: dict) -> list[str]:
    """The final artifacts two runs must agree on byte for byte (relative paths): beams, selector checkpoints and
    metrics, predictions and metrics of every cell and baseline, the imitation ceiling's beams, metrics and
    predictions, and the report's tables, overlap csv and plots."""
    out = []
    for sampler in config["samplers"]:
        for beam_model in config["beam_models"]:
            out.append(paths.fill(paths.BEAMS, config, sampler=sampler, beam_model=beam_model))
    for cell in paths.selector_cells(config):
        trained = [cell] + ([{**cell, "version": "v3"}] if cell["version"] == "v4" else [])
        for each in trained:
            out += [
                paths.fill(t, config, **each)
                for t in (paths.SELECTOR_METRICS, paths.SELECTOR_BEST, paths.SELECTOR_LAST)
            ]
        out += [paths.fill(t, config, **cell) for t in (paths.INFERENCE_METRICS, paths.INFERENCE_PREDICTIONS)]
    for cell in paths.baseline_cells(config):
        out += [paths.fill(t, config, **cell) for t in (paths.BASELINE_METRICS, paths.BASELINE_PREDICTIONS)]
    for cell in paths.ceiling_cells(config):
        out += [
            paths.fill(t, config, **cell)
            for t in (paths.CEILING_BEAMS, paths.CEILING_METRICS, paths.CEILING_PREDICTIONS)
        ]
    return sorted(dict.fromkeys(out))


def report_artifacts(config: dict) -> list[str]:
    return [
        paths.fill(paths.REPORT_TABLES, config),
        paths.fill(paths.REPORT_TABLES_HTML, config),
        paths.fill(paths.REPORT_OVERLAP, config),
        *(paths.fill(paths.REPORT_PLOT, config, **cell) for cell in paths.plot_cells(config)),
    ]


def hashes(workdir: Path, relative: list[str]) -> dict[str, str]:
    return {name: sha256(workdir / name) for name in relative}
