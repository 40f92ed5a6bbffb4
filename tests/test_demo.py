"""The embedded micro bundle and the demo a new user runs first."""

from __future__ import annotations

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
