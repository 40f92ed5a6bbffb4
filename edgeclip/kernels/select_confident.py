"""`select_confident`: softmax, per-view entropy, the most confident views and the log mean probability
over them — what TPT, PromptSync and ZERO need from the logits of N augmented views (PyTorch reference).

CUDA tensors are dispatched to the single-kernel Triton version (`edgeclip.kernels.cuda.select_confident`), or
to this reference (with one warning) where Triton is unavailable; ``impl=`` forces either implementation."""

from __future__ import annotations

from typing import NamedTuple

import torch

from edgeclip.errors import InputError
from edgeclip.kernels.dispatch import use_triton


class Confident(NamedTuple):
    probs: torch.Tensor  # [N, C] softmax of every view
    entropy: torch.Tensor  # [N] entropy of each view's softmax (nats)
    index: torch.Tensor  # [K] selected views, most confident first (view 0 first when forced)
    log_mean_prob: torch.Tensor  # [C] log of the mean probability over the selected views


_TRITON_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)


def n_selected(n_views: int, rho: float) -> int:
    """How many views the top-ρ fraction keeps (at least one), as TPT counts them."""
    return max(1, int(n_views * rho))


def select_confident(
    logits: torch.Tensor, rho: float = 0.1, force_first: bool = False, *, impl: str = "auto"
) -> Confident:
    """Keep the `max(1, int(ρN))` lowest-entropy views; with `force_first`, view 0 (the unaugmented
    image) is always kept and the others are the most confident of views 1..N-1 (K = that count + 1).

    Differentiable with respect to `logits` through `probs`, `entropy` and `log_mean_prob`. ``impl``:
    ``"auto"`` (the Triton kernel for floating-point CUDA tensors, PyTorch otherwise), ``"torch"`` or
    ``"triton"`` (see `edgeclip.kernels.dispatch.use_triton`).
    """
    if logits.dim() != 2 or logits.shape[0] < 1 or logits.shape[1] < 1:
        raise InputError(f"select_confident needs logits [N, C] with N, C >= 1, got {list(logits.shape)}")
    if not 0.0 < rho <= 1.0:
        raise InputError(f"rho must lie in (0, 1], got {rho}")
    if use_triton(impl, logits, "select_confident", _TRITON_DTYPES):
        from edgeclip.kernels.cuda.select_confident import select_confident_triton

        return select_confident_triton(logits, rho, force_first)
    n = logits.shape[0]
    logp = logits.float().log_softmax(dim=1)
    probs = logp.exp()
    entropy = -(probs * logp).sum(dim=1)
    k = n_selected(n, rho)
    if force_first and n > 1:
        rest = torch.topk(entropy[1:].detach(), min(k, n - 1), largest=False).indices + 1
        index = torch.cat([rest.new_zeros(1), rest])
    else:
        index = torch.topk(entropy.detach(), k, largest=False).indices
    # log(mean p) computed stably as logsumexp(log p) - log K
    log_mean = torch.logsumexp(logp[index], dim=0) - torch.log(torch.tensor(float(index.numel())))
    return Confident(probs.to(logits.dtype), entropy.to(logits.dtype), index, log_mean.to(logits.dtype))
