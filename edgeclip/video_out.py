"""Annotated video output: text drawn on frames, and an atomic MP4 writer.

* :func:`annotate` draws lines of text (a label, a confidence, the frame rate) on a copy of an RGB frame: white
  text on a dark box, sized to the frame, readable on any background. Needs only PIL.
* :class:`VideoWriter` writes RGB frames to a video through OpenCV (``pip install 'edgeclip[video]'``). The
  file appears under its name only when the writer is closed: frames go to a temporary file beside the target,
  renamed over it on close, so a crash never leaves a half-written file under the final name.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import math
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType, TracebackType
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from edgeclip.errors import InputError, VideoWriteError

__all__ = ["VideoWriteError", "VideoWriter", "annotate", "letterbox"]

logger = logging.getLogger(__name__)

_MIN_FONT = 8  # pixels; smaller text is not legible
_FONT_FRACTION = 22  # font size = shorter frame side / this
_BOX_SHADE = 0.35  # pixels under the text box keep this fraction of their brightness



def _check_frame(image: Any, what: str = "image") -> np.ndarray:
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        got = f"{type(image).__name__} {getattr(image, 'dtype', '')} {getattr(image, 'shape', '')}".strip()
        raise InputError(f"{what} must be an H×W×3 uint8 RGB array, got {got}")
    if image.shape[0] == 0 or image.shape[1] == 0:
        raise InputError(f"{what} has no pixels (shape {image.shape})")
    return image


@functools.lru_cache(maxsize=16)
def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)  # scalable (Pillow >= 10.1 with FreeType)
    except (TypeError, OSError, ImportError):
        return ImageFont.load_default()  # fixed-size bitmap font


def annotate(
    image: np.ndarray,
    lines: Sequence[str],
    *,
    min_side: int | None = None,
    font_size: int | None = None,
) -> np.ndarray:
    """Draw ``lines`` of text at the top left of a copy of ``image`` (H×W×3 uint8 RGB) and return the copy.

    Each line is white text on a darkened box, so it reads on light and dark backgrounds. The font size follows
    the frame (the shorter side / 22, at least 8 px) unless ``font_size`` is given. Text that does not fit is cut
    at the frame's edge; a frame smaller than one line still gets what fits.

    ``min_side``: when the frame's shorter side is below it, the frame is first enlarged by the smallest whole
    factor that reaches it (nearest neighbour, so pixels stay sharp), and the result is that larger image. A
    64×64 frame with ``min_side=256`` becomes 256×256 with 12 px text. Apply the same ``min_side`` to every
    frame of a video so all frames keep one size.
    """
    arr = _check_frame(image)
    if isinstance(lines, str):
        lines = [lines]
    if min_side is not None and (isinstance(min_side, bool) or not isinstance(min_side, int) or min_side < 1):
        raise InputError(f"min_side must be a positive int or None, got {min_side!r}")
    if font_size is not None and (isinstance(font_size, bool) or not isinstance(font_size, int) or font_size < 1):
        raise InputError(f"font_size must be a positive int or None, got {font_size!r}")
    short = min(arr.shape[0], arr.shape[1])
    if min_side is not None and short < min_side:
        k = math.ceil(min_side / short)
        arr = np.repeat(np.repeat(arr, k, axis=0), k, axis=1)
        short *= k
    else:
        arr = arr.copy()
    texts = [part for line in lines for part in str(line).splitlines()]
    if not texts:
        return arr
    size = font_size or max(_MIN_FONT, round(short / _FONT_FRACTION))
    font = _font(size)
    pad = max(1, size // 4)
    height, width = arr.shape[:2]
    boxes = []
    y = 0
    for text in texts:
        _, _, right, bottom = font.getbbox(text)
        line_h = max(size, bottom) + 2 * pad
        box = (0, y, min(width, right + 2 * pad), min(height, y + line_h))
        if box[1] < height:
            region = arr[box[1]:box[3], box[0]:box[2]]
            region[...] = (region * _BOX_SHADE).astype(np.uint8)
        boxes.append((text, y + pad))
        y += line_h
    canvas = Image.fromarray(arr)
    draw = ImageDraw.Draw(canvas)
    for text, top in boxes:
        if top >= height:
            break
        try:
            draw.text((pad, top), text, fill=(255, 255, 255), font=font)
        except UnicodeEncodeError:  # the bitmap fallback font knows Latin-1 only
            safe = text.encode("latin-1", "replace").decode("latin-1")
            draw.text((pad, top), safe, fill=(255, 255, 255), font=font)
    return np.array(canvas)


def _import_cv2() -> ModuleType:
    try:
        import cv2
    except ImportError as exc:
        raise VideoWriteError(
            f"writing video needs OpenCV, which could not be imported ({exc}); install it with: "
            "pip install 'edgeclip[video]'"
        ) from exc
    return cv2


def letterbox(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """``image`` (H×W×3 uint8) scaled to fit inside ``size`` (width, height) keeping its aspect, centred on
    black."""
    width, height = size
    h, w = image.shape[:2]
    scale = min(width / w, height / h)
    new_w, new_h = max(1, min(width, round(w * scale))), max(1, min(height, round(h * scale)))
    scaled = np.asarray(Image.fromarray(image).resize((new_w, new_h), Image.Resampling.BILINEAR))
    out = np.zeros((height, width, 3), dtype=np.uint8)
    top, left = (height - new_h) // 2, (width - new_w) // 2
    out[top : top + new_h, left : left + new_w] = scaled
    return out


class VideoWriter:
    """Write H×W×3 uint8 RGB frames to a video file (MP4 with the ``mp4v`` codec by default).

    The container follows the path's suffix (``.mp4``, ``.avi``, ``.mkv``); the frame size is fixed by the first
    frame, and every later frame must have it, unless ``fit``: then a frame of another size is scaled to fit
    inside it, keeping its aspect, centred on black bars (a folder of images of mixed sizes). An odd width or
    height is padded by one pixel (edge copy), as MPEG-4 needs even sizes. Frames go to a hidden temporary file in
    the target's folder, renamed over the target by :meth:`close`; a writer closed without frames writes nothing.
    Used as a context manager, an exception in the block still finishes and renames the file with the frames
    written so far (a recording cut short stays playable) unless ``keep_on_error=False``, which deletes it. Not
    thread-safe.

    Raises:
        VideoWriteError: OpenCV is missing, the folder does not exist, or OpenCV cannot open the output (an
            unknown suffix, a codec this build lacks).
        InputError: a bad frame, a frame of another size (without ``fit``), or a bad ``fps``.
    """

    def __init__(self, path: str | os.PathLike, fps: float = 30.0, *, fourcc: str = "mp4v",
                 keep_on_error: bool = True, fit: bool = False) -> None:
        if isinstance(fps, bool) or not isinstance(fps, (int, float)) or not math.isfinite(fps) or fps <= 0:
            raise InputError(f"fps must be a positive number, got {fps!r}")
        if not isinstance(fourcc, str) or len(fourcc) != 4:
            raise InputError(f"fourcc must be four characters such as 'mp4v', got {fourcc!r}")
        self.path = Path(path)
        self.fps = float(fps)
        self.fourcc = fourcc
        self.keep_on_error = keep_on_error
        self.fit = fit
        if not self.path.parent.is_dir():
            raise VideoWriteError(f"{self.path}: cannot write a video there: folder {self.path.parent} does not exist")
        if self.path.is_dir():
            raise VideoWriteError(f"{self.path}: is a directory; pass a file path such as {self.path / 'out.mp4'}")
        self._cv2 = _import_cv2()
        self._writer: Any = None
        self._tmp: Path | None = None
        self._size: tuple[int, int] | None = None  # (width, height) of the input frames
        self._pad = (0, 0)
        self._frames = 0
        self._closed = False

    @property
    def size(self) -> tuple[int, int] | None:
        """(width, height) of the frames in the file (even; None before the first frame)."""
        if self._size is None:
            return None
        return self._size[0] + self._pad[1], self._size[1] + self._pad[0]

    @property
    def frames_written(self) -> int:
        """Frames written so far."""
        return self._frames

    def _open(self, width: int, height: int) -> None:
        cv2 = self._cv2
        self._pad = (height % 2, width % 2)
        size = (width + self._pad[1], height + self._pad[0])
        suffix = self.path.suffix or ".mp4"
        fd, name = tempfile.mkstemp(prefix=f".{self.path.name}.", suffix=f".partial{suffix}", dir=self.path.parent)
        os.close(fd)
        self._tmp = Path(name)
        try:
            writer = cv2.VideoWriter(str(self._tmp), cv2.VideoWriter_fourcc(*self.fourcc), self.fps, size)
            opened = writer.isOpened()
        except Exception as exc:  # cv2.error
            self._discard()
            raise VideoWriteError(f"{self.path}: OpenCV could not open a video writer ({exc})") from exc
        if not opened:
            self._discard()
            raise VideoWriteError(
                f"{self.path}: OpenCV could not open a video writer (fourcc {self.fourcc!r}, {size[0]}x{size[1]} at "
                f"{self.fps:g} fps): the suffix {suffix!r} or the codec is not supported by this OpenCV build; "
                "try .mp4 with fourcc 'mp4v'"
            )
        self._writer = writer
        self._size = (width, height)

    def write(self, image: np.ndarray) -> None:
        """Append one H×W×3 uint8 RGB frame."""
        if self._closed:
            raise VideoWriteError(f"{self.path}: writer is closed")
        arr = _check_frame(image, "frame")
        height, width = arr.shape[:2]
        if self._writer is None:
            self._open(width, height)
        elif (width, height) != self._size and self.fit:
            arr = letterbox(arr, self._size)
        elif (width, height) != self._size:
            raise InputError(f"{self.path}: frame {self._frames} is {width}x{height}, but the video is "
                             f"{self._size[0]}x{self._size[1]} (fixed by the first frame); resize frames first")
        if any(self._pad):
            arr = np.pad(arr, ((0, self._pad[0]), (0, self._pad[1]), (0, 0)), mode="edge")
        self._writer.write(self._cv2.cvtColor(np.ascontiguousarray(arr), self._cv2.COLOR_RGB2BGR))
        self._frames += 1

    def _release(self) -> None:
        writer, self._writer = self._writer, None
        if writer is not None:
            writer.release()

    def _discard(self) -> None:
        self._release()
        if self._tmp is not None:
            with contextlib.suppress(FileNotFoundError):
                self._tmp.unlink()
            self._tmp = None

    def close(self) -> None:
        """Finish the file and rename it to :attr:`path`. Safe to call more than once."""
        if self._closed:
            return
        self._closed = True
        if self._frames == 0:
            self._discard()
            logger.warning("%s: no frames were written; no file created", self.path)
            return
        try:
            self._release()
            tmp = self._tmp
            assert tmp is not None
            if tmp.stat().st_size == 0:
                raise VideoWriteError(f"{self.path}: OpenCV wrote an empty file")
            with open(tmp, "rb+") as fh:
                os.fsync(fh.fileno())
            os.replace(tmp, self.path)
            self._tmp = None
        except OSError as exc:
            self._discard()
            raise VideoWriteError(f"{self.path}: finishing the video failed ({exc})") from exc
        except BaseException:
            self._discard()
            raise
        logger.info("%s: wrote %d frames (%dx%d at %g fps)", self.path, self._frames, *self.size, self.fps)

    def abort(self) -> None:
        """Stop and delete what was written; :attr:`path` is left untouched."""
        self._closed = True
        self._discard()

    def __enter__(self) -> VideoWriter:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if exc_type is not None and not self.keep_on_error:
            self.abort()
            return
        if exc_type is not None and self._frames:
            logger.warning("%s: stopped by %s; keeping the %d frames written", self.path, exc_type.__name__,
                           self._frames)
        self.close()

    def __del__(self) -> None:  # a writer dropped without close() leaves no temporary file behind
        if getattr(self, "_tmp", None) is not None and not getattr(self, "_closed", True):
            with contextlib.suppress(Exception):
                logger.warning("%s: writer was never closed; its frames are discarded", self.path)
                self._discard()
