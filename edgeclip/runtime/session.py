"""`Session`: one method serving a stream of frames — what a robot application embeds.

A camera makes frames faster than a method can adapt on them, and the application wants the newest answer, not
a queue of stale ones. A Session owns worker threads that take frames from a bounded queue:

* ``policy="latest"`` (the default): the queue holds one waiting frame. A new frame replaces it, and the
  replaced frame's future is completed at once as **dropped** (``future.dropped`` is True, ``future.cancelled()``
  is True, ``result()`` raises ``CancelledError``) — never left pending.
* ``policy="fifo"``: every frame is served in order; ``submit`` blocks while the queue is full, or raises
  `SessionError` with ``block=False`` (or when ``timeout`` passes).

Every result is a `Prediction` with the frame's sequence number (``seq``) and ``timestamp``, and timings per
stage: ``queue`` (waiting), ``service`` (the method's call), ``latency`` (both) and the method's own stages.

**Latency budget.** With ``budget_ms``, a view-based method (TPT, PromptSync, ZERO, online prototypes) runs
each frame with as many views as a running latency model (`ViewBudget`) says fit, between ``min_views`` and
the method's ``n_views``, so the median service time stays under the budget; ``prediction.info["views"]``
says how many it used. When even ``min_views`` would not fit, the frame is answered by zero-shot CLIP and
``prediction.info["fallback"]`` says why. A method without views cannot trade anything for time: the
session logs a warning once and counts the frames over budget.

**Threads.** ``predict`` and ``submit`` may be called from any thread. ``workers > 1`` gives each worker its
own method instance (sharing the loaded model), for throughput on methods whose predictions do not depend on
earlier frames; an online method (its state carried from frame to frame) is refused with ``workers > 1``,
because its frames would be split between instances.

**Faults.** An exception on one frame completes that frame's future with it; the session carries on. An
exception in ``on_result`` is logged and counted. ``close()`` cancels waiting frames (``drain=True`` serves
them first), lets the frames being served finish, joins the workers, and may be called again; leaving a
``with`` block closes with ``drain=True`` unless an exception is on its way out. Using a closed session raises
`SessionError`.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import numpy as np
import torch

from edgeclip.errors import InputError, SessionError
from edgeclip.runtime.methods import create_method
from edgeclip.runtime.methods.base import Method, ViewMethod
from edgeclip.runtime.methods.config import check_finite, check_positive_int
from edgeclip.runtime.model import EdgeClip, load
from edgeclip.runtime.prediction import Prediction
from edgeclip.runtime.session_stats import DEFAULT_WINDOW, SessionStats, StatsRecorder
from edgeclip.runtime.view_budget import ViewBudget

__all__ = ["POLICIES", "FrameFuture", "Session"]

log = logging.getLogger(__name__)

POLICIES = ("latest", "fifo")
_FIFO_DEFAULT_QUEUE = 8


class FrameFuture(Future):
    """The future `Session.submit` returns: a `concurrent.futures.Future` of a `Prediction` that also knows its
    frame (``seq``, ``timestamp``) and whether the drop policy replaced it (``dropped``)."""

    def __init__(self, seq: int, timestamp: float) -> None:
        super().__init__()
        self.seq = seq
        self.timestamp = timestamp
        self.dropped = False


class _Job:
    __slots__ = ("frame", "future", "t_submit")

    def __init__(self, frame: np.ndarray, future: FrameFuture) -> None:
        self.frame = frame
        self.future = future
        self.t_submit = time.perf_counter()


def check_frame(frame: Any) -> np.ndarray:
    """A private uint8 RGB copy ``[H, W, 3]`` of `frame` (numpy array, torch tensor or PIL image), or `InputError`
    saying what is wrong with it."""
    if frame is None:
        raise InputError("frame is None (did the source fail to deliver a frame?)")
    if isinstance(frame, (str, bytes, os.PathLike)):
        raise InputError("a Session takes decoded frames (uint8 RGB arrays H×W×3), not paths or bytes; "
                         "read files with edgeclip.sources.open_source or use edgeclip classify")
    if isinstance(frame, torch.Tensor):
        frame = frame.detach().cpu().numpy()
    elif not isinstance(frame, np.ndarray):
        from PIL import Image

        if isinstance(frame, Image.Image):
            frame = np.asarray(frame.convert("RGB"))
        else:
            raise InputError(f"a frame must be a uint8 RGB array H×W×3 (numpy, torch or PIL), "
                             f"got {type(frame).__name__}")
    if frame.dtype != np.uint8:
        hint = " (scale floats in [0, 1] by 255 and convert)" if np.issubdtype(frame.dtype, np.floating) else ""
        raise InputError(f"a frame must be uint8, got {frame.dtype}{hint}")
    if frame.ndim != 3 or frame.shape[2] != 3 or frame.shape[0] < 1 or frame.shape[1] < 1:
        raise InputError(f"a frame must be H×W×3 (RGB), got shape {list(frame.shape)}")
    return np.array(frame, dtype=np.uint8, order="C", copy=True)


class _FrameQueue:
    """A bounded deque with the drop policy, blocking puts and close. Two conditions on one lock: workers wait on
    ``_ready``, blocked producers on ``_room``; a waiting producer is woken once the queue is half empty, so a
    full fifo queue refills in bursts instead of one thread switch per frame."""

    def __init__(self, policy: str, capacity: int) -> None:
        self.policy = policy
        self.capacity = capacity
        self._jobs: deque[_Job] = deque()
        lock = threading.Lock()
        self._ready = threading.Condition(lock)
        self._room = threading.Condition(lock)
        self._low = max(0, capacity // 2)
        self.closed = False

    def put(self, job: _Job, block: bool, timeout: float | None) -> list[_Job]:
        """Queue `job`; returns the jobs the latest-wins policy dropped to make room."""
        dropped: list[_Job] = []
        with self._room:
            if self.closed:
                raise SessionError("the session is closed; create a new Session")
            if self.policy == "latest":
                while len(self._jobs) >= self.capacity:
                    dropped.append(self._jobs.popleft())
            else:
                deadline = None if timeout is None else time.monotonic() + timeout
                while len(self._jobs) >= self.capacity and not self.closed:
                    left = None if deadline is None else deadline - time.monotonic()
                    if not block or (left is not None and left <= 0):
                        raise SessionError(f"the session's queue is full ({self.capacity} frames waiting)"
                                           + ("" if not block else f" after {timeout} s"))
                    self._room.wait(left)
                if self.closed:
                    raise SessionError("the session was closed while waiting to queue a frame")
            self._jobs.append(job)
            self._ready.notify()
        return dropped

    def get(self) -> _Job | None:
        """The next job, waiting for one; None once closed and empty."""
        with self._ready:
            while not self._jobs and not self.closed:
                self._ready.wait()
            if not self._jobs:
                return None
            job = self._jobs.popleft()
            if len(self._jobs) <= self._low:
                self._room.notify_all()
            return job

    def close(self, drain: bool) -> list[_Job]:
        """Close; returns the waiting jobs to cancel (none with `drain`: workers serve them first)."""
        with self._ready:
            self.closed = True
            left = [] if drain else list(self._jobs)
            if not drain:
                self._jobs.clear()
            self._ready.notify_all()
            self._room.notify_all()
            return left

    def __len__(self) -> int:
        with self._ready:
            return len(self._jobs)


class Session:
    """Serve one method on a stream of frames (see the module docstring).

    Args:
        bundle_or_model: a model from `edgeclip.load`, a bundle path, or None for the embedded micro CLIP.
        class_names: the classes, in order (None only with a `head`, which brings them).
        method: a registered method name (`edgeclip.list_methods()`).
        head: a head file for a trainable method.
        backend: the backend when the session loads the bundle itself (a given model keeps its own).
        budget_ms: the latency budget per frame (service time, median), or None.
        policy: "latest" (a new frame replaces the waiting one) or "fifo" (every frame, in order).
        workers: worker threads; > 1 only for methods whose predictions do not depend on earlier frames.
        queue_size: frames that may wait (default 1 for "latest", 8 for "fifo").
        min_views: the fewest views a budgeted frame may use before falling back to zero-shot.
        on_result: called with each finished `Prediction`, in the worker thread.
        stats_window: frames the latency percentiles and the fps are computed over.
        **method_config: the method's settings and resources (as for `create_method`), e.g. ``n_views=32``.
    """

    def __init__(self, bundle_or_model: EdgeClip | str | Path | None, class_names: Sequence[str] | None,
                 method: str = "zeroshot", head: str | Path | None = None, backend: str = "auto",
                 budget_ms: float | None = None, policy: str = "latest", workers: int = 1, *,
                 queue_size: int | None = None, min_views: int = 4,
                 on_result: Callable[[Prediction], Any] | None = None, stats_window: int = DEFAULT_WINDOW,
                 **method_config: Any) -> None:
        if policy not in POLICIES:
            raise InputError(f"policy must be one of {POLICIES}, got {policy!r}")
        check_positive_int("workers", workers)
        check_positive_int("min_views", min_views)
        check_positive_int("stats_window", stats_window)
        if queue_size is None:
            queue_size = 1 if policy == "latest" else _FIFO_DEFAULT_QUEUE
        check_positive_int("queue_size", queue_size)
        if budget_ms is not None:
            check_finite("budget_ms", budget_ms, strict=True)
        if on_result is not None and not callable(on_result):
            raise InputError(f"on_result must be callable, got {type(on_result).__name__}")
        self.model = bundle_or_model if isinstance(bundle_or_model, EdgeClip) else load(bundle_or_model,
                                                                                          backend=backend)
        first = create_method(method, self.model, class_names, head=head, **method_config)
        if workers > 1 and first.stateful:
            raise InputError(f"{first.name} in {getattr(first.config, 'mode', 'online')} mode carries its state "
                             "from frame to frame, so it runs on one worker (workers=1); use episodic mode for "
                             "parallel workers")
        self.methods: list[Method] = [first] + [
            create_method(method, self.model, first.class_names, head=head, **method_config)
            for _ in range(workers - 1)]
        self.class_names = first.class_names
        self.policy = policy
        self.budget_ms = budget_ms
        self._on_result = on_result
        self._budget: ViewBudget | None = None
        self._fallback: Method | None = None
        if budget_ms is not None:
            if isinstance(first, ViewMethod):
                self._budget = ViewBudget(budget_ms / 1e3, min(min_views, first.config.views.n_views),
                                          first.config.views.n_views)
                template = getattr(first.config, "template", None)
                kw = {"template": template} if isinstance(template, str) else {}
                self._fallback = create_method("zeroshot", self.model, first.class_names, **kw)
            else:
                log.warning("%s has no views to trade for time: budget_ms=%s is only checked (frames over it are "
                            "counted in stats()), not enforced", first.name, budget_ms)
        self._stats = StatsRecorder(stats_window)
        self._seq = 0
        self._seq_lock = threading.Lock()
        self._queue = _FrameQueue(policy, queue_size)
        self._close_lock = threading.Lock()
        self._closed = False
        # the workers hold the session weakly: a session dropped without close() is collected, and its finaliser
        # stops the workers (cancelling what still waits) instead of leaving threads behind
        ref = weakref.ref(self)
        self._threads = [threading.Thread(target=_work, args=(ref, self._queue, m), name=f"edgeclip-session-{i}",
                                          daemon=True) for i, m in enumerate(self.methods)]
        weakref.finalize(self, _abandon, self._queue)
        for t in self._threads:
            t.start()

    # -- the public API -------------------------------------------------------------------------------------
    @property
    def method(self) -> Method:
        """The method instance (the first worker's, with ``workers > 1``)."""
        return self.methods[0]

    @property
    def closed(self) -> bool:
        return self._closed

    def predict(self, frame: Any, timestamp: float | None = None) -> Prediction:
        """Serve `frame` now, in the calling thread, and return its `Prediction` (never dropped)."""
        job = self._new_job(frame, timestamp)
        if not job.future.set_running_or_notify_cancel():  # pragma: no cover - nobody else has the future
            raise SessionError("frame was cancelled")
        self._serve(self.methods[0], job)
        return job.future.result()

    def submit(self, frame: Any, timestamp: float | None = None, *, block: bool = True,
               timeout: float | None = None) -> FrameFuture:
        """Queue `frame` (with its `timestamp`, default ``time.time()``) and return its `FrameFuture` at once
        (with ``policy="fifo"``, after waiting for room unless ``block=False``)."""
        job = self._new_job(frame, timestamp)
        try:
            dropped = self._queue.put(job, block, timeout)
        except SessionError:
            self._stats.count("cancelled")
            job.future.cancel()
            raise
        for old in dropped:
            old.future.dropped = True
            old.future.cancel()
            self._stats.count("dropped")
        return job.future

    def reset(self) -> None:
        """Forget what the method adapted (every worker's instance), between two frames; stats stay."""
        for m in self.methods:
            m.reset()

    def stats(self) -> SessionStats:
        """Counts, fps and recent latency percentiles (see `SessionStats`)."""
        skipped = sum(int(getattr(m, "skipped_steps", 0)) for m in self.methods)
        return self._stats.snapshot(skipped_steps=skipped,
                                    budget=None if self._budget is None else self._budget.summary())

    def close(self, drain: bool = False) -> None:
        """Cancel waiting frames (serve them first with `drain`), finish the frames being served, join the
        workers. Idempotent."""
        with self._close_lock:
            first_call = not self._closed
            self._closed = True
            left = self._queue.close(drain) if first_call else []
        for job in left:
            if job.future.cancel():
                self._stats.count("cancelled")
        me = threading.current_thread()
        for t in self._threads:
            if t is not me:
                t.join()

    def __enter__(self) -> Session:
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        self.close(drain=exc_type is None)

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return (f"Session({self.method.name}, {len(self.class_names)} classes, policy={self.policy}, "
                f"workers={len(self.methods)}, budget_ms={self.budget_ms}, {state})")

    # -- internals ------------------------------------------------------------------------------------------
    def _new_job(self, frame: Any, timestamp: float | None) -> _Job:
        if self._closed:
            raise SessionError("the session is closed; create a new Session")
        if timestamp is not None and (isinstance(timestamp, bool) or not isinstance(timestamp, (int, float))):
            raise InputError(f"timestamp must be a number (seconds) or None, got {timestamp!r}")
        image = check_frame(frame)
        with self._seq_lock:
            seq = self._seq
            self._seq += 1
            self._stats.count("submitted")
        return _Job(image, FrameFuture(seq, time.time() if timestamp is None else float(timestamp)))

    def _take(self, method: Method, job: _Job) -> None:
        if not job.future.set_running_or_notify_cancel():  # cancelled by its owner while waiting
            self._stats.count("cancelled")
            return
        self._serve(method, job)

    def _serve(self, method: Method, job: _Job) -> None:
        """Run one frame and complete its future (with the result or the exception); never raises."""
        try:
            pred = self._run(method, job)
        except BaseException as exc:  # the frame's caller gets it through the future
            self._stats.count("failed")
            job.future.set_exception(exc)
            return
        job.future.set_result(pred)
        if self._on_result is not None:
            try:
                self._on_result(pred)
            except Exception:
                self._stats.count("callback_errors")
                log.exception("on_result raised on frame %d; the session carries on", job.future.seq)

    def _run(self, method: Method, job: _Job) -> Prediction:
        t0 = time.perf_counter()
        queue_s = t0 - job.t_submit
        fallback: str | None = None
        n_views: int | None = None
        if isinstance(method, ViewMethod):
            frame = torch.from_numpy(job.frame)
            if self._budget is not None:
                n_views = self._budget.choose()
            if n_views is None and self._budget is not None:
                fallback = self._fallback_reason()
                pred = self._fallback.predict(job.frame)
            else:
                pred = method.predict(frame, n_views=n_views)
                n_views = pred.info["frames"][0]["views"]
        else:
            pred = method.predict(job.frame)
        service = time.perf_counter() - t0
        if self._budget is not None and fallback is None:
            self._budget.observe(n_views, service, pred.timings)
        pred.seq = job.future.seq
        pred.timestamp = job.future.timestamp
        pred.timings.update(queue=queue_s, service=service, latency=queue_s + service)
        frames = pred.info.get("frames") or [{}]
        if isinstance(method, ViewMethod):
            pred.info["views"] = 1 if fallback else n_views
        if fallback:
            pred.info["fallback"] = fallback
        over = self.budget_ms is not None and service * 1e3 > self.budget_ms
        self._stats.frame_done(pred.timings, pred.info.get("views"), fallback=fallback is not None,
                               over_budget=over, collapse_reset=bool(frames[0].get("collapse_reset")))
        return pred

    def _fallback_reason(self) -> str:
        est = self._budget.estimate(self._budget.min_views)
        return (f"zero-shot: {self._budget.min_views} views would take ~{est * 1e3:.0f} ms, over the "
                f"{self.budget_ms:g} ms budget")


def _work(ref: weakref.ReferenceType[Session], queue: _FrameQueue, method: Method) -> None:
    """A worker: serve jobs until the queue closes, holding the session only while serving one."""
    while True:
        job = queue.get()
        if job is None:
            return
        session = ref()
        if session is None:  # collected between two frames
            job.future.cancel()
            return
        try:
            session._take(method, job)
        finally:
            del session


def _abandon(queue: _FrameQueue) -> None:
    """The finaliser of a session collected without close(): stop the workers, cancel what waits."""
    for job in queue.close(drain=False):
        job.future.cancel()
