"""Cluster tier: the workflow through a real SLURM (profiles/slurm), and the cluster-generic executor's plan.

The SLURM tests run where ``sbatch`` is present and the cluster answers (``.ci/run`` stands up a one-node, CPU-only
SLURM without accounting with ``scripts/local_slurm.sh``); elsewhere they are skipped. They use the profile as a
user of such a cluster would: ``--profile profiles/slurm --workflow-profile profiles/cpu-only`` (the CPU-only override).

The DAG is a reduced toy: 1 sampler, 8 anchors in 2 beam shards, one random-init tiny LVLM, one CLIP, selector v0,
8 inference queries, 2 baselines, the imitation ceiling on those 8 queries in 2 shards (23 jobs; 14 SLURM jobs once
grouped, the two gathers and the report run locally).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from lever_lm import paths
from lever_lm.config import load_config

REPO = Path(__file__).resolve().parents[1]
SNAKEMAKE = str(Path(sys.executable).parent / "snakemake")
SLURM_ARGS = ["--profile", str(REPO / "profiles" / "slurm"), "--workflow-profile", str(REPO / "profiles" / "cpu-only")]


def slurm_missing() -> str | None:
    """Why the SLURM tests cannot run here, or None when a cluster answers."""
    if shutil.which("sbatch") is None:
        return "sbatch is absent (bash scripts/local_slurm.sh stands up a local SLURM as root)"
    try:
        states = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True, timeout=20).stdout
    except (OSError, subprocess.SubprocessError) as err:
        return f"sinfo failed: {err}"
    if not any(state.strip() in ("idle", "mixed", "allocated", "completing") for state in states.splitlines()):
        return f"the SLURM cluster does not answer with a usable node (sinfo: {states.strip() or 'nothing'})"
    return None


_SLURM_MISSING = slurm_missing()
needs_slurm = pytest.mark.skipif(_SLURM_MISSING is not None, reason=str(_SLURM_MISSING))


def reduced_config(directory: Path) -> Path:
    config = yaml.safe_load((REPO / "config.yaml").read_text())
    encoder = config["selector_encoder"]
    config["encoders"] = {encoder: config["encoders"][encoder]}
    config["sampler_encoder"] = encoder
    config["samplers"] = ["rand_sampler"]
    config["anchors"] = {"sample_num": 8, "seed": 42}
    config["beam_search"] = {**config["beam_search"], "shards": 2}
    model = "qwen2.5_vl_tiny"
    entry = dict(config["beam_models"][model])
    entry.pop("pretrain")  # random init: built in seconds instead of pretrained for minutes
    config["beam_models"] = {model: entry}
    config["versions"] = ["v0"]
    config["selector"]["epochs"] = 2
    config["inference"] = {
        **config["inference"],
        "shots": [1, 2],
        "max_queries": 8,
        "baselines": ["ZeroShot", "RandomRetriever"],
    }
    config["ceiling"] = {"max_queries": 8, "shards": 2}
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "slurm_config.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def snakemake_command(workdir: Path, config_path: Path, *args: str) -> list[str]:
    return [
        SNAKEMAKE,
        "--snakefile",
        str(REPO / "Snakefile"),
        "--configfile",
        str(config_path),
        "--directory",
        str(workdir),
        *args,
    ]


def beam_files(workdir: Path, config: dict) -> dict[str, bytes]:
    beam_dir = workdir / paths.fill(
        paths.BEAM_DIR, config, sampler="rand_sampler", beam_model=next(iter(config["beam_models"]))
    )
    files = sorted(beam_dir.glob("shards/*.jsonl")) + [beam_dir / "beams.json"]
    return {str(path.relative_to(beam_dir)): path.read_bytes() for path in files}


@pytest.fixture(scope="module")
def slurm_run(tmp_path_factory):
    """The reduced DAG from scratch through profiles/slurm, uninterrupted (the reference for the resume test)."""
    workdir = tmp_path_factory.mktemp("slurm_run")
    config_path = reduced_config(workdir)
    start = time.monotonic()
    run = subprocess.run(
        snakemake_command(workdir, config_path, *SLURM_ARGS), capture_output=True, text=True, timeout=900
    )
    return workdir, config_path, run, time.monotonic() - start


@pytest.mark.slow
@needs_slurm
def test_reduced_dag_runs_through_slurm(slurm_run):
    workdir, config_path, run, seconds = slurm_run
    output = run.stdout + run.stderr
    assert run.returncode == 0, output[-6000:]
    config = load_config(config_path)
    for target in paths.all_targets(config):
        assert (workdir / target).is_file(), target
    # 14 SLURM jobs: the small CPU rules in two group jobs, 2 beam and 2 ceiling shards, tiny_lvlm, train_selector,
    # 4 inference jobs and ceiling_inference; beam_gather, ceiling_gather and report run by the submitting Snakemake
    assert output.count("has been submitted with SLURM jobid") == 14, output[-6000:]
    assert "Group job prep" in output and "Group job sampling" in output
    beams = json.loads(
        (
            workdir
            / paths.fill(paths.BEAMS, config, sampler="rand_sampler", beam_model=next(iter(config["beam_models"])))
        ).read_text()
    )
    assert len(beams["anchors"]) == 8
    plan = subprocess.run(snakemake_command(workdir, config_path, "-n"), capture_output=True, text=True, timeout=300)
    assert plan.returncode == 0 and "Nothing to be done" in plan.stdout + plan.stderr
    print(f"reduced DAG through SLURM: {seconds:.0f} s")


def running_beam_shard(timeout_s: float, shard_dir: Path) -> tuple[str, Path]:
    """Wait for a running beam_shard SLURM job whose .partial file holds at least one finished anchor."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        jobs = subprocess.run(
            ["squeue", "-h", "-t", "RUNNING", "-o", "%i|%k"], capture_output=True, text=True, timeout=20
        ).stdout
        # the plugin's job comment is rule_<rule>_wildcards_<wildcards joined by _>, the scatter item last
        running = dict(reversed(line.split("|", 1)) for line in jobs.splitlines() if "rule_beam_shard" in line)
        for partial in shard_dir.glob("*.jsonl.partial"):
            item = partial.name.removesuffix(".jsonl.partial")
            job_id = next((job for comment, job in running.items() if comment.endswith(f"_{item}")), None)
            if job_id and len(partial.read_bytes().splitlines()) >= 2:  # header + one anchor
                return job_id, partial
        time.sleep(0.1)
    raise AssertionError("no beam_shard job got to its first anchor in time")


