"""The Triton cosine_logits and select_confident against their PyTorch references.

Without CUDA the kernels run in Triton's CPU interpreter (conftest sets TRITON_INTERPRET=1), so shapes are
small and odd; with CUDA the same tests run on the device. The `gpu` tests run the real CUDA path at CLIP
size (C=1000, D=768, N=64).
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from edgeclip.errors import InputError
from edgeclip.kernels import cosine_logits, select_confident

pytestmark = pytest.mark.triton

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
INTERPRETED = DEVICE == "cpu"
# Triton's interpreter keeps bfloat16 as raw uint16 and its tl.dot multiplies those bit patterns
BF16_DOT = pytest.param(
    torch.bfloat16,
    marks=pytest.mark.skipif(INTERPRETED, reason="Triton's interpreter computes tl.dot on bfloat16 bit patterns"),
)
# (fp32 tolerance, half-precision tolerance) on logits scaled by 100
COS_TOL = {torch.float32: 1e-4, torch.float16: 0.15, torch.bfloat16: 1.0}
COS_SHAPES = [(1, 1, 5), (7, 13, 33), (64, 100, 64), (1, 100, 33), (64, 1, 5), (7, 13, 64)]


def _randn(*shape: int, seed: int, dtype: torch.dtype = torch.float32, scale: float = 1.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(*shape, generator=g) * scale).to(device=DEVICE, dtype=dtype)


def _cos_reference(a: torch.Tensor, b: torch.Tensor, scale: float) -> torch.Tensor:
    return scale * F.normalize(a.float(), dim=-1) @ F.normalize(b.float(), dim=-1).T


# ---- cosine_logits -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("n", "c", "d"), COS_SHAPES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, BF16_DOT])
def test_cosine_forward_matches_reference(n: int, c: int, d: int, dtype: torch.dtype) -> None:
    a = _randn(n, d, seed=n * 1000 + c, dtype=dtype)
    b = _randn(c, d, seed=d, dtype=dtype)
    out = cosine_logits(a, b, 100.0, impl="triton")
    assert out.dtype == dtype and out.shape == (n, c) and out.device == a.device
    tol = COS_TOL[dtype]
    assert (out.float() - _cos_reference(a, b, 100.0)).abs().max() <= tol
    assert (out.float() - cosine_logits(a, b, 100.0, impl="torch").float()).abs().max() <= tol


def test_cosine_small_tiles_and_strided_inputs() -> None:
    """Several tiles along N, C and D, a masked edge in each, and non-contiguous inputs."""
    from edgeclip.kernels.cuda.cosine_logits import cosine_logits_triton

    a = _randn(70, 37, seed=1).T  # [37, 70], strides (1, 37)
    b = _randn(90, 70, seed=2)[::2]  # [45, 70], row stride 140
    assert not a.is_contiguous() and not b.is_contiguous()
    out = cosine_logits_triton(a, b, 3.0, block_sizes=(16, 16, 16))
    assert (out - _cos_reference(a, b, 3.0)).abs().max() <= 1e-5


def test_cosine_zero_rows_use_the_eps_floor() -> None:
    a = _randn(3, 9, seed=3)
    a[1] = 0.0
    b = _randn(5, 9, seed=4)
    out = cosine_logits(a, b, 10.0, impl="triton")
    ref = cosine_logits(a, b, 10.0, impl="torch")
    assert torch.equal(out[1], torch.zeros_like(out[1])) and (out - ref).abs().max() <= 1e-5


@pytest.mark.parametrize(("n", "c", "d"), [(1, 1, 5), (7, 13, 33), (64, 100, 64)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_cosine_grads_match_reference(n: int, c: int, d: int, dtype: torch.dtype) -> None:
    grads = []
    w = _randn(n, c, seed=7, dtype=dtype)
    for impl in ("triton", "torch"):
        a = _randn(n, d, seed=5, dtype=dtype).requires_grad_(True)
        b = _randn(c, d, seed=6, dtype=dtype).requires_grad_(True)
        (cosine_logits(a, b, 10.0, impl=impl) * w).float().sum().backward()
        assert a.grad.dtype == dtype and b.grad.dtype == dtype
        grads.append((a.grad.float(), b.grad.float()))
    (ga, gb), (ra, rb) = grads
    if dtype == torch.float32:
        assert torch.allclose(ga, ra, atol=1e-5, rtol=1e-4) and torch.allclose(gb, rb, atol=1e-5, rtol=1e-4)
    else:  # the reference's backward runs in float16 (~1e-3 off), the Triton one in float32 then rounds
        assert (ga - ra).abs().max() <= 5e-3 * ra.abs().max()
        assert (gb - rb).abs().max() <= 5e-3 * rb.abs().max()


def test_cosine_grad_of_one_input_only() -> None:
    a = _randn(6, 9, seed=8).requires_grad_(True)
    b = _randn(4, 9, seed=9)
    cosine_logits(a, b, 2.0, impl="triton").square().sum().backward()
    ga = a.grad.clone()
    a.grad = None
    cosine_logits(a, b, 2.0, impl="torch").square().sum().backward()
    assert torch.allclose(ga, a.grad, atol=1e-5)


def test_cosine_dispatch_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    a, b = _randn(3, 4, seed=0), _randn(2, 4, seed=1)
    with pytest.raises(InputError, match="impl"):
        cosine_logits(a, b, impl="cuda")
    with pytest.raises(InputError):
        cosine_logits(a, _randn(2, 5, seed=2), impl="triton")
    with pytest.raises(InputError, match="float64"):
        cosine_logits(a.double(), b.double(), impl="triton")
    assert cosine_logits(a.double(), b.double()).dtype == torch.float64  # auto keeps float64 on torch
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with pytest.raises(InputError, match="TRITON_INTERPRET"):
        cosine_logits(a.cpu(), b.cpu(), impl="triton")


# ---- select_confident ----------------------------------------------------------------------------------------


SEL_SHAPES = [(1, 1), (1, 13), (7, 13), (64, 100), (17, 3), (40, 1000)]


def _check_select(logits: torch.Tensor, rho: float, force_first: bool, atol: float, **kw: object) -> None:
    if kw:
        from edgeclip.kernels.cuda.select_confident import select_confident_triton

        out = select_confident_triton(logits, rho, force_first, **kw)
    else:
        out = select_confident(logits, rho, force_first, impl="triton")
    ref = select_confident(logits, rho, force_first, impl="torch")
    assert out.probs.dtype == ref.probs.dtype and out.probs.shape == ref.probs.shape
    assert out.entropy.dtype == ref.entropy.dtype and out.log_mean_prob.dtype == ref.log_mean_prob.dtype
    assert out.index.dtype == torch.int64 and torch.equal(out.index, ref.index)
    assert (out.probs.float() - ref.probs.float()).abs().max() <= atol
    assert (out.entropy.float() - ref.entropy.float()).abs().max() <= 10 * atol
    assert (out.log_mean_prob.float() - ref.log_mean_prob.float()).abs().max() <= 10 * atol


@pytest.mark.parametrize(("n", "c"), SEL_SHAPES)
@pytest.mark.parametrize("force_first", [False, True])
def test_select_float32_matches_reference(n: int, c: int, force_first: bool) -> None:
    logits = _randn(n, c, seed=n + c, scale=3.0)
    for rho in (0.1, 0.5, 1.0):
        _check_select(logits, rho, force_first, atol=1e-6)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_select_other_dtypes_match_reference(dtype: torch.dtype) -> None:
    logits = _randn(33, 50, seed=11, scale=3.0, dtype=dtype)
    atol = {torch.float16: 1e-3, torch.bfloat16: 8e-3, torch.float64: 1e-6}[dtype]
    _check_select(logits, 0.2, False, atol)
    _check_select(logits, 0.2, True, atol)


@pytest.mark.parametrize(("n", "c", "block_sizes"), [(37, 45, (8, 16)), (37, 45, (4, 64)), (5, 7, (1, 1))])
def test_select_small_blocks_and_strided_input(n: int, c: int, block_sizes: tuple[int, int]) -> None:
    """Every loop of the kernel runs several times with a masked tail; the input is a transposed view."""
    logits = _randn(c, n, seed=12, scale=3.0).T  # [n, c], strides (1, n)
    _check_select(logits, 0.3, True, atol=1e-6, block_sizes=block_sizes)
    _check_select(logits, 0.3, False, atol=1e-6, block_sizes=block_sizes)


@pytest.mark.filterwarnings("ignore:invalid value:RuntimeWarning")  # NaN arithmetic in the interpreter
def test_select_ties_keep_the_lower_index_and_nan_sorts_last() -> None:
    logits = _randn(1, 6, seed=13).repeat(10, 1)  # ten identical views
    out = select_confident(logits, 0.3, impl="triton")
    assert out.index.tolist() == [0, 1, 2]
    out = select_confident(logits, 0.3, force_first=True, impl="triton")
    assert out.index.tolist() == [0, 1, 2, 3]
    logits = _randn(10, 6, seed=14, scale=3.0)
    logits[int(select_confident(logits, 0.1, impl="torch").index[0])] = float("nan")
    out, ref = select_confident(logits, 0.5, impl="triton"), select_confident(logits, 0.5, impl="torch")
    assert torch.equal(out.index, ref.index)
    assert torch.allclose(out.log_mean_prob, ref.log_mean_prob, atol=1e-5)


@pytest.mark.parametrize(("n", "c"), [(1, 3), (7, 13), (64, 100)])
@pytest.mark.parametrize("force_first", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_select_grads_match_reference(n: int, c: int, force_first: bool, dtype: torch.dtype) -> None:
    g_probs = _randn(n, c, seed=21, dtype=dtype)
    g_ent = _randn(n, seed=22, dtype=dtype)
    g_lm = _randn(c, seed=23, dtype=dtype)
    grads = []
    for impl in ("triton", "torch"):
        logits = _randn(n, c, seed=n * c, scale=3.0, dtype=dtype).requires_grad_(True)
        out = select_confident(logits, 0.25, force_first, impl=impl)
        loss = (out.probs * g_probs).sum() + (out.entropy * g_ent).sum() + (out.log_mean_prob * g_lm).sum()
        loss.float().backward()
        assert logits.grad.dtype == dtype
        grads.append(logits.grad.float())
    got, want = grads
    tol = 1e-5 if dtype == torch.float32 else 2e-3
    assert (got - want).abs().max() <= tol * max(1.0, want.abs().max().item())


def test_select_grad_through_log_mean_only_reaches_selected_views() -> None:
    logits = _randn(64, 10, seed=3)
    logits[0] = 0.0  # the least confident view of all
    logits.requires_grad_(True)
    out = select_confident(logits, 0.1, force_first=True, impl="triton")
    assert out.index[0] == 0 and out.index.numel() == 7 and len(set(out.index.tolist())) == 7
    loss = -(out.log_mean_prob.exp() * out.log_mean_prob).sum()  # TPT's loss
    loss.backward()
    assert logits.grad[0].abs().sum() > 0
    unselected = sorted(set(range(64)) - set(out.index.tolist()))
    assert logits.grad[unselected].abs().sum() == 0


def test_select_dispatch_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    logits = _randn(4, 3, seed=0)
    with pytest.raises(InputError, match="impl"):
        select_confident(logits, impl="gpu")
    with pytest.raises(InputError):
        select_confident(logits, 0.0, impl="triton")
    with pytest.raises(InputError):
        select_confident(logits[0], impl="triton")
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with pytest.raises(InputError, match="TRITON_INTERPRET"):
        select_confident(logits.cpu(), impl="triton")


def test_cpu_auto_path_never_imports_triton() -> None:
    code = (
        "import sys, torch\n"
        "from edgeclip.kernels import cosine_logits, select_confident\n"
        "cosine_logits(torch.randn(3, 4), torch.randn(2, 4))\n"
        "select_confident(torch.randn(5, 3))\n"
        "bad = [m for m in sys.modules if m == 'triton' or m.startswith('edgeclip.kernels.cuda')]\n"
        "assert not bad, bad\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    subprocess.run([sys.executable, "-c", code], check=True, env=env, timeout=120)


# ---- CLIP size on a real GPU ---------------------------------------------------------------------------------


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_gpu_cosine_clip_size(dtype: torch.dtype) -> None:
    n, c, d = 64, 1000, 768
    a = _randn(n, d, seed=31, dtype=dtype).requires_grad_(True)
    b = _randn(c, d, seed=32, dtype=dtype).requires_grad_(True)
    out = cosine_logits(a, b, 100.0)  # auto: the Triton kernel on CUDA
    ref = _cos_reference(a.detach(), b.detach(), 100.0)
    assert out.dtype == dtype and (out.float() - ref).abs().max() <= COS_TOL[dtype]
    w = _randn(n, c, seed=33, dtype=dtype)
    (out * w).float().sum().backward()
    ga, gb = a.grad.float(), b.grad.float()
    a.grad = b.grad = None
    ra, rb = (t.detach().float().requires_grad_(True) for t in (a, b))
    (_cos_reference(ra, rb, 100.0) * w.float()).sum().backward()
    rel = 1e-4 if dtype == torch.float32 else 0.01
    assert (ga - ra.grad).abs().max() <= rel * ra.grad.abs().max()
    assert (gb - rb.grad).abs().max() <= rel * rb.grad.abs().max()


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("force_first", [False, True])
def test_gpu_select_clip_size(dtype: torch.dtype, force_first: bool) -> None:
    n, c = 64, 1000
    logits = _randn(n, c, seed=41, scale=3.0, dtype=dtype)
    _check_select(logits, 0.1, force_first, atol=1e-6 if dtype == torch.float32 else 1e-3)
    g_lm = _randn(c, seed=42, dtype=dtype)
    grads = []
    for impl in ("auto", "torch"):
        x = logits.clone().requires_grad_(True)
        out = select_confident(x, 0.1, force_first, impl=impl)
        ((out.log_mean_prob * g_lm).sum() + out.entropy.sum()).float().backward()
        grads.append(x.grad.float())
    tol = 1e-5 if dtype == torch.float32 else 2e-3
    assert (grads[0] - grads[1]).abs().max() <= tol * max(1.0, grads[1].abs().max().item())
