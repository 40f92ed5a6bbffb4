"""FP16 bundle variants: FP16 weights except the FP32 islands, float32 IO, parity through onnxruntime, a bundle
that loads and verifies, clear errors and nothing half-written."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

import edgeclip
from edgeclip.assets import MICRO_BUNDLE
from edgeclip.data import shapes
from edgeclip.errors import BundleError, ExportError, InputError
from edgeclip.export import variant as variant_mod
from edgeclip.export.fp16 import convert_bundle_fp16, convert_graph_fp16
from edgeclip.export.variant import cosine_stats, final_projection_nodes
from edgeclip.runtime.bundle import IMAGE_ONNX, IMAGE_TOWER, MANIFEST, TEXT_ONNX, open_bundle

FP32_KEPT = {"LayerNormalization", "Softmax"}
TEMPLATE = shapes.ZERO_SHOT_TEMPLATE.replace("{cls}", "{}")


@pytest.fixture(scope="module")
def fp16_bundle(tmp_path_factory: pytest.TempPathFactory):
    out = tmp_path_factory.mktemp("fp16") / "micro-fp16.bundle"
    return convert_bundle_fp16(MICRO_BUNDLE, out)


def _types(proto: onnx.ModelProto) -> dict[str, int]:
    g = onnx.shape_inference.infer_shapes(proto).graph
    types = {v.name: v.type.tensor_type.elem_type for v in [*g.input, *g.value_info, *g.output]}
    types.update({i.name: i.data_type for i in g.initializer})
    return types


def _no_leftovers(parent: Path, name: str) -> None:
    assert not (parent / name).exists()
    assert not [p for p in parent.iterdir() if p.name.startswith(f".{name}.tmp-")]


@pytest.mark.parametrize("graph", [IMAGE_ONNX, TEXT_ONNX])
def test_weights_are_fp16_except_the_fp32_islands(fp16_bundle, graph: str) -> None:
    proto = onnx.load(str(fp16_bundle.path / graph))
    g = proto.graph
    proj = set(final_projection_nodes(g))
    kept = {n.name for n in g.node if n.op_type in FP32_KEPT} | proj
    inits = {i.name: i for i in g.initializer}
    fp32 = {name for name, i in inits.items() if i.data_type == TensorProto.FLOAT}
    fp16 = {name for name, i in inits.items() if i.data_type == TensorProto.FLOAT16}
    assert len(fp16) > len(fp32) > 0
    for node in g.node:
        for name in node.input:
            if name in fp32:  # an FP32 weight feeds only a kept op
                assert node.name in kept, f"{node.op_type} {node.name} reads the FP32 weight {name}"
            if node.op_type in ("MatMul", "Gemm", "Conv") and node.name not in proj and name in inits:
                assert name in fp16, f"{node.op_type} {node.name} weight {name} is not FP16"
    # the kept ops compute in FP32, the rest of the arithmetic in FP16
    types = _types(proto)
    for node in g.node:
        if node.op_type in FP32_KEPT or node.name in proj:
            assert types[node.input[0]] == TensorProto.FLOAT and types[node.output[0]] == TensorProto.FLOAT
        elif node.op_type in ("MatMul", "Gemm", "Conv", "Erf"):
            assert types[node.output[0]] == TensorProto.FLOAT16, f"{node.op_type} {node.name} is not FP16"
    assert {n.op_type for n in g.node if n.name in proj} >= {"MatMul"}


def test_graph_inputs_and_outputs_stay_float32(fp16_bundle) -> None:
    for graph in (IMAGE_ONNX, TEXT_ONNX):
        src, new = onnx.load(str(MICRO_BUNDLE / graph)).graph, onnx.load(str(fp16_bundle.path / graph)).graph
        io = [(v.name, v.type.tensor_type.elem_type) for v in [*new.input, *new.output]]
        assert io == [(v.name, v.type.tensor_type.elem_type) for v in [*src.input, *src.output]]
        assert all(t in (TensorProto.FLOAT, TensorProto.INT64) for _, t in io)


def test_cosine_vs_fp32_through_onnxruntime(fp16_bundle) -> None:
    """Fresh inputs through the runtime: the FP16 bundle's embeddings vs the FP32 bundle's, both encoders."""
    ref = edgeclip.load(MICRO_BUNDLE, backend="onnxruntime")
    new = edgeclip.load(fp16_bundle.path, backend="onnxruntime")
    images = list(shapes.make_batch(12, seed=77, shift="blur").images)
    pixels = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    for inputs in (images, pixels):
        a = ref.encode_images(inputs, normalize=False).numpy()
        b = new.encode_images(inputs, normalize=False).numpy()
        assert cosine_stats(a, b)[1] >= 0.999
        assert not np.array_equal(a, b)  # it really is another graph
    prompts = [TEMPLATE.format(c) for c in shapes.class_names()] + ["x", "a photo of a robot arm"]
    a, b = ref.encode_text(prompts, normalize=False).numpy(), new.encode_text(prompts, normalize=False).numpy()
    assert cosine_stats(a, b)[1] >= 0.999
    assert fp16_bundle.parity["image_min_cos"] >= 0.999 and fp16_bundle.parity["text_min_cos"] >= 0.999


def test_variant_manifest_loads_verifies_and_classifies(fp16_bundle, tmp_path: Path) -> None:
    manifest = json.loads((fp16_bundle.path / MANIFEST).read_text())
    assert manifest["precision"]["compute"] == "float16"
    assert manifest["extra"]["variant"]["kind"] == "fp16"
    assert manifest["parity"]["image_min_cos"] == fp16_bundle.parity["image_min_cos"]
    assert IMAGE_TOWER not in manifest["files"] and not (fp16_bundle.path / IMAGE_TOWER).exists()
    batch = shapes.make_batch(16, seed=5)
    labels = edgeclip.load(fp16_bundle.path, backend="onnxruntime").classifier(
        shapes.class_names(), template=TEMPLATE).predict(list(batch.images)).labels.numpy()
    assert (labels == batch.labels).mean() >= 0.8
    # a changed byte is refused
    copy = tmp_path / "tampered.bundle"
    shutil.copytree(fp16_bundle.path, copy)
    data = bytearray((copy / TEXT_ONNX).read_bytes())
    data[len(data) // 2] ^= 0xFF
    (copy / TEXT_ONNX).write_bytes(bytes(data))
    with pytest.raises(BundleError, match="sha256"):
        edgeclip.load(copy, backend="onnxruntime")


def test_convert_graph_keeps_named_ops_fp32() -> None:
    """A small graph: x -> MatMul(W) -> LayerNorm -> Softmax -> MatMul(P) -> y."""
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.standard_normal((8, 8)).astype(np.float32), "W")
    p = numpy_helper.from_array(rng.standard_normal((8, 4)).astype(np.float32), "P")
    scale = numpy_helper.from_array(np.ones(8, np.float32), "g")
    big = numpy_helper.from_array(np.full(8, 1e6, np.float32), "big")
    nodes = [helper.make_node("MatMul", ["x", "W"], ["h"], name="mm"),
             helper.make_node("Add", ["h", "big"], ["hb"], name="add"),
             helper.make_node("LayerNormalization", ["hb", "g"], ["n"], name="ln", axis=-1),
             helper.make_node("Softmax", ["n"], ["s"], name="sm", axis=-1),
             helper.make_node("MatMul", ["s", "P"], ["y"], name="proj")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["b", 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["b", 4])], [w, p, scale, big])
    proto, report = convert_graph_fp16(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]))
    inits = {i.name: i for i in proto.graph.initializer}
    assert inits["W"].data_type == TensorProto.FLOAT16 and inits["P"].data_type == TensorProto.FLOAT
    assert inits["g"].data_type == TensorProto.FLOAT
    assert float(numpy_helper.to_array(inits["big"]).max()) == 65504.0 and report.clamped_values == 8
    assert sorted(report.fp32_nodes) == ["ln", "proj", "sm"]
    types = _types(proto)
    assert types["h"] == TensorProto.FLOAT16 and types["y"] == TensorProto.FLOAT and types["s"] == TensorProto.FLOAT
    assert [i.type.tensor_type.elem_type for i in proto.graph.input] == [TensorProto.FLOAT]


def test_bad_requests_are_refused_before_writing(fp16_bundle, tmp_path: Path) -> None:
    with pytest.raises(InputError, match="does not exist"):
        convert_bundle_fp16(tmp_path / "nope.bundle", tmp_path / "out.bundle")
    _no_leftovers(tmp_path, "out.bundle")
    taken = tmp_path / "taken.bundle"
    taken.mkdir()
    (taken / "keep.txt").write_text("mine")
    with pytest.raises(ExportError, match="already exists"):
        convert_bundle_fp16(MICRO_BUNDLE, taken)
    assert (taken / "keep.txt").read_text() == "mine"
    with pytest.raises(InputError, match="source bundle"):
        convert_bundle_fp16(MICRO_BUNDLE, MICRO_BUNDLE, overwrite=True)
    open_bundle(MICRO_BUNDLE)  # the source is untouched
    with pytest.raises(InputError, match="already a fp16 variant"):
        convert_bundle_fp16(fp16_bundle.path, tmp_path / "again.bundle")
    _no_leftovers(tmp_path, "again.bundle")


def test_failures_leave_nothing_half_written(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ExportError, match="disagree with FP32"):
        convert_bundle_fp16(MICRO_BUNDLE, tmp_path / "strict.bundle", min_cos=1.01)
    _no_leftovers(tmp_path, "strict.bundle")

    def broken(folder: Path, raw: dict) -> dict:
        raise OSError("disk full")

    monkeypatch.setattr(variant_mod, "write_manifest", broken)
    with pytest.raises(OSError, match="disk full"):
        convert_bundle_fp16(MICRO_BUNDLE, tmp_path / "late.bundle")
    _no_leftovers(tmp_path, "late.bundle")


@pytest.mark.gpu
def test_fp16_graph_agrees_with_torch_half_on_cuda(fp16_bundle) -> None:
    """The FP16 ONNX (onnxruntime CPU; no GPU onnxruntime or TensorRT is needed) against the FP32 bundle's
    PyTorch image tower run in half precision on CUDA: the torch-side parity of the GPU deployment graph."""
    from edgeclip.export.variant import image_parity_pixels, ort_session, pixel_feeds, run_graph

    fp32 = edgeclip.load(MICRO_BUNDLE, backend="torch", device="cuda")
    pixels = image_parity_pixels(open_bundle(MICRO_BUNDLE))
    onnx_fp16 = run_graph(ort_session(fp16_bundle.path / IMAGE_ONNX), pixel_feeds(pixels))
    with torch.no_grad(), torch.autocast("cuda", dtype=torch.float16):
        torch_half = fp32.image_encoder(torch.from_numpy(pixels).cuda()).float().cpu().numpy()
    mean, low = cosine_stats(torch_half, onnx_fp16)
    assert low >= 0.999, (mean, low)
