"""Result files -> Markdown tables: one renderer per kind of bench report, as the README shows it.

Each renderer takes the loaded result files of one table (`edgeclip.bench.readme_tables.load_result`: bench
reports written by `write_report`) and returns a GitHub Markdown table (`markdown_table`), nothing else: the
source caption and the README markers are `edgeclip.bench.readme_tables`' job.
"""

from __future__ import annotations

from typing import Any

from edgeclip.bench.paired import MEAN
from edgeclip.bench.report import BUSY_CORES, format_value, markdown_table

__all__ = [
    "METHOD_NAMES",
    "SHIFT_NAMES",
    "arf_claim_table",
    "arf_table",
    "clap_table",
    "encoders_precision_table",
    "encoders_table",
    "kernels_select_table",
    "kernels_table",
    "online_memory_table",
    "precision_ops_table",
    "precision_table",
    "pseudolabel_order_table",
    "pseudolabel_table",
    "session_table",
    "ship_generator_table",
    "ship_table",
    "train_cost_table",
    "train_speed_table",
    "trzsl_table",
    "tta_accuracy_table",
    "tta_paired_table",
    "tta_speed_table",
    "tta_text_table",
    "view_accuracy_table",
    "views_accuracy_table",
    "zero_shot_table",
]


# -- cell formats -----------------------------------------------------------------------------------------
def _ms(ms: float | None) -> str:
    if ms is None:
        return "–"
    return f"{ms / 1e3:.3g} s" if ms >= 1000 else f"{ms:.3g} ms"


def _mb(mb: float | None) -> str:
    if mb is None:
        return "–"
    return f"{mb / 1024:.3g} GB" if mb >= 1024 else f"{mb:.3g} MB"


def _ratio(r: dict[str, Any], key: str = "speedup") -> str:
    """``**13.8×** (12.7–15.2)``: bold when the whole range is above 1, ": slower" when it is below."""
    point, lo, hi = r.get(key), r.get(f"{key}_lo"), r.get(f"{key}_hi")
    if point is None:
        return "–"
    text = f"{point:.2f}×" if point < 10 else f"{point:.1f}×"
    if lo is not None and lo > 1.0:
        text = f"**{text}**"
    if lo is not None and hi is not None:
        text += f" ({lo:.2f}–{hi:.2f})" if hi < 10 else f" ({lo:.1f}–{hi:.1f})"
    if hi is not None and hi < 1.0:
        text += ": slower"
    return text


SHIFT_NAMES = {"gaussian_noise": "noise", "low_contrast": "low contrast", "textured_background": "textured"}
METHOD_NAMES = {"zero-shot": "zero-shot", "tpt": "TPT", "promptsync": "PromptSync",
                "promptsync-online": "PromptSync, online", "zero": "ZERO", "online-prototypes": "online prototypes",
                "tpt-reference": "official TPT loop", "tpt@reference-frames": "TPT on the official loop's frames"}


# -- renderers: result files -> Markdown table --------------------------------------------------------------
def zero_shot_table(results: list[dict[str, Any]]) -> str:
    """One row: accuracy per shift, and chance."""
    (res,) = results
    rows = res["rows"]
    row = {r["shift"]: f"{r['accuracy']:.1f}%" for r in rows}
    row["chance"] = f"{res.get('chance', rows[0].get('chance')):.2f}%"
    return markdown_table([row], [*(r["shift"] for r in rows), "chance"])


def encoders_table(results: list[dict[str, Any]]) -> str:
    """Per encoder and batch: PyTorch eager and each ONNX Runtime provider's median, the ORT speedup, and (reports
    that record it) the backend ``backend="auto"`` picks there."""
    (res,) = results
    rows = res["rows"]
    torch_ms = {(r["encoder"], r.get("requested_batch", r["batch"])): r["median_ms"] for r in rows
                if r["backend"] == "torch"}
    out = []
    for r in rows:
        if r["backend"] == "torch":
            continue
        key = (r["encoder"], r.get("requested_batch", r["batch"]))
        batch = str(key[1]) if r["batch"] == key[1] else f"{key[1]} (ran at {r['batch']}: out of memory)"
        out.append({"encoder": r["encoder"], "batch": batch, "tokens": r.get("tokens"),
                    "PyTorch eager": _ms(torch_ms.get(key)),
                    f"ONNX Runtime ({(r.get('provider') or '').replace('ExecutionProvider', '')})": _ms(r["median_ms"]),
                    "ORT speedup": _ratio(r) if r.get("error") is None else r["error"],
                    **({"auto picks": r["auto_pick"]} if r.get("auto_pick") else {})})
    cols = list(dict.fromkeys(k for r in out for k in r))
    return markdown_table(out, cols)


