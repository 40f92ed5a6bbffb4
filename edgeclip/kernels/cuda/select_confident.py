"""Triton `select_confident`: softmax, entropy, top-K confident views and log mean probability, one kernel.

The logits of the N augmented views of one image are small (N up to a few hundred, C up to ~1000), and the
selection needs every view's entropy before it can pick any, so the whole operation runs in a single
program (one CTA) that walks over the data in phases separated by ``tl.debug_barrier()`` (a CTA-wide
barrier, which also makes the program's global-memory writes visible to all of its threads):

1. for each block of rows, an online max / sum-of-exp pass over C gives the log-sum-exp; a second pass
   writes ``probs`` and accumulates the entropy ``-sum p log p`` (both in fp32, whatever the input dtype);
2. top-K by rank: a view's rank is the number of candidate views that sort before it — lower entropy, or
   equal entropy and lower index (torch.topk's order where it has one; NaN sorts last, as in torch.topk).
   The K views of rank < K are written to ``index[rank]`` (shifted by one behind view 0 with
   ``force_first``), so the index comes out most-confident first without any sort. This is O(N²)
   comparisons, a few tens of thousands for N=256 — nothing next to the softmax passes;
3. for each block of classes, an online log-sum-exp over the selected rows of ``log p`` gives
   ``log mean p = logsumexp_selected(log p) - log K``.

Launching one program keeps this a single kernel with no host synchronisation; a multi-CTA version would
need a grid-wide barrier (or three launches) between the phases, which costs more than it saves at these
sizes. The backward is written in torch ops from the saved logits, row log-sum-exp and index.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import triton
import triton.language as tl

from edgeclip.errors import InputError
from edgeclip.kernels.select_confident import Confident, n_selected


@triton.jit
def _sorts_before(e_j, j, e_i, i):
    """Strict total order of (entropy, index): the order torch.topk(largest=False) returns, NaN last."""
    nan_j = e_j != e_j
    nan_i = e_i != e_i
    less = (e_j < e_i) | (nan_i & ~nan_j)
    same = (e_j == e_i) | (nan_i & nan_j)
    return less | (same & (j < i))


@triton.jit
def _select_confident_kernel(
    x_ptr,
    probs_ptr,
    ent_ptr,
    lse_ptr,
    sel_ptr,
    index_ptr,
    log_mean_ptr,
    N,
    C,
    stride_xn,
    stride_xc,
    stride_pn,
    stride_pc,
    start,
    k_rest,
    log_k,
    BLOCK_N: tl.constexpr,
    BLOCK_C: tl.constexpr,
    BLOCK_J: tl.constexpr,
):
    rows0 = tl.arange(0, BLOCK_N)
    cols0 = tl.arange(0, BLOCK_C)
    js0 = tl.arange(0, BLOCK_J)

    # ---- phase 1: per-row log-softmax statistics, probs and entropy ------------------------------------------
    for n0 in range(0, N, BLOCK_N):
        rows = n0 + rows0
        mrow = rows < N
        m = tl.full((BLOCK_N,), float("-inf"), tl.float32)
        s = tl.zeros((BLOCK_N,), tl.float32)
        for c0 in range(0, C, BLOCK_C):
            cols = c0 + cols0
            mcol = cols < C
            x = tl.load(
                x_ptr + rows[:, None] * stride_xn + cols[None, :] * stride_xc,
                mask=mrow[:, None] & mcol[None, :],
                other=0.0,
            ).to(tl.float32)
            x = tl.where(mcol[None, :], x, float("-inf"))  # padded rows stay finite, padded columns drop out
            m_new = tl.maximum(m, tl.max(x, axis=1))
            s = s * tl.exp(m - m_new) + tl.sum(tl.exp(x - m_new[:, None]), axis=1)
            m = m_new
        log_s = tl.log(s)
        h = tl.zeros((BLOCK_N,), tl.float32)
        for c0 in range(0, C, BLOCK_C):
            cols = c0 + cols0
            mcol = cols < C
            mask = mrow[:, None] & mcol[None, :]
            x = tl.load(x_ptr + rows[:, None] * stride_xn + cols[None, :] * stride_xc, mask=mask, other=0.0)
            logp = (x.to(tl.float32) - m[:, None]) - log_s[:, None]
            p = tl.exp(logp)
            tl.store(
                probs_ptr + rows[:, None] * stride_pn + cols[None, :] * stride_pc,
                p.to(probs_ptr.dtype.element_ty),
                mask=mask,
            )
            h -= tl.sum(tl.where(mask, p * logp, 0.0), axis=1)
        tl.store(ent_ptr + rows, h, mask=mrow)
        tl.store(lse_ptr + rows, m + log_s, mask=mrow)

    tl.debug_barrier()

    # ---- phase 2: rank of every candidate view (views start..N-1), scatter the K most confident ---------------
    for n0 in range(0, N, BLOCK_N):
        rows = n0 + rows0
        mrow = rows < N
        cand = mrow & (rows >= start)
        e_i = tl.load(ent_ptr + rows, mask=cand, other=0.0)
        rank = tl.zeros((BLOCK_N,), tl.int32)
        for j0 in range(0, N, BLOCK_J):
            js = j0 + js0
            cand_j = (js < N) & (js >= start)
            e_j = tl.load(ent_ptr + js, mask=cand_j, other=0.0)
            before = _sorts_before(e_j[None, :], js[None, :], e_i[:, None], rows[:, None]) & cand_j[None, :]
            rank += tl.sum(before.to(tl.int32), axis=1)
        chosen = cand & (rank < k_rest)
        tl.store(index_ptr + start + rank, rows.to(tl.int64), mask=chosen)
        forced = rows < start  # view 0 when force_first, nothing otherwise
        tl.store(index_ptr + rows, rows.to(tl.int64), mask=forced)
        tl.store(sel_ptr + rows, (chosen | forced).to(tl.int32), mask=mrow)

    tl.debug_barrier()

    # ---- phase 3: log of the mean probability over the selected views, per class -----------------------------
    for c0 in range(0, C, BLOCK_C):
        cols = c0 + cols0
        mcol = cols < C
        mc = tl.full((BLOCK_C,), float("-inf"), tl.float32)
        sc = tl.zeros((BLOCK_C,), tl.float32)
        for n0 in range(0, N, BLOCK_N):
            rows = n0 + rows0
            mrow = rows < N
            sel = tl.load(sel_ptr + rows, mask=mrow, other=0) != 0
            lse = tl.load(lse_ptr + rows, mask=sel, other=0.0)
            x = tl.load(
                x_ptr + rows[:, None] * stride_xn + cols[None, :] * stride_xc,
                mask=sel[:, None] & mcol[None, :],
                other=0.0,
            ).to(tl.float32)
            lp = tl.where(sel[:, None], x - lse[:, None], float("-inf"))
            m_new = tl.maximum(mc, tl.max(lp, axis=0))
            m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)  # no selected row seen yet: keep sums at 0
            sc = sc * tl.exp(mc - m_safe) + tl.sum(tl.exp(lp - m_safe[None, :]), axis=0)
            mc = m_new
        tl.store(log_mean_ptr + cols, mc + tl.log(sc) - log_k, mask=mcol)


def _pick_blocks(n: int, c: int) -> tuple[int, int, int]:
    """Register tiles of about 4096 fp32 values: all classes of a few rows, or all rows of a few classes."""
    block_c = min(triton.next_power_of_2(c), 256)
    block_n = max(1, min(triton.next_power_of_2(n), 4096 // block_c))
    block_j = max(1, min(triton.next_power_of_2(n), 4096 // block_n))
    return block_n, block_c, block_j


def select_confident_forward(
    logits: torch.Tensor,
    rho: float,
    force_first: bool,
    block_sizes: tuple[int, int] | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Launch the kernel: ``(probs [N,C] in the logits dtype, entropy [N] fp32, index [K] int64,
    log_mean_prob [C] fp32, row log-sum-exp [N] fp32)``."""
    n, c = logits.shape
    dev = logits.device
    k = n_selected(n, rho)
    start = 1 if force_first and n > 1 else 0
    k_rest = min(k, n - start)
    k_total = k_rest + start
    probs = torch.empty((n, c), dtype=logits.dtype, device=dev)
    entropy = torch.empty((n,), dtype=torch.float32, device=dev)
    lse = torch.empty((n,), dtype=torch.float32, device=dev)
    selected = torch.empty((n,), dtype=torch.int32, device=dev)
    index = torch.empty((k_total,), dtype=torch.int64, device=dev)
    log_mean = torch.empty((c,), dtype=torch.float32, device=dev)
    if block_sizes is None:
        block_n, block_c, block_j = _pick_blocks(n, c)
    else:
        block_n, block_c = block_sizes
        block_j = block_n
        if min(block_sizes) < 1 or any(b & (b - 1) for b in block_sizes):
            raise InputError(f"select_confident block sizes must be powers of two, got {block_sizes}")
    _select_confident_kernel[(1,)](
        logits,
        probs,
        entropy,
        lse,
        selected,
        index,
        log_mean,
        n,
        c,
        logits.stride(0),
        logits.stride(1),
        probs.stride(0),
        probs.stride(1),
        start,
        k_rest,
        math.log(k_total),
        BLOCK_N=block_n,
        BLOCK_C=block_c,
        BLOCK_J=block_j,
        num_warps=8 if block_n * block_c >= 4096 else 4,
    )
    return probs, entropy, index, log_mean, lse


