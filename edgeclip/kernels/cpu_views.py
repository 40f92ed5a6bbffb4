"""The CPU path of `augment_views`: all views of a frame resampled in one call, no Python loop over views.

Two implementations apply the same taps (`view_boxes.resample_windows`, torch's antialias taps):

* ``native``: a small C kernel (`csrc/resample_views.c`) compiled with the system C compiler on first use
  and cached (``$EDGECLIP_CACHE`` or ``~/.cache/edgeclip``), called through ctypes; views are shared out
  over threads. Per block of output rows it runs a vertical pass over the box's columns as long
  vectorised multiply-adds, then a horizontal pass as banded multiply-adds one vector of output columns
  wide; the vector width follows the instruction set it was built for (AVX-512, AVX2, SSE, NEON).
* ``torch``: the PyTorch reference, batched over views with two sparse matrix products (horizontal taps of
  every view, then vertical taps as a block-diagonal matrix). Exact, portable, and several times slower.

``auto`` takes the native kernel when it builds and falls back to PyTorch with one warning when it cannot
(no compiler, a library built for instructions this CPU lacks, or ``EDGECLIP_NATIVE_KERNELS=0``).

Build flags: ``-O3 -march=native`` (then ``-mcpu=native``, then plain ``-O3`` where the compiler refuses);
``EDGECLIP_NATIVE_MARCH`` forces the instruction-set level instead, either a ``-march`` value
(``x86-64-v3`` builds the AVX2 path on any AVX2 CPU, ``x86-64-v2`` the SSE4 one) or compiler flags starting
with ``-`` (``-mcpu=cortex-a78ae``); a forced build that fails is an error, not a fallback. The cached
library's name hashes the source, the compiler, the flags and the CPU's instruction-set flags
(`cpu_info.isa_signature`), so a cache directory shared between machines never hands one CPU a library
built for another; the library also checks at load time that this CPU has what it was compiled for.
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
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import torch

from edgeclip.errors import InputError
from edgeclip.kernels.cpu_info import isa_signature
from edgeclip.kernels.view_boxes import resample_windows

__all__ = ["MARCH_ENV", "NativeKernel", "compile_native_kernel", "native_available", "native_kernel",
           "native_kernel_info", "resample_views"]

logger = logging.getLogger(__name__)

MARCH_ENV = "EDGECLIP_NATIVE_MARCH"
_SOURCE = Path(__file__).with_name("csrc") / "resample_views.c"
_BASE_FLAGS = ("-O3",)
_DEFAULT_FLAG_SETS: tuple[tuple[str, ...], ...] = (("-march=native",), ("-mcpu=native",), ())
_lock = threading.Lock()
_kernel: NativeKernel | None = None
_lib_error: str | None = None
_CPU_IMPLS = ("auto", "native", "torch")


@dataclass(frozen=True)
class NativeKernel:
    """The compiled view kernel and how it was built."""

    lib: ctypes.CDLL  # the loaded library
    path: str  # the cached .so
    compiler: str  # the C compiler's path
    flags: tuple[str, ...]  # optimisation and instruction-set flags it was compiled with
    march: str  # "native", or the forced EDGECLIP_NATIVE_MARCH value
    isa: str  # instruction set the kernel vectorises for: avx512, avx2, avx, sse4.1, sse2, neon or scalar
    vector_floats: int  # floats per vector register in its hot loops

    def views(self, frame: torch.Tensor, boxes: torch.Tensor, filters: torch.Tensor, size: int,
              mean: tuple[float, ...], std: tuple[float, ...]) -> torch.Tensor:
        """float32 views ``[N, 3, size, size]`` of a contiguous CPU uint8 frame ``[H, W, 3]`` and checked int64
        boxes ``[N, 5]`` / filter codes ``[N]`` (as `resample_views` passes them)."""
        return _run_native(self, frame, boxes, filters, size, mean, std)

    def info(self) -> dict[str, Any]:
        """JSON-ready description (everything but the library handle), with the compiler's version line."""
        d = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "lib"}
        d["flags"] = " ".join(self.flags)
        d["compiler_version"] = _compiler_version(self.compiler)
        return d


def _cache_dir() -> Path:
    from edgeclip.cache_paths import cache_root

    return cache_root()


def _compiler() -> str | None:
    for name in (os.environ.get("CC"), "cc", "gcc", "clang"):
        path = shutil.which(name) if name else None
        if path:
            return path
    return None


def _compiler_version(cc: str) -> str:
    """The first line of ``cc --version`` ('' when it says nothing)."""
    try:
        out = subprocess.run([cc, "--version"], capture_output=True, text=True, timeout=10, check=False).stdout
    except (OSError, subprocess.SubprocessError):
        return ""
    return out.splitlines()[0].strip() if out.strip() else ""


def _flag_sets(forced: str) -> tuple[tuple[tuple[str, ...], ...], str]:
    """The flag sets to try in order for a forced level (`MARCH_ENV`'s syntax; '' for none), and its name."""
    forced = forced.strip()
    if not forced:
        return _DEFAULT_FLAG_SETS, "native"
    flags = tuple(forced.split()) if forced.startswith("-") else (f"-march={forced}",)
    return (flags,), forced


def _library_tag(cc: str, flags: tuple[str, ...]) -> str:
    """Hash of everything the compiled library depends on: source, compiler binary, flags, CPU."""
    st = os.stat(os.path.realpath(cc))
    h = hashlib.sha256(_SOURCE.read_bytes())
    for part in (os.path.realpath(cc), str(st.st_size), str(st.st_mtime_ns), " ".join(flags), platform.machine(),
                 isa_signature()):
        h.update(b"\0" + part.encode())
    return h.hexdigest()[:16]