def _bundle_label(row: dict[str, Any]) -> str:
    model = str(row.get("model") or row.get("bundle"))
    return "micro" if row.get("bundle") == "micro" else model


def tta_speed_table(results: list[dict[str, Any]]) -> str:
    """Per bundle and class count: edgeclip's TPT, the official loop, the speedup and both peaks."""
    out = []
    for res in results:
        for r in res["rows"]:
            classes = f"{r['classes']} (its own class names)" if r.get("names") == "shapes" else str(r["classes"])
            if r.get("error"):
                out.append({"bundle, classes": f"{_bundle_label(r)}, {classes}", "speedup": r["error"]})
                continue
            out.append({"bundle, classes": f"{_bundle_label(r)}, {classes}", "edgeclip TPT": _ms(r["edgeclip_ms"]),
                        "official loop": _ms(r["reference_ms"]), "speedup": _ratio(r),
                        "peak memory (edgeclip / official)":
                            f"{_mb(r['edgeclip_peak_mb'])} / {_mb(r['reference_peak_mb'])}",
                        "same prediction on the same views": f"{100 * r['agree_same_views']:.0f} %"})
    return markdown_table(out, ["bundle, classes", "edgeclip TPT", "official loop", "speedup",
                                "peak memory (edgeclip / official)", "same prediction on the same views"])


def tta_text_table(results: list[dict[str, Any]]) -> str:
    """Per bundle (and run): the speedup of one text-path TPT step at each C, and the peaks at the largest C."""
    series: dict[str, dict[int, dict[str, Any]]] = {}
    for res in results:
        threads = res["machine"].get("threads") or res.get("config", {}).get("threads")
        busy = max((r.get("other_load") or 0.0 for r in res["rows"]), default=0.0) > BUSY_CORES
        for r in res["rows"]:
            if r.get("impl") == "edgeclip (truncated)":
                continue
            label = (f"{_bundle_label(r)}, {threads} thread{'s' if threads != 1 else ''}" if threads
                     else _bundle_label(r)) + (", busy machine" if busy else "")
            series.setdefault(label, {})[r["classes"]] = r
    edge = {(r["bundle"], r["classes"]): r for res in results for r in res["rows"]
            if r.get("impl") == "edgeclip (truncated)"}
    cs = sorted({c for by_c in series.values() for c in by_c})
    out = []
    for label, by_c in series.items():
        row: dict[str, Any] = {"text tower": label}
        for c in cs:
            r = by_c.get(c)
            if r is None:
                row[f"C = {c}"] = "–"
            elif r.get("error"):
                row[f"C = {c}"] = r["error"]
            else:
                e = edge.get((r["bundle"], c), {})
                row[f"C = {c}"] = f"{_ratio(r)}: {_ms(e.get('median_ms'))} / {_ms(r['median_ms'])}"
        top = max(c for c, r in by_c.items() if not r.get("error")) if any(
            not r.get("error") for r in by_c.values()) else None
        if top is not None:
            e = edge.get((by_c[top]["bundle"], top), {})
            row["peak memory at the largest C (edgeclip / full)"] = (
                f"{_mb(e.get('peak_mb'))} / {_mb(by_c[top]['peak_mb'])} (C = {top})")
        out.append(row)
    return markdown_table(out, ["text tower", *(f"C = {c}" for c in cs),
                                "peak memory at the largest C (edgeclip / full)"])


def _shift_cols(res: dict[str, Any]) -> list[str]:
    return [c for c in res["columns"] if c not in ("stream", "method", "n", "mean", "median_ms", "p90_ms", "peak_mb",
                                                   "other_load")]


