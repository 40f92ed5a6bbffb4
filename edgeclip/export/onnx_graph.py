"""Tracing the towers into ONNX graphs with dynamic batch (and sequence) dimensions."""

from __future__ import annotations

import contextlib
import io
import logging
import tempfile
import warnings
from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper, numpy_helper
from torch import nn

from edgeclip.errors import ExportError
from edgeclip.runtime.io_spec import IMAGE_ENCODER, MAX_BATCH, PIXELS, TEXT_ENCODER, TOKEN_EMBEDS, GraphSpec
from edgeclip.runtime.text_tower import TextTower

log = logging.getLogger(__name__)

OPSET = 18
__all__ = ["MAX_BATCH", "OPSET", "ImageGraph", "TextGraph", "export_image_graph", "export_text_graph", "save_onnx",
           "store_weights_fp16"]


class ImageGraph(nn.Module):
    """`IMAGE_ENCODER`: pixels [B,3,S,S] (normalised) -> image_embeds [B,D] (not normalised). The forward
    argument is named as the graph input (`PIXELS`), which `torch.export`'s dynamic shapes are keyed by."""

    def __init__(self, visual: nn.Module) -> None:
        super().__init__()
        self.visual = visual

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.visual(pixels)


class TextGraph(nn.Module):
    """`TEXT_ENCODER`: token_embeds [N,L,W], eot_index [N] -> text_embeds [N,D]; the causal mask is built for L.
    The forward arguments are named as the graph inputs."""

    def __init__(self, tower: TextTower) -> None:
        super().__init__()
        self.tower = tower

    def forward(self, token_embeds: torch.Tensor, eot_index: torch.Tensor) -> torch.Tensor:
        return self.tower.forward_full(token_embeds, eot_index)


def _export(module: nn.Module, args: tuple, path: Path, spec: GraphSpec, dynamic_shapes: dict) -> None:
    """torch.export-based ONNX export into one self-contained file, inputs and outputs named by `spec`."""
    quiet = io.StringIO()
    for noisy in ("onnx_ir", "onnxscript", "torch.onnx"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        with contextlib.redirect_stdout(quiet), warnings.catch_warnings(), tempfile.TemporaryDirectory() as tmp:
            warnings.simplefilter("ignore")
            tmp_path = Path(tmp) / path.name
            torch.onnx.export(
                module,
                args,
                str(tmp_path),
                dynamo=True,
                input_names=spec.input_names,
                output_names=spec.output_names,
                dynamic_shapes=dynamic_shapes,
                opset_version=OPSET,
                external_data=True,
            )
            proto = onnx.load(str(tmp_path), load_external_data=True)
    except Exception as exc:  # the exporter raises many types
        raise ExportError(f"ONNX export of {type(module).__name__} failed: {exc}") from exc
    save_onnx(proto, path)


def save_onnx(proto: onnx.ModelProto, path: Path) -> None:
    """Save a graph as one file (weights inside) and run the ONNX checker on it."""
    onnx.save_model(proto, str(path), save_as_external_data=False)
    try:
        onnx.checker.check_model(str(path), full_check=True)
    except onnx.checker.ValidationError as exc:
        raise ExportError(f"ONNX checker rejected {path.name}: {exc}") from exc


def _dynamic_shapes(spec: GraphSpec, dims: dict[str, torch.export.Dim]) -> dict[str, dict[int, torch.export.Dim]]:
    """`torch.export` dynamic shapes of `spec`'s inputs: each dynamic axis whose dimension is in `dims`."""
    return {t.name: {axis: dims[name] for axis, name in t.dynamic.items() if name in dims} for t in spec.inputs}


def export_image_graph(visual: nn.Module, image_size: int, path: Path) -> None:
    """Export `visual` as `IMAGE_ENCODER` (dynamic batch) to `path`."""
    (batch_dim,) = PIXELS.dynamic.values()
    dims = {batch_dim: torch.export.Dim(batch_dim, min=1, max=MAX_BATCH)}
    example = (torch.randn(2, 3, image_size, image_size),)  # (B, 3, S, S)
    _export(ImageGraph(visual).eval(), example, path, IMAGE_ENCODER, _dynamic_shapes(IMAGE_ENCODER, dims))


def export_text_graph(tower: TextTower, path: Path) -> None:
    """Export `tower` as `TEXT_ENCODER` to `path`: dynamic N, and dynamic L when the tower is causal."""
    n_dim, seq_dim = TOKEN_EMBEDS.dynamic[0], TOKEN_EMBEDS.dynamic[1]
    ctx = tower.context_length
    length = min(ctx, 9) if tower.causal else ctx
    example = (torch.randn(3, length, tower.width), torch.tensor([length - 1, 1, length // 2]))  # (N, L, W), (N,)
    dims = {n_dim: torch.export.Dim(n_dim, min=1, max=MAX_BATCH)}
    if tower.causal:  # a bidirectional tower always runs the full context: L stays fixed
        dims[seq_dim] = torch.export.Dim(seq_dim, min=2, max=ctx)
    _export(TextGraph(tower).eval(), example, path, TEXT_ENCODER, _dynamic_shapes(TEXT_ENCODER, dims))


def store_weights_fp16(path: Path, min_elements: int = 1024) -> None:
    """Rewrite a graph so its large float32 weights are stored as float16 and cast back at load.

    Compute stays in float32: the weights are expected to be fp16-exact already
    (`round_weights_to_fp16`), so results are unchanged while the file halves.
    """
    proto = onnx.load(str(path))
    graph = proto.graph
    new_inits = []
    casts = []
    for init in graph.initializer:
        if init.data_type != TensorProto.FLOAT or int(np.prod(init.dims)) < min_elements:
            new_inits.append(init)
            continue
        arr = numpy_helper.to_array(init)
        half = arr.astype(np.float16)
        if not np.array_equal(half.astype(np.float32), arr):
            log.debug("weight %s is not fp16-exact; storing it rounded", init.name)
        store_name = f"{init.name}__fp16"
        new_inits.append(numpy_helper.from_array(half, store_name))
        casts.append(helper.make_node("Cast", [store_name], [init.name], to=TensorProto.FLOAT,
                                      name=f"{init.name}__cast"))
    del graph.initializer[:]
    graph.initializer.extend(new_inits)
    nodes = list(graph.node)
    del graph.node[:]
    graph.node.extend(casts + nodes)
    save_onnx(proto, path)
