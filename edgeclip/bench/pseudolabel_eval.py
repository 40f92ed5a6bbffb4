"""Pseudo-label prompt tuning (FPL, IFPL, GRIP; unsupervised) against zero-shot on the micro world.

Per shift, an unlabeled pool of `n_unlabeled` images of that shift (the procedural proxy stream
``shapes:N:SHIFT`` with seed `POOL_SEED`, disjoint from every evaluation seed) is pseudo-labelled and tuned on;
accuracy is measured on `n_test` images of the same shift from the held-out stream
(`edgeclip.data.streams.held_out`, never tuned on). Each method is compared with zero-shot on the same test
images (`edgeclip.bench.paired`: paired differences in points with 95 % bootstrap intervals, per shift and for
the mean over shifts), and per-class accuracy before (zero-shot) and after (GRIP) shows which classes gain.

`tune` chooses epochs and lr for GRIP on the validation stream (`edgeclip.data.streams.validation`) with an
unlabeled pool drawn with `TUNE_POOL_SEED`; the measurement never sees those images. Run as a script::

    edgeclip bench pseudolabel --out docs/results --tune
"""

from __future__ import annotations

import argparse
import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from edgeclip.bench.common import model_label, torch_threads
from edgeclip.bench.paired import MEAN, paired_differences
from edgeclip.bench.report import machine_info, write_report
from edgeclip.data import shapes
from edgeclip.data.streams import EVAL_SEED, VALIDATION_SEED, held_out, validation

log = logging.getLogger(__name__)

__all__ = ["DEFAULT_SHIFTS", "POOL_SEED", "REPORT_NAME", "TUNE_POOL_SEED", "bench_pseudolabel", "plot_per_class",
           "tune"]

REPORT_NAME = "pseudolabel-micro"
#: the shifted conditions where zero-shot leaves room (clean is at 99.5 %, invert at chance)
DEFAULT_SHIFTS = ("gaussian_noise", "blur", "low_contrast", "sketch", "textured_background")
#: seed of the measurement's unlabeled pools (proxy stream; never used in tuning)
POOL_SEED = 20_500
#: seed of the tuning's unlabeled pools
TUNE_POOL_SEED = 21_500
STRATEGIES = ("fpl", "ifpl", "grip")


def _embed(model: Any, batch: Any) -> tuple[torch.Tensor, np.ndarray]:
    from edgeclip.runtime.feature_pool import build_feature_pool

    names = shapes.class_names()
    pool = build_feature_pool(model, list(batch.images), class_names=names, labels=batch.labels.tolist(),
                              cache=False)
    return pool.plain, np.asarray(batch.labels)


def _scores(model: Any, embeds: torch.Tensor, text: torch.Tensor) -> np.ndarray:
    from edgeclip.runtime.methods.zeroshot import image_logits

    with torch.no_grad():
        return image_logits(model, embeds.to(model.device), text.to(model.device)).argmax(dim=1).cpu().numpy()


def _per_class(pred: np.ndarray, labels: np.ndarray, n_classes: int) -> list[float]:
    """Accuracy (%) per class; NaN for a class with no test image."""
    return [100.0 * float((pred[labels == c] == c).mean()) if (labels == c).any() else float("nan")
            for c in range(n_classes)]


def _run_shift(model: Any, shift: str, strategies: Sequence[str], *, n_unlabeled: int, test: Any, pool_seed: int,
               settings: dict[str, Any]) -> dict[str, Any]:
    """Zero-shot and each strategy on one shift: per-frame correctness, per-class accuracy, fit reports."""
    from edgeclip.runtime.feature_pool import build_feature_pool
    from edgeclip.runtime.methods import create_method

    names = shapes.class_names()
    pool = build_feature_pool(model, f"shapes:{n_unlabeled}:{shift}", seed=pool_seed, cache=False)
    x, y = _embed(model, test)
    zs = create_method("zeroshot", model, names)
    out: dict[str, Any] = {"correct": {}, "per_class": {}, "fit": {}}
    pred = _scores(model, x, zs.text_embeds)
    out["correct"]["zero-shot"] = pred == y
    out["per_class"]["zero-shot"] = _per_class(pred, y, len(names))
    for strategy in strategies:
        method = create_method("pseudolabel", model, names, strategy=strategy, paradigm="ul", **settings)
        t0 = time.perf_counter()
        report = method.fit(pool)
        pred = _scores(model, x, method.text_embeds())
        out["correct"][strategy] = pred == y
        out["per_class"][strategy] = _per_class(pred, y, len(names))
        out["fit"][strategy] = {"seconds": time.perf_counter() - t0, "steps": report.steps,
                                "rounds": [{k: r[k] for k in ("round", "k", "n_pseudo", "pseudo_label_accuracy")}
                                           for r in report.extra["rounds"]]}
    return out