def tta_accuracy_table(results: list[dict[str, Any]]) -> str:
    """Per method: held-out accuracy per shift and its mean, the imbalanced stream, median ms per frame; the best
    mean and the best imbalanced figure in bold. The official loop (fewer frames) is left to the paired table."""
    (res,) = results
    held = {r["method"]: r for r in res["rows"] if r["stream"] == "held-out"}
    imb = {r["method"]: r for r in res["rows"] if r["stream"] == "imbalanced"}
    shifts = [s for s in _shift_cols(res) if s in next(iter(held.values()), {})]
    methods = [m for m in held if m not in ("tpt-reference", "tpt@reference-frames")]
    best_mean = max((held[m]["mean"] for m in methods), default=None)
    best_imb = max((imb[m]["mean"] for m in methods if m in imb), default=None)
    out = []
    for m in methods:
        r = held[m]
        row: dict[str, Any] = {"method": METHOD_NAMES.get(m, m)}
        row.update({SHIFT_NAMES.get(s, s): f"{r[s]:.1f}" for s in shifts})
        row["mean"] = f"**{r['mean']:.1f}**" if r["mean"] == best_mean else f"{r['mean']:.1f}"
        if m in imb:
            v = imb[m]["mean"]
            row["imbalanced"] = f"**{v:.1f}**" if v == best_imb else f"{v:.1f}"
        row["ms/frame"] = format_value(r["median_ms"])
        out.append(row)
    cols = ["method", *(SHIFT_NAMES.get(s, s) for s in shifts), "mean", *(["imbalanced"] if imb else []), "ms/frame"]
    return markdown_table(out, cols)


def tta_paired_table(results: list[dict[str, Any]]) -> str:
    """Paired differences (points, 95 % bootstrap interval over frames) per shift, mean and imbalanced stream;
    bold where the interval excludes zero."""
    (res,) = results

    def cell(d: dict[str, Any] | None) -> str:
        if d is None:
            return "–"
        text = f"{d['diff']:+.1f} [{d['lo']:+.1f}, {d['hi']:+.1f}]"
        return f"**{text}**" if d["significant"] else text

    imb = {(c["method"], c["baseline"]): c for c in res.get("comparisons", []) if c["stream"] == "imbalanced"}
    out, shifts = [], []
    for c in res.get("comparisons", []):
        if c["stream"] != "held-out":
            continue
        shifts = [s for s in c["by_shift"] if s != MEAN]
        row: dict[str, Any] = {"method": METHOD_NAMES.get(c["method"], c["method"]),
                               "vs": METHOD_NAMES.get(c["baseline"], c["baseline"]), "frames": c["n"]}
        row.update({SHIFT_NAMES.get(s, s): cell(c["by_shift"][s]) for s in shifts})
        row["mean"] = cell(c["by_shift"][MEAN])
        other = imb.get((c["method"], c["baseline"]))
        row["imbalanced"] = cell(other["by_shift"][MEAN]) if other else "–"
        out.append(row)
    return markdown_table(out, ["method", "vs", "frames", *(SHIFT_NAMES.get(s, s) for s in shifts), "mean",
                                "imbalanced"])


def _isa(res: dict[str, Any]) -> str:
    native = (res.get("config") or {}).get("native_kernel") or {}
    march = native.get("march")
    label = {"avx512": "AVX-512", "avx2": "AVX2", "sse4.1": "SSE4.1", "neon": "NEON"}.get(native.get("isa"),
                                                                                          native.get("isa") or "?")
    return label + (f" (`-march={march}`)" if march and march != "native" else " (native build)")


def kernels_table(results: list[dict[str, Any]]) -> str:
    """Per native build (one result file each) and frame size: edgeclip's `augment_views` against TPT's PIL loop
    and torchvision v2 per view, with the speedups."""
    out = []
    for res in results:
        rows = [r for r in res["rows"] if r["case"] == "augment_views"]
        for shape in dict.fromkeys(r["shape"] for r in rows):
            by = {r["impl"].split("[")[0]: r for r in rows if r["shape"] == shape}
            edge, pil, tv2 = by.get("edgeclip:native"), by.get("PIL loop (TPT)"), by.get("tv2 per view")
            if edge is None:
                continue
            out.append({"view kernel build": _isa(res),
                        "PyTorch kernels": str(res["machine"].get("torch_cpu_capability") or "?"),
                        "views from": shape.split(" ")[0],
                        "edgeclip": _ms(edge["median_ms"]),
                        "TPT's PIL loop": "–" if pil is None else f"{_ms(pil['median_ms'])}: {_ratio(pil)}",
                        "torchvision v2 per view": "–" if tv2 is None else f"{_ms(tv2['median_ms'])}: {_ratio(tv2)}",
                        "parity (mean / max, /255)": "–" if tv2 is None or tv2.get("parity_mean") is None else
                            f"{255 * tv2['parity_mean']:.2f} / {255 * tv2['parity_max']:.2f}"})
    return markdown_table(out, ["view kernel build", "PyTorch kernels", "views from", "edgeclip", "TPT's PIL loop",
                                "torchvision v2 per view", "parity (mean / max, /255)"])


