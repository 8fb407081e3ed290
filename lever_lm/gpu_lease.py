"""Pick a free GPU for a local job before CUDA starts.

Snakemake's ``resources: gpu=1`` limits how many GPU jobs run at once but never says *which* GPU a job gets
(snakemake issue #281). A job therefore takes a non-blocking ``flock`` on ``<lock_dir>/gpu{i}.lock`` for the
first free i and exports ``CUDA_VISIBLE_DEVICES=i``. When a scheduler (SLURM) or the user already set
``CUDA_VISIBLE_DEVICES``, it is left alone. Machines without GPUs get no lease.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

DEFAULT_LOCK_DIR = ".gpu_locks"
log = logging.getLogger(__name__)


def count_gpus() -> int:
    """GPUs visible to nvidia-smi, without initialising CUDA in this process."""
    if shutil.which("nvidia-smi") is None:
        return 0
    try:
        listing = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=30, check=True).stdout
    except (subprocess.SubprocessError, OSError):
        return 0
    return sum(1 for line in listing.splitlines() if line.startswith("GPU "))


@contextlib.contextmanager
def gpu_lease(lock_dir: str | os.PathLike = DEFAULT_LOCK_DIR, n_gpus: int | None = None) -> Iterator[str | None]:
    """Hold one GPU for the block; yields the device id exported, or None when nothing was leased."""
    if os.environ.get("CUDA_VISIBLE_DEVICES") is not None:
        yield os.environ["CUDA_VISIBLE_DEVICES"]
        return
    total = count_gpus() if n_gpus is None else n_gpus
    if total == 0:
        yield None
        return
    Path(lock_dir).mkdir(parents=True, exist_ok=True)
    for gpu in range(total):
        handle = open(Path(lock_dir) / f"gpu{gpu}.lock", "w")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            continue
        os.environ["CUDA_VISIBLE_DEVICES"] = str(gpu)
        log.info("leased GPU %d (lock %s)", gpu, handle.name)
        try:
            yield str(gpu)
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
            handle.close()
        return
    raise RuntimeError(
        f"all {total} GPUs are leased by other jobs (locks in {lock_dir}); run snakemake with --resources gpu={total}"
    )
