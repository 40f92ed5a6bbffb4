"""`ratio_with_spread`: the point it reports always lies inside its own spread."""

from __future__ import annotations

import numpy as np
import pytest

from edgeclip.bench.timing import TimingStats, ratio_with_spread


@pytest.mark.parametrize("paired", [True, False])
def test_point_always_within_its_spread(paired: bool) -> None:
    rng = np.random.default_rng(0)
    for _ in range(500):
        n = int(rng.integers(1, 12))
        base = rng.lognormal(0.0, 1.0, size=n)
        # heavy, skewed noise: the ratio of medians can fall outside the per-round ratios' 10-90 % range
        a = TimingStats.from_samples(list(base * rng.lognormal(0.0, 0.6, size=n)))
        b = TimingStats.from_samples(list(base * rng.lognormal(0.3, 0.6, size=n)))
        r = ratio_with_spread(a, b, paired=paired)
        assert r["ratio_lo"] <= r["ratio"] <= r["ratio_hi"], (a.samples_ms, b.samples_ms, r)


def test_the_old_inconsistency_is_gone() -> None:
    # a case where the ratio of medians (1.5) lies above the 90th percentile of the per-round ratios
    a = TimingStats.from_samples([1.0, 2.0, 10.0])
    b = TimingStats.from_samples([1.2, 3.0, 12.0])
    r = ratio_with_spread(a, b, paired=True)
    assert r["ratio_of_medians"] == pytest.approx(1.5) and r["ratio_hi"] < 1.5
    assert r["ratio"] == pytest.approx(1.2) and r["ratio_lo"] <= r["ratio"] <= r["ratio_hi"]


def test_paired_ratio_is_the_median_of_per_round_ratios() -> None:
    a = TimingStats.from_samples([10.0, 20.0, 30.0, 40.0, 50.0])
    b = TimingStats.from_samples([20.0, 30.0, 90.0, 80.0, 60.0])
    r = ratio_with_spread(a, b, paired=True)
    assert r["ratio"] == pytest.approx(float(np.median([2.0, 1.5, 3.0, 2.0, 1.2])))
    assert r["ratio_p90"] == pytest.approx(b.p90_ms / a.p90_ms)