def kernels_select_table(results: list[dict[str, Any]]) -> str:
    """`cosine_logits` + `select_confident` against the plain torch sequence, per shape (the first file)."""
    res = results[0]
    rows = [r for r in res["rows"] if r["case"] == "cosine+select"]
    out = []
    for shape in dict.fromkeys(r["shape"] for r in rows):
        by = {r["impl"]: r for r in rows if r["shape"] == shape}
        edge = next((r for k, r in by.items() if k.startswith("edgeclip")), None)
        peer = next((r for k, r in by.items() if not k.startswith("edgeclip")), None)
        if edge is None or peer is None:
            continue
        out.append({"shape": shape, "edgeclip": _ms(edge["median_ms"]), "torch ops (TPT)": _ms(peer["median_ms"]),
                    "ratio": _ratio(peer)})
    return markdown_table(out, ["shape", "edgeclip", "torch ops (TPT)", "ratio"])


def view_accuracy_table(results: list[dict[str, Any]]) -> str:
    """TPT's held-out accuracy per shift with edgeclip's views and torchvision's views of the same boxes."""
    (res,) = results
    out = [{"shift": SHIFT_NAMES.get(r["shift"], r["shift"]), "frames": r["n"],
            "TPT, edgeclip views": f"{r['tpt_kernel']:.2f}", "TPT, torchvision views": f"{r['tpt_torchvision']:.2f}",
            "difference (points)": f"{r['diff_points']:+.2f}", "same prediction": f"{r['same_prediction']:.1f} %"}
           for r in res["rows"]]
    return markdown_table(out, ["shift", "frames", "TPT, edgeclip views", "TPT, torchvision views",
                                "difference (points)", "same prediction"])


def online_memory_table(results: list[dict[str, Any]]) -> str:
    """The memory figures of a long online run: RSS level and trend against the tolerance, the method's own state,
    gc-tracked objects, accuracy over the stream, collapse resets, time per frame."""
    (res,) = results
    s, cfg = res["summary"], res["config"]

    def mb(v: Any) -> str:
        return "–" if v is None else f"{v:.2f} MB" if abs(v) < 10 else f"{v:.0f} MB"

    rows = [
        ("frames (shift changes every)", f"{s.get('frames_done')} ({cfg.get('segment')})"),
        ("RSS at the end of the warm-up / at the end", f"{mb(s.get('rss_warmup_mb'))} / {mb(s.get('rss_end_mb'))}"),
        ("level growth (median of the last fifth − first fifth)", mb(s.get("level_growth_mb"))),
        ("fitted trend over the run", f"{mb(s.get('trend_mb'))} ({s.get('slope_mb_per_1k_frames', 0):+.3f} MB per "
                                      "1000 frames)"),
        ("tolerance", mb(s.get("tolerance_mb"))),
        ("highest RSS after the warm-up (a transient peak)", mb(s.get("rss_max_after_warmup_mb"))),
        ("constant memory", {True: "**yes**", False: "**no**"}.get(s.get("constant"), "–")),
    ]
    measured = [r for r in res["rows"] if r.get("phase", "measured") == "measured"]
    state = [r["state_bytes"] for r in measured if r.get("state_bytes") is not None]
    if state:
        rows.append(("method state after the warm-up (bank, prompts, optimiser, caches), min / max",
                     f"{min(state):,} / {max(state):,} bytes"))
    gc = [r["gc_objects"] for r in measured if r.get("gc_objects") is not None]
    if gc:
        rows.append(("gc-tracked objects after the warm-up, first / last sample", f"{gc[0]:,} / {gc[-1]:,}"))
    for key, label in (("accuracy", "accuracy over the stream"), ("collapse_resets", "collapse resets"),
                       ("median_ms", "median ms per frame")):
        if s.get(key) is not None:
            v = s[key]
            rows.append((label, f"{v:.1f} %" if key == "accuracy" else format_value(v)))
    return markdown_table([{"figure": a, "value": b} for a, b in rows], ["figure", "value"])


