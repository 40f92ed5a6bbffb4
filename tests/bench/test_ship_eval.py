"""`edgeclip bench ship` on tiny sizes: the report has every method's base, new and H, and the paired CI."""

from __future__ import annotations

import json

from edgeclip.cli import main


def test_bench_ship_tiny_run_writes_a_report(tmp_path, capsys) -> None:
    code = main(["bench", "ship", "--shots", "2", "--n-test", "32", "--vae-epochs", "1", "--prompt-epochs", "1",
                 "--long-vae", "2",
                 "--domains", "clean", "--out", str(tmp_path), "--json"])
    assert code == 0
    data = json.loads((tmp_path / "ship-micro.json").read_text())
    assert data["machine"]["cpu_model"] and data["machine"]["simd"] is not None
    text = (tmp_path / "ship-micro.md").read_text()
    assert "CoOp" in text and "SHIP" in text
    assert json.loads(capsys.readouterr().out)  # --json prints the results
    sources = [r["source"] for r in data["tables"][1]["rows"]]
    assert len(sources) == 4 and sources[0].startswith("zero-shot") and "2 VAE epochs" in sources[-1]
    for r in data["tables"][1]["rows"]:
        assert 0 <= r["prototype acc"] <= 100 and -1 <= r["cos to real mean"] <= 1 and r["spread"] <= 1


def test_fidelity_of_perfect_prototypes() -> None:
    import torch

    from edgeclip.bench.ship_eval import synthetic_fidelity

    x = torch.nn.functional.normalize(torch.eye(4)[[0, 1, 2, 3, 2, 3]] + 0.01, dim=-1)
    y = torch.tensor([0, 1, 2, 3, 2, 3])  # classes 2 and 3 are the new ones
    out = synthetic_fidelity(x[2:4], torch.tensor([0, 1]), x, y, [2, 3])
    assert out["prototype acc"] == 100.0 and abs(out["cos to real mean"] - 1) < 1e-5 and abs(out["spread"] - 1) < 1e-5
