"""Frame sources: video files, cameras, RTSP/HTTP streams, image folders and globs as one iterator of frames.

:func:`open_source` takes a spec and returns a :class:`Source`, an iterator of :class:`Frame` (an H×W×3 uint8
RGB array, a timestamp in seconds and an index) that is also a context manager::

    with open_source("clip.mp4") as src:          # or 0, "/dev/video0", "rtsp://…", "frames/", "frames/*.png"
        for frame in src:
            session.submit(frame.image)

Video files, cameras and streams are read through OpenCV (``pip install 'edgeclip[video]'``); folders and globs
are decoded with :func:`edgeclip.runtime.images.load_image` and need no OpenCV.

A source reads one frame per ``next()`` and keeps no buffer of its own: a live source (camera, RTSP) is meant to
be drained at its own rate by a consumer that drops what it cannot process (a latest-frame-wins queue such as
``Session.submit``), so a slow consumer sees fresh frames, not a growing backlog. A source is not thread-safe:
read it from one thread.

Failures raise :class:`~edgeclip.errors.SourceError`: a spec that cannot be opened (naming it and the likely
reason), a video file that ends before the frame count its container announces (after the frames that could be
read), a live source whose reads keep failing for ``retry_seconds`` (an unplugged camera, a dropped stream), an
unreadable image in a folder (or a logged warning with ``skip_unreadable=True``).
"""

from __future__ import annotations

import glob as globlib
import logging
import math
import os
import re
import stat
import sys
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType, TracebackType
from typing import Any

import numpy as np

from edgeclip.errors import ImageError, InputError, SourceError
from edgeclip.runtime.decode import IMAGE_EXTENSIONS, MAX_PIXELS, load_image

__all__ = ["LIVE_SCHEMES", "Frame", "Source", "SourceSpec", "open_source"]

logger = logging.getLogger(__name__)

SourceSpec = int | str | os.PathLike | Sequence[str | os.PathLike]
"""What :func:`open_source` accepts: a camera index, a path, a URL, a glob, or a list of image paths."""

LIVE_SCHEMES: frozenset[str] = frozenset({"rtsp", "rtsps", "rtmp", "rtmps", "udp", "tcp", "rtp", "srt"})
"""URL schemes treated as live streams. Other URLs (``http://…``) are live only when the container announces no
frame count (an MJPEG camera rather than a file on a server); ``live=`` overrides both."""

_RETRY_PAUSE = 0.05  # seconds between two reads of a live source that failed
_MAX_RECONNECT_WAIT = 30.0  # seconds: the longest wait before one reconnection attempt
_MAX_FPS = 1000.0  # a larger reported rate is treated as unknown
_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
_GLOB_CHARS = frozenset("*?[")


@dataclass(frozen=True)
class Frame:
    """One frame of a source."""

    #: H×W×3 uint8 RGB pixels, C-contiguous and owned by the frame.
    image: np.ndarray
    #: Seconds: the position in a video file; ``time.time()`` at grab for a live source; ``index / fps`` for a
    #: folder or glob (``index`` when no ``fps`` was given).
    timestamp: float
    #: 0-based position: frames read so far for a capture, the file's position in the list for a folder or glob
    #: (a skipped file leaves a gap).
    index: int
    #: The spec the frame came from; the image file for a folder or glob.
    source: str


