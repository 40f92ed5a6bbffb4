"""Wall-clock timing with warm-up, synchronisation, repeats and percentiles.

`measure` times a zero-argument callable with `time.perf_counter`; `measure_interleaved` times
several doing the same work round-robin, so they share the machine's drift; `paired_calls` does the same
for slow calls (one call per function per round, each with its peak memory and result); `ratio_with_spread`
compares two measurements (e.g. PyTorch eager against ONNX Runtime) and says how much the ratio can
be trusted.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

__all__ = [
    "RATIO_NOTE",
    "PairedCalls",
    "TimingStats",
    "check_device_threads",
    "is_cuda",
    "measure",
    "measure_interleaved",
    "paired_calls",
    "ratio_with_spread",
]


@dataclass(frozen=True)
class TimingStats:
    """Summary of one timed case; every time is in milliseconds per call."""

    median_ms: float  # median of the samples: the number to quote
    p90_ms: float  # 90th percentile (linear interpolation): the slow tail
    mean_ms: float
    min_ms: float  # best case; closest to the machine's limit, most optimistic
    n: int  # number of timed calls (warm-up excluded)
    samples_ms: tuple[float, ...] = field(repr=False)  # every timed call, in the order run

    @classmethod
    def from_samples(cls, samples_ms: list[float] | tuple[float, ...]) -> TimingStats:
        """Summarise raw per-call times in milliseconds (at least one)."""
        if len(samples_ms) == 0:
            raise ValueError("TimingStats needs at least one sample")
        arr = np.asarray(samples_ms, dtype=np.float64)
        return cls(median_ms=float(np.median(arr)), p90_ms=float(np.percentile(arr, 90)),
                   mean_ms=float(arr.mean()), min_ms=float(arr.min()), n=int(arr.size),
                   samples_ms=tuple(float(x) for x in arr))

    def to_dict(self, samples: bool = True) -> dict[str, Any]:
        """A JSON-ready dict; `samples=False` leaves the raw samples out."""
        d = asdict(self)
        d["samples_ms"] = list(self.samples_ms)
        if not samples:
            del d["samples_ms"]
        return d


def measure(
    fn: Callable[[], Any],
    *,
    warmup: int = 3,
    repeats: int = 20,
    min_time: float | None = None,
    max_time: float | None = None,
    min_repeats: int = 3,
    sync: Callable[[], Any] | None = None,
) -> TimingStats:
    """Time `fn()` after `warmup` untimed calls.

    Args:
        fn: the work to time, called with no arguments; its result is discarded.
        warmup: untimed calls first (allocator, thread pools, lazy initialisation, caches).
        repeats: timed calls to make.
        min_time: if given, keep making timed calls after `repeats` until the timed calls add up to
            at least this many seconds (short functions get more samples).
        max_time: if given, a time budget in seconds that caps the run for slow functions: timed calls
            stop once they add up to `max_time` and at least `min_repeats` have been made, and the
            warm-up stops once it has used `max_time / 2` (at least one warm-up call still runs when
            `warmup > 0`). `max_time` wins over `min_time` and `repeats`.
        min_repeats: the fewest timed calls `max_time` may leave (clipped to `repeats`).
        sync: called before every clock read when given, e.g. `torch.cuda.synchronize`, so queued
            asynchronous work is counted in the call that queued it.

    Returns:
        `TimingStats` over the timed calls, in milliseconds.
    """
    floor = _check_args(warmup, repeats, min_time, max_time, min_repeats)
    _warm_up(fn, warmup, max_time, sync)

    samples: list[float] = []
    total = 0.0
    while True:
        dt = _timed(fn, sync)
        samples.append(dt * 1e3)
        total += dt
        n = len(samples)
        if max_time is not None and total >= max_time and n >= floor:
            break
        if n >= repeats and (min_time is None or total >= min_time):
            break
    return TimingStats.from_samples(samples)


def _check_args(warmup: int, repeats: int, min_time: float | None, max_time: float | None,
                min_repeats: int) -> int:
    """Validate `measure`'s arguments; returns the fewest timed calls `max_time` may leave."""
    if warmup < 0:
        raise ValueError(f"warmup must be >= 0, got {warmup}")
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    for name, value in (("min_time", min_time), ("max_time", max_time)):
        if value is not None and not (value > 0 and math.isfinite(value)):
            raise ValueError(f"{name} must be a positive number of seconds, got {value}")
    return max(1, min(min_repeats, repeats))


def _timed(fn: Callable[[], Any], sync: Callable[[], Any] | None) -> float:
    """Seconds one call of `fn` takes, synchronising before each clock read when `sync` is given."""
    if sync is not None:
        sync()
    t0 = time.perf_counter()
    fn()
    if sync is not None:
        sync()
    return time.perf_counter() - t0


