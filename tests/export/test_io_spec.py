"""The exported graphs carry exactly the tensors `edgeclip.runtime.io_spec` defines, and the runtime binds them
by those names without importing the exporter."""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

import onnx
import torch

from edgeclip.export.onnx_graph import ImageGraph, TextGraph
from edgeclip.runtime import io_spec
from edgeclip.runtime.io_spec import IMAGE_ENCODER, TEXT_ENCODER, GraphSpec

_ONNX_TYPES = {"float32": onnx.TensorProto.FLOAT, "int64": onnx.TensorProto.INT64}


def _check_graph(path: Path, spec: GraphSpec, fixed: dict[str, dict[int, int]]) -> None:
    graph = onnx.load(str(path), load_external_data=False).graph
    init = {i.name for i in graph.initializer}
    inputs = [v for v in graph.input if v.name not in init]
    assert [v.name for v in inputs] == spec.input_names
    assert [v.name for v in graph.output] == spec.output_names
    for value, tensor in zip([*inputs, *graph.output], [*spec.inputs, *spec.outputs], strict=True):
        assert value.type.tensor_type.elem_type == _ONNX_TYPES[tensor.dtype], tensor.name
        dims = value.type.tensor_type.shape.dim
        assert len(dims) == len(tensor.shape), tensor.name
        for axis, dim in enumerate(dims):
            if axis in fixed.get(tensor.name, {}):
                assert dim.dim_value == fixed[tensor.name][axis], (tensor.name, axis)
            elif axis in tensor.dynamic:
                assert dim.dim_param and not dim.dim_value, (tensor.name, axis)  # symbolic, not baked in
            else:
                assert dim.dim_value > 0, (tensor.name, axis)


def test_exported_graphs_match_the_spec(tiny_bundle: Path) -> None:
    import json

    manifest = json.loads((tiny_bundle / "manifest.json").read_text())
    _check_graph(tiny_bundle / IMAGE_ENCODER.file, IMAGE_ENCODER, {})
    causal = manifest.get("text", {}).get("causal", True)
    fixed = {} if causal else {"token_embeds": {1: manifest["text"]["context_length"]}}
    _check_graph(tiny_bundle / TEXT_ENCODER.file, TEXT_ENCODER, fixed)


def test_graph_modules_take_the_spec_names() -> None:
    # torch.export keys dynamic shapes by the forward arguments' names, so they must be the graph input names
    assert list(inspect.signature(ImageGraph.forward).parameters)[1:] == IMAGE_ENCODER.input_names
    assert list(inspect.signature(TextGraph.forward).parameters)[1:] == TEXT_ENCODER.input_names


def test_describe() -> None:
    assert IMAGE_ENCODER.describe() == "pixels float32[B,3,S,S] -> image_embeds float32[B,D]"
    assert TEXT_ENCODER.describe() == ("token_embeds float32[N,L,W], eot_index int64[N] -> text_embeds float32[N,D]")


def test_runtime_never_imports_export() -> None:
    runtime = Path(io_spec.__file__).parent
    for path in runtime.rglob("*.py"):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            assert not any(n == "edgeclip.export" or n.startswith("edgeclip.export.") for n in names), path


def test_encoders_feed_by_spec_names(tiny_bundle: Path) -> None:
    import edgeclip

    model = edgeclip.load(tiny_bundle, backend="onnxruntime", threads=1)
    sess = model.image_encoder.session
    assert [i.name for i in sess.get_inputs()] == IMAGE_ENCODER.input_names
    size = model.preprocess_cfg.image_size
    out = model.image_encoder(torch.randn(2, 3, size, size))
    assert out.shape == (2, model.bundle.embed_dim) and out.dtype == torch.float32