def tune(bundle: Any = "micro", *, shifts: Sequence[str] = DEFAULT_SHIFTS, n_unlabeled: int = 512,
         n_val: int = 512, epochs: Sequence[int] = (5, 10, 20), lrs: Sequence[float] = (0.1, 0.02, 0.005),
         threads: int | None = None) -> dict[str, Any]:
    """GRIP's epochs and lr chosen on the validation stream (mean accuracy over `shifts`); returns the grid and
    the choice ``{"epochs", "lr"}``."""
    import edgeclip

    model = edgeclip.load(None if bundle == "micro" else bundle, backend="onnxruntime")
    rows = []
    with torch_threads(threads):
        for e in epochs:
            for lr in lrs:
                accs = []
                for shift in shifts:
                    res = _run_shift(model, shift, ("grip",), n_unlabeled=n_unlabeled, test=validation(shift, n_val),
                                     pool_seed=TUNE_POOL_SEED, settings={"epochs": e, "lr": lr})
                    accs.append(100.0 * float(res["correct"]["grip"].mean()))
                rows.append({"epochs": e, "lr": lr, "val_mean": float(np.mean(accs)),
                             **{s: a for s, a in zip(shifts, accs, strict=True)}})
                log.info("tune: epochs=%d lr=%g -> %.1f %%", e, lr, rows[-1]["val_mean"])
    best = max(rows, key=lambda r: (r["val_mean"], -r["epochs"]))
    return {"rows": rows, "choice": {"epochs": best["epochs"], "lr": best["lr"]}, "shifts": list(shifts),
            "n_unlabeled": n_unlabeled, "n_val": n_val, "val_seed": VALIDATION_SEED, "pool_seed": TUNE_POOL_SEED}


