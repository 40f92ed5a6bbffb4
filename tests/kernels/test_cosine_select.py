"""cosine_logits and select_confident against the plain torch sequence; gradients in float64."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from edgeclip.errors import InputError
from edgeclip.kernels import cosine_logits, select_confident


@pytest.mark.parametrize(("n", "c", "d"), [(1, 1, 3), (7, 13, 5), (64, 100, 512)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_cosine_logits_matches_torch(n: int, c: int, d: int, dtype: torch.dtype) -> None:
    g = torch.Generator().manual_seed(n * 1000 + c)
    a = torch.randn(n, d, generator=g).to(dtype)
    b = torch.randn(c, d, generator=g).to(dtype)
    ref = 100.0 * F.normalize(a.float(), dim=-1) @ F.normalize(b.float(), dim=-1).T
    out = cosine_logits(a, b, 100.0)
    assert out.dtype == dtype and out.shape == (n, c)
    tol = 1e-4 if dtype == torch.float32 else 0.15
    assert (out.float() - ref).abs().max() <= tol


def test_cosine_logits_gradcheck() -> None:
    g = torch.Generator().manual_seed(0)
    a = torch.randn(5, 7, dtype=torch.float64, generator=g, requires_grad=True)
    b = torch.randn(3, 7, dtype=torch.float64, generator=g, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, y: cosine_logits(x, y, 4.5), (a, b))


def test_cosine_logits_grad_equals_autograd_of_reference() -> None:
    a = torch.randn(6, 9, requires_grad=True)
    b = torch.randn(4, 9, requires_grad=True)
    w = torch.randn(6, 4)
    (cosine_logits(a, b, 10.0) * w).sum().backward()
    ga, gb = a.grad.clone(), b.grad.clone()
    a.grad = b.grad = None
    (10.0 * F.normalize(a, dim=-1) @ F.normalize(b, dim=-1).T * w).sum().backward()
    assert torch.allclose(ga, a.grad, atol=1e-5) and torch.allclose(gb, b.grad, atol=1e-5)


def test_cosine_logits_bad_shapes() -> None:
    with pytest.raises(InputError):
        cosine_logits(torch.randn(3, 4), torch.randn(2, 5))
    with pytest.raises(InputError):
        cosine_logits(torch.randn(3), torch.randn(2, 3))


def _reference(logits: torch.Tensor, rho: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    probs = logits.softmax(1)
    ent = -(probs * logits.log_softmax(1)).sum(1)
    idx = torch.argsort(ent)[: max(1, int(logits.shape[0] * rho))]
    return probs, ent, torch.log(probs[idx].mean(0))


@pytest.mark.parametrize(("n", "c"), [(1, 2), (64, 10), (63, 1000), (17, 3)])
def test_select_confident_matches_torch_sequence(n: int, c: int) -> None:
    logits = torch.randn(n, c, generator=torch.Generator().manual_seed(n + c)) * 3
    out = select_confident(logits, 0.1)
    probs, ent, log_mean = _reference(logits, 0.1)
    assert torch.allclose(out.probs, probs, atol=1e-6)
    assert torch.allclose(out.entropy, ent, atol=1e-5)
    assert out.index.numel() == max(1, int(n * 0.1))
    assert torch.equal(out.index.sort().values, torch.argsort(ent)[: out.index.numel()].sort().values)
    assert torch.allclose(out.log_mean_prob, log_mean, atol=1e-5)


def test_select_confident_forces_view_zero_and_is_differentiable() -> None:
    logits = torch.randn(64, 10, generator=torch.Generator().manual_seed(3))
    logits[0] = 0.0  # the least confident view of all
    logits.requires_grad_(True)
    out = select_confident(logits, 0.1, force_first=True)
    assert out.index[0] == 0 and out.index.numel() == 7 and len(set(out.index.tolist())) == 7
    # TPT's loss: entropy of the mean probability over the selected views
    loss = -(out.log_mean_prob.exp() * out.log_mean_prob).sum()
    loss.backward()
    assert logits.grad[0].abs().sum() > 0
    unselected = sorted(set(range(64)) - set(out.index.tolist()))
    assert logits.grad[unselected].abs().sum() == 0


def test_select_confident_bad_input() -> None:
    with pytest.raises(InputError):
        select_confident(torch.randn(4), 0.1)
    with pytest.raises(InputError):
        select_confident(torch.randn(4, 3), 0.0)
