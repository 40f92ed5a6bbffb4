"""`edgeclip bench tta --part speed`: edgeclip's TPT against the reference TPT loop, per image, in one run.

The two alternate on each image (settle, then one timed call each; the order flips every image), on the micro
bundle (its 16 shapes class names, and C synthetic 1–4-word names for each C in `classes`) and on a
random-weight bundle (ViT-B-32 by default, exported once into the bundle cache) at each C. edgeclip runs its
own fast path (kernel views); the agreement that matters is checked in the same run with the *reference's* PIL
views handed to a second edgeclip TPT through ``views=`` (untimed), so both adapt on exactly the same pixels.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from edgeclip.bench.common import class_names, cuda_sync, guard_oom, model_label, progress_bar
from edgeclip.bench.kernels import noisy_frame
from edgeclip.bench.memory import MEMORY_METHODS, PeakMemory
from edgeclip.bench.method_factory import make_tpt
from edgeclip.bench.report import add_busy_note, cpu_snapshot, other_cpu_load
from edgeclip.bench.timing import RATIO_NOTE, paired_calls, ratio_with_spread
from edgeclip.data import shapes
from edgeclip.data.streams import held_out
from edgeclip.runtime.model import EdgeClip

log = logging.getLogger(__name__)

__all__ = ["SPEED_COLUMNS", "SPEED_FRAME", "SpeedTarget", "speed_frames", "speed_part"]

SPEED_FRAME = (480, 640)  # camera-like frame for the random-weight bundle (noise texture, `noisy_frame`)
SPEED_COLUMNS = ["bundle", "names", "classes", "tokens", "n", "edgeclip_ms", "reference_ms", "speedup", "speedup_lo",
                 "speedup_hi", "agree_same_views", "agree_own_views", "edgeclip_peak_mb", "reference_peak_mb",
                 "other_load"]


@dataclass
class SpeedTarget:
    """One bundle of the speed part, loaded, with the frames it runs on."""

    label: str  # "micro" | the model name
    model: EdgeClip
    frames: list[torch.Tensor]  # uint8 [H, W, 3]; warm-up frames first


def speed_frames(bundle_label: str, count: int, seed: int) -> list[torch.Tensor]:
    """`count` frames: held-out clean images for the micro bundle, camera-sized noise frames otherwise."""
    if bundle_label == "micro":
        return [torch.from_numpy(im.copy()) for im in held_out("clean", count).images]
    return [noisy_frame(*SPEED_FRAME, seed=seed + i) for i in range(count)]


def _speed_case(target: SpeedTarget, names: list[str], names_kind: str, *, n_views: int, warmup: int, seed: int,
                device: str, memory: PeakMemory, tick: Callable[[], None]) -> dict[str, Any]:
    """edgeclip's TPT and the reference on the same frames, alternating per image; agreement on the same views."""
    from edgeclip.bench.peers.tpt_reference import ReferenceTPT

    model = target.model
    edge = make_tpt(model, names, n_views=n_views, seed=seed)
    ref = ReferenceTPT(model, names, n_views=n_views, seed=seed)
    used: dict[str, torch.Tensor] = {}
    own_views = ref.views_of

    def recording_views(frame: torch.Tensor) -> torch.Tensor:
        used["views"] = own_views(frame)
        return used["views"]

    ref.views_of = recording_views  # type: ignore[method-assign]  # keeps the reference's own views, records them
    same = make_tpt(model, names, n_views=n_views, seed=seed, views=lambda frame, n, g: used["views"])
    tokens = int(edge.prompt.build(edge.class_names)[1].max()) + 1
    snap = cpu_snapshot()
    sync = cuda_sync(device)
    for frame in target.frames[:warmup]:
        edge.predict(frame)
        ref.predict(frame)
        tick()
    timed = target.frames[warmup:]
    checks: list[dict[str, Any]] = []

    def after(label: str, i: int, pred: Any) -> None:
        if label == "reference":  # the views the reference just used, through edgeclip's TPT (untimed)
            p = same.predict(timed[i])
            checks.append({"i": i, "same_label": int(p.labels[0]), "ref_label": int(pred.labels[0]),
                           "max_prob_diff": float((p.probs[0] - pred.probs[0]).abs().max())})

    calls = paired_calls({"edgeclip": lambda i: edge.predict(timed[i]), "reference": lambda i: ref.predict(timed[i])},
                         len(timed), memory=memory, sync=sync, after_call=after, tick=tick)
    e, r = calls.stats["edgeclip"], calls.stats["reference"]
    ratio = ratio_with_spread(e, r, paired=True)
    edge_labels = [int(p.labels[0]) for p in calls.results["edgeclip"]]
    ref_labels = [int(p.labels[0]) for p in calls.results["reference"]]
    checks.sort(key=lambda c: c["i"])
    row = {"bundle": target.label, "model": model_label(model.bundle), "names": names_kind, "classes": len(names),
           "tokens": tokens, "reference_tokens": ref.tower.context_length, "n": e.n,
           "edgeclip_ms": e.median_ms, "edgeclip_p90_ms": e.p90_ms, "reference_ms": r.median_ms,
           "reference_p90_ms": r.p90_ms, "speedup": ratio["ratio"], "speedup_p90": ratio["ratio_p90"],
           "speedup_lo": ratio["ratio_lo"], "speedup_hi": ratio["ratio_hi"],
           "speedup_of_medians": ratio["ratio_of_medians"],
           "agree_same_views": float(np.mean([c["same_label"] == c["ref_label"] for c in checks])),
           "agree_own_views": float(np.mean([a == b for a, b in zip(edge_labels, ref_labels, strict=True)])),
           "max_prob_diff_same_views": max(c["max_prob_diff"] for c in checks),
           "edgeclip_peak_mb": max(calls.peaks_mb["edgeclip"]), "reference_peak_mb": max(calls.peaks_mb["reference"]),
           "edgeclip_labels": edge_labels, "reference_labels": ref_labels,
           "same_views_labels": [c["same_label"] for c in checks],
           "edgeclip_samples_ms": list(e.samples_ms), "reference_samples_ms": list(r.samples_ms),
           "edgeclip_peaks_mb": calls.peaks_mb["edgeclip"], "reference_peaks_mb": calls.peaks_mb["reference"],
           "other_load": other_cpu_load(snap, cpu_snapshot()), "error": None}
    log.info("speed %s C=%d: edgeclip %.1f ms, reference %.1f ms (×%.1f)", target.label, len(names), e.median_ms,
             r.median_ms, ratio["ratio"])
    return row


