"""Logging for workflow scripts: to the rule's ``log:`` file and to the terminal, since Snakemake redirects nothing.

A failing job writes its full traceback to the log file only. On the terminal, a user-input error
(``lever_lm.errors.InputError``: bad data, config or weights) is one line naming the culprit, and the job exits
with status 1; any other exception is a bug, and Python prints its traceback once.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from lever_lm.errors import InputError, one_line

LOG_FORMAT = "%(asctime)s %(levelname)s [%(name)s] %(message)s"
#: allocations between young-generation collections in a job (CPython's default: 700). Importing torch with
#: transformers or open_flamingo makes ~400k long-lived objects, and at the default the collector ran over them again
#: and again: 1.1 s of a 4.4 s import (measured, one core); at this threshold 0.2 s, and cycles are still collected
JOB_GC_THRESHOLD = 100_000


def _not_file_only(record: logging.LogRecord) -> bool:
    return not getattr(record, "file_only", False)


def quiet_loggers(*names: str, level: int = logging.WARNING) -> None:
    """Raise the level of chatty third-party loggers (faiss's loader logs each SIMD variant it tries at INFO)."""
    for name in names:
        logging.getLogger(name).setLevel(level)


@contextlib.contextmanager
def script_logging(log_path: str | None, job: str) -> Iterator[logging.Logger]:
    """Route `logging` to ``log_path`` and stderr for the duration of a job.

    On failure the traceback goes to ``log_path``; an ``InputError`` then prints one line to stderr and exits
    with status 1 (``SystemExit``), anything else is re-raised (Python prints the traceback once).

    Garbage collection is tuned for a short-lived job process: rarer young collections during the job
    (``JOB_GC_THRESHOLD``), and at its end every object is frozen (``gc.freeze``), so the interpreter's exit does not
    collect the modules' objects one more time (1.4 s -> 0.2 s after torch and open_flamingo, measured). The job's
    outputs are written and closed by then; the log handlers are closed here.
    """
    root = logging.getLogger()
    root.setLevel(logging.INFO)
    quiet_loggers("faiss", "faiss.loader")
    terminal = logging.StreamHandler(sys.stderr)
    terminal.addFilter(_not_file_only)
    handlers: list[logging.Handler] = [terminal]
    if log_path:
        Path(log_path).parent.mkdir(parents=True, exist_ok=True)
        handlers.append(logging.FileHandler(log_path, mode="w", encoding="utf-8"))
    for handler in handlers:
        handler.setFormatter(logging.Formatter(LOG_FORMAT))
        root.addHandler(handler)
    logger = logging.getLogger(job)
    started = time.monotonic()
    thresholds = gc.get_threshold()
    gc.set_threshold(JOB_GC_THRESHOLD, *thresholds[1:])
    try:
        yield logger
        logger.info("done in %.1f s", time.monotonic() - started)
    except InputError as err:
        logger.error("failed after %.1f s", time.monotonic() - started, exc_info=True, extra={"file_only": True})
        print(f"{type(err).__name__} in {job}: {one_line(err)}", file=sys.stderr, flush=True)
        raise SystemExit(1) from None
    except BaseException:
        logger.error("failed after %.1f s", time.monotonic() - started, exc_info=True, extra={"file_only": True})
        raise
    finally:
        for handler in handlers:
            root.removeHandler(handler)
            handler.close()
        gc.set_threshold(*thresholds)
        gc.freeze()
