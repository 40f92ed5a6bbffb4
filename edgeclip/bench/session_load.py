"""`edgeclip bench session`: a Session under load, beside a bare predict loop, and under a latency budget.

Parts (each optional):

* ``throughput`` — zero-shot on the micro bundle: a bare ``classifier.predict(frame)`` loop and the same frames
  streamed through a ``Session(policy="fifo")`` (one producer submitting, results collected from the futures),
  round by round on the same frames, so the ratio Session / bare frames-per-second is paired per round. The
  quoted ratio is the median of the per-round ratios, with their 10th–90th percentile.
* ``load`` — `producers` threads each submitting frames into one Session (zero-shot: ``frames_zeroshot`` each;
  TPT with 64 views: ``frames_tpt`` each): latest-wins unpaced (as fast as the threads can) and paced (each
  thread a camera at `ZEROSHOT_RATE_HZ` / `CAMERA_RATE_HZ`), and fifo. Checked by a done-callback on every
  future (the bench keeps no future or result, so the RSS is the Session's): every future completed exactly
  once, none left pending, done + dropped (+ failed) == submitted (fifo: nothing dropped), every served result
  filed under its own sequence number and timestamp and (zero-shot) the bare classifier's label for its frame,
  the session's own counters agreeing; RSS sampled along the run and judged flat by
  `online_memory.memory_verdict`; throughput and p50/p99 latency.
* ``faults`` — fifo load (zero-shot; TPT with a fifth of its frames) with an injected failure on every
  ``fail_every``-th call: every failed frame's future holds the exception, the frames after it are served, the
  counters add up.

The ``latest`` runs are unpaced (the producers submit as fast as they can), so they stress the drop path:
almost every frame is dropped, and the worker shares the interpreter with four busy producers.
* ``budget`` — TPT on a random-weight `budget_model` bundle at C = `budget_classes`: `budget_frames` frames with
  ``budget_ms`` (median service time and views used), beside `reference_frames` frames at the full 64 views.
"""

from __future__ import annotations

import gc
import logging
import statistics
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from edgeclip.bench.common import class_names, model_label, progress_bar, random_weight_bundle
from edgeclip.bench.memory import status_kb
from edgeclip.bench.online_memory import VERDICT_RULE, memory_verdict
from edgeclip.bench.report import write_report
from edgeclip.data import shapes
from edgeclip.data.streams import held_out
from edgeclip.runtime.model import EdgeClip, load
from edgeclip.runtime.session import Session

__all__ = ["PARTS", "bench_session", "write_session_report"]

log = logging.getLogger(__name__)

PARTS = ("throughput", "load", "faults", "budget")
REPORT_NAME = "session"
THROUGHPUT_GOAL = 0.90
#: the paced runs: each producer thread submits at this rate (a camera), zero-shot and TPT
ZEROSHOT_RATE_HZ = 100.0
CAMERA_RATE_HZ = 30.0


