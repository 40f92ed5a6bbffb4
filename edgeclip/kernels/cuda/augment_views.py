"""`augment_views_triton`: every augmented view of one frame in a single Triton kernel.

For a uint8 frame ``[H, W, 3]`` (HWC, as a camera or a decoder hands it over) and ``N`` crop boxes
(``(top, left, height, width, flip)``, see `edgeclip.kernels.view_boxes`), the kernel writes the views
``[N, 3, size, size]`` in one pass over the output: crop, antialiased resize, horizontal flip, ``/ 255``,
``(v - mean) / std`` and the cast to the output dtype happen per output pixel, with no intermediate tensor.

The resampling reproduces ``torch.nn.functional.interpolate(..., antialias=True, align_corners=False)`` as
torchvision's ``resized_crop`` calls it on a float image (no clamping of the bicubic overshoot). For output
row ``y`` of a view whose box is ``box_h`` rows high::

    scale   = box_h / size
    support = (1 for bilinear, 2 for bicubic) * max(scale, 1)
    center  = scale * (y + 0.5)
    window  = [max(trunc(center - support + 0.5), 0), min(trunc(center + support + 0.5), box_h))
    weight(j) = filter((j - center + 0.5) / max(scale, 1)),  normalised over the window

with ``filter`` the triangle ``1 - |x|`` (bilinear) or Keys' cubic with ``a = -0.5`` (bicubic); columns
likewise with the box width. Positions are relative to the box, so the crop never reads outside it. The
2-D filter is separable: the weight of source pixel ``(i, j)`` is ``wy(i) * wx(j)``, and the sum of the
unnormalised 2-D weights is ``sum(wy) * sum(wx)``, so each program accumulates unnormalised weighted sums
and divides once at the end.

Layout: the grid is ``(N, cdiv(size, BLOCK_Y), cdiv(size, BLOCK_X))`` with ``BLOCK_Y * BLOCK_X <= 256``; a
program owns a tile of one view. It loads its view's box and filter code, computes the tap windows of its
rows and columns in registers and walks the source pixels with two runtime loops: column taps in chunks of
``TAPS_X = 4`` (outer: the ``[BLOCK_X, TAPS_X]`` column weights and offsets are computed once per chunk)
and row taps one at a time (inner), gathering a ``[BLOCK_Y, BLOCK_X, TAPS_X]`` block of each of the three
channels and accumulating it in float32; the tap axis is summed once at the end. Source indices are
clamped into the box, so the gathers need no mask: taps past a pixel's window get weight zero instead.

Loop bounds: the tap counts are runtime values, never constexprs, so new boxes never recompile the kernel
(``width`` and ``size`` are not specialised either). Rather than a batch-wide maximum computed on the host
(which would need the boxes there, and a sync when they live on the GPU), each program takes the widest
window of its own rows and columns (``max(ymax - ymin)``, ``max(xmax - xmin)``): exact, tile by tile, so a
small box in a batch of large ones loops only over its own taps. A window spans at most ``ceil(2 *
support)`` source pixels: downsampling a 1080-row box to 224 (scale 4.82) gives 10 row taps (bilinear) or
20 (bicubic); a 2160-row box (4K, scale 9.64) 20 / 39; upsampling 2 / 4. There is no upper limit: the cost
per output pixel is ``taps_y * 4 * ceil(taps_x / 4)`` gathers of three bytes, and the padding of the last
column chunk reads clamped, in-box pixels with weight zero.
"""

from __future__ import annotations

import contextlib
import logging
import math

import torch
import triton
import triton.language as tl

from edgeclip.errors import InputError

__all__ = ["augment_views_triton"]

logger = logging.getLogger(__name__)

_OUT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
_MAX_TILE = 256  # output pixels per program
_TAPS_X = 4  # column taps gathered per step (8 costs more padding taps and registers: 97 vs 64 on sm_90)
_NUM_WARPS = 8  # 256 threads: 4 elements of each [BLOCK_Y, BLOCK_X, TAPS_X] tensor per thread


@triton.jit
def _aa_filter(x, cubic):
    """Triangle (bilinear) or Keys' cubic with a = -0.5 (bicubic), as torch's antialiased resize uses.

    ``cubic`` is the same for the whole program, so the branch is uniform."""
    ax = tl.abs(x)
    if cubic:
        near = (1.5 * ax - 2.5) * ax * ax + 1.0
        far = (((ax - 5.0) * ax + 8.0) * ax - 4.0) * -0.5
        w = tl.where(ax < 1.0, near, tl.where(ax < 2.0, far, 0.0))
    else:
        w = tl.maximum(1.0 - ax, 0.0)
    return w