def bench_pseudolabel(bundle: Any = "micro", *, shifts: Sequence[str] = DEFAULT_SHIFTS, n_unlabeled: int = 512,
                      n_test: int = 1024, strategies: Sequence[str] = STRATEGIES,
                      settings: dict[str, Any] | None = None, threads: int | None = None,
                      tuning: dict[str, Any] | None = None) -> dict[str, Any]:
    """Accuracy (%) of zero-shot and each UL strategy per shift on the held-out stream, paired differences against
    zero-shot with 95 % bootstrap intervals, per-class accuracy; a `write_report` dict."""
    import edgeclip

    settings = dict(settings or {})
    model = edgeclip.load(None if bundle == "micro" else bundle, backend="onnxruntime")
    names = shapes.class_names()
    t0 = time.perf_counter()
    per_shift: dict[str, Any] = {}
    with torch_threads(threads):
        for shift in shifts:
            log.info("shift %s", shift)
            per_shift[shift] = _run_shift(model, shift, strategies, n_unlabeled=n_unlabeled,
                                          test=held_out(shift, n_test), pool_seed=POOL_SEED, settings=settings)
    seconds = time.perf_counter() - t0
    methods = ["zero-shot", *strategies]
    rows = []
    for m in methods:
        row: dict[str, Any] = {"method": m}
        for s in shifts:
            row[s] = 100.0 * float(per_shift[s]["correct"][m].mean())
        row["mean"] = float(np.mean([row[s] for s in shifts]))
        rows.append(row)
    diffs = []
    for m in strategies:
        d = paired_differences({s: per_shift[s]["correct"][m] for s in shifts},
                               {s: per_shift[s]["correct"]["zero-shot"] for s in shifts})
        diffs.append({"method": m, **{s: d[s].format() for s in shifts}, "mean": d[MEAN].format(),
                      "verdict": d[MEAN].verdict, "detail": {k: v.to_dict() for k, v in d.items()}})
    # the Robin Hood view: per class, mean over shifts, zero-shot vs GRIP (or the last strategy)
    after = "grip" if "grip" in strategies else strategies[-1]
    zs_pc = np.nanmean([per_shift[s]["per_class"]["zero-shot"] for s in shifts], axis=0)
    tuned_pc = np.nanmean([per_shift[s]["per_class"][after] for s in shifts], axis=0)
    order = np.argsort(zs_pc)
    class_rows = [{"class": names[c], "zero-shot": float(zs_pc[c]), after: float(tuned_pc[c]),
                   "change": float(tuned_pc[c] - zs_pc[c])} for c in order]
    low, high = order[: len(order) // 2], order[len(order) // 2 :]
    robin = {"poorer_half_gain": float(np.mean(tuned_pc[low] - zs_pc[low])),
             "richer_half_gain": float(np.mean(tuned_pc[high] - zs_pc[high])),
             "corr_zero_shot_vs_gain": float(np.corrcoef(zs_pc, tuned_pc - zs_pc)[0, 1])}
    from edgeclip.runtime.methods.pseudolabel import PseudoLabelConfig

    cfg = PseudoLabelConfig(**settings)
    config = {"model": model_label(model.bundle), "shifts": list(shifts), "n_unlabeled": n_unlabeled,
              "n_test": n_test, "eval_seed": EVAL_SEED, "pool_seed": POOL_SEED, "strategies": list(strategies),
              "settings": settings, "epochs": cfg.epochs, "lr": cfg.lr, "batch_size": cfg.batch_size,
              "rounds": {s: PseudoLabelConfig(strategy=s).n_rounds for s in strategies}, "k": cfg.k,
              "threads": threads, "tuning": tuning}
    notes = [f"UL (no labels): accuracy in % on {n_test} held-out images per shift (seed {EVAL_SEED}); each method "
             f"tuned a 16-vector prompt on {n_unlabeled} unlabeled images of the same shift (proxy stream, seed "
             f"{POOL_SEED}, disjoint from the test images). epochs={cfg.epochs}, lr={cfg.lr}, batch "
             f"{cfg.batch_size}, SGD momentum {cfg.momentum}, wd {cfg.weight_decay}; FPL/IFPL K={cfg.k}, IFPL and "
             f"GRIP 10 rounds. {seconds:.0f} s.",
             "Differences against zero-shot: points, paired 95 % bootstrap interval over test images (per shift; "
             "mean: resampled within every shift). 'beats' only where the interval excludes zero.",
             f"Per class (mean over shifts), zero-shot -> {after}: the poorer half of the classes gains "
             f"{robin['poorer_half_gain']:+.1f} points, the richer half {robin['richer_half_gain']:+.1f}; correlation "
             f"of zero-shot accuracy with the gain {robin['corr_zero_shot_vs_gain']:+.2f}."]
    if tuning:
        notes.append(f"epochs and lr chosen for GRIP on the validation stream (seed {tuning['val_seed']}, unlabeled "
                     f"pools seed {tuning['pool_seed']}): {tuning['choice']} — see the tuning table.")
    tables = [{"title": "Difference against zero-shot (points, 95 % CI)", "columns": ["method", *shifts, "mean",
                                                                                      "verdict"],
               "rows": [{k: v for k, v in d.items() if k != "detail"} for d in diffs]},
              {"title": f"Per-class accuracy (%), mean over shifts: zero-shot vs {after}",
               "columns": ["class", "zero-shot", after, "change"], "rows": class_rows}]
    if tuning:
        tables.append({"title": "Tuning on the validation stream (GRIP, mean over shifts)",
                       "columns": ["epochs", "lr", "val_mean", *tuning["shifts"]], "rows": tuning["rows"]})
    fits = {s: per_shift[s]["fit"] for s in shifts}
    per_class = {s: per_shift[s]["per_class"] for s in shifts}
    return {"title": f"Pseudo-label prompt tuning (UL) vs zero-shot on {model_label(model.bundle)}",
            "bench": "pseudolabel", "config": config, "columns": ["method", *shifts, "mean"], "rows": rows,
            "tables": tables, "differences": diffs, "per_class": per_class, "robin_hood": robin, "fits": fits,
            "classes": names, "seconds": seconds, "notes": notes, "machine": machine_info(threads)}


def plot_per_class(results: dict[str, Any], path: Path) -> Path:
    """Per-class accuracy before (zero-shot) and after (GRIP), mean over shifts, classes sorted by zero-shot; and
    every (shift, class) gain against its zero-shot accuracy."""
    from edgeclip.bench.figures import check_matplotlib, save_figure

    check_matplotlib()
    from matplotlib.figure import Figure

    rows = results["tables"][1]["rows"]
    after = results["tables"][1]["columns"][2]
    fig = Figure(figsize=(11, 4.2))
    ax, ax2 = fig.subplots(1, 2, gridspec_kw={"width_ratios": [2, 1]})
    idx = np.arange(len(rows))
    ax.bar(idx - 0.2, [r["zero-shot"] for r in rows], 0.4, label="zero-shot", color="tab:grey")
    ax.bar(idx + 0.2, [r[after] for r in rows], 0.4, label=after.upper(), color="tab:orange")
    ax.set_xticks(idx, [r["class"] for r in rows], rotation=60, ha="right", fontsize=8)
    ax.set_ylabel("accuracy (%), mean over shifts")
    ax.set_title("per class, sorted by zero-shot accuracy")
    ax.legend()
    for shift, pc in results["per_class"].items():
        zs, tu = np.asarray(pc["zero-shot"]), np.asarray(pc[after])
        ax2.scatter(zs, tu - zs, s=12, label=shift)
    ax2.axhline(0, color="black", linewidth=0.8)
    ax2.set_xlabel("zero-shot accuracy of the class (%)")
    ax2.set_ylabel(f"{after.upper()} − zero-shot (points)")
    ax2.set_title("gain per (shift, class)")
    ax2.legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    save_figure(fig, path)
    return path


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The options of `edgeclip bench pseudolabel`."""
    p.add_argument("--bundle", default="micro", help="bundle directory (default: the embedded micro CLIP)")
    p.add_argument("--shifts", default=",".join(DEFAULT_SHIFTS), help="comma-separated shifts")
    p.add_argument("--n-unlabeled", type=int, default=512, help="unlabeled images per shift (default 512)")
    p.add_argument("--n-test", type=int, default=1024, help="held-out test images per shift (default 1024)")
    p.add_argument("--tune", action="store_true", help="choose epochs and lr on the validation stream first")
    p.add_argument("--epochs", type=int, default=None, help="epochs per round (default: the config's, or tuned)")
    p.add_argument("--lr", type=float, default=None, help="learning rate (default: the config's, or tuned)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1: with other processes on the "
                   "cores, more threads stall the text tower's backward pass by two orders of magnitude)")
    p.add_argument("--out", type=Path, default=Path("bench-results"), help="folder for the JSON, Markdown and PNG")
    p.add_argument("--name", default=REPORT_NAME, help=f"report file stem (default {REPORT_NAME})")


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Run `edgeclip bench pseudolabel` with parsed `args`: write the reports, return the results."""
    shifts = [s.strip() for s in args.shifts.split(",") if s.strip()]
    tuning = tune(args.bundle, shifts=shifts, n_unlabeled=args.n_unlabeled, threads=args.threads) if args.tune \
        else None
    settings: dict[str, Any] = dict(tuning["choice"]) if tuning else {}
    if args.epochs is not None:
        settings["epochs"] = args.epochs
    if args.lr is not None:
        settings["lr"] = args.lr
    results = bench_pseudolabel(args.bundle, shifts=shifts, n_unlabeled=args.n_unlabeled, n_test=args.n_test,
                                settings=settings, threads=args.threads, tuning=tuning)
    for path in write_report(results, args.out, args.name).values():
        log.info("wrote %s", path)
    log.info("wrote %s", plot_per_class(results, args.out / f"{args.name}.png"))
    return results
