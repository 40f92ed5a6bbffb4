"""Does the fast view kernel change what TPT predicts? TPT on the micro benchmark, run twice on exactly the
same boxes: once with `augment_views`' views, once with torchvision v2's per-view views.

The frames are the procedural dataset's held-out evaluation stream (`edgeclip.data.streams.held_out`), which
no method was tuned on. Both runs draw their boxes from generators with the same seed, so every view of
every frame covers the same source pixels; only the resampling implementation differs.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from edgeclip.bench.peers.tpt_views import tv2_views
from edgeclip.data import shapes
from edgeclip.data.streams import EVAL_SEED, held_out
from edgeclip.kernels.view_boxes import sample_boxes
from edgeclip.runtime.methods import TPT, create_method
from edgeclip.runtime.methods.frames import ViewFn
from edgeclip.runtime.model import EdgeClip, load

__all__ = ["torchvision_view_fn", "tpt_view_accuracy"]

logger = logging.getLogger(__name__)


def torchvision_view_fn(size: int, mean: Sequence[float], std: Sequence[float]) -> ViewFn:
    """TPT's views made by torchvision v2, one view at a time, on the boxes `augment_views` would draw."""

    def views(frame: torch.Tensor, n_views: int, generator: torch.Generator) -> torch.Tensor:
        boxes = sample_boxes(frame.shape[0], frame.shape[1], n_views, generator=generator)
        return tv2_views(frame.permute(2, 0, 1).contiguous(), boxes, size, mean=mean, std=std)

    return views


def _accuracy(method: TPT, images: np.ndarray, labels: np.ndarray, batch: int,
              progress: Callable[[int], None]) -> tuple[float, np.ndarray]:
    preds = []
    for i in range(0, len(images), batch):
        preds.append(method.predict(images[i : i + batch]).labels.numpy())
        progress(min(batch, len(images) - i))
    pred = np.concatenate(preds)
    return float((pred == labels).mean()), pred


def tpt_view_accuracy(
    bundle: str | Path | None = None,
    *,
    n: int = 1000,
    shifts: Sequence[str] | None = None,
    seed: int = 0,
    backend: str = "auto",
    threads: int | None = None,
    show_progress: bool = False,
) -> dict[str, Any]:
    """Accuracy of TPT with kernel views and with torchvision views, per shift and averaged."""
    from edgeclip.assets import default_bundle_path

    if threads is not None:
        torch.set_num_threads(threads)
    model: EdgeClip = load(bundle or default_bundle_path(), backend=backend, threads=threads)
    cfg = model.preprocess_cfg
    names = shapes.class_names()
    shifts = list(shifts or shapes.SHIFTS)
    rows = []
    bar = tqdm(total=2 * n * len(shifts), desc="TPT, two view paths", unit="frame", disable=not show_progress)
    for shift in shifts:
        batch = held_out(shift, n)
        labels = np.asarray(batch.labels)
        result: dict[str, Any] = {"shift": shift, "n": n}
        preds = {}
        for label, views in (("kernel", None), ("torchvision", torchvision_view_fn(cfg.image_size, cfg.mean, cfg.std))):
            method = create_method("tpt", model, names, seed=seed, view_fn=views)
            t0 = time.perf_counter()
            acc, preds[label] = _accuracy(method, batch.images, labels, 64, bar.update)
            result[f"tpt_{label}"] = 100.0 * acc
            result[f"{label}_s"] = time.perf_counter() - t0
        result["diff_points"] = result["tpt_kernel"] - result["tpt_torchvision"]
        result["same_prediction"] = 100.0 * float((preds["kernel"] == preds["torchvision"]).mean())
        rows.append(result)
        logger.info("%s: kernel %.2f%%, torchvision %.2f%%", shift, result["tpt_kernel"], result["tpt_torchvision"])
    bar.close()
    mean = {
        "shift": "mean",
        "n": n * len(shifts),
        "tpt_kernel": float(np.mean([r["tpt_kernel"] for r in rows])),
        "tpt_torchvision": float(np.mean([r["tpt_torchvision"] for r in rows])),
        "same_prediction": float(np.mean([r["same_prediction"] for r in rows])),
    }
    mean["diff_points"] = mean["tpt_kernel"] - mean["tpt_torchvision"]
    return {"rows": [*rows, mean], "seed": seed, "eval_seed": EVAL_SEED, "bundle": str(model.bundle.path),
            "backend": model.backend, "threads": torch.get_num_threads(), "config": {"threads": threads}}
