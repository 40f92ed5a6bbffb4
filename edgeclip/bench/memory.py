"""Memory figures for the benchmarks: ``/proc/self/status`` fields, heap trimming, and `PeakMemory`.

Peak memory (`PeakMemory`): on the CPU, the peak resident set size above the resident size at the start of
the measured block: glibc's free lists are trimmed (``malloc_trim(0)``), the kernel's high-water mark is
reset (``5`` written to ``/proc/self/clear_refs``), and the block's peak is ``VmHWM`` (after) − ``VmRSS``
(before), both from ``/proc/self/status``. Where the mark cannot be reset the growth of ``VmHWM`` is used
(0 when the block stays under an earlier peak), and without ``/proc`` the growth of ``getrusage``'s
``ru_maxrss``; `PeakMemory.method` says which. On CUDA: ``torch.cuda.max_memory_allocated`` after
``reset_peak_memory_stats``, minus the memory allocated at the start (PyTorch's allocator only).
"""

from __future__ import annotations

import ctypes
import functools
import gc
import resource
from collections.abc import Callable

import torch

__all__ = ["MEMORY_METHODS", "PeakMemory", "malloc_trim", "status_kb"]


def status_kb(key: str) -> int | None:
    """A ``kB`` field of ``/proc/self/status`` (``VmRSS``, ``VmHWM``), None where there is none."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


def _reset_hwm() -> bool:
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as f:
            f.write("5")
        return True
    except OSError:
        return False


@functools.lru_cache(maxsize=1)
def _libc_trim() -> Callable[[int], int] | None:
    try:
        return ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):
        return None


def malloc_trim() -> None:
    """Give glibc's free heap pages back to the OS, so freed memory that is still resident does not hide the
    next block's growth (a no-op where there is no glibc)."""
    trim = _libc_trim()
    if trim is not None:
        trim(0)


def _cpu_memory_method() -> str:
    if status_kb("VmHWM") is not None and status_kb("VmRSS") is not None:
        return "vmhwm-reset" if _reset_hwm() else "vmhwm-growth"
    return "ru_maxrss-growth"


MEMORY_METHODS = {
    "vmhwm-reset": "peak RSS growth: VmHWM after − VmRSS before (/proc/self/status), the high-water mark reset "
                   "by writing 5 to /proc/self/clear_refs after malloc_trim(0) at the start of the block",
    "vmhwm-growth": "VmHWM growth over the block (/proc/self/status; clear_refs not writable, so 0 when the block "
                    "stays under an earlier peak)",
    "ru_maxrss-growth": "growth of getrusage(RUSAGE_SELF).ru_maxrss over the block (0 when the block stays under an "
                        "earlier peak)",
    "cuda-max-allocated": "torch.cuda.max_memory_allocated after reset_peak_memory_stats, minus the memory allocated "
                          "at the start of the block (PyTorch's caching allocator only)",
}


class PeakMemory:
    """Peak memory growth of a block, in MiB: ``start()``, the work, ``stop()`` (see the module docstring).

    ``method`` is one of `MEMORY_METHODS`. ``start()`` runs the garbage collector and trims the heap, so call
    it outside any timed region.
    """

    def __init__(self, device: str | torch.device = "cpu") -> None:
        self.device = torch.device(device)
        self.cuda = self.device.type == "cuda"
        self.method = "cuda-max-allocated" if self.cuda else _cpu_memory_method()
        self._base = 0

    def start(self) -> None:
        gc.collect()
        if self.cuda:
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self._base = torch.cuda.memory_allocated(self.device)
            return
        malloc_trim()
        if self.method == "vmhwm-reset":
            _reset_hwm()
            self._base = status_kb("VmRSS") or 0
        elif self.method == "vmhwm-growth":
            self._base = status_kb("VmHWM") or 0
        else:
            self._base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # kB on Linux

    def stop(self) -> float:
        """Peak growth since `start`, MiB (never negative)."""
        if self.cuda:
            torch.cuda.synchronize(self.device)
            return max(0, torch.cuda.max_memory_allocated(self.device) - self._base) / 2**20
        if self.method == "ru_maxrss-growth":
            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        else:
            peak = status_kb("VmHWM") or 0
        return max(0, peak - self._base) / 1024.0
