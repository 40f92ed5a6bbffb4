"""The exported encoders' tensors, defined once: names, dtypes, shapes and dynamic axes.

Export (`edgeclip.export.onnx_graph`) names the graphs' inputs and outputs and marks their dynamic axes from
here, parity (`edgeclip.export.parity`) feeds the graphs by these names, and the runtime
(`edgeclip.runtime.encoders`) binds and validates tensors by them, so a name or a shape changes in one place.

Shapes use these symbols: ``B`` images in a batch, ``S`` the image side, ``D`` the embedding width, ``N``
prompts in a batch, ``L`` tokens per prompt (at most the context length; fixed at the context length for a
bidirectional tower) and ``W`` the text transformer's width.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from edgeclip.runtime.bundle import IMAGE_ONNX, TEXT_ONNX

__all__ = [
    "EOT_INDEX",
    "IMAGE_EMBEDS",
    "IMAGE_ENCODER",
    "MAX_BATCH",
    "PIXELS",
    "TEXT_EMBEDS",
    "TEXT_ENCODER",
    "TOKEN_EMBEDS",
    "GraphSpec",
    "TensorSpec",
]

MAX_BATCH = 4096
"""The largest batch (B or N) the exported graphs accept."""


@dataclass(frozen=True)
class TensorSpec:
    """One input or output of an exported graph."""

    name: str  # the ONNX tensor name, also the forward argument's name at export
    dtype: str  # numpy dtype name: "float32" or "int64"
    shape: tuple[str | int, ...]  # symbolic shape, e.g. ("B", 3, "S", "S")
    dynamic: dict[int, str] = field(default_factory=dict)  # axis -> the dynamic dimension's export name
    doc: str = ""  # what the values are

    @property
    def np_dtype(self) -> np.dtype:
        return np.dtype(self.dtype)

    def describe(self) -> str:
        """``pixels float32[B,3,S,S]``."""
        return f"{self.name} {self.dtype}[{','.join(str(d) for d in self.shape)}]"


@dataclass(frozen=True)
class GraphSpec:
    """An exported encoder: its inputs and outputs, in order."""

    file: str  # the bundle file holding the graph
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]

    @property
    def input_names(self) -> list[str]:
        return [t.name for t in self.inputs]

    @property
    def output_names(self) -> list[str]:
        return [t.name for t in self.outputs]

    def describe(self) -> str:
        """``pixels float32[B,3,S,S] -> image_embeds float32[B,D]``."""
        ins = ", ".join(t.describe() for t in self.inputs)
        return f"{ins} -> {', '.join(t.describe() for t in self.outputs)}"


PIXELS = TensorSpec("pixels", "float32", ("B", 3, "S", "S"), {0: "batch"},
                    "images already resized and normalised with the bundle's mean and std")
IMAGE_EMBEDS = TensorSpec("image_embeds", "float32", ("B", "D"), {0: "batch"}, "image embeddings, not normalised")
TOKEN_EMBEDS = TensorSpec("token_embeds", "float32", ("N", "L", "W"), {0: "n", 1: "seq"},
                          "rows of the token-embedding table (the positional embedding is added inside); the "
                          "sequence axis is dynamic only for a causal tower")
EOT_INDEX = TensorSpec("eot_index", "int64", ("N",), {0: "n"}, "position of each prompt's end-of-text token")
TEXT_EMBEDS = TensorSpec("text_embeds", "float32", ("N", "D"), {0: "n"}, "text embeddings, not normalised")

IMAGE_ENCODER = GraphSpec(IMAGE_ONNX, (PIXELS,), (IMAGE_EMBEDS,))
TEXT_ENCODER = GraphSpec(TEXT_ONNX, (TOKEN_EMBEDS, EOT_INDEX), (TEXT_EMBEDS,))
