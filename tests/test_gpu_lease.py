"""GPU leases: concurrent jobs on a machine with N (faked) GPUs get distinct ids, and a killed job frees its GPU."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from lever_lm.gpu_lease import gpu_lease

# One job: lease a GPU among `n_gpus` lock slots, report it, then hold it until killed or told to stop.
JOB = """
import sys, time
from lever_lm.gpu_lease import gpu_lease
with gpu_lease(sys.argv[1], n_gpus=int(sys.argv[2])) as gpu:
    print(gpu, flush=True)
    time.sleep(float(sys.argv[3]))
"""


def start_job(lock_dir: Path, n_gpus: int, hold_s: float = 120.0) -> subprocess.Popen:
    env = {key: value for key, value in os.environ.items() if key != "CUDA_VISIBLE_DEVICES"}
    return subprocess.Popen(
        [sys.executable, "-c", JOB, str(lock_dir), str(n_gpus), str(hold_s)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


def leased_gpu(job: subprocess.Popen) -> str:
    line = job.stdout.readline().strip()
    assert line, job.stderr.read()
    return line


def test_concurrent_jobs_get_distinct_gpus_and_a_killed_job_frees_its_gpu(tmp_path):
    n_gpus = 3
    jobs = [start_job(tmp_path, n_gpus) for _ in range(n_gpus)]
    try:
        gpus = [leased_gpu(job) for job in jobs]
        assert sorted(gpus) == ["0", "1", "2"]

        extra = start_job(tmp_path, n_gpus)
        assert extra.wait(timeout=60) != 0
        assert "all 3 GPUs are leased by other jobs" in extra.stderr.read()

        victim = gpus.index("1")
        jobs[victim].send_signal(signal.SIGKILL)
        jobs[victim].wait(timeout=30)
        replacement = start_job(tmp_path, n_gpus)
        jobs.append(replacement)
        assert leased_gpu(replacement) == "1"  # the kernel dropped the dead job's flock
    finally:
        for job in jobs:
            job.kill()
            job.wait(timeout=30)


def test_a_finished_job_returns_its_gpu(tmp_path):
    first = start_job(tmp_path, 1, hold_s=0)
    assert leased_gpu(first) == "0"
    assert first.wait(timeout=60) == 0
    second = start_job(tmp_path, 1, hold_s=0)
    assert leased_gpu(second) == "0"
    second.wait(timeout=60)


def test_leases_within_one_process_are_distinct(tmp_path, monkeypatch):
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    with gpu_lease(tmp_path, n_gpus=2) as first:
        saved = os.environ.pop("CUDA_VISIBLE_DEVICES")  # a second job in the same process, for the test
        with gpu_lease(tmp_path, n_gpus=2) as second:
            assert (first, second) == ("0", "1")
            os.environ.pop("CUDA_VISIBLE_DEVICES")
            with pytest.raises(RuntimeError, match="all 2 GPUs are leased"):
                with gpu_lease(tmp_path, n_gpus=2):
                    pass
        os.environ["CUDA_VISIBLE_DEVICES"] = saved


def test_gpu_lease_respects_scheduler_choice(tmp_path, monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3")
    with gpu_lease(tmp_path, n_gpus=4) as gpu:
        assert gpu == "3"
    assert not any(tmp_path.iterdir())


def test_gpu_lease_without_gpus_is_a_no_op(tmp_path, monkeypatch):
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    with gpu_lease(tmp_path, n_gpus=0) as gpu:
        assert gpu is None
        assert "CUDA_VISIBLE_DEVICES" not in os.environ
