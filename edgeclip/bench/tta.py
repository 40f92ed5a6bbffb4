"""Test-time adaptation side by side (`edgeclip bench tta`): accuracy, speed against the reference TPT, text path.

Three parts, each selectable (`PARTS`):

- ``accuracy``: on the embedded micro bundle, every shift of the procedural dataset's *held-out* stream
  (`edgeclip.data.streams.held_out`, never used for tuning; the validation stream is never touched here) and
  the class-imbalanced stream (`imbalanced`): accuracy of zero-shot (the classifier on the plain image), TPT,
  PromptSync episodic and online (``mode="online"`` with a `PrototypeBank`), ZERO, online prototypes, and
  the reference TPT (`ReferenceTPT`, on the first `n_reference` frames of each stream, because it is slow).
  Every frame is one timed ``predict`` call, so latency is per image (median, p90 over the frames). PromptSync
  and online prototypes get the class prototypes of the disjoint proxy stream (``build_prototypes(model,
  "shapes:512")``) unless a prototypes file is given. Averages over shifts; a PNG of mean accuracy against
  median latency.
- ``speed``: edgeclip's `TPT` against `ReferenceTPT` per image in the same run, the two alternating on each
  image (settle, then one timed call each; the order flips every image), on the micro bundle (its 16 shapes
  class names, and C synthetic 1–4-word names for each C in `classes`) and on a random-weight bundle of
  `model` (ViT-B-32 by default, exported once into `cache_dir`) at each C. edgeclip runs its own fast path
  (kernel views); the agreement that matters is checked in the same run with the *reference's* PIL views
  handed to a second edgeclip `TPT` through ``views=`` (untimed), so both adapt on exactly the same pixels.
- ``text-stress``: the text path alone, one TPT step (text forward + backward + AdamW step + forward) for C
  synthetic classes on fixed random image embeddings: edgeclip's `TPT.adapt` (tower truncated to the
  longest prompt) against the reference's loop (full 77-token sequence), timed round-robin, with a PNG of
  latency and peak memory against C.

Peak memory: `edgeclip.bench.memory.PeakMemory`.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from edgeclip.bench.encoders import _cache_name, _model_label, _resolve_bundle, _torch_threads, class_names
from edgeclip.bench.figures import check_matplotlib, save_figure
from edgeclip.bench.kernels import noisy_frame
from edgeclip.bench.memory import MEMORY_METHODS, PeakMemory, is_oom
from edgeclip.bench.report import (
    add_busy_note,
    cpu_snapshot,
    machine_info,
    other_cpu_load,
    positive_ints,
    write_report,
)
from edgeclip.bench.timing import SETTLE_S, TimingStats, check_device_threads, is_cuda, ratio_with_spread
from edgeclip.data import shapes
from edgeclip.data.streams import EVAL_SEED, IMBALANCED_SEED, held_out, imbalanced
from edgeclip.errors import BundleError, InputError
from edgeclip.runtime import bundle as B
from edgeclip.runtime.model import EdgeClip, load

log = logging.getLogger(__name__)

__all__ = [
    "ACCURACY_COLUMNS",
    "METHODS",
    "PARTS",
    "SPEED_COLUMNS",
    "TEXT_COLUMNS",
    "bench_tta",
    "load_prototypes",
    "make_method",
    "random_weight_bundle",
    "write_tta_reports",
]

PARTS = ("accuracy", "speed", "text-stress")
#: method keys of the accuracy part, in table order
METHODS = ("zero-shot", "tpt", "promptsync", "promptsync-online", "zero", "online-prototypes", "tpt-reference")
REF_SUBSET = "tpt@reference-frames"  # edgeclip TPT on the frames the reference saw (a table row, no extra run)
DEFAULT_PROTOTYPES = "shapes:512"
DEFAULT_MODEL = "ViT-B-32"
SPEED_FRAME = (480, 640)  # camera-like frame for the random-weight bundle (noise texture, `noisy_frame`)
TEXT_MIN_ROUNDS = 2
HELD_OUT, IMBALANCED = "held-out", "imbalanced"
ACCURACY_COLUMNS_BASE = ["stream", "method", "n"]
ACCURACY_COLUMNS_TAIL = ["mean", "median_ms", "p90_ms", "peak_mb", "other_load"]
ACCURACY_COLUMNS = [*ACCURACY_COLUMNS_BASE, *shapes.SHIFTS, *ACCURACY_COLUMNS_TAIL]
SPEED_COLUMNS = ["bundle", "names", "classes", "tokens", "n", "edgeclip_ms", "reference_ms", "speedup", "speedup_lo",
                 "speedup_hi", "agree_same_views", "agree_own_views", "edgeclip_peak_mb", "reference_peak_mb",
                 "other_load"]
TEXT_COLUMNS = ["bundle", "classes", "impl", "tokens", "n", "median_ms", "p90_ms", "peak_mb", "speedup", "speedup_lo",
                "speedup_hi", "memory_ratio", "other_load"]
EDGE_TEXT, REF_TEXT = "edgeclip (truncated)", "reference (full length)"


# -- shared helpers ---------------------------------------------------------------------------------------
def _sync_fn(device: str) -> Callable[[], Any] | None:
    return torch.cuda.synchronize if is_cuda(device) else None


def random_weight_bundle(model_name: str, cache_dir: str | Path, *, progress: bool = True) -> B.Bundle:
    """The random-weight bundle of open_clip `model_name`, exported once to ``cache_dir/<name>-random.bundle``
    and reused while it verifies (the same cache `bench_encoders_for_model` uses). Random weights time the same
    as trained ones, so nothing is downloaded."""
    import edgeclip

    path = Path(cache_dir).expanduser() / _cache_name(model_name)
    if (path / "manifest.json").is_file():
        try:
            return B.open_bundle(path, verify=True)
        except BundleError as exc:
            log.warning("cached bundle %s is unusable (%s); exporting again", path, exc)
    log.info("exporting random-weight %s to %s", model_name, path)
    path.parent.mkdir(parents=True, exist_ok=True)
    edgeclip.export_bundle(path, model_name, overwrite=True, progress=progress)
    return B.open_bundle(path, verify=True)


@dataclass
class _Calls:
    """What `_paired_calls` measured: per label, the times, the peaks and the results, in call order."""

    stats: dict[str, TimingStats]
    peaks_mb: dict[str, list[float]]
    results: dict[str, list[Any]] = field(default_factory=dict)


def _paired_calls(fns: Mapping[str, Callable[[int], Any]], rounds: int, *, memory: PeakMemory,
                  sync: Callable[[], Any] | None, max_time: float | None = None, min_rounds: int = 1,
                  after_call: Callable[[str, int, Any], None] | None = None,
                  tick: Callable[[], None] | None = None) -> _Calls:
    """Round i calls every function with i, in turn (the order reversed on odd rounds, so neither always goes
    first), each call timed alone: heap trimmed and memory mark reset, `SETTLE_S` of sleep (the previous call's
    worker threads go quiet), clock, call, clock, peak read. Stops after `rounds` rounds, or once the slowest
    function has `max_time` seconds of timed calls and `min_rounds` rounds are done."""
    samples: dict[str, list[float]] = {k: [] for k in fns}
    peaks: dict[str, list[float]] = {k: [] for k in fns}
    results: dict[str, list[Any]] = {k: [] for k in fns}
    totals = dict.fromkeys(fns, 0.0)
    order = list(fns)
    for i in range(rounds):
        for label in (order if i % 2 == 0 else order[::-1]):
            memory.start()
            time.sleep(SETTLE_S)
            if sync is not None:
                sync()
            t0 = time.perf_counter()
            out = fns[label](i)
            if sync is not None:
                sync()
            dt = time.perf_counter() - t0
            peaks[label].append(memory.stop())
            samples[label].append(dt * 1e3)
            results[label].append(out)
            totals[label] += dt
            if after_call is not None:
                after_call(label, i, out)
        if tick is not None:
            tick()
        if max_time is not None and max(totals.values()) >= max_time and i + 1 >= min_rounds:
            break
    return _Calls({k: TimingStats.from_samples(v) for k, v in samples.items()}, peaks, results)


def _bar(total: int, desc: str, unit: str, enabled: bool) -> Any:
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit=unit, disable=not enabled)


# -- part 1: accuracy -------------------------------------------------------------------------------------
def load_prototypes(model: EdgeClip, names: list[str], prototypes: str | Path | None, progress: bool) -> Any:
    """`ClassPrototypes` for `names`: a saved file when `prototypes` is one, else built from the spec or folder
    it names (default: the disjoint procedural proxy stream ``shapes:512``)."""
    from edgeclip.runtime.prototypes import build_prototypes, resolve_prototypes

    if prototypes is not None and Path(prototypes).expanduser().is_file():
        return resolve_prototypes(model, names, Path(prototypes).expanduser())
    spec = DEFAULT_PROTOTYPES if prototypes is None else str(prototypes)
    return build_prototypes(model, spec, class_names=names, progress=progress)


def make_method(key: str, model: EdgeClip, names: list[str], protos: Any, n_views: int, seed: int) -> Any:
    """A fresh predictor (``predict(images) -> Prediction``) for method `key`."""
    from edgeclip.bench.peers.tpt_reference import ReferenceTPT
    from edgeclip.runtime.methods import TPT, OnlinePrototypes, PromptSync, Zero
    from edgeclip.runtime.prototype_bank import PrototypeBank

    kw = {"n_views": n_views, "seed": seed}
    if key == "zero-shot":
        return model.classifier(names)
    if key == "tpt":
        return TPT(model, names, **kw)
    if key == "promptsync":
        return PromptSync(model, names, prototypes=protos, **kw)
    if key == "promptsync-online":
        bank = PrototypeBank(len(names), model.bundle.embed_dim, device=model.device)
        return PromptSync(model, names, prototypes=protos, mode="online", bank=bank, **kw)
    if key == "zero":
        return Zero(model, names, **kw)
    if key == "online-prototypes":
        return OnlinePrototypes(model, names, prototypes=protos, **kw)
    if key == "tpt-reference":
        return ReferenceTPT(model, names, **kw)
    raise ValueError(f"unknown method {key!r}; choose from {METHODS}")


def _run_stream(key: str, model: EdgeClip, names: list[str], protos: Any, images: np.ndarray, labels: np.ndarray,
                *, n_views: int, seed: int, memory: PeakMemory, sync: Callable[[], Any] | None,
                tick: Callable[[], None]) -> dict[str, Any]:
    """One method on one stream, fresh state, one timed `predict` per frame; peak memory from before the
    method is built to after its last frame."""
    snap = cpu_snapshot()
    memory.start()
    method = make_method(key, model, names, protos, n_views, seed)
    times_ms, correct, stages = [], [], {}
    for frame, label in zip(images, labels, strict=True):
        if sync is not None:
            sync()
        t0 = time.perf_counter()
        pred = method.predict(frame)
        if sync is not None:
            sync()
        times_ms.append((time.perf_counter() - t0) * 1e3)
        correct.append(bool(int(pred.labels[0]) == int(label)))
        for k, v in pred.timings.items():
            stages[k] = stages.get(k, 0.0) + v
        tick()
    peak = memory.stop()
    guard = getattr(method, "guard", None)
    online = getattr(method, "mode", "episodic") == "online"
    n = len(correct)
    return {"n": n, "correct": correct, "accuracy": 100.0 * sum(correct) / n, "times_ms": times_ms,
            "peak_mb": peak, "stages_ms": {k: 1e3 * v / n for k, v in stages.items()},
            "skipped_steps": getattr(method, "skipped_steps", None),
            "collapse_resets": guard.resets if (guard is not None and online) else None,
            "other_load": other_cpu_load(snap, cpu_snapshot())}


def _summary_row(stream: str, method: str, runs: dict[str, dict[str, Any]], n_frames: int) -> dict[str, Any]:
    """One table row: accuracy per shift and averaged, latency over every frame of every shift."""
    times = [t for r in runs.values() for t in r["times_ms"]]
    st = TimingStats.from_samples(times)
    row: dict[str, Any] = {"stream": stream, "method": method, "n": n_frames}
    row.update({shift: r["accuracy"] for shift, r in runs.items()})
    loads = [r["other_load"] for r in runs.values() if r.get("other_load") is not None]
    peaks = [r["peak_mb"] for r in runs.values() if r.get("peak_mb") is not None]
    row.update(mean=float(np.mean([r["accuracy"] for r in runs.values()])), median_ms=st.median_ms, p90_ms=st.p90_ms,
               mean_ms=st.mean_ms, peak_mb=max(peaks) if peaks else None, other_load=max(loads) if loads else None,
               shifts=list(runs), frames=len(times))
    return row


def _accuracy_part(model: EdgeClip, *, n: int, n_reference: int, shifts: list[str], imbalanced_shifts: list[str],
                   methods: list[str], prototypes: str | Path | None, n_views: int, seed: int, device: str,
                   progress: bool) -> dict[str, Any]:
    names = shapes.class_names()
    need_protos = any(m in ("promptsync", "promptsync-online", "online-prototypes") for m in methods)
    protos = load_prototypes(model, names, prototypes, progress) if need_protos else None
    memory = PeakMemory(device)
    sync = _sync_fn(device)
    n_ref = min(n_reference, n)
    streams = [(HELD_OUT, s) for s in shifts] + [(IMBALANCED, s) for s in imbalanced_shifts]
    per_method = {m: (n_ref if m == "tpt-reference" else n) for m in methods}
    warm_frame = noisy_frame(64, 64, seed=seed).numpy()  # not from any stream: only wakes up lazy state
    for key in methods:  # one untimed call each (ORT arenas, thread pools, autograd) before anything is measured
        make_method(key, model, names, protos, n_views, seed).predict(warm_frame)
    bar = _bar(len(streams) * sum(per_method.values()), "bench tta accuracy", "frame", progress)
    snap_start = cpu_snapshot()
    details: list[dict[str, Any]] = []
    runs: dict[tuple[str, str], dict[str, dict[str, Any]]] = {}
    try:
        for stream, shift in streams:
            batch = held_out(shift, n) if stream == HELD_OUT else imbalanced(shift, n)
            labels = np.asarray(batch.labels)
            for key in methods:
                bar.set_postfix_str(f"{stream} {shift} {key}")
                m = per_method[key]
                r = _run_stream(key, model, names, protos, batch.images[:m], labels[:m], n_views=n_views, seed=seed,
                                memory=memory, sync=sync, tick=lambda: bar.update(1))
                runs.setdefault((stream, key), {})[shift] = r
                details.append({"stream": stream, "shift": shift, "method": key,
                                **{k: v for k, v in r.items() if k != "correct"}})
                log.info("%s %s %s: %.1f%% (n=%d), median %.1f ms", stream, shift, key, r["accuracy"], r["n"],
                         float(np.median(r["times_ms"])))
            if "tpt" in methods and "tpt-reference" in methods:  # edgeclip TPT on the reference's frames
                tpt = runs[(stream, "tpt")][shift]
                sub = {"n": n_ref, "correct": tpt["correct"][:n_ref],
                       "accuracy": 100.0 * sum(tpt["correct"][:n_ref]) / n_ref, "times_ms": tpt["times_ms"][:n_ref],
                       "peak_mb": None, "other_load": tpt["other_load"]}
                runs.setdefault((stream, REF_SUBSET), {})[shift] = sub
    finally:
        bar.close()

    rows = []
    order = [*methods, REF_SUBSET]
    for stream in (HELD_OUT, IMBALANCED):
        for key in order:
            if (stream, key) in runs:
                rows.append(_summary_row(stream, key, runs[(stream, key)], per_method.get(key, n_ref)))
    goals = _goals(rows)
    config = {"bundle": str(model.bundle.path), "model": _model_label(model.bundle), "backend": model.backend,
              "device": device, "n": n, "n_reference": n_ref, "shifts": shifts, "imbalanced_shifts": imbalanced_shifts,
              "methods": methods, "n_views": n_views, "seed": seed, "eval_seed": EVAL_SEED,
              "imbalanced_seed": IMBALANCED_SEED, "classes": names,
              "prototypes": protos.summary() if protos is not None else None,
              "prototypes_arg": str(prototypes) if prototypes is not None else DEFAULT_PROTOTYPES,
              "memory_method": memory.method, "other_load": other_cpu_load(snap_start, cpu_snapshot())}
    notes = [
        f"accuracy in % on the held-out stream (make_batch(n, seed={EVAL_SEED}, shift); never used for tuning) per "
        f"shift and its mean over shifts; the imbalanced rows are `imbalanced(shift, n)` (seed {IMBALANCED_SEED}; "
        "2 of 16 classes take 60 % of the frames). No figure here comes from the validation stream.",
        f"tpt-reference (the official TPT loop, `ReferenceTPT`) runs on the first {n_ref} frames of each stream "
        f"only (n = {n_ref}); `{REF_SUBSET}` is edgeclip's TPT on those same frames, from the same run.",
        "latency: one `predict` call per frame (one image; views, image encoder, adaptation, prediction; "
        "zero-shot: preprocessing, encoder, head), median and p90 over every frame of every shift of the stream, "
        "in ms. Each method gets fresh state for every stream; online methods carry state across its frames. "
        "Before anything is measured, each method makes one untimed call on a noise frame (no stream's image).",
        f"peak_mb: the largest over the stream's runs of the {MEMORY_METHODS[memory.method]}; the block spans "
        "building the method and all its frames (the loaded model is not counted).",
        "PromptSync (episodic and online) and online prototypes get the class prototypes "
        f"{config['prototypes_arg']!r} (the procedural proxy stream, disjoint from the evaluation seeds, unless a "
        "file is given); promptsync-online = PromptSync(mode='online', bank=PrototypeBank(...)), its collapse "
        "guard resetting on a collapsed class histogram.",
        f"{n_views} views per frame, ρ = 0.1, one step (TPT's defaults); seeds: methods and views {seed}.",
        "goals (held-out mean): " + ", ".join(f"{k}: {'yes' if v else 'no'}" for k, v in goals.items()),
    ]
    add_busy_note(rows, notes)
    shift_cols = [s for s in shapes.SHIFTS if s in set(shifts) | set(imbalanced_shifts)]
    return {"title": f"Test-time adaptation on {_model_label(model.bundle)}: accuracy and per-image latency",
            "bench": "tta-accuracy", "config": config,
            "columns": [*ACCURACY_COLUMNS_BASE, *shift_cols, *ACCURACY_COLUMNS_TAIL], "rows": rows, "goals": goals,
            "details": details, "notes": notes}


def _goals(rows: list[dict[str, Any]]) -> dict[str, bool]:
    """The issue's accuracy goals on the held-out mean, true or false (every number is reported either way)."""
    mean = {r["method"]: r["mean"] for r in rows if r["stream"] == HELD_OUT}
    checks = {"promptsync > tpt": ("promptsync", "tpt", False), "tpt >= zero-shot": ("tpt", "zero-shot", True),
              "promptsync-online > promptsync": ("promptsync-online", "promptsync", False)}
    out = {}
    for name, (a, b, ge) in checks.items():
        if a in mean and b in mean:
            out[name] = bool(mean[a] >= mean[b]) if ge else bool(mean[a] > mean[b])
    return out


