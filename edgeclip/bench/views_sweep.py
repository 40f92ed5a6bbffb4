"""`edgeclip bench views`: what fewer views per frame cost in accuracy, for TPT, PromptSync and ZERO.

On the embedded micro bundle, every shift of the procedural dataset's *held-out* stream
(`edgeclip.data.streams.held_out`, never used for tuning), each view-based method runs episodically (its default)
at every view count of a list, and zero-shot (the classifier on the plain image, no views) gives the floor. The
methods are built through `edgeclip.bench.method_factory.make_method`, fresh for every (shift, method, view
count), so every setting sees the same frames and, for a given view count, the same views.

Because the frames are the same, settings are compared paired (`edgeclip.bench.paired`): each method at each view
count against the same method at the largest view count, and against zero-shot, per shift and for the mean over
shifts, as the difference in points with its 95 % percentile bootstrap interval over frames.

Every frame is one timed ``predict`` call (views, image encoder, adaptation, prediction); the median and p90 per
setting are what this machine measured (the report records the CPU, its SIMD flags and how busy other processes
kept it). Accuracy does not depend on the timing.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from edgeclip.bench.common import model_label, progress_bar, torch_threads
from edgeclip.bench.figures import check_matplotlib, save_figure
from edgeclip.bench.kernels import noisy_frame
from edgeclip.bench.method_factory import DEFAULT_PROTOTYPES, load_prototypes, make_method
from edgeclip.bench.paired import MEAN, N_RESAMPLES, PairedDifference, paired_differences
from edgeclip.bench.report import add_busy_note, cpu_snapshot, machine_info, other_cpu_load, write_report
from edgeclip.bench.timing import TimingStats
from edgeclip.data import shapes
from edgeclip.data.streams import EVAL_SEED, held_out
from edgeclip.errors import InputError
from edgeclip.kernels.select_confident import n_selected
from edgeclip.runtime.model import EdgeClip, load

log = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_N",
    "DEFAULT_VIEWS",
    "FLOOR",
    "REPORT_NAME",
    "VIEW_METHODS",
    "bench_views",
    "check_views",
    "parse_views",
    "plot_views",
    "write_views_report",
]

REPORT_NAME = "views-accuracy"
#: the view-based methods this bench sweeps (bench keys of `make_method`), in the report's order
VIEW_METHODS = ("tpt", "promptsync", "zero")
#: the floor: zero-shot on the plain image (no views)
FLOOR = "zero-shot"
#: view counts swept by default; `ViewConfig` accepts any n_views >= 1 (view 0 is always the plain view)
DEFAULT_VIEWS = (1, 2, 4, 8, 16, 32, 64)
DEFAULT_N = 256
CI_LEVEL = 0.95
_NEEDS_PROTOTYPES = ("promptsync",)
COLUMNS_BASE = ["method", "n_views", "confident", "n"]
COLUMNS_TAIL = ["mean", "vs_largest", "vs_largest_lo", "vs_largest_hi", "vs_zero_shot", "median_ms", "p90_ms",
                "other_load"]


def check_views(views: Sequence[Any]) -> list[int]:
    """The view counts as sorted distinct ints, each >= 1, at least two of them (`InputError` otherwise)."""
    if isinstance(views, (str, bytes)):
        raise InputError(f"views must be a list of integers, got {views!r}")
    out = []
    for v in views:
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
            raise InputError(f"every view count must be an integer >= 1 (view 0 is the plain image), got {v!r}")
        out.append(int(v))
    out = sorted(set(out))
    if len(out) < 2:
        raise InputError(f"the sweep needs at least two distinct view counts to compare, got {list(views)}")
    return out


def parse_views(text: str) -> list[int]:
    """``"4,8,16"`` -> ``[4, 8, 16]`` (`check_views`); `InputError` naming the bad value otherwise."""
    parts = [p.strip() for p in str(text).split(",")]
    values = []
    for p in parts:
        try:
            values.append(int(p))
        except ValueError:
            raise InputError(f"views: expected comma-separated integers >= 1, e.g. 4,8,16,32,64, got {text!r} "
                             f"({p!r} is not an integer)") from None
    return check_views(values)


def _check(n: int, methods: Sequence[str], shifts: Sequence[str], threads: int | None, n_resamples: int,
           seed: int) -> None:
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise InputError(f"n (frames per shift) must be an integer >= 1, got {n!r}")
    if not methods:
        raise InputError(f"no methods to sweep; choose from {', '.join(VIEW_METHODS)}")
    bad = [m for m in methods if m not in VIEW_METHODS]
    if bad:
        raise InputError(f"unknown or viewless method(s) {bad}; choose from {', '.join(VIEW_METHODS)} (zero-shot "
                         "always runs as the floor)")
    if not shifts:
        raise InputError(f"no shifts to run; valid shifts: {', '.join(shapes.SHIFTS)}")
    unknown = [s for s in shifts if s not in shapes.SHIFTS]
    if unknown:
        raise InputError(f"unknown shift(s) {unknown}; valid shifts: {', '.join(shapes.SHIFTS)}")
    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
        raise InputError(f"threads must be an integer >= 1, got {threads!r}")
    if isinstance(n_resamples, bool) or not isinstance(n_resamples, int) or n_resamples < 1:
        raise InputError(f"n_resamples must be an integer >= 1, got {n_resamples!r}")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise InputError(f"seed must be an integer >= 0, got {seed!r}")


def _run(method: Any, images: np.ndarray, labels: np.ndarray, tick: Callable[[], None]) -> dict[str, Any]:
    """One fresh method on one shift's frames, one timed `predict` per frame."""
    snap = cpu_snapshot()
    times_ms, correct = [], []
    for frame, label in zip(images, labels, strict=True):
        t0 = time.perf_counter()
        pred = method.predict(frame)
        times_ms.append((time.perf_counter() - t0) * 1e3)
        correct.append(bool(int(pred.labels[0]) == int(label)))
        tick()
    return {"correct": correct, "times_ms": times_ms, "other_load": other_cpu_load(snap, cpu_snapshot()),
            "skipped_steps": getattr(method, "skipped_steps", None)}