@triton.jit(do_not_specialize=["width", "size"])
def _augment_views_kernel(
    frame_ptr,  # uint8 [H, W, 3], contiguous
    boxes_ptr,  # int64 [N, 5]: top, left, height, width, flip
    filters_ptr,  # int64 [N]: 0 bilinear, 1 bicubic
    out_ptr,  # float32 / float16 / bfloat16 [N, 3, size, size]
    width,  # frame width W
    size,  # output side S
    scale0,  # 1 / (255 * std[c])
    scale1,
    scale2,
    bias0,  # -mean[c] / std[c]
    bias1,
    bias2,
    BLOCK_Y: tl.constexpr,
    BLOCK_X: tl.constexpr,
    TAPS_X: tl.constexpr,
):
    n = tl.program_id(0)
    pid_y = tl.program_id(1)
    pid_x = tl.program_id(2)

    box = boxes_ptr + n * 5
    top = tl.load(box + 0).to(tl.int32)
    left = tl.load(box + 1).to(tl.int32)
    box_h = tl.load(box + 2).to(tl.int32)
    box_w = tl.load(box + 3).to(tl.int32)
    flip = tl.load(box + 4) != 0
    cubic = tl.load(filters_ptr + n) != 0

    size_f = size * 1.0  # int32 argument -> float32
    support_1 = tl.where(cubic, 2.0, 1.0)

    # rows of this tile: window [ymin, ymax) relative to the box top, centre cy
    ys = pid_y * BLOCK_Y + tl.arange(0, BLOCK_Y)
    ys_c = tl.minimum(ys, size - 1)  # rows past the edge compute row size-1 and are not stored
    sc_y = box_h.to(tl.float32) / size_f
    down_y = sc_y >= 1.0
    sup_y = tl.where(down_y, support_1 * sc_y, support_1)
    inv_y = tl.where(down_y, 1.0 / sc_y, 1.0)
    cy = sc_y * (ys_c.to(tl.float32) + 0.5)
    ymin = tl.maximum((cy - sup_y + 0.5).to(tl.int32), 0)  # float -> int truncates toward zero, like C++
    ymax = tl.minimum((cy + sup_y + 0.5).to(tl.int32), box_h)
    taps_y = tl.max(ymax - ymin, axis=0)  # widest row window of the tile: the runtime row-tap bound

    # columns: output column x reads the unflipped column size-1-x when the view is flipped
    xs = pid_x * BLOCK_X + tl.arange(0, BLOCK_X)
    xs_c = tl.minimum(xs, size - 1)
    xs_src = tl.where(flip, size - 1 - xs_c, xs_c)
    sc_x = box_w.to(tl.float32) / size_f
    down_x = sc_x >= 1.0
    sup_x = tl.where(down_x, support_1 * sc_x, support_1)
    inv_x = tl.where(down_x, 1.0 / sc_x, 1.0)
    cx = sc_x * (xs_src.to(tl.float32) + 0.5)
    xmin = tl.maximum((cx - sup_x + 0.5).to(tl.int32), 0)
    xmax = tl.minimum((cx + sup_x + 0.5).to(tl.int32), box_w)
    chunks_x = tl.cdiv(tl.max(xmax - xmin, axis=0), TAPS_X)  # column taps in chunks of TAPS_X

    # loop invariants: the frame row of the box top, the clamp limits, the first row tap's filter argument
    row_stride = width * 3
    frame_top = frame_ptr + top * row_stride
    last_row = box_h - 1
    last_col = box_w - 1
    dy0 = (ymin.to(tl.float32) - cy + 0.5) * inv_y  # filter argument of row tap ymin; tap ymin+t adds t*inv_y

    k = tl.arange(0, TAPS_X)
    total_x = tl.zeros([BLOCK_X], dtype=tl.float32)
    total_y = tl.zeros([BLOCK_Y], dtype=tl.float32)
    acc0 = tl.zeros([BLOCK_Y, BLOCK_X, TAPS_X], dtype=tl.float32)
    acc1 = tl.zeros([BLOCK_Y, BLOCK_X, TAPS_X], dtype=tl.float32)
    acc2 = tl.zeros([BLOCK_Y, BLOCK_X, TAPS_X], dtype=tl.float32)
    for c in range(0, chunks_x):
        # TAPS_X column taps of every column of the tile, computed once and reused for every row tap
        jx = xmin[:, None] + (c * TAPS_X + k)[None, :]  # [BLOCK_X, TAPS_X]
        wx = _aa_filter((jx.to(tl.float32) - cx[:, None] + 0.5) * inv_x, cubic)
        wx = tl.where(jx < xmax[:, None], wx, 0.0)
        total_x += tl.sum(wx, axis=1)
        # clamped into the box: padding taps read a valid pixel (with weight zero)
        cols = ((left + tl.minimum(jx, last_col)) * 3)[None, :, :]  # byte offsets within a frame row
        wx3 = wx[None, :, :]
        first = c == 0
        for ty in range(0, taps_y):
            iy = ymin + ty
            wy = tl.where(iy < ymax, _aa_filter(dy0 + ty * inv_y, cubic), 0.0)
            total_y += tl.where(first, wy, 0.0)
            src = frame_top + (cols + (tl.minimum(iy, last_row) * row_stride)[:, None, None])
            w = wy[:, None, None] * wx3
            acc0 += w * tl.load(src).to(tl.float32)
            acc1 += w * tl.load(src + 1).to(tl.float32)
            acc2 += w * tl.load(src + 2).to(tl.float32)

    # the 2-D weights sum to total_y * total_x; torch leaves a window whose weights sum to zero unnormalised
    total_y = tl.where(total_y != 0.0, total_y, 1.0)
    total_x = tl.where(total_x != 0.0, total_x, 1.0)
    norm = 1.0 / (total_y[:, None] * total_x[None, :])

    plane = size * size
    out = out_ptr + n.to(tl.int64) * 3 * plane
    offs = ys[:, None] * size + xs[None, :]
    mask = (ys[:, None] < size) & (xs[None, :] < size)
    dt = out_ptr.dtype.element_ty
    tl.store(out + offs, (tl.sum(acc0, axis=2) * norm * scale0 + bias0).to(dt), mask=mask)
    tl.store(out + plane + offs, (tl.sum(acc1, axis=2) * norm * scale1 + bias1).to(dt), mask=mask)
    tl.store(out + 2 * plane + offs, (tl.sum(acc2, axis=2) * norm * scale2 + bias2).to(dt), mask=mask)


