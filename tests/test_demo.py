"""The embedded micro bundle and the demo a new user runs first."""

from __future__ import annotations

import json

import edgeclip
from edgeclip.data import shapes
from edgeclip.demo import demo_table, run_demo
from edgeclip.runtime.bundle import open_bundle


def test_embedded_bundle_verifies_and_fits_budget() -> None:
    b = open_bundle(edgeclip.default_bundle(), verify=True)
    total = sum(p.stat().st_size for p in b.path.iterdir())
    assert total <= 12 * 1024 * 1024
    assert b.manifest["precision"]["storage"] == "float16"
    assert b.manifest["parity"]["image_min_cos"] >= 0.9999
    assert set(b.manifest["extra"]["zero_shot_accuracy"]) >= set(shapes.SHIFTS)


def test_embedded_model_classifies_clean_shapes() -> None:
    batch = shapes.make_batch(64, seed=777_001, shift="clean")
    pred = edgeclip.load(backend="onnxruntime").classifier(shapes.class_names()).predict(list(batch.images))
    assert (pred.labels.numpy() == batch.labels).mean() >= 0.9


def test_demo_runs_every_shift_on_every_backend() -> None:
    result = run_demo(n_per_shift=3, progress=False)
    shifts = {r["shift"] for r in result["rows"]}
    assert shifts == set(shapes.SHIFTS)
    assert {r["backend"] for r in result["rows"]} == {"torch", "onnxruntime"}
    for r in result["rows"]:
        assert 0.0 <= r["accuracy"] <= 1.0 and r["median_ms"] > 0 and r["p90_ms"] >= r["median_ms"]
    table = demo_table(result)
    assert table.count("\n") == len(shifts) + 1


def test_tta_demo_compares_the_methods_on_the_same_frames() -> None:
    from edgeclip.demo import TTA_METHODS, run_tta_demo, tta_table

    result = run_tta_demo(n_per_shift=2, shifts=["clean", "blur"], progress=False)
    assert {(r["shift"], r["method"]) for r in result["rows"]} == {
        (s, m) for s in ("clean", "blur") for m in TTA_METHODS
    }
    for r in result["rows"]:
        assert 0.0 <= r["accuracy"] <= 1.0 and r["median_ms"] > 0 and r["n"] == 2
    table = tta_table(result)
    assert table.count("\n") == 2 + 1 + 2 and "**mean**" in table


def test_tta_demo_loads_the_chosen_backend(monkeypatch) -> None:
    import pytest

    import edgeclip.demo as demo

    seen: dict = {}

    class Loaded(Exception):
        pass

    def fake_load(path, **kwargs):
        seen.update(kwargs)
        raise Loaded

    monkeypatch.setattr(demo, "load", fake_load)
    with pytest.raises(Loaded):
        demo.run_tta_demo(n_per_shift=1, shifts=["clean"], backend="torch", threads=1)
    assert seen == {"backend": "torch", "threads": 1}


def test_demo_cli_passes_backend_and_threads_to_both_parts(monkeypatch, capsys) -> None:
    import edgeclip.demo as demo
    from edgeclip.cli import main

    seen: dict[str, dict] = {}

    def fake_demo(bundle, **kwargs):
        seen["demo"] = kwargs
        return {"bundle": "b", "classes": ["a"], "seed": 0, "rows": []}

    def fake_tta(bundle, **kwargs):
        seen["tta"] = kwargs
        return {"bundle": "b", "backend": kwargs["backend"], "seed": 0, "rows": [], "prototypes": "p"}

    monkeypatch.setattr(demo, "run_demo", fake_demo)
    monkeypatch.setattr(demo, "run_tta_demo", fake_tta)
    monkeypatch.setattr(demo, "demo_table", lambda r: "")
    monkeypatch.setattr(demo, "tta_table", lambda r: "")
    assert main(["demo", "--backend", "torch", "--threads", "1", "--n", "1", "--tta-n", "1", "--json"]) == 0
    assert seen["demo"]["backends"] == ["torch"] and seen["tta"]["backend"] == "torch"
    assert seen["demo"]["threads"] == seen["tta"]["threads"] == 1
    assert seen["demo"]["progress"] is False and json.loads(capsys.readouterr().out)["tta"]["backend"] == "torch"
    assert main(["demo", "--n", "1", "--tta-n", "1"]) == 0
    assert seen["tta"]["backend"] == "auto" and seen["tta"]["progress"] is True


def test_threads_limit_pytorch_too(tiny_bundle) -> None:
    import pytest
    import torch

    from edgeclip.errors import InputError

    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        model = edgeclip.load(tiny_bundle, backend="torch", threads=1)
        assert torch.get_num_threads() == 1 and model.describe()["threads"] == 1
    finally:
        torch.set_num_threads(before)
    with pytest.raises(InputError, match="threads must be a positive integer"):
        edgeclip.load(tiny_bundle, threads=0)


def test_library_functions_draw_no_progress_bar_by_default(capsys) -> None:
    import inspect

    from edgeclip.demo import run_tta_demo
    from edgeclip.export import export_bundle
    from edgeclip.micro.build import build_micro_bundle, evaluate_bundle

    for fn in (run_demo, run_tta_demo, export_bundle, build_micro_bundle, evaluate_bundle):
        assert inspect.signature(fn).parameters["progress"].default is False, fn.__name__
    run_demo(n_per_shift=1, shifts=["clean"], backends=["onnxruntime"])
    assert "demo" not in capsys.readouterr().err  # no tqdm bar on stderr