def speed_part(targets: list[SpeedTarget], *, classes: list[int], images: int, warmup: int, n_views: int,
               seed: int, device: str, progress: bool) -> dict[str, Any]:
    """Run the speed part (see the module docstring) on every target and C; a `write_report` dict. A case that
    runs out of memory becomes a row with ``error`` set."""
    memory = PeakMemory(device)
    cases: list[tuple[SpeedTarget, list[str], str]] = []
    for t in targets:
        if t.label == "micro":
            cases.append((t, shapes.class_names(), "shapes"))
        cases += [(t, class_names(c, seed), "synthetic 1–4 words") for c in classes]
    bar = progress_bar(len(cases) * (warmup + images), "bench tta speed", "image", progress)
    snap_start = cpu_snapshot()
    rows = []
    try:
        for target, names, kind in cases:
            bar.set_postfix_str(f"{target.label} C={len(names)}")
            res = guard_oom(lambda target=target, names=names, kind=kind: _speed_case(
                target, names, kind, n_views=n_views, warmup=warmup, seed=seed, device=device, memory=memory,
                tick=lambda: bar.update(1)), f"speed {target.label} C={len(names)}")
            rows.append(res.value if res.ok else {"bundle": target.label, "names": kind, "classes": len(names),
                                                  "error": res.error})
    finally:
        bar.close()
    config = {"bundles": {t.label: str(t.model.bundle.path) for t in targets},
              "backend": targets[0].model.backend if targets else None, "device": device, "classes": classes,
              "images": images, "warmup": warmup, "n_views": n_views, "seed": seed, "class_names_seed": seed,
              "frame": {"micro": "held_out('clean') frames, 64×64",
                        "other": f"noisy_frame {SPEED_FRAME[0]}×{SPEED_FRAME[1]}, seeds {seed}…"},
              "memory_method": memory.method, "other_load": other_cpu_load(snap_start, cpu_snapshot())}
    notes = [
        f"per image, same run: after {warmup} untimed warm-up image(s) each, edgeclip's TPT and the reference TPT "
        "(`ReferenceTPT`: TPT's PIL view loop, full 77-token text, fp32 PyTorch encoders, image features "
        "recomputed per call) alternate on every image (the order flips each image; a 0.1 s settle sleep before "
        "each timed call); *_ms = median per image over the timed images; the ratio is reference / edgeclip per "
        f"image: {RATIO_NOTE}.",
        "edgeclip times its own fast path (kernel views, exported image encoder, truncated text tower). "
        "agree_same_views: after each timed reference call a second edgeclip TPT adapts (untimed) on exactly the "
        "views the reference just used (its PIL views, through `views=`) and the fraction of images where the "
        "two predict the same label is reported (max_prob_diff_same_views in the JSON); agree_own_views compares "
        "the timed runs, whose views differ (different random crops), so it is information only.",
        f"peak memory per timed call, the largest over the images: {MEMORY_METHODS[memory.method]}.",
        f"C synthetic class names of 1–4 words (`class_names(C, seed={seed})`); micro also with its 16 shapes "
        f"names. tokens = edgeclip's text length (longest prompt); the reference always runs the full context. "
        f"{n_views} views, ρ = 0.1, one AdamW step (lr 5e-3).",
    ]
    add_busy_note(rows, notes)
    return {"title": "TPT per image: edgeclip vs the reference TPT loop", "bench": "tta-speed", "config": config,
            "columns": list(SPEED_COLUMNS), "rows": rows, "notes": notes}
