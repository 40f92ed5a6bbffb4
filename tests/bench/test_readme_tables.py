"""The README's result tables: rendered from result files between markers, checked, and errors for what is missing.

The last test runs the check on the committed README and docs/results, so a hand-edited table fails CI.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from edgeclip.bench import readme_tables as rt
from edgeclip.bench.report import invoked_command, write_report
from edgeclip.bench.result_tables import encoders_table

ROOT = Path(__file__).resolve().parents[2]


def _zero_shot(acc: dict[str, float]) -> dict[str, Any]:
    return {"title": "zero-shot", "bench": "zero-shot", "columns": ["shift", "n", "accuracy", "chance"],
            "rows": [{"shift": s, "n": 8, "accuracy": a, "chance": 6.25} for s, a in acc.items()], "chance": 6.25,
            "machine": {"processor": "Test CPU", "cpu_usable": 2, "threads": 2, "timestamp": "2030-01-02T03:04:05"}}


@pytest.fixture()
def results_dir(tmp_path: Path) -> Path:
    out = tmp_path / "docs" / "results"
    write_report(_zero_shot({"clean": 99.5, "blur": 61.25}), out, "zero-shot-micro",
                 command="python -m edgeclip.bench.zero_shot --out docs/results")
    return out


README = """# Title

Some prose with 12.5 % in it.

<!-- results:micro-zero-shot -->
| stale | table |
|---|---|
| 1 | 2 |
<!-- /results:micro-zero-shot -->

More prose.
"""


def test_render_fills_the_block_and_keeps_the_rest(results_dir: Path) -> None:
    out = rt.render_readme(README, results_dir)
    assert out.startswith("# Title\n\nSome prose with 12.5 % in it.\n\n<!-- results:micro-zero-shot -->\n")
    assert out.endswith("<!-- /results:micro-zero-shot -->\n\nMore prose.\n")
    block = out.split("<!-- results:micro-zero-shot -->\n")[1].split("<!-- /results:micro-zero-shot -->")[0]
    lines = block.strip("\n").split("\n")
    assert lines[0].split("|")[1:-1] == [" clean ", " blur  ", " chance "]
    assert [c.strip() for c in lines[2].split("|")[1:-1]] == ["99.5%", "61.2%", "6.25%"]
    assert lines[3] == ""  # a blank line ends the table before the caption
    assert lines[4] == ("Source: `docs/results/zero-shot-micro.json`: `python -m edgeclip.bench.zero_shot --out "
                        "docs/results` on Test CPU (2 cores usable), 2 threads, 2030-01-02.")
    assert rt.render_readme(out, results_dir) == out  # idempotent
    assert rt.check_readme(out, results_dir) == []


def test_check_finds_a_hand_edited_or_stale_table(results_dir: Path) -> None:
    assert rt.check_readme(README, results_dir) == ["micro-zero-shot"]
    good = rt.render_readme(README, results_dir)
    assert rt.check_readme(good.replace("99.5%", "99.7%"), results_dir) == ["micro-zero-shot"]
    # a new result file makes the committed table stale
    write_report(_zero_shot({"clean": 98.0, "blur": 61.25}), results_dir, "zero-shot-micro", command="edgeclip x")
    assert rt.check_readme(good, results_dir) == ["micro-zero-shot"]


def test_main_check_and_rewrite(results_dir: Path, tmp_path: Path) -> None:
    readme = tmp_path / "README.md"
    readme.write_text(README)
    args = ["--readme", str(readme), "--results", str(results_dir)]
    assert rt.main([*args, "--check"]) == 1 and readme.read_text() == README
    assert rt.main(args) == 0 and readme.read_text() != README
    assert rt.main([*args, "--check"]) == 0


def test_a_table_without_its_result_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(rt.ResultsError, match=r"micro-zero-shot.*no result file.*zero-shot-micro\.json"):
        rt.render_readme(README, tmp_path)
    readme = tmp_path / "README.md"
    readme.write_text(README)
    assert rt.main(["--readme", str(readme), "--results", str(tmp_path), "--check"]) == 2


def test_unknown_names_and_broken_markers_are_errors(results_dir: Path) -> None:
    with pytest.raises(rt.ResultsError, match="does not know"):
        rt.render_readme("<!-- results:nope -->\n<!-- /results:nope -->\n", results_dir)
    with pytest.raises(rt.ResultsError, match="no matching"):
        rt.render_readme("<!-- results:micro-zero-shot -->\n| a |\n", results_dir)
    with pytest.raises(rt.ResultsError, match="twice"):
        rt.render_readme(README + README, results_dir)
    with pytest.raises(rt.ResultsError, match="closes nothing"):
        rt.render_readme(README + "<!-- /results:micro-zero-shot -->\n", results_dir)


def test_a_result_file_without_command_is_an_error(tmp_path: Path) -> None:
    out = tmp_path / "results"
    write_report(_zero_shot({"clean": 99.0}), out, "zero-shot-micro")  # a library call: no command
    assert json.loads((out / "zero-shot-micro.json").read_text())["command"] is None
    with pytest.raises(rt.ResultsError, match="records no command"):
        rt.render_readme(README, out)


def test_unbacked_tables_are_listed(results_dir: Path) -> None:
    text = rt.render_readme(README, results_dir) + "\n## Speed\n\n| a | b |\n|---|---|\n| 1 | 2 |\n"
    loose = rt.unbacked_tables(text)
    assert len(loose) == 1 and "under 'Speed'" in loose[0]


def test_encoders_table_shows_the_retry() -> None:
    machine = {"threads": 2}
    rows = [{"encoder": "image", "backend": "torch", "provider": None, "batch": 32, "requested_batch": 64,
             "median_ms": 2400.0, "error": None},
            {"encoder": "image", "backend": "onnxruntime", "provider": "CPUExecutionProvider", "batch": 32,
             "requested_batch": 64, "median_ms": 2000.0, "speedup": 1.2, "speedup_lo": 1.1, "speedup_hi": 1.3,
             "tokens": None, "error": None}]
    table = encoders_table([{"rows": rows, "machine": machine}])
    assert "64 (ran at 32: out of memory)" in table and "2.4 s" in table and "**1.20×** (1.10–1.30)" in table


def test_invoked_command() -> None:
    assert invoked_command(["/usr/local/bin/edgeclip", "bench", "tta", "--shifts", "a b"]) == (
        "edgeclip bench tta --shifts 'a b'")
    module = ROOT / "edgeclip" / "bench" / "zero_shot.py"
    assert invoked_command([str(module), "--out", "x"]) == "python -m edgeclip.bench.zero_shot --out x"
    assert invoked_command([str(ROOT / "edgeclip" / "cli.py"), "bench", "encoders"]) == "edgeclip bench encoders"
    assert invoked_command(["/usr/bin/pytest", "-q"]) is None


def test_committed_readme_matches_its_result_files() -> None:
    """Every marked table in README.md is what docs/results gives; regenerate with
    `python -m edgeclip.bench.readme_tables` after adding or updating a result file."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    assert rt.check_readme(text, ROOT / rt.RESULTS_DIR) == []