def _setting(method: str, n_views: int | None) -> str:
    return method if n_views is None else f"{method}@{n_views}"


def _compare(runs: dict[str, dict[str, dict[str, Any]]], methods: Sequence[str], views: Sequence[int], *,
             n_resamples: int, seed: int) -> list[dict[str, Any]]:
    """Paired differences of every (method, n) against the same method at the largest n and against zero-shot."""
    top = max(views)
    out = []
    for m in methods:
        for v in views:
            a = runs[_setting(m, v)]
            pairs = [(_setting(m, top), m, top)] if v != top else []
            pairs.append((FLOOR, FLOOR, None))
            for key, base, base_n in pairs:
                b = runs[key]
                diffs = paired_differences({s: r["correct"] for s, r in a.items()},
                                           {s: r["correct"] for s, r in b.items()},
                                           n_resamples=n_resamples, level=CI_LEVEL, seed=seed)
                out.append({"method": m, "n_views": v, "baseline": base, "baseline_n_views": base_n,
                            "n": len(next(iter(a.values()))["correct"]),
                            "by_shift": {k: d.to_dict() for k, d in diffs.items()}})
    return out


def _row(method: str, n_views: int | None, confident: int | None, by_shift: dict[str, dict[str, Any]],
         n: int) -> dict[str, Any]:
    times = [t for r in by_shift.values() for t in r["times_ms"]]
    st = TimingStats.from_samples(times)
    row: dict[str, Any] = {"method": method, "n_views": n_views, "confident": confident, "n": n}
    acc = {s: 100.0 * float(np.mean(r["correct"])) for s, r in by_shift.items()}
    row.update(acc)
    loads = [r["other_load"] for r in by_shift.values() if r["other_load"] is not None]
    row.update(mean=float(np.mean(list(acc.values()))), median_ms=st.median_ms, p90_ms=st.p90_ms,
               mean_ms=st.mean_ms, other_load=max(loads) if loads else None, frames=len(times))
    return row


