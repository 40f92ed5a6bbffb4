"""Paired bootstrap differences of accuracy: known cases, reproducibility, and the mean over strata."""

from __future__ import annotations

import numpy as np
import pytest

from edgeclip.bench.paired import MEAN, paired_difference, paired_differences


def test_identical_runs_have_a_zero_interval() -> None:
    rng = np.random.default_rng(1)
    a = rng.random(200) < 0.6
    d = paired_difference(a, a)
    assert (d.diff, d.lo, d.hi) == (0.0, 0.0, 0.0)
    assert not d.significant and d.verdict == "no significant difference"


def test_always_right_against_always_wrong_is_plus_100() -> None:
    d = paired_difference([True] * 50, [False] * 50)
    assert (d.diff, d.lo, d.hi) == (100.0, 100.0, 100.0) and d.significant and d.verdict == "beats"
    worse = paired_difference([False] * 50, [True] * 50)
    assert worse.diff == -100.0 and worse.verdict == "worse"


def _pair(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.random(n) < 0.62, rng.random(n) < 0.55


def test_interval_shrinks_with_more_frames() -> None:
    widths = []
    for n in (64, 256, 1024, 4096):
        a, b = _pair(n, seed=3)
        d = paired_difference(a, b)
        assert d.lo <= d.diff <= d.hi
        widths.append(d.hi - d.lo)
    assert widths == sorted(widths, reverse=True)
    assert widths[-1] < 0.6 * widths[0] / 2  # roughly 1 / sqrt(n): 8x the frames, under 0.3x the width


def test_pairing_matters() -> None:
    # b is a with 10 frames flipped to wrong: a paired interval is tight and above zero
    rng = np.random.default_rng(5)
    a = rng.random(400) < 0.5
    b = a.copy()
    b[np.flatnonzero(a)[:10]] = False
    d = paired_difference(a, b)
    assert d.diff == pytest.approx(2.5) and d.lo > 0 and d.significant


def test_seeded_and_reproducible() -> None:
    a, b = _pair(300, seed=7)
    assert paired_difference(a, b, seed=0) == paired_difference(a, b, seed=0)
    assert paired_difference(a, b, seed=0).diff == paired_difference(a, b, seed=1).diff
    assert paired_difference(a, b, level=0.5).hi - paired_difference(a, b, level=0.5).lo < (
        paired_difference(a, b).hi - paired_difference(a, b).lo)


def test_strata_and_their_mean() -> None:
    a1, b1 = _pair(200, seed=11)
    a2, b2 = _pair(100, seed=12)
    out = paired_differences({"clean": a1, "blur": a2}, {"clean": b1, "blur": b2}, n_resamples=2000)
    assert list(out) == ["clean", "blur", MEAN]
    assert out["clean"].diff == pytest.approx(100 * (a1.mean() - b1.mean()))
    assert out[MEAN].diff == pytest.approx((out["clean"].diff + out["blur"].diff) / 2)
    assert out[MEAN].n == 300 and out[MEAN].lo <= out[MEAN].diff <= out[MEAN].hi
    # the mean of two strata is less noisy than the smaller one alone
    assert out[MEAN].hi - out[MEAN].lo < out["blur"].hi - out["blur"].lo


def test_bad_input() -> None:
    with pytest.raises(ValueError, match="same frames"):
        paired_difference([True, False], [True])
    with pytest.raises(ValueError, match="strata"):
        paired_differences({"a": [True]}, {"b": [True]})
    with pytest.raises(ValueError, match="no frames"):
        paired_difference([], [])
    with pytest.raises(ValueError, match="level"):
        paired_difference([True], [True], level=1.5)
