"""The demo: zero-shot accuracy and per-image latency of a bundle on the procedural shapes benchmark,
on the clean domain and under every domain shift, for each backend this machine can run; then zero-shot,
TPT, PromptSync and ZERO side by side on the first frames of every shift."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from edgeclip.data import shapes
from edgeclip.errors import InputError
from edgeclip.runtime.methods import create_method
from edgeclip.runtime.model import load
from edgeclip.runtime.ort_session import available_providers

log = logging.getLogger(__name__)

#: Seed of the demo's images; the micro model's training draws from a disjoint seed stream.
DEMO_SEED = 424_242


def _check_n(n: int, name: str) -> None:
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise InputError(f"{name} must be a positive integer, got {n!r}")


def _one_at_a_time(predictor: Any, images: Any, bar: Any) -> tuple[np.ndarray, np.ndarray]:
    """Labels and seconds per image, one timed `predict` call per image (a frame at a time, as a camera feeds)."""
    preds = np.empty(len(images), dtype=np.int64)
    times = np.empty(len(images))
    for i, image in enumerate(images):
        t0 = time.perf_counter()
        preds[i] = int(predictor.predict([image]).labels[0])
        times[i] = time.perf_counter() - t0
        bar.update()
    return preds, times


def default_backends() -> list[str]:
    return ["torch", "onnxruntime"] if available_providers() else ["torch"]


def run_demo(
    bundle: str | Path | None = None,
    *,
    n_per_shift: int = 200,
    shifts: Sequence[str] | None = None,
    backends: Sequence[str] | None = None,
    seed: int = DEMO_SEED,
    threads: int | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """Classify `n_per_shift` images per shift one at a time (batch 1, as frames arrive) and report
    accuracy and the median / p90 wall time per image, preprocessing included. `threads` limits onnxruntime
    and PyTorch (process-wide, see `EdgeClip`)."""
    from edgeclip import default_bundle

    _check_n(n_per_shift, "n_per_shift")
    path = Path(bundle) if bundle is not None else default_bundle()
    shifts = list(shifts) if shifts is not None else list(shapes.SHIFTS)
    backends = list(backends) if backends is not None else default_backends()
    names = shapes.class_names()
    # the same scenes under every shift, so rows differ only by the shift
    data = {s: shapes.make_batch(n_per_shift, seed=seed, shift=s) for s in shifts}
    rows: list[dict[str, Any]] = []
    total = len(shifts) * len(backends) * n_per_shift
    bar = tqdm(total=total, desc="demo", unit="img", disable=not progress)
    for backend in backends:
        model = load(path, backend=backend, threads=threads)
        clf = create_method("zeroshot", model, names, template=ZERO_SHOT_TEMPLATE)
        clf.predict([data[shifts[0]].images[0]])  # warm-up
        for s in shifts:
            batch = data[s]
            preds, times = _one_at_a_time(clf, batch.images[:n_per_shift], bar)
            rows.append({
                "shift": s,
                "backend": backend,
                "accuracy": float((preds == batch.labels).mean()),
                "n": n_per_shift,
                "median_ms": float(np.median(times) * 1e3),
                "p90_ms": float(np.percentile(times, 90) * 1e3),
            })
    bar.close()
    return {"bundle": str(path), "classes": names, "seed": seed, "rows": rows}


def demo_table(result: dict[str, Any]) -> str:
    """Markdown: one row per shift, accuracy and latency per backend."""
    backends = list(dict.fromkeys(r["backend"] for r in result["rows"]))
    head = ["shift"] + [f"{b} acc" for b in backends] + [f"{b} ms/img (p90)" for b in backends]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    by = {(r["shift"], r["backend"]): r for r in result["rows"]}
    for s in dict.fromkeys(r["shift"] for r in result["rows"]):
        acc = [f"{100 * by[s, b]['accuracy']:.1f}%" for b in backends]
        lat = [f"{by[s, b]['median_ms']:.2f} ({by[s, b]['p90_ms']:.2f})" for b in backends]
        lines.append("| " + " | ".join([s, *acc, *lat]) + " |")
    return "\n".join(lines)


#: the demo's columns: label -> registered method
TTA_METHODS: dict[str, str] = {"zero-shot": "zeroshot", "tpt": "tpt", "promptsync": "promptsync", "zero": "zero"}
ZERO_SHOT_TEMPLATE = shapes.ZERO_SHOT_TEMPLATE.replace("{cls}", "{}")


def run_tta_demo(
    bundle: str | Path | None = None,
    *,
    n_per_shift: int = 16,
    shifts: Sequence[str] | None = None,
    seed: int = DEMO_SEED,
    threads: int | None = None,
    backend: str = "auto",
    progress: bool = False,
) -> dict[str, Any]:
    """Zero-shot, TPT, PromptSync (episodic, with prototypes built from the clean proxy set) and ZERO on the
    same `n_per_shift` frames per shift, one frame at a time, on `backend`: accuracy and median ms per frame."""
    from edgeclip import default_bundle
    from edgeclip.runtime.prototypes import build_prototypes

    _check_n(n_per_shift, "n_per_shift")
    path = Path(bundle) if bundle is not None else default_bundle()
    shifts = list(shifts) if shifts is not None else list(shapes.SHIFTS)
    names = shapes.class_names()
    model = load(path, backend=backend, threads=threads)
    protos = build_prototypes(model, "shapes:256", progress=False)
    settings: dict[str, dict[str, Any]] = {"zeroshot": {"template": ZERO_SHOT_TEMPLATE}, "tpt": {"seed": seed},
                                           "promptsync": {"seed": seed, "prototypes": protos}, "zero": {"seed": seed}}
    methods = {label: (lambda name=name: create_method(name, model, names, **settings[name]))
               for label, name in TTA_METHODS.items()}
    rows: list[dict[str, Any]] = []
    bar = tqdm(total=len(shifts) * len(methods) * n_per_shift, desc="demo: test-time adaptation", unit="frame",
               disable=not progress)
    for s in shifts:
        batch = shapes.make_batch(n_per_shift, seed=seed, shift=s)
        for name, make in methods.items():
            method = make()
            preds, times = _one_at_a_time(method, batch.images[:n_per_shift], bar)
            rows.append({"shift": s, "method": name, "accuracy": float((preds == batch.labels).mean()),
                         "n": n_per_shift, "median_ms": float(np.median(times) * 1e3)})
    bar.close()
    return {"bundle": str(path), "backend": model.backend, "seed": seed, "rows": rows,
            "prototypes": "shapes:256 (clean proxy images, disjoint from the demo frames)"}


def tta_table(result: dict[str, Any]) -> str:
    """Markdown: one row per shift, accuracy per method, then the mean row and ms per frame."""
    methods = list(dict.fromkeys(r["method"] for r in result["rows"]))
    by = {(r["shift"], r["method"]): r for r in result["rows"]}
    shifts = list(dict.fromkeys(r["shift"] for r in result["rows"]))
    lines = ["| shift | " + " | ".join(methods) + " |", "|" + "---|" * (len(methods) + 1)]
    for s in shifts:
        lines.append(f"| {s} | " + " | ".join(f"{100 * by[s, m]['accuracy']:.1f}%" for m in methods) + " |")
    mean = [100 * float(np.mean([by[s, m]["accuracy"] for s in shifts])) for m in methods]
    lines.append("| **mean** | " + " | ".join(f"**{v:.1f}%**" for v in mean) + " |")
    ms = [float(np.median([by[s, m]["median_ms"] for s in shifts])) for m in methods]
    lines.append("| ms/frame | " + " | ".join(f"{v:.0f}" for v in ms) + " |")
    return "\n".join(lines)