class _SelectConfidentTriton(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx: Any,
        logits: torch.Tensor,
        rho: float,
        force_first: bool,
        block_sizes: tuple[int, int] | None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        probs, entropy, index, log_mean, lse = select_confident_forward(logits, rho, force_first, block_sizes)
        ctx.save_for_backward(logits, lse, index)
        ctx.mark_non_differentiable(index)
        return probs, entropy.to(logits.dtype), index, log_mean.to(logits.dtype)

    @staticmethod
    def backward(
        ctx: Any,
        g_probs: torch.Tensor | None,
        g_entropy: torch.Tensor | None,
        _g_index: torch.Tensor | None,
        g_log_mean: torch.Tensor | None,
    ) -> tuple[torch.Tensor, None, None, None]:
        logits, lse, index = ctx.saved_tensors
        # everything is a function of log p = x - lse (fp32, as in the reference); collect dL/d log p, then
        # go through log_softmax: dL/dx = g - p * sum(g)
        logp = logits.float() - lse[:, None]
        p = logp.exp()
        g = torch.zeros_like(logp)
        if g_probs is not None:
            g += p * g_probs.float()  # p = exp(log p)
        if g_entropy is not None:
            g -= g_entropy.float()[:, None] * p * (logp + 1.0)  # H = -sum p log p
        if g_log_mean is not None:
            # log mean p = logsumexp over the selected rows of log p, minus log K: weights = softmax over rows
            w = logp[index].softmax(dim=0)
            g.index_add_(0, index, w * g_log_mean.float()[None, :])
        g_x = g - p * g.sum(dim=1, keepdim=True)
        return g_x.to(logits.dtype), None, None, None


def select_confident_triton(
    logits: torch.Tensor,
    rho: float = 0.1,
    force_first: bool = False,
    *,
    block_sizes: tuple[int, int] | None = None,
) -> Confident:
    """The Triton `select_confident`: same outputs, ordering and gradients as the PyTorch reference.

    Arguments are validated by `edgeclip.kernels.select_confident`, which dispatches here. ``block_sizes``
    ``(BLOCK_N, BLOCK_C)`` overrides the tile choice (tests use small tiles to exercise every loop).
    """
    if not logits.dtype.is_floating_point:
        raise InputError(f"the Triton select_confident needs floating-point logits, not {logits.dtype}")
    probs, entropy, index, log_mean = _SelectConfidentTriton.apply(logits, float(rho), bool(force_first), block_sizes)
    return Confident(probs, entropy, index, log_mean)
