"""Figures for the benchmark reports: a clear error without matplotlib, and atomic PNG writes."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from edgeclip.errors import EdgeClipError

__all__ = ["check_matplotlib", "per_class_bars", "save_figure"]


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


def per_class_bars(ax: Any, classes: Sequence[str], before: Sequence[float], after: Sequence[float],
                   labels: tuple[str, str] = ("zero-shot", "tuned"), ylabel: str = "accuracy (%)") -> None:
    """Per-class accuracy before and after on `ax` as paired bars, classes sorted by `before` (the poorest
    first), so a "Robin Hood" effect — the poor classes rising most — reads left to right."""
    import numpy as np

    order = np.argsort(np.asarray(before, dtype=float))
    idx = np.arange(len(order))
    ax.bar(idx - 0.2, [before[i] for i in order], 0.4, label=labels[0], color="tab:grey")
    ax.bar(idx + 0.2, [after[i] for i in order], 0.4, label=labels[1], color="tab:orange")
    ax.set_xticks(idx, [classes[i] for i in order], rotation=60, ha="right", fontsize=8)
    ax.set_ylabel(ylabel)
    ax.set_title("per class, sorted by the accuracy before")
    ax.legend()
