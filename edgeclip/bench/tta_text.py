"""`edgeclip bench tta --part text-stress`: the text path of one TPT step against the number of classes.

One TPT step (text forward + backward + AdamW step + forward) for C synthetic classes on fixed random image
embeddings: edgeclip's `TPT.adapt` (tower truncated to the longest prompt) against the reference's loop (full
77-token sequence), timed round-robin, with a PNG of latency and peak memory against C.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from edgeclip.bench.common import class_names, cuda_sync, guard_oom, model_label, progress_bar
from edgeclip.bench.figures import save_figure
from edgeclip.bench.memory import MEMORY_METHODS, PeakMemory
from edgeclip.bench.method_factory import make_tpt
from edgeclip.bench.report import add_busy_note, cpu_snapshot, other_cpu_load
from edgeclip.bench.timing import RATIO_NOTE, paired_calls, ratio_with_spread
from edgeclip.runtime.model import EdgeClip

log = logging.getLogger(__name__)

__all__ = ["EDGE_TEXT", "REF_TEXT", "TEXT_COLUMNS", "TEXT_MIN_ROUNDS", "plot_text", "text_part"]

TEXT_MIN_ROUNDS = 2
TEXT_COLUMNS = ["bundle", "classes", "impl", "tokens", "n", "median_ms", "p90_ms", "peak_mb", "speedup", "speedup_lo",
                "speedup_hi", "memory_ratio", "other_load"]
EDGE_TEXT, REF_TEXT = "edgeclip (truncated)", "reference (full length)"


def _text_case(model: EdgeClip, label: str, n_classes: int, *, n_views: int, repeats: int, time_budget_s: float,
               seed: int, device: str, memory: PeakMemory) -> list[dict[str, Any]]:
    """One TPT step on the text path for C classes, edgeclip (truncated) vs the reference (full length)."""
    from edgeclip.bench.peers.tpt_reference import ReferenceTPT

    names = class_names(n_classes, seed)
    g = torch.Generator().manual_seed(seed)
    embeds = torch.randn(n_views, model.bundle.embed_dim, generator=g).to(model.device)  # (N, D) fixed "views"
    feats = F.normalize(embeds, dim=-1)
    edge = make_tpt(model, names, n_views=n_views, seed=seed)
    ref = ReferenceTPT(model, names, n_views=n_views, seed=seed)
    ref.image_features = lambda views: feats[: views.shape[0]]  # type: ignore[method-assign]  # text path only
    dummy = torch.zeros(n_views, 3, 1, 1, device=model.device)  # (N, 3, 1, 1): only its N is read

    def edge_step(_: int) -> Any:
        out = edge.adapt(embeds)  # forward, backward, AdamW step, forward (truncated tower)
        edge.reset()
        return out

    def ref_step(_: int) -> Any:
        return ref.adapt_views_logits(dummy)  # reset, forward, backward, AdamW step, forward (77 tokens)

    fns = {EDGE_TEXT: edge_step, REF_TEXT: ref_step}
    sync = cuda_sync(device)
    snap = cpu_snapshot()
    warm = {}
    for lbl, fn in fns.items():  # one untimed call each (allocator, thread pools, autograd)
        memory.start()
        fn(0)
        warm[lbl] = memory.stop()
    calls = paired_calls(fns, repeats, memory=memory, sync=sync, max_time=time_budget_s,
                         min_rounds=min(TEXT_MIN_ROUNDS, repeats))
    other = other_cpu_load(snap, cpu_snapshot())
    tokens = {EDGE_TEXT: int(edge.prompt.build(edge.class_names)[1].max()) + 1, REF_TEXT: ref.tower.context_length}
    rows = []
    e = calls.stats[EDGE_TEXT]
    for lbl, st in calls.stats.items():
        peak = max(calls.peaks_mb[lbl])
        row = {"bundle": label, "model": model_label(model.bundle), "classes": n_classes, "impl": lbl,
               "tokens": tokens[lbl], "n": st.n, "median_ms": st.median_ms, "p90_ms": st.p90_ms, "mean_ms": st.mean_ms,
               "min_ms": st.min_ms, "peak_mb": peak, "warmup_peak_mb": warm[lbl], "speedup": None,
               "speedup_p90": None, "speedup_lo": None, "speedup_hi": None, "speedup_of_medians": None,
               "memory_ratio": None, "other_load": other, "samples_ms": list(st.samples_ms),
               "peaks_mb": calls.peaks_mb[lbl], "error": None}
        if lbl == REF_TEXT:
            r = ratio_with_spread(e, st, paired=True)
            edge_peak = max(calls.peaks_mb[EDGE_TEXT])
            row.update(speedup=r["ratio"], speedup_p90=r["ratio_p90"], speedup_lo=r["ratio_lo"],
                       speedup_hi=r["ratio_hi"], speedup_of_medians=r["ratio_of_medians"],
                       memory_ratio=peak / edge_peak if edge_peak > 0 else None)
        rows.append(row)
        log.info("text %s C=%d %s: median %.1f ms, peak %.1f MiB", label, n_classes, lbl, st.median_ms, peak)
    return rows


def text_part(targets: list[tuple[str, EdgeClip]], *, classes: list[int], n_views: int, repeats: int,
              time_budget_s: float, seed: int, device: str, progress: bool) -> dict[str, Any]:
    """Run the text-stress part (see the module docstring) for every (label, model) and C; a `write_report`
    dict. A case that runs out of memory becomes one row with ``error`` set."""
    memory = PeakMemory(device)
    cases = [(label, m, c) for label, m in targets for c in classes]
    bar = progress_bar(len(cases), "bench tta text-stress", "case", progress)
    snap_start = cpu_snapshot()
    rows: list[dict[str, Any]] = []
    try:
        for label, m, c in cases:
            bar.set_postfix_str(f"{label} C={c}")
            res = guard_oom(lambda label=label, m=m, c=c: _text_case(
                m, label, c, n_views=n_views, repeats=repeats, time_budget_s=time_budget_s, seed=seed,
                device=device, memory=memory), f"text-stress {label} C={c}")
            rows += res.value if res.ok and res.value is not None else [
                {"bundle": label, "classes": c, "impl": "both", "error": res.error}]
            bar.update(1)
    finally:
        bar.close()
    config = {"bundles": {label: str(m.bundle.path) for label, m in targets}, "device": device, "classes": classes,
              "n_views": n_views, "repeats": repeats, "min_rounds": TEXT_MIN_ROUNDS, "time_budget_s": time_budget_s,
              "seed": seed, "class_names_seed": seed, "memory_method": memory.method,
              "other_load": other_cpu_load(snap_start, cpu_snapshot())}
    notes = [
        "one TPT step on the text path alone for C classes (synthetic 1–4-word names): text forward, loss on the "
        f"{n_views} fixed random image embeddings (entropy of the mean over the 10 % most confident), backward, "
        "AdamW step, text forward again for the prediction. edgeclip = `TPT.adapt` (tower cut to the longest "
        "prompt, `tokens`); reference = `ReferenceTPT.adapt_views_logits` with its image features replaced by "
        "the same embeddings (full 77-token sequence).",
        f"1 untimed call each, then up to {repeats} rounds round-robin (order flipped every round, 0.1 s settle "
        f"sleep before each timed call), stopping once the slowest has {time_budget_s:g} s of timed calls (at "
        f"least {TEXT_MIN_ROUNDS} rounds); the ratio is reference / edgeclip per round: {RATIO_NOTE}.",
        f"peak_mb: the largest over the timed calls of the {MEMORY_METHODS[memory.method]} (warmup_peak_mb in the "
        "JSON: the untimed first call, which also builds one-time caches such as the frozen token embeddings); "
        "memory_ratio = reference / edgeclip peak.",
    ]
    add_busy_note(rows, notes)
    return {"title": "Text path stress: one TPT step against the number of classes", "bench": "tta-text-stress",
            "config": config, "columns": list(TEXT_COLUMNS), "rows": rows, "notes": notes}


def plot_text(results: dict[str, Any], path: Path) -> None:
    """Latency and peak memory of one text-path TPT step against C, truncated vs full length, per bundle."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(11, 4.5))
    ax_t, ax_m = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
    series: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for r in results["rows"]:
        if r.get("error") is None and r.get("median_ms") is not None:
            series.setdefault((r["bundle"], r["impl"]), []).append(r)
    for (bundle, impl), rs in series.items():
        rs = sorted(rs, key=lambda r: r["classes"])
        xs = [r["classes"] for r in rs]
        style = "-o" if impl == EDGE_TEXT else "--s"
        ax_t.plot(xs, [r["median_ms"] for r in rs], style, label=f"{bundle}: {impl}")
        ax_m.plot(xs, [max(r["peak_mb"], 1e-3) for r in rs], style, label=f"{bundle}: {impl}")
    ticks = sorted({r["classes"] for rs in series.values() for r in rs})
    for ax, what in ((ax_t, "median latency per step (ms)"), (ax_m, "peak memory growth (MiB)")):
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xticks(ticks, [str(c) for c in ticks])
        ax.minorticks_off()
        ax.set_xlabel("classes C")
        ax.set_ylabel(what)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(results.get("title", "text path"), fontsize=10)
    save_figure(fig, path)