# -- part 2: speed ----------------------------------------------------------------------------------------
@dataclass
class _SpeedTarget:
    label: str  # "micro" | the model name
    model: EdgeClip
    frames: list[torch.Tensor]  # uint8 [H, W, 3]; warm-up frames first


def _speed_frames(bundle_label: str, count: int, seed: int) -> list[torch.Tensor]:
    if bundle_label == "micro":
        return [torch.from_numpy(im.copy()) for im in held_out("clean", count).images]
    return [noisy_frame(*SPEED_FRAME, seed=seed + i) for i in range(count)]


def _speed_case(target: _SpeedTarget, names: list[str], names_kind: str, *, n_views: int, warmup: int, seed: int,
                device: str, memory: PeakMemory, tick: Callable[[], None]) -> dict[str, Any]:
    """edgeclip's TPT and the reference on the same frames, alternating per image; agreement on the same views."""
    from edgeclip.bench.peers.tpt_reference import ReferenceTPT
    from edgeclip.runtime.methods import TPT

    model = target.model
    edge = TPT(model, names, n_views=n_views, seed=seed)
    ref = ReferenceTPT(model, names, n_views=n_views, seed=seed)
    used: dict[str, torch.Tensor] = {}
    own_views = ref.views_of

    def recording_views(frame: torch.Tensor) -> torch.Tensor:
        used["views"] = own_views(frame)
        return used["views"]

    ref.views_of = recording_views  # type: ignore[method-assign]  # keeps the reference's own views, records them
    same = TPT(model, names, n_views=n_views, seed=seed, views=lambda frame, n, g: used["views"])
    tokens = int(edge.prompt.build(edge.class_names)[1].max()) + 1
    snap = cpu_snapshot()
    sync = _sync_fn(device)
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

    calls = _paired_calls({"edgeclip": lambda i: edge.predict(timed[i]), "reference": lambda i: ref.predict(timed[i])},
                          len(timed), memory=memory, sync=sync, after_call=after, tick=tick)
    e, r = calls.stats["edgeclip"], calls.stats["reference"]
    ratio = ratio_with_spread(e, r, paired=True)
    edge_labels = [int(p.labels[0]) for p in calls.results["edgeclip"]]
    ref_labels = [int(p.labels[0]) for p in calls.results["reference"]]
    checks.sort(key=lambda c: c["i"])
    row = {"bundle": target.label, "model": _model_label(model.bundle), "names": names_kind, "classes": len(names),
           "tokens": tokens, "reference_tokens": ref.tower.context_length, "n": e.n,
           "edgeclip_ms": e.median_ms, "edgeclip_p90_ms": e.p90_ms, "reference_ms": r.median_ms,
           "reference_p90_ms": r.p90_ms, "speedup": ratio["ratio"], "speedup_p90": ratio["ratio_p90"],
           "speedup_lo": ratio["ratio_lo"], "speedup_hi": ratio["ratio_hi"],
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


def _speed_part(targets: list[_SpeedTarget], *, classes: list[int], images: int, warmup: int, n_views: int,
                seed: int, device: str, progress: bool) -> dict[str, Any]:
    memory = PeakMemory(device)
    cases: list[tuple[_SpeedTarget, list[str], str]] = []
    for t in targets:
        if t.label == "micro":
            cases.append((t, shapes.class_names(), "shapes"))
        cases += [(t, class_names(c, seed), "synthetic 1–4 words") for c in classes]
    bar = _bar(len(cases) * (warmup + images), "bench tta speed", "image", progress)
    snap_start = cpu_snapshot()
    rows = []
    try:
        for target, names, kind in cases:
            bar.set_postfix_str(f"{target.label} C={len(names)}")
            try:
                rows.append(_speed_case(target, names, kind, n_views=n_views, warmup=warmup, seed=seed, device=device,
                                        memory=memory, tick=lambda: bar.update(1)))
            except Exception as exc:
                if not is_oom(exc):
                    raise
                log.warning("speed %s C=%d: out of memory (%s)", target.label, len(names), exc)
                rows.append({"bundle": target.label, "names": kind, "classes": len(names),
                             "error": f"out of memory: {exc}"})
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
        "each timed call); *_ms = median per image over the timed images; speedup = reference / edgeclip "
        "median, speedup_lo–hi the 10th–90th percentile of the per-image ratios.",
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


# -- part 3: text stress ----------------------------------------------------------------------------------
def _text_case(model: EdgeClip, label: str, n_classes: int, *, n_views: int, repeats: int, time_budget_s: float,
               seed: int, device: str, memory: PeakMemory) -> list[dict[str, Any]]:
    """One TPT step on the text path for C classes, edgeclip (truncated) vs the reference (full length)."""
    from edgeclip.bench.peers.tpt_reference import ReferenceTPT
    from edgeclip.runtime.methods import TPT

    names = class_names(n_classes, seed)
    g = torch.Generator().manual_seed(seed)
    embeds = torch.randn(n_views, model.bundle.embed_dim, generator=g).to(model.device)  # (N, D) fixed "views"
    feats = F.normalize(embeds, dim=-1)
    edge = TPT(model, names, n_views=n_views, seed=seed)
    ref = ReferenceTPT(model, names, n_views=n_views, seed=seed)
    ref.image_features = lambda views: feats[: views.shape[0]]  # type: ignore[method-assign]  # text path only
    dummy = torch.zeros(n_views, 3, 1, 1, device=model.device)  # (N, 3, 1, 1): only its N is read

    def edge_step(_: int) -> Any:
        out = edge.adapt(embeds)  # forward, backward, AdamW step, forward (truncated tower)
        edge.reset()
        return out

    def ref_step(_: int) -> Any:
        return ref.adapt_views_logits(dummy)  # reset, forward, backward, AdamW step, forward (77 tokens)

    fns = {EDGE_TEXT: edge_step, REF_TEXT: ref_step}
    sync = _sync_fn(device)
    snap = cpu_snapshot()
    warm = {}
    for lbl, fn in fns.items():  # one untimed call each (allocator, thread pools, autograd)
        memory.start()
        fn(0)
        warm[lbl] = memory.stop()
    calls = _paired_calls(fns, repeats, memory=memory, sync=sync, max_time=time_budget_s,
                          min_rounds=min(TEXT_MIN_ROUNDS, repeats))
    other = other_cpu_load(snap, cpu_snapshot())
    tokens = {EDGE_TEXT: int(edge.prompt.build(edge.class_names)[1].max()) + 1, REF_TEXT: ref.tower.context_length}
    rows = []
    e = calls.stats[EDGE_TEXT]
    for lbl, st in calls.stats.items():
        peak = max(calls.peaks_mb[lbl])
        row = {"bundle": label, "model": _model_label(model.bundle), "classes": n_classes, "impl": lbl,
               "tokens": tokens[lbl], "n": st.n, "median_ms": st.median_ms, "p90_ms": st.p90_ms, "mean_ms": st.mean_ms,
               "min_ms": st.min_ms, "peak_mb": peak, "warmup_peak_mb": warm[lbl], "speedup": None,
               "speedup_p90": None, "speedup_lo": None, "speedup_hi": None, "memory_ratio": None,
               "other_load": other, "samples_ms": list(st.samples_ms), "peaks_mb": calls.peaks_mb[lbl], "error": None}
        if lbl == REF_TEXT:
            r = ratio_with_spread(e, st, paired=True)
            edge_peak = max(calls.peaks_mb[EDGE_TEXT])
            row.update(speedup=r["ratio"], speedup_p90=r["ratio_p90"], speedup_lo=r["ratio_lo"],
                       speedup_hi=r["ratio_hi"], memory_ratio=peak / edge_peak if edge_peak > 0 else None)
        rows.append(row)
        log.info("text %s C=%d %s: median %.1f ms, peak %.1f MiB", label, n_classes, lbl, st.median_ms, peak)
    return rows


def _text_part(targets: list[tuple[str, EdgeClip]], *, classes: list[int], n_views: int, repeats: int,
               time_budget_s: float, seed: int, device: str, progress: bool) -> dict[str, Any]:
    memory = PeakMemory(device)
    cases = [(label, m, c) for label, m in targets for c in classes]
    bar = _bar(len(cases), "bench tta text-stress", "case", progress)
    snap_start = cpu_snapshot()
    rows: list[dict[str, Any]] = []
    try:
        for label, m, c in cases:
            bar.set_postfix_str(f"{label} C={c}")
            try:
                rows += _text_case(m, label, c, n_views=n_views, repeats=repeats, time_budget_s=time_budget_s,
                                   seed=seed, device=device, memory=memory)
            except Exception as exc:
                if not is_oom(exc):
                    raise
                log.warning("text-stress %s C=%d: out of memory (%s)", label, c, exc)
                rows.append({"bundle": label, "classes": c, "impl": "both", "error": f"out of memory: {exc}"})
            bar.update(1)
    finally:
        bar.close()
    config = {"bundles": {label: str(m.bundle.path) for label, m in targets}, "device": device, "classes": classes,
              "n_views": n_views, "repeats": repeats, "min_rounds": TEXT_MIN_ROUNDS, "time_budget_s": time_budget_s,
              "seed": seed, "class_names_seed": seed, "memory_method": memory.method,
              "other_load": other_cpu_load(snap_start, cpu_snapshot())}
    notes = [
        "one TPT step on the text path alone for C classes (synthetic 1–4-word names): text forward, loss on the "
        f"{n_views} fixed random image embeddings (entropy of the mean over the 10 % most confident), backward, "
        "AdamW step, text forward again for the prediction. edgeclip = `TPT.adapt` (tower cut to the longest "
        "prompt, `tokens`); reference = `ReferenceTPT.adapt_views_logits` with its image features replaced by "
        "the same embeddings (full 77-token sequence).",
        f"1 untimed call each, then up to {repeats} rounds round-robin (order flipped every round, 0.1 s settle "
        f"sleep before each timed call), stopping once the slowest has {time_budget_s:g} s of timed calls (at "
        f"least {TEXT_MIN_ROUNDS} rounds); speedup = reference / edgeclip median, lo–hi the 10th–90th percentile "
        "of the per-round ratios.",
        f"peak_mb: the largest over the timed calls of the {MEMORY_METHODS[memory.method]} (warmup_peak_mb in the "
        "JSON: the untimed first call, which also builds one-time caches such as the frozen token embeddings); "
        "memory_ratio = reference / edgeclip peak.",
    ]
    add_busy_note(rows, notes)
    return {"title": "Text path stress: one TPT step against the number of classes", "bench": "tta-text-stress",
            "config": config, "columns": list(TEXT_COLUMNS), "rows": rows, "notes": notes}


# -- plots and reports ------------------------------------------------------------------------------------
def _plot_accuracy(results: dict[str, Any], path: Path) -> None:
    """Mean accuracy against median latency per method (log x), held-out filled, imbalanced hollow."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(10, 5.5))
    ax = fig.add_subplot()
    colours = {m: f"C{i}" for i, m in enumerate([*METHODS, REF_SUBSET])}
    for stream, filled in ((HELD_OUT, True), (IMBALANCED, False)):
        for r in results["rows"]:
            if r["stream"] != stream or not (r.get("median_ms") or 0) > 0:
                continue
            c = colours.get(r["method"], "k")
            ax.scatter([r["median_ms"]], [r["mean"]], s=60, marker="o" if filled else "s",
                       facecolors=c if filled else "none", edgecolors=c,
                       label=f"{r['method']} ({stream})")
            if filled:
                ax.annotate(r["method"], (r["median_ms"], r["mean"]), textcoords="offset points", xytext=(5, 4),
                            fontsize=8)
    ax.set_xscale("log")
    ax.set_xlabel("median latency per image (ms, log scale)")
    ax.set_ylabel("mean accuracy over shifts (%)")
    ax.set_title(results.get("title", "accuracy vs latency"), fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0)
    save_figure(fig, path)


def _plot_text(results: dict[str, Any], path: Path) -> None:
    """Latency and peak memory of one text-path TPT step against C, truncated vs full length, per bundle."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(11, 4.5))
    ax_t, ax_m = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
    series: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for r in results["rows"]:
        if r.get("error") is None and r.get("median_ms") is not None:
            series.setdefault((r["bundle"], r["impl"]), []).append(r)
    for (bundle, impl), rs in series.items():
        rs = sorted(rs, key=lambda r: r["classes"])
        xs = [r["classes"] for r in rs]
        style = "-o" if impl == EDGE_TEXT else "--s"
        ax_t.plot(xs, [r["median_ms"] for r in rs], style, label=f"{bundle}: {impl}")
        ax_m.plot(xs, [max(r["peak_mb"], 1e-3) for r in rs], style, label=f"{bundle}: {impl}")
    ticks = sorted({r["classes"] for rs in series.values() for r in rs})
    for ax, what in ((ax_t, "median latency per step (ms)"), (ax_m, "peak memory growth (MiB)")):
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xticks(ticks, [str(c) for c in ticks])
        ax.minorticks_off()
        ax.set_xlabel("classes C")
        ax.set_ylabel(what)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(results.get("title", "text path"), fontsize=10)
    save_figure(fig, path)


REPORT_NAMES = {"accuracy": "tta-accuracy", "speed": "tta-speed", "text-stress": "tta-text-stress"}
_PLOTS: dict[str, Callable[[dict[str, Any], Path], None]] = {"accuracy": _plot_accuracy, "text-stress": _plot_text}


def write_tta_reports(results: dict[str, Any], out_dir: str | Path, *, suffix: str = "") -> dict[str, dict[str, Path]]:
    """Write each part of a `bench_tta` result as ``out_dir/tta-<part><suffix>.json`` and ``.md`` (`write_report`),
    plus ``.png`` for the accuracy and text-stress parts. Returns ``{part: {"json", "md"[, "png"]}}``."""
    out = Path(out_dir).expanduser()
    files: dict[str, dict[str, Path]] = {}
    for part, res in results["parts"].items():
        name = REPORT_NAMES[part] + suffix
        paths = dict(write_report(res, out, name))
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
            yield "micro", _resolve_bundle("micro")
        elif str(spec) == "model":
            if not model_name:
                raise InputError("text bundle 'model' needs a model name (model=..., --model)")
            yield model_name, random_weight_bundle(model_name, cache_dir, progress=progress)
        else:
            b = _resolve_bundle(spec)
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
    progress: bool = True,
    seed: int = 0,
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
    with _torch_threads(threads):
        main = _resolve_bundle(bundle)
        if "accuracy" in parts:
            results["accuracy"] = _accuracy_part(
                models.get(main), n=n, n_reference=n_reference, shifts=shift_list,
                imbalanced_shifts=list(imbalanced_shifts), methods=method_list, prototypes=prototypes,
                n_views=n_views, seed=seed, device=device, progress=progress)
        if "speed" in parts:
            main_label = "micro" if isinstance(bundle, str) and bundle == "micro" else Path(main.path).name
            specs: list[tuple[str, B.Bundle]] = [(main_label, main)]
            if model:
                specs.append((model, random_weight_bundle(model, cache_dir, progress=progress)))
            targets = [_SpeedTarget(label, models.get(b), _speed_frames(label, speed_warmup + speed_images, seed))
                       for label, b in specs]
            results["speed"] = _speed_part(targets, classes=class_list, images=speed_images, warmup=speed_warmup,
                                           n_views=n_views, seed=seed, device=device, progress=progress)
        if "text-stress" in parts:
            text_targets = [(label, models.get(b))
                            for label, b in _labelled_bundles(text_bundles, model, cache_dir, progress)]
            results["text-stress"] = _text_part(text_targets, classes=text_class_list, n_views=n_views,
                                                repeats=text_repeats, time_budget_s=text_time_budget_s, seed=seed,
                                                device=device, progress=progress)
    machine = machine_info(threads)
    for res in results.values():
        res["config"]["threads"] = threads
        res["machine"] = machine
    config = {"parts": parts, "device": device, "backend": backend, "threads": threads, "seed": seed,
              "other_load": other_cpu_load(snap, cpu_snapshot())}
    out = {"bench": "tta", "config": config, "machine": machine, "parts": results, "files": {}}
    if out_dir is not None:
        out["files"] = write_tta_reports(out, out_dir, suffix=report_suffix)
    return out
