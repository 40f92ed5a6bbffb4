"""Pseudo-label prompt tuning (FPL, IFPL, GRIP; unsupervised) against zero-shot on the micro world.

Per shift, an unlabeled pool of `n_unlabeled` images of that shift (the procedural proxy stream
``shapes:N:SHIFT`` with seed `POOL_SEED`, disjoint from every evaluation seed) is pseudo-labelled and tuned on;
accuracy is measured on `n_test` images of the same shift from the held-out stream
(`edgeclip.data.streams.held_out`, never tuned on). Each method is compared with zero-shot on the same test
images (`edgeclip.bench.paired`: paired differences in points with 95 % bootstrap intervals, per shift and for
the mean over shifts), and per-class accuracy before (zero-shot) and after (GRIP) shows which classes gain.

Besides the three strategies the default run measures two GRIP variants (`VARIANTS`): ``grip-warm`` (each
round starts from the previous round's prompt, as the official code does by accident) and ``grip-ssl`` (SSL: 2
labelled images per class from the proxy stream seed `LABELED_SEED`, beside the pseudo-labels). An ordering table
gives the paired differences between neighbours (GRIP − IFPL, IFPL − FPL, and each variant − GRIP), and the
pseudo-label table the share of correct pseudo-labels in each strategy's last round.

`tune` chooses epochs and lr for GRIP on the validation stream (`edgeclip.data.streams.validation`) with an
unlabeled pool drawn with `TUNE_POOL_SEED`; the measurement never sees those images. ``--tuning-record FILE``
reuses the tuning of an earlier report instead of tuning again. Run::

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
from edgeclip.errors import InputError

log = logging.getLogger(__name__)

__all__ = ["DEFAULT_SHIFTS", "LABELED_SEED", "POOL_SEED", "REPORT_NAME", "TUNE_POOL_SEED", "VARIANTS",
           "bench_pseudolabel", "labelled_pool", "plot_per_class", "tune", "variant_settings"]

REPORT_NAME = "pseudolabel-micro"
#: the shifted conditions where zero-shot leaves room (clean is at 99.5 %, invert at chance)
DEFAULT_SHIFTS = ("gaussian_noise", "blur", "low_contrast", "sketch", "textured_background")
#: seed of the measurement's unlabeled pools (proxy stream; never used in tuning)
POOL_SEED = 20_500
#: seed of the tuning's unlabeled pools
TUNE_POOL_SEED = 21_500
#: seed of the labelled images (SSL here, the seen classes in TRZSL): a proxy stream disjoint from the others
LABELED_SEED = 20_600
STRATEGIES = ("fpl", "ifpl", "grip")
#: the measured runs: the three strategies, then GRIP warm-started and GRIP with 2 labels per class (SSL)
VARIANTS = (*STRATEGIES, "grip-warm", "grip-ssl")
#: labelled images per class of the ``-ssl`` variants (the paper's SSL setting)
SSL_PER_CLASS = 2


def variant_settings(name: str) -> dict[str, Any]:
    """The `PseudoLabelConfig` overrides of a run name: ``STRATEGY[-warm][-ssl]``."""
    strategy, *flags = name.split("-")
    if strategy not in STRATEGIES or any(f not in ("warm", "ssl") for f in flags) or len(set(flags)) != len(flags):
        raise InputError(f"a run is STRATEGY[-warm][-ssl] with STRATEGY in {STRATEGIES}, got {name!r}")
    return {"strategy": strategy, "paradigm": "ssl" if "ssl" in flags else "ul", "warm_start": "warm" in flags}


def labelled_pool(model: Any, shift: str, per_class: int, classes: Sequence[str] | None = None, *,
                  seed: int = LABELED_SEED) -> Any:
    """A labelled `FeaturePool` of `per_class` images of each of `classes` (default all) under `shift`, the first
    ones of the proxy stream `seed` (default `LABELED_SEED`)."""
    from edgeclip.runtime.feature_pool import build_feature_pool

    names = shapes.class_names()
    wanted = {names.index(c) for c in (classes or names)}
    batch = shapes.make_batch(4 * per_class * len(names), seed=seed, shift=shift)
    counts: dict[int, int] = {}
    keep = []
    for i, label in enumerate(batch.labels.tolist()):
        if label in wanted and counts.get(label, 0) < per_class:
            counts[label] = counts.get(label, 0) + 1
            keep.append(i)
    if len(keep) < per_class * len(wanted):
        raise ValueError(f"the labelled stream gave {len(keep)} images for {per_class} x {len(wanted)}")
    return build_feature_pool(model, [batch.images[i] for i in keep], class_names=names,
                              labels=[int(batch.labels[i]) for i in keep], cache=False)


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
        run_settings = {**settings, **variant_settings(strategy)}
        labeled = labelled_pool(model, shift, SSL_PER_CLASS) if run_settings["paradigm"] == "ssl" else None
        method = create_method("pseudolabel", model, names, **run_settings)
        t0 = time.perf_counter()
        report = method.fit(pool, labeled=labeled)
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
                      n_test: int = 1024, strategies: Sequence[str] = VARIANTS,
                      settings: dict[str, Any] | None = None, threads: int | None = None,
                      tuning: dict[str, Any] | None = None) -> dict[str, Any]:
    """Accuracy (%) of zero-shot and each run (`variant_settings` names) per shift on the held-out stream, paired
    differences against zero-shot and between neighbouring runs with 95 % bootstrap intervals, per-class accuracy,
    the last round's pseudo-label accuracy; a `write_report` dict."""
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
    order_rows = []
    for a, b in _neighbours(strategies):
        d = paired_differences({s: per_shift[s]["correct"][a] for s in shifts},
                               {s: per_shift[s]["correct"][b] for s in shifts})
        order_rows.append({"comparison": f"{a} − {b}", **{s: d[s].format() for s in shifts},
                           "mean": d[MEAN].format(), "verdict": d[MEAN].verdict.replace("beats", f"{a} beats")})
    pseudo_rows = [{"method": m, **{s: 100.0 * per_shift[s]["fit"][m]["rounds"][-1]["pseudo_label_accuracy"]
                                    for s in shifts}} for m in strategies]
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
              "rounds": {s: PseudoLabelConfig(strategy=variant_settings(s)["strategy"]).n_rounds for s in strategies},
              "k": cfg.k, "ssl_per_class": SSL_PER_CLASS, "labeled_seed": LABELED_SEED,
              "threads": threads, "tuning": tuning}
    notes = [f"UL (no labels): accuracy in % on {n_test} held-out images per shift (seed {EVAL_SEED}); each method "
             f"tuned a 16-vector prompt on {n_unlabeled} unlabeled images of the same shift (proxy stream, seed "
             f"{POOL_SEED}, disjoint from the test images). epochs={cfg.epochs}, lr={cfg.lr}, batch "
             f"{cfg.batch_size}, SGD momentum {cfg.momentum}, wd {cfg.weight_decay}; FPL/IFPL K={cfg.k}, IFPL and "
             f"GRIP 10 rounds. {seconds:.0f} s.",
             "Differences against zero-shot: points, paired 95 % bootstrap interval over test images (per shift; "
             "mean: resampled within every shift). 'beats' only where the interval excludes zero.",
             f"grip-warm: every round starts from the previous round's prompt (the official code's accidental "
             f"behaviour; the default re-initialises). grip-ssl: SSL, {SSL_PER_CLASS} labelled images per class "
             f"(proxy stream seed {LABELED_SEED}) beside the pseudo-labels, one sample one vote.",
             f"Per class (mean over shifts), zero-shot -> {after}: the poorer half of the classes gains "
             f"{robin['poorer_half_gain']:+.1f} points, the richer half {robin['richer_half_gain']:+.1f}; correlation "
             f"of zero-shot accuracy with the gain {robin['corr_zero_shot_vs_gain']:+.2f}."]
    if tuning:
        notes.append(f"epochs and lr chosen for GRIP on the validation stream (seed {tuning['val_seed']}, unlabeled "
                     f"pools seed {tuning['pool_seed']}): {tuning['choice']} — see the tuning table.")
    tables = [{"title": "Difference against zero-shot (points, 95 % CI)", "columns": ["method", *shifts, "mean",
                                                                                      "verdict"],
               "rows": [{k: v for k, v in d.items() if k != "detail"} for d in diffs]},
              {"title": "Between runs (points, 95 % CI): does each step help?",
               "columns": ["comparison", *shifts, "mean", "verdict"], "rows": order_rows},
              {"title": "Pseudo-label accuracy (%) in each run's last round",
               "columns": ["method", *shifts], "rows": pseudo_rows},
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


def _neighbours(runs: Sequence[str]) -> list[tuple[str, str]]:
    """The comparisons of the ordering table: grip − ifpl, ifpl − fpl, and every variant − its plain strategy."""
    out = [(a, b) for a, b in (("grip", "ifpl"), ("ifpl", "fpl")) if a in runs and b in runs]
    for r in runs:
        base = variant_settings(r)["strategy"]
        if r != base and base in runs:
            out.append((r, base))
    return out


def plot_per_class(results: dict[str, Any], path: Path) -> Path:
    """Per-class accuracy before (zero-shot) and after (GRIP), mean over shifts, classes sorted by zero-shot; and
    every (shift, class) gain against its zero-shot accuracy."""
    from edgeclip.bench.figures import check_matplotlib, per_class_bars, save_figure

    check_matplotlib()
    from matplotlib.figure import Figure

    table = next(t for t in results["tables"] if t["columns"][0] == "class")
    rows, after = table["rows"], table["columns"][2]
    fig = Figure(figsize=(11, 4.2))
    ax, ax2 = fig.subplots(1, 2, gridspec_kw={"width_ratios": [2, 1]})
    per_class_bars(ax, [r["class"] for r in rows], [r["zero-shot"] for r in rows], [r[after] for r in rows],
                   ("zero-shot", after.upper()), "accuracy (%), mean over shifts")
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


def _read_tuning(path: Path) -> dict[str, Any]:
    """The tuning record of an earlier report of this bench (``config.tuning``)."""
    import json

    try:
        tuning = json.loads(Path(path).read_text())["config"]["tuning"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise InputError(f"{path}: not a pseudolabel report with a tuning record ({exc})") from exc
    if not tuning or "choice" not in tuning:
        raise InputError(f"{path}: the report was not tuned (no config.tuning.choice)")
    return tuning


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The options of `edgeclip bench pseudolabel`."""
    p.add_argument("--bundle", default="micro", help="bundle directory (default: the embedded micro CLIP)")
    p.add_argument("--shifts", default=",".join(DEFAULT_SHIFTS), help="comma-separated shifts")
    p.add_argument("--n-unlabeled", type=int, default=512, help="unlabeled images per shift (default 512)")
    p.add_argument("--n-test", type=int, default=1024, help="held-out test images per shift (default 1024)")
    p.add_argument("--tune", action="store_true", help="choose epochs and lr on the validation stream first")
    p.add_argument("--tuning-record", type=Path, default=None, metavar="JSON",
                   help="reuse the tuning of an earlier report of this bench instead of --tune")
    p.add_argument("--runs", default=",".join(VARIANTS),
                   help="comma-separated runs, STRATEGY[-warm][-ssl] (default: %(default)s)")
    p.add_argument("--epochs", type=int, default=None, help="epochs per round (default: the config's, or tuned)")
    p.add_argument("--lr", type=float, default=None, help="learning rate (default: the config's, or tuned)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1: with other processes on the "
                   "cores, more threads stall the text tower's backward pass by two orders of magnitude)")
    p.add_argument("--out", type=Path, default=Path("bench-results"), help="folder for the JSON, Markdown and PNG")
    p.add_argument("--name", default=REPORT_NAME, help=f"report file stem (default {REPORT_NAME})")


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Run `edgeclip bench pseudolabel` with parsed `args`: write the reports, return the results."""
    shifts = [s.strip() for s in args.shifts.split(",") if s.strip()]
    runs = [r.strip() for r in args.runs.split(",") if r.strip()]
    for r in runs:
        variant_settings(r)
    if args.tune and args.tuning_record:
        raise InputError("give --tune or --tuning-record, not both")
    tuning = None
    if args.tune:
        tuning = tune(args.bundle, shifts=shifts, n_unlabeled=args.n_unlabeled, threads=args.threads)
    elif args.tuning_record:
        tuning = _read_tuning(args.tuning_record)
    settings: dict[str, Any] = dict(tuning["choice"]) if tuning else {}
    if args.epochs is not None:
        settings["epochs"] = args.epochs
    if args.lr is not None:
        settings["lr"] = args.lr
    results = bench_pseudolabel(args.bundle, shifts=shifts, n_unlabeled=args.n_unlabeled, n_test=args.n_test,
                                strategies=runs, settings=settings, threads=args.threads, tuning=tuning)
    for path in write_report(results, args.out, args.name).values():
        log.info("wrote %s", path)
    log.info("wrote %s", plot_per_class(results, args.out / f"{args.name}.png"))
    return results