def _diff_table(comparisons: list[dict[str, Any]], baseline: str, shifts: list[str], title: str) -> dict[str, Any]:
    rows = []
    for c in comparisons:
        if (c["baseline"] == FLOOR) != (baseline == FLOOR):
            continue
        row: dict[str, Any] = {"method": c["method"], "n_views": c["n_views"],
                               "vs": _setting(c["baseline"], c["baseline_n_views"]), "n": c["n"]}
        for key in [*shifts, MEAN]:
            d = c["by_shift"][key]
            text = PairedDifference(d["diff"], d["lo"], d["hi"], d["n"], d["level"]).format()
            row[key] = f"**{text}**" if d["significant"] else text
        rows.append(row)
    return {"title": title, "columns": ["method", "n_views", "vs", "n", *shifts, MEAN], "rows": rows}


def bench_views(
    bundle: str | Path | None = None,
    *,
    n: int = DEFAULT_N,
    views: Sequence[int] = DEFAULT_VIEWS,
    methods: Sequence[str] = VIEW_METHODS,
    shifts: Sequence[str] | None = None,
    prototypes: str | Path | None = None,
    seed: int = 0,
    threads: int | None = None,
    backend: str = "auto",
    n_resamples: int = N_RESAMPLES,
    out_dir: str | Path | None = None,
    progress: bool = False,
    command: str | None = None,
) -> dict[str, Any]:
    """Accuracy and per-frame latency of each view-based method at each view count (see the module docstring).

    Args:
        bundle: bundle directory (None: the embedded micro CLIP).
        n: held-out frames per shift (the same frames for every setting).
        views: view counts per frame (at least two distinct, each >= 1); the largest is every method's reference.
        methods: a subset of `VIEW_METHODS`; zero-shot always runs as the floor.
        shifts: held-out shifts (default: every shift in `edgeclip.data.shapes.SHIFTS`).
        prototypes: PromptSync's class prototypes: a saved prototypes file, or a spec or folder for
            `build_prototypes` (None: "shapes:512", the disjoint proxy stream).
        seed: seeds the methods' view generators and the bootstrap.
        threads: PyTorch and ONNX Runtime threads (None: library defaults).
        backend: the encoders' backend ("auto", "torch", "onnxruntime").
        n_resamples: bootstrap resamples of the paired intervals.
        out_dir: if given, ``views-accuracy.json``, ``.md`` and ``.png`` are written there.
        progress: a tqdm bar over the frames (stderr).
        command: the command line that ran the bench, recorded in the report.

    Returns:
        A `write_report` dict: ``rows`` (one per method and view count, zero-shot first), ``comparisons`` (paired
        differences per shift and for the mean), ``details`` (per shift and setting: per-frame correctness as a
        0/1 string, latency summary), ``config``, ``notes``, ``machine`` and ``files`` (empty without `out_dir`).
    """
    view_list = check_views(views)
    method_list = list(dict.fromkeys(methods))
    shift_list = list(shapes.SHIFTS) if shifts is None else list(dict.fromkeys(shifts))
    _check(n, method_list, shift_list, threads, n_resamples, seed)
    n = int(n)
    if out_dir is not None:
        check_matplotlib()  # fail now, not after the run
    top = max(view_list)
    names = shapes.class_names()
    with torch_threads(threads):
        model: EdgeClip = load(bundle, backend=backend, threads=threads)
        protos = (load_prototypes(model, names, prototypes, progress)
                  if any(m in _NEEDS_PROTOTYPES for m in method_list) else None)
        settings: list[tuple[str, int | None]] = [(FLOOR, None), *((m, v) for m in method_list for v in view_list)]
        warm = noisy_frame(64, 64, seed=seed).numpy()  # no stream's image: wakes lazy state, arenas, thread pools
        rho: dict[str, float] = {}
        modes: dict[str, str] = {}
        for m, v in settings:
            w = make_method(m, model, names, protos, v or 1, seed)
            w.predict(warm)
            if v is not None:
                rho[m], modes[m] = float(w.rho), str(w.mode)
        bar = progress_bar(len(shift_list) * len(settings) * n, "bench views", "frame", progress)
        snap = cpu_snapshot()
        t_start = time.perf_counter()
        runs: dict[str, dict[str, dict[str, Any]]] = {}
        try:
            for shift in shift_list:
                batch = held_out(shift, n)
                labels = np.asarray(batch.labels)
                for m, v in settings:
                    bar.set_postfix_str(f"{shift} {_setting(m, v)}")
                    method = make_method(m, model, names, protos, v or 1, seed)
                    r = _run(method, batch.images, labels, lambda: bar.update(1))
                    runs.setdefault(_setting(m, v), {})[shift] = r
                    log.debug("%s %s: %.1f%%, median %.1f ms", shift, _setting(m, v),
                              100.0 * float(np.mean(r["correct"])), float(np.median(r["times_ms"])))
        finally:
            bar.close()
        wall_s = time.perf_counter() - t_start
        machine = machine_info(threads)

    rows = [_row(FLOOR, None, None, runs[FLOOR], n)]
    rows += [_row(m, v, n_selected(v, rho[m]), runs[_setting(m, v)], n) for m in method_list for v in view_list]
    comparisons = _compare(runs, method_list, view_list, n_resamples=n_resamples, seed=seed)
    by = {(c["method"], c["n_views"], c["baseline"]): c["by_shift"][MEAN] for c in comparisons}
    for row in rows[1:]:
        m, v = row["method"], row["n_views"]
        d = by.get((m, v, m))
        row.update(vs_largest=0.0 if v == top else d["diff"], vs_largest_lo=None if d is None else d["lo"],
                   vs_largest_hi=None if d is None else d["hi"],
                   vs_largest_significant=None if d is None else d["significant"],
                   vs_zero_shot=by[(m, v, FLOOR)]["diff"])
    details = [{"shift": s, "method": m, "n_views": v, "n": n, "accuracy": 100.0 * float(np.mean(r["correct"])),
                "correct": "".join("1" if c else "0" for c in r["correct"]),
                "latency_ms": TimingStats.from_samples(r["times_ms"]).to_dict(samples=False),
                "skipped_steps": r["skipped_steps"], "other_load": r["other_load"]}
               for (m, v) in settings for s, r in runs[_setting(m, v)].items()]
    label = model_label(model.bundle)
    config = {"bundle": str(model.bundle.path), "model": label, "backend": model.backend, "n": n,
              "views": view_list, "largest": top, "methods": method_list,
              "mode": next(iter(modes.values())) if len(set(modes.values())) == 1 else modes, "shifts": shift_list,
              "seed": seed, "eval_seed": EVAL_SEED, "threads": threads, "rho": rho,
              "prototypes": protos.summary() if protos is not None else None,
              "prototypes_arg": str(prototypes) if prototypes is not None else DEFAULT_PROTOTYPES,
              "bootstrap": {"resamples": n_resamples, "level": CI_LEVEL, "seed": seed},
              "wall_s": wall_s, "other_load": other_cpu_load(snap, cpu_snapshot())}
    notes = _notes(config, machine)
    add_busy_note(rows, notes, effect="the latency columns are inflated (accuracy is unaffected)")
    tables = [
        _diff_table(comparisons, "largest", shift_list, f"Paired differences against the same method at "
                    f"{top} views (points, {100 * CI_LEVEL:g} % bootstrap interval over frames)"),
        _diff_table(comparisons, FLOOR, shift_list, f"Paired differences against zero-shot (points, "
                    f"{100 * CI_LEVEL:g} % bootstrap interval over frames)"),
    ]
    results: dict[str, Any] = {
        "title": f"Accuracy against views per frame on {label}: {', '.join(method_list)} (episodic) and zero-shot",
        "bench": REPORT_NAME, "config": config, "columns": [*COLUMNS_BASE, *shift_list, *COLUMNS_TAIL],
        "rows": rows, "comparisons": comparisons, "tables": tables, "details": details, "notes": notes,
        "machine": machine, "command": command, "files": {}}
    if out_dir is not None:
        results["files"] = write_views_report(results, out_dir, command=command)
    return results


