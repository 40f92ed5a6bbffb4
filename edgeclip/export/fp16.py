"""FP16 encoder graphs for GPU runtimes, with FP32 islands, written as a bundle variant.

`convert_graph_fp16` rewrites an ONNX graph with onnx's own helpers (no onnxconverter-common): float
initializers, Constant values and intermediate tensors become FLOAT16, except around the ops kept in FP32 --
LayerNormalization (it overflows in FP16 on TensorRT, NVIDIA/TensorRT#2564), Softmax, and the final projection
(the last MatMul/Gemm before each output, with whatever data movement leads into it from a kept op). A kept op
reads FP32 inputs through inserted ``Cast`` nodes, keeps its weights in FP32, and its outputs are cast back to
FP16 for FP16 consumers. Graph inputs and outputs stay float32, so the runtime contract (`io_spec`) does not
change. FP16-stored weights (`store_weights_fp16`) are folded first.

`convert_bundle_fp16` converts both encoders of a bundle and writes them as a new bundle variant
(`edgeclip.export.variant`), with the cosine of both encoders against the source's FP32 graphs through
onnxruntime CPU (ORT may run some FP16 ops through its own inserted casts there; the graph is meant for GPU
runtimes) and a refusal below `MIN_FP16_COS`.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from tqdm.auto import tqdm

from edgeclip.errors import ExportError
from edgeclip.export.bundle_writer import _terminate_as_exit
from edgeclip.export.onnx_graph import save_onnx
from edgeclip.export.variant import (
    DATA_MOVEMENT_OPS,
    VariantResult,
    cosine_stats,
    final_projection_nodes,
    fold_storage_casts,
    image_parity_pixels,
    open_source,
    ort_session,
    pixel_feeds,
    prepare_out,
    run_graph,
    text_parity,
    write_variant,
)
from edgeclip.runtime.bundle import IMAGE_ONNX, TEXT_ONNX, Bundle

log = logging.getLogger(__name__)

__all__ = ["FP32_OPS", "MIN_FP16_COS", "Fp16Report", "convert_bundle_fp16", "convert_graph_fp16"]

#: Op types always computed in FP32 inside an FP16 graph.
FP32_OPS = ("LayerNormalization", "Softmax")
#: The lowest cosine (either encoder, vs FP32, through onnxruntime CPU) a converted bundle may have.
MIN_FP16_COS = 0.999
FP16_MAX = float(np.finfo(np.float16).max)

# inputs whose type does not follow the node's precision (any type is fine there)
_TYPE_FREE_INPUTS = {"Shape": (0,), "Size": (0,), "Cast": (0,), "CastLike": (0,)}
# inputs that must stay float32 whatever the node's precision
_FLOAT32_INPUTS = {"Resize": (2,), "Upsample": (1,)}


@dataclass
class Fp16Report:
    """What `convert_graph_fp16` did."""

    fp32_nodes: list[str] = field(default_factory=list)  # nodes computed in FP32 (kept ops + projection)
    fp32_op_types: dict[str, int] = field(default_factory=dict)
    casts_inserted: int = 0
    fp16_initializers: int = 0
    fp32_initializers: int = 0
    clamped_values: int = 0  # finite weights beyond FP16's range, clamped to +-65504
    folded_storage_casts: int = 0

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def _to_fp16(arr: np.ndarray, report: Fp16Report) -> np.ndarray:
    big = np.isfinite(arr) & (np.abs(arr) > FP16_MAX)
    if big.any():
        report.clamped_values += int(big.sum())
        arr = np.where(big, np.sign(arr) * FP16_MAX, arr)
    return arr.astype(np.float16)


def _elem_types(proto: onnx.ModelProto) -> dict[str, int]:
    """Element type of every tensor in the graph (inputs, initializers, node outputs), from shape inference."""
    try:
        inferred = onnx.shape_inference.infer_shapes(proto, strict_mode=True)
    except Exception as exc:  # onnx raises InferenceError and others
        raise ExportError(f"shape inference failed on the graph to convert to FP16: {exc}") from exc
    g = inferred.graph
    types = {v.name: v.type.tensor_type.elem_type for v in [*g.input, *g.value_info, *g.output]}
    types.update({i.name: i.data_type for i in g.initializer})
    missing = [o for n in g.node for o in n.output if o and o not in types]
    if missing:
        raise ExportError(f"cannot tell the element type of {len(missing)} tensors (e.g. {missing[:3]}) in the "
                          "graph to convert to FP16")
    return types


def _kept_nodes(graph: onnx.GraphProto, fp32_ops: Iterable[str], keep_projection: bool) -> set[str]:
    """Names of the nodes that compute in FP32: `fp32_ops`, the final projection, data movement that reads a
    kept node's output (the cast back to FP16 goes after it, so no FP16 round trip sits between two kept
    ops), and a Transpose that feeds a MatMul with constant weights (onnxruntime 1.32's CPU optimiser
    crashes on FP16 Transpose -> MatMul(const) at ``ORT_ENABLE_ALL``, the level the runtime uses)."""
    kept = {n.name for n in graph.node if n.op_type in set(fp32_ops)}
    if keep_projection:
        kept.update(final_projection_nodes(graph))
    producer = {o: n for n in graph.node for o in n.output}
    inits = {i.name for i in graph.initializer}
    for n in graph.node:
        if n.op_type == "MatMul" and len(n.input) > 1 and n.input[1] in inits and n.input[0] in producer:
            before = producer[n.input[0]]
            if before.op_type == "Transpose":
                kept.add(before.name)
    changed = True
    while changed:
        changed = False
        for n in graph.node:
            if n.name in kept or n.op_type not in DATA_MOVEMENT_OPS:
                continue
            first = n.input[0] if n.input else ""
            if first in producer and first not in inits and producer[first].name in kept:
                kept.add(n.name)
                changed = True
    return kept


def convert_graph_fp16(proto: onnx.ModelProto, *, fp32_ops: Iterable[str] = FP32_OPS,
                       keep_projection: bool = True) -> tuple[onnx.ModelProto, Fp16Report]:
    """An FP16 copy of `proto` with `fp32_ops` (and the final projection) kept in FP32 and float32 graph
    inputs and outputs. The result passes onnx's strict shape inference; save it with `save_onnx`."""
    proto = onnx.ModelProto.FromString(proto.SerializeToString())
    report = Fp16Report(folded_storage_casts=fold_storage_casts(proto))
    graph = proto.graph
    for node in graph.node:
        if any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for a in node.attribute):
            raise ExportError(f"node {node.name} ({node.op_type}) has a subgraph; FP16 conversion of control "
                              "flow is not supported")
    for i, node in enumerate(graph.node):  # every node needs a name to be referred to
        if not node.name:
            node.name = f"fp16_unnamed_{i}_{node.op_type}"
    types = _elem_types(proto)
    kept = _kept_nodes(graph, fp32_ops, keep_projection)
    report.fp32_nodes = sorted(kept)
    for n in graph.node:
        if n.name in kept:
            report.fp32_op_types[n.op_type] = report.fp32_op_types.get(n.op_type, 0) + 1

    def wants(node: onnx.NodeProto, idx: int) -> int | None:
        """The float type `node` needs at input `idx`, None when any type will do."""
        if idx in _TYPE_FREE_INPUTS.get(node.op_type, ()):
            return None
        if idx in _FLOAT32_INPUTS.get(node.op_type, ()):
            return TensorProto.FLOAT
        return TensorProto.FLOAT if node.name in kept else TensorProto.FLOAT16

    # which precisions of each float initializer are needed
    inits = {i.name: i for i in graph.initializer}
    need: dict[str, set[int]] = {}
    for node in graph.node:
        for idx, name in enumerate(node.input):
            if name in inits and inits[name].data_type == TensorProto.FLOAT:
                want = wants(node, idx)
                need.setdefault(name, set()).add(TensorProto.FLOAT if want is None else want)
    graph_outputs = {o.name for o in graph.output}
    new_inits: list[onnx.TensorProto] = []
    stored: dict[tuple[str, int], str] = {}  # (initializer, type) -> the name it is stored under
    for init in graph.initializer:
        kinds = need.get(init.name, set())
        if init.data_type != TensorProto.FLOAT or not kinds or init.name in graph_outputs:
            new_inits.append(init)
            stored[(init.name, init.data_type)] = init.name
            continue
        arr = numpy_helper.to_array(init)
        if TensorProto.FLOAT in kinds:
            new_inits.append(init)
            stored[(init.name, TensorProto.FLOAT)] = init.name
            report.fp32_initializers += 1
        if TensorProto.FLOAT16 in kinds:
            name = init.name if TensorProto.FLOAT not in kinds else f"{init.name}__fp16"
            new_inits.append(numpy_helper.from_array(_to_fp16(arr, report), name))
            stored[(init.name, TensorProto.FLOAT16)] = name
            report.fp16_initializers += 1

    # tensor types after conversion: graph inputs keep theirs, node outputs follow the node's precision
    dtype: dict[str, int] = {i.name: i.type.tensor_type.elem_type for i in graph.input}
    casts: dict[tuple[str, int], str] = {}
    new_nodes: list[onnx.NodeProto] = []

    def feed(name: str, want: int) -> str:
        if (name, want) in stored:
            return stored[(name, want)]
        if name in inits and (name, TensorProto.FLOAT) in stored:
            name = stored[(name, TensorProto.FLOAT)]
        have = dtype.get(name, types.get(name))
        if have == want or have not in (TensorProto.FLOAT, TensorProto.FLOAT16):
            return name
        key = (name, want)
        if key not in casts:
            suffix = "fp16" if want == TensorProto.FLOAT16 else "fp32"
            casts[key] = f"{name}__to_{suffix}"
            new_nodes.append(helper.make_node("Cast", [name], [casts[key]], to=want, name=f"{name}__cast_{suffix}"))
            dtype[casts[key]] = want
            report.casts_inserted += 1
        return casts[key]

    for node in graph.node:
        fp16_node = node.name not in kept
        for idx, name in enumerate(node.input):
            if not name or types.get(name) != TensorProto.FLOAT:
                continue
            want = wants(node, idx)
            if want is not None:
                node.input[idx] = feed(name, want)
        if fp16_node:
            if node.op_type == "Constant":  # a scalar or list constant becomes an FP16 tensor constant
                for attr in list(node.attribute):
                    if attr.name in ("value_float", "value_floats"):
                        value = np.asarray(helper.get_attribute_value(attr), dtype=np.float32)
                        node.attribute.remove(attr)
                        node.attribute.append(helper.make_attribute(
                            "value", numpy_helper.from_array(_to_fp16(value, report))))
            for attr in node.attribute:
                if attr.name == "to" and node.op_type == "Cast" and attr.i == TensorProto.FLOAT:
                    attr.i = TensorProto.FLOAT16
                if attr.type == onnx.AttributeProto.TENSOR and attr.t.data_type == TensorProto.FLOAT:
                    attr.t.CopyFrom(numpy_helper.from_array(_to_fp16(numpy_helper.to_array(attr.t), report),
                                                            attr.t.name))
        for out in node.output:
            if out and types.get(out) == TensorProto.FLOAT:
                dtype[out] = TensorProto.FLOAT16 if fp16_node else TensorProto.FLOAT
            elif out:
                dtype[out] = types.get(out, TensorProto.UNDEFINED)
        new_nodes.append(node)

    # graph outputs stay float32: an output an FP16 node makes is renamed and cast back
    for out in graph.output:
        if out.type.tensor_type.elem_type == TensorProto.FLOAT and dtype.get(out.name) == TensorProto.FLOAT16:
            inner = f"{out.name}__fp16"
            for node in new_nodes:
                node.input[:] = [inner if i == out.name else i for i in node.input]
                node.output[:] = [inner if o == out.name else o for o in node.output]
            new_nodes.append(helper.make_node("Cast", [inner], [out.name], to=TensorProto.FLOAT,
                                              name=f"{out.name}__cast_fp32"))
            report.casts_inserted += 1

    del graph.node[:]
    graph.node.extend(new_nodes)
    del graph.initializer[:]
    graph.initializer.extend(new_inits)
    del graph.value_info[:]
    try:
        proto = onnx.shape_inference.infer_shapes(proto, strict_mode=True)
    except Exception as exc:  # onnx raises InferenceError and others
        raise ExportError(f"the FP16 graph does not type-check: {exc}") from exc
    return proto, report