def _warm_up(fn: Callable[[], Any], warmup: int, max_time: float | None,
             sync: Callable[[], Any] | None) -> float:
    """`warmup` untimed calls, cut short once they used `max_time / 2`; returns the last call's time."""
    spent = last = 0.0
    for i in range(warmup):
        last = _timed(fn, sync)
        spent += last
        if max_time is not None and spent >= max_time / 2 and i + 1 < warmup:
            break
    return last


# After a switch, `measure_interleaved` lets this long pass before the next timed call, so the previous
# library's worker threads have stopped spinning. Measured on a 2-core VM after a call of a tiny ViT:
# ONNX Runtime's intra-op worker kept a core busy for ~40 ms, libgomp's (PyTorch) ~10 ms; a PyTorch
# call made right after an ORT call took 4.3 ms instead of 1.9 ms.
SETTLE_S = 0.1


def _settle(fn: Callable[[], Any], last_call_s: float, sync: Callable[[], Any] | None) -> None:
    """Untimed calls of `fn` for `SETTLE_S` (keeps its own threads warm); a call longer than that
    would double the cost, so slow functions sleep `SETTLE_S` instead (their wake-up is negligible)."""
    if last_call_s >= SETTLE_S:
        time.sleep(SETTLE_S)
        return
    end = time.perf_counter() + SETTLE_S
    while time.perf_counter() < end:
        _timed(fn, sync)


def measure_interleaved(
    fns: Mapping[str, Callable[[], Any]],
    *,
    warmup: int = 3,
    repeats: int = 20,
    min_time: float | None = None,
    max_time: float | None = None,
    min_repeats: int = 3,
    sync: Callable[[], Any] | None = None,
) -> dict[str, TimingStats]:
    """Time several functions doing the same work (e.g. one encoder on two backends) round-robin.

    Each function is warmed up on its own, then every round makes one timed call of each, in turn,
    so slow drifts of the machine (other processes, clock boost, thermals) hit all of them alike and
    the i-th samples form a pair (`ratio_with_spread(..., paired=True)`). Every function gets the
    same number of samples. With more than one function, each timed call is preceded by a settle
    period of `SETTLE_S` (untimed calls of the same function, or a sleep when one call is longer),
    so the previous library's worker threads, which spin for a while after their work (libgomp,
    ONNX Runtime), have gone quiet before the clock starts; this costs `SETTLE_S` per call.

    Arguments are as for `measure`, per function: rounds stop after `repeats` rounds (and
    `min_time` seconds of timed calls of the fastest function, if given), or once the slowest
    function's timed calls add up to `max_time` and `min_repeats` rounds are done.
    """
    if not fns:
        raise ValueError("measure_interleaved needs at least one function")
    floor = _check_args(warmup, repeats, min_time, max_time, min_repeats)
    last = {name: _warm_up(fn, warmup, max_time, sync) for name, fn in fns.items()}
    samples: dict[str, list[float]] = {name: [] for name in fns}
    totals = dict.fromkeys(fns, 0.0)
    rounds = 0
    while True:
        for name, fn in fns.items():
            if len(fns) > 1:
                _settle(fn, last[name], sync)
            dt = last[name] = _timed(fn, sync)
            samples[name].append(dt * 1e3)
            totals[name] += dt
        rounds += 1
        if max_time is not None and max(totals.values()) >= max_time and rounds >= floor:
            break
        if rounds >= repeats and (min_time is None or min(totals.values()) >= min_time):
            break
    return {name: TimingStats.from_samples(s) for name, s in samples.items()}


_MAX_PAIR_SIDE = 1000


def _thin(x: np.ndarray) -> np.ndarray:
    """Long sample lists are replaced by their quantiles, so the all-pairs grid stays <= 1e6."""
    if x.size <= _MAX_PAIR_SIDE:
        return x
    return np.quantile(x, np.linspace(0.0, 1.0, _MAX_PAIR_SIDE))


RATIO_NOTE = ("speedup is the median of the per-round ratios of the two times (a round times both, round-robin; "
              "unpaired runs: every pair of calls) and speedup_lo–speedup_hi are their 10th–90th percentiles, so the "
              "point always lies inside its range (ratio_of_medians in the JSON: the ratio of the two medians)")
"""How `ratio_with_spread`'s figures are defined, for a report's notes."""


