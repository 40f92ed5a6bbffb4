"""Triton `cosine_logits`: ``scale * cos(image[N,D], text[C,D])`` -> [N,C] in one fused kernel.

Each program computes one [BLOCK_M, BLOCK_N] tile of the logits. While it walks along D it accumulates the
dot products (``tl.dot``, fp32 accumulator) and, from the very same tiles already in registers, the squared
norms of its image rows and class rows; the epilogue multiplies by ``inv_a[i] * inv_b[j] * scale`` and stores
in the input dtype. No normalised copy of either input is ever written. The programs of the first tile column
(row) also write the fp32 inverse norms of the image (class) rows, which the backward reuses.

The backward is written in torch ops (two small matmuls) and computes in fp32, the same formula as the
reference `_CosineLogits.backward`.

Supported input dtypes: float32, float16, bfloat16 (accumulation always in fp32). float32 products use TF32
only when ``torch.backends.cuda.matmul.allow_tf32`` is set, exactly like torch's own matmul.
"""

from __future__ import annotations

from typing import Any

import torch
import triton
import triton.language as tl

from edgeclip.errors import InputError

EPS = 1e-12  # same floor as the reference and torch.nn.functional.normalize
SUPPORTED_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


@triton.jit
def _cosine_logits_kernel(
    a_ptr,
    b_ptr,
    out_ptr,
    inv_a_ptr,
    inv_b_ptr,
    N,
    C,
    D,
    stride_an,
    stride_ad,
    stride_bc,
    stride_bd,
    stride_on,
    stride_oc,
    scale,
    eps,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    INPUT_PRECISION: tl.constexpr,
):
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    rk = tl.arange(0, BLOCK_K)
    mask_m = rm < N
    mask_n = rn < C

    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    ss_a = tl.zeros((BLOCK_M,), dtype=tl.float32)
    ss_b = tl.zeros((BLOCK_N,), dtype=tl.float32)
    for k0 in range(0, D, BLOCK_K):
        kk = k0 + rk
        mask_k = kk < D
        a = tl.load(
            a_ptr + rm[:, None] * stride_an + kk[None, :] * stride_ad,
            mask=mask_m[:, None] & mask_k[None, :],
            other=0.0,
        )
        # the class tile is read transposed, [BLOCK_K, BLOCK_N], so the product needs no tl.trans
        b = tl.load(
            b_ptr + kk[:, None] * stride_bd + rn[None, :] * stride_bc,
            mask=mask_k[:, None] & mask_n[None, :],
            other=0.0,
        )
        a32 = a.to(tl.float32)
        b32 = b.to(tl.float32)
        ss_a += tl.sum(a32 * a32, axis=1)
        ss_b += tl.sum(b32 * b32, axis=0)
        acc = tl.dot(a, b, acc, input_precision=INPUT_PRECISION)

    inv_a = tl.div_rn(1.0, tl.maximum(tl.sqrt_rn(ss_a), eps))
    inv_b = tl.div_rn(1.0, tl.maximum(tl.sqrt_rn(ss_b), eps))
    out = acc * (inv_a * scale)[:, None] * inv_b[None, :]
    tl.store(
        out_ptr + rm[:, None] * stride_on + rn[None, :] * stride_oc,
        out.to(out_ptr.dtype.element_ty),
        mask=mask_m[:, None] & mask_n[None, :],
    )
    # every program knows the norms of its rows; one program per tile row/column writes them out
    tl.store(inv_a_ptr + rm, inv_a, mask=mask_m & (pid_n == 0))
    tl.store(inv_b_ptr + rn, inv_b, mask=mask_n & (pid_m == 0))


def _pick_blocks(n: int, c: int, dtype: torch.dtype) -> tuple[int, int, int]:
    """Tile sizes: small enough that a CLIP-sized problem (N=64, C=1000) still fills many SMs."""
    block_m = min(64, max(16, triton.next_power_of_2(n)))
    block_n = 64 if triton.cdiv(n, block_m) * triton.cdiv(c, 64) >= 64 else 32
    block_k = 32 if dtype == torch.float32 else 64
    return block_m, block_n, block_k


