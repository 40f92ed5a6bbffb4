"""`edgeclip bench train` on tiny sizes: both implementations timed, the ratio and peak memory reported."""

from __future__ import annotations

import json

from edgeclip.cli import main


def test_bench_train_tiny_run(tmp_path, capsys) -> None:
    code = main(["bench", "train", "--samples", "16", "--rounds", "2", "--max-time", "5", "--out", str(tmp_path),
                 "--suffix", "tiny", "--json"])
    assert code == 0
    data = json.loads((tmp_path / "train-speed-tiny.json").read_text())
    assert [r["implementation"] for r in data["rows"]] == ["edgeclip", "official structure"]
    assert all(r["rounds"] >= 2 and r["epoch_median_ms"] > 0 for r in data["rows"])
    sp = data["speedup"]
    assert sp["ratio_lo"] <= sp["ratio"] <= sp["ratio_hi"]
    assert data["config"]["truncated_tokens"] < data["config"]["context_tokens"] == 77
    assert json.loads(capsys.readouterr().out)["rows"]
