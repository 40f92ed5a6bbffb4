"""`edgeclip bench trzsl`: transductive zero-shot (TRZSL) GRIP against zero-shot on the micro world.

The 16 classes are split in a checkerboard over colour × shape: 8 **seen** classes (a few labelled images
each) and 8 **unseen** (pseudo-labels only). Per shift: the labelled images come from one proxy stream, the
unlabeled pool — images of the unseen classes only, as in the paper's protocol (its unlabeled set is the unseen
classes' training images) — from another, the test images from the held-out stream (never used to train, tune
or select). The metric is the harmonic mean H of the accuracy on seen-class and on unseen-class test images,
predicting over all 16 classes. The difference in H against zero-shot gets a paired 95 % bootstrap interval:
the same resample of test images for both methods, H recomputed on each resample.
"""

from __future__ import annotations

import argparse
import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from edgeclip.bench.common import model_label, torch_threads
from edgeclip.bench.paired import N_RESAMPLES
from edgeclip.bench.pseudolabel_eval import DEFAULT_SHIFTS, LABELED_SEED, POOL_SEED, _embed, _scores, labelled_pool
from edgeclip.bench.report import write_report
from edgeclip.data import shapes
from edgeclip.data.streams import EVAL_SEED, held_out
from edgeclip.runtime.methods.pseudolabel import harmonic_mean

__all__ = ["add_arguments", "bench_trzsl", "checkerboard_seen", "harmonic", "harmonic_difference",
           "mean_harmonic_difference", "run"]

log = logging.getLogger(__name__)

REPORT_NAME = "trzsl-micro"