def _notes(cfg: dict[str, Any], machine: dict[str, Any]) -> list[str]:
    simd = " ".join(machine.get("simd") or []) or "unknown"
    return [
        f"accuracy in % on the held-out stream (make_batch(n, seed={cfg['eval_seed']}, shift); never used for "
        f"tuning), {cfg['n']} frames per shift, the same frames for every row; mean = mean over the "
        f"{len(cfg['shifts'])} shifts.",
        "every method runs episodically (its default: adapt on the frame's views, predict the plain view, reset), "
        "built fresh through the bench method factory for every shift and view count, with the views' seed "
        f"{cfg['seed']}; view 0 is always the plain image, so n_views = 1 adapts (or votes) on the plain view only.",
        "confident = views kept as the most confident, max(1, int(ρ · n_views)) with ρ = "
        f"{', '.join(f'{m} {r:g}' for m, r in cfg['rho'].items())} (TPT's 10 % by default). TPT averages their "
        "probabilities, ZERO takes their majority vote; PromptSync keeps the plain view as well.",
        f"PromptSync's class prototypes: {cfg['prototypes_arg']!r} (the procedural proxy stream, disjoint from the "
        "evaluation seeds, unless a file is given).",
        f"vs_largest = the mean accuracy minus that of the same method at {cfg['largest']} views, paired on the same "
        f"frames, in points, with its {100 * CI_LEVEL:g} % percentile bootstrap interval (vs_largest_lo/hi; "
        f"{cfg['bootstrap']['resamples']} resamples of the frames, resampled within each shift, seed "
        f"{cfg['bootstrap']['seed']}); vs_zero_shot = the same against zero-shot. Per shift: the tables below "
        "(bold where the interval excludes zero).",
        "latency: one timed `predict` per frame (views, image encoder, adaptation, prediction; zero-shot: "
        "preprocessing, encoder, head), median and p90 over every frame of every shift, in ms, measured on this "
        f"machine: {machine.get('cpu_model') or machine.get('processor')} (SIMD: {simd}), "
        f"{machine.get('torch_threads')} torch thread(s), backend {cfg['backend']}; other_load = CPU cores other "
        "processes kept busy meanwhile. Each setting makes one untimed call on a noise frame first.",
        f"run: {cfg['wall_s']:.0f} s of frames; other processes kept {cfg['other_load']} cores busy on average.",
    ]