def test_invoked_command_names_the_environment_that_changes_the_run(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EDGECLIP_NATIVE_MARCH", "x86-64-v3")
    monkeypatch.delenv("ATEN_CPU_CAPABILITY", raising=False)
    assert invoked_command(["/usr/bin/edgeclip", "bench", "kernels"]) == (
        "EDGECLIP_NATIVE_MARCH=x86-64-v3 edgeclip bench kernels")
    assert invoked_command(["/usr/bin/python", "-c", "x"]) is None


def test_simd_summary_names_the_widest_extension() -> None:
    assert rt.simd_summary(["sse4_2", "avx2", "fma", "avx512f", "amx_tile"]) == "AVX-512, AMX"
    assert rt.simd_summary(["sse4_2", "avx", "avx2", "fma"]) == "AVX2, no AVX-512"
    assert rt.simd_summary(["asimd", "asimddp"]) == "NEON (+dotprod)"
    assert rt.simd_summary(["sse4_1", "sse4_2"]) == "SSE only"
    assert rt.simd_summary(None) is None


def test_kernel_view_and_memory_renderers() -> None:
    from edgeclip.bench.result_tables import kernels_table, online_memory_table, view_accuracy_table

    def row(impl: str, ms: float, **kw: float) -> dict:
        return {"case": "augment_views", "shape": "1080×1920 → 64×224²", "impl": impl, "median_ms": ms, **kw}

    native = {"config": {"native_kernel": {"isa": "avx2", "march": "x86-64-v3"}},
              "machine": {"torch_cpu_capability": "AVX2"}, "rows": [
        row("edgeclip:native[avx2]", 10.0),
        row("PIL loop (TPT)", 150.0, speedup=15.0, speedup_lo=12.0, speedup_hi=17.0),
        row("tv2 per view", 40.0, speedup=4.0, speedup_lo=0.9, speedup_hi=5.0, parity_mean=1 / 255,
            parity_max=2 / 255)]}
    table = kernels_table([native])
    assert "AVX2 (`-march=x86-64-v3`) | AVX2" in table and "150 ms: **15.0×** (12.0–17.0)" in table
    assert "40 ms: 4.00× (0.90–5.00)" in table and "1.00 / 2.00" in table  # not bold: its range reaches below 1
    views = view_accuracy_table([{"rows": [{"shift": "low_contrast", "n": 8, "tpt_kernel": 50.0,
                                            "tpt_torchvision": 37.5, "diff_points": 12.5, "same_prediction": 75.0}]}])
    assert "low contrast" in views and "+12.50" in views and "75.0 %" in views
    memory = online_memory_table([{"config": {"segment": 500}, "summary": {
        "frames_done": 20000, "rss_warmup_mb": 1000.0, "rss_end_mb": 1003.0, "level_growth_mb": 0.5,
        "trend_mb": 1.2, "slope_mb_per_1k_frames": 0.06, "tolerance_mb": 20.0, "rss_max_after_warmup_mb": 1040.0,
        "constant": True, "accuracy": 54.2, "collapse_resets": 5, "median_ms": 70.0},
        "rows": [{"state_bytes": 385280, "gc_objects": 416310}, {"state_bytes": 385280,
                                                                          "gc_objects": 416535}]}])
    assert "20000 (500)" in memory and "**yes**" in memory and "385,280 / 385,280 bytes" in memory
    assert "416,310 / 416,535" in memory and "54.2 %" in memory