class Source(ABC):
    """An open frame source: iterate it for :class:`Frame` objects; close it (or use ``with``) when done.

    Iteration is single-pass: a second loop continues where the first stopped. After the last frame, an error
    or :meth:`close`, ``next()`` raises ``StopIteration``.
    """

    #: "file", "camera", "device", "stream", "folder", "glob" or "files".
    kind: str
    #: The spec as text.
    spec: str

    def __init__(self, spec: str, kind: str) -> None:
        self.spec = spec
        self.kind = kind
        self._frames_read = 0

    @property
    def fps(self) -> float | None:
        """Frame rate reported by the container or the device (or given for a folder); None when unknown."""
        return None

    @property
    def frame_count(self) -> int | None:
        """Number of frames the container announces (or files a folder holds); None for live sources."""
        return None

    @property
    def is_live(self) -> bool:
        """True for cameras and live streams: frames come at the source's rate and are stamped with time.time()."""
        return False

    @property
    def frames_read(self) -> int:
        """Frames returned so far."""
        return self._frames_read

    @property
    def reconnects(self) -> int:
        """How many times a live source was opened again after it stopped delivering (0 for other sources)."""
        return 0

    @property
    @abstractmethod
    def closed(self) -> bool:
        """True once the source was closed or read to its end."""

    @property
    def capture(self) -> Any:
        """The underlying ``cv2.VideoCapture`` (to set device properties), or None for folders and globs."""
        return None

    @abstractmethod
    def close(self) -> None:
        """Release the file, device or connection. Safe to call more than once."""

    def __iter__(self) -> Iterator[Frame]:
        return self

    @abstractmethod
    def __next__(self) -> Frame:
        """The next frame; StopIteration after the last one, SourceError when reading fails."""

    def __enter__(self) -> Source:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(kind={self.kind!r}, spec={self.spec!r}, fps={self.fps}, "
                f"frame_count={self.frame_count}, is_live={self.is_live})")


# -- OpenCV captures --------------------------------------------------------------------------------------
def _import_cv2(spec: str) -> ModuleType:
    try:
        import cv2
    except ImportError as exc:
        raise SourceError(
            f"{spec}: reading video files, cameras and streams needs OpenCV, which could not be imported "
            f"({exc}); install it with: pip install 'edgeclip[video]' (folders and globs of images work without it)"
        ) from exc
    return cv2


def _positive(value: Any, limit: float = math.inf) -> float | None:
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) and 0 < value < limit else None


