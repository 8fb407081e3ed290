"""What a job pins so that two runs give the same bytes: ``pin(threads)`` for a job script, ``deterministic(threads)``
(the same, undone on exit) around a library entry point.

- ``torch.use_deterministic_algorithms(True, warn_only=True)``: deterministic kernels where torch has them; an op
  without one warns in the job log instead of failing a 10-hour job (CPU kernels are deterministic already);
- ``CUBLAS_WORKSPACE_CONFIG=:4096:8`` (unless set): what cuBLAS needs for reproducible matmuls; it is read when
  CUDA starts, so pin before a model is loaded;
- cuDNN autotuning off (it may pick another kernel in another run);
- the intra-op thread count, when given (a float sum split over another number of threads may differ in the
  last bit, so identical bytes hold for identical thread counts).
Seeds are not set here: each stage seeds its own generators from the config.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator


def pin(threads: int | None = None) -> None:
    import torch

    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.backends.cudnn.benchmark = False
    if threads is not None:
        torch.set_num_threads(max(1, int(threads)))


@contextlib.contextmanager
def deterministic(threads: int | None = None) -> Iterator[None]:
    """``pin(threads)`` for the block; torch's previous settings are restored after it (tests share a process)."""
    import torch

    saved = (
        torch.are_deterministic_algorithms_enabled(),
        torch.is_deterministic_algorithms_warn_only_enabled(),
        torch.backends.cudnn.benchmark,
        torch.get_num_threads(),
    )
    pin(threads)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(saved[0], warn_only=saved[1])
        torch.backends.cudnn.benchmark = saved[2]
        torch.set_num_threads(saved[3])