def views_accuracy_table(results: list[dict[str, Any]]) -> str:
    """Per method: mean held-out accuracy at each view count and, below the largest count, the paired difference
    against the same method at the largest count (points, 95 % bootstrap interval over frames; bold where it
    excludes zero). Zero-shot, which takes no views, shows the same figure under every count."""
    (res,) = results
    views = list(res["config"]["views"])
    top = max(views)

    def col(v: int) -> str:
        return f"n = {v} (reference)" if v == top else f"n = {v}"

    out = []
    floor = next((r for r in res["rows"] if r["method"] == "zero-shot"), None)
    for m in res["config"]["methods"]:
        row: dict[str, Any] = {"method": METHOD_NAMES.get(m, m)}
        for r in res["rows"]:
            if r["method"] != m:
                continue
            text = f"{r['mean']:.1f}"
            if r["n_views"] != top and r.get("vs_largest_lo") is not None:
                diff = f"{r['vs_largest']:+.1f} [{r['vs_largest_lo']:+.1f}, {r['vs_largest_hi']:+.1f}]"
                text += f" ({'**' + diff + '**' if r.get('vs_largest_significant') else diff})"
            row[col(r["n_views"])] = text
        out.append(row)
    if floor is not None:
        same = {col(v): f"{floor['mean']:.1f}" for v in views}
        out.append({"method": "zero-shot (the plain image, no views)", **same})
    return markdown_table(out, ["method", *(col(v) for v in views)])


def session_table(results: list[dict[str, Any]]) -> str:
    """`edgeclip bench session`: the throughput ratio against a bare loop, every load run's counts and checks,
    and TPT under a latency budget."""
    (res,) = results
    rows: list[list[str]] = []
    t = res.get("throughput")
    if t:
        rows.append(["zero-shot throughput, Session (fifo) / bare predict loop",
                     f"**{t['ratio']:.3f}×** [{t['ratio_lo']:.3f}, {t['ratio_hi']:.3f}] ({t['rounds']} paired rounds; "
                     f"{t['session_fps_median']:.0f} vs {t['bare_fps_median']:.0f} frames/s; goal ≥ {t['goal']:.2f}: "
                     f"{'met' if t['met'] else 'missed'})"])
    for r in res.get("load", []):
        mem = r["memory"]
        flat = {True: "flat", False: "**not flat**"}.get(mem.get("constant"), "not judged")
        failed = [k for k, v in r["checks"].items() if not v]
        what = f"{r['method']}, {r['policy']}, {r['producers']} threads × {r['per_producer']:,}"
        what += f" at {r['rate_hz']:g} frames/s each" if r.get("rate_hz") else (
            " as fast as they can" if r["policy"] == "latest" else "")
        what += f", a failure every {res['config']['fail_every']} calls" if r.get("injected") is not None else ""
        rows.append([what, f"{r['done']:,} done, {r['dropped']:,} dropped, {r['failed']:,} failed; "
                           f"{r['served_fps']:.0f} served/s; latency p50 {format_value(r['p50_ms'])} ms, p99 "
                           f"{format_value(r['p99_ms'])} ms; RSS {flat} ({mem.get('level_growth_mb', 0):+.1f} MB); "
                           + ("every check passed" if not failed else "**failed: " + ", ".join(failed) + "**")])
    b = res.get("budget")
    if b:
        rows.append([f"TPT on {b['model']}, C = {b['classes']}, budget {b['budget_ms']:g} ms",
                     f"median {b['median_ms']:.0f} ms (p90 {b['p90_ms']:.0f}) with a median of {b['views_median']:g} "
                     f"views ({'met' if b['met'] else '**missed**'}; {b['fallbacks']} zero-shot fallbacks); "
                     f"{b['n_views']} views: {b['full_views_median_ms']:.0f} ms"])
    return markdown_table([{"run": a, "result": c} for a, c in rows], ["run", "result"])


def _table(res: dict[str, Any], column: str) -> dict[str, Any]:
    """The first extra table of a report that has a column named `column`."""
    return next(t for t in res["tables"] if column in t["columns"])


