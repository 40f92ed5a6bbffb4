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
from edgeclip.runtime.text_tower import TextTower

log = logging.getLogger(__name__)

OPSET = 18
MAX_BATCH = 4096


class ImageGraph(nn.Module):
    """pixels [B,3,S,S] (normalised) -> image_embeds [B,D] (not normalised)."""

    def __init__(self, visual: nn.Module) -> None:
        super().__init__()
        self.visual = visual

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.visual(pixels)


class TextGraph(nn.Module):
    """token_embeds [N,L,W], eot_index [N] -> text_embeds [N,D]; the causal mask is built for L."""

    def __init__(self, tower: TextTower) -> None:
        super().__init__()
        self.tower = tower

    def forward(self, token_embeds: torch.Tensor, eot_index: torch.Tensor) -> torch.Tensor:
        return self.tower.forward_full(token_embeds, eot_index)


def _export(module: nn.Module, args: tuple, path: Path, names_in: list[str], names_out: list[str],
            dynamic_shapes: dict) -> None:
    """torch.export-based ONNX export into one self-contained file."""
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
                input_names=names_in,
                output_names=names_out,
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


def export_image_graph(visual: nn.Module, image_size: int, path: Path) -> None:
    batch = torch.export.Dim("batch", min=1, max=MAX_BATCH)
    example = (torch.randn(2, 3, image_size, image_size),)
    _export(ImageGraph(visual).eval(), example, path, ["pixels"], ["image_embeds"], {"pixels": {0: batch}})


def export_text_graph(tower: TextTower, path: Path) -> None:
    n = torch.export.Dim("n", min=1, max=MAX_BATCH)
    ctx = tower.context_length
    length = min(ctx, 9) if tower.causal else ctx
    example = (torch.randn(3, length, tower.width), torch.tensor([length - 1, 1, length // 2]))
    if tower.causal:
        seq = torch.export.Dim("seq", min=2, max=ctx)
        shapes = {"token_embeds": {0: n, 1: seq}, "eot_index": {0: n}}
    else:
        shapes = {"token_embeds": {0: n}, "eot_index": {0: n}}
    _export(TextGraph(tower).eval(), example, path, ["token_embeds", "eot_index"], ["text_embeds"], shapes)


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
