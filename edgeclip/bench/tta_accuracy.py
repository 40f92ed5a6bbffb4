"""`edgeclip bench tta --part accuracy`: every method's accuracy and per-image latency on the held-out stream.

On the embedded micro bundle, every shift of the procedural dataset's *held-out* stream
(`edgeclip.data.streams.held_out`, never used for tuning; the validation stream is never touched here) and the
class-imbalanced stream (`imbalanced`): accuracy of zero-shot (the classifier on the plain image), TPT,
PromptSync episodic and online (``mode="online"`` with a `PrototypeBank`), ZERO, online prototypes, and the
reference TPT (`ReferenceTPT`, on the first `n_reference` frames of each stream, because it is slow). Every frame
is one timed ``predict`` call, so latency is per image (median, p90 over the frames). PromptSync and online
prototypes get the class prototypes of the disjoint proxy stream (``build_prototypes(model, "shapes:512")``)
unless a prototypes file is given. Averages over shifts; a PNG of mean accuracy against median latency.

Methods are compared on the same frames (`edgeclip.bench.paired`): each against zero-shot and against TPT, and
PromptSync online against PromptSync, per shift and for the mean over shifts, as the paired difference in points
with its 95 % bootstrap interval over frames. The goals say "beats" only where that interval excludes zero.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from edgeclip.bench.common import cuda_sync, model_label, progress_bar
from edgeclip.bench.figures import save_figure
from edgeclip.bench.kernels import noisy_frame
from edgeclip.bench.memory import MEMORY_METHODS, PeakMemory
from edgeclip.bench.method_factory import DEFAULT_PROTOTYPES, METHODS, load_prototypes, make_method
from edgeclip.bench.paired import MEAN, N_RESAMPLES, PairedDifference, paired_differences
from edgeclip.bench.report import add_busy_note, cpu_snapshot, other_cpu_load
from edgeclip.bench.timing import TimingStats
from edgeclip.data import shapes
from edgeclip.data.streams import EVAL_SEED, IMBALANCED_SEED, held_out, imbalanced
from edgeclip.runtime.model import EdgeClip

log = logging.getLogger(__name__)

__all__ = [
    "ACCURACY_COLUMNS",
    "COMPARISONS",
    "GOALS",
    "HELD_OUT",
    "IMBALANCED",
    "METHODS",
    "REF_SUBSET",
    "accuracy_part",
    "compare_methods",
    "goals",
    "plot_accuracy",
]

REF_SUBSET = "tpt@reference-frames"  # edgeclip TPT on the frames the reference saw (a table row, no extra run)
HELD_OUT, IMBALANCED = "held-out", "imbalanced"
ACCURACY_COLUMNS_BASE = ["stream", "method", "n"]
ACCURACY_COLUMNS_TAIL = ["mean", "median_ms", "p90_ms", "peak_mb", "other_load"]
ACCURACY_COLUMNS = [*ACCURACY_COLUMNS_BASE, *shapes.SHIFTS, *ACCURACY_COLUMNS_TAIL]
#: (method, baseline) pairs compared on the same frames, where both ran
COMPARISONS: tuple[tuple[str, str], ...] = (
    *((m, "zero-shot") for m in METHODS if m not in ("zero-shot", "tpt-reference")),
    *((m, "tpt") for m in METHODS if m not in ("zero-shot", "tpt", "tpt-reference")),
    ("promptsync-online", "promptsync"),
    (REF_SUBSET, "tpt-reference"),
)
#: goal -> (method, baseline, kind): "beats" is met only when the interval lies above zero, "at least" unless it
#: lies below zero
GOALS: dict[str, tuple[str, str, str]] = {"promptsync > tpt": ("promptsync", "tpt", "beats"),
                                          "tpt >= zero-shot": ("tpt", "zero-shot", "at least"),
                                          "promptsync-online > promptsync": ("promptsync-online", "promptsync",
                                                                             "beats")}
CI_LEVEL = 0.95


def _run_stream(key: str, model: EdgeClip, names: list[str], protos: Any, images: np.ndarray, labels: np.ndarray,
                *, n_views: int, seed: int, memory: PeakMemory, sync: Callable[[], Any] | None,
                tick: Callable[[], None]) -> dict[str, Any]:
    """One method on one stream, fresh state, one timed `predict` per frame; peak memory from before the
    method is built to after its last frame."""
    snap = cpu_snapshot()
    memory.start()
    method = make_method(key, model, names, protos, n_views, seed)
    times_ms, correct, stages = [], [], {}
    for frame, label in zip(images, labels, strict=True):
        if sync is not None:
            sync()
        t0 = time.perf_counter()
        pred = method.predict(frame)
        if sync is not None:
            sync()
        times_ms.append((time.perf_counter() - t0) * 1e3)
        correct.append(bool(int(pred.labels[0]) == int(label)))
        for k, v in pred.timings.items():
            stages[k] = stages.get(k, 0.0) + v
        tick()
    peak = memory.stop()
    guard = getattr(method, "guard", None)
    online = getattr(method, "mode", "episodic") == "online"
    n = len(correct)
    return {"n": n, "correct": correct, "accuracy": 100.0 * sum(correct) / n, "times_ms": times_ms,
            "peak_mb": peak, "stages_ms": {k: 1e3 * v / n for k, v in stages.items()},
            "skipped_steps": getattr(method, "skipped_steps", None),
            "collapse_resets": guard.resets if (guard is not None and online) else None,
            "other_load": other_cpu_load(snap, cpu_snapshot())}


def _summary_row(stream: str, method: str, runs: dict[str, dict[str, Any]], n_frames: int) -> dict[str, Any]:
    """One table row: accuracy per shift and averaged, latency over every frame of every shift."""
    times = [t for r in runs.values() for t in r["times_ms"]]
    st = TimingStats.from_samples(times)
    row: dict[str, Any] = {"stream": stream, "method": method, "n": n_frames}
    row.update({shift: r["accuracy"] for shift, r in runs.items()})
    loads = [r["other_load"] for r in runs.values() if r.get("other_load") is not None]
    peaks = [r["peak_mb"] for r in runs.values() if r.get("peak_mb") is not None]
    row.update(mean=float(np.mean([r["accuracy"] for r in runs.values()])), median_ms=st.median_ms, p90_ms=st.p90_ms,
               mean_ms=st.mean_ms, peak_mb=max(peaks) if peaks else None, other_load=max(loads) if loads else None,
               shifts=list(runs), frames=len(times))
    return row


def compare_methods(runs: dict[tuple[str, str], dict[str, dict[str, Any]]], *, n_resamples: int = N_RESAMPLES,
                    seed: int = 0) -> list[dict[str, Any]]:
    """Every `COMPARISONS` pair that ran on the same frames, per stream: the paired difference in points with
    its `CI_LEVEL` bootstrap interval, per shift and for the mean over the stream's shifts
    (`paired_differences`). One dict per (stream, method, baseline): ``{"stream", "method", "baseline", "n",
    "by_shift": {shift | "mean": PairedDifference.to_dict()}}``."""
    out = []
    streams = dict.fromkeys(stream for stream, _ in runs)
    for stream in streams:
        for method, baseline in COMPARISONS:
            a, b = runs.get((stream, method)), runs.get((stream, baseline))
            if a is None or b is None or list(a) != list(b):
                continue
            if any(a[s]["n"] != b[s]["n"] for s in a):
                continue  # not the same frames (the reference runs on fewer)
            diffs = paired_differences({s: a[s]["correct"] for s in a}, {s: b[s]["correct"] for s in b},
                                       n_resamples=n_resamples, level=CI_LEVEL, seed=seed)
            out.append({"stream": stream, "method": method, "baseline": baseline, "n": a[next(iter(a))]["n"],
                        "by_shift": {k: v.to_dict() for k, v in diffs.items()}})
    return out


def _comparison_table(comparisons: list[dict[str, Any]], shift_cols: list[str]) -> dict[str, Any]:
    """The comparisons as a Markdown table: one row per (stream, method, baseline), a cell per shift and the mean:
    ``+1.2 [−0.4, +2.9]`` (points, 95 % interval), bold where the interval excludes zero."""
    rows = []
    for c in comparisons:
        row: dict[str, Any] = {"stream": c["stream"], "method": c["method"], "vs": c["baseline"], "n": c["n"]}
        for key in [*shift_cols, MEAN]:
            d = c["by_shift"].get(key)
            if d is not None:
                text = PairedDifference(d["diff"], d["lo"], d["hi"], d["n"], d["level"]).format()
                row[key] = f"**{text}**" if d["significant"] else text
        rows.append(row)
    return {"title": f"Paired differences in accuracy (points, {100 * CI_LEVEL:g} % bootstrap interval over frames)",
            "columns": ["stream", "method", "vs", "n", *shift_cols, MEAN], "rows": rows}


def goals(comparisons: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The accuracy goals (`GOALS`) on the held-out mean, judged on the paired interval: a method "beats" its
    baseline only where the interval lies above zero; otherwise "no significant difference" (or "worse" where
    it lies below). ``met`` is whether the goal holds under that rule."""
    by_pair = {(c["method"], c["baseline"]): c["by_shift"][MEAN] for c in comparisons if c["stream"] == HELD_OUT}
    out = {}
    for name, (method, baseline, kind) in GOALS.items():
        d = by_pair.get((method, baseline))
        if d is None:
            continue
        met = d["verdict"] == "beats" if kind == "beats" else d["verdict"] != "worse"
        out[name] = {"met": met, "verdict": d["verdict"], "diff": d["diff"], "lo": d["lo"], "hi": d["hi"]}
    return out


