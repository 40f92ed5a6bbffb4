"""How many views a frame can afford: a running latency model for a `Session` under a latency budget.

A view-based method's time for one frame is close to ``fixed + per_view · n``: making and encoding the ``n``
views grows with ``n`` (``per_view`` = the frame's "views" + "image_encoder" time over ``n``), the adaptation
step on their embeddings and the rest of the call barely do (``fixed`` = the frame's service time minus that).
`ViewBudget` keeps the last `window` measurements of both and plans with their medians, so the planned time is
an estimate of the median and one slow frame does not move it. It picks the most views the budget allows
(times `margin`, for headroom), between `min_views` and `max_views`.

When even `min_views` does not fit, `choose` returns None: the frame falls back to zero-shot (the caller says
so in the frame's result). Every `probe_every`-th frame that would fall back runs at `min_views` instead, so
the model sees fresh measurements and recovers when the machine gets faster (a warm cache, a quieter CPU).
The first `warmup` frames run at `min_views`: nothing is known yet (the first call of a method is slow while
its buffers are allocated), they are the cheapest measurements, and the median of fewer would follow one
outlier.
"""

from __future__ import annotations

import statistics
import threading
from collections import deque
from collections.abc import Mapping

from edgeclip.errors import InputError
from edgeclip.runtime.methods.config import check_finite, check_positive_int

__all__ = ["ViewBudget"]


class ViewBudget:
    """Chooses views per frame so the median service time stays under ``budget_s`` (see the module docstring).
    Safe to share between threads."""

    def __init__(self, budget_s: float, min_views: int, max_views: int, *, window: int = 32,
                 probe_every: int = 16, margin: float = 0.9, warmup: int = 3) -> None:
        check_finite("budget_s", budget_s, strict=True)
        check_positive_int("min_views", min_views)
        check_positive_int("max_views", max_views)
        check_positive_int("window", window)
        check_positive_int("probe_every", probe_every)
        check_positive_int("warmup", warmup)
        check_finite("margin", margin, strict=True)
        if min_views > max_views:
            raise InputError(f"min_views ({min_views}) must not exceed max_views ({max_views})")
        if margin > 1.0:
            raise InputError(f"margin must lie in (0, 1], got {margin}")
        self.budget_s = float(budget_s)
        self.min_views = min_views
        self.max_views = max_views
        self.probe_every = probe_every
        self.margin = float(margin)
        self.warmup = min(warmup, window)
        self._per_view: deque[float] = deque(maxlen=window)
        self._fixed: deque[float] = deque(maxlen=window)
        self._misses = 0
        self._lock = threading.Lock()

    def estimate(self, n_views: int) -> float | None:
        """The planned service time (seconds) of a frame with `n_views` views, or None before any measurement."""
        with self._lock:
            return self._estimate(n_views)

    def _estimate(self, n_views: int) -> float | None:
        if not self._per_view:
            return None
        return statistics.median(self._fixed) + statistics.median(self._per_view) * n_views

    def choose(self) -> int | None:
        """Views for the next frame, or None to fall back to zero-shot (see the module docstring)."""
        with self._lock:
            if len(self._per_view) < self.warmup:
                return self.min_views
            target = self.budget_s * self.margin
            fixed = statistics.median(self._fixed)
            per_view = max(statistics.median(self._per_view), 1e-9)
            n = int((target - fixed) // per_view)
            if n >= self.min_views:
                self._misses = 0
                return min(n, self.max_views)
            self._misses += 1
            if self._misses % self.probe_every == 0:
                return self.min_views
            return None

    def observe(self, n_views: int, service_s: float, timings: Mapping[str, float]) -> None:
        """Record one frame: its view count, its service time and the method's stage timings (seconds)."""
        check_positive_int("n_views", n_views)
        scaled = float(timings.get("views", 0.0)) + float(timings.get("image_encoder", 0.0))
        per_view = scaled / n_views
        fixed = max(float(service_s) - scaled, 0.0)
        with self._lock:
            self._per_view.append(per_view)
            self._fixed.append(fixed)

    def reset(self) -> None:
        """Forget the measurements (the next frame runs at `min_views` again)."""
        with self._lock:
            self._per_view.clear()
            self._fixed.clear()
            self._misses = 0

    def summary(self) -> dict[str, float | int | None]:
        """The model's current medians (ms) and limits, for `Session.stats`."""
        with self._lock:
            known = bool(self._per_view)
            return {
                "budget_ms": self.budget_s * 1e3,
                "min_views": self.min_views,
                "max_views": self.max_views,
                "fixed_ms": statistics.median(self._fixed) * 1e3 if known else None,
                "per_view_ms": statistics.median(self._per_view) * 1e3 if known else None,
                "samples": len(self._per_view),
            }