def cosine_logits_forward(
    image: torch.Tensor,
    text: torch.Tensor,
    scale: float,
    block_sizes: tuple[int, int, int] | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Launch the kernel: returns ``(logits [N,C] in the input dtype, inv_a [N] fp32, inv_b [C] fp32)``."""
    n, d = image.shape
    c = text.shape[0]
    out = torch.empty((n, c), dtype=image.dtype, device=image.device)
    if n == 0 or c == 0:  # nothing to launch; the norms still serve the backward
        inv_a = image.float().norm(dim=1).clamp_min(EPS).reciprocal()
        inv_b = text.float().norm(dim=1).clamp_min(EPS).reciprocal()
        return out, inv_a, inv_b
    inv_a = torch.empty((n,), dtype=torch.float32, device=image.device)
    inv_b = torch.empty((c,), dtype=torch.float32, device=image.device)
    block_m, block_n, block_k = block_sizes or _pick_blocks(n, c, image.dtype)
    for b in (block_m, block_n, block_k):
        if b < 16 or b & (b - 1):
            raise InputError(f"cosine_logits block sizes must be powers of two >= 16, got {block_sizes}")
    tf32 = image.dtype == torch.float32 and torch.backends.cuda.matmul.allow_tf32
    grid = (triton.cdiv(n, block_m), triton.cdiv(c, block_n))
    _cosine_logits_kernel[grid](
        image,
        text,
        out,
        inv_a,
        inv_b,
        n,
        c,
        d,
        image.stride(0),
        image.stride(1),
        text.stride(0),
        text.stride(1),
        out.stride(0),
        out.stride(1),
        float(scale),
        EPS,
        BLOCK_M=block_m,
        BLOCK_N=block_n,
        BLOCK_K=block_k,
        INPUT_PRECISION="tf32" if tf32 else "ieee",
        num_warps=4,
    )
    return out, inv_a, inv_b


class _CosineLogitsTriton(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx: Any,
        image: torch.Tensor,
        text: torch.Tensor,
        scale: float,
        block_sizes: tuple[int, int, int] | None,
    ) -> torch.Tensor:
        out, inv_a, inv_b = cosine_logits_forward(image, text, scale, block_sizes)
        ctx.save_for_backward(image, text, inv_a, inv_b)
        ctx.scale = scale
        return out

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None, None, None]:
        image, text, inv_a, inv_b = ctx.saved_tensors
        s = ctx.scale
        # the reference's backward, in fp32 whatever the input dtype
        a_hat = image.float() * inv_a[:, None]
        b_hat = text.float() * inv_b[:, None]
        g = grad.float()
        g_image = g_text = None
        if ctx.needs_input_grad[0]:
            d = s * (g @ b_hat)  # dL/d a_hat
            g_image = ((d - a_hat * (a_hat * d).sum(1, keepdim=True)) * inv_a[:, None]).to(image.dtype)
        if ctx.needs_input_grad[1]:
            d = s * (g.T @ a_hat)  # dL/d b_hat
            g_text = ((d - b_hat * (b_hat * d).sum(1, keepdim=True)) * inv_b[:, None]).to(text.dtype)
        return g_image, g_text, None, None


def cosine_logits_triton(
    image: torch.Tensor,
    text: torch.Tensor,
    scale: float = 1.0,
    *,
    block_sizes: tuple[int, int, int] | None = None,
) -> torch.Tensor:
    """Image embeddings [N,D] and class embeddings [C,D] -> ``scale * cos`` [N,C], differentiable in both.

    Shapes and devices are validated by `edgeclip.kernels.cosine_logits`, which dispatches here; this function
    only checks what is specific to the kernel (the dtype). ``block_sizes`` ``(BLOCK_M, BLOCK_N, BLOCK_K)``
    overrides the tile choice (tests use small tiles to exercise the tiling on small shapes).
    """
    if image.dtype not in SUPPORTED_DTYPES:
        raise InputError(f"the Triton cosine_logits supports float32, float16 and bfloat16, not {image.dtype}")
    if image.dtype == torch.bfloat16 and not image.is_cuda:
        # Triton's interpreter keeps bfloat16 as raw uint16 and its tl.dot multiplies those bit patterns
        raise InputError("the Triton cosine_logits cannot run bfloat16 in Triton's CPU interpreter; use float16/32")
    return _CosineLogitsTriton.apply(image, text, float(scale), block_sizes)
