"""`edgeclip bench train --method clap|arf`: what one CLAP task and one ARF epoch cost on this machine.

A device that learns in the field needs the wall time and the peak memory of a training step before it takes
one. Per model (the micro CLIP, or a random-weight open_clip bundle with synthetic class names):

* **clap** — a learner meets ``tasks`` tasks of ``classes_per_task`` classes, ``per_class`` images each (a few
  augmented views per image, encoded once into a feature pool: reported apart as ``encode_s``). Per task: the
  wall time of `CLAP.learn_task` (training on the task and the rehearsal memory, the memory update and, from the
  second task on, the balanced fine-tune), that time per epoch, and the peak memory of the call. Task 1 has no
  memory and no fine-tune, so the later tasks are the typical cost.
* **arf** — one device-mode fit (`ARF`: the context and the adapter on cached embeddings, both anchor losses)
  timed per epoch, and, where `edgeclip.export.finetune` is available and the bundle carries its PyTorch towers,
  the workstation mode (the image tower fine-tuned in PyTorch with the same losses) on the same images and
  epochs: the two side by side in one run, with the ratio of their per-epoch times. A fit's time includes its
  one-off setup (the workstation mode rebuilds the PyTorch model and encodes the texts; the device mode encodes
  the prompts and anchors), divided over its epochs like the training.

Each measurement is repeated ``rounds`` times with a fresh learner; the report gives the median and the range.
The images are procedural shapes (their labels drawn at random for synthetic classes), so the figures are
costs, not accuracies.
"""

from __future__ import annotations

import logging
import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from edgeclip.bench.common import class_names, model_label, random_weight_bundle, torch_threads
from edgeclip.bench.memory import MEMORY_METHODS, PeakMemory
from edgeclip.bench.report import machine_info, write_report
from edgeclip.data import shapes

__all__ = ["METHODS", "bench_train_cost", "write_cost_report"]

log = logging.getLogger(__name__)

METHODS = ("clap", "arf")
REPORT_NAME = "train-cost"


def _measure(fn: Callable[[], Any], memory: PeakMemory) -> tuple[float, float, Any]:
    """Wall seconds, peak MiB and the result of one call."""
    memory.start()
    t0 = time.perf_counter()
    out = fn()
    seconds = time.perf_counter() - t0
    return seconds, memory.stop(), out


def _summary(values: Sequence[float]) -> dict[str, float]:
    return {"median": float(statistics.median(values)), "min": float(min(values)), "max": float(max(values))}


def _flat(key: str, values: Sequence[float]) -> dict[str, float]:
    """``{key: median, key_min: ..., key_max: ...}`` of repeated measurements."""
    s = _summary(values)
    return {key: s["median"], f"{key}_min": s["min"], f"{key}_max": s["max"]}


