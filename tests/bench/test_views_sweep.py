"""`edgeclip bench views` at tiny sizes on the embedded micro bundle.

No assertion here is about accuracy or speed levels: only the structure of the results, that the paired
differences are the ones the per-frame correctness gives, that the reports (JSON, Markdown, PNG) are written, that
the README renderer reads them, and that bad arguments are refused with a clear message before any work.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edgeclip.bench import readme_tables as rt
from edgeclip.bench.paired import MEAN, paired_differences
from edgeclip.bench.result_tables import views_accuracy_table
from edgeclip.bench.views_sweep import FLOOR, VIEW_METHODS, bench_views, check_views, parse_views
from edgeclip.cli import main
from edgeclip.errors import InputError

TINY: dict[str, Any] = {"n": 4, "views": (4, 2), "shifts": ("clean",), "prototypes": "shapes:32", "threads": 1,
                        "n_resamples": 200, "progress": False}
COMMAND = "edgeclip bench views --n 4 --views 2,4 --shifts clean --threads 1"


def _finite(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], Path]:
    out = tmp_path_factory.mktemp("views") / "docs" / "results"
    return bench_views(out_dir=out, command=COMMAND, **TINY), out


def test_rows(run: tuple[dict[str, Any], Path]) -> None:
    res = run[0]
    assert res["bench"] == "views-accuracy" and res["config"]["views"] == [2, 4] and res["config"]["largest"] == 4
    rows = res["rows"]
    assert [(r["method"], r["n_views"]) for r in rows] == [(FLOOR, None), *((m, v) for m in VIEW_METHODS
                                                                           for v in (2, 4))]
    for r in rows:
        assert r["n"] == 4 and r["frames"] == 4 and 0.0 <= r["clean"] <= 100.0 and r["mean"] == r["clean"]
        assert _finite(r["median_ms"]) and r["p90_ms"] >= r["median_ms"] > 0
    for r in rows[1:]:
        assert r["confident"] == 1  # max(1, int(0.1 · n)) at 2 and 4 views
        top = next(t for t in rows if t["method"] == r["method"] and t["n_views"] == 4)
        assert r["vs_largest"] == pytest.approx(r["mean"] - top["mean"])
        assert r["vs_zero_shot"] == pytest.approx(r["mean"] - rows[0]["mean"])
        if r["n_views"] == 4:
            assert r["vs_largest"] == 0.0 and r["vs_largest_lo"] is None and r["vs_largest_significant"] is None
        else:
            assert r["vs_largest_lo"] <= r["vs_largest_hi"] and isinstance(r["vs_largest_significant"], bool)
    assert {"method", "n_views", "clean", "mean", "vs_largest", "median_ms"} <= set(res["columns"])


def test_paired_differences_match_the_frames(run: tuple[dict[str, Any], Path]) -> None:
    res = run[0]
    details = {(d["method"], d["n_views"]): d for d in res["details"]}
    assert len(details) == 1 + 2 * len(VIEW_METHODS)
    assert all(len(d["correct"]) == 4 and set(d["correct"]) <= {"0", "1"} for d in details.values())
    comps = res["comparisons"]
    # against the largest count below it, and against zero-shot at every count
    assert len(comps) == len(VIEW_METHODS) * 3
    for c in comps:
        base = details[(c["baseline"], c["baseline_n_views"])]
        a = [ch == "1" for ch in details[(c["method"], c["n_views"])]["correct"]]
        b = [ch == "1" for ch in base["correct"]]
        want = paired_differences({"clean": a}, {"clean": b}, n_resamples=200, seed=0)
        assert set(c["by_shift"]) == {"clean", MEAN}
        assert c["by_shift"][MEAN]["diff"] == pytest.approx(want[MEAN].diff)
        assert c["by_shift"][MEAN]["lo"] == pytest.approx(want[MEAN].lo)
        assert c["by_shift"]["clean"]["n"] == 4
        if c["baseline"] != FLOOR:
            assert c["baseline"] == c["method"] and c["baseline_n_views"] == 4 and c["n_views"] == 2
    assert [t["title"].split(" (")[0] for t in res["tables"]] == [
        "Paired differences against the same method at 4 views", "Paired differences against zero-shot"]


def test_reports_written(run: tuple[dict[str, Any], Path]) -> None:
    res, out = run
    assert set(res["files"]) == {"json", "md", "png"}
    data = json.loads((out / "views-accuracy.json").read_text())
    assert data["command"] == COMMAND and data["machine"]["threads"] == 1 and data["rows"] == res["rows"]
    assert "simd" in data["machine"] and "cpu_model" in data["machine"]
    md = (out / "views-accuracy.md").read_text()
    assert md.startswith("# Accuracy against views per frame") and "measured on this machine" in md
    assert (out / "views-accuracy.png").stat().st_size > 0


def test_readme_renderer(run: tuple[dict[str, Any], Path]) -> None:
    res, out = run
    table = views_accuracy_table([res])
    lines = table.strip("\n").split("\n")
    assert [c.strip() for c in lines[0].split("|")[1:-1]] == ["method", "n = 2", "n = 4 (reference)"]
    cells = {row.split("|")[1].strip(): [c.strip() for c in row.split("|")[2:-1]] for row in lines[2:]}
    assert list(cells) == ["TPT", "PromptSync", "ZERO", "zero-shot (the plain image, no views)"]
    for name, m in (("TPT", "tpt"), ("ZERO", "zero")):
        r2 = next(r for r in res["rows"] if r["method"] == m and r["n_views"] == 2)
        r4 = next(r for r in res["rows"] if r["method"] == m and r["n_views"] == 4)
        assert cells[name][0].startswith(f"{r2['mean']:.1f} ({r2['vs_largest']:+.1f} [") or (
            cells[name][0].startswith(f"{r2['mean']:.1f} (**{r2['vs_largest']:+.1f} ["))
        assert cells[name][1] == f"{r4['mean']:.1f}"
    floor = f"{res['rows'][0]['mean']:.1f}"
    assert cells["zero-shot (the plain image, no views)"] == [floor, floor]
    readme = "x\n<!-- results:views-accuracy -->\n<!-- /results:views-accuracy -->\n"
    rendered = rt.render_readme(readme, out)
    assert table in rendered and "Source: `docs/results/views-accuracy.json`: `edgeclip bench views" in rendered
    assert rt.check_readme(rendered, out) == []


@pytest.mark.parametrize(("views", "match"), [
    ([4], "at least two"), ([4, 4], "at least two"), ([0, 4], ">= 1"), ([-2, 4], ">= 1"), ([2.5, 4], ">= 1"),
    ([True, 4], ">= 1"), ("4,8", "list of integers"),
])
def test_check_views_refuses(views: Any, match: str) -> None:
    with pytest.raises(InputError, match=match):
        check_views(views)


def test_parse_views() -> None:
    assert parse_views("16, 4,8,4") == [4, 8, 16]
    assert check_views(np.array([8, 2])) == [2, 8]
    with pytest.raises(InputError, match="'x' is not an integer"):
        parse_views("4,x")


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"n": 0}, "n \\(frames per shift\\)"), ({"methods": ["zero-shot"]}, "unknown or viewless"),
    ({"methods": []}, "no methods"), ({"shifts": ["fog"]}, "unknown shift"), ({"shifts": []}, "no shifts"),
    ({"threads": 0}, "threads"), ({"seed": -1}, "seed"), ({"n_resamples": 0}, "n_resamples"),
])
def test_bad_input_before_any_work(kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(InputError, match=match):
        bench_views(**{**TINY, **kwargs})


@pytest.mark.parametrize(("value", "match"), [
    ("0,4", "every view count must be an integer >= 1"), ("4", "at least two distinct view counts"),
    ("4,eight", "'eight' is not an integer"), ("", "not an integer"),
])
def test_cli_bad_views(value: str, match: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["bench", "views", "--views", value])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "--views" in err and match in err


def test_cli_bad_methods_and_shifts(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", "views", "--methods", "tpt,coop", "--out", str(tmp_path)]) == 2
    assert "unknown or viewless method(s) ['coop']" in capsys.readouterr().err
    assert main(["bench", "views", "--shifts", "fog", "--out", str(tmp_path)]) == 2
    assert "unknown shift(s) ['fog']" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["bench", "views", "--n", "0"])
    assert not list(tmp_path.iterdir())  # refused before anything was written


def test_cli_end_to_end(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(["bench", "views", "--n", "2", "--views", "2,1", "--methods", "zero", "--shifts", "clean",
               "--threads", "1", "--out", str(tmp_path), "--json"])
    assert rc == 0
    printed = json.loads(capsys.readouterr().out)
    assert [(r["method"], r["n_views"]) for r in printed["rows"]] == [(FLOOR, None), ("zero", 1), ("zero", 2)]
    assert printed["config"]["prototypes"] is None  # ZERO needs no prototypes
    for ext in ("json", "md", "png"):
        assert (tmp_path / f"views-accuracy.{ext}").stat().st_size > 0