def _as_triple(name: str, value: tuple[float, float, float]) -> tuple[float, float, float]:
    try:
        vals = tuple(float(v) for v in value)
    except (TypeError, ValueError) as exc:
        raise InputError(f"{name} must be three numbers (one per RGB channel), got {value!r}") from exc
    if len(vals) != 3 or not all(math.isfinite(v) for v in vals):
        raise InputError(f"{name} must be three finite numbers (one per RGB channel), got {value!r}")
    return vals  # type: ignore[return-value]


def _check_inputs(
    frame: torch.Tensor, boxes: torch.Tensor, filters: torch.Tensor, size: int, dtype: torch.dtype
) -> None:
    if not isinstance(frame, torch.Tensor) or frame.dtype != torch.uint8:
        got = frame.dtype if isinstance(frame, torch.Tensor) else type(frame).__name__
        raise InputError(f"frame must be a uint8 tensor [H, W, 3], got {got}")
    if frame.dim() != 3 or frame.shape[2] != 3 or frame.shape[0] < 1 or frame.shape[1] < 1:
        raise InputError(f"frame must be [H, W, 3] (HWC, RGB) with H, W >= 1, got {list(frame.shape)}")
    if not frame.is_contiguous():
        raise InputError("frame must be contiguous (HWC); call .contiguous() on it first")
    if frame.numel() >= 2**31:
        raise InputError(f"frame of {list(frame.shape)} is too large: at most 2**31 - 1 bytes are addressable")
    if frame.device.type != "cuda" and not _INTERPRETED:
        raise InputError(
            f"augment_views_triton needs the frame on a CUDA device, got {frame.device} "
            "(on the CPU, use the PyTorch path or run under TRITON_INTERPRET=1)"
        )
    if not isinstance(boxes, torch.Tensor) or boxes.dtype != torch.int64 or boxes.dim() != 2 or boxes.shape[1] != 5:
        desc = f"{boxes.dtype} {list(boxes.shape)}" if isinstance(boxes, torch.Tensor) else type(boxes).__name__
        raise InputError(f"boxes must be an int64 tensor [N, 5] (top, left, height, width, flip), got {desc}")
    if boxes.shape[0] < 1:
        raise InputError("boxes must hold at least one view, got N = 0")
    n = boxes.shape[0]
    if not isinstance(filters, torch.Tensor) or filters.dtype != torch.int64 or tuple(filters.shape) != (n,):
        desc = f"{filters.dtype} {list(filters.shape)}" if isinstance(filters, torch.Tensor) else type(filters).__name__
        raise InputError(f"filters must be an int64 tensor [N] = [{n}] (0 bilinear, 1 bicubic), got {desc}")
    for name, t in (("boxes", boxes), ("filters", filters)):
        if t.device != frame.device and t.device.type != "cpu":
            raise InputError(f"{name} must be on the CPU or on the frame's device {frame.device}, got {t.device}")
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise InputError(f"size must be a positive int, got {size!r}")
    if dtype not in _OUT_DTYPES:
        raise InputError(f"dtype must be torch.float32, torch.float16 or torch.bfloat16, got {dtype}")