class _CaptureSource(Source):
    """A video file, camera or stream read through ``cv2.VideoCapture``."""

    def __init__(self, spec: str, kind: str, cap: Any, cv2: ModuleType, *, live: bool | None, fps: float | None,
                 retry_seconds: float, count_tolerance: int | None,
                 reopen: Callable[[], Any | None] | None = None, reconnect: int = 0,
                 reconnect_wait: float = 1.0) -> None:
        super().__init__(spec, kind)
        self._cap = cap
        self._reopen = reopen
        self._reconnect = reconnect
        self._reconnect_wait = reconnect_wait
        self._reconnects = 0
        self._cv2 = cv2
        self._retry_seconds = retry_seconds
        self._count_tolerance = count_tolerance
        self._last_time = -math.inf
        reported = _positive(cap.get(cv2.CAP_PROP_FPS), _MAX_FPS)
        self._fps = reported if reported is not None else fps
        count = None
        if kind in ("file", "stream"):
            n = _positive(cap.get(cv2.CAP_PROP_FRAME_COUNT))
            count = round(n) if n is not None else None
        if live is None:
            if kind in ("camera", "device"):
                live = True
            elif kind == "stream":
                live = spec.split("://", 1)[0].lower() in LIVE_SCHEMES or count is None
            else:
                live = False
        self._live = bool(live)
        self._frame_count = None if self._live else count

    @property
    def fps(self) -> float | None:
        return self._fps

    @property
    def frame_count(self) -> int | None:
        return self._frame_count

    @property
    def is_live(self) -> bool:
        return self._live

    @property
    def closed(self) -> bool:
        return self._cap is None

    @property
    def capture(self) -> Any:
        return self._cap

    @property
    def reconnects(self) -> int:
        """How many times a live source was opened again after it stopped delivering."""
        return self._reconnects

    def close(self) -> None:
        self._reopen = None  # a closed source stays closed
        self._release_capture()

    def _read(self) -> np.ndarray | None:
        try:
            ok, image = self._cap.read()
        except Exception as exc:  # cv2.error from a backend
            self.close()
            raise SourceError(f"{self.spec}: reading frame {self._frames_read} failed ({exc})") from exc
        if not ok or image is None or getattr(image, "size", 0) == 0:
            return None
        return image

    def _retry(self) -> np.ndarray:
        """Keep reading a live source for up to ``retry_seconds``; then open it again, up to ``reconnect`` times
        in a row (waiting ``reconnect_wait``, doubled after each failed attempt, at most `_MAX_RECONNECT_WAIT`);
        raise SourceError when it stays silent."""
        failed = 1
        attempts = 0
        while True:
            deadline = time.monotonic() + self._retry_seconds
            while self._cap is not None and (remaining := deadline - time.monotonic()) > 0:
                time.sleep(min(_RETRY_PAUSE, remaining))
                image = self._read()
                if image is not None:
                    logger.warning("%s: %d read(s) failed, then the source delivered again", self.spec, failed)
                    return image
                failed += 1
            if self._reopen is None or attempts >= self._reconnect:
                break
            wait = min(self._reconnect_wait * 2 ** attempts, _MAX_RECONNECT_WAIT)
            attempts += 1
            logger.warning("%s: no frame for %g s; reconnecting in %g s (attempt %d of %d)", self.spec,
                           self._retry_seconds, wait, attempts, self._reconnect)
            self._release_capture()
            time.sleep(wait)
            self._cap = self._reopen()
            if self._cap is None:
                continue
            image = self._read()
            if image is not None:
                self._reconnects += 1
                logger.warning("%s: reconnected (attempt %d); frames go on from index %d", self.spec, attempts,
                               self._frames_read)
                return image
        self.close()
        what = f"after {self._frames_read} frame(s)" if self._frames_read else "before delivering any frame"
        again = f", and {attempts} reconnection(s) failed" if attempts else ""
        raise SourceError(
            f"{self.spec}: live source stopped {what}: {failed} read(s) failed over {self._retry_seconds:g} s{again} "
            "(camera unplugged or busy, stream dropped or unreachable)"
        )

    def _release_capture(self) -> None:
        cap, self._cap = self._cap, None
        if cap is not None:
            try:
                cap.release()
            except Exception as exc:  # a dead stream may fail to release; the reconnection goes on
                logger.debug("%s: release failed (%s)", self.spec, exc)

    def _end(self) -> None:
        """The file ended: stop, or raise SourceError when it ended short of its announced length."""
        read, total, tolerance = self._frames_read, self._frame_count, self._count_tolerance
        self.close()
        if read == 0:
            raise SourceError(f"{self.spec}: opened, but no frame could be decoded (unsupported codec, or a damaged "
                              "or empty file)")
        if total is not None and read < total:
            if tolerance is not None and total - read > tolerance:
                raise SourceError(
                    f"{self.spec}: video ended after {read} of the {total} frames its container announces: the file "
                    "is truncated or damaged (if it is intact and its header count is wrong, pass "
                    "count_tolerance=None to accept it)"
                )
            logger.warning("%s: video ended after %d of the %d frames its container announces", self.spec, read,
                           total)
        raise StopIteration

    def _timestamp(self) -> float:
        if self._live:
            return time.time()
        index = self._frames_read
        pos = _positive(self._cap.get(self._cv2.CAP_PROP_POS_MSEC))
        if pos is not None and pos / 1000.0 > self._last_time:
            t = round(pos / 1000.0, 6)
        elif index == 0:
            t = 0.0
        else:
            t = index / self._fps if self._fps else float(index)
        t = max(t, self._last_time)  # never run backwards
        self._last_time = t
        return t

    def _to_rgb(self, image: np.ndarray) -> np.ndarray:
        cv2 = self._cv2
        if image.dtype != np.uint8:
            self.close()
            raise SourceError(f"{self.spec}: the source delivers {image.dtype} frames; only 8-bit frames are supported")
        if image.ndim == 2 or (image.ndim == 3 and image.shape[2] == 1):
            return np.repeat(image.reshape(image.shape[0], image.shape[1], 1), 3, axis=2)
        if image.ndim == 3 and image.shape[2] == 3:
            return np.ascontiguousarray(cv2.cvtColor(image, cv2.COLOR_BGR2RGB))
        if image.ndim == 3 and image.shape[2] == 4:
            return np.ascontiguousarray(cv2.cvtColor(image, cv2.COLOR_BGRA2RGB))
        self.close()
        raise SourceError(f"{self.spec}: the source delivers frames of shape {image.shape}; expected H×W×3")

    def __next__(self) -> Frame:
        if self._cap is None:
            raise StopIteration
        image = self._read()
        if image is None:
            if self._live:
                image = self._retry()
            else:
                self._end()
        timestamp = self._timestamp()
        frame = Frame(self._to_rgb(image), timestamp, self._frames_read, self.spec)
        self._frames_read += 1
        return frame


