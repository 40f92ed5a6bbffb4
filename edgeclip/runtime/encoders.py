"""Image and text encoders behind one interface: callables on torch tensors.

Backends: `torch` (the reference) and `onnxruntime` (TensorRT EP -> CUDA EP -> CPU; CUDA tensors go
through IO binding, so nothing is copied to the host). `DispatchImageEncoder` / `DispatchTextEncoder` hold
one encoder per backend and route each call by its batch size (what ``backend="auto"`` builds when the
calibrated winner differs between batch sizes; see `edgeclip.runtime.backend_choice`).
"""

from __future__ import annotations

import logging
import math
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from edgeclip.errors import InputError
from edgeclip.runtime.io_spec import EOT_INDEX, IMAGE_EMBEDS, PIXELS, TEXT_EMBEDS, TOKEN_EMBEDS

log = logging.getLogger(__name__)

__all__ = [
    "DispatchImageEncoder",
    "DispatchTextEncoder",
    "ImageEncoder",
    "OrtImageEncoder",
    "OrtTextEncoder",
    "TextEncoder",
    "TorchImageEncoder",
    "TorchTextEncoder",
    "check_pixels",
    "check_text_inputs",
    "nearest_bucket",
]

_TORCH_DTYPES = {"float32": torch.float32, "int64": torch.int64}


def check_pixels(pixels: torch.Tensor, image_size: int) -> None:
    """Validate a pixel batch `PIXELS` [B,3,S,S] before it reaches a backend."""
    name = PIXELS.name
    if not isinstance(pixels, torch.Tensor):
        raise InputError(f"{name} must be a torch.Tensor, got {type(pixels).__name__}")
    if pixels.dim() != 4 or pixels.shape[1] != 3 or tuple(pixels.shape[2:]) != (image_size, image_size):
        raise InputError(
            f"image encoder expects {name} of shape [B, 3, {image_size}, {image_size}], got {list(pixels.shape)}"
        )
    if pixels.shape[0] == 0:
        raise InputError("image encoder got an empty batch (B = 0)")
    if not pixels.is_floating_point():
        raise InputError(f"{name} must be floating point (normalised), got {pixels.dtype}")
    if not torch.isfinite(pixels).all():
        raise InputError(f"{name} contain NaN or Inf values")


def check_text_inputs(token_embeds: torch.Tensor, eot_index: torch.Tensor, width: int, context: int) -> None:
    """Validate `TOKEN_EMBEDS` [N,L<=context,W] and `EOT_INDEX` [N] before they reach a backend."""
    if token_embeds.dim() != 3 or token_embeds.shape[2] != width or token_embeds.shape[1] > context:
        raise InputError(f"{TOKEN_EMBEDS.name} must be [N, L<={context}, {width}], got {list(token_embeds.shape)}")
    if eot_index.shape != (token_embeds.shape[0],):
        raise InputError(f"{EOT_INDEX.name} must be [{token_embeds.shape[0]}], got {list(eot_index.shape)}")
    if not torch.isfinite(token_embeds).all():
        raise InputError(f"{TOKEN_EMBEDS.name} contain NaN or Inf values")


class ImageEncoder(ABC):
    """`PIXELS` [B,3,S,S] normalised -> `IMAGE_EMBEDS` [B,D] (not normalised)."""

    backend = "base"

    def __init__(self, image_size: int, device: str) -> None:
        self.image_size = image_size
        self.device = torch.device(device)

    def __call__(self, pixels: torch.Tensor) -> torch.Tensor:
        check_pixels(pixels, self.image_size)
        return self._run(pixels)

    @abstractmethod
    def _run(self, pixels: torch.Tensor) -> torch.Tensor:
        """Encode a validated batch."""


