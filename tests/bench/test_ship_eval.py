"""`edgeclip bench ship` on tiny sizes: the report has every method's base, new and H, and the paired CI."""

from __future__ import annotations

import json

from edgeclip.cli import main


def test_bench_ship_tiny_run_writes_a_report(tmp_path, capsys) -> None:
    code = main(["bench", "ship", "--shots", "2", "--n-test", "32", "--vae-epochs", "1", "--prompt-epochs", "1",
                 "--domains", "clean", "--out", str(tmp_path), "--json"])
    assert code == 0
    data = json.loads((tmp_path / "ship-micro.json").read_text())
    assert data["machine"]["cpu_model"] and data["machine"]["simd"] is not None
    text = (tmp_path / "ship-micro.md").read_text()
    assert "CoOp" in text and "SHIP" in text
    assert json.loads(capsys.readouterr().out)  # --json prints the results
