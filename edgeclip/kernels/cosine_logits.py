"""`cosine_logits`: scale * cos(image, class) for every pair, normalisation fused with the product.

This is the PyTorch reference (the CPU path): an `autograd.Function` whose backward is written out,
so it matches the fused Triton kernel (`edgeclip.kernels.cuda.cosine_logits`) call for call and is checked
with `gradcheck`. CUDA tensors are dispatched to that kernel, or to this reference (with one warning) where
Triton is unavailable; ``impl=`` forces either implementation (`edgeclip.kernels.dispatch`).
"""

from __future__ import annotations

from typing import Any

import torch

from edgeclip.errors import InputError
from edgeclip.kernels.dispatch import IMPLS, use_triton

__all__ = ["EPS", "IMPLS", "cosine_logits", "use_triton"]

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


_TRITON_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def cosine_logits(image: torch.Tensor, text: torch.Tensor, scale: float = 1.0, *, impl: str = "auto") -> torch.Tensor:
    """Image embeddings [N,D] and class embeddings [C,D] -> `scale * cos` [N,C], differentiable in both.

    ``impl``: ``"auto"`` (the Triton kernel for CUDA tensors in float32/float16/bfloat16, PyTorch otherwise),
    ``"torch"`` or ``"triton"`` (see `edgeclip.kernels.dispatch.use_triton`).
    """
    if image.dim() != 2 or text.dim() != 2 or image.shape[1] != text.shape[1]:
        raise InputError(f"cosine_logits needs [N,D] and [C,D], got {list(image.shape)} and {list(text.shape)}")
    if image.dtype != text.dtype or image.device != text.device:
        raise InputError(f"cosine_logits inputs differ: {image.dtype}/{image.device} vs {text.dtype}/{text.device}")
    if use_triton(impl, image, "cosine_logits", _TRITON_DTYPES):
        from edgeclip.kernels.cuda.cosine_logits import cosine_logits_triton

        return cosine_logits_triton(image, text, float(scale))
    return _CosineLogits.apply(image, text, float(scale))
