"""The CLAP bench: the continual-learning metrics on hand-made inputs, a tiny class-incremental run end to end
(report, plot, paired intervals), the shift choice and the linear head's lr on the validation stream, bad input."""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import numpy as np
import pytest

from edgeclip.bench import clap_eval as C
from edgeclip.errors import InputError

NAN = float("nan")
TINY_CLAP = "epochs=3,finetune_epochs=1,mc_samples=4,batch_size=16"


pytestmark = pytest.mark.usefixtures("one_torch_thread")


# -- metrics ------------------------------------------------------------------------------------------------
def test_incremental_accuracy_bwt_and_forgetting_on_a_hand_made_matrix() -> None:
    r = [[90.0, NAN, NAN],
         [95.0, 70.0, NAN],
         [60.0, 75.0, 50.0]]
    assert C.average_incremental_accuracy([90.0, 75.0, 61.0]) == pytest.approx(75.333333)
    # BWT: ((60 − 90) + (75 − 70)) / 2; the diagonal's last entry (task 3 itself) does not count
    assert C.backward_transfer(r) == pytest.approx(-12.5)
    # forgetting: best-ever minus final (task 1 peaked at 95 after task 2), ((95 − 60) + (70 − 75)) / 2
    assert C.forgetting(r) == pytest.approx(15.0)
    # no change at all: zero; one task: undefined
    flat = [[80.0, NAN], [80.0, 65.0]]
    assert C.backward_transfer(flat) == 0.0 and C.forgetting(flat) == 0.0
    assert math.isnan(C.backward_transfer([[50.0]])) and math.isnan(C.forgetting([[50.0]]))
    with pytest.raises(ValueError, match="square"):
        C.backward_transfer([[1.0, 2.0]])
    with pytest.raises(ValueError, match="finite"):
        C.backward_transfer([[NAN, NAN], [1.0, 2.0]])
    with pytest.raises(ValueError):
        C.average_incremental_accuracy([])


def test_ece_on_hand_made_bins() -> None:
    # bin (0.867, 0.933]: two frames, confidence 0.9, one right -> |0.5 − 0.9|; bin (0.533, 0.6]: two frames at 0.55,
    # both right -> |1 − 0.55|; each bin holds half the frames
    assert C.expected_calibration_error([0.9, 0.9, 0.55, 0.55], [1, 0, 1, 1]) == pytest.approx(0.5 * 0.4 + 0.5 * 0.45)
    # calibrated: confidence 0.75 and three of four right
    assert C.expected_calibration_error([0.75] * 4, [1, 1, 1, 0]) == pytest.approx(0.0)
    # one bin covers everything with n_bins=1: |mean accuracy − mean confidence|
    assert C.expected_calibration_error([0.2, 1.0, 0.0], [1, 1, 0], n_bins=1) == pytest.approx(abs(2 / 3 - 0.4))
    # two bins of one frame each: |1 − 0.3| and |0 − 0.95|
    assert C.expected_calibration_error([0.3, 0.95], [1, 0]) == pytest.approx(0.5 * 0.7 + 0.5 * 0.95)
    with pytest.raises(ValueError, match="\\[0, 1\\]"):
        C.expected_calibration_error([1.2], [1])
    with pytest.raises(ValueError):
        C.expected_calibration_error([0.5, 0.5], [1])


def test_auroc_and_fpr95_on_hand_made_scores() -> None:
    # novel frames score higher when detection works
    assert C.novelty_auroc([0.1, 0.4], [0.35, 0.8]) == pytest.approx(75.0)
    assert C.novelty_auroc([0.0, 1.0], [2.0, 3.0]) == 100.0
    assert C.novelty_auroc([2.0, 3.0], [0.0, 1.0]) == 0.0
    assert C.novelty_auroc([1.0, 1.0], [1.0, 1.0]) == 50.0  # ties count half
    rng = np.random.default_rng(0)
    a, b = rng.integers(0, 6, 40).astype(float), rng.integers(2, 9, 30).astype(float)
    brute = ((b[:, None] > a[None, :]).sum() + 0.5 * (b[:, None] == a[None, :]).sum()) / (a.size * b.size)
    assert C.novelty_auroc(a, b) == pytest.approx(100.0 * brute)
    # threshold = the 95th of 100 in-distribution scores (94): novel scores 50 and 94 are accepted, 95 and 200 not
    assert C.fpr_at_95_tpr(np.arange(100.0), [50.0, 94.0, 95.0, 200.0]) == pytest.approx(50.0)
    assert C.fpr_at_95_tpr(np.arange(20.0), [18.0, 19.0]) == pytest.approx(50.0)  # ⌈0.95·20⌉ = 19th smallest = 18
    assert C.fpr_at_95_tpr([0.0, 1.0], [5.0, 6.0]) == 0.0
    with pytest.raises(ValueError, match="novel"):
        C.novelty_auroc([1.0], [])
    with pytest.raises(ValueError, match="finite"):
        C.fpr_at_95_tpr([NAN], [1.0])