def plot_views(results: dict[str, Any], path: Path) -> None:
    """Mean accuracy against views per frame (log2 x), one line per method and zero-shot as a horizontal line;
    beside it, median latency per frame against views (log-log)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(12, 4.8))
    ax_a, ax_t = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
    rows = results["rows"]
    floor = next(r for r in rows if r["method"] == FLOOR)
    views = results["config"]["views"]
    for i, m in enumerate(results["config"]["methods"]):
        rs = sorted((r for r in rows if r["method"] == m), key=lambda r: r["n_views"])
        xs = [r["n_views"] for r in rs]
        ax_a.plot(xs, [r["mean"] for r in rs], "-o", color=f"C{i}", label=m)
        ax_t.plot(xs, [r["median_ms"] for r in rs], "-o", color=f"C{i}", label=m)
    for ax, value, fmt in ((ax_a, floor["mean"], "{:.1f} %"), (ax_t, floor["median_ms"], "{:.2g} ms")):
        ax.axhline(value, color="0.3", ls="--", lw=1.2, label=f"zero-shot ({fmt.format(value)})")
        ax.set_xscale("log", base=2)
        ax.set_xticks(views, [str(v) for v in views])
        ax.set_xlabel("views per frame (log2)")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8, loc="best")
    ax_a.set_ylabel("mean accuracy over shifts (%)")
    ax_a.set_title(f"held-out stream, {results['config']['n']} frames per shift, "
                   f"{len(results['config']['shifts'])} shifts", fontsize=9)
    ax_t.set_yscale("log")
    ax_t.set_ylabel("median latency per frame (ms, log)")
    m = results.get("machine") or {}
    ax_t.set_title(f"measured on this machine: {m.get('cpu_model') or m.get('processor') or '?'}, "
                   f"{m.get('torch_threads')} thread(s)", fontsize=9)
    fig.suptitle(results.get("title", "accuracy against views"), fontsize=10)
    save_figure(fig, path)


def write_views_report(results: dict[str, Any], out_dir: str | Path, *, command: str | None = None) -> dict[str, Path]:
    """Write ``out_dir/views-accuracy.json`` and ``.md`` (`write_report`) and ``.png``; returns their paths."""
    check_matplotlib()
    out = Path(out_dir).expanduser()
    payload = {k: v for k, v in results.items() if k != "files"}
    paths = dict(write_report(payload, out, REPORT_NAME, command=command))
    paths["png"] = out / f"{REPORT_NAME}.png"
    plot_views(results, paths["png"])
    return paths