def pseudolabel_table(results: list[dict[str, Any]]) -> str:
    """`edgeclip bench pseudolabel`: accuracy per shift of zero-shot and each run, and each run's mean difference
    against zero-shot (points, paired 95 % interval; bold where it excludes zero)."""
    (res,) = results
    shifts = list(res["config"]["shifts"])
    diffs = {d["method"]: d["detail"][MEAN] for d in res["differences"]}
    out = []
    for r in res["rows"]:
        row = {"method": r["method"], **{SHIFT_NAMES.get(s, s): f"{r[s]:.1f}" for s in shifts},
               "mean": f"{r['mean']:.1f}"}
        d = diffs.get(r["method"])
        text = "" if d is None else f"{d['diff']:+.1f} [{d['lo']:+.1f}, {d['hi']:+.1f}]"
        row["mean − zero-shot"] = f"**{text}**" if d is not None and (d["lo"] > 0 or d["hi"] < 0) else text
        out.append(row)
    return markdown_table(out, ["method", *(SHIFT_NAMES.get(s, s) for s in shifts), "mean", "mean − zero-shot"])


def pseudolabel_order_table(results: list[dict[str, Any]]) -> str:
    """The same report's paired differences between neighbouring runs (GRIP − IFPL, IFPL − FPL, variants)."""
    (res,) = results
    t = _table(res, "comparison")
    shifts = list(res["config"]["shifts"])
    rows = [{"comparison": r["comparison"], **{SHIFT_NAMES.get(s, s): r[s] for s in shifts}, "mean": r["mean"]}
            for r in t["rows"]]
    return markdown_table(rows, ["comparison", *(SHIFT_NAMES.get(s, s) for s in shifts), "mean"])


def trzsl_table(results: list[dict[str, Any]]) -> str:
    """`edgeclip bench trzsl`: per shift the seen / unseen accuracy and H of zero-shot and the strategy, and the H
    difference with its paired 95 % interval (bold where it excludes zero); the mean over shifts last."""
    (res,) = results
    strategy = res["config"]["strategy"]
    by = {(r["shift"], r["method"]): r for r in res["rows"]}
    out = []
    for d in res["differences"]:
        sh = d["shift"]
        diff = f"{d['diff']:+.1f} [{d['lo']:+.1f}, {d['hi']:+.1f}]"
        row = {"shift": SHIFT_NAMES.get(sh, sh)}
        if sh == MEAN:
            row.update({"zero-shot seen / unseen / H": f"H {res['mean_h']['zero-shot']:.1f}",
                        f"{strategy} seen / unseen / H": f"H {res['mean_h'][strategy]:.1f}"})
        else:
            for m in ("zero-shot", strategy):
                r = by[(sh, m)]
                row[f"{m} seen / unseen / H"] = f"{r['seen']:.1f} / {r['unseen']:.1f} / {r['H']:.1f}"
        row["H difference"] = f"**{diff}**" if d["lo"] > 0 or d["hi"] < 0 else diff
        out.append(row)
    return markdown_table(out, ["shift", "zero-shot seen / unseen / H", f"{strategy} seen / unseen / H",
                                "H difference"])


def ship_table(results: list[dict[str, Any]]) -> str:
    """`edgeclip bench ship`: base, new and H per domain and method, and each SHIP variant's H difference against
    CoOp alone (paired 95 % interval) with its verdict."""
    (res,) = results
    verdicts = {(d["domain"], d["SHIP variant"]): f"{d['H']} ({d['verdict (H)']})"
                for d in _table(res, "SHIP variant")["rows"]}
    out = [{"domain": SHIFT_NAMES.get(r["domain"], r["domain"]), "method": r["method"], "base": f"{r['base']:.1f}",
            "new": f"{r['new']:.1f}", "H": f"{r['H']:.1f}",
            "H − CoOp alone": verdicts.get((r["domain"], r["method"]), "")} for r in res["rows"]]
    return markdown_table(out, ["domain", "method", "base", "new", "H", "H − CoOp alone"])


def ship_generator_table(results: list[dict[str, Any]]) -> str:
    """The same report's check of the synthetic features against real new-class frames."""
    (res,) = results
    t = _table(res, "source")
    rows = [{"domain": SHIFT_NAMES.get(r["domain"], r["domain"]), "features of the new classes": r["source"],
             "nearest-mean accuracy": f"{r['prototype acc']:.1f}", "cos to real mean": f"{r['cos to real mean']:.3f}",
             "spread (real)": f"{r['spread']:.3f} ({r['real spread']:.3f})"} for r in t["rows"]]
    return markdown_table(rows, ["domain", "features of the new classes", "nearest-mean accuracy",
                                 "cos to real mean", "spread (real)"])