class TorchImageEncoder(ImageEncoder):
    backend = "torch"

    def __init__(self, visual: nn.Module, image_size: int, device: str) -> None:
        super().__init__(image_size, device)
        self.visual = visual.to(self.device).eval().requires_grad_(False)

    @torch.no_grad()
    def _run(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.visual(pixels.to(self.device, torch.float32))


def _ort_run(session: Any, feeds: dict[str, torch.Tensor], out_name: str, out_shape: tuple[int, ...],
             device: torch.device) -> torch.Tensor:
    """Run a session on torch tensors; on CUDA bind device buffers directly (no host copies)."""
    if device.type == "cuda":
        binding = session.io_binding()
        for name, t in feeds.items():
            t = t.contiguous()
            binding.bind_input(name, "cuda", device.index or 0, _np_dtype(t.dtype), list(t.shape), t.data_ptr())
        out = torch.empty(out_shape, dtype=torch.float32, device=device)
        binding.bind_output(out_name, "cuda", device.index or 0, np.float32, list(out.shape), out.data_ptr())
        session.run_with_iobinding(binding)
        return out
    arrays = {k: v.detach().cpu().contiguous().numpy() for k, v in feeds.items()}
    return torch.from_numpy(session.run([out_name], arrays)[0])


def _np_dtype(dtype: torch.dtype) -> type:
    return {torch.float32: np.float32, torch.float16: np.float16, torch.int64: np.int64}[dtype]


class OrtImageEncoder(ImageEncoder):
    backend = "onnxruntime"

    def __init__(self, session: Any, image_size: int, embed_dim: int, device: str) -> None:
        super().__init__(image_size, device)
        self.session = session
        self.embed_dim = embed_dim

    def _run(self, pixels: torch.Tensor) -> torch.Tensor:
        pixels = pixels.to(self.device, _TORCH_DTYPES[PIXELS.dtype])
        return _ort_run(self.session, {PIXELS.name: pixels}, IMAGE_EMBEDS.name,
                        (pixels.shape[0], self.embed_dim), self.device)


class TextEncoder(ABC):
    """`TOKEN_EMBEDS` [N,L,W] + `EOT_INDEX` [N] -> `TEXT_EMBEDS` [N,D], no gradient."""

    backend = "base"

    def __init__(self, width: int, context: int, embed_dim: int, device: str) -> None:
        self.width = width
        self.context = context
        self.embed_dim = embed_dim
        self.device = torch.device(device)

    def __call__(self, token_embeds: torch.Tensor, eot_index: torch.Tensor) -> torch.Tensor:
        check_text_inputs(token_embeds, eot_index, self.width, self.context)
        return self._run(token_embeds, eot_index)

    @abstractmethod
    def _run(self, token_embeds: torch.Tensor, eot_index: torch.Tensor) -> torch.Tensor:
        """Encode validated token embeddings."""


class TorchTextEncoder(TextEncoder):
    backend = "torch"

    def __init__(self, tower: nn.Module, embed_dim: int, device: str) -> None:
        super().__init__(tower.width, tower.context_length, embed_dim, device)
        self.tower = tower

    @torch.no_grad()
    def _run(self, token_embeds: torch.Tensor, eot_index: torch.Tensor) -> torch.Tensor:
        return self.tower(token_embeds.to(self.device), eot_index.to(self.device))


class OrtTextEncoder(TextEncoder):
    backend = "onnxruntime"

    def __init__(self, session: Any, width: int, context: int, embed_dim: int, causal: bool, device: str) -> None:
        super().__init__(width, context, embed_dim, device)
        self.session = session
        self.causal = causal

    def _run(self, token_embeds: torch.Tensor, eot_index: torch.Tensor) -> torch.Tensor:
        if self.causal and token_embeds.shape[0] > 0:
            token_embeds = token_embeds[:, : int(eot_index.max()) + 1]
        elif token_embeds.shape[1] != self.context:
            raise InputError(
                f"this text encoder is bidirectional: it needs all {self.context} tokens, "
                f"got {token_embeds.shape[1]}"
            )
        feeds = {TOKEN_EMBEDS.name: token_embeds.to(self.device, _TORCH_DTYPES[TOKEN_EMBEDS.dtype]),
                 EOT_INDEX.name: eot_index.to(self.device, _TORCH_DTYPES[EOT_INDEX.dtype])}
        return _ort_run(self.session, feeds, TEXT_EMBEDS.name, (token_embeds.shape[0], self.embed_dim), self.device)


# -- dispatch by batch size -------------------------------------------------------------------------------------
def nearest_bucket(batch: int, buckets: Sequence[int]) -> int:
    """The bucket nearest to ``batch`` on a log scale (batch sizes scale by factors, not by steps): with buckets
    1, 8, 64, batches 1-2 go to 1, 3-22 to 8 and 23 or more to 64. A tie goes to the smaller bucket; a batch
    below 1 goes to the smallest."""
    if not buckets:
        raise ValueError("nearest_bucket needs at least one bucket")
    ordered = sorted(buckets)
    if batch < 1:
        return ordered[0]
    x = math.log(batch)
    return min(ordered, key=lambda b: (abs(x - math.log(b)), b))


def _check_route(buckets: Sequence[int], winners: Sequence[str], encoders: Mapping[str, Any]) -> None:
    if len(buckets) == 0 or len(buckets) != len(winners):
        raise ValueError(f"buckets {list(buckets)} and winners {list(winners)} must be non-empty and match")
    missing = sorted(set(winners) - set(encoders))
    if missing:
        raise ValueError(f"no encoder for backend(s) {missing}")


class DispatchImageEncoder(ImageEncoder):
    """One image encoder per backend; each call goes to the winner of the bucket nearest to its batch size
    (`nearest_bucket`). It holds every backend's weights at once (an onnxruntime session and a PyTorch module:
    about twice one encoder's memory). Stateless per call, so it is as thread-safe as the encoders it holds."""

    backend = "auto"

    def __init__(self, encoders: Mapping[str, ImageEncoder], buckets: Sequence[int], winners: Sequence[str]) -> None:
        _check_route(buckets, winners, encoders)
        first = encoders[winners[0]]
        super().__init__(first.image_size, str(first.device))
        self.encoders = dict(encoders)
        self.buckets = tuple(buckets)
        self.winners = tuple(winners)

    def route(self, batch: int) -> str:
        """The backend a batch of ``batch`` images runs on."""
        return self.winners[self.buckets.index(nearest_bucket(batch, self.buckets))]

    def _run(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.encoders[self.route(pixels.shape[0])]._run(pixels)


class DispatchTextEncoder(TextEncoder):
    """One text encoder per backend; each call goes to the winner of the bucket nearest to its number of
    prompts (`nearest_bucket`). It holds every backend's weights at once (about twice one encoder's memory;
    the PyTorch text tower is loaded for prompt learning anyway). Stateless per call."""

    backend = "auto"

    def __init__(self, encoders: Mapping[str, TextEncoder], buckets: Sequence[int], winners: Sequence[str]) -> None:
        _check_route(buckets, winners, encoders)
        first = encoders[winners[0]]
        super().__init__(first.width, first.context, first.embed_dim, str(first.device))
        self.encoders = dict(encoders)
        self.buckets = tuple(buckets)
        self.winners = tuple(winners)

    def route(self, batch: int) -> str:
        """The backend a batch of ``batch`` prompts runs on."""
        return self.winners[self.buckets.index(nearest_bucket(batch, self.buckets))]

    def _run(self, token_embeds: torch.Tensor, eot_index: torch.Tensor) -> torch.Tensor:
        return self.encoders[self.route(token_embeds.shape[0])]._run(token_embeds, eot_index)
