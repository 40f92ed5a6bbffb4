"""Where the views of a frame come from: the crop boxes `augment_views` resamples, and the 1-D resampling
weights every implementation (the CPU path, the Triton kernel, the tests' oracle) agrees on.

A box is one row of an int64 tensor ``[N, 5]``: ``(top, left, height, width, flip)`` in source pixels.
Row 0 is the plain CLIP view: the centred square of side ``min(H, W)``, which is what "resize the shorter
side to S, then centre-crop S×S" reads from the frame. Rows 1..N-1 are random resized crops drawn as
torchvision's ``RandomResizedCrop.get_params`` draws them (area fraction uniform in ``scale``, log aspect
ratio uniform in ``log(ratio)``, ten attempts, centre-crop fallback), each flipped with probability
``flip_p``. All views are drawn on the CPU from one seedable generator, so a box tensor reproduces every
view on every device.
"""

from __future__ import annotations

import math

import torch

from edgeclip.errors import InputError

__all__ = ["BOX_FIELDS", "FILTERS", "center_box", "resample_weights", "resample_windows", "sample_boxes"]

BOX_FIELDS: tuple[str, ...] = ("top", "left", "height", "width", "flip")

FILTERS: dict[str, int] = {"bilinear": 0, "bicubic": 1}
"""Resampling filters by name, with the code the kernels use."""

_ATTEMPTS = 10
_SUPPORT = {0: 1.0, 1: 2.0}  # half-width of each filter at scale 1


def center_box(height: int, width: int) -> tuple[int, int, int, int]:
    """The centred square of side ``min(height, width)``: CLIP's resize-shorter-side + centre crop."""
    side = min(height, width)
    return (round((height - side) / 2.0), round((width - side) / 2.0), side, side)


