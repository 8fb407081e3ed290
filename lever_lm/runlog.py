"""Logging for workflow scripts: to the rule's ``log:`` file and to the terminal, since Snakemake redirects nothing."""

from __future__ import annotations

import contextlib
import logging
import sys
import time
from pathlib import Path
from typing import Iterator

LOG_FORMAT = "%(asctime)s %(levelname)s [%(name)s] %(message)s"


@contextlib.contextmanager
def script_logging(log_path: str | None, job: str) -> Iterator[logging.Logger]:
    """Route `logging` to ``log_path`` and stderr for the duration of a job; log the failure, then re-raise."""
    root = logging.getLogger()
    root.setLevel(logging.INFO)
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if log_path:
        Path(log_path).parent.mkdir(parents=True, exist_ok=True)
        handlers.append(logging.FileHandler(log_path, mode="w", encoding="utf-8"))
    for handler in handlers:
        handler.setFormatter(logging.Formatter(LOG_FORMAT))
        root.addHandler(handler)
    logger = logging.getLogger(job)
    started = time.monotonic()
    try:
        yield logger
        logger.info("done in %.1f s", time.monotonic() - started)
    except BaseException:
        logger.exception("failed after %.1f s", time.monotonic() - started)
        raise
    finally:
        for handler in handlers:
            root.removeHandler(handler)
            handler.close()