def test_class_order_is_a_seeded_permutation() -> None:
    a, b = C.class_order(0), C.class_order(1)
    assert sorted(a) == list(range(16)) and a == C.class_order(0) and a != b


# -- the bench ----------------------------------------------------------------------------------------------
def test_tiny_run_writes_report_plot_and_intervals(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    p = argparse.ArgumentParser()
    C.add_arguments(p)
    args = p.parse_args(["--seeds", "0,1", "--shift", "low_contrast", "--per-class", "8", "--n-test", "128",
                         "--tasks", "2", "--classes-per-task", "4", "--clap", TINY_CLAP, "--linear-lr", "0.01",
                         "--out", str(tmp_path), "--name", "tiny"])
    assert args.threads == 1
    res = C.run(args)
    assert [r["method"] for r in res["rows"]] == list(C.METHODS)
    cfg = res["config"]
    assert cfg["shift"] == "low_contrast" and cfg["clap"]["epochs"] == 3 and cfg["clap"]["mc_samples"] == 4
    assert cfg["clap_overrides"] == {"epochs": 3, "finetune_epochs": 1, "mc_samples": 4, "batch_size": 16}
    for m in C.METHODS:
        curve = np.asarray(res["curves"][m])
        assert curve.shape == (2, 2) and ((curve >= 0) & (curve <= 100)).all()
        s = res["summary"][m]
        assert len(s["last"]["values"]) == 2
        assert s["last"]["values"] == pytest.approx(curve[:, -1].tolist())
        assert s["aia"]["values"] == pytest.approx(curve.mean(1).tolist())
        for seed in ("0", "1"):
            mat = np.asarray(res["matrices"][m][seed])
            assert math.isnan(mat[0, 1]) and mat[1, 0] - mat[0, 0] == pytest.approx(
                s["bwt"]["values"][int(seed)])
        assert 0.0 <= s["ece"]["mean"] <= 1.0
        assert 0.0 <= s["auroc"]["mean"] <= 100.0 and 0.0 <= s["fpr95"]["mean"] <= 100.0
    # the two seeds learn different class orders; CLAP beats zero-shot's curve start or not, but it did train
    assert res["orders"]["0"] != res["orders"]["1"] and len(res["orders"]["0"]) == 8
    assert [d["comparison"] for d in res["differences"]] == ["clap − continual-clip", "clap − linear"]
    for d in res["differences"]:
        pooled = d["detail"]["all seeds"]
        assert pooled["lo"] <= pooled["diff"] <= pooled["hi"]
        per_seed_n = [d["detail"][f"seed {s}"]["n"] for s in (0, 1)]
        # each seed's last accuracy is over the test images of its own 8 classes; pooled: every image some seed saw
        assert max(per_seed_n) <= pooled["n"] <= 128 and sum(per_seed_n) >= pooled["n"]
    # with no new competitor classes Continual-CLIP predicts exactly as when the task was first seen
    assert res["summary"]["continual-clip"]["bwt_known"]["values"] == [0.0, 0.0]
    for m in ("clap", "linear"):
        for seed in ("0", "1"):
            known, full = np.asarray(res["known_class_matrices"][m][seed]), np.asarray(res["matrices"][m][seed])
            assert known[0, 0] == full[0, 0] and known[1, 0] >= full[1, 0]  # fewer classes: never fewer right
    assert res["clap_variance_auroc"] is not None and 0.0 <= res["clap_variance_auroc"]["mean"] <= 100.0
    md = (tmp_path / "tiny.md").read_text()
    assert "Last accuracy: CLAP − baseline" in md and "Forgetting (2 seeds)" in md
    saved = json.loads((tmp_path / "tiny.json").read_text())
    assert saved["bench"] == "clap" and saved["config"]["tasks"] == 2
    assert (tmp_path / "tiny.png").stat().st_size > 0


def test_shift_choice_and_linear_lr_use_the_validation_stream(micro) -> None:
    shift, accs = C.choose_shift(micro, n_val=64)
    assert set(accs) == set(C.CANDIDATE_SHIFTS) and accs[shift] == min(accs.values())
    tuning = C.tune_linear(micro, "low_contrast", per_class=6, tasks=2, classes_per_task=2,
                           clap_settings={"epochs": 2, "memory_views": 2}, lrs=(0.01, 0.1), n_val=64)
    assert [r["lr"] for r in tuning["rows"]] == [0.01, 0.1] and tuning["choice"] in (0.01, 0.1)
    assert tuning["val_seed"] == 30_000 and tuning["train_seed"] == C.TUNE_TRAIN_SEED


def test_bad_input() -> None:
    with pytest.raises(InputError, match="do not fit"):
        C.bench_clap(tasks=5, classes_per_task=4)
    with pytest.raises(InputError, match="distinct"):
        C.bench_clap(seeds=(1, 1))
    with pytest.raises(InputError, match="KEY=VALUE"):
        C._clap_overrides("epochs")
    assert C._clap_overrides("epochs=2, lr=0.01,selector=energy") == {"epochs": 2, "lr": 0.01, "selector": "energy"}