def train_speed_table(results: list[dict[str, Any]]) -> str:
    """`edgeclip bench train`, one row per report: per-epoch time and peak memory of both implementations and the
    speed-up with its spread."""
    out = []
    for res in results:
        rows = {r["implementation"]: r for r in res["rows"]}
        ours, theirs = rows["edgeclip"], rows["official structure"]
        s = res["speedup"]
        out.append({"model": f"{res['config']['model']}, C = {res['config']['classes']}",
                    "edgeclip epoch": _ms(ours["epoch_median_ms"]), "official structure epoch":
                    _ms(theirs["epoch_median_ms"]),
                    "speed-up [10th, 90th pct]": f"**{s['ratio']:.1f}×** [{s['ratio_lo']:.1f}, {s['ratio_hi']:.1f}]",
                    "peak memory, edgeclip / official": f"{_mb(ours['peak_mb'])} / {_mb(theirs['peak_mb'])}"})
    return markdown_table(out, ["model", "edgeclip epoch", "official structure epoch", "speed-up [10th, 90th pct]",
                                "peak memory, edgeclip / official"])


def clap_table(results: list[dict[str, Any]]) -> str:
    """`edgeclip bench clap`: every metric per method, mean ± std over the seeds, and the paired difference in last
    accuracy against each baseline (all seeds) with its verdict."""
    (res,) = results
    rows = [dict(r) for r in res["rows"]]
    diffs = {r["comparison"].split(" − ")[1]: f"{r['all seeds']} ({r['verdict']})"
             for r in _table(res, "comparison")["rows"]}
    for r in rows:
        r["last: CLAP − this"] = diffs.get(r["method"], "")
    return markdown_table(rows, [*res["columns"], "last: CLAP − this"])


def train_cost_table(results: list[dict[str, Any]]) -> str:
    """`edgeclip bench train --method clap|arf`, one row per measured step of every report: wall time (median
    [min, max] over the rounds), per epoch, peak memory."""
    out = []
    for res in results:
        for r in res["rows"]:
            out.append({"model": f"{res['config']['model']}, C = {res['config']['classes']}",
                        "step": f"{r['method']}: {r['what']}",
                        "wall time": f"{_ms(1e3 * r['wall_s'])} [{_ms(1e3 * r['wall_s_min'])}, "
                                     f"{_ms(1e3 * r['wall_s_max'])}]",
                        "per epoch": _ms(1e3 * r["per_epoch_s"]), "peak memory": _mb(r["peak_mb"])})
        w = res.get("workstation_over_device")
        if w:
            out.append({"model": f"{res['config']['model']}, C = {res['config']['classes']}",
                        "step": "arf: workstation / device, per epoch",
                        "wall time": f"{w['median']:.1f}× [{w['min']:.1f}, {w['max']:.1f}]", "per epoch": "",
                        "peak memory": ""})
    return markdown_table(out, ["model", "step", "wall time", "per epoch", "peak memory"])


def arf_table(results: list[dict[str, Any]]) -> str:
    """`edgeclip bench arf`: accuracy (%) per mode and method in-distribution, under shift (mean) and on the
    held-out classes (mean; among themselves and among all classes), with ARF's paired differences against
    plain fine-tuning (95 % CI; bold where it excludes zero)."""
    (res,) = results
    diffs = {(r["mode"], r["comparison"]): r for r in _table(res, "comparison")["rows"]}
    of16 = {(r["mode"], r["row"]): r for r in _table(res, "row")["rows"]}
    out = []
    for r in res["rows"]:
        row = {"mode": r["mode"], "method": r["method"], "in-distribution": f"{r['ID']:.1f}",
               "other shifts (mean)": f"{r['shift mean']:.1f}", "held-out classes (mean)": f"{r['held-out mean']:.1f}"}
        h = of16.get((r["mode"], r["method"]))
        row["held-out among all classes"] = f"{h['mean']:.1f}" if h is not None else ""
        out.append(row)
        if r["method"] == "ARF":
            d = next((v for (m, c), v in diffs.items() if m == r["mode"] and c.endswith("plain FT")), None)
            if d is not None:
                d16 = of16.get((r["mode"], "ARF − plain FT"))
                out.append({"mode": r["mode"], "method": "ARF − plain FT", "in-distribution": d["ID"],
                            "other shifts (mean)": d["shift mean"], "held-out classes (mean)": d["held-out mean"],
                            "held-out among all classes": d16["mean"] if d16 is not None else ""})
    return markdown_table(out, ["mode", "method", "in-distribution", "other shifts (mean)",
                                "held-out classes (mean)", "held-out among all classes"])