def _open_capture(kind: str, target: int | str, spec: str, *, fps: float | None, live: bool | None,
                  retry_seconds: float, timeout: float, count_tolerance: int | None, reconnect: int = 0,
                  reconnect_wait: float = 1.0) -> _CaptureSource:
    cv2 = _import_cv2(spec)
    ms = int(timeout * 1000)

    def make() -> tuple[Any, bool]:
        if kind == "stream":
            params = [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, ms, cv2.CAP_PROP_READ_TIMEOUT_MSEC, ms]
            cap = cv2.VideoCapture(target, cv2.CAP_FFMPEG, params)
        elif kind == "device" and sys.platform.startswith("linux"):
            cap = cv2.VideoCapture(target, cv2.CAP_V4L2)
        else:
            cap = cv2.VideoCapture(target)
        opened = bool(cap.isOpened())
        if opened and kind in ("camera", "device"):
            cap.set(cv2.CAP_PROP_READ_TIMEOUT_MSEC, ms)  # honoured by some backends; harmless elsewhere
            if fps is not None:
                cap.set(cv2.CAP_PROP_FPS, fps)
        return cap, opened

    def reopen() -> Any | None:
        """The capture opened again, or None (logged) when it cannot be."""
        try:
            cap, opened = make()
        except Exception as exc:  # cv2.error
            logger.warning("%s: reconnection failed (%s)", spec, exc)
            return None
        if not opened:
            cap.release()
            logger.warning("%s: reconnection failed (could not be opened)", spec)
            return None
        return cap

    try:
        cap, opened = make()
    except Exception as exc:  # cv2.error
        raise SourceError(f"{spec}: OpenCV could not open it ({exc})") from exc
    if not opened:
        cap.release()
        why = {
            "file": "OpenCV cannot read it: not a video, a codec this OpenCV build lacks, or a damaged or truncated "
                    "file (an MP4 cut short loses its index, which is written last)",
            "camera": "no such camera, or it is in use by another process, or access is not permitted",
            "device": "no such device, or it is in use by another process, or access is not permitted",
            "stream": f"unreachable, refused, or not a stream OpenCV can decode (waited up to {timeout:g} s)",
        }[kind]
        raise SourceError(f"{spec}: could not be opened: {why}")
    source = _CaptureSource(spec, kind, cap, cv2, live=live, fps=fps, retry_seconds=retry_seconds,
                            count_tolerance=count_tolerance, reopen=reopen if kind != "file" else None,
                            reconnect=reconnect, reconnect_wait=reconnect_wait)
    logger.info("opened %s %s (%s fps, %s frames, %s)", kind, spec, source.fps or "unknown",
                source.frame_count if source.frame_count is not None else "unknown",
                "live" if source.is_live else "not live")
    return source


class _ImageFilesSource(Source):
    """Image files (a folder, a glob or a list), decoded one per frame."""

    def __init__(self, spec: str, kind: str, paths: list[Path], *, fps: float | None, skip_unreadable: bool,
                 max_pixels: int | None) -> None:
        super().__init__(spec, kind)
        self._paths = paths
        self._fps = fps
        self._skip = skip_unreadable
        self._max_pixels = max_pixels
        self._pos = 0
        self._skipped = 0
        self._closed = False

    @property
    def fps(self) -> float | None:
        return self._fps

    @property
    def frame_count(self) -> int | None:
        return len(self._paths)

    @property
    def closed(self) -> bool:
        return self._closed

    def close(self) -> None:
        self._closed = True

    def __next__(self) -> Frame:
        while not self._closed and self._pos < len(self._paths):
            index, path = self._pos, self._paths[self._pos]
            self._pos += 1
            try:
                image = np.array(load_image(path, max_pixels=self._max_pixels), dtype=np.uint8)
            except ImageError as exc:
                if self._skip:
                    self._skipped += 1
                    logger.warning("%s: skipping unreadable image %d of %d: %s", self.spec, index + 1,
                                   len(self._paths), exc)
                    continue
                self.close()
                raise SourceError(f"{self.spec}: unreadable image {index + 1} of {len(self._paths)}: {exc} "
                                  "(pass skip_unreadable=True to skip such files)") from exc
            self._frames_read += 1
            timestamp = index / self._fps if self._fps else float(index)
            return Frame(image, timestamp, index, str(path))
        was_open = not self._closed
        self.close()
        if was_open and self._frames_read == 0 and self._skipped:
            raise SourceError(f"{self.spec}: none of its {self._skipped} image file(s) could be read")
        raise StopIteration


