"""The ARF bench on tiny sizes: the report's structure (both modes), paired intervals that hold their point
estimate, the Latin-square class split, the guard that keeps held-out classes out of the fine-tune pool, the
claim's verdict on hand-made differences, the CLI-facing `add_arguments` / `run`, bad input."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edgeclip.bench import arf_eval as A
from edgeclip.bench.paired import PairedDifference
from edgeclip.bench.report import write_report
from edgeclip.data import shapes
from edgeclip.errors import InputError

TINY: dict[str, Any] = {"shift": "low_contrast", "per_class": 2, "n_pairs": 32, "n_val": 64, "n_test": 96,
                        "epochs": 1, "replicates": 2, "workstation_replicates": 2}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def tiny() -> dict[str, Any]:
    return A.bench_arf(**TINY, modes=("device", "workstation"))


def test_held_out_split_is_a_latin_square() -> None:
    fine_tune, held = A.held_out_split()
    assert len(fine_tune) == 12 and len(held) == 4 and not set(fine_tune) & set(held)
    assert sorted(fine_tune + held) == sorted(shapes.class_names())
    assert sorted(h.split()[0] for h in held) == sorted(shapes.COLOURS)
    assert sorted(h.split()[1] for h in held) == sorted(shapes.SHAPES)


def test_tiny_run_report_structure(tiny: dict[str, Any], tmp_path: Path) -> None:
    cfg = tiny["config"]
    others = cfg["other_shifts"]
    assert cfg["shift"] == "low_contrast" and "low_contrast" not in others and "clean" in others
    held_cols = [f"held-out ({d})" for d in cfg["held_out_domains"]]
    assert held_cols == ["held-out (low_contrast)", "held-out (clean)"]
    assert tiny["columns"] == ["mode", "method", "ID", *others, "shift mean", *held_cols, "held-out mean", "fit_s",
                               "epochs"]
    assert [(r["mode"], r["method"]) for r in tiny["rows"]] == [(m, x) for m in A.MODES for x in A.METHODS]
    for r in tiny["rows"]:
        for c in ["ID", *others, "shift mean", *held_cols, "held-out mean"]:
            assert 0.0 <= r[c] <= 100.0, (r["mode"], r["method"], c)
        assert r["shift mean"] == pytest.approx(np.mean([r[s] for s in others]))
    # zero-shot is the same model in both modes (ONNX vs the rebuilt PyTorch tower): the same predictions, bar ties
    zs = {r["mode"]: r for r in tiny["rows"] if r["method"] == "zero-shot"}
    assert abs(zs["device"]["ID"] - zs["workstation"]["ID"]) <= 3.0
    # the tables: differences (2 per mode), the claim per mode, the workstation's epoch choice
    titles = [t["title"] for t in tiny["tables"]]
    assert titles[0].startswith("ARF − baseline") and titles[1].startswith("The paper's claim")
    assert any(t.startswith("Workstation epochs") for t in titles)
    spread = next(t for t in tiny["tables"] if t["title"].startswith("Over training runs"))
    assert [(r["mode"], r["run"]) for r in spread["rows"]] == [
        (m, r) for m in A.MODES for _ in range(2) for r in ("seed 0", "seed 1", "mean ± std")]
    assert any(t.startswith("Held-out classes among all 16") for t in titles)
    assert [(r["mode"], r["comparison"]) for r in tiny["tables"][0]["rows"]] == [
        (m, f"ARF − {b}") for m in A.MODES for b in ("plain FT", "WiSE-FT")]
    assert {r["claim holds"] for r in tiny["tables"][1]["rows"]} <= {"yes", "no"}
    assert sum(n.startswith("The claim in ") for n in tiny["notes"]) == 2
    paths = write_report(tiny, tmp_path, "arf-tiny")
    data = json.loads(paths["json"].read_text())
    assert data["machine"]["threads"] == 1 and data["config"]["fine_tune_classes"] == cfg["fine_tune_classes"]
    text = paths["md"].read_text()
    assert "ARF − plain FT" in text and "held-out (clean)" in text


def test_paired_intervals_contain_their_point_estimate(tiny: dict[str, Any]) -> None:
    assert len(tiny["differences"]) == 4
    for key, cols in tiny["differences"].items():
        assert {"ID", "shift mean", "held-out mean"} <= set(cols), key
        for col, d in cols.items():
            assert d["lo"] - 1e-9 <= d["diff"] <= d["hi"] + 1e-9, (key, col, d)
            assert d["n"] > 0 and d["level"] == 0.95


def test_held_out_classes_never_in_the_fine_tune_pool(tiny: dict[str, Any]) -> None:
    cfg = tiny["config"]
    assert cfg["fine_tune_pool_classes"] == sorted(cfg["fine_tune_classes"])
    assert not set(cfg["fine_tune_pool_classes"]) & set(cfg["held_out_classes"])
    assert tiny["detail"]["device"]["plain_report"]["extra"]["task_classes"] == cfg["fine_tune_classes"]
    assert sorted(tiny["detail"]["workstation"]["arf_settings"]["classes"]) == sorted(cfg["fine_tune_classes"])


def test_the_guard_fails_when_a_held_out_class_leaks(monkeypatch: pytest.MonkeyPatch) -> None:
    fine_tune, held = A.held_out_split()
    with pytest.raises(InputError, match="held-out class"):
        A.check_disjoint([*fine_tune[:3], held[2]], held)
    A.check_disjoint(fine_tune, held)  # no leak, no error
    names = shapes.class_names()
    real = A._train_labels

    def leaky(classes: Any, per_class: int) -> np.ndarray:
        labels = real(classes, per_class)
        labels[0] = names.index(held[0])
        return labels

    monkeypatch.setattr(A, "_train_labels", leaky)
    with pytest.raises(InputError, match=held[0]):
        A.bench_arf(**TINY, modes=("device",))


def test_claim_verdict() -> None:
    def d(diff: float, lo: float, hi: float) -> PairedDifference:
        return PairedDifference(diff, lo, hi, 100, 0.95)

    ok = A.claim_verdict(d(-0.3, -1.2, 0.6), d(2.0, 0.5, 3.5), d(4.0, 1.0, 7.0))
    assert ok["claim holds"] and ok["ID"] == "same (CI contains 0)"
    small = A.claim_verdict(d(-0.8, -1.0, -0.6), d(2.0, 0.5, 3.5), d(4.0, 1.0, 7.0))
    assert small["claim holds"] and small["ID"].startswith("same (|Δ|")
    lower = A.claim_verdict(d(-3.0, -4.0, -2.0), d(2.0, 0.5, 3.5), d(4.0, 1.0, 7.0))
    assert lower["ID"] == "lower" and not lower["claim holds"]
    no_shift = A.claim_verdict(d(0.0, -1.0, 1.0), d(1.0, -0.5, 2.5), d(4.0, 1.0, 7.0))
    assert not no_shift["claim holds"] and not no_shift["shift better"] and no_shift["held-out better"]


def test_run_with_parsed_arguments(tmp_path: Path) -> None:
    p = argparse.ArgumentParser()
    A.add_arguments(p)
    args = p.parse_args(["--shift", "low_contrast", "--per-class", "2", "--n-test", "48", "--epochs", "1",
                         "--modes", "device", "--out", str(tmp_path)])
    assert args.threads == 1 and args.name == "arf-micro"
    results = A.run(args)
    assert (tmp_path / "arf-micro.json").is_file() and (tmp_path / "arf-micro.md").is_file()
    assert [r["mode"] for r in results["rows"]] == ["device"] * 4


def test_bad_input() -> None:
    with pytest.raises(InputError, match="modes"):
        A.bench_arf(**TINY, modes=("laptop",))
    with pytest.raises(InputError, match="unknown shift"):
        A.bench_arf(**{**TINY, "shift": "fog"}, modes=("device",))
    with pytest.raises(InputError, match="per_class"):
        A.bench_arf(**{**TINY, "per_class": 0}, modes=("device",))