def arf_claim_table(results: list[dict[str, Any]]) -> str:
    """The same report's verdict on the paper's claim, per mode and baseline."""
    (res,) = results
    t = _table(res, "claim holds")
    return markdown_table(t["rows"], t["columns"])


def precision_table(results: list[dict[str, Any]]) -> str:
    """`edgeclip bench precision`, one block of rows per report: FP32 and INT8 time per encoder and batch, the
    INT8 speed-up (median of paired rounds, 10th–90th percentile; bold where the whole range is above 1), and
    for a bundle that knows the classes the mean zero-shot / TPT accuracy with both and the paired difference."""
    out = []
    for res in results:
        model = res["config"]["model"]
        for r in res["rows"]:
            out.append({"model": model, "what": f"{r['encoder']}, batch {r['batch']}",
                        "FP32": _ms(r["fp32_ms"]), "INT8": _ms(r["int8_ms"]),
                        "INT8 speed-up": _ratio(r)})
        acc = res.get("accuracy")
        if acc:
            for row in acc["rows"]:
                if row["encoder"] == "INT8 − FP32":
                    worst = acc[f"{row['method']}_worst_shift_loss"]
                    out.append({"model": model, "what": f"{row['method']} accuracy, mean over shifts (points)",
                                "FP32": "", "INT8": "", "INT8 speed-up": f"INT8 − FP32 {row['mean']}; largest loss "
                                                                         f"on one shift {worst:+.1f}"})
    return markdown_table(out, ["model", "what", "FP32", "INT8", "INT8 speed-up"])


def encoders_precision_table(results: list[dict[str, Any]]) -> str:
    """`edgeclip bench encoders --precision fp32,int8`, one block of rows per report: per encoder and batch, the
    FP32 and INT8 onnxruntime medians timed round-robin in the same run and INT8's speed-up over FP32 (median of
    the paired rounds, 10th–90th percentile; bold where the whole range is above 1)."""
    out = []
    for res in results:
        model = res["config"]["model"]
        rows = res["rows"]
        fp32 = {(r["encoder"], r["requested_batch"], r["provider"]): r for r in rows
                if r["backend"] == "onnxruntime" and r.get("precision", "fp32") == "fp32"}
        for r in rows:
            if r["backend"] != "onnxruntime" or r.get("precision", "fp32") == "fp32":
                continue
            ref = fp32.get((r["encoder"], r["requested_batch"], r["provider"]))
            what = f"{r['encoder']}{' (FP32 in both)' if r['encoder'] == 'text' else ''}, batch {r['requested_batch']}"
            out.append({"model": model, "what": what, "FP32": _ms(ref["median_ms"] if ref else None),
                        r["precision"].upper(): _ms(r["median_ms"]),
                        f"{r['precision'].upper()} vs FP32": _ratio(r, "vs_fp32") if r.get("error") is None
                        else r["error"]})
    cols = list(dict.fromkeys(k for r in out for k in r))
    return markdown_table(out, cols)


def precision_ops_table(results: list[dict[str, Any]]) -> str:
    """`edgeclip bench precision`'s op profile, one block per report: where the image encoder's kernel time goes
    in FP32 and INT8 at the largest batch, and the most INT8 GEMMs alone could win (Amdahl)."""
    out = []
    for res in results:
        ops = res.get("op_profile")
        if not ops:
            continue
        model = f"{res['config']['model']}, batch {ops['batch']}"
        for r in ops["rows"]:
            name = r["op"] + (" (GEMM)" if r.get("gemm") else "")
            out.append({"model": model, "op": f"**{name}**" if r["op"] == "total" else name,
                        "FP32": f"{_ms(r['fp32_ms'])} ({100 * r['fp32_share']:.0f} %)",
                        "INT8": f"{_ms(r['int8_ms'])} ({100 * r['int8_share']:.0f} %)"})
        out.append({"model": model, "op": "INT8 bound with free GEMMs (FP32 total / FP32 outside the GEMMs)",
                    "FP32": "", "INT8": f"{ops['int8_bound']:.2f}×"})
    return markdown_table(out, ["model", "op", "FP32", "INT8"])