def _check_values(boxes: torch.Tensor, filters: torch.Tensor, height: int, width: int) -> None:
    """Reject boxes that leave the frame, empty boxes, bad flip flags and unknown filter codes."""
    top, left, h, w, flip = boxes.unbind(1)
    bad = (top < 0) | (left < 0) | (h < 1) | (w < 1) | (top + h > height) | (left + w > width)
    bad |= (flip != 0) & (flip != 1)
    bad_filter = (filters != 0) & (filters != 1)
    if bool(bad.any()):
        i = int(bad.nonzero()[0, 0])
        raise InputError(
            f"box {i} = {boxes[i].tolist()} (top, left, height, width, flip) is empty, has a flip other than "
            f"0/1, or leaves the {height}×{width} frame"
        )
    if bool(bad_filter.any()):
        i = int(bad_filter.nonzero()[0, 0])
        raise InputError(f"filters[{i}] = {int(filters[i])}: the filter codes are 0 (bilinear) and 1 (bicubic)")


def augment_views_triton(
    frame: torch.Tensor,
    boxes: torch.Tensor,
    filters: torch.Tensor,
    size: int,
    mean: tuple[float, float, float],
    std: tuple[float, float, float],
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Crop, antialiased resize, flip and normalise ``N`` views of ``frame`` in one kernel.

    Args:
        frame: uint8 ``[H, W, 3]`` RGB, contiguous, on a CUDA device (or on the CPU under the interpreter).
        boxes: int64 ``[N, 5]`` = (top, left, height, width, flip) in source pixels, inside the frame;
            on the CPU or on the frame's device.
        filters: int64 ``[N]``: 0 bilinear, 1 bicubic (see ``view_boxes.FILTERS``).
        size: side of the square output views.
        mean, std: per-channel normalisation of the ``[0, 1]`` pixel values.
        dtype: ``torch.float32``, ``torch.float16`` or ``torch.bfloat16``.

    Returns:
        ``[N, 3, size, size]`` of ``dtype`` on the frame's device.
    """
    _check_inputs(frame, boxes, filters, size, dtype)
    mean_t = _as_triple("mean", mean)
    std_t = _as_triple("std", std)
    if any(s == 0.0 for s in std_t):
        raise InputError(f"std must not contain zeros, got {std!r}")
    height, width = int(frame.shape[0]), int(frame.shape[1])
    _check_values(boxes, filters, height, width)

    device = frame.device
    boxes_d = boxes.to(device, non_blocking=True).contiguous()
    filters_d = filters.to(device, non_blocking=True).contiguous()
    n = int(boxes.shape[0])
    out = torch.empty((n, 3, size, size), dtype=dtype, device=device)

    block_x = min(32, triton.next_power_of_2(size))
    block_y = min(triton.next_power_of_2(size), max(1, _MAX_TILE // block_x))
    grid = (n, triton.cdiv(size, block_y), triton.cdiv(size, block_x))
    scales = [1.0 / (255.0 * s) for s in std_t]
    biases = [-m / s for m, s in zip(mean_t, std_t, strict=True)]
    logger.debug("augment_views_triton: %d views of %dx%d -> %d, grid %s", n, height, width, size, grid)
    with torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext():
        _augment_views_kernel[grid](
            frame,
            boxes_d,
            filters_d,
            out,
            width,
            size,
            *scales,
            *biases,
            BLOCK_Y=block_y,
            BLOCK_X=block_x,
            TAPS_X=_TAPS_X,
            num_warps=_NUM_WARPS,
        )
    return out


def _is_interpreted() -> bool:
    try:
        from triton.runtime.interpreter import InterpretedFunction
    except ImportError:  # pragma: no cover - very old Triton
        return False
    return isinstance(_augment_views_kernel, InterpretedFunction)


_INTERPRETED = _is_interpreted()
