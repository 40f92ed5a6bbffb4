"""`edgeclip train-micro`: train the micro CLIP, export it as the embedded bundle, measure it."""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from edgeclip.data import shapes
from edgeclip.micro.config import MICRO_MODEL_NAME
from edgeclip.micro.train import EVAL_SEED, train_micro

log = logging.getLogger(__name__)

#: The shipped recipe.
DEFAULT_STEPS = 600


def evaluate_bundle(
    bundle: str | Path,
    *,
    n: int = 2048,
    seed: int = EVAL_SEED,
    shifts: Sequence[str] | None = None,
    backend: str = "onnxruntime",
    batch_size: int = 256,
    progress: bool = False,
) -> dict[str, float]:
    """Zero-shot accuracy of a bundle on every shift, through the deployed pipeline (runtime
    preprocessing and the exported encoders), on held-out images (`EVAL_SEED`, never trained on)."""
    from edgeclip.runtime.model import load

    model = load(bundle, backend=backend)
    clf = model.classifier(shapes.class_names(), template=shapes.ZERO_SHOT_TEMPLATE.replace("{cls}", "{}"))
    out: dict[str, float] = {}
    for shift in tqdm(list(shifts or shapes.SHIFTS), desc="evaluate", disable=not progress):
        batch = shapes.make_batch(n, seed=seed, shift=shift)
        preds = np.concatenate([
            clf.predict(list(batch.images[i : i + batch_size])).labels.numpy()
            for i in range(0, n, batch_size)
        ])
        out[shift] = float((preds == batch.labels).mean())
    return out


#: What the micro CLIP is, for `edgeclip info` (the manifest's `description`; its `classes` are the shapes').
MICRO_DESCRIPTION = ("a micro CLIP trained on procedural images of 16 coloured shapes (4 colours x 4 shapes); it "
                     "knows those 16 classes only and gives one of them for any image")


def write_manifest_extra(bundle: Path, extra: dict[str, Any]) -> None:
    """Merge `extra` into the manifest's free-form `extra` field (atomic rewrite, sealed again)."""
    from edgeclip.runtime.manifest import MANIFEST, write_manifest

    manifest = json.loads((bundle / MANIFEST).read_text(encoding="utf-8"))
    manifest.setdefault("extra", {}).update(extra)
    write_manifest(bundle, manifest)


def build_micro_bundle(
    out: str | Path | None = None,
    work: str | Path = "micro-work",
    *,
    steps: int | None = None,
    seed: int = 0,
    progress: bool = False,
) -> dict[str, Any]:
    """Train (clean domain only), export with fp16 storage, evaluate on held-out images of every shift.
    The manifest lists the 16 class names (`classes`) and says what the model is (`description`)."""
    from edgeclip.assets import MICRO_BUNDLE
    from edgeclip.export import export_bundle

    out = Path(out) if out is not None else MICRO_BUNDLE
    result = train_micro(work, steps=steps or DEFAULT_STEPS, seed=seed, progress=progress)
    exported = export_bundle(out, MICRO_MODEL_NAME, checkpoint=result.checkpoint, storage="float16",
                             overwrite=True, progress=progress, classes=shapes.class_names(),
                             description=MICRO_DESCRIPTION)
    acc = evaluate_bundle(out, progress=progress)
    training = {"steps": result.steps, "seed": seed, "seconds": round(result.seconds, 1),
                "final_loss": round(result.final_loss, 4), "data": "edgeclip.data.shapes, clean domain"}
    write_manifest_extra(out, {"training": training,
                               "zero_shot_accuracy": {"seed": EVAL_SEED, "n": 2048, **acc}})
    size = sum(p.stat().st_size for p in out.iterdir())
    return {"bundle": str(out), "checkpoint": str(result.checkpoint), **training, "bundle_mb": round(size / 1e6, 2),
            "parity": exported.parity.to_dict(), "shift_accuracy": acc}