def _glob_images(pattern: str) -> list[Path]:
    matches = [Path(p) for p in sorted(globlib.glob(pattern, recursive=True))]
    files = [p for p in matches if p.is_file()]
    images = [p for p in files if p.suffix.lower() in IMAGE_EXTENSIONS]
    if len(images) < len(files):
        logger.info("%s: ignoring %d matched file(s) without an image suffix", pattern, len(files) - len(images))
    return images


def _folder_images(folder: Path) -> list[Path]:
    # like iter_image_paths (sorted, recursive, hidden entries skipped), without its warning on an empty folder
    found: list[Path] = []
    for root, dirs, files in os.walk(folder):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        found.extend(Path(root) / f for f in files
                     if not f.startswith(".") and Path(f).suffix.lower() in IMAGE_EXTENSIONS)
    return sorted(found)


# -- open_source ------------------------------------------------------------------------------------------
def _classify(spec: Any) -> tuple[str, Any, str]:
    """(kind, target, spec text) for a spec, or SourceError / InputError."""
    if isinstance(spec, bool):
        raise InputError(f"not a frame source: {spec!r}")
    if isinstance(spec, (int, np.integer)):
        if spec < 0:
            raise InputError(f"a camera index must be >= 0, got {spec}")
        return "camera", int(spec), str(int(spec))
    if isinstance(spec, (list, tuple)):
        if not spec:
            raise SourceError("an empty list of image files is not a frame source")
        paths = [Path(p) for p in spec]
        missing = [str(p) for p in paths if not p.is_file()]
        if missing:
            raise SourceError(f"{missing[0]}: no such image file" + (f" (and {len(missing) - 1} more)"
                                                                      if len(missing) > 1 else ""))
        return "files", paths, f"{paths[0]} (+{len(paths) - 1} more)" if len(paths) > 1 else str(paths[0])
    if not isinstance(spec, (str, os.PathLike)):
        raise InputError(f"not a frame source: {type(spec).__name__}; pass a camera index, a path, a URL or a glob")
    text = os.fspath(spec)
    if not isinstance(text, str):
        text = os.fsdecode(text)
    if not text:
        raise InputError("an empty string is not a frame source")
    if isinstance(spec, str) and text.isdigit():
        return "camera", int(text), text
    if isinstance(spec, str) and _URL.match(text):
        return "stream", text, text
    path = Path(text)
    if path.is_dir():
        return "folder", path, text
    if path.exists():
        mode = path.stat().st_mode
        if stat.S_ISCHR(mode):
            return "device", text, text
        if path.suffix.lower() in IMAGE_EXTENSIONS:
            return "files", [path], text
        return "file", text, text
    if text.startswith("/dev/"):
        return "device", text, text  # let the capture backend say what is wrong with it
    if _GLOB_CHARS & set(text):
        return "glob", text, text
    raise SourceError(f"{text}: no such file, folder or device (nor a camera index, URL or glob)")


