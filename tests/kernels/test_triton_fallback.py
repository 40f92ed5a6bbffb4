"""A CUDA machine without a working Triton: ``impl="auto"`` falls back with one warning, ``"triton"`` says why.

No GPU is needed: Triton is hidden (``sys.modules["triton"] = None``, which makes every import of it fail) and
the dispatch's CUDA test is patched to say yes for CPU tensors. The last test does the same on a real GPU.
"""

from __future__ import annotations

import sys
import warnings

import pytest
import torch

from edgeclip.errors import BackendError
from edgeclip.kernels import augment_views, cosine_logits, dispatch, select_confident
from edgeclip.kernels.view_boxes import sample_boxes


def _hide_triton(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "triton", None)
    monkeypatch.setitem(sys.modules, "triton.language", None)
    monkeypatch.setattr(dispatch, "_warned", set())
    dispatch.triton_error.cache_clear()


@pytest.fixture
def no_triton(monkeypatch: pytest.MonkeyPatch):
    """Triton missing, every tensor 'on CUDA'."""
    _hide_triton(monkeypatch)
    monkeypatch.setattr(dispatch, "on_cuda", lambda tensor: True)
    yield
    dispatch.triton_error.cache_clear()  # the real answer again for the tests after this one


def _fallback_warnings(record: list[warnings.WarningMessage]) -> list[str]:
    return [str(w.message) for w in record if issubclass(w.category, RuntimeWarning) and "Triton" in str(w.message)]


def test_hidden_triton_is_reported(no_triton: None) -> None:
    assert not dispatch.triton_available()
    assert (dispatch.triton_error() or "").startswith("ModuleNotFoundError: import of triton")


def test_auto_falls_back_with_one_warning_per_kernel(no_triton: None) -> None:
    g = torch.Generator().manual_seed(0)
    image, text = torch.randn(8, 16, generator=g), torch.randn(5, 16, generator=g)
    frame = torch.randint(0, 256, (40, 60, 3), dtype=torch.uint8, generator=g)
    boxes = sample_boxes(40, 60, 6, generator=g)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        for _ in range(3):
            logits = cosine_logits(image, text, 10.0)
            sel = select_confident(logits, 0.5)
            views, _ = augment_views(frame, size=24, boxes=boxes)
    messages = _fallback_warnings(record)
    assert len(messages) == 3, messages  # one per kernel, not one per call
    assert {m.split(":")[0] for m in messages} == {"cosine_logits", "select_confident", "augment_views"}
    # the fallback is the PyTorch path: the same results as asking for it
    torch.testing.assert_close(logits, cosine_logits(image, text, 10.0, impl="torch"), rtol=0, atol=0)
    assert torch.equal(sel.index, select_confident(logits, 0.5, impl="torch").index)
    assert torch.equal(views, augment_views(frame, size=24, boxes=boxes, impl="torch")[0])


@pytest.mark.parametrize("kernel", ["cosine_logits", "select_confident", "augment_views"])
def test_forced_triton_without_triton_is_a_backend_error(no_triton: None, kernel: str) -> None:
    calls = {
        "cosine_logits": lambda: cosine_logits(torch.randn(3, 4), torch.randn(2, 4), impl="triton"),
        "select_confident": lambda: select_confident(torch.randn(5, 3), impl="triton"),
        "augment_views": lambda: augment_views(torch.zeros(8, 8, 3, dtype=torch.uint8), 2, 4, impl="triton"),
    }
    with pytest.raises(BackendError, match=rf"{kernel}: impl='triton' needs a working Triton \(ModuleNotFoundError"):
        calls[kernel]()


def test_cpu_tensors_never_ask_for_triton(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without the patched CUDA test, the CPU path neither warns nor looks for Triton."""
    _hide_triton(monkeypatch)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        cosine_logits(torch.randn(3, 4), torch.randn(2, 4))
        augment_views(torch.zeros(8, 8, 3, dtype=torch.uint8), 2, 4)
    assert _fallback_warnings(record) == []
    assert dispatch.triton_error.cache_info().currsize == 0  # never tried to import it
    dispatch.triton_error.cache_clear()


@pytest.mark.gpu
def test_cuda_frame_without_triton_gets_cpu_views_on_its_device(monkeypatch: pytest.MonkeyPatch) -> None:
    _hide_triton(monkeypatch)
    g = torch.Generator().manual_seed(1)
    frame = torch.randint(0, 256, (120, 160, 3), dtype=torch.uint8, generator=g)
    boxes = sample_boxes(120, 160, 8, generator=g)
    with pytest.warns(RuntimeWarning, match="augment_views: Triton is unavailable"):
        views, _ = augment_views(frame.cuda(), size=32, boxes=boxes)
    assert views.is_cuda
    assert torch.equal(views.cpu(), augment_views(frame, size=32, boxes=boxes)[0])
    logits = cosine_logits(torch.randn(8, 16, device="cuda"), torch.randn(4, 16, device="cuda"), 5.0)
    assert logits.is_cuda and logits.shape == (8, 4)
    dispatch.triton_error.cache_clear()
