"""`edgeclip bench trzsl`: transductive zero-shot (TRZSL) GRIP against zero-shot on the micro world.

The 16 classes are split in a checkerboard over colour × shape: 8 **seen** classes (a few labelled images
each) and 8 **unseen** (pseudo-labels only). Per shift: the labelled images come from one proxy stream, the
unlabeled pool (every class) from another, the test images from the held-out stream (never used to train, tune
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
from edgeclip.bench.pseudolabel_eval import DEFAULT_SHIFTS, POOL_SEED, _embed, _scores
from edgeclip.bench.report import write_report
from edgeclip.data import shapes
from edgeclip.data.streams import EVAL_SEED, held_out

__all__ = ["add_arguments", "bench_trzsl", "checkerboard_seen", "harmonic", "harmonic_difference", "run"]

log = logging.getLogger(__name__)

REPORT_NAME = "trzsl-micro"
#: seed of the labelled seen-class images (a proxy stream, disjoint from the unlabeled pool and the test images)
LABELED_SEED = 20_600


def checkerboard_seen(names: Sequence[str]) -> list[str]:
    """The seen half of the micro classes: colour index + shape index even (every colour and shape in both)."""
    return [n for i, n in enumerate(names) if (i // 4 + i % 4) % 2 == 0]


def harmonic(correct: np.ndarray, seen: np.ndarray) -> tuple[float, float, float]:
    """Accuracy (%) on seen-class frames, on unseen-class frames, and their harmonic mean."""
    a_s = 100.0 * float(correct[seen].mean())
    a_u = 100.0 * float(correct[~seen].mean())
    return a_s, a_u, (2 * a_s * a_u / (a_s + a_u) if a_s + a_u > 0 else 0.0)


def harmonic_difference(a: np.ndarray, b: np.ndarray, seen: np.ndarray, *, n_resamples: int = N_RESAMPLES,
                        level: float = 0.95, seed: int = 0) -> dict[str, float]:
    """H of `a` minus H of `b` (points) on the same frames, with its paired percentile bootstrap interval."""
    a, b, seen = np.asarray(a, bool), np.asarray(b, bool), np.asarray(seen, bool)
    if not (a.shape == b.shape == seen.shape) or a.ndim != 1:
        raise ValueError(f"paired runs need the same frames, got {a.shape}, {b.shape}, {seen.shape}")
    if seen.all() or not seen.any():
        raise ValueError("the harmonic mean needs both seen-class and unseen-class frames")
    rng = np.random.default_rng(seed)
    diffs = np.empty(n_resamples)
    for r in range(n_resamples):
        idx = rng.integers(0, a.size, a.size)
        s = seen[idx]
        if s.all() or not s.any():
            diffs[r] = np.nan
            continue
        diffs[r] = harmonic(a[idx], s)[2] - harmonic(b[idx], s)[2]
    q = 100.0 * np.array([(1.0 - level) / 2.0, (1.0 + level) / 2.0])
    lo, hi = np.nanpercentile(diffs, q)
    return {"diff": harmonic(a, seen)[2] - harmonic(b, seen)[2], "lo": float(lo), "hi": float(hi), "level": level}


def bench_trzsl(bundle: Any = "micro", *, shifts: Sequence[str] = DEFAULT_SHIFTS, n_unlabeled: int = 512,
                per_seen_class: int = 16, n_test: int = 1024, strategy: str = "grip", epochs: int = 20,
                lr: float = 0.1, threads: int | None = 1, n_resamples: int = 2000) -> dict[str, Any]:
    """TRZSL `strategy` against zero-shot per shift (see the module docstring); a `write_report` dict."""
    import edgeclip
    from edgeclip.runtime.feature_pool import build_feature_pool
    from edgeclip.runtime.methods import create_method

    model = edgeclip.load(None if bundle == "micro" else bundle, backend="onnxruntime", threads=threads)
    names = shapes.class_names()
    seen_names = checkerboard_seen(names)
    seen_idx = np.array([names.index(s) for s in seen_names])
    zs = create_method("zeroshot", model, names)
    rows, diffs, t0 = [], [], time.perf_counter()
    with torch_threads(threads):
        for shift in shifts:
            log.info("shift %s", shift)
            unlabeled = build_feature_pool(model, f"shapes:{n_unlabeled}:{shift}", seed=POOL_SEED, cache=False)
            batch = shapes.make_batch(4 * per_seen_class * len(seen_names), seed=LABELED_SEED, shift=shift)
            counts: dict[int, int] = {}
            keep = []
            for i, label in enumerate(batch.labels.tolist()):
                if label in seen_idx and counts.get(label, 0) < per_seen_class:
                    counts[label] = counts.get(label, 0) + 1
                    keep.append(i)
            labeled = build_feature_pool(model, [batch.images[i] for i in keep], class_names=names,
                                         labels=[int(batch.labels[i]) for i in keep], cache=False)
            x, y = _embed(model, held_out(shift, n_test))
            seen = np.isin(y, seen_idx)
            zs_ok = _scores(model, x, zs.text_embeds) == y
            method = create_method("pseudolabel", model, names, strategy=strategy, paradigm="trzsl",
                                   seen=tuple(seen_names), epochs=epochs, lr=lr)
            method.fit(unlabeled, labeled=labeled)
            ok = _scores(model, x, method.text_embeds()) == y
            for label, correct in (("zero-shot", zs_ok), (strategy, ok)):
                s, u, h = harmonic(correct, seen)
                rows.append({"shift": shift, "method": label, "seen": s, "unseen": u, "H": h})
            d = harmonic_difference(ok, zs_ok, seen, n_resamples=n_resamples)
            diffs.append({"shift": shift, **d, "beats": bool(d["lo"] > 0)})
    seconds = time.perf_counter() - t0
    mean_h = {m: float(np.mean([r["H"] for r in rows if r["method"] == m])) for m in ("zero-shot", strategy)}
    beats = sum(d["beats"] for d in diffs)
    notes = [f"TRZSL {strategy}: {len(seen_names)} seen classes ({per_seen_class} labelled images each, seed "
             f"{LABELED_SEED}), {len(names) - len(seen_names)} unseen; {n_unlabeled} unlabeled images per shift (seed "
             f"{POOL_SEED}); {n_test} held-out test images per shift (seed {EVAL_SEED}); epochs={epochs}, lr={lr} "
             f"(the UL tuning record's choice); {seconds:.0f} s.",
             f"mean H over shifts: zero-shot {mean_h['zero-shot']:.1f}, {strategy} {mean_h[strategy]:.1f}; {strategy} "
             f"beats zero-shot (paired 95 % interval of the H difference above zero) on {beats} of {len(diffs)} "
             "shifts."]
    table = {"title": f"H difference, {strategy} − zero-shot (points, paired 95 % bootstrap interval)",
             "columns": ["shift", "diff", "lo", "hi", "beats"], "rows": diffs}
    return {"title": f"TRZSL {strategy} vs zero-shot on {model_label(model.bundle)}", "bench": "trzsl",
            "config": {"shifts": list(shifts), "seen": seen_names, "n_unlabeled": n_unlabeled,
                       "per_seen_class": per_seen_class, "n_test": n_test, "strategy": strategy, "epochs": epochs,
                       "lr": lr, "threads": threads, "n_resamples": n_resamples},
            "columns": ["shift", "method", "seen", "unseen", "H"], "rows": rows, "tables": [table],
            "differences": diffs, "mean_h": mean_h, "notes": notes}


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