def open_source(
    spec: SourceSpec,
    *,
    fps: float | None = None,
    live: bool | None = None,
    skip_unreadable: bool = False,
    retry_seconds: float = 1.0,
    timeout: float = 10.0,
    count_tolerance: int | None = 0,
    max_pixels: int | None = MAX_PIXELS,
    reconnect: int = 0,
    reconnect_wait: float = 1.0,
) -> Source:
    """Open a frame source.

    Args:
        spec: a camera index (``0`` or ``"0"``), a device path (``"/dev/video0"``), a URL (``"rtsp://…"``,
            ``"http://…"``), a video file, an image folder (every image file under it, recursively, sorted), a
            glob (``"frames/*.png"``, sorted; ``**`` recurses; files without an image suffix are ignored), a
            single image file, or a list of image paths (kept in order).
        fps: frame rate of a folder, glob or list (timestamps become ``index / fps``); for a camera, the rate
            asked of the device; for a file or stream, used only when the container reports none.
        live: override whether the source is live (default: cameras and ``rtsp``/``rtmp``/``udp``/… URLs are;
            other URLs are when they announce no frame count; files are not).
        skip_unreadable: for image files, log a warning and skip an unreadable file instead of raising.
        retry_seconds: how long a live source may keep failing reads before SourceError; reads are retried every
            50 ms. (One read can itself block: streams are opened with ``timeout`` as OpenCV's read timeout.)
        timeout: seconds to wait while opening a stream and for one read of a stream or camera (where the OpenCV
            backend honours it).
        count_tolerance: how many frames a video file may fall short of the count its container announces
            before SourceError is raised; ``None`` accepts any shortfall with a warning (some tools write wrong
            counts into intact files).
        max_pixels: largest image decoded from a folder (see :func:`~edgeclip.runtime.images.load_image`).
        reconnect: for a live camera, device or stream, how many times in a row it is opened again after its
            reads have failed for ``retry_seconds`` (a dropped RTSP stream, a camera re-plugged) before
            SourceError; frame indices go on across a reconnection and `reconnects` counts them. 0: never.
        reconnect_wait: seconds before the first reconnection attempt, doubled after each failed one (at most
            30 s).

    Raises:
        SourceError: the spec does not exist or cannot be opened (naming it and why), or OpenCV is needed and
            not installed.
        InputError: a bad argument.
    """
    if fps is not None and _positive(fps) is None:
        raise InputError(f"fps must be a positive number or None, got {fps!r}")
    for name, value in (("retry_seconds", retry_seconds), ("timeout", timeout)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
            raise InputError(f"{name} must be a non-negative number of seconds, got {value!r}")
    if timeout <= 0:
        raise InputError(f"timeout must be positive, got {timeout!r}")
    if isinstance(reconnect, bool) or not isinstance(reconnect, int) or reconnect < 0:
        raise InputError(f"reconnect must be a non-negative int, got {reconnect!r}")
    if (isinstance(reconnect_wait, bool) or not isinstance(reconnect_wait, (int, float))
            or not math.isfinite(reconnect_wait) or reconnect_wait < 0):
        raise InputError(f"reconnect_wait must be a non-negative number of seconds, got {reconnect_wait!r}")
    if count_tolerance is not None and (isinstance(count_tolerance, bool) or not isinstance(count_tolerance, int)
                                        or count_tolerance < 0):
        raise InputError(f"count_tolerance must be a non-negative int or None, got {count_tolerance!r}")
    fps = float(fps) if fps is not None else None
    kind, target, text = _classify(spec)
    if kind in ("file", "camera", "device", "stream"):
        return _open_capture(kind, target, text, fps=fps, live=live, retry_seconds=float(retry_seconds),
                             timeout=float(timeout), count_tolerance=count_tolerance, reconnect=reconnect,
                             reconnect_wait=float(reconnect_wait))
    if kind == "folder":
        paths = _folder_images(target)
        if not paths:
            raise SourceError(f"{text}: folder holds no image files (suffixes: {', '.join(sorted(IMAGE_EXTENSIONS))})")
    elif kind == "glob":
        paths = _glob_images(target)
        if not paths:
            raise SourceError(f"{text}: glob matches no image files")
    else:
        paths = target
    if live:
        raise InputError(f"{text}: image files are never a live source; drop live=True")
    logger.info("opened %s %s (%d image files)", kind, text, len(paths))
    return _ImageFilesSource(text, kind, paths, fps=fps, skip_unreadable=skip_unreadable, max_pixels=max_pixels)
