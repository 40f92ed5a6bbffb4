"""`edgeclip bench online-memory` at tiny sizes on the embedded micro bundle.

Nothing here asserts a memory or speed level (a 40-frame run says nothing about 20,000 frames): only the
structure of the results, the accounting (sample frames, accuracy, collapse resets, shift schedule), that the
method state is reported constant for online PromptSync, that a failed or interrupted run leaves a partial
report, that the CLI writes JSON, Markdown and PNG, and that bad input is refused before any work.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from edgeclip.bench.online_memory import (
    COLUMNS,
    TOLERANCE_MIN_MB,
    _sample_frames,
    bench_online_memory,
    memory_verdict,
)
from edgeclip.cli import main
from edgeclip.data import shapes
from edgeclip.data.streams import EVAL_SEED
from edgeclip.errors import InputError
from edgeclip.runtime.methods import PromptSync
from edgeclip.runtime.prediction import Prediction

TINY: dict[str, Any] = {"frames": 40, "n_views": 8, "every": 10, "warmup": 10, "prototypes": "shapes:32",
                        "threads": 1, "progress": False}


def _finite(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], Path]:
    out = tmp_path_factory.mktemp("online-memory")
    return bench_online_memory(out_dir=out, **TINY), out


def test_result_fields_and_samples(run: tuple[dict[str, Any], Path]) -> None:
    res = run[0]
    assert res["bench"] == "online-memory" and res["complete"] is True and res["error"] is None
    assert res["columns"] == COLUMNS
    rows = res["rows"]
    assert [r["frame"] for r in rows] == [0, 10, 20, 30, 40]
    assert [r["phase"] for r in rows] == ["warm-up"] + ["measured"] * 4
    for r in rows:
        assert set(COLUMNS) <= set(r)
        assert _finite(r["rss_mb"]) and r["rss_mb"] > 0 and r["gc_objects"] > 0
        assert r["collapse_resets"] == 0
    assert rows[0]["accuracy"] is None and rows[0]["median_ms"] is None
    assert all(_finite(r["median_ms"]) and r["median_ms"] > 0 for r in rows[1:])
    cfg = res["config"]
    assert cfg["method"] == "promptsync" and cfg["method_key"] == "promptsync-online" and cfg["mode"] == "online"
    assert cfg["n_views"] == 8 and cfg["prototypes"]["kind"] == "images" and cfg["threads"] == 1
    s = res["summary"]
    assert s["frames_done"] == 40 and s["post_warmup_samples"] == 4 and s["measured_frames"] == 30
    assert s["rss_warmup_mb"] == rows[1]["rss_mb"] and s["rss_end_mb"] == rows[-1]["rss_mb"]
    assert s["rss_max_after_warmup_mb"] == max(r["rss_mb"] for r in rows[1:])
    assert s["growth_mb"] == pytest.approx(s["rss_max_after_warmup_mb"] - s["rss_warmup_mb"])
    assert s["tolerance_mb"] == pytest.approx(max(0.02 * s["rss_warmup_mb"], TOLERANCE_MIN_MB))
    assert _finite(s["slope_mb_per_1k_frames"]) and isinstance(s["constant"], bool)
    assert _finite(s["ms_per_frame"]) and s["p90_ms"] >= s["median_ms"] > 0
    assert s["bank"]["offered"] > 0 and s["bank"]["entries"] <= s["bank"]["capacity"] * s["bank"]["classes"]
    assert res["shift_changes"] == [] and [g["shift"] for g in res["segments"]] == ["clean"]
    assert any("verdict" in n for n in res["notes"])
    assert res["machine"]["threads"] == 1


def test_reports_written(run: tuple[dict[str, Any], Path]) -> None:
    res, out = run
    assert set(res["files"]) == {"json", "md", "png"}
    data = json.loads((out / "online-memory.json").read_text())
    assert data["complete"] is True and [r["frame"] for r in data["rows"]] == [0, 10, 20, 30, 40]
    assert data["summary"]["state_bytes_constant"] is True
    md = (out / "online-memory.md").read_text()
    assert "constant memory" in md and "| frame |" in md
    assert (out / "online-memory.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_state_bytes_constant_for_online_promptsync(run: tuple[dict[str, Any], Path]) -> None:
    res, _ = run
    s, rows = res["summary"], res["rows"]
    assert s["state_bytes_constant"] is True and s["bank_bytes_constant"] is True
    assert len({r["bank_bytes"] for r in rows}) == 1 and rows[0]["bank_bytes"] > 0
    assert len({r["state_bytes"] for r in rows[1:]}) == 1
    parts = s["state_parts"]
    assert parts["total"] == sum(v for k, v in parts.items() if k != "total")
    assert parts["bank"] == rows[-1]["bank_bytes"] and parts["optimizer"] == 0  # prompts restart every frame


def test_accuracy_and_resets_match_the_labels(monkeypatch: pytest.MonkeyPatch) -> None:
    """A stand-in predict (always class 0, a collapse reset every 7th frame): the harness's accuracy, segments
    and reset count must be exactly what the stream's labels give."""
    calls = {"n": 0}

    def fake_predict(self: PromptSync, images: Any) -> Prediction:
        calls["n"] += 1
        info = {"collapse_reset": True} if calls["n"] % 7 == 0 else {}
        c = len(self.class_names)
        return Prediction(torch.zeros(1, dtype=torch.int64), torch.full((1, c), 1.0 / c), self.class_names, {},
                          {"frames": [info]})

    monkeypatch.setattr(PromptSync, "predict", fake_predict)
    res = bench_online_memory(**{**TINY, "segment": 10})
    shifts = list(shapes.SHIFTS)
    truth = np.array([shapes.ShapesDataset(40, seed=EVAL_SEED, shift=shifts[i // 10])[i][1] for i in range(40)])
    s = res["summary"]
    assert calls["n"] == 40
    assert s["accuracy"] == pytest.approx(100.0 * float((truth == 0).mean()))
    assert 0.0 <= s["accuracy"] <= 100.0
    assert s["collapse_resets"] == 40 // 7
    assert [r["collapse_resets"] for r in res["rows"]] == [0, 1, 2, 4, 5]
    assert [r["accuracy"] for r in res["rows"][1:]] == pytest.approx(
        [100.0 * float((truth[:k] == 0).mean()) for k in (10, 20, 30, 40)])
    assert res["shift_changes"] == [10, 20, 30]
    assert [(g["shift"], g["start"], g["end"]) for g in res["segments"]] == [
        (shifts[k], 10 * k, 10 * k + 10) for k in range(4)]
    assert [g["correct"] for g in res["segments"]] == [int((truth[10 * k:10 * k + 10] == 0).sum()) for k in range(4)]
    assert [r["shift"] for r in res["rows"]] == [shifts[0], shifts[0], shifts[1], shifts[2], shifts[3]]


@pytest.mark.parametrize("exc", [KeyboardInterrupt, RuntimeError])
def test_interrupted_run_writes_partial_report(exc: type[BaseException], monkeypatch: pytest.MonkeyPatch,
                                               tmp_path: Path) -> None:
    real = PromptSync.predict
    calls = {"n": 0}

    def failing_predict(self: PromptSync, images: Any) -> Prediction:
        calls["n"] += 1
        if calls["n"] > 15:
            raise exc("stop here")
        return real(self, images)

    monkeypatch.setattr(PromptSync, "predict", failing_predict)
    with pytest.raises(exc):
        bench_online_memory(out_dir=tmp_path, **TINY)
    data = json.loads((tmp_path / "online-memory.json").read_text())
    assert data["complete"] is False and data["error"].startswith(exc.__name__)
    assert data["summary"]["frames_done"] == 15
    assert [r["frame"] for r in data["rows"]] == [0, 10]
    assert "INCOMPLETE" in data["title"] and "incomplete run" in (tmp_path / "online-memory.md").read_text()
    assert (tmp_path / "online-memory.png").is_file()


def test_tpt_control_has_no_bank() -> None:
    res = bench_online_memory(**{**TINY, "method": "tpt", "frames": 12, "every": 6, "warmup": 6,
                                 "prototypes": None})
    s = res["summary"]
    assert res["config"]["mode"] == "episodic" and res["config"]["prototypes"] is None
    assert s["bank"] is None and s["bank_bytes_constant"] is None and s["state_bytes_constant"] is True
    assert all(r["bank_bytes"] is None for r in res["rows"]) and s["collapse_resets"] == 0


def test_cli_end_to_end(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(["bench", "online-memory", "--method", "online_prototypes", "--frames", "20", "--views", "8",
               "--every", "10", "--warmup", "5", "--segment", "10", "--threads", "1", "--prototypes", "shapes:32",
               "--out", str(tmp_path), "--json"])
    assert rc == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["complete"] is True and [r["frame"] for r in printed["rows"]] == [0, 5, 10, 20]
    assert printed["config"]["method_key"] == "online-prototypes" and printed["shift_changes"] == [10]
    for ext in ("json", "md", "png"):
        assert (tmp_path / f"online-memory.{ext}").stat().st_size > 0


def test_sample_frames() -> None:
    assert sorted(_sample_frames(25, 10, 5)) == [0, 5, 10, 20, 25]
    assert sorted(_sample_frames(20, 10, 0)) == [0, 10, 20]


def test_memory_verdict_rule() -> None:
    flat = [{"frame": f, "rss_mb": 300.0 + (30.0 if f == 0 else 0.0)} for f in range(0, 2001, 250)]
    v = memory_verdict(flat, warmup=500)
    assert v["constant"] is True and v["rss_warmup_mb"] == 300.0 and v["growth_mb"] == 0.0
    assert v["tolerance_mb"] == TOLERANCE_MIN_MB and v["slope_mb_per_1k_frames"] == pytest.approx(0.0, abs=1e-9)
    leak = [{"frame": f, "rss_mb": 300.0 + 0.01 * f} for f in range(0, 2001, 250)]  # 10 MB per 1000 frames
    v = memory_verdict(leak, warmup=500)
    assert v["constant"] is False and v["slope_mb_per_1k_frames"] == pytest.approx(10.0)
    assert v["growth_mb"] == pytest.approx(15.0) and v["trend_mb"] == pytest.approx(15.0)
    big = [{"frame": f, "rss_mb": 1000.0 + 0.01 * f} for f in range(0, 2001, 250)]  # same rise, tol 2 % of 1005 MB
    assert memory_verdict(big, warmup=500)["constant"] is True
    assert memory_verdict(flat[:2], warmup=250)["constant"] is None
    # a transient peak that falls back is reported, not judged; a step up that stays is growth
    spike = [{"frame": f, "rss_mb": 300.0 + (40.0 if f == 1250 else 0.0)} for f in range(0, 3001, 250)]
    v = memory_verdict(spike, warmup=500)
    assert v["growth_mb"] == pytest.approx(40.0) and v["level_growth_mb"] == 0.0 and v["constant"] is True
    step = [{"frame": f, "rss_mb": 300.0 + (40.0 if f >= 1250 else 0.0)} for f in range(0, 3001, 250)]
    v = memory_verdict(step, warmup=500)
    assert v["level_growth_mb"] == pytest.approx(40.0) and v["constant"] is False


def test_rejudge_rewrites_a_saved_report(tmp_path: Path) -> None:
    from edgeclip.bench.online_memory import rejudge

    res = bench_online_memory(**{**TINY, "out_dir": tmp_path})
    data = json.loads(Path(res["files"]["json"]).read_text())
    data["summary"]["constant"] = None  # as if judged by another rule
    data["rows"][-1]["rss_mb"] += 1000.0  # a step at the last sample: the level of the last fifth rises
    (tmp_path / "saved.json").write_text(json.dumps(data))
    out = rejudge(tmp_path / "saved.json", tmp_path / "re")
    assert out["summary"]["constant"] is False and out["summary"]["level_growth_mb"] >= 1000.0 - 1e-6
    assert "recomputed" in out["notes"][-1] and (tmp_path / "re" / "online-memory.png").is_file()
    with pytest.raises(InputError, match="not an online-memory report"):
        rejudge(tmp_path / "re" / "online-memory.png")


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"frames": 0}, "frames"), ({"every": 0}, "every"), ({"segment": 0}, "segment"), ({"n_views": 0}, "views"),
    ({"method": "zero"}, "unknown method"), ({"warmup": 40}, "warmup"), ({"warmup": -1}, "warmup"),
    ({"threads": 0}, "threads"), ({"shifts": ["fog"]}, "unknown shift"),
])
def test_bad_input(kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(InputError, match=match):
        bench_online_memory(**{**TINY, **kwargs})


def test_cli_bad_input(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["bench", "online-memory", "--method", "zero"])
    assert info.value.code == 2
    assert main(["bench", "online-memory", "--frames", "0"]) == 2
    assert "frames must be an integer >= 1" in capsys.readouterr().err
    assert main(["bench", "online-memory", "--every", "0", "--frames", "5"]) == 2
    assert "every must be" in capsys.readouterr().err
