"""The pseudo-label bench: disjoint pools, paired intervals against zero-shot, per-class before/after, a report."""

from __future__ import annotations

from pathlib import Path

import pytest

from edgeclip.bench.pseudolabel_eval import bench_pseudolabel, plot_per_class, tune, variant_settings
from edgeclip.bench.report import write_report
from edgeclip.errors import InputError


def test_bench_reports_paired_differences_and_per_class(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    results = bench_pseudolabel(shifts=["blur"], n_unlabeled=160, n_test=64,
                                strategies=("fpl", "grip", "grip-warm", "grip-ssl"),
                                settings={"epochs": 1, "k": 4}, threads=1)
    assert [r["method"] for r in results["rows"]] == ["zero-shot", "fpl", "grip", "grip-warm", "grip-ssl"]
    assert {d["method"] for d in results["differences"]} == {"fpl", "grip", "grip-warm", "grip-ssl"}
    order = {t["title"]: t for t in results["tables"]}["Between runs (points, 95 % CI): does each step help?"]
    assert [r["comparison"] for r in order["rows"]] == ["grip-warm − grip", "grip-ssl − grip"]
    pseudo = {t["title"]: t for t in results["tables"]}["Pseudo-label accuracy (%) in each run's last round"]
    assert all(0.0 <= r["blur"] <= 100.0 for r in pseudo["rows"])
    detail = results["differences"][0]["detail"]["mean"]
    assert detail["lo"] <= detail["diff"] <= detail["hi"] and detail["n"] == 64
    per_class = next(t for t in results["tables"] if t["columns"][0] == "class")
    assert len(results["per_class"]["blur"]["grip"]) == 16 and len(per_class["rows"]) == 16
    assert [r["k"] for r in results["fits"]["blur"]["grip"]["rounds"]] == [160 * t // 160 for t in range(1, 11)]
    paths = write_report(results, tmp_path, "pl")
    assert "Difference against zero-shot" in paths["md"].read_text()
    assert plot_per_class(results, tmp_path / "pl.png").stat().st_size > 0


def test_tune_picks_from_the_validation_grid() -> None:
    out = tune(shifts=("blur",), n_unlabeled=160, n_val=32, epochs=(1,), lrs=(0.1, 0.02), threads=1)
    assert len(out["rows"]) == 2 and out["choice"]["epochs"] == 1 and out["choice"]["lr"] in (0.1, 0.02)


def test_run_names() -> None:
    assert variant_settings("grip") == {"strategy": "grip", "paradigm": "ul", "warm_start": False}
    assert variant_settings("ifpl-warm-ssl") == {"strategy": "ifpl", "paradigm": "ssl", "warm_start": True}
    for bad in ("grap", "grip-cold", "grip-warm-warm", ""):
        with pytest.raises(InputError, match="STRATEGY"):
            variant_settings(bad)
