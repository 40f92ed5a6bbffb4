"""The one way edgeclip writes and reads its own safetensors files (prototypes, heads, feature pools).

`atomic_save` writes to a temporary file in the target folder, flushes it to disk and renames it into place,
so a reader never sees a half-written file and a failed write leaves the old file as it was. `read` returns
the header and the tensors, with a `BundleError` that names the file for anything safetensors cannot read.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from edgeclip.errors import BundleError

__all__ = ["atomic_save", "read", "read_format"]


def atomic_save(tensors: dict[str, torch.Tensor], path: str | os.PathLike, header: dict[str, str]) -> Path:
    """Write `tensors` with the string `header` to `path` atomically; returns the path."""
    path = Path(path).expanduser()
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        save_file({k: v.contiguous() for k, v in tensors.items()}, tmp, header)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def read(path: str | os.PathLike, what: str = "file") -> tuple[dict[str, str], dict[str, torch.Tensor]]:
    """``(header, tensors)`` of a safetensors file; `BundleError` when it is missing or unreadable."""
    path = Path(path).expanduser()
    if not path.exists():
        raise BundleError(f"{what} {path} does not exist")
    if not path.is_file():
        raise BundleError(f"{what} {path} is not a file")
    try:
        with safe_open(str(path), framework="pt") as f:
            header = dict(f.metadata() or {})
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 - safe_open has no __iter__
    except Exception as exc:  # safetensors raises its own error types
        raise BundleError(f"{path} is not a readable safetensors file ({exc})") from exc
    return header, tensors


def read_format(path: str | os.PathLike, fmt: str, version: int, what: str,
                fix: str = "") -> tuple[dict[str, str], dict[str, torch.Tensor], int]:
    """`read`, then check that the header names format `fmt` at a version this edgeclip reads (<= `version`).
    Returns ``(header, tensors, file_version)``; `what` names the kind of file, `fix` how to make a new one."""
    hint = f"; {fix}" if fix else ""
    header, tensors = read(path, what)
    if header.get("format") != fmt:
        raise BundleError(f"{path} is not an edgeclip {what} (format {header.get('format')!r}){hint}")
    try:
        found = int(header.get("format_version", ""))
    except ValueError:
        raise BundleError(f"{path} has no integer format_version{hint}") from None
    if found > version:
        raise BundleError(f"{path} is {what} format {found}, newer than this edgeclip reads ({version}): "
                          "upgrade edgeclip")
    return header, tensors, found
