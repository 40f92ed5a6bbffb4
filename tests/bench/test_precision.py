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


def test_op_profile_sums_kernel_time_by_op_type_and_bounds_int8(tmp_path) -> None:
    import numpy as np

    import edgeclip
    from edgeclip.bench.op_profile import GEMM_OPS, op_breakdown, op_times
    from edgeclip.bench.precision import int8_variant
    from edgeclip.runtime.bundle import IMAGE_ONNX, open_bundle

    src = open_bundle(edgeclip.default_bundle())
    int8 = int8_variant(src, tmp_path, "shapes:8")
    s = src.image_size
    feeds = {"pixels": np.random.default_rng(0).standard_normal((4, 3, s, s)).astype(np.float32)}
    times = op_times(src.file(IMAGE_ONNX), feeds, runs=2, threads=1)
    assert "LayerNormalization" in times or "SkipLayerNormalization" in times
    assert all(v >= 0 for v in times.values()) and list(times.values()) == sorted(times.values(), reverse=True)
    out = op_breakdown(src.file(IMAGE_ONNX), int8.file(IMAGE_ONNX), feeds, runs=2, threads=1, top=3)
    ops = [r["op"] for r in out["rows"]]
    assert len(ops) == 5 and ops[-2:] == ["other", "total"]
    total = out["rows"][-1]
    assert abs(sum(r["fp32_ms"] for r in out["rows"][:-1]) - total["fp32_ms"]) < 1e-9
    assert any(k in GEMM_OPS for k in op_times(int8.file(IMAGE_ONNX), feeds, runs=1, threads=1))
    assert 0 < out["gemm_share"] < 1
    assert out["int8_bound"] == total["fp32_ms"] / (total["fp32_ms"] - out["fp32_gemm_ms"])
    with pytest.raises(ValueError, match="runs"):
        op_times(src.file(IMAGE_ONNX), feeds, runs=0)
