"""What a `Session` counts: frames by outcome, recent latency per stage, views used, fallbacks, collapse resets.

Counters are exact over the session's life; latencies, views and the fps are over the last `window` frames
(bounded memory however long the session runs).
"""

from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

__all__ = ["SessionStats", "StatsRecorder"]

#: frames the percentiles and the fps are computed over
DEFAULT_WINDOW = 4096
_FPS_WINDOW = 128


@dataclass(frozen=True)
class SessionStats:
    """A snapshot of `Session.stats()`. ``submitted == done + dropped + failed + cancelled + pending`` always
    holds (``predict`` calls count as submitted too)."""

    submitted: int
    done: int
    dropped: int
    failed: int
    cancelled: int
    pending: int
    #: frames per second over the last completions (0 before two frames are done)
    fps: float
    #: seconds since the session started
    elapsed_s: float
    #: per stage ("queue", "service", "latency" = queue + service, and the method's own stages): p50/p90/p99 in ms
    latency_ms: dict[str, dict[str, float]] = field(default_factory=dict)
    #: views per frame over the window: mean, min, max (view-based methods only)
    views: dict[str, float] | None = None
    #: frames that fell back to zero-shot because even the fewest views did not fit the budget
    fallbacks: int = 0
    #: frames whose service time exceeded the budget (when one is set)
    over_budget: int = 0
    #: adaptation steps the method skipped (a non-finite loss, say) — the method's own counter
    skipped_steps: int = 0
    #: times the collapse guard reset an online method
    collapse_resets: int = 0
    #: exceptions raised by the on_result callback (logged; the session carries on)
    callback_errors: int = 0
    #: the latency model under a budget (its medians), else None
    budget: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class StatsRecorder:
    """Thread-safe counters and bounded windows behind `SessionStats`."""

    def __init__(self, window: int = DEFAULT_WINDOW) -> None:
        self._lock = threading.Lock()
        self._t0 = time.perf_counter()
        self.counts = {"submitted": 0, "done": 0, "dropped": 0, "failed": 0, "cancelled": 0}
        self.events = {"fallbacks": 0, "over_budget": 0, "collapse_resets": 0, "callback_errors": 0}
        self._window = window
        self._stages: dict[str, deque[float]] = {}
        self._views: deque[int] = deque(maxlen=window)
        self._done_at: deque[float] = deque(maxlen=_FPS_WINDOW)

    def count(self, key: str, n: int = 1) -> None:
        with self._lock:
            if key in self.counts:
                self.counts[key] += n
            else:
                self.events[key] += n

    def frame_done(self, timings: dict[str, float], views: int | None, *, fallback: bool, over_budget: bool,
                   collapse_reset: bool) -> None:
        with self._lock:
            self.counts["done"] += 1
            self._done_at.append(time.perf_counter())
            for stage, seconds in timings.items():
                q = self._stages.get(stage)
                if q is None:
                    q = self._stages[stage] = deque(maxlen=self._window)
                q.append(seconds)
            if views is not None:
                self._views.append(views)
            self.events["fallbacks"] += int(fallback)
            self.events["over_budget"] += int(over_budget)
            self.events["collapse_resets"] += int(collapse_reset)

    def snapshot(self, *, skipped_steps: int, budget: dict[str, Any] | None) -> SessionStats:
        with self._lock:
            c = dict(self.counts)
            ev = dict(self.events)
            stages = {k: np.asarray(v, dtype=np.float64) for k, v in self._stages.items() if v}
            views = np.asarray(self._views, dtype=np.float64)
            done_at = list(self._done_at)
            elapsed = time.perf_counter() - self._t0
        pending = c["submitted"] - c["done"] - c["dropped"] - c["failed"] - c["cancelled"]
        fps = (len(done_at) - 1) / (done_at[-1] - done_at[0]) if len(done_at) > 1 and done_at[-1] > done_at[0] \
            else 0.0
        latency = {k: {f"p{q}": float(np.percentile(v, q) * 1e3) for q in (50, 90, 99)} for k, v in stages.items()}
        view_stats = ({"mean": float(views.mean()), "min": float(views.min()), "max": float(views.max())}
                      if views.size else None)
        return SessionStats(pending=pending, fps=fps, elapsed_s=elapsed, latency_ms=latency, views=view_stats,
                            skipped_steps=skipped_steps, budget=budget, **c, **ev)
