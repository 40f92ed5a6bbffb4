"""The CPU path of `augment_views`: all views of a frame resampled in one call, no Python loop over views.

Two implementations apply the same taps (`view_boxes.resample_windows`, torch's antialias taps):

* ``native``: a small C kernel (`csrc/resample_views.c`) compiled with the system C compiler on first use
  and cached (``$EDGECLIP_CACHE`` or ``~/.cache/edgeclip``), called through ctypes; views are shared out
  over threads. Per view it computes the taps, runs a vertical pass over the box's columns as long
  vectorised multiply-adds, then a horizontal pass on blocks of output rows.
* ``torch``: the PyTorch reference, batched over views with two sparse matrix products (horizontal taps of
  every view, then vertical taps as a block-diagonal matrix). Exact, portable, and several times slower.

``auto`` takes the native kernel when it builds and falls back to PyTorch with one warning when it cannot
(no compiler, or ``EDGECLIP_NATIVE_KERNELS=0``).
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import tempfile
import threading
import warnings
from pathlib import Path

import torch

from edgeclip.errors import InputError
from edgeclip.kernels.view_boxes import resample_windows

__all__ = ["native_available", "resample_views"]

logger = logging.getLogger(__name__)

_SOURCE = Path(__file__).with_name("csrc") / "resample_views.c"
_FLAG_SETS: tuple[tuple[str, ...], ...] = (("-O3", "-march=native"), ("-O3", "-mcpu=native"), ("-O3",))
_lock = threading.Lock()
_lib: ctypes.CDLL | None = None
_lib_error: str | None = None
_CPU_IMPLS = ("auto", "native", "torch")


def _cache_dir() -> Path:
    root = os.environ.get("EDGECLIP_CACHE")
    return Path(root) if root else Path.home() / ".cache" / "edgeclip"


def _compiler() -> str | None:
    for name in (os.environ.get("CC"), "cc", "gcc", "clang"):
        if name and shutil.which(name):
            return name
    return None


def _build() -> ctypes.CDLL:
    cc = _compiler()
    if cc is None:
        raise RuntimeError("no C compiler found (set CC, or install cc/gcc/clang)")
    source = _SOURCE.read_bytes()
    tag = hashlib.sha256(source + platform.machine().encode() + platform.node().encode()).hexdigest()[:16]
    out_dir = _cache_dir() / "kernels"
    target = out_dir / f"resample_views-{tag}.so"
    if not target.exists():
        out_dir.mkdir(parents=True, exist_ok=True)
        errors = []
        for flags in _FLAG_SETS:
            with tempfile.TemporaryDirectory(dir=out_dir) as tmp:
                tmp_so = Path(tmp) / "lib.so"
                cmd = [cc, *flags, "-fPIC", "-shared", "-pthread", str(_SOURCE), "-o", str(tmp_so)]
                proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
                if proc.returncode == 0:
                    os.replace(tmp_so, target)
                    logger.info("built the native view kernel with %s %s -> %s", cc, " ".join(flags), target)
                    break
                errors.append(f"{' '.join(cmd)}: {proc.stderr.strip()[-500:]}")
        else:
            raise RuntimeError("compiling the native view kernel failed: " + " | ".join(errors))
    lib = ctypes.CDLL(str(target))
    fn = lib.edgeclip_resample_views
    p, i64 = ctypes.c_void_p, ctypes.c_int64
    fn.argtypes = [p, i64, i64, i64, i64, p, p, p, p, p, i64]
    fn.restype = ctypes.c_int
    return lib


def _native() -> ctypes.CDLL | None:
    """The compiled kernel, built once per process (and cached on disk), or None when it cannot be."""
    global _lib, _lib_error
    with _lock:
        if _lib is None and _lib_error is None:
            if os.environ.get("EDGECLIP_NATIVE_KERNELS", "1") == "0":
                _lib_error = "disabled by EDGECLIP_NATIVE_KERNELS=0"
            else:
                try:
                    _lib = _build()
                except (OSError, RuntimeError) as exc:
                    _lib_error = str(exc)
            if _lib_error is not None:
                warnings.warn(
                    f"native CPU view kernel unavailable ({_lib_error}); using the slower PyTorch path",
                    RuntimeWarning,
                    stacklevel=3,
                )
        return _lib


def native_available() -> bool:
    """Whether the compiled CPU view kernel can be used on this machine."""
    return _native() is not None


def _scale_bias(mean: tuple[float, ...], std: tuple[float, ...]) -> tuple[torch.Tensor, torch.Tensor]:
    scale = torch.tensor([1.0 / (255.0 * s) for s in std], dtype=torch.float32)
    bias = torch.tensor([-m / s for m, s in zip(mean, std, strict=True)], dtype=torch.float32)
    return scale, bias


def _windows(boxes: torch.Tensor, filters: torch.Tensor, size: int):
    y0, ny, wy = resample_windows(boxes[:, 0], boxes[:, 2], size, filters)
    x0, nx, wx = resample_windows(boxes[:, 1], boxes[:, 3], size, filters)
    return y0, ny, wy.to(torch.float32).contiguous(), x0, nx, wx.to(torch.float32).contiguous()


def _run_native(lib: ctypes.CDLL, frame: torch.Tensor, boxes: torch.Tensor, filters: torch.Tensor, size: int,
                mean: tuple[float, ...], std: tuple[float, ...]) -> torch.Tensor:
    scale, bias = _scale_bias(mean, std)
    n = boxes.shape[0]
    out = torch.empty(n, 3, size, size, dtype=torch.float32)
    keep = [frame, boxes, filters.contiguous(), scale, bias, out]
    ptr = [t.data_ptr() for t in keep]
    status = lib.edgeclip_resample_views(ptr[0], frame.shape[0], frame.shape[1], n, size, ptr[1], ptr[2], ptr[3],
                                         ptr[4], ptr[5], max(1, torch.get_num_threads()))
    if status != 0:
        raise MemoryError("the native view kernel could not allocate its buffers")
    return out


def _csr(first: torch.Tensor, count: torch.Tensor, w: torch.Tensor, n_cols: int, offset: torch.Tensor | None
         ) -> torch.Tensor:
    taps = torch.arange(w.shape[-1]).view(1, 1, -1)
    keep = taps < count.unsqueeze(-1)
    cols = first.unsqueeze(-1) + taps
    if offset is not None:
        cols = cols + offset.view(-1, 1, 1)
    crow = torch.zeros(count.numel() + 1, dtype=torch.int64)
    crow[1:] = count.reshape(-1).cumsum(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "sparse CSR support is in beta"
        return torch.sparse_csr_tensor(crow, cols[keep], w[keep].to(torch.float32), (count.numel(), n_cols))


def _run_torch(frame: torch.Tensor, boxes: torch.Tensor, filters: torch.Tensor, size: int,
               mean: tuple[float, ...], std: tuple[float, ...]) -> torch.Tensor:
    n = boxes.shape[0]
    h, w = frame.shape[0], frame.shape[1]
    y0, ny, wy, x0, nx, wx = _windows(boxes, filters, size)
    flip = boxes[:, 4].bool().view(-1, 1)
    x0 = torch.where(flip, x0.flip(1), x0)
    nx = torch.where(flip, nx.flip(1), nx)
    wx = torch.where(flip.unsqueeze(-1), wx.flip(1), wx)
    # horizontal taps of every view at once: [(view, x), W] @ [W, (row, channel)]
    horizontal = _csr(x0, nx, wx, w, None) @ frame.permute(1, 0, 2).reshape(w, h * 3).to(torch.float32)
    rows = horizontal.view(n, size, h, 3).permute(0, 2, 1, 3).reshape(n * h, size * 3)
    # vertical taps, block-diagonal over views: [(view, y), (view, row)] @ [(view, row), (x, channel)]
    out = _csr(y0, ny, wy, n * h, torch.arange(n) * h) @ rows
    scale, bias = _scale_bias(mean, std)
    return (out.view(n, size, size, 3) * scale + bias).permute(0, 3, 1, 2).contiguous()


def resample_views(frame: torch.Tensor, boxes: torch.Tensor, filters: torch.Tensor, size: int,
                   mean: tuple[float, ...], std: tuple[float, ...], dtype: torch.dtype = torch.float32,
                   impl: str = "auto") -> torch.Tensor:
    """Resample every box of a CPU uint8 frame ``[H, W, 3]`` to ``[N, 3, size, size]`` views in ``dtype``.

    ``impl``: ``"native"`` (the compiled kernel; error if it cannot be built), ``"torch"`` (the PyTorch
    reference) or ``"auto"`` (native when available).
    """
    if impl not in _CPU_IMPLS:
        raise InputError(f"CPU view implementation must be one of {_CPU_IMPLS}, got {impl!r}")
    if frame.device.type != "cpu":
        raise InputError(f"resample_views runs on CPU frames, got one on {frame.device}")
    frame = frame.contiguous()
    boxes = boxes.to(torch.int64).contiguous()
    filters = filters.to(torch.int64)
    lib = _native() if impl in ("auto", "native") else None
    if impl == "native" and lib is None:
        raise InputError(f"the native CPU view kernel is unavailable: {_lib_error}")
    if lib is not None:
        out = _run_native(lib, frame, boxes, filters, size, mean, std)
    else:
        out = _run_torch(frame, boxes, filters, size, mean, std)
    return out if dtype == torch.float32 else out.to(dtype)
