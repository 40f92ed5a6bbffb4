"""`edgeclip bench report` (`edgeclip.bench.suite_report`): a subset of the quick suite on the micro bundle, the plots,
skipped benches named with their reason, and a failing bench recorded while the others still run.

No assertion here is about speed: only which benches ran, what was written, and what the report says.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from edgeclip.bench.suite_report import BENCHES, PLOTS, plot_latency, plot_memory, run_suite_report
from edgeclip.errors import InputError
from edgeclip.runtime.ort_session import CPU_EP, available_providers

HAS_ORT = CPU_EP in available_providers()
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

pytest.importorskip("matplotlib")


def _by_name(summary: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {b["name"]: b for b in summary["benches"]}


@pytest.mark.skipif(not HAS_ORT, reason="onnxruntime is not installed")
def test_quick_subset_writes_report_plots_and_skips(tmp_path: Path) -> None:
    out = tmp_path / "report"
    summary = run_suite_report(out, quick=True, device="cpu", threads=1, benches=("encoders", "tta-text-stress"),
                               cache_dir=tmp_path / "cache")
    benches = _by_name(summary)
    assert list(benches) == list(BENCHES)  # every bench listed, none silently dropped
    assert benches["encoders"]["status"] == benches["tta-text-stress"]["status"] == "ok"
    for name in ("encoders-cuda", "encoders-tensorrt", "kernels-cuda"):
        assert benches[name]["status"] == "skipped" and "device cpu" in benches[name]["reason"]
    for name in ("kernels", "tta-accuracy", "tta-speed"):
        assert benches[name]["status"] == "skipped" and benches[name]["reason"] == "not selected"
    assert summary["ok"] and summary["counts"] == {"ok": 2, "skipped": 6, "failed": 0}

    # each bench's own JSON + Markdown beside the report; encoders has FP32 and INT8 rows
    enc_files = benches["encoders"]["reports"]["encoders-micro"]
    enc = json.loads(Path(enc_files["json"]).read_text())
    assert {r["precision"] for r in enc["rows"]} == {"fp32", "int8"}
    assert Path(benches["tta-text-stress"]["reports"]["tta-text-stress"]["md"]).is_file()

    # plots: latency and memory drawn, accuracy named as not drawn
    assert set(summary["plots"]) == set(PLOTS)
    for key in ("latency", "memory"):
        path = Path(summary["plots"][key]["path"])
        assert path.parent == out and path.read_bytes()[:8] == PNG_MAGIC
    assert "not drawn" in summary["plots"]["accuracy"]["error"]

    md = (out / "report.md").read_text()
    machine = summary["machine"]
    assert machine["cpu_model"] in md and all(f in md for f in machine["simd"])
    assert "torch " + machine["torch"] in md and "onnxruntime" in md and "numpy" in md
    assert "TensorRT:" in md and "GPU:" in md
    assert "](encoders-micro.md)" in md and "](encoders-micro.json)" in md
    assert "![Latency per backend and precision](latency.png)" in md
    assert "![Memory against classes](memory-classes.png)" in md
    assert "skipped: device cpu" in md and "not drawn" in md
    data = json.loads((out / "report.json").read_text())
    assert data["ok"] is True and [b["name"] for b in data["benches"]] == list(BENCHES)
    assert data["machine"]["simd"] == machine["simd"]


def test_failing_bench_is_recorded_and_the_others_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    """Through the CLI: kernels raises, tta-speed still runs, the report is written and the exit status is 1."""
    import edgeclip.bench.kernels
    from edgeclip.cli import main

    def boom(**kwargs: Any) -> dict[str, Any]:
        raise RuntimeError("kernel bench exploded")

    monkeypatch.setattr(edgeclip.bench.kernels, "bench_kernels", boom)
    out = tmp_path / "r"
    rc = main(["bench", "report", "--out", str(out), "--quick", "--device", "cpu", "--threads", "1",
               "--only", "kernels", "--only", "tta-speed", "--cache", str(tmp_path / "cache"), "--json"])
    assert rc == 1
    printed = json.loads(capsys.readouterr().out)
    benches = _by_name(printed)
    assert benches["kernels"]["status"] == "failed"
    assert benches["kernels"]["error"] == "RuntimeError: kernel bench exploded"
    assert "boom" in benches["kernels"]["traceback"]
    assert benches["tta-speed"]["status"] == "ok" and printed["ok"] is False
    assert Path(benches["tta-speed"]["reports"]["tta-speed"]["json"]).is_file()
    assert printed["plots"]["memory"].get("path")  # drawn from the speed part's peaks
    md = (out / "report.md").read_text()
    assert "failed: RuntimeError: kernel bench exploded" in md and "## Failures" in md
    assert json.loads((out / "report.json").read_text())["counts"]["failed"] == 1


def test_plot_helpers(tmp_path: Path) -> None:
    rows = [{"encoder": enc, "backend": b, "provider": p, "precision": prec, "batch": n, "median_ms": 1.0 + n,
             "p90_ms": 2.0 + n}
            for enc in ("image", "text") for n in (1, 8)
            for b, p, prec in (("torch", None, "fp32"), ("onnxruntime", CPU_EP, "fp32"), ("onnxruntime", CPU_EP,
                                                                                          "int8"))]
    path = tmp_path / "lat.png"
    plot_latency([("encoders-x", {"rows": rows})], path)
    assert path.read_bytes()[:8] == PNG_MAGIC
    with pytest.raises(ValueError, match="no encoder rows"):
        plot_latency([("encoders-x", {"rows": [{**rows[0], "median_ms": None}]})], tmp_path / "none.png")
    text = {"rows": [{"bundle": "micro", "impl": "edgeclip (truncated)", "classes": c, "peak_mb": c / 10, "error": None}
                     for c in (10, 100)]}
    plot_memory(text, None, tmp_path / "mem.png")
    assert (tmp_path / "mem.png").read_bytes()[:8] == PNG_MAGIC
    with pytest.raises(ValueError, match="no memory rows"):
        plot_memory({"rows": []}, {"rows": []}, tmp_path / "none.png")
    assert not (tmp_path / "none.png").exists()


def test_bad_arguments_fail_before_any_work(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="unknown bench"):
        run_suite_report(tmp_path / "a", quick=True, benches=("encoders", "nope"))
    with pytest.raises(InputError, match="device"):
        run_suite_report(tmp_path / "b", quick=True, device="tpu")
    with pytest.raises(InputError, match="threads"):
        run_suite_report(tmp_path / "c", quick=True, threads=0)
    assert list(tmp_path.iterdir()) == []
