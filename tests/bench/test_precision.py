"""`edgeclip bench precision`: the INT8 variant made once and reused, paired speed rows, accuracy per shift."""

from __future__ import annotations

import json

import pytest

from edgeclip.cli import main


def test_precision_bench_tiny_run(tmp_path, capsys: pytest.CaptureFixture[str]) -> None:
    cache = tmp_path / "cache"
    args = ["bench", "precision", "--batches", "1,2", "--rounds", "2", "--n", "16", "--tpt-n", "1", "--calib",
            "shapes:8", "--threads", "1", "--cache", str(cache), "--out", str(tmp_path), "--json"]
    assert main(args) == 0
    data = json.loads((tmp_path / "precision-micro.json").read_text())
    assert [(r["encoder"], r["batch"]) for r in data["rows"]][:2] == [("image", 1), ("image", 2)]
    for r in data["rows"]:
        assert r["speedup_lo"] <= r["speedup"] <= r["speedup_hi"] and r["fp32_ms"] > 0 and r["int8_ms"] > 0
    rows = data["tables"][0]["rows"]
    assert [(r["method"], r["encoder"]) for r in rows][:3] == [("zero-shot", "FP32"), ("zero-shot", "INT8"),
                                                               ("zero-shot", "INT8 − FP32")]
    variant = cache / "micro.bundle-int8-shapes_8" / "manifest.json"  # a non-default calibration: its own folder
    stamp = variant.stat().st_mtime_ns
    capsys.readouterr()
    assert main(args) == 0  # the cached variant is reused, not quantised again
    assert variant.stat().st_mtime_ns == stamp
    assert main(["bench", "precision", "--batches", "0", "--out", str(tmp_path)]) == 2
