"""INT8 QDQ bundle variants: Q/DQ around the weight matmuls and convolutions only, the calibration method chosen
by measurement, a bundle that loads, verifies and classifies like FP32, clear errors and nothing half-written."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest

import edgeclip
from edgeclip.assets import MICRO_BUNDLE
from edgeclip.data import shapes
from edgeclip.errors import BundleError, ExportError, InputError
from edgeclip.export.quantize import METHODS, calibration_pixels, quantize_bundle
from edgeclip.export.variant import final_projection_nodes, open_source
from edgeclip.runtime.bundle import IMAGE_ONNX, IMAGE_TOWER, MANIFEST, TEXT_ONNX, sha256_file

TEMPLATE = shapes.ZERO_SHOT_TEMPLATE.replace("{cls}", "{}")
FP32_OPS = ("LayerNormalization", "Softmax", "Erf", "Add")


@pytest.fixture(scope="module")
def int8_bundle(tmp_path_factory: pytest.TempPathFactory):
    out = tmp_path_factory.mktemp("int8") / "micro-int8.bundle"
    return quantize_bundle(MICRO_BUNDLE, out, calib="shapes:32", method="auto")


def _no_leftovers(parent: Path, name: str) -> None:
    assert not (parent / name).exists()
    assert not [p for p in parent.iterdir() if p.name.startswith(f".{name}.tmp-")]


def test_qdq_around_matmul_and_conv_only(int8_bundle) -> None:
    g = onnx.load(str(int8_bundle.path / IMAGE_ONNX)).graph
    producer = {o: n for n in g.node for o in n.output}
    inits = {i.name for i in g.initializer}
    ops = [n.op_type for n in g.node]
    assert ops.count("QuantizeLinear") > 0 and ops.count("DequantizeLinear") > ops.count("QuantizeLinear")

    def from_dq(name: str) -> bool:
        return name in producer and producer[name].op_type == "DequantizeLinear"

    proj = set(final_projection_nodes(g))
    weight_ops = [n for n in g.node if n.name not in proj and (
        n.op_type in ("Conv", "Gemm") or (n.op_type == "MatMul" and from_dq(n.input[1])))]
    assert {n.op_type for n in weight_ops} >= {"Conv", "MatMul"}
    for n in weight_ops:  # activation and weight both come through Q/DQ
        assert from_dq(n.input[0]) and from_dq(n.input[1]), f"{n.op_type} {n.name} is not quantised"
    for n in g.node:
        if n.op_type in FP32_OPS:  # these read float tensors, never a dequantised int8 one
            assert not any(from_dq(i) for i in n.input), f"{n.op_type} {n.name} reads a DequantizeLinear"
        if n.op_type == "QuantizeLinear":
            assert producer.get(n.input[0]) is None or producer[n.input[0]].op_type not in ("Softmax", "Erf")
        if n.name in proj:
            assert not any(from_dq(i) for i in n.input) and not any(i in inits and from_dq(i) for i in n.input)
    # the weights themselves are stored as int8
    int8 = [i for i in g.initializer if i.data_type == onnx.TensorProto.INT8]
    assert len(int8) >= len(weight_ops)


def test_method_chosen_by_measurement_and_recorded(int8_bundle) -> None:
    figures = int8_bundle.choices["methods"]
    assert set(figures) == set(METHODS)
    for f in figures.values():
        assert math.isfinite(f["mean_cos"]) and math.isfinite(f["min_cos"]) and f["min_cos"] <= f["mean_cos"] <= 1
    best = int8_bundle.choices["method"]
    assert all(round(figures[best]["min_cos"], 4) >= round(f["min_cos"], 4) for f in figures.values())
    manifest = json.loads((int8_bundle.path / MANIFEST).read_text())
    parity = manifest["parity"]
    assert parity["image_min_cos"] == figures[best]["min_cos"] and parity["image_mean_cos"] == figures[best]["mean_cos"]
    for m in METHODS:
        assert parity[f"image_{m}_min_cos"] == figures[m]["min_cos"]
    assert parity["image_min_cos"] >= 0.98 and parity["image_fresh_min_cos"] >= 0.98
    assert manifest["precision"]["compute"] == "int8" and manifest["precision"]["text_encoder"].startswith("float32")
    variant = manifest["extra"]["variant"]
    assert variant["kind"] == "int8" and variant["int8"]["method"] == best
    assert variant["int8"]["calibration"] == {"source": "shapes:32", "images": 24, "held_out": 8}
    # the text encoder is the source's, byte for byte; the torch image tower is gone
    assert manifest["files"][TEXT_ONNX]["sha256"] == sha256_file(MICRO_BUNDLE / TEXT_ONNX)
    assert IMAGE_TOWER not in manifest["files"]


def test_loads_verifies_and_classifies_like_fp32(int8_bundle, tmp_path: Path) -> None:
    batch = shapes.make_batch(24, seed=123)
    names = shapes.class_names()
    ref = edgeclip.load(MICRO_BUNDLE, backend="onnxruntime").classifier(names, template=TEMPLATE)
    new = edgeclip.load(int8_bundle.path, backend="onnxruntime").classifier(names, template=TEMPLATE)
    a = ref.predict(list(batch.images)).labels.numpy()
    b = new.predict(list(batch.images)).labels.numpy()
    assert (a == b).mean() >= 0.8
    copy = tmp_path / "tampered.bundle"
    shutil.copytree(int8_bundle.path, copy)
    data = bytearray((copy / IMAGE_ONNX).read_bytes())
    data[-100] ^= 0x01
    (copy / IMAGE_ONNX).write_bytes(bytes(data))
    with pytest.raises(BundleError, match="sha256"):
        edgeclip.load(copy, backend="onnxruntime")


def test_calibration_images_are_preprocessed_as_the_runtime_does(tmp_path: Path) -> None:
    folder = shapes.save_image_folder(tmp_path / "calib", 1, seed=4)
    source = open_source(MICRO_BUNDLE)
    pixels, what = calibration_pixels(source, folder)
    paths = sorted(folder.rglob("*.png"))
    expected = edgeclip.load(MICRO_BUNDLE, backend="onnxruntime").preprocess(paths).numpy()
    assert "16 images" in what and pixels.shape == (16, 3, 32, 32)
    np.testing.assert_array_equal(pixels, expected)
    spec_pixels, _ = calibration_pixels(source, "shapes:7")
    assert spec_pixels.shape == (7, 3, 32, 32) and spec_pixels.dtype == np.float32


def test_bad_requests_are_refused_before_writing(tmp_path: Path) -> None:
    out = tmp_path / "out.bundle"
    empty = tmp_path / "empty"
    empty.mkdir()
    bad = [
        (dict(bundle=tmp_path / "nope.bundle"), InputError, "does not exist"),
        (dict(calib="shapes:0"), InputError, "shapes:N"),
        (dict(calib="shapes:lots"), InputError, "shapes:N"),
        (dict(calib=empty), InputError, "holds no images"),
        (dict(calib=[]), InputError, "no images"),
        (dict(calib="shapes:1"), InputError, "at least 2"),
        (dict(calib=tmp_path / "missing-folder"), InputError, "not a folder"),
        (dict(method="kl"), InputError, "method"),
    ]
    for kwargs, error, match in bad:
        bundle = kwargs.pop("bundle", MICRO_BUNDLE)
        with pytest.raises(error, match=match):
            quantize_bundle(bundle, out, **{"calib": "shapes:8", **kwargs})
        _no_leftovers(tmp_path, "out.bundle")
    taken = tmp_path / "taken.bundle"
    taken.mkdir()
    with pytest.raises(ExportError, match="already exists"):
        quantize_bundle(MICRO_BUNDLE, taken, calib="shapes:8")
    assert not any(taken.iterdir())


def test_failed_parity_writes_nothing(tmp_path: Path) -> None:
    with pytest.raises(ExportError, match=r"disagrees with FP32.*minmax"):
        quantize_bundle(MICRO_BUNDLE, tmp_path / "strict.bundle", calib="shapes:8", method="minmax", min_cos=1.01)
    _no_leftovers(tmp_path, "strict.bundle")
