"""Figures for the benchmark reports: a clear error without matplotlib, and atomic PNG writes."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from edgeclip.errors import EdgeClipError

__all__ = ["check_matplotlib", "save_figure"]


def check_matplotlib() -> None:
    """Raise `EdgeClipError` with the install hint when matplotlib is missing."""
    try:
        import matplotlib  # noqa: F401
    except ImportError as exc:
        raise EdgeClipError("the benchmark plots need matplotlib: pip install 'edgeclip[bench]'") from exc


def save_figure(fig: Any, path: Path) -> None:
    """Write `fig` to `path` as a PNG (120 dpi) through a temporary file, so a failed write leaves no half file."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp.png")
    try:
        fig.savefig(tmp, dpi=120, bbox_inches="tight")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
