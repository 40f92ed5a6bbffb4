"""`augment_views`: one uint8 frame -> N normalised views for test-time adaptation, in one call.

View 0 is the plain CLIP view (the centred square of the shorter side, bicubic, as CLIP's resize +
centre crop reads it); views 1..N-1 are random resized crops with TPT's defaults (area 8–100 %, aspect
3/4–4/3, bilinear) flipped with probability 0.5. Every view is resampled with antialiasing exactly as
``torchvision.transforms.v2.functional.resized_crop(..., antialias=True)`` does it on the same box.

On CUDA a Triton kernel does crop, resize, flip, normalise and cast in one pass per output pixel. On the
CPU `edgeclip.kernels.cpu_views` does all views in one call, with no Python loop over views (a compiled C
kernel, or a batched PyTorch path where none can be built). Both read the boxes from
`edgeclip.kernels.view_boxes`, which returns them too, so any view can be reproduced.

A CUDA frame on a machine without a working Triton takes the CPU path (`impl="auto"`, one warning per
process): the frame is copied to the host, its views are made there and copied back to the frame's device.
Same views, slower (two copies plus the CPU kernel); ``impl="triton"`` raises `BackendError` instead.
"""

from __future__ import annotations

import numpy as np
import torch

from edgeclip.errors import InputError
from edgeclip.kernels import dispatch
from edgeclip.kernels.view_boxes import FILTERS, sample_boxes

__all__ = ["CLIP_MEAN", "CLIP_STD", "augment_views", "view_filters"]

CLIP_MEAN: tuple[float, float, float] = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD: tuple[float, float, float] = (0.26862954, 0.26130258, 0.27577711)

def view_filters(n_views: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """Filter code per view: bicubic for view 0 (CLIP's own preprocessing), bilinear for the crops (TPT's)."""
    codes = torch.full((n_views,), FILTERS["bilinear"], dtype=torch.int64, device=device)
    codes[0] = FILTERS["bicubic"]
    return codes


def _as_frame(frame: torch.Tensor | np.ndarray) -> torch.Tensor:
    if isinstance(frame, np.ndarray):
        frame = torch.from_numpy(np.ascontiguousarray(frame))
    if not isinstance(frame, torch.Tensor):
        raise InputError(f"augment_views needs a uint8 tensor or array H×W×3, got {type(frame).__name__}")
    if frame.dtype != torch.uint8 or frame.dim() != 3 or frame.shape[2] != 3:
        raise InputError(f"augment_views needs a uint8 frame H×W×3, got {frame.dtype} {list(frame.shape)}")
    if frame.shape[0] < 1 or frame.shape[1] < 1:
        raise InputError(f"frame must be at least 1×1, got {list(frame.shape)}")
    return frame.contiguous()


def augment_views(
    frame: torch.Tensor | np.ndarray,
    n_views: int = 64,
    size: int = 224,
    *,
    scale: tuple[float, float] = (0.08, 1.0),
    ratio: tuple[float, float] = (3.0 / 4.0, 4.0 / 3.0),
    flip_p: float = 0.5,
    mean: tuple[float, float, float] = CLIP_MEAN,
    std: tuple[float, float, float] = CLIP_STD,
    dtype: torch.dtype = torch.float32,
    generator: torch.Generator | None = None,
    boxes: torch.Tensor | None = None,
    impl: str = "auto",
) -> tuple[torch.Tensor, torch.Tensor]:
    """One uint8 frame ``H×W×3`` (CPU or CUDA) -> ``(views [N, 3, size, size], boxes [N, 5])``.

    ``boxes`` (int64 ``top, left, height, width, flip`` per view, on the CPU) are drawn from ``generator``
    unless given, in which case they are resampled as they are (``n_views`` is then ignored). ``impl``
    forces the CPU path (``"torch"``: the compiled kernel, or PyTorch where it cannot be built; a CUDA frame
    is resampled on the host and its views come back to its device) or the Triton kernel (``"triton"``; CUDA,
    or Triton's interpreter when ``TRITON_INTERPRET=1``); ``"auto"`` takes Triton on CUDA (the CPU path, with
    one warning, where Triton is unavailable) and the CPU path elsewhere.
    """
    frame = _as_frame(frame)
    if size < 1:
        raise InputError(f"size must be >= 1, got {size}")
    if dtype not in (torch.float32, torch.float16, torch.bfloat16):
        raise InputError(f"views can be float32, float16 or bfloat16, not {dtype}")
    if impl not in dispatch.IMPLS:
        raise InputError(f"impl must be one of {dispatch.IMPLS}, got {impl!r}")
    if len(mean) != 3 or len(std) != 3 or any(s <= 0 for s in std):
        raise InputError(f"mean and std need 3 values each, std > 0; got {mean}, {std}")
    h, w = int(frame.shape[0]), int(frame.shape[1])
    if boxes is None:
        boxes = sample_boxes(h, w, n_views, scale=scale, ratio=ratio, flip_p=flip_p, generator=generator)
    else:
        boxes = _check_boxes(boxes, h, w)
    filters = view_filters(boxes.shape[0])
    if dispatch.use_triton(impl, frame, "augment_views"):
        from edgeclip.kernels.cuda.augment_views import augment_views_triton

        # boxes stay on the CPU: the kernel validates them there (no device sync) and copies them over
        views = augment_views_triton(frame, boxes, filters, size, tuple(mean), tuple(std), dtype)
    else:
        from edgeclip.kernels.cpu_views import resample_views

        views = resample_views(frame.cpu(), boxes, filters, size, tuple(mean), tuple(std), dtype)
        if dispatch.on_cuda(frame):  # the fallback of a CUDA frame: its views go back to its device
            views = views.to(frame.device)
    return views, boxes


def _check_boxes(boxes: torch.Tensor, height: int, width: int) -> torch.Tensor:
    if not isinstance(boxes, torch.Tensor) or boxes.dim() != 2 or boxes.shape[1] != 5 or boxes.shape[0] < 1:
        raise InputError("boxes must be an integer tensor [N, 5] of (top, left, height, width, flip)")
    b = boxes.detach().to("cpu", torch.int64)
    top, left, bh, bw, flip = b.unbind(1)
    bad = (top < 0) | (left < 0) | (bh < 1) | (bw < 1) | (top + bh > height) | (left + bw > width)
    bad |= (flip != 0) & (flip != 1)
    if bool(bad.any()):
        row = int(bad.nonzero()[0, 0])
        raise InputError(f"box {row} {b[row].tolist()} does not fit a {height}×{width} frame")
    return b
