"""`cosine_logits`: scale * cos(image, class) for every pair, normalisation fused with the product.

This is the PyTorch reference (the CPU path): an `autograd.Function` whose backward is written out,
so it matches the fused Triton kernel (`edgeclip.kernels.cuda.cosine_logits`) call for call and is checked
with `gradcheck`. CUDA tensors are dispatched to that kernel; ``impl=`` forces either implementation.
"""

from __future__ import annotations

import functools
import importlib.util
import logging
import os
from typing import Any

import torch

from edgeclip.errors import BackendError, InputError

log = logging.getLogger(__name__)

IMPLS = ("auto", "torch", "triton")

EPS = 1e-12  # same floor as torch.nn.functional.normalize


class _CosineLogits(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, image: torch.Tensor, text: torch.Tensor, scale: float) -> torch.Tensor:
        inv_a = image.norm(dim=1, keepdim=True).clamp_min(EPS).reciprocal()
        inv_b = text.norm(dim=1, keepdim=True).clamp_min(EPS).reciprocal()
        a_hat = image * inv_a
        b_hat = text * inv_b
        ctx.save_for_backward(a_hat, b_hat, inv_a, inv_b)
        ctx.scale = scale
        return scale * (a_hat @ b_hat.T)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None, None]:
        a_hat, b_hat, inv_a, inv_b = ctx.saved_tensors
        s = ctx.scale
        g_image = g_text = None
        if ctx.needs_input_grad[0]:
            d = s * (grad @ b_hat)  # dL/d a_hat
            g_image = (d - a_hat * (a_hat * d).sum(1, keepdim=True)) * inv_a
        if ctx.needs_input_grad[1]:
            d = s * (grad.T @ a_hat)  # dL/d b_hat
            g_text = (d - b_hat * (b_hat * d).sum(1, keepdim=True)) * inv_b
        return g_image, g_text, None


_warned: set[str] = set()


@functools.cache
def _triton_installed() -> bool:
    """Whether triton can be imported, found without importing it (the CPU path never loads it)."""
    return importlib.util.find_spec("triton") is not None


def use_triton(impl: str, tensor: torch.Tensor, op: str, supported: tuple[torch.dtype, ...] | None = None) -> bool:
    """Whether `op` runs its Triton kernel on `tensor`, for ``impl`` in ``"auto" | "torch" | "triton"``.

    ``"auto"`` picks Triton for CUDA tensors of a dtype it supports (falling back to torch, with a warning, when
    Triton is not installed) and torch otherwise. ``"triton"`` on a CPU tensor is allowed only under Triton's
    interpreter (``TRITON_INTERPRET=1`` set before the kernel module is first imported).
    """
    if impl not in IMPLS:
        raise InputError(f"{op}: impl must be one of {', '.join(map(repr, IMPLS))}, got {impl!r}")
    if impl == "torch":
        return False
    dtype_ok = supported is None or tensor.dtype in supported
    if impl == "auto":
        if not tensor.is_cuda or not dtype_ok:
            return False
        if not _triton_installed():
            if op not in _warned:
                _warned.add(op)
                log.warning("%s: Triton is not installed, using the PyTorch implementation on CUDA", op)
            return False
        return True
    if not tensor.is_cuda and os.environ.get("TRITON_INTERPRET") != "1":
        raise InputError(
            f"{op}: impl='triton' needs a CUDA tensor (got one on {tensor.device}); on the CPU it runs only under "
            "Triton's interpreter, with TRITON_INTERPRET=1 set in the environment before the first call. "
            "Use impl='auto' or impl='torch' for the CPU path."
        )
    if not dtype_ok:
        names = ", ".join(str(d).removeprefix("torch.") for d in supported or ())
        raise InputError(f"{op}: the Triton kernel supports {names}, not {tensor.dtype}; use impl='torch'")
    if not _triton_installed():
        raise BackendError(f"{op}: impl='triton' needs the triton package (pip install triton)")
    return True


_TRITON_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def cosine_logits(image: torch.Tensor, text: torch.Tensor, scale: float = 1.0, *, impl: str = "auto") -> torch.Tensor:
    """Image embeddings [N,D] and class embeddings [C,D] -> `scale * cos` [N,C], differentiable in both.

    ``impl``: ``"auto"`` (the Triton kernel for CUDA tensors in float32/float16/bfloat16, PyTorch otherwise),
    ``"torch"`` or ``"triton"`` (see `use_triton`).
    """
    if image.dim() != 2 or text.dim() != 2 or image.shape[1] != text.shape[1]:
        raise InputError(f"cosine_logits needs [N,D] and [C,D], got {list(image.shape)} and {list(text.shape)}")
    if image.dtype != text.dtype or image.device != text.device:
        raise InputError(f"cosine_logits inputs differ: {image.dtype}/{image.device} vs {text.dtype}/{text.device}")
    if use_triton(impl, image, "cosine_logits", _TRITON_DTYPES):
        from edgeclip.kernels.cuda.cosine_logits import cosine_logits_triton

        return cosine_logits_triton(image, text, float(scale))
    return _CosineLogits.apply(image, text, float(scale))
