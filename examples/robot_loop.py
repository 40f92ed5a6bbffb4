"""A robot's perception loop without ROS: a camera thread at 30 fps, a control loop reading the newest answer.

A ROS 2 perception node subscribes with a depth-1 queue so it always works on the newest image; an
`edgeclip.Session` with ``policy="latest"`` (the default) does the same: the camera thread submits every frame,
a frame still waiting when the next one arrives is dropped, and the control loop reads the newest result
whenever it runs — never a queue of stale ones.

    python examples/robot_loop.py                          # procedural frames, the shift changing half-way
    python examples/robot_loop.py --source 0 --classes "cup,keyboard,person" --bundle vitb16.bundle
    python examples/robot_loop.py --method tpt --budget-ms 150 --seconds 20
"""

from __future__ import annotations

import argparse
import itertools
import threading
import time
from collections.abc import Iterator

import numpy as np

import edgeclip


class Newest:
    """The newest result, for the control loop (the session's ``on_result`` callback writes it)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pred: edgeclip.Prediction | None = None

    def put(self, pred: edgeclip.Prediction) -> None:
        with self._lock:
            if self._pred is None or pred.seq > self._pred.seq:
                self._pred = pred

    def get(self) -> edgeclip.Prediction | None:
        with self._lock:
            return self._pred


def procedural_frames(seconds: float, fps: float) -> Iterator[np.ndarray]:
    """Shapes frames whose domain shift switches from clean to blur half-way (what a camera moving into fog sees)."""
    n = max(2, int(seconds * fps))
    first = edgeclip.shapes.make_batch(n // 2, seed=1, shift="clean").images
    second = edgeclip.shapes.make_batch(n - n // 2, seed=2, shift="blur").images
    yield from itertools.chain(first, second)


def camera(session: edgeclip.Session, frames: Iterator[np.ndarray], fps: float, stop: threading.Event) -> None:
    """Deliver frames at `fps` into the session, as a camera driver would; never waits for inference."""
    period = 1.0 / fps
    next_t = time.perf_counter()
    for frame in frames:
        if stop.is_set():
            break
        session.submit(frame, timestamp=time.time())
        next_t += period
        time.sleep(max(0.0, next_t - time.perf_counter()))
    stop.set()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--bundle", default=None, help="bundle (default: the embedded micro CLIP)")
    p.add_argument("--classes", default=None, help="comma-separated classes (default: the micro CLIP's 16)")
    p.add_argument("--source", default=None, help="camera index, video, folder… (default: procedural frames)")
    p.add_argument("--method", default="zeroshot", help="method name (edgeclip.list_methods())")
    p.add_argument("--budget-ms", type=float, default=None, help="latency budget for view-based methods")
    p.add_argument("--fps", type=float, default=30.0, help="camera rate (default 30)")
    p.add_argument("--seconds", type=float, default=6.0, help="how long to run (default 6)")
    p.add_argument("--control-hz", type=float, default=10.0, help="control loop rate (default 10)")
    args = p.parse_args()

    names = args.classes.split(",") if args.classes else edgeclip.shapes.class_names()
    newest = Newest()
    stop = threading.Event()
    if args.source is None:
        frames: Iterator[np.ndarray] = procedural_frames(args.seconds, args.fps)
        source = None
    else:
        source = edgeclip.sources.open_source(args.source)
        frames = (f.image for f in source)
    with edgeclip.Session(args.bundle, names, method=args.method, budget_ms=args.budget_ms,
                          on_result=newest.put) as session:
        cam = threading.Thread(target=camera, args=(session, frames, args.fps, stop), daemon=True)
        cam.start()
        t_end = time.perf_counter() + args.seconds
        while not stop.is_set() and time.perf_counter() < t_end:
            pred = newest.get()
            if pred is not None:  # the control decision would go here
                age_ms = (time.time() - pred.timestamp) * 1e3
                views = f", {pred.info['views']} views" if pred.info.get("views") else ""
                print(f"control: frame {pred.seq:4d} {pred.names[0]:<16s} {100 * float(pred.confidence[0]):5.1f}% "
                      f"(captured {age_ms:5.0f} ms ago{views})")
            time.sleep(1.0 / args.control_hz)
        stop.set()
        cam.join()
        st = session.stats()
    if source is not None:
        source.close()
    lat = st.latency_ms.get("latency", {})
    print(f"camera delivered {st.submitted} frames; served {st.done}, dropped {st.dropped} (latest wins), failed "
          f"{st.failed}; {st.fps:.1f} fps served; latency p50 {lat.get('p50', 0):.1f} ms, "
          f"p99 {lat.get('p99', 0):.1f} ms")


if __name__ == "__main__":
    main()