@pytest.mark.slow
@needs_slurm
def test_scancel_of_a_beam_shard_resumes_to_identical_files(slurm_run, tmp_path):
    reference_dir, config_path, reference, _ = slurm_run
    assert reference.returncode == 0, (reference.stdout + reference.stderr)[-3000:]
    config = load_config(config_path)
    model = next(iter(config["beam_models"]))
    beam_dir = paths.fill(paths.BEAM_DIR, config, sampler="rand_sampler", beam_model=model)
    # everything upstream of the beam search, copied with its timestamps, so only the shards and the gather run
    shutil.copytree(
        reference_dir / paths.fill(paths.RESULTS, config),
        tmp_path / paths.fill(paths.RESULTS, config),
        ignore=lambda directory, names: ["beam"] if Path(directory).name == config["dataset"]["name"] else [],
    )
    beams_target = paths.fill(paths.BEAMS, config, sampler="rand_sampler", beam_model=model)
    command = snakemake_command(tmp_path, config_path, *SLURM_ARGS, beams_target)

    interrupted = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
    )
    try:
        job_id, partial = running_beam_shard(300, tmp_path / beam_dir / "shards")
        subprocess.run(["scancel", job_id], check=True, timeout=30)
        output, _ = interrupted.communicate(timeout=300)
    finally:
        if interrupted.poll() is None:
            os.killpg(interrupted.pid, signal.SIGINT)
            interrupted.wait(60)
    assert interrupted.returncode != 0, output[-3000:]
    assert job_id in output and "CANCELLED" in output, output[-3000:]
    final = partial.with_suffix("")  # <shard>.jsonl.partial -> <shard>.jsonl
    assert partial.is_file() and not final.exists(), "the cancelled shard must leave its .partial, not a shard"
    done_before = len(partial.read_bytes().splitlines()) - 1
    assert 1 <= done_before
    print(f"scancel after {done_before} anchor(s) of the shard; the rerun resumed from there")

    resumed = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, (resumed.stdout + resumed.stderr)[-6000:]
    shard_log = (tmp_path / "logs" / "beam_shard").glob(f"*{final.stem}.log")
    assert any(f"{done_before} done before" in log.read_text() for log in shard_log)
    assert beam_files(tmp_path, config) == beam_files(reference_dir, config)


def test_cluster_generic_profile_plans_the_toy_matrix(tmp_path):
    """Other schedulers go through the cluster-generic executor; its profile loads and plans every job."""
    profile = REPO / "profiles" / "cluster-generic"
    result = subprocess.run(
        [
            SNAKEMAKE,
            "--snakefile",
            str(REPO / "Snakefile"),
            "--configfile",
            str(REPO / "config.yaml"),
            "--directory",
            str(tmp_path),
            "--profile",
            str(profile),
            "-n",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-3000:]
    assert "cluster-generic" in yaml.safe_load((profile / "config.yaml").read_text())["executor"]
    assert "beam_shard" in output and "total" in output


def test_every_rule_has_its_own_resources_and_cpu_only_covers_every_gpu_rule():
    """lever_lm/resources.py sizes every rule; profiles/cpu-only zeroes the GPU of every rule that asks for one."""
    from lever_lm import resources as R

    rules, gpu_rules = set(), set()
    for smk in (REPO / "rules").glob("*.smk"):
        for block in re.split(r"\n\s*rule ", "\n" + smk.read_text())[1:]:
            name = block.split(":")[0].strip()
            rules.add(name)
            assert f'RULE_RESOURCES.mem_mb("{name}")' in block and f'RULE_RESOURCES.runtime("{name}")' in block, name
            if re.search(r"^\s+gpu=1,", block, flags=re.M):
                gpu_rules.add(name)
    assert rules == set(R.RULES)
    assert gpu_rules == {
        "embeddings",
        "beam_shard",
        "train_selector",
        "icl_inference",
        "baseline_inference",
        "ceiling_shard",
        "ceiling_inference",
    }
    cpu_only = yaml.safe_load((REPO / "profiles" / "cpu-only" / "config.yaml").read_text())["set-resources"]
    assert cpu_only == {rule: {"gpu": 0} for rule in gpu_rules}
    # a 24 GB node takes every toy job, and a group job runs at most `cores` (2) members side by side
    assert 2 * max(need.mem_mb for need in R.TOY.values()) <= 24000
    assert (
        R.need(load_config(REPO / "config.yaml"), "beam_shard", {"beam_model": "flamingo_tiny"}) == R.TOY["beam_shard"]
    )
    real = yaml.safe_load((REPO / "configs" / "okvqa_local.yaml").read_text())
    assert R.need(real, "beam_shard", {"beam_model": "flamingo_3B"}) == R.REAL["beam_shard"]
    assert R.need(real, "embeddings", {"encoder": "clip_vit_l14"}) == R.REAL["embeddings"]
    assert R.need(real, "records", {"split": "train"}) == R.REAL["records"]