def _frames(n: int) -> tuple[np.ndarray, list[str]]:
    """`n` held-out micro frames, the shifts taken in turn (uint8 [n, 64, 64, 3])."""
    per = -(-n // len(shapes.SHIFTS))
    blocks = [held_out(s, per).images for s in shapes.SHIFTS]
    return np.concatenate(blocks)[:n], list(shapes.SHIFTS)


def _rss_mb() -> float | None:
    kb = status_kb("VmRSS")
    return None if kb is None else kb / 1024.0


def _pct(values: Sequence[float], q: float) -> float:
    return float(np.percentile(np.asarray(values, dtype=np.float64), q))


# -- throughput --------------------------------------------------------------------------------------------
def _bare_fps(clf: Any, frames: np.ndarray) -> float:
    t0 = time.perf_counter()
    for f in frames:
        clf.predict(f)
    return len(frames) / (time.perf_counter() - t0)


def _session_fps(session: Session, frames: np.ndarray) -> float:
    t0 = time.perf_counter()
    futures = [session.submit(f) for f in frames]
    for fut in futures:
        fut.result()
    return len(frames) / (time.perf_counter() - t0)


def throughput(model: EdgeClip, names: list[str], *, frames: int, rounds: int,
               tick: Callable[[], None] = lambda: None) -> dict[str, Any]:
    """Session (fifo) against a bare predict loop on the same frames, `rounds` paired rounds."""
    data, _ = _frames(frames)
    clf = model.classifier(names)
    bare, sess, ratios = [], [], []
    with Session(model, names, policy="fifo") as session:
        _bare_fps(clf, data[:32])
        _session_fps(session, data[:32])
        for i in range(rounds):
            order = [("bare", lambda: _bare_fps(clf, data)), ("session", lambda: _session_fps(session, data))]
            got = dict((k, fn()) for k, fn in (order if i % 2 == 0 else order[::-1]))
            bare.append(got["bare"])
            sess.append(got["session"])
            ratios.append(got["session"] / got["bare"])
            tick()
    ratio = statistics.median(ratios)
    return {"frames_per_round": frames, "rounds": rounds, "bare_fps": bare, "session_fps": sess,
            "bare_fps_median": statistics.median(bare), "session_fps_median": statistics.median(sess),
            "ratio": ratio, "ratio_lo": _pct(ratios, 10), "ratio_hi": _pct(ratios, 90),
            "goal": THROUGHPUT_GOAL, "met": bool(ratio >= THROUGHPUT_GOAL)}


# -- load ----------------------------------------------------------------------------------------------------
class _Injector:
    """Wraps a method's `_predict` to raise on every `every`-th call (counted)."""

    def __init__(self, method: Any, every: int) -> None:
        self.every = every
        self.calls = 0
        self.raised = 0
        self._lock = threading.Lock()
        inner = method._predict

        def flaky(images: Any) -> Any:
            with self._lock:
                self.calls += 1
                fail = self.calls % self.every == 0
                self.raised += int(fail)
            if fail:
                raise RuntimeError("injected failure")
            return inner(images)

        method._predict = flaky


# outcome codes of a frame, filled in by the done-callback
_PENDING, _DONE, _DROPPED, _FAILED, _CANCELLED = 0, 1, 2, 3, 4


class _Ledger:
    """What the done-callbacks saw, per sequence number, in preallocated arrays: the bench keeps no future and
    no result, so the RSS it samples is the Session's own."""

    def __init__(self, total: int) -> None:
        self.calls = np.zeros(total, dtype=np.int32)
        self.outcome = np.zeros(total, dtype=np.int8)
        self.label = np.full(total, -1, dtype=np.int64)
        self.frame = np.full(total, -1, dtype=np.int64)
        self.seq_ok = np.ones(total, dtype=bool)
        self.ts_ok = np.ones(total, dtype=bool)
        self.injected_errors = 0
        self.other_errors = 0
        self._lock = threading.Lock()

    def done(self, fut: Any) -> None:
        with self._lock:
            i = fut.seq
            self.calls[i] += 1
            if fut.cancelled():
                self.outcome[i] = _DROPPED if fut.dropped else _CANCELLED
                return
            exc = fut.exception()
            if exc is not None:
                self.outcome[i] = _FAILED
                if "injected" in str(exc):
                    self.injected_errors += 1
                else:
                    self.other_errors += 1
                return
            pred = fut.result()
            self.outcome[i] = _DONE
            self.label[i] = int(pred.labels[0])
            self.seq_ok[i] = pred.seq == i
            self.ts_ok[i] = pred.timestamp == fut.timestamp


def load_run(model: EdgeClip, names: list[str], *, method: str, policy: str, producers: int, per_producer: int,
             expected: np.ndarray | None, data: np.ndarray, fail_every: int | None = None,
             rate_hz: float | None = None, samples: int = 40, tick: Callable[[int], None] = lambda n: None,
             **method_config: Any) -> dict[str, Any]:
    """`producers` threads × `per_producer` frames into one Session (each thread at `rate_hz` frames per second,
    or as fast as it can); the checks of the module docstring."""
    total = producers * per_producer
    ledger = _Ledger(total)
    rss: list[dict[str, Any]] = []
    gc.collect()
    rss.append({"frame": 0, "rss_mb": _rss_mb()})
    session = Session(model, names, method=method, policy=policy, **method_config)
    injector = _Injector(session.method, fail_every) if fail_every else None
    every = max(1, per_producer // samples)

    def produce(k: int) -> None:
        t_next = time.perf_counter()
        for i in range(per_producer):
            j = (k * per_producer + i) % len(data)
            fut = session.submit(data[j], timestamp=float(k * per_producer + i))
            ledger.frame[fut.seq] = j
            fut.add_done_callback(ledger.done)
            del fut
            if k == 0 and (i + 1) % every == 0:
                st = session.stats()
                rss.append({"frame": st.done + st.dropped + st.failed, "rss_mb": _rss_mb()})
                tick(every * producers)
            if rate_hz is not None:
                t_next += 1.0 / rate_hz
                time.sleep(max(0.0, t_next - time.perf_counter()))

    t0 = time.perf_counter()
    threads = [threading.Thread(target=produce, args=(k,), name=f"producer-{k}") for k in range(producers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    session.close(drain=True)  # serves what is still queued, joins the workers: every future is complete
    wall = time.perf_counter() - t0
    stats = session.stats()
    gc.collect()
    rss.append({"frame": total, "rss_mb": _rss_mb()})
    out = ledger.outcome
    served = out == _DONE
    n_done, n_dropped, n_failed = int(served.sum()), int((out == _DROPPED).sum()), int((out == _FAILED).sum())
    failed_seqs = np.flatnonzero(out == _FAILED)
    checks = {
        "every_future_completed_once": bool((ledger.calls == 1).all()),
        "no_future_left_pending": bool((out != _PENDING).all()),
        "result_seq_matches_future": bool(ledger.seq_ok[served].all()),
        "timestamps_match": bool(ledger.ts_ok[served].all()),
        "counts_add_up": (stats.submitted == total and stats.done == n_done and stats.failed == n_failed
                          and stats.dropped == n_dropped and stats.pending == 0
                          and stats.done + stats.dropped + stats.failed + stats.cancelled == total),
        "fifo_drops_nothing": policy != "fifo" or n_dropped == 0,
        "no_unexpected_errors": ledger.other_errors == 0,
    }
    if expected is not None:
        checks["labels_match_bare"] = bool((ledger.label[served] == expected[ledger.frame[served]]).all())
    if injector is not None:
        checks["failures_are_the_injected_ones"] = n_failed == injector.raised == ledger.injected_errors
        checks["served_after_failures"] = bool(failed_seqs.size) and bool(
            (np.flatnonzero(served) > failed_seqs.min()).any())
    verdict = memory_verdict(rss, warmup=max(1, total // 10))
    lat = stats.latency_ms
    return {
        "method": method, "policy": policy, "producers": producers, "per_producer": per_producer,
        "rate_hz": rate_hz, "submitted": total, "done": n_done, "dropped": n_dropped, "failed": n_failed,
        "injected": None if injector is None else injector.raised, "wall_s": wall,
        "served_fps": n_done / wall, "submitted_fps": total / wall,
        "p50_ms": lat.get("latency", {}).get("p50"), "p99_ms": lat.get("latency", {}).get("p99"),
        "service_p50_ms": lat.get("service", {}).get("p50"), "service_p99_ms": lat.get("service", {}).get("p99"),
        "checks": checks, "ok": all(checks.values()) and verdict["constant"] is not False,
        "memory": verdict, "rss_samples": rss, "stats": stats.to_dict(),
    }


# -- budget --------------------------------------------------------------------------------------------------
def budget_run(model: EdgeClip, *, classes: int, budget_ms: float, frames: int, reference_frames: int,
               n_views: int = 64, tick: Callable[[], None] = lambda: None) -> dict[str, Any]:
    """TPT with `budget_ms` on `frames` frames, beside TPT at `n_views` on `reference_frames` frames."""
    names = class_names(classes)
    data, _ = _frames(max(frames, reference_frames))
    out: dict[str, Any] = {"classes": classes, "budget_ms": budget_ms, "n_views": n_views}
    with Session(model, names, method="tpt", n_views=n_views) as full:
        ref = []
        for f in data[:reference_frames]:
            ref.append(full.predict(f).timings["service"] * 1e3)
            tick()
    with Session(model, names, method="tpt", budget_ms=budget_ms, n_views=n_views) as s:
        service, views, fallback = [], [], 0
        for f in data[:frames]:
            p = s.predict(f)
            service.append(p.timings["service"] * 1e3)
            views.append(int(p.info["views"]))
            fallback += int("fallback" in p.info)
            tick()
        summary = s.stats().budget
    median = statistics.median(service)
    out.update(full_views_ms=ref, full_views_median_ms=statistics.median(ref), service_ms=service,
               views=views, median_ms=median, p90_ms=_pct(service, 90), views_median=statistics.median(views),
               fallbacks=fallback, latency_model=summary, met=bool(median <= budget_ms))
    return out


# -- the benchmark -------------------------------------------------------------------------------------------
def bench_session(bundle: str | Path | None = None, *, parts: Sequence[str] | None = None, producers: int = 4,
                  frames_zeroshot: int = 5000, frames_tpt: int = 500, throughput_frames: int = 500,
                  throughput_rounds: int = 10, fail_every: int = 97, budget_model: str | None = "ViT-B-32",
                  budget_classes: int = 10, budget_ms: float = 1000.0, budget_frames: int = 20,
                  reference_frames: int = 3, cache_dir: str | Path = "bench-results/bundles",
                  threads: int | None = None, progress: bool = False) -> dict[str, Any]:
    """Run the chosen `parts` (default: all; see the module docstring) and return the results (JSON-ready)."""
    parts = PARTS if parts is None else tuple(parts)
    unknown = set(parts) - set(PARTS)
    if unknown:
        raise ValueError(f"unknown parts {sorted(unknown)}; choose from {', '.join(PARTS)}")
    model = load(bundle, threads=threads)
    names = shapes.class_names()
    results: dict[str, Any] = {"config": {
        "bundle": str(model.bundle.path), "model": model_label(model.bundle), "backend": model.backend,
        "threads": threads, "parts": list(parts), "producers": producers, "frames_zeroshot": frames_zeroshot,
        "frames_tpt": frames_tpt, "throughput_frames": throughput_frames, "throughput_rounds": throughput_rounds,
        "fail_every": fail_every, "budget_model": budget_model, "budget_classes": budget_classes,
        "budget_ms": budget_ms, "budget_frames": budget_frames, "reference_frames": reference_frames},
        "memory_rule": VERDICT_RULE}
    if "throughput" in parts:
        bar = progress_bar(throughput_rounds, "throughput", "round", progress)
        results["throughput"] = throughput(model, names, frames=throughput_frames, rounds=throughput_rounds,
                                           tick=lambda: bar.update(1))
        bar.close()
    data, _ = _frames(512)
    expected = model.classifier(names).predict(data).labels.numpy()
    runs = []
    plan: list[tuple[str, str, int, int | None]] = []
    if "load" in parts:
        plan += [("zeroshot", "latest", frames_zeroshot, None, None),
                 ("zeroshot", "latest", frames_zeroshot, None, ZEROSHOT_RATE_HZ),
                 ("zeroshot", "fifo", frames_zeroshot, None, None),
                 ("tpt", "latest", frames_tpt, None, None), ("tpt", "latest", frames_tpt, None, CAMERA_RATE_HZ),
                 ("tpt", "fifo", frames_tpt, None, None)]
    if "faults" in parts:
        plan += [("zeroshot", "fifo", frames_zeroshot, fail_every, None),
                 ("tpt", "fifo", max(1, frames_tpt // 5), fail_every, None)]
    for method, policy, per, fail, rate in plan:
        desc = f"{method} {policy}" + (f" {rate:g} Hz" if rate else "") + (" +faults" if fail else "")
        bar = progress_bar(producers * per, desc, "frame", progress)
        run = load_run(model, names, method=method, policy=policy, producers=producers, per_producer=per,
                       expected=expected if method == "zeroshot" else None, data=data, fail_every=fail,
                       rate_hz=rate, tick=bar.update)
        bar.close()
        log.info("%s: %s", desc, "ok" if run["ok"] else "FAILED")
        runs.append(run)
    if runs:
        results["load"] = runs
    if "budget" in parts:
        bmodel = model if budget_model is None else load(random_weight_bundle(budget_model, cache_dir,
                                                                              progress=progress), threads=threads)
        bar = progress_bar(budget_frames + reference_frames, "budget", "frame", progress)
        results["budget"] = {"model": model_label(bmodel.bundle), "backend": bmodel.backend,
                             **budget_run(bmodel, classes=budget_classes, budget_ms=budget_ms, frames=budget_frames,
                                          reference_frames=reference_frames, tick=lambda: bar.update(1))}
        bar.close()
    results["ok"] = all(r["ok"] for r in runs) and all(
        results[k]["met"] for k in ("throughput", "budget") if k in results)
    return results


def _notes(results: dict[str, Any]) -> list[str]:
    notes = []
    t = results.get("throughput")
    if t:
        notes.append(f"Session (fifo) / bare predict loop, zero-shot: {t['ratio']:.3f}× "
                     f"[{t['ratio_lo']:.3f}, {t['ratio_hi']:.3f}] (median of {t['rounds']} paired rounds of "
                     f"{t['frames_per_round']} frames; goal ≥ {t['goal']:.2f}: {'met' if t['met'] else 'MISSED'})")
    for r in results.get("load", []):
        failed = [k for k, v in r["checks"].items() if not v]
        paced = f" at {r['rate_hz']:g} Hz per thread" if r.get("rate_hz") else ""
        notes.append(f"{r['method']} {r['policy']}{paced}{' +faults' if r['injected'] is not None else ''}: "
                     f"{r['submitted']} submitted, {r['done']} done, {r['dropped']} dropped, {r['failed']} failed; "
                     f"memory {'flat' if r['memory']['constant'] else 'NOT flat' if r['memory']['constant'] is False else 'unjudged'}; "  # noqa: E501
                     f"checks {'all passed' if not failed else 'FAILED: ' + ', '.join(failed)}")
    b = results.get("budget")
    if b:
        notes.append(f"budget {b['budget_ms']:g} ms, TPT on {b['model']} at C = {b['classes']}: median "
                     f"{b['median_ms']:.0f} ms with a median of {b['views_median']:g} views "
                     f"({'met' if b['met'] else 'MISSED'}); {b['n_views']} views take "
                     f"{b['full_views_median_ms']:.0f} ms")
    return notes


def write_session_report(results: dict[str, Any], out_dir: str | Path) -> dict[str, Path]:
    """Write ``out_dir/session.json`` and ``.md``; returns their paths."""
    rows = [{k: r.get(k) for k in ("method", "policy", "rate_hz", "submitted", "done", "dropped", "failed",
                                   "served_fps", "p50_ms", "p99_ms", "ok")} for r in results.get("load", [])]
    payload = {**results, "rows": rows, "notes": _notes(results)}
    return write_report(payload, Path(out_dir), REPORT_NAME)