def sample_boxes(
    height: int,
    width: int,
    n_views: int,
    *,
    scale: tuple[float, float] = (0.08, 1.0),
    ratio: tuple[float, float] = (3.0 / 4.0, 4.0 / 3.0),
    flip_p: float = 0.5,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Draw ``n_views`` boxes ``[N, 5]`` (int64, CPU) for a ``height × width`` frame; row 0 is the plain view.

    Vectorised over views (no Python loop): every view draws its ten attempts at once and keeps the first
    that fits, as ``RandomResizedCrop.get_params`` does one view at a time.
    """
    if height < 1 or width < 1:
        raise InputError(f"frame must be at least 1×1, got {height}×{width}")
    if n_views < 1:
        raise InputError(f"n_views must be >= 1, got {n_views}")
    if not (0.0 < scale[0] <= scale[1] <= 1.0):
        raise InputError(f"scale must satisfy 0 < min <= max <= 1, got {scale}")
    if not (0.0 < ratio[0] <= ratio[1]):
        raise InputError(f"ratio must satisfy 0 < min <= max, got {ratio}")
    if not 0.0 <= flip_p <= 1.0:
        raise InputError(f"flip_p must lie in [0, 1], got {flip_p}")
    boxes = torch.zeros(n_views, 5, dtype=torch.int64)
    boxes[0, :4] = torch.tensor(center_box(height, width))
    m = n_views - 1
    if m == 0:
        return boxes
    g = generator
    area = float(height * width)
    u_scale = torch.rand(m, _ATTEMPTS, generator=g, dtype=torch.float64)
    u_ratio = torch.rand(m, _ATTEMPTS, generator=g, dtype=torch.float64)
    u_top = torch.rand(m, _ATTEMPTS, generator=g, dtype=torch.float64)
    u_left = torch.rand(m, _ATTEMPTS, generator=g, dtype=torch.float64)
    u_flip = torch.rand(m, generator=g, dtype=torch.float64)
    target = area * (scale[0] + (scale[1] - scale[0]) * u_scale)
    log_r = math.log(ratio[0]) + (math.log(ratio[1]) - math.log(ratio[0])) * u_ratio
    aspect = torch.exp(log_r)
    w = torch.round(torch.sqrt(target * aspect)).to(torch.int64)
    h = torch.round(torch.sqrt(target / aspect)).to(torch.int64)
    ok = (w > 0) & (w <= width) & (h > 0) & (h <= height)
    first = torch.where(ok.any(1), ok.to(torch.int8).argmax(1), torch.full((m,), -1))
    rows = torch.arange(m)
    pick = first.clamp_min(0)
    h_sel, w_sel = h[rows, pick], w[rows, pick]
    top = (u_top[rows, pick] * (height - h_sel + 1).to(torch.float64)).floor().to(torch.int64)
    left = (u_left[rows, pick] * (width - w_sel + 1).to(torch.float64)).floor().to(torch.int64)
    # fallback (no attempt fits): the centre crop at the nearest allowed aspect ratio, as torchvision does
    in_ratio = width / height
    if in_ratio < ratio[0]:
        fw, fh = width, round(width / ratio[0])
    elif in_ratio > ratio[1]:
        fh, fw = height, round(height * ratio[1])
    else:
        fw, fh = width, height
    fallback = first < 0
    h_sel = torch.where(fallback, torch.full_like(h_sel, fh), h_sel)
    w_sel = torch.where(fallback, torch.full_like(w_sel, fw), w_sel)
    top = torch.where(fallback, torch.full_like(top, (height - fh) // 2), top)
    left = torch.where(fallback, torch.full_like(left, (width - fw) // 2), left)
    boxes[1:, 0], boxes[1:, 1], boxes[1:, 2], boxes[1:, 3] = top, left, h_sel, w_sel
    boxes[1:, 4] = (u_flip < flip_p).to(torch.int64)
    return boxes


def _filter(x: torch.Tensor, code: torch.Tensor) -> torch.Tensor:
    """Triangle (bilinear) or Keys cubic with a = -0.5 (bicubic), as torch's antialiased resize uses."""
    ax = x.abs()
    tri = (1.0 - ax).clamp_min(0.0)
    a = -0.5
    cub_near = ((a + 2.0) * ax - (a + 3.0)) * ax * ax + 1.0
    cub_far = (((ax - 5.0) * ax + 8.0) * ax - 4.0) * a
    cub = torch.where(ax < 1.0, cub_near, torch.where(ax < 2.0, cub_far, torch.zeros_like(ax)))
    return torch.where(code.bool(), cub, tri)


def resample_windows(
    start: torch.Tensor, length: torch.Tensor, out_size: int, filter_code: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """1-D antialiased resampling of the source span ``[start, start + length)`` onto ``out_size`` samples,
    one span per view. Returns, per view and output sample, the first source index (absolute, int64
    ``[N, out_size]``), the number of taps (int64 ``[N, out_size]``) and the normalised tap weights
    (float64 ``[N, out_size, T]``, zero past each window).

    The taps follow torch's antialiased interpolation (``interpolate(..., antialias=True)``): scale
    ``length / out_size``, support widened by the scale when downsampling, window ``[int(c - s + .5),
    int(c + s + .5))`` clipped to the span, weights normalised to sum to one.
    """
    start = start.to(torch.float64).view(-1, 1, 1)
    length_f = length.to(torch.float64).view(-1, 1, 1)
    code = filter_code.view(-1, 1, 1)
    support_1 = torch.where(code.bool(), torch.full_like(length_f, _SUPPORT[1]), torch.full_like(length_f, _SUPPORT[0]))
    sc = length_f / out_size
    down = sc >= 1.0
    support = torch.where(down, support_1 * sc, support_1)
    inv = torch.where(down, 1.0 / sc, torch.ones_like(sc))
    i = torch.arange(out_size, dtype=torch.float64).view(1, -1, 1)
    center = sc * (i + 0.5)
    xmin = torch.clamp_min(torch.trunc(center - support + 0.5), 0.0)
    xmax = torch.minimum(torch.trunc(center + support + 0.5), length_f)
    taps = int(torch.ceil(support.max() * 2.0).item()) + 2
    j = torch.arange(taps, dtype=torch.float64).view(1, 1, -1)
    pos = xmin + j  # position inside the span
    inside = pos < xmax
    w = torch.where(inside, _filter((pos - center + 0.5) * inv, code), torch.zeros(()))
    total = w.sum(-1, keepdim=True)
    w = torch.where(total != 0, w / total, w)
    first = (start + xmin).squeeze(-1).to(torch.int64)
    return first, inside.sum(-1), w


def resample_weights(
    start: torch.Tensor, length: torch.Tensor, out_size: int, in_size: int, filter_code: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """The taps of :func:`resample_windows` as source indices ``[N, out_size, T]`` (int64, clamped into
    ``[0, in_size)``) and weights ``[N, out_size, T]`` (float64, zero on padding taps)."""
    first, _, w = resample_windows(start, length, out_size, filter_code)
    idx = first.unsqueeze(-1) + torch.arange(w.shape[-1]).view(1, 1, -1)
    return idx.clamp(0, in_size - 1), w
