"""Bootstrap intervals over val questions: one score's interval, and the paired difference of two scores.

docs/stages.md stage 6, Uncertainty: every reported score carries a percentile bootstrap interval over questions
(resampling questions, seeded), and two cells are compared on the same questions through the bootstrap of their
per-question differences; a difference is significant when its interval excludes 0. ``scipy.stats.bootstrap`` does the
resampling. Each interval draws from its own generator, seeded by the configured seed and a stable key naming
what is estimated, so an interval does not depend on which other intervals were computed before it.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

# values closer than this (relative to their magnitude) count as identical: the interval is the point itself
DEGENERATE_RTOL = 1e-9
# resampled values held in memory at once (n_resamples x n is split into batches of about this size)
BATCH_VALUES = 4_000_000


@dataclass(frozen=True)
class UncertaintyConfig:
    """The config's ``report`` section: how the bootstrap intervals are drawn (its ``name`` is the report's folder,
    not read here)."""

    bootstrap_resamples: int  # defaults and bounds: the config schema's (``from_config``)
    bootstrap_seed: int
    confidence: float

    @classmethod
    def from_config(cls, section: Mapping[str, Any] | None) -> UncertaintyConfig:
        """From ``config["report"]`` (None: all defaults), validated against the config schema with its defaults
        filled (``lever_lm.config.validate_section``); errors name the key: ``config key report.confidence: ...``."""
        from lever_lm.config import validate_section

        section = validate_section("report", section)
        return cls(
            bootstrap_resamples=int(section["bootstrap_resamples"]),
            bootstrap_seed=int(section["bootstrap_seed"]),
            confidence=float(section["confidence"]),
        )


@dataclass(frozen=True)
class Interval:
    """A mean with its bootstrap interval; ``low``/``high`` are NaN where no interval exists (NaN values)."""

    estimate: float
    low: float
    high: float
    n: int

    @property
    def defined(self) -> bool:
        return not (math.isnan(self.low) or math.isnan(self.high))

    @property
    def significant(self) -> int:
        """1 when the interval lies above 0, -1 when below, 0 when it contains 0 or is undefined."""
        if not self.defined:
            return 0
        return 1 if self.low > 0 else (-1 if self.high < 0 else 0)


def stable_key(*parts: Any) -> int:
    """A 64-bit integer naming ``parts``, the same in every process (unlike Python's salted ``hash``)."""
    text = "\x1f".join(str(part) for part in parts)
    return int.from_bytes(hashlib.sha256(text.encode("utf-8")).digest()[:8], "little")


def bootstrap_mean(
    values: Sequence[float] | Any, config: UncertaintyConfig, key: Sequence[Any], scale: float = 1.0
) -> Interval:
    """The mean of ``values`` × ``scale`` with its percentile bootstrap interval (resampling the values).

    ``key`` names what is estimated; with ``config.bootstrap_seed`` it seeds the resampling. Identical values
    give that value with a zero-width interval; any NaN (or no values) gives NaN throughout.
    """
    import numpy as np

    data = np.asarray(values, dtype=np.float64).ravel() * scale
    n = int(data.size)
    if n == 0 or np.isnan(data).any():
        return Interval(math.nan, math.nan, math.nan, n)
    mean = float(data.mean())
    if float(np.ptp(data)) <= DEGENERATE_RTOL * max(1.0, float(np.abs(data).max())):
        # scipy would resample a constant (and warn for some methods): the answer is known
        return Interval(mean, mean, mean, n)
    from scipy import stats

    seed = np.random.default_rng([config.bootstrap_seed, stable_key(*key)])
    result = stats.bootstrap(
        (data,),
        np.mean,
        n_resamples=config.bootstrap_resamples,
        batch=max(1, BATCH_VALUES // n),
        vectorized=True,
        confidence_level=config.confidence,
        method="percentile",
        rng=seed,
    )
    interval = result.confidence_interval
    return Interval(mean, float(interval.low), float(interval.high), n)


def paired_difference(
    first: Sequence[float] | Any,
    second: Sequence[float] | Any,
    config: UncertaintyConfig,
    key: Sequence[Any],
    scale: float = 1.0,
) -> Interval:
    """Mean of ``first - second`` (paired by position: the same questions) with its bootstrap interval.

    ``significant`` of the result is 1 when ``first`` is significantly higher, -1 when lower.
    """
    import numpy as np

    a = np.asarray(first, dtype=np.float64).ravel()
    b = np.asarray(second, dtype=np.float64).ravel()
    if a.shape != b.shape:
        raise ValueError(f"paired values need the same length, got {a.size} and {b.size}")
    return bootstrap_mean(a - b, config, ("paired", *key), scale)
