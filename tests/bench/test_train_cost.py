"""`edgeclip bench train --method clap|arf`: one task / one epoch timed with peak memory, both ARF modes."""

from __future__ import annotations

import json

import pytest

from edgeclip.bench.train_cost import bench_train_cost
from edgeclip.cli import main


def test_clap_rows_per_task() -> None:
    res = bench_train_cost("clap", None, tasks=2, per_class=2, extra_views=1, rounds=2, threads=1,
                           settings={"epochs": 1, "finetune_epochs": 1, "mc_samples": 2})
    rows = res["rows"]
    assert [r["what"] for r in rows] == ["task 1 (no memory yet)", "task 2"]
    assert [r["classes_so_far"] for r in rows] == [8, 16]
    assert rows[1]["images"] > rows[0]["images"] - 1  # task 2 brings its images (its memory is added in training)
    for r in rows:
        assert 0 < r["wall_s_min"] <= r["wall_s"] <= r["wall_s_max"] and r["peak_mb"] >= 0 and r["steps"] > 0
    assert res["machine"]["cpu_model"] and res["config"]["tasks"] == 2


def test_arf_device_and_workstation_side_by_side(tmp_path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", "train", "--method", "arf", "--per-class", "2", "--epochs", "1", "--rounds", "1",
                 "--threads", "1", "--out", str(tmp_path), "--json"]) == 0
    data = json.loads((tmp_path / "train-cost-arf.json").read_text())
    assert [r["what"] for r in data["rows"]] == ["device mode, a fit of 1 epochs",
                                                 "workstation mode, a fit of 1 epochs"]
    w = data["workstation_over_device"]
    assert w["min"] <= w["median"] <= w["max"] and w["median"] > 0
    assert json.loads(capsys.readouterr().out)["method"] == "arf"
    with pytest.raises(ValueError, match="equal tasks"):
        bench_train_cost("clap", None, tasks=3)
