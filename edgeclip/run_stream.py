"""Stream a frame source through a `Session`: what `edgeclip run` does, as a library function.

Every frame the source delivers yields one record, in source order, whatever happened to it:

* served: ``{"frame", "seq", "timestamp", "label", "confidence", "top", "views", "fallback", "latency_ms"}``;
* dropped by the latest-wins policy: ``{"frame", "seq", "timestamp", "dropped": true, "shown": LABEL}``, where
  ``shown`` is the newest result at that moment (what the annotated video shows on that frame), or None;
* failed: ``{"frame", "seq", "timestamp", "error": MESSAGE}``.

With an output video, every source frame is written, annotated with its own result or, for a dropped frame, the
newest result so far (marked "held"), and the session's fps. A source that fails mid-stream stops the reading;
the frames already submitted are finished and written, and the summary carries the error (``source_error``).
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import CancelledError
from pathlib import Path
from typing import Any

from edgeclip.errors import SourceError
from edgeclip.runtime.prediction import Prediction
from edgeclip.runtime.session import FrameFuture, Session

__all__ = ["run_stream"]

log = logging.getLogger(__name__)

#: frames smaller than this (shorter side) are enlarged in the annotated video so the text stays legible
ANNOTATE_MIN_SIDE = 256
_STATS_EVERY_S = 0.25


class _Annotator:
    """Writes annotated frames in order; remembers the newest result for dropped frames."""

    def __init__(self, out: str | Path | None, fps: float) -> None:
        self.latest: Prediction | None = None
        self.writer = None
        if out is not None:
            from edgeclip.video_out import VideoWriter

            self.writer = VideoWriter(out, fps=fps, fit=True)  # a folder may hold images of mixed sizes

    def write(self, image: Any, lines: list[str]) -> None:
        if self.writer is not None:
            from edgeclip.video_out import annotate

            self.writer.write(annotate(image, lines, min_side=ANNOTATE_MIN_SIDE))

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def _label_line(pred: Prediction, held: bool) -> str:
    rec = pred.to_records(top_k=1)[0]
    extra = " (held)" if held else ""
    return f"{rec['label']} {100 * rec['confidence']:.0f}%{extra}"


def _record(frame: Any, fut: FrameFuture, top_k: int, latest: Prediction | None) -> dict[str, Any]:
    base = {"frame": frame.index, "seq": fut.seq, "timestamp": fut.timestamp}
    if fut.cancelled():
        shown = None if latest is None else latest.to_records(top_k=1)[0]["label"]
        return {**base, "dropped": True, "shown": shown} if fut.dropped else {**base, "cancelled": True}
    exc = fut.exception()
    if exc is not None:
        return {**base, "error": f"{type(exc).__name__}: {exc}"}
    pred = fut.result()
    rec = pred.to_records(top_k=top_k)[0]
    return {**base, **rec, "views": pred.info.get("views"), "fallback": pred.info.get("fallback"),
            "latency_ms": 1e3 * pred.timings["latency"]}


def run_stream(session: Session, source: Any, *, out: str | Path | None = None, max_frames: int | None = None,
               realtime: bool = False, top_k: int = 3, on_record: Callable[[dict[str, Any]], Any] | None = None,
               on_status: Callable[[Any], Any] | None = None) -> dict[str, Any]:
    """Stream `source` (an `edgeclip.sources.Source`, or any iterable of frames with ``image``, ``timestamp`` and
    ``index``) through `session`; see the module docstring.

    `realtime` paces a file at its timestamps (as a camera would deliver it). `on_record` gets each frame's
    record in order; `on_status` gets `session.stats()` a few times a second. Returns a summary: frames read,
    the session's stats, the output path and the source error, if any.
    """
    fps = getattr(source, "fps", None) or 30.0
    annot = _Annotator(out, fps)
    pending: deque[tuple[Any, FrameFuture]] = deque()
    stats_fps = 0.0
    last_status = 0.0
    read = 0
    source_error: str | None = None
    t_start = time.perf_counter()
    first_ts: float | None = None

    def flush(wait: bool) -> None:
        nonlocal stats_fps
        while pending and (wait or pending[0][1].done()):
            frame, fut = pending.popleft()
            with contextlib.suppress(CancelledError):
                fut.exception()  # waits; CancelledError for a dropped frame
            rec = _record(frame, fut, top_k, annot.latest)
            if "label" in rec:
                annot.latest = fut.result()
            if on_record is not None:
                on_record(rec)
            lines = [_label_line(annot.latest, held="label" not in rec)] if annot.latest is not None else ["-"]
            lines.append(f"{stats_fps:.1f} fps" + (f" | {rec['views']} views" if rec.get("views") else ""))
            if rec.get("fallback"):
                lines.append("zero-shot fallback")
            if "error" in rec:
                lines.append("error on this frame")
            annot.write(frame.image, lines)

    try:
        it = iter(source)
        while max_frames is None or read < max_frames:
            try:
                frame = next(it)
            except StopIteration:
                break
            except SourceError as exc:
                source_error = str(exc)
                log.warning("source failed after %d frames: %s", read, exc)
                break
            if realtime:
                first_ts = frame.timestamp if first_ts is None else first_ts
                wait = (frame.timestamp - first_ts) - (time.perf_counter() - t_start)
                if wait > 0:
                    time.sleep(wait)
            pending.append((frame, session.submit(frame.image, timestamp=frame.timestamp)))
            read += 1
            now = time.perf_counter()
            if now - last_status >= _STATS_EVERY_S:
                st = session.stats()
                stats_fps = st.fps
                last_status = now
                if on_status is not None:
                    on_status(st)
            flush(wait=False)
        flush(wait=True)
    finally:
        try:
            session.close(drain=False)
            flush(wait=True)
        finally:
            annot.close()
    st = session.stats()
    if on_status is not None:
        on_status(st)
    return {"frames": read, "out": None if out is None else str(out), "source_error": source_error,
            "wall_s": time.perf_counter() - t_start, "stats": st.to_dict()}
