"""Bootstrap intervals and paired differences (lever_lm.stats) on known answers."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest

from lever_lm.stats import Interval, UncertaintyConfig, bootstrap_mean, paired_difference, stable_key

CONFIG = UncertaintyConfig.from_config(None)


def test_config_defaults_and_validation():
    assert UncertaintyConfig.from_config({}) == UncertaintyConfig(2000, 0, 0.95)
    assert UncertaintyConfig.from_config(None) == CONFIG
    assert UncertaintyConfig.from_config(
        {"name": "report", "bootstrap_resamples": 500, "bootstrap_seed": 3, "confidence": 0.9}
    ) == UncertaintyConfig(500, 3, 0.9)
    for bad in ({"confidence": 1.0}, {"bootstrap_resamples": 0}, {"bootstrap_seed": -1}, {"resamples": 10}):
        with pytest.raises(ValueError):
            UncertaintyConfig.from_config(bad)


def test_constant_values_give_a_zero_width_interval_without_warnings():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        interval = bootstrap_mean(np.full(50, 0.3), CONFIG, ("const",), scale=100.0)
    assert interval == Interval(30.0, 30.0, 30.0, 50)
    assert interval.significant == 1
    assert bootstrap_mean([1.0], CONFIG, ("one",)) == Interval(1.0, 1.0, 1.0, 1)


def test_a_cell_minus_itself_is_exactly_zero():
    scores = np.random.default_rng(1).random(200)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        difference = paired_difference(scores, scores, CONFIG, ("self",), scale=100.0)
    assert (difference.estimate, difference.low, difference.high) == (0.0, 0.0, 0.0)
    assert difference.significant == 0


def test_a_constant_shift_is_the_difference_with_a_zero_width_interval():
    a = np.random.default_rng(2).random(300) * 0.8
    difference = paired_difference(a + 0.1, a, CONFIG, ("shift",), scale=100.0)
    assert difference.estimate == pytest.approx(10.0, abs=1e-9)
    assert difference.low == difference.high == difference.estimate
    assert f"{difference.estimate:.2f}" == "10.00"
    assert difference.significant == 1
    assert paired_difference(a, a + 0.1, CONFIG, ("shift",), scale=100.0).significant == -1


def test_binary_interval_matches_the_normal_approximation():
    rng = np.random.default_rng(3)
    values = (rng.random(400) < 0.4).astype(float)
    interval = bootstrap_mean(values, CONFIG, ("binary",), scale=100.0)
    mean = values.mean() * 100
    half = 1.96 * math.sqrt(values.mean() * (1 - values.mean()) / len(values)) * 100
    assert interval.estimate == pytest.approx(mean)
    assert interval.low < mean < interval.high
    assert interval.low == pytest.approx(mean - half, abs=1.0)
    assert interval.high == pytest.approx(mean + half, abs=1.0)


def test_same_seed_and_key_give_the_same_interval_and_others_differ():
    values = np.random.default_rng(4).random(100)
    first = bootstrap_mean(values, CONFIG, ("cell", 1))
    assert bootstrap_mean(values, CONFIG, ("cell", 1)) == first
    assert bootstrap_mean(values, UncertaintyConfig.from_config({"bootstrap_seed": 1}), ("cell", 1)) != first
    assert bootstrap_mean(values, CONFIG, ("cell", 2)) != first
    assert stable_key("cell", 1) == stable_key("cell", 1) != stable_key("cell", 2)
    assert stable_key("a") == 14608863320967583690  # the same in every process (no salted hash())


def test_confidence_and_resamples_are_used():
    values = np.random.default_rng(5).random(200)
    wide = bootstrap_mean(values, UncertaintyConfig(500, 0, 0.99), ("c",))
    narrow = bootstrap_mean(values, UncertaintyConfig(500, 0, 0.5), ("c",))
    assert wide.high - wide.low > 2 * (narrow.high - narrow.low)


def test_clear_wins_and_losses_are_significant_and_noise_is_not():
    rng = np.random.default_rng(6)
    base = (rng.random(300) < 0.5).astype(float)
    better = np.where(rng.random(300) < 0.3, 1.0, base)  # flips some wrong answers to right ones
    assert paired_difference(better, base, CONFIG, ("win",)).significant == 1
    assert paired_difference(base, better, CONFIG, ("loss",)).significant == -1
    noise = rng.permutation(base)
    tie = paired_difference(noise, base, CONFIG, ("tie",))
    assert tie.low < 0 < tie.high and tie.significant == 0


def test_nan_values_give_no_interval_and_no_warning():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        interval = bootstrap_mean([0.5, math.nan, 0.2], CONFIG, ("nan",), scale=100.0)
        empty = bootstrap_mean([], CONFIG, ("empty",))
        paired = paired_difference([math.nan] * 3, [0.1, 0.2, 0.3], CONFIG, ("nan",))
    for result in (interval, empty, paired):
        assert math.isnan(result.estimate) and math.isnan(result.low) and math.isnan(result.high)
        assert not result.defined and result.significant == 0
    assert interval.n == 3 and empty.n == 0
    with pytest.raises(ValueError, match="same length"):
        paired_difference([1.0, 2.0], [1.0], CONFIG, ("short",))
