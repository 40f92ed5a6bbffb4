"""`edgeclip bench tta` at tiny sizes on the embedded micro bundle.

No assertion here is about speed or accuracy levels: only the structure of the results, that every figure is
finite, that the speed part's same-views check really hands the reference's views to edgeclip's TPT, that the
reports (JSON, Markdown, PNG) are written, and that the CLI runs the same path with --quick.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from edgeclip.bench import bench_tta
from edgeclip.bench.memory import PeakMemory
from edgeclip.bench.timing import paired_calls
from edgeclip.bench.tta import METHODS, PARTS, REF_SUBSET
from edgeclip.cli import main
from edgeclip.errors import InputError

TINY: dict[str, Any] = {"n": 4, "n_reference": 2, "shifts": ("clean", "blur"), "imbalanced_shifts": ("clean",),
                        "prototypes": "shapes:32", "n_views": 16, "model": None, "classes": (4,), "speed_images": 1,
                        "text_classes": (4, 8), "text_repeats": 2, "text_time_budget_s": 0.5, "threads": 1,
                        "progress": False}


def _finite(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], Path]:
    out = tmp_path_factory.mktemp("tta")
    return bench_tta(PARTS, out_dir=out, **TINY), out


def test_accuracy_part(run: tuple[dict[str, Any], Path]) -> None:
    res = run[0]["parts"]["accuracy"]
    rows = res["rows"]
    assert [(r["stream"], r["method"]) for r in rows] == [
        (s, m) for s in ("held-out", "imbalanced") for m in (*METHODS, REF_SUBSET)]
    for r in rows:
        shifts = ("clean", "blur") if r["stream"] == "held-out" else ("clean",)
        for key in (*shifts, "mean", "median_ms", "p90_ms"):
            assert _finite(r[key]), (r["method"], key, r[key])
        assert 0.0 <= r["mean"] <= 100.0 and r["p90_ms"] >= r["median_ms"] > 0
        assert r["mean"] == pytest.approx(sum(r[s] for s in shifts) / len(shifts))
        assert r["n"] == (2 if r["method"] in ("tpt-reference", REF_SUBSET) else 4)
        assert r["frames"] == r["n"] * len(shifts)
        if r["method"] != REF_SUBSET:
            assert _finite(r["peak_mb"]) and r["peak_mb"] >= 0
    assert res["columns"][:3] == ["stream", "method", "n"] and {"clean", "blur", "mean"} <= set(res["columns"])
    details = res["details"]
    assert len(details) == 3 * len(METHODS)  # (2 held-out shifts + 1 imbalanced) × methods
    online = next(d for d in details if d["method"] == "promptsync-online")
    assert online["collapse_resets"] == 0 and online["skipped_steps"] == 0
    assert all(len(d["times_ms"]) == d["n"] and all(t > 0 for t in d["times_ms"]) for d in details)
    cfg = res["config"]
    assert cfg["n_reference"] == 2 and cfg["prototypes"]["kind"] == "images" and cfg["memory_method"]
    assert set(res["goals"]) == {"promptsync > tpt", "tpt >= zero-shot", "promptsync-online > promptsync"}
    for goal in res["goals"].values():
        assert goal["verdict"] in ("beats", "no significant difference", "worse")
        assert goal["lo"] <= goal["hi"] and isinstance(goal["met"], bool)
    assert res["machine"]["threads"] == 1


def test_accuracy_part_paired_differences(run: tuple[dict[str, Any], Path]) -> None:
    res = run[0]["parts"]["accuracy"]
    comps = {(c["stream"], c["method"], c["baseline"]): c for c in res["comparisons"]}
    for stream in ("held-out", "imbalanced"):
        assert (stream, "tpt", "zero-shot") in comps and (stream, "promptsync", "tpt") in comps
        assert (stream, "promptsync-online", "promptsync") in comps and (stream, REF_SUBSET, "tpt-reference") in comps
        assert (stream, "tpt-reference", "zero-shot") not in comps  # not the same frames
    details = {(d["stream"], d["shift"], d["method"]): d for d in res["details"]}
    shifts = ("clean", "blur")
    for (stream, method, baseline), c in comps.items():
        if stream != "held-out" or method == REF_SUBSET:
            continue
        assert list(c["by_shift"]) == [*shifts, "mean"] and c["n"] == 4
        diffs = []
        for s in shifts:  # the point is the difference of the per-frame correctness kept in the details
            a = np.array(details[(stream, s, method)]["correct"], dtype=float)
            b = np.array(details[(stream, s, baseline)]["correct"], dtype=float)
            d = c["by_shift"][s]
            assert d["diff"] == pytest.approx(100 * (a.mean() - b.mean()))
            assert d["lo"] <= d["hi"] and d["significant"] == (d["lo"] > 0 or d["hi"] < 0)
            diffs.append(d["diff"])
        assert c["by_shift"]["mean"]["diff"] == pytest.approx(np.mean(diffs))
    md = Path(run[0]["files"]["accuracy"]["md"]).read_text()
    assert "## Paired differences in accuracy" in md and "goals (held-out mean, paired 95 % bootstrap" in md


def test_speed_part_same_views_agree(run: tuple[dict[str, Any], Path]) -> None:
    res = run[0]["parts"]["speed"]
    rows = res["rows"]
    assert [(r["bundle"], r["classes"], r["names"]) for r in rows] == [
        ("micro", 16, "shapes"), ("micro", 4, "synthetic 1–4 words")]
    for r in rows:
        assert r["error"] is None and r["n"] == 1
        for key in ("edgeclip_ms", "reference_ms", "speedup", "speedup_lo", "speedup_hi", "edgeclip_peak_mb",
                    "reference_peak_mb"):
            assert _finite(r[key]) and r[key] >= 0, key
        assert r["reference_tokens"] == 77 and r["tokens"] < 77
        assert r["speedup"] == pytest.approx(r["reference_ms"] / r["edgeclip_ms"])  # one image: one ratio
        assert r["speedup_lo"] <= r["speedup"] <= r["speedup_hi"]
        # on the reference's own views, edgeclip's TPT gives the reference's prediction
        assert r["agree_same_views"] == 1.0 and r["max_prob_diff_same_views"] < 1e-3
        assert 0.0 <= r["agree_own_views"] <= 1.0


def test_text_stress_part(run: tuple[dict[str, Any], Path]) -> None:
    rows = run[0]["parts"]["text-stress"]["rows"]
    assert [(r["classes"], r["impl"]) for r in rows] == [
        (c, i) for c in (4, 8) for i in ("edgeclip (truncated)", "reference (full length)")]
    for r in rows:
        assert r["error"] is None and r["n"] == 2
        assert _finite(r["median_ms"]) and r["median_ms"] > 0 and _finite(r["peak_mb"]) and r["peak_mb"] >= 0
    for edge, ref in zip(rows[::2], rows[1::2], strict=True):
        assert edge["tokens"] < ref["tokens"] == 77
        assert edge["speedup"] is None and _finite(ref["speedup"])
        per_round = np.array(ref["samples_ms"]) / np.array(edge["samples_ms"])
        assert ref["speedup"] == pytest.approx(float(np.median(per_round)))
        assert ref["speedup_lo"] <= ref["speedup"] <= ref["speedup_hi"]
        assert ref["speedup_of_medians"] == pytest.approx(ref["median_ms"] / edge["median_ms"])


def test_reports_written(run: tuple[dict[str, Any], Path]) -> None:
    results, out = run
    assert set(results["files"]) == set(PARTS)
    for part, paths in results["files"].items():
        want = {"json", "md", "png"} if part != "speed" else {"json", "md"}
        assert set(paths) == want
        for p in paths.values():
            assert Path(p).is_file() and Path(p).parent == out and Path(p).stat().st_size > 0
        payload = json.loads(Path(paths["json"]).read_text())
        assert payload["rows"] and payload["machine"]["threads"] == 1
        assert payload["command"] is None  # a library call: nothing was typed
        assert Path(paths["md"]).read_text().startswith("# ")
        if "png" in paths:
            assert Path(paths["png"]).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_readme_renderers_take_the_reports(run: tuple[dict[str, Any], Path]) -> None:
    from edgeclip.bench.result_tables import tta_accuracy_table, tta_paired_table, tta_speed_table, tta_text_table

    loaded = {part: json.loads(Path(paths["json"]).read_text()) for part, paths in run[0]["files"].items()}
    acc = tta_accuracy_table([loaded["accuracy"]]).splitlines()
    assert acc[0].split("|")[1].strip() == "method" and len(acc) == 2 + len(METHODS) - 1  # no official-loop row
    assert "imbalanced" in acc[0] and "**" in "".join(acc[2:])  # the best mean is bold
    paired = tta_paired_table([loaded["accuracy"]]).splitlines()
    assert len(paired) == 2 + sum(c["stream"] == "held-out" for c in loaded["accuracy"]["comparisons"])
    assert all(line.count("[") >= 3 for line in paired[2:])  # clean, blur, mean (and imbalanced) intervals
    speed = tta_speed_table([loaded["speed"]]).splitlines()
    assert len(speed) == 4 and "micro, 16 (its own class names)" in speed[2] and "100 %" in speed[2]
    text = tta_text_table([loaded["text-stress"]]).splitlines()
    assert len(text) == 3 and "micro, 1 thread" in text[2] and "C = 4" in text[0] and "C = 8" in text[0]


def test_peak_memory_sees_an_allocation() -> None:
    mem = PeakMemory("cpu")
    mem.start()
    x = torch.ones(16 * 2**20)  # 64 MiB of float32, touched
    assert float(x.sum()) > 0
    del x
    peak = mem.stop()
    if mem.method == "vmhwm-reset":
        assert 50.0 < peak < 200.0
    else:
        assert peak >= 0.0


def test_paired_calls_alternate_and_report() -> None:
    calls: list[tuple[str, int]] = []
    seen: list[tuple[str, int, Any]] = []
    fns = {"a": lambda i: calls.append(("a", i)) or i, "b": lambda i: calls.append(("b", i)) or -i}
    res = paired_calls(fns, 3, memory=PeakMemory("cpu"), sync=None,
                        after_call=lambda label, i, out: seen.append((label, i, out)))
    assert calls == [("a", 0), ("b", 0), ("b", 1), ("a", 1), ("a", 2), ("b", 2)]
    assert res.results == {"a": [0, 1, 2], "b": [0, -1, -2]} and len(seen) == 6
    assert all(res.stats[k].n == 3 and len(res.peaks_mb[k]) == 3 for k in fns)


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="parts"):
        bench_tta(["nope"], progress=False)
    with pytest.raises(InputError, match="unknown shift"):
        bench_tta(["accuracy"], shifts=["fog"], progress=False)
    with pytest.raises(ValueError, match="n_views"):
        bench_tta(["speed"], n_views=8, model=None, progress=False)
    with pytest.raises(ValueError, match="methods"):
        bench_tta(["accuracy"], methods=["tpt", "magic"], progress=False)


def test_cli_quick(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(["bench", "tta", "--quick", "--n", "2", "--n-reference", "1", "--shifts", "clean",
               "--imbalanced-shift", "none", "--prototypes", "shapes:16", "--views", "10", "--classes", "4",
               "--speed-images", "1", "--repeats", "1", "--text-budget", "0.1", "--threads", "1",
               "--out", str(tmp_path), "--json"])
    assert rc == 0
    payload = json.loads(capsys.readouterr().out)
    assert set(payload["parts"]) == set(PARTS)
    acc = payload["parts"]["accuracy"]
    assert acc["config"]["n"] == 2 and acc["config"]["imbalanced_shifts"] == []
    assert {r["stream"] for r in acc["rows"]} == {"held-out"}
    assert [r["classes"] for r in payload["parts"]["speed"]["rows"]] == [16, 4]  # --quick: no --model bundle
    assert [r["classes"] for r in payload["parts"]["text-stress"]["rows"]] == [4, 4]
    for stem in ("tta-accuracy", "tta-speed", "tta-text-stress"):
        assert (tmp_path / f"{stem}.json").is_file() and (tmp_path / f"{stem}.md").is_file()
    assert (tmp_path / "tta-accuracy.png").is_file() and (tmp_path / "tta-text-stress.png").is_file()
