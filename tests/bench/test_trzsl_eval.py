"""TRZSL evaluation: the harmonic mean, its paired bootstrap difference, and a tiny CLI run."""

from __future__ import annotations

import json

import numpy as np
import pytest

from edgeclip.bench.trzsl_eval import checkerboard_seen, harmonic, harmonic_difference, mean_harmonic_difference
from edgeclip.cli import main
from edgeclip.data import shapes


def test_harmonic_mean_of_seen_and_unseen_accuracy() -> None:
    correct = np.array([1, 1, 0, 1, 0, 0], bool)
    seen = np.array([1, 1, 1, 0, 0, 0], bool)
    s, u, h = harmonic(correct, seen)
    assert (s, u) == pytest.approx((200 / 3, 100 / 3)) and h == pytest.approx(2 * s * u / (s + u))


def test_harmonic_difference_interval_contains_the_point_and_excludes_zero_for_a_clear_win() -> None:
    rng = np.random.default_rng(0)
    seen = rng.random(400) < 0.5
    b = rng.random(400) < 0.5
    a = b | (rng.random(400) < 0.6)
    d = harmonic_difference(a, b, seen, n_resamples=500)
    assert d["lo"] <= d["diff"] <= d["hi"] and d["lo"] > 0
    same = harmonic_difference(b, b, seen, n_resamples=200)
    assert same["diff"] == 0 and same["lo"] == same["hi"] == 0
    with pytest.raises(ValueError, match="seen-class and unseen-class"):
        harmonic_difference(a, b, np.ones(400, bool))


def test_mean_over_shifts_resamples_within_each_shift() -> None:
    rng = np.random.default_rng(1)
    strata = []
    for gain in (0.6, 0.0):  # one shift with a clear win, one with none
        seen = rng.random(300) < 0.5
        b = rng.random(300) < 0.5
        strata.append((b | (rng.random(300) < gain), b, seen))
    d = mean_harmonic_difference(strata, n_resamples=400)
    per = [harmonic_difference(*s, n_resamples=400)["diff"] for s in strata]
    assert d["diff"] == pytest.approx(np.mean(per)) and d["lo"] <= d["diff"] <= d["hi"]
    # the interval of the mean is narrower than that of the winning shift alone, and still above zero
    alone = harmonic_difference(*strata[0], n_resamples=400)
    assert d["lo"] > 0 and d["hi"] - d["lo"] < alone["hi"] - alone["lo"]
    with pytest.raises(ValueError, match="no strata"):
        mean_harmonic_difference([])


def test_checkerboard_keeps_every_colour_and_shape_on_both_sides() -> None:
    names = shapes.class_names()
    seen = checkerboard_seen(names)
    unseen = [n for n in names if n not in seen]
    assert len(seen) == len(unseen) == 8
    for part in (seen, unseen):
        assert {n.split()[0] for n in part} == {n.split()[0] for n in names}
        assert {n.split()[1] for n in part} == {n.split()[1] for n in names}


def test_bench_trzsl_tiny_run(tmp_path, capsys) -> None:
    code = main(["bench", "trzsl", "--shifts", "blur", "--n-unlabeled", "160", "--per-seen-class", "2",
                 "--n-test", "64", "--strategy", "fpl", "--epochs", "1", "--out", str(tmp_path), "--json"])
    assert code == 0
    data = json.loads((tmp_path / "trzsl-micro.json").read_text())
    assert [r["method"] for r in data["rows"]] == ["zero-shot", "fpl"]
    assert [d["shift"] for d in data["differences"]] == ["blur", "mean"]
    assert data["differences"][1]["diff"] == pytest.approx(data["differences"][0]["diff"])
    assert len(data["pseudo_label_accuracy"]["blur"]) == 1
    assert data["differences"][0]["lo"] <= data["differences"][0]["diff"] <= data["differences"][0]["hi"]
    assert json.loads(capsys.readouterr().out)["mean_h"]
