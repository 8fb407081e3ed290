"""Progress lines for long loops (beam-search shards), emitted through ``logging``.

    reporter = ProgressReporter(total=400, label="anchors", interval_s=30, log=logger, already_done=12)
    for ...:
        reporter.advance()          # logs at most once every ``interval_s`` seconds
    reporter.finish()               # always logs the final line

A line reads ``anchors 37/400 (9.2%) | 0.84 anchors/s | ETA 7m12s``. The rate counts only items done in
this process, so a resumed run does not report the skipped items as instantaneous work.
Workflow scripts route `logging` to the rule's log file and the terminal with ``lever_lm.runlog.script_logging``.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable


def format_duration(seconds: float) -> str:
    """Compact duration: ``45s``, ``7m12s``, ``3h05m``; ``?`` when unknown (infinite or NaN)."""
    if not math.isfinite(seconds) or seconds < 0:
        return "?"
    total = int(round(seconds))
    hours, rest = divmod(total, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m"
    if minutes:
        return f"{minutes}m{secs:02d}s"
    return f"{secs}s"


class ProgressReporter:
    """Counts finished items and logs ``label done/total (pct) | rate | ETA`` at most every ``interval_s``."""

    def __init__(
        self,
        total: int,
        label: str = "items",
        interval_s: float = 30.0,
        log: logging.Logger | None = None,
        already_done: int = 0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if total < 0 or already_done < 0 or already_done > total:
            raise ValueError(f"progress: need 0 <= already_done ({already_done}) <= total ({total})")
        if interval_s < 0:
            raise ValueError(f"progress: interval_s must be >= 0, got {interval_s}")
        self.total = total
        self.label = label
        self.interval_s = interval_s
        self.log = log or logging.getLogger("lever_lm.progress")
        self.done = already_done
        self._done_at_start = already_done
        self._clock = clock
        self._started = clock()
        self._last_emit = self._started

    def line(self) -> str:
        """The current progress line (also what gets logged)."""
        elapsed = self._clock() - self._started
        done_here = self.done - self._done_at_start
        rate = done_here / elapsed if elapsed > 0 else float("nan")
        remaining = self.total - self.done
        if remaining == 0:
            eta = 0.0
        elif done_here > 0 and rate > 0:
            eta = remaining / rate
        else:
            eta = float("nan")
        pct = 100.0 * self.done / self.total if self.total else 100.0
        rate_text = f"{rate:.2f}" if math.isfinite(rate) else "?"
        return (
            f"{self.label} {self.done}/{self.total} ({pct:.1f}%) | {rate_text} {self.label}/s "
            f"| ETA {format_duration(eta)}"
        )

    def advance(self, count: int = 1) -> None:
        """Record ``count`` more finished items; log if ``interval_s`` has passed since the last line."""
        self.done = min(self.total, self.done + count)
        now = self._clock()
        if now - self._last_emit >= self.interval_s:
            self._last_emit = now
            self.log.info(self.line())

    def finish(self) -> None:
        """Log the final line unconditionally."""
        self._last_emit = self._clock()
        self.log.info(self.line())