def checkerboard_seen(names: Sequence[str]) -> list[str]:
    """The seen half of the micro classes: colour index + shape index even (every colour and shape in both)."""
    return [n for i, n in enumerate(names) if (i // 4 + i % 4) % 2 == 0]


def harmonic(correct: np.ndarray, seen: np.ndarray) -> tuple[float, float, float]:
    """Accuracy (%) on seen-class frames, on unseen-class frames, and their harmonic mean."""
    a_s = 100.0 * float(correct[seen].mean())
    a_u = 100.0 * float(correct[~seen].mean())
    return a_s, a_u, harmonic_mean(a_s, a_u)


def _check_paired(a: np.ndarray, b: np.ndarray, seen: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    a, b, seen = np.asarray(a, bool), np.asarray(b, bool), np.asarray(seen, bool)
    if not (a.shape == b.shape == seen.shape) or a.ndim != 1:
        raise ValueError(f"paired runs need the same frames, got {a.shape}, {b.shape}, {seen.shape}")
    if seen.all() or not seen.any():
        raise ValueError("the harmonic mean needs both seen-class and unseen-class frames")
    return a, b, seen


def mean_harmonic_difference(runs: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray]], *,
                             n_resamples: int = N_RESAMPLES, level: float = 0.95, seed: int = 0) -> dict[str, float]:
    """The mean over strata (shifts) of H(a) − H(b), each stratum's ``(a, b, seen)`` the per-frame correctness of
    both methods and the seen mask, with its paired percentile bootstrap interval: every resample draws the frames
    of each stratum with replacement within that stratum and recomputes each H."""
    runs = [_check_paired(*r) for r in runs]
    if not runs:
        raise ValueError("no strata")
    rng = np.random.default_rng(seed)
    diffs = np.empty(n_resamples)
    for r in range(n_resamples):
        total = 0.0
        for a, b, seen in runs:
            idx = rng.integers(0, a.size, a.size)
            s = seen[idx]
            if s.all() or not s.any():
                total = np.nan
                break
            total += harmonic(a[idx], s)[2] - harmonic(b[idx], s)[2]
        diffs[r] = total / len(runs)
    q = 100.0 * np.array([(1.0 - level) / 2.0, (1.0 + level) / 2.0])
    lo, hi = np.nanpercentile(diffs, q)
    point = float(np.mean([harmonic(a, seen)[2] - harmonic(b, seen)[2] for a, b, seen in runs]))
    return {"diff": point, "lo": float(lo), "hi": float(hi), "level": level}


def harmonic_difference(a: np.ndarray, b: np.ndarray, seen: np.ndarray, *, n_resamples: int = N_RESAMPLES,
                        level: float = 0.95, seed: int = 0) -> dict[str, float]:
    """H of `a` minus H of `b` (points) on the same frames, with its paired percentile bootstrap interval."""
    return mean_harmonic_difference([(a, b, seen)], n_resamples=n_resamples, level=level, seed=seed)


def bench_trzsl(bundle: Any = "micro", *, shifts: Sequence[str] = DEFAULT_SHIFTS, n_unlabeled: int = 512,
                per_seen_class: int = 16, n_test: int = 1024, strategy: str = "grip", epochs: int = 20,
                lr: float = 0.1, threads: int | None = 1, n_resamples: int = 2000) -> dict[str, Any]:
    """TRZSL `strategy` against zero-shot per shift (see the module docstring); a `write_report` dict."""
    import edgeclip
    from edgeclip.runtime.methods import create_method

    model = edgeclip.load(None if bundle == "micro" else bundle, backend="onnxruntime", threads=threads)
    names = shapes.class_names()
    seen_names = checkerboard_seen(names)
    seen_idx = np.array([names.index(s) for s in seen_names])
    unseen_names = [n for n in names if n not in seen_names]
    zs = create_method("zeroshot", model, names)
    rows, diffs, t0 = [], [], time.perf_counter()
    pseudo_acc: dict[str, list[float]] = {}
    paired: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
    with torch_threads(threads):
        for shift in shifts:
            log.info("shift %s", shift)
            unlabeled = labelled_pool(model, shift, n_unlabeled // len(unseen_names), unseen_names, seed=POOL_SEED)
            labeled = labelled_pool(model, shift, per_seen_class, seen_names)
            x, y = _embed(model, held_out(shift, n_test))
            seen = np.isin(y, seen_idx)
            zs_ok = _scores(model, x, zs.text_embeds) == y
            method = create_method("pseudolabel", model, names, strategy=strategy, paradigm="trzsl",
                                   seen=tuple(seen_names), epochs=epochs, lr=lr)
            report = method.fit(unlabeled, labeled=labeled)
            ok = _scores(model, x, method.text_embeds()) == y
            pseudo_acc[shift] = [100.0 * r["pseudo_label_accuracy"] for r in report.extra["rounds"]]
            paired.append((ok, zs_ok, seen))
            for label, correct in (("zero-shot", zs_ok), (strategy, ok)):
                s, u, h = harmonic(correct, seen)
                rows.append({"shift": shift, "method": label, "seen": s, "unseen": u, "H": h})
            d = harmonic_difference(ok, zs_ok, seen, n_resamples=n_resamples)
            diffs.append({"shift": shift, **d, "beats": bool(d["lo"] > 0)})
    seconds = time.perf_counter() - t0
    mean_h = {m: float(np.mean([r["H"] for r in rows if r["method"] == m])) for m in ("zero-shot", strategy)}
    beats = sum(d["beats"] for d in diffs)
    mean_d = mean_harmonic_difference(paired, n_resamples=n_resamples)
    diffs.append({"shift": "mean", **mean_d, "beats": bool(mean_d["lo"] > 0)})
    notes = [f"TRZSL {strategy}: {len(seen_names)} seen classes ({per_seen_class} labelled images each, seed "
             f"{LABELED_SEED}), {len(unseen_names)} unseen; {n_unlabeled // len(unseen_names)} unlabeled images of "
             f"each unseen class per shift (seed {POOL_SEED}; the unlabeled pool holds the unseen classes only, as in "
             f"the paper); {n_test} held-out test images per shift (seed {EVAL_SEED}); epochs={epochs}, lr={lr} "
             f"(the UL tuning record's choice); {seconds:.0f} s.",
             f"mean H over shifts: zero-shot {mean_h['zero-shot']:.1f}, {strategy} {mean_h[strategy]:.1f}, difference "
             f"{mean_d['diff']:+.1f} [{mean_d['lo']:+.1f}, {mean_d['hi']:+.1f}] (frames resampled within every "
             f"shift); {strategy} beats zero-shot (paired 95 % interval of the H difference above zero) on {beats} of "
             f"{len(shifts)} shifts.",
             "The pseudo-label table: the share of the unseen classes' pseudo-labels that are right, per round. "
             "GRIP's last round labels the whole pool (K = |U|/C, each image in one class)."]
    pseudo_table = {"title": "Pseudo-label accuracy (%) per round (unseen classes)",
                    "columns": ["shift", *[f"r{i + 1}" for i in range(max(len(v) for v in pseudo_acc.values()))]],
                    "rows": [{"shift": sh, **{f"r{i + 1}": a for i, a in enumerate(v)}}
                             for sh, v in pseudo_acc.items()]}
    table = {"title": f"H difference, {strategy} − zero-shot (points, paired 95 % bootstrap interval)",
             "columns": ["shift", "diff", "lo", "hi", "beats"], "rows": diffs}
    return {"title": f"TRZSL {strategy} vs zero-shot on {model_label(model.bundle)}", "bench": "trzsl",
            "config": {"shifts": list(shifts), "seen": seen_names, "n_unlabeled": n_unlabeled,
                       "per_seen_class": per_seen_class, "n_test": n_test, "strategy": strategy, "epochs": epochs,
                       "lr": lr, "threads": threads, "n_resamples": n_resamples},
            "columns": ["shift", "method", "seen", "unseen", "H"], "rows": rows, "tables": [table, pseudo_table],
            "differences": diffs, "mean_h": mean_h, "mean_difference": mean_d, "pseudo_label_accuracy": pseudo_acc,
            "notes": notes}


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The options of `edgeclip bench trzsl`."""
    p.add_argument("--bundle", default="micro", help="bundle directory (default: the embedded micro CLIP)")
    p.add_argument("--shifts", default=",".join(DEFAULT_SHIFTS), help="comma-separated shifts")
    p.add_argument("--n-unlabeled", type=int, default=512, help="unlabeled images per shift (default 512)")
    p.add_argument("--per-seen-class", type=int, default=16, help="labelled images per seen class (default 16)")
    p.add_argument("--n-test", type=int, default=1024, help="held-out test images per shift (default 1024)")
    p.add_argument("--strategy", default="grip", choices=["fpl", "ifpl", "grip"])
    p.add_argument("--epochs", type=int, default=20, help="epochs per round (default 20)")
    p.add_argument("--lr", type=float, default=0.1, help="learning rate (default 0.1)")
    p.add_argument("--threads", type=int, default=1, help="torch and onnxruntime threads (default 1)")
    p.add_argument("--out", type=Path, default=Path("bench-results"), help="folder for the JSON and Markdown")
    p.add_argument("--name", default=REPORT_NAME, help=f"report file stem (default {REPORT_NAME})")


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Run `edgeclip bench trzsl` with parsed `args`: write the reports, return the results."""
    results = bench_trzsl(args.bundle, shifts=[s.strip() for s in args.shifts.split(",") if s.strip()],
                          n_unlabeled=args.n_unlabeled, per_seen_class=args.per_seen_class, n_test=args.n_test,
                          strategy=args.strategy, epochs=args.epochs, lr=args.lr, threads=args.threads)
    for path in write_report(results, args.out, args.name).values():
        log.info("wrote %s", path)
    return results
