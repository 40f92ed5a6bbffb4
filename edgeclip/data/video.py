"""A video of the procedural shapes dataset whose domain shift changes part-way, for streaming demos and tests.

Frame ``i`` is item ``i`` of ``ShapesDataset(n_frames, seed=seed, shift=s)`` where ``s`` is the shift of the
segment holding ``i``: the scenes (and so the labels) are the same under every shift, only their rendering
changes. Frames are rendered in blocks, so memory stays constant however long the video is. The video is MPEG-4
(``mp4v``), whose compression changes pixel values slightly.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgeclip.data.shapes import SHIFTS, ShapesDataset, class_names
from edgeclip.errors import InputError

__all__ = ["ShiftVideo", "write_shift_video"]


@dataclass(frozen=True)
class ShiftVideo:
    """What :func:`write_shift_video` wrote."""

    #: The video file.
    path: Path
    #: Label of every frame, int64 ``(n_frames,)``, indices into :attr:`class_names`.
    labels: np.ndarray
    #: Shift name of every frame.
    shifts: tuple[str, ...]
    #: The class names in label order.
    class_names: tuple[str, ...]
    #: Frame rate written into the file.
    fps: float
    #: Side of the square frames in pixels.
    size: int


def write_shift_video(
    path: str | os.PathLike,
    n_frames: int,
    *,
    shifts: Sequence[str] = ("clean", "gaussian_noise"),
    size: int = 64,
    fps: float = 10.0,
    seed: int | None = None,
) -> ShiftVideo:
    """Write ``n_frames`` shapes scenes to an MP4, the shift switching between equal segments.

    With two shifts the first half (``n_frames // 2`` frames) is ``shifts[0]`` and the rest ``shifts[1]``; with
    ``m`` shifts segment ``k`` covers frames ``k * n // m`` to ``(k + 1) * n // m``. ``seed`` defaults to the
    held-out evaluation seed (:data:`edgeclip.data.streams.EVAL_SEED`), the stream no method is tuned on. The file
    is written atomically (:class:`edgeclip.video_out.VideoWriter`, which needs OpenCV).

    Raises:
        InputError: bad ``n_frames``, ``size``, ``fps``, ``seed`` or an unknown shift.
        VideoWriteError: OpenCV is missing or cannot write ``path``.
    """
    from edgeclip.video_out import VideoWriter

    if isinstance(n_frames, bool) or not isinstance(n_frames, (int, np.integer)) or n_frames < 1:
        raise InputError(f"n_frames must be a positive int, got {n_frames!r}")
    if isinstance(shifts, str) or not shifts:
        raise InputError(f"shifts must be a non-empty sequence of shift names, got {shifts!r}")
    unknown = [s for s in shifts if s not in SHIFTS]
    if unknown:
        raise InputError(f"unknown shift {unknown[0]!r}; valid shifts: {', '.join(SHIFTS)}")
    names = tuple(shifts)
    if seed is None:
        from edgeclip.data.streams import EVAL_SEED

        seed = EVAL_SEED
    n, m = int(n_frames), len(names)
    bounds = [k * n // m for k in range(m + 1)]
    labels = np.empty(n, dtype=np.int64)
    per_frame: list[str] = []
    with VideoWriter(path, fps, keep_on_error=False) as writer:
        for k, shift in enumerate(names):
            start, stop = bounds[k], bounds[k + 1]
            if start == stop:
                continue
            data = ShapesDataset(n, seed=seed, shift=shift, render_size=size)
            block_size = data.block_size
            for b in range(start // block_size, (stop - 1) // block_size + 1):
                block = data.block(b)
                lo, hi = max(start, b * block_size), min(stop, (b + 1) * block_size)
                for i in range(lo, hi):
                    writer.write(block.images[i - b * block_size])
                labels[lo:hi] = block.labels[lo - b * block_size:hi - b * block_size]
            per_frame.extend([shift] * (stop - start))
    return ShiftVideo(path=Path(path), labels=labels, shifts=tuple(per_frame), class_names=tuple(class_names()),
                      fps=float(fps), size=int(size))