def _goal_note(result: dict[str, dict[str, Any]]) -> str:
    parts = [f"{name}: {'yes' if g['met'] else 'no'} ({g['verdict']}, {g['diff']:+.1f} points, interval "
             f"[{g['lo']:+.1f}, {g['hi']:+.1f}])" for name, g in result.items()]
    return (f"goals (held-out mean, paired {100 * CI_LEVEL:g} % bootstrap interval over frames; \"beats\" only where "
            "the interval excludes zero): " + ("; ".join(parts) if parts else "none could be judged"))


def accuracy_part(model: EdgeClip, *, n: int, n_reference: int, shifts: list[str], imbalanced_shifts: list[str],
                  methods: list[str], prototypes: str | Path | None, n_views: int, seed: int, device: str,
                  progress: bool) -> dict[str, Any]:
    """Run the accuracy part (see the module docstring); a `write_report` dict with ``goals``, ``comparisons``
    (`compare_methods`) and ``details`` (one entry per stream, shift and method, per-frame correctness included)."""
    names = shapes.class_names()
    need_protos = any(m in ("promptsync", "promptsync-online", "online-prototypes") for m in methods)
    protos = load_prototypes(model, names, prototypes, progress) if need_protos else None
    memory = PeakMemory(device)
    sync = cuda_sync(device)
    n_ref = min(n_reference, n)
    streams = [(HELD_OUT, s) for s in shifts] + [(IMBALANCED, s) for s in imbalanced_shifts]
    per_method = {m: (n_ref if m == "tpt-reference" else n) for m in methods}
    warm_frame = noisy_frame(64, 64, seed=seed).numpy()  # not from any stream: only wakes up lazy state
    for key in methods:  # one untimed call each (ORT arenas, thread pools, autograd) before anything is measured
        make_method(key, model, names, protos, n_views, seed).predict(warm_frame)
    bar = progress_bar(len(streams) * sum(per_method.values()), "bench tta accuracy", "frame", progress)
    snap_start = cpu_snapshot()
    details: list[dict[str, Any]] = []
    runs: dict[tuple[str, str], dict[str, dict[str, Any]]] = {}
    try:
        for stream, shift in streams:
            batch = held_out(shift, n) if stream == HELD_OUT else imbalanced(shift, n)
            labels = np.asarray(batch.labels)
            for key in methods:
                bar.set_postfix_str(f"{stream} {shift} {key}")
                m = per_method[key]
                r = _run_stream(key, model, names, protos, batch.images[:m], labels[:m], n_views=n_views, seed=seed,
                                memory=memory, sync=sync, tick=lambda: bar.update(1))
                runs.setdefault((stream, key), {})[shift] = r
                details.append({"stream": stream, "shift": shift, "method": key, **r})
                log.info("%s %s %s: %.1f%% (n=%d), median %.1f ms", stream, shift, key, r["accuracy"], r["n"],
                         float(np.median(r["times_ms"])))
            if "tpt" in methods and "tpt-reference" in methods:  # edgeclip TPT on the reference's frames
                tpt = runs[(stream, "tpt")][shift]
                sub = {"n": n_ref, "correct": tpt["correct"][:n_ref],
                       "accuracy": 100.0 * sum(tpt["correct"][:n_ref]) / n_ref, "times_ms": tpt["times_ms"][:n_ref],
                       "peak_mb": None, "other_load": tpt["other_load"]}
                runs.setdefault((stream, REF_SUBSET), {})[shift] = sub
    finally:
        bar.close()

    rows = []
    order = [*methods, REF_SUBSET]
    for stream in (HELD_OUT, IMBALANCED):
        for key in order:
            if (stream, key) in runs:
                rows.append(_summary_row(stream, key, runs[(stream, key)], per_method.get(key, n_ref)))
    comparisons = compare_methods(runs, seed=seed)
    goal_result = goals(comparisons)
    label = model_label(model.bundle)
    config = {"bundle": str(model.bundle.path), "model": label, "backend": model.backend,
              "device": device, "n": n, "n_reference": n_ref, "shifts": shifts, "imbalanced_shifts": imbalanced_shifts,
              "methods": methods, "n_views": n_views, "seed": seed, "eval_seed": EVAL_SEED,
              "imbalanced_seed": IMBALANCED_SEED, "classes": names,
              "prototypes": protos.summary() if protos is not None else None,
              "prototypes_arg": str(prototypes) if prototypes is not None else DEFAULT_PROTOTYPES,
              "memory_method": memory.method, "bootstrap": {"resamples": N_RESAMPLES, "level": CI_LEVEL, "seed": seed},
              "other_load": other_cpu_load(snap_start, cpu_snapshot())}
    notes = [
        f"accuracy in % on the held-out stream (make_batch(n, seed={EVAL_SEED}, shift); never used for tuning) per "
        f"shift and its mean over shifts; the imbalanced rows are `imbalanced(shift, n)` (seed {IMBALANCED_SEED}; "
        "2 of 16 classes take 60 % of the frames). No figure here comes from the validation stream.",
        f"tpt-reference (the official TPT loop, `ReferenceTPT`) runs on the first {n_ref} frames of each stream "
        f"only (n = {n_ref}); `{REF_SUBSET}` is edgeclip's TPT on those same frames, from the same run.",
        "latency: one `predict` call per frame (one image; views, image encoder, adaptation, prediction; "
        "zero-shot: preprocessing, encoder, head), median and p90 over every frame of every shift of the stream, "
        "in ms. Each method gets fresh state for every stream; online methods carry state across its frames. "
        "Before anything is measured, each method makes one untimed call on a noise frame (no stream's image).",
        f"peak_mb: the largest over the stream's runs of the {MEMORY_METHODS[memory.method]}; the block spans "
        "building the method and all its frames (the loaded model is not counted).",
        "PromptSync (episodic and online) and online prototypes get the class prototypes "
        f"{config['prototypes_arg']!r} (the procedural proxy stream, disjoint from the evaluation seeds, unless a "
        "file is given); promptsync-online = PromptSync(mode='online', bank=PrototypeBank(...)), its collapse "
        "guard resetting on a collapsed class histogram.",
        f"{n_views} views per frame, ρ = 0.1, one step (TPT's defaults); seeds: methods and views {seed}.",
        f"paired differences (second table; `comparisons` in the JSON): accuracy of the method minus its baseline on "
        f"the same frames, in points, with the {100 * CI_LEVEL:g} % percentile bootstrap interval over frames "
        f"({N_RESAMPLES} resamples of the frames with replacement, the same frames for both methods, resampled "
        f"within each shift for the mean over shifts; seed {seed}); bold where the interval excludes zero.",
        _goal_note(goal_result),
    ]
    add_busy_note(rows, notes)
    shift_cols = [s for s in shapes.SHIFTS if s in set(shifts) | set(imbalanced_shifts)]
    return {"title": f"Test-time adaptation on {label}: accuracy and per-image latency",
            "bench": "tta-accuracy", "config": config,
            "columns": [*ACCURACY_COLUMNS_BASE, *shift_cols, *ACCURACY_COLUMNS_TAIL], "rows": rows,
            "goals": goal_result, "comparisons": comparisons, "tables": [_comparison_table(comparisons, shift_cols)],
            "details": details, "notes": notes}


def plot_accuracy(results: dict[str, Any], path: Path) -> None:
    """Mean accuracy against median latency per method (log x), held-out filled, imbalanced hollow."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(10, 5.5))
    ax = fig.add_subplot()
    colours = {m: f"C{i}" for i, m in enumerate([*METHODS, REF_SUBSET])}
    for stream, filled in ((HELD_OUT, True), (IMBALANCED, False)):
        for r in results["rows"]:
            if r["stream"] != stream or not (r.get("median_ms") or 0) > 0:
                continue
            c = colours.get(r["method"], "k")
            ax.scatter([r["median_ms"]], [r["mean"]], s=60, marker="o" if filled else "s",
                       facecolors=c if filled else "none", edgecolors=c,
                       label=f"{r['method']} ({stream})")
            if filled:
                ax.annotate(r["method"], (r["median_ms"], r["mean"]), textcoords="offset points", xytext=(5, 4),
                            fontsize=8)
    ax.set_xscale("log")
    ax.set_xlabel("median latency per image (ms, log scale)")
    ax.set_ylabel("mean accuracy over shifts (%)")
    ax.set_title(results.get("title", "accuracy vs latency"), fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0)
    save_figure(fig, path)