def _compile(cc: str, flags: tuple[str, ...], target: Path) -> str | None:
    """Compile the kernel to `target` (atomically); returns None, or the compiler's complaint."""
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        tmp_so = Path(tmp) / "lib.so"
        cmd = [cc, *flags, "-fPIC", "-shared", "-pthread", str(_SOURCE), "-o", str(tmp_so), "-lm"]
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            return f"{' '.join(cmd)}: {proc.stderr.strip()[-500:]}"
        os.replace(tmp_so, target)
    return None


def _load(path: Path, cc: str, flags: tuple[str, ...], march: str) -> NativeKernel:
    lib = ctypes.CDLL(str(path))
    lib.edgeclip_views_cpu_ok.restype = ctypes.c_int
    lib.edgeclip_views_isa.restype = ctypes.c_char_p
    lib.edgeclip_views_vector_floats.restype = ctypes.c_int
    isa = lib.edgeclip_views_isa().decode()
    if not lib.edgeclip_views_cpu_ok():
        raise RuntimeError(f"the view kernel built with {' '.join(flags)} ({isa}) needs instructions this CPU "
                           f"lacks; unset {MARCH_ENV} or set it to a level this CPU has")
    fn = lib.edgeclip_resample_views
    p, i64 = ctypes.c_void_p, ctypes.c_int64
    fn.argtypes = [p, i64, i64, i64, i64, p, p, p, p, p, i64]
    fn.restype = ctypes.c_int
    return NativeKernel(lib, str(path), cc, flags, march, isa, int(lib.edgeclip_views_vector_floats()))


def compile_native_kernel(march: str | None = None) -> NativeKernel:
    """Build (or take from the cache) and load the kernel for `march`, in `MARCH_ENV`'s syntax (None: that
    variable, else the default flags). Independent of the kernel `resample_views` uses; raises RuntimeError
    (or OSError) when it cannot be built or loaded."""
    cc = _compiler()
    if cc is None:
        raise RuntimeError("no C compiler found (set CC, or install cc/gcc/clang)")
    flag_sets, march = _flag_sets(os.environ.get(MARCH_ENV, "") if march is None else march)
    errors = []
    for extra in flag_sets:
        flags = (*_BASE_FLAGS, *extra)
        target = _cache_dir() / "kernels" / f"resample_views-{_library_tag(cc, flags)}.so"
        if not target.exists():
            err = _compile(cc, flags, target)
            if err is not None:
                errors.append(err)
                continue
            logger.info("built the native view kernel with %s %s -> %s", cc, " ".join(flags), target)
        return _load(target, cc, flags, march)
    raise RuntimeError("compiling the native view kernel failed: " + " | ".join(errors))


def native_kernel() -> NativeKernel | None:
    """The compiled kernel, built once per process (and cached on disk), or None when it cannot be."""
    global _kernel, _lib_error
    with _lock:
        if _kernel is None and _lib_error is None:
            if os.environ.get("EDGECLIP_NATIVE_KERNELS", "1") == "0":
                _lib_error = "disabled by EDGECLIP_NATIVE_KERNELS=0"
            else:
                try:
                    _kernel = compile_native_kernel()
                except (OSError, RuntimeError) as exc:
                    _lib_error = str(exc)
            if _lib_error is not None:
                warnings.warn(
                    f"native CPU view kernel unavailable ({_lib_error}); using the slower PyTorch path",
                    RuntimeWarning,
                    stacklevel=3,
                )
        return _kernel


def native_available() -> bool:
    """Whether the compiled CPU view kernel can be used on this machine."""
    return native_kernel() is not None


def native_kernel_info() -> dict[str, Any]:
    """How the native kernel was built (`NativeKernel.info`), or ``{"error": why not}``."""
    kernel = native_kernel()
    return kernel.info() if kernel is not None else {"error": _lib_error}


def _scale_bias(mean: tuple[float, ...], std: tuple[float, ...]) -> tuple[torch.Tensor, torch.Tensor]:
    scale = torch.tensor([1.0 / (255.0 * s) for s in std], dtype=torch.float32)
    bias = torch.tensor([-m / s for m, s in zip(mean, std, strict=True)], dtype=torch.float32)
    return scale, bias


def _windows(boxes: torch.Tensor, filters: torch.Tensor, size: int):
    y0, ny, wy = resample_windows(boxes[:, 0], boxes[:, 2], size, filters)
    x0, nx, wx = resample_windows(boxes[:, 1], boxes[:, 3], size, filters)
    return y0, ny, wy.to(torch.float32).contiguous(), x0, nx, wx.to(torch.float32).contiguous()


def _run_native(kernel: NativeKernel, frame: torch.Tensor, boxes: torch.Tensor, filters: torch.Tensor, size: int,
                mean: tuple[float, ...], std: tuple[float, ...]) -> torch.Tensor:
    scale, bias = _scale_bias(mean, std)
    n = boxes.shape[0]
    out = torch.empty(n, 3, size, size, dtype=torch.float32)
    keep = [frame, boxes, filters.contiguous(), scale, bias, out]
    ptr = [t.data_ptr() for t in keep]
    status = kernel.lib.edgeclip_resample_views(ptr[0], frame.shape[0], frame.shape[1], n, size, ptr[1], ptr[2],
                                                ptr[3], ptr[4], ptr[5], max(1, torch.get_num_threads()))
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
    kernel = native_kernel() if impl in ("auto", "native") else None
    if impl == "native" and kernel is None:
        raise InputError(f"the native CPU view kernel is unavailable: {_lib_error}")
    if kernel is not None:
        out = _run_native(kernel, frame, boxes, filters, size, mean, std)
    else:
        out = _run_torch(frame, boxes, filters, size, mean, std)
    return out if dtype == torch.float32 else out.to(dtype)