def _convert_file(src: Path, dst: Path) -> Fp16Report:
    proto, report = convert_graph_fp16(onnx.load(str(src)))
    save_onnx(proto, dst)
    log.info("%s -> FP16: %d FP32 nodes (%s), %d casts", src.name, len(report.fp32_nodes),
             report.fp32_op_types, report.casts_inserted)
    return report


def convert_bundle_fp16(
    bundle: str | Path | Bundle,
    out: str | Path,
    *,
    overwrite: bool = False,
    progress: bool = False,
    min_cos: float = MIN_FP16_COS,
    parity_images: int = 32,
) -> VariantResult:
    """Write an FP16 variant of `bundle` at `out`: both encoder graphs converted (`convert_graph_fp16`), the
    rest copied (the PyTorch image tower left out; see `edgeclip.export.variant`).

    Parity is measured through onnxruntime CPU against the source's graphs: `parity_images` procedural images
    over every shift and real prompts (full length and truncated). Below `min_cos` (min cosine, either
    encoder) the variant is refused with an `ExportError` naming the figures and nothing is written.

    Raises:
        InputError: `bundle` does not exist, or `out` is the source bundle.
        BundleError: the source bundle is corrupt.
        ExportError: `out` exists without `overwrite`, a graph cannot be converted, or parity fails.
    """
    source = open_source(bundle)
    out_path = prepare_out(source, out, overwrite)
    with _terminate_as_exit(), tqdm(total=4, desc="convert fp16", disable=not progress, unit="step") as steps, \
            tempfile.TemporaryDirectory(prefix="edgeclip-fp16-") as scratch:
        work = Path(scratch)
        steps.set_postfix_str("image graph")
        img_report = _convert_file(source.file(IMAGE_ONNX), work / IMAGE_ONNX)
        steps.update()
        steps.set_postfix_str("text graph")
        txt_report = _convert_file(source.file(TEXT_ONNX), work / TEXT_ONNX)
        steps.update()
        steps.set_postfix_str("parity")
        feeds = pixel_feeds(image_parity_pixels(source, parity_images))
        ref = run_graph(ort_session(source.file(IMAGE_ONNX)), feeds)
        new = run_graph(ort_session(work / IMAGE_ONNX), feeds)
        img_mean, img_min = cosine_stats(ref, new)
        txt = text_parity(source, work / TEXT_ONNX)
        parity = {"image_min_cos": img_min, "image_mean_cos": img_mean, "image_n": float(len(ref)),
                  "text_min_cos": txt["text_min_cos"], "text_mean_cos": txt["text_mean_cos"],
                  "text_n": txt["text_n"], "truncation_max_abs": txt["truncation_max_abs"],
                  "min_required_cos": float(min_cos)}
        log.info("fp16 parity: %s", parity)
        if not (img_min >= min_cos and txt["text_min_cos"] >= min_cos):
            raise ExportError(f"the FP16 graphs disagree with FP32: min cosine image {img_min:.6f}, text "
                              f"{txt['text_min_cos']:.6f} (need >= {min_cos}); no bundle written")
        steps.update()
        steps.set_postfix_str("writing")
        precision = {"compute": "float16", "storage": source.spec.precision.storage, "graph_weights": "float16",
                     "image_encoder": "float16",
                     "text_encoder": "float16", "fp32_ops": ", ".join([*FP32_OPS, "final projection"]),
                     "io": "float32"}
        choices = {"fp32_ops": [*FP32_OPS, "final projection"], "image": img_report.to_dict(),
                   "text": txt_report.to_dict(), "converter": "edgeclip.export.fp16 (onnx helpers)"}
        info = {"fp16": {"fp32_ops": choices["fp32_ops"], "image_fp32_nodes": img_report.fp32_op_types,
                         "text_fp32_nodes": txt_report.fp32_op_types},
                "checked_with": "onnxruntime CPU"}
        manifest = write_variant(source, out_path, {IMAGE_ONNX: work / IMAGE_ONNX, TEXT_ONNX: work / TEXT_ONNX},
                                 kind="fp16", precision=precision, parity=parity, info=info, overwrite=overwrite)
        steps.update()
    return VariantResult(out_path, "fp16", precision, parity, choices, manifest)
