"""`edgeclip bench session` on tiny sizes: the checks pass on a healthy Session and catch a broken one."""

from __future__ import annotations

import json

import pytest

from edgeclip.bench import session_load
from edgeclip.bench.session_load import bench_session, load_run, write_session_report
from edgeclip.cli import main
from edgeclip.data import shapes
from edgeclip.runtime.model import load


@pytest.fixture(scope="module")
def tiny_results():
    return bench_session(parts=("throughput", "load", "faults", "budget"), producers=2, frames_zeroshot=40,
                         frames_tpt=15, throughput_frames=20, throughput_rounds=2, fail_every=3, budget_model=None,
                         budget_frames=4, reference_frames=1, budget_ms=5000.0)


def test_every_load_check_passes_on_a_tiny_run(tiny_results) -> None:
    runs = tiny_results["load"]
    assert [(r["method"], r["policy"], r["rate_hz"] is not None, r["injected"] is not None) for r in runs] == [
        ("zeroshot", "latest", False, False), ("zeroshot", "latest", True, False), ("zeroshot", "fifo", False, False),
        ("tpt", "latest", False, False), ("tpt", "latest", True, False), ("tpt", "fifo", False, False),
        ("zeroshot", "fifo", False, True), ("tpt", "fifo", False, True)]
    for r in runs:
        assert r["ok"], {k: v for k, v in r["checks"].items() if not v}
        assert r["done"] + r["dropped"] + r["failed"] == r["submitted"]
    fifo_faults = runs[6]
    assert fifo_faults["failed"] == fifo_faults["injected"] == fifo_faults["submitted"] // 3
    assert runs[2]["checks"]["labels_match_bare"] and runs[2]["done"] == runs[2]["submitted"]


def test_throughput_and_budget_parts_are_recorded(tiny_results) -> None:
    t = tiny_results["throughput"]
    assert len(t["bare_fps"]) == len(t["session_fps"]) == 2 and t["ratio_lo"] <= t["ratio"] <= t["ratio_hi"]
    b = tiny_results["budget"]
    assert len(b["views"]) == 4 and b["views"][:3] == [4, 4, 4] and len(b["full_views_ms"]) == 1
    assert b["met"] == (b["median_ms"] <= b["budget_ms"])


def test_report_is_written_with_notes(tiny_results, tmp_path) -> None:
    paths = write_session_report(tiny_results, tmp_path)
    data = json.loads(paths["json"].read_text())
    assert data["name"] == "session" and data["machine"]["cpu_model"] and len(data["rows"]) == 8
    md = paths["md"].read_text()
    assert "Session (fifo) / bare predict loop" in md and "checks all passed" in md


def test_the_checks_catch_a_session_that_loses_results(monkeypatch) -> None:
    """A Session that completes a frame with another frame's result must fail the checks."""
    from edgeclip.runtime import session as S

    real = S.Session._run

    def swapped(self, method, job):
        pred = real(self, method, job)
        pred.seq = pred.seq + 1 if pred.seq % 5 == 0 else pred.seq  # a result filed under the wrong frame
        return pred

    monkeypatch.setattr(S.Session, "_run", swapped)
    data = session_load._frames(16)[0]
    model = load()
    r = load_run(model, shapes.class_names(), method="zeroshot", policy="fifo", producers=2, per_producer=10,
                 expected=None, data=data)
    assert not r["ok"] and not r["checks"]["result_seq_matches_future"]


def test_cli_rejects_an_unknown_part(capsys) -> None:
    with pytest.raises(SystemExit):
        main(["bench", "session", "--part", "everything"])
    assert "invalid choice" in capsys.readouterr().err
