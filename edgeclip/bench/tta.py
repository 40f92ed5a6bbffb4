"""Test-time adaptation side by side (`edgeclip bench tta`): accuracy, speed against the reference TPT, text path.

Three parts, each selectable (`PARTS`), each in its own module:

- ``accuracy`` (`edgeclip.bench.tta_accuracy`): every method on every shift of the held-out stream and the
  class-imbalanced stream, one timed ``predict`` per frame, with paired differences between methods and their
  bootstrap intervals over frames.
- ``speed`` (`edgeclip.bench.tta_speed`): edgeclip's `TPT` against `ReferenceTPT` per image in the same run, on
  the micro bundle and a random-weight bundle of `model`, at each C.
- ``text-stress`` (`edgeclip.bench.tta_text`): the text path alone, one TPT step for C synthetic classes,
  truncated tower against the full 77-token sequence.

This module runs the parts (`bench_tta`) and writes their reports (`write_tta_reports`). Peak memory:
`edgeclip.bench.memory.PeakMemory`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgeclip.bench.common import random_weight_bundle, resolve_bundle, torch_threads
from edgeclip.bench.figures import check_matplotlib
from edgeclip.bench.method_factory import DEFAULT_PROTOTYPES, METHODS, load_prototypes, make_method
from edgeclip.bench.report import cpu_snapshot, machine_info, other_cpu_load, positive_ints, write_report
from edgeclip.bench.timing import check_device_threads
from edgeclip.bench.tta_accuracy import ACCURACY_COLUMNS, REF_SUBSET, accuracy_part, plot_accuracy
from edgeclip.bench.tta_speed import SPEED_COLUMNS, SpeedTarget, speed_frames, speed_part
from edgeclip.bench.tta_text import TEXT_COLUMNS, plot_text, text_part
from edgeclip.data import shapes
from edgeclip.errors import InputError
from edgeclip.runtime import bundle as B
from edgeclip.runtime.model import EdgeClip, load

__all__ = [
    "ACCURACY_COLUMNS",
    "DEFAULT_PROTOTYPES",
    "METHODS",
    "PARTS",
    "REF_SUBSET",
    "REPORT_NAMES",
    "SPEED_COLUMNS",
    "TEXT_COLUMNS",
    "bench_tta",
    "load_prototypes",
    "make_method",
    "random_weight_bundle",
    "write_tta_reports",
]

PARTS = ("accuracy", "speed", "text-stress")
DEFAULT_MODEL = "ViT-B-32"
REPORT_NAMES = {"accuracy": "tta-accuracy", "speed": "tta-speed", "text-stress": "tta-text-stress"}
_PLOTS: dict[str, Callable[[dict[str, Any], Path], None]] = {"accuracy": plot_accuracy, "text-stress": plot_text}


def write_tta_reports(results: dict[str, Any], out_dir: str | Path, *, suffix: str = "",
                      command: str | None = None) -> dict[str, dict[str, Path]]:
    """Write each part of a `bench_tta` result as ``out_dir/tta-<part><suffix>.json`` and ``.md`` (`write_report`),
    plus ``.png`` for the accuracy and text-stress parts; `command` (the command line that ran the bench) goes
    into each report. Returns ``{part: {"json", "md"[, "png"]}}``."""
    out = Path(out_dir).expanduser()
    files: dict[str, dict[str, Path]] = {}
    for part, res in results["parts"].items():
        name = REPORT_NAMES[part] + suffix
        paths = dict(write_report(res, out, name, command=command))
        if part in _PLOTS:
            check_matplotlib()
            paths["png"] = out / f"{name}.png"
            _PLOTS[part](res, paths["png"])
        files[part] = paths
    return files


# -- entry point ------------------------------------------------------------------------------------------
@dataclass
class _Models:
    """Loaded models, one per bundle, shared by the parts."""

    backend: str
    device: str
    threads: int | None
    cache: dict[str, EdgeClip] = field(default_factory=dict)

    def get(self, bundle: B.Bundle) -> EdgeClip:
        key = str(bundle.path)
        if key not in self.cache:
            self.cache[key] = load(bundle, backend=self.backend, device=self.device, threads=self.threads)
        return self.cache[key]


def _labelled_bundles(specs: Sequence[str | Path], model_name: str | None, cache_dir: str | Path,
                      progress: bool) -> Iterator[tuple[str, B.Bundle]]:
    for spec in specs:
        if str(spec) == "micro":
            yield "micro", resolve_bundle("micro")
        elif str(spec) == "model":
            if not model_name:
                raise InputError("text bundle 'model' needs a model name (model=..., --model)")
            yield model_name, random_weight_bundle(model_name, cache_dir, progress=progress)
        else:
            b = resolve_bundle(spec)
            yield Path(b.path).name, b


def bench_tta(
    parts: Sequence[str] = PARTS,
    *,
    bundle: str | Path | B.Bundle = "micro",
    backend: str = "auto",
    device: str = "cpu",
    threads: int | None = None,
    n: int = 512,
    n_reference: int = 64,
    shifts: Sequence[str] | None = None,
    imbalanced_shifts: Sequence[str] = ("clean",),
    methods: Sequence[str] = METHODS,
    prototypes: str | Path | None = None,
    n_views: int = 64,
    model: str | None = DEFAULT_MODEL,
    cache_dir: str | Path = "bench-results/bundles",
    classes: Sequence[int] = (10, 100, 1000),
    speed_images: int = 3,
    speed_warmup: int = 1,
    text_bundles: Sequence[str | Path] = ("micro",),
    text_classes: Sequence[int] = (10, 100, 1000),
    text_repeats: int = 5,
    text_time_budget_s: float = 60.0,
    out_dir: str | Path | None = None,
    report_suffix: str = "",
    progress: bool = False,
    seed: int = 0,
    command: str | None = None,
) -> dict[str, Any]:
    """Benchmark test-time adaptation: accuracy of every method, TPT speed against the reference, text path.

    Args:
        parts: any of `PARTS` ("accuracy", "speed", "text-stress").
        bundle: the bundle of the accuracy part and the micro side of the speed part: "micro" (the embedded
            micro CLIP), a bundle directory or a `Bundle`.
        backend: edgeclip's backend for the exported encoders ("auto", "torch", "onnxruntime"); the reference
            always runs fp32 PyTorch encoders built from the same bundle.
        device: "cpu" or "cuda[:i]".
        threads: PyTorch intra-op threads and ONNX Runtime threads during the run; None: library defaults.
        n: held-out (and imbalanced) frames per shift for the accuracy part.
        n_reference: frames per shift for the reference TPT in the accuracy part (the first ones; it is slow).
        shifts: held-out shifts (default: every shift in `edgeclip.data.shapes.SHIFTS`).
        imbalanced_shifts: shifts of the class-imbalanced stream (empty: none).
        methods: the accuracy part's methods, a subset of `METHODS`.
        prototypes: PromptSync's and online prototypes' class prototypes: a saved prototypes file, or a spec or
            folder for `build_prototypes`; None: built from "shapes:512" (the disjoint proxy stream).
        n_views: views per frame for every adaptation method.
        model: open_clip architecture for the speed part's random-weight bundle (exported once into
            `cache_dir`); None: the micro bundle only.
        cache_dir: where random-weight bundles are kept.
        classes: the speed part's class counts C (synthetic 1–4-word names).
        speed_images: timed images per speed case (after `speed_warmup` untimed ones).
        speed_warmup: untimed warm-up images per speed case.
        text_bundles: bundles of the text-stress part: "micro", "model" (the random-weight `model` bundle) or a
            bundle directory.
        text_classes: the text-stress class counts C.
        text_repeats: most timed rounds per text-stress case.
        text_time_budget_s: seconds of timed calls of the slower implementation after which a text-stress case
            stops (at least `TEXT_MIN_ROUNDS` rounds).
        out_dir: if given, each part is written there (`write_tta_reports`: JSON, Markdown, PNG).
        report_suffix: appended to the report names (e.g. "-cuda").
        progress: tqdm bars (stderr).
        seed: seeds the methods' view generators, the reference's, the class names and the random embeddings.
        command: the command line that ran the bench (the CLI passes it), recorded in every part's report.

    Returns:
        ``{"bench": "tta", "config", "machine", "parts": {part: results}, "files": {part: {kind: path}}}``; each
        part's results is a `write_report` dict (title, bench, config, columns, rows, notes, machine) and
        ``files`` is empty without `out_dir`. Row fields are described in each part's notes.
    """
    parts = list(dict.fromkeys(parts))
    bad = [p for p in parts if p not in PARTS]
    if bad or not parts:
        raise ValueError(f"parts must be among {PARTS}, got {list(parts)}")
    check_device_threads(device, threads)
    n, n_reference, n_views, speed_images, text_repeats = positive_ints(
        "n, n_reference, n_views, speed_images and text_repeats", (n, n_reference, n_views, speed_images, text_repeats))
    if speed_warmup < 0:
        raise ValueError(f"speed_warmup must be >= 0, got {speed_warmup}")
    if not (text_time_budget_s > 0 and math.isfinite(text_time_budget_s)):
        raise ValueError(f"text_time_budget_s must be a positive number of seconds, got {text_time_budget_s}")
    if int(n_views * 0.1) < 1 and ("speed" in parts or "text-stress" in parts or "tpt-reference" in methods):
        raise ValueError(f"the reference TPT keeps int(0.1 · n_views) views: n_views must be >= 10, got {n_views}")
    shift_list = list(shapes.SHIFTS) if shifts is None else list(shifts)
    unknown = [s for s in [*shift_list, *imbalanced_shifts] if s not in shapes.SHIFTS]
    if unknown:
        raise InputError(f"unknown shift(s) {unknown}; valid shifts: {', '.join(shapes.SHIFTS)}")
    method_list = list(dict.fromkeys(methods))
    if [m for m in method_list if m not in METHODS] or not method_list:
        raise ValueError(f"methods must be among {METHODS}, got {list(methods)}")
    if "accuracy" in parts and not (shift_list or imbalanced_shifts):
        raise ValueError("accuracy part: no shifts and no imbalanced shifts to run")
    class_list, text_class_list = positive_ints("classes", classes), positive_ints("text_classes", text_classes)
    if out_dir is not None:
        check_matplotlib()  # fail before hours of benchmarking, not after

    models = _Models(backend, device, threads)
    results: dict[str, Any] = {}
    snap = cpu_snapshot()
    with torch_threads(threads):
        main = resolve_bundle(bundle)
        if "accuracy" in parts:
            results["accuracy"] = accuracy_part(
                models.get(main), n=n, n_reference=n_reference, shifts=shift_list,
                imbalanced_shifts=list(imbalanced_shifts), methods=method_list, prototypes=prototypes,
                n_views=n_views, seed=seed, device=device, progress=progress)
        if "speed" in parts:
            main_label = "micro" if isinstance(bundle, str) and bundle == "micro" else Path(main.path).name
            specs: list[tuple[str, B.Bundle]] = [(main_label, main)]
            if model:
                specs.append((model, random_weight_bundle(model, cache_dir, progress=progress)))
            targets = [SpeedTarget(label, models.get(b), speed_frames(label, speed_warmup + speed_images, seed))
                       for label, b in specs]
            results["speed"] = speed_part(targets, classes=class_list, images=speed_images, warmup=speed_warmup,
                                          n_views=n_views, seed=seed, device=device, progress=progress)
        if "text-stress" in parts:
            text_targets = [(label, models.get(b))
                            for label, b in _labelled_bundles(text_bundles, model, cache_dir, progress)]
            results["text-stress"] = text_part(text_targets, classes=text_class_list, n_views=n_views,
                                               repeats=text_repeats, time_budget_s=text_time_budget_s, seed=seed,
                                               device=device, progress=progress)
    machine = machine_info(threads)
    for res in results.values():
        res["config"]["threads"] = threads
        res["machine"] = machine
    config = {"parts": parts, "device": device, "backend": backend, "threads": threads, "seed": seed,
              "other_load": other_cpu_load(snap, cpu_snapshot())}
    if command is not None:
        for res in results.values():
            res["command"] = command
    out = {"bench": "tta", "command": command, "config": config, "machine": machine, "parts": results, "files": {}}
    if out_dir is not None:
        out["files"] = write_tta_reports(out, out_dir, suffix=report_suffix, command=command)
    return out