def ratio_with_spread(a: TimingStats, b: TimingStats, *, paired: bool = False) -> dict[str, float]:
    """How many times slower `b` is than `a` (so `ratio_with_spread(ort, torch)` is ORT's speedup).

    Returned keys:

    - `ratio`: the median of the per-call ratios `b / a` (below), the number to quote;
    - `ratio_lo`, `ratio_hi`: the 10th and 90th percentiles of the same ratios. The point is a median of the
      ratios the range is taken over, so it always lies inside the range; a range that straddles 1.0 means
      the two are not clearly different on this machine;
    - `ratio_of_medians`: `b.median_ms / a.median_ms` (close to `ratio`, but not bound to lie in the range);
    - `ratio_p90`: `b.p90_ms / a.p90_ms`, the ratio of the slow tails.

    The per-call ratios are, with `paired=True` (samples taken round-robin by `measure_interleaved`,
    same count), `b_i / a_i` for each round i: machine drift cancels within a pair. Otherwise the two
    runs are not paired call by call and the ratios are taken over *every* pair `b_j / a_i`, i.e.
    what one would see comparing one random call of each (lists longer than 1000 samples are first
    reduced to 1000 quantiles).
    """
    if a.median_ms <= 0 or a.p90_ms <= 0 or min(a.samples_ms) <= 0:
        raise ValueError("ratio_with_spread: `a` has non-positive times; nothing to divide by")
    sa = np.asarray(a.samples_ms, dtype=np.float64)
    sb = np.asarray(b.samples_ms, dtype=np.float64)
    if paired:
        if sa.size != sb.size:
            raise ValueError(f"paired ratios need as many samples in each: {sa.size} vs {sb.size}")
        ratios = sb / sa  # (n,)
    else:
        ratios = (_thin(sb)[None, :] / _thin(sa)[:, None]).ravel()  # (n_a * n_b,)
    lo, mid, hi = np.percentile(ratios, [10, 50, 90])
    return {"ratio": float(mid), "ratio_lo": float(lo), "ratio_hi": float(hi),
            "ratio_of_medians": b.median_ms / a.median_ms, "ratio_p90": b.p90_ms / a.p90_ms}


@dataclass
class PairedCalls:
    """What `paired_calls` measured: per label, the times, the peak memory of every call and its results."""

    stats: dict[str, TimingStats]
    peaks_mb: dict[str, list[float]]
    results: dict[str, list[Any]] = field(default_factory=dict)


def paired_calls(fns: Mapping[str, Callable[[int], Any]], rounds: int, *, memory: Any,
                 sync: Callable[[], Any] | None, max_time: float | None = None, min_rounds: int = 1,
                 after_call: Callable[[str, int, Any], None] | None = None,
                 tick: Callable[[], None] | None = None) -> PairedCalls:
    """Round i calls every function with i, in turn (the order reversed on odd rounds, so neither always goes
    first), each call timed alone: `memory.start()` (a `PeakMemory`: heap trimmed, memory mark reset),
    `SETTLE_S` of sleep (the previous call's worker threads go quiet), clock, call, clock, `memory.stop()`.
    Stops after `rounds` rounds, or once the slowest function has `max_time` seconds of timed calls and
    `min_rounds` rounds are done. `after_call(label, i, result)` runs untimed after each call."""
    samples: dict[str, list[float]] = {k: [] for k in fns}
    peaks: dict[str, list[float]] = {k: [] for k in fns}
    results: dict[str, list[Any]] = {k: [] for k in fns}
    totals = dict.fromkeys(fns, 0.0)
    order = list(fns)
    for i in range(rounds):
        for label in (order if i % 2 == 0 else order[::-1]):
            memory.start()
            time.sleep(SETTLE_S)
            if sync is not None:
                sync()
            t0 = time.perf_counter()
            out = fns[label](i)
            if sync is not None:
                sync()
            dt = time.perf_counter() - t0
            peaks[label].append(memory.stop())
            samples[label].append(dt * 1e3)
            results[label].append(out)
            totals[label] += dt
            if after_call is not None:
                after_call(label, i, out)
        if tick is not None:
            tick()
        if max_time is not None and max(totals.values()) >= max_time and i + 1 >= min_rounds:
            break
    return PairedCalls({k: TimingStats.from_samples(v) for k, v in samples.items()}, peaks, results)


def is_cuda(device: str) -> bool:
    """Whether a device string names a CUDA device (``cuda``, ``cuda:1``)."""
    return device.startswith("cuda")


def check_device_threads(device: str, threads: int | None) -> None:
    """A benchmark's ``device`` ("cpu" or "cuda[:i]", with CUDA present) and ``threads`` (None or >= 1)."""
    import torch

    from edgeclip.errors import BackendError

    if not (device == "cpu" or is_cuda(device)):
        raise ValueError(f"device must be 'cpu' or 'cuda[:i]', got {device!r}")
    if is_cuda(device) and not torch.cuda.is_available():
        raise BackendError(f"device {device!r} asked for but PyTorch sees no CUDA device")
    if threads is not None and threads < 1:
        raise ValueError(f"threads must be >= 1, got {threads}")