def _data(names: list[str], per_class: int, seed: int) -> tuple[list[Any], list[int], list[str]]:
    """``per_class`` images of each class: the shapes' own classes when `names` are theirs, else shapes images
    given synthetic labels."""
    micro = shapes.class_names()
    if set(names) <= set(micro):
        labels = [micro.index(n) for n in names for _ in range(per_class)]
        batch = shapes.make_batch(len(labels), seed=seed, labels=torch.tensor(labels).numpy())
        index = {micro.index(n): i for i, n in enumerate(names)}
        return list(batch.images), [index[int(y)] for y in batch.labels], list(batch.captions)
    batch = shapes.make_batch(per_class * len(names), seed=seed)
    ys = [i // per_class for i in range(per_class * len(names))]
    caps = [f"{c}, {names[y]}" for c, y in zip(batch.captions, ys, strict=True)]
    return list(batch.images), ys, caps


def _clap_rows(model: Any, names: list[str], *, tasks: int, classes_per_task: int, per_class: int,
               extra_views: int, rounds: int, settings: dict[str, Any], memory: PeakMemory) -> dict[str, Any]:
    from edgeclip.runtime.feature_pool import ViewPolicy, build_feature_pool
    from edgeclip.runtime.methods import create_method

    pools = []
    encode_s = 0.0
    for t in range(tasks):
        task_names = names[t * classes_per_task : (t + 1) * classes_per_task]
        images, ys, _ = _data(task_names, per_class, seed=20_700 + t)
        t0 = time.perf_counter()
        pools.append(build_feature_pool(model, images, class_names=task_names, labels=ys,
                                        views=ViewPolicy(extra_views=extra_views, view_seed=t), cache=False))
        encode_s += time.perf_counter() - t0
    per_task: list[dict[str, list[float]]] = [{"seconds": [], "peak_mb": [], "per_epoch_s": []} for _ in pools]
    steps: list[int] = [0] * len(pools)
    for r in range(rounds):
        learner = create_method("clap", model, [], seed=r, **settings)
        for t, pool in enumerate(pools):
            seconds, peak, report = _measure(lambda p=pool, m=learner: m.learn_task(p), memory)
            per_task[t]["seconds"].append(seconds)
            per_task[t]["peak_mb"].append(peak)
            per_task[t]["per_epoch_s"].append(seconds / max(1, report.epochs))
            steps[t] = report.steps
            log.info("clap round %d task %d: %.2f s, %.1f MiB", r + 1, t + 1, seconds, peak)
    rows = [{"method": "clap", "what": f"task {t + 1}" + (" (no memory yet)" if t == 0 else ""),
             "classes_so_far": (t + 1) * classes_per_task, "images": len(pools[t]), "steps": steps[t],
             **_flat("wall_s", v["seconds"]), **_flat("per_epoch_s", v["per_epoch_s"]),
             **_flat("peak_mb", v["peak_mb"])} for t, v in enumerate(per_task)]
    return {"rows": rows, "encode_s": encode_s, "views": 1 + extra_views}


def _arf_rows(model: Any, names: list[str], *, per_class: int, epochs: int, rounds: int, settings: dict[str, Any],
              memory: PeakMemory, workstation: bool) -> dict[str, Any]:
    from edgeclip.runtime.feature_pool import build_feature_pool
    from edgeclip.runtime.methods import create_method
    from edgeclip.runtime.methods.arf_anchors import AnchorSet, caption_anchors_for_pool

    images, ys, caps = _data(names, per_class, seed=20_800)
    pair_images, _, pair_caps = _data(names, max(1, per_class // 2), seed=20_900)
    t0 = time.perf_counter()
    pool = build_feature_pool(model, images, class_names=names, labels=ys, cache=False)
    anchors = caption_anchors_for_pool(model, pool, caps)
    pair_pool = build_feature_pool(model, pair_images, cache=False)
    pairs = AnchorSet.from_tensors(pair_pool.plain, model.encode_text(pair_caps).float(), pair_caps)
    encode_s = time.perf_counter() - t0
    out: dict[str, dict[str, list[float]]] = {"device": {"per_epoch_s": [], "peak_mb": []}}
    for r in range(rounds):
        arf = create_method("arf", model, names, epochs=epochs, seed=r, min_similarity=-1.0, **settings)
        seconds, peak, _ = _measure(lambda a=arf: a.fit(pool, captions=anchors, pairs=pairs), memory)
        out["device"]["per_epoch_s"].append(seconds / epochs)
        out["device"]["peak_mb"].append(peak)
        log.info("arf device round %d: %.3f s/epoch, %.1f MiB", r + 1, seconds / epochs, peak)
    if workstation:
        from edgeclip.export import finetune

        out["workstation"] = {"per_epoch_s": [], "peak_mb": []}
        for r in range(rounds):
            seconds, peak, _ = _measure(lambda s=r: finetune.finetune_image_encoder(
                model.bundle.path, images, ys, names, captions=caps, pairs=(pair_images, pair_caps), epochs=epochs,
                seed=s, min_similarity=-1.0), memory)
            out["workstation"]["per_epoch_s"].append(seconds / epochs)
            out["workstation"]["peak_mb"].append(peak)
            log.info("arf workstation round %d: %.3f s/epoch, %.1f MiB", r + 1, seconds / epochs, peak)
    rows = [{"method": "arf", "what": f"{mode} mode, a fit of {epochs} epochs", "classes_so_far": len(names),
             "images": len(pool),
             "steps": None, **_flat("wall_s", [e * epochs for e in v["per_epoch_s"]]),
             **_flat("per_epoch_s", v["per_epoch_s"]), **_flat("peak_mb", v["peak_mb"])} for mode, v in out.items()]
    ratio = None
    if "workstation" in out:
        per_round = [w / d for w, d in zip(out["workstation"]["per_epoch_s"], out["device"]["per_epoch_s"],
                                           strict=True)]
        ratio = _summary(per_round)
    return {"rows": rows, "encode_s": encode_s, "workstation_over_device": ratio}


def bench_train_cost(method: str, bundle: str | Path | None = None, *, model_name: str | None = None,
                     classes: int | None = None, tasks: int = 4, per_class: int = 16, extra_views: int = 3,
                     epochs: int = 5, rounds: int = 3, threads: int | None = None, workstation: bool = True,
                     settings: dict[str, Any] | None = None, cache_dir: str | Path = "bench-results/bundles",
                     progress: bool = False) -> dict[str, Any]:
    """Time and measure one `method` ("clap": per task; "arf": per epoch) on `bundle` or a random-weight
    `model_name` bundle (see the module docstring); a `write_report` dict."""
    import edgeclip

    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    b = random_weight_bundle(model_name, cache_dir, progress=progress) if model_name else bundle
    settings = dict(settings or {})
    memory = PeakMemory("cpu")
    with torch_threads(threads):
        model = edgeclip.load(b, threads=threads)
        names = shapes.class_names() if classes is None else class_names(classes)
        if method == "clap":
            if len(names) % tasks:
                raise ValueError(f"{len(names)} classes do not split into {tasks} equal tasks")
            res = _clap_rows(model, names, tasks=tasks, classes_per_task=len(names) // tasks, per_class=per_class,
                             extra_views=extra_views, rounds=rounds, settings=settings, memory=memory)
        else:
            can = workstation and _workstation_available(model)
            res = _arf_rows(model, names, per_class=per_class, epochs=epochs, rounds=rounds, settings=settings,
                            memory=memory, workstation=can)
    label = model_label(model.bundle)
    notes = [f"{label}, C = {len(names)}, {per_class} images per class; encoding the images once took "
             f"{res['encode_s']:.2f} s (not in the rows); median [min, max] over {rounds} rounds, each with a "
             f"fresh learner; peak memory = {MEMORY_METHODS[memory.method]}."]
    if res.get("workstation_over_device"):
        w = res["workstation_over_device"]
        notes.append(f"workstation / device epoch time: {w['median']:.1f}× [{w['min']:.1f}, {w['max']:.1f}] (the "
                     "workstation mode runs the image tower forward and backward every step)")
    title = (f"One CLAP task on {label}" if method == "clap" else f"One ARF epoch on {label}") + f", C = {len(names)}"
    return {"title": title, "bench": "train-cost", "method": method,
            "config": {"bundle": str(model.bundle.path), "model": label, "method": method, "classes": len(names),
                       "tasks": tasks if method == "clap" else None, "per_class": per_class,
                       "extra_views": extra_views if method == "clap" else 0, "epochs": epochs, "rounds": rounds,
                       "threads": threads, "settings": settings, "backend": model.backend},
            "columns": ["method", "what", "classes_so_far", "images", "steps", "wall_s", "wall_s_min", "wall_s_max",
                        "per_epoch_s", "peak_mb", "peak_mb_min", "peak_mb_max"],
            "rows": res["rows"], "encode_s": res["encode_s"],
            "workstation_over_device": res.get("workstation_over_device"), "notes": notes,
            "machine": machine_info(threads)}


def _workstation_available(model: Any) -> bool:
    from edgeclip.runtime import bundle as B

    try:
        from edgeclip.export import finetune  # noqa: F401
    except ImportError:
        return False
    return model.bundle.has(B.IMAGE_TOWER) and model.bundle.has(B.TEXT_TOWER)


def write_cost_report(results: dict[str, Any], out_dir: str | Path, suffix: str | None = None) -> dict[str, Path]:
    """Write ``out_dir/train-cost-METHOD[-SUFFIX].json`` and ``.md``; returns their paths."""
    name = f"{REPORT_NAME}-{results['method']}" + (f"-{suffix}" if suffix else "")
    return write_report(results, Path(out_dir), name)
