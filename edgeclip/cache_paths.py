"""Where edgeclip's caches live: one root for all of them."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["cache_root"]


def cache_root() -> Path:
    """``$EDGECLIP_CACHE``, or ``~/.cache/edgeclip``: the root of edgeclip's caches (backend calibrations, feature
    pools, compiled CPU kernels, TensorRT engines of read-only bundles)."""
    root = os.environ.get("EDGECLIP_CACHE")
    return Path(root).expanduser() if root else Path.home() / ".cache" / "edgeclip"
