"""Which implementation a kernel call takes: its Triton kernel (CUDA) or the PyTorch path.

Every kernel takes ``impl`` in ``"auto" | "torch" | "triton"``:

- ``"auto"``: the Triton kernel for CUDA tensors (of a dtype it supports), PyTorch otherwise. On a CUDA
  machine without a working Triton the PyTorch path runs instead, announced by one `RuntimeWarning` per kernel
  and process (`fallback_warning`); nothing fails at import or at call.
- ``"torch"``: always the PyTorch path.
- ``"triton"``: the Triton kernel, or an error: `edgeclip.errors.BackendError` when Triton cannot be imported,
  `edgeclip.errors.InputError` for a CPU tensor outside Triton's interpreter (``TRITON_INTERPRET=1``) or an
  unsupported dtype.

Triton is imported only when a call would use it, so CPU-only processes never load it.
"""

from __future__ import annotations

import functools
import logging
import os
import warnings

import torch

from edgeclip.errors import BackendError, InputError

__all__ = ["IMPLS", "fallback_warning", "on_cuda", "triton_available", "triton_error", "use_triton"]

log = logging.getLogger(__name__)

IMPLS = ("auto", "torch", "triton")

_warned: set[str] = set()


@functools.cache
def triton_error() -> str | None:
    """Why Triton cannot be used in this process (its import error), or None when it imports."""
    try:
        import triton.language  # noqa: F401  (imports triton itself first)
    except Exception as exc:  # a missing package, or one broken by its CUDA/driver setup
        return f"{type(exc).__name__}: {exc}"
    return None


def triton_available() -> bool:
    """Whether Triton imports here (tried once per process, and only when first asked)."""
    return triton_error() is None


def on_cuda(tensor: torch.Tensor) -> bool:
    """Whether `tensor` lives on a CUDA device: the one test every dispatch decision starts from."""
    return tensor.is_cuda


def fallback_warning(op: str, message: str) -> None:
    """Warn once per process and kernel that `op` runs its fallback instead of the Triton kernel."""
    if op in _warned:
        return
    _warned.add(op)
    log.debug("%s: %s", op, message)
    warnings.warn(f"{op}: {message}", RuntimeWarning, stacklevel=3)


def use_triton(impl: str, tensor: torch.Tensor, op: str, supported: tuple[torch.dtype, ...] | None = None) -> bool:
    """Whether `op` runs its Triton kernel on `tensor`, for ``impl`` in ``"auto" | "torch" | "triton"``
    (see the module docstring). `supported`: the dtypes the Triton kernel takes (None: any)."""
    if impl not in IMPLS:
        raise InputError(f"{op}: impl must be one of {', '.join(map(repr, IMPLS))}, got {impl!r}")
    if impl == "torch":
        return False
    dtype_ok = supported is None or tensor.dtype in supported
    cuda = on_cuda(tensor)
    if impl == "auto":
        if not cuda or not dtype_ok:
            return False
        if not triton_available():
            fallback_warning(op, f"Triton is unavailable ({triton_error()}); using the PyTorch implementation on "
                             "CUDA tensors")
            return False
        return True
    if not cuda and os.environ.get("TRITON_INTERPRET") != "1":
        raise InputError(
            f"{op}: impl='triton' needs a CUDA tensor (got one on {tensor.device}); on the CPU it runs only under "
            "Triton's interpreter, with TRITON_INTERPRET=1 set in the environment before the first call. "
            "Use impl='auto' or impl='torch' for the CPU path."
        )
    if not dtype_ok:
        names = ", ".join(str(d).removeprefix("torch.") for d in supported or ())
        raise InputError(f"{op}: the Triton kernel supports {names}, not {tensor.dtype}; use impl='torch'")
    if not triton_available():
        raise BackendError(f"{op}: impl='triton' needs a working Triton ({triton_error()}); install it with "
                           "`pip install triton`, or use impl='auto' or impl='torch'")
    return True
