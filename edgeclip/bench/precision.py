"""`edgeclip bench precision`: the INT8 image encoder against FP32, side by side, through ONNX Runtime on the CPU.

The INT8 variant is made once with `edgeclip.export.quantize.quantize_bundle` (calibration ``shapes:N``, the
method chosen on held-out calibration images) into ``--cache`` and reused while it verifies. Then, in one run:

* **speed**: the image encoder of both bundles on the same pixels at each batch size, timed round-robin
  (`paired_calls`, the order alternating), the speed-up the median of the per-round ratios with its 10th–90th
  percentiles; the text encoder too (the INT8 variant keeps it in FP32, so its ratio says how level the field is);
* **accuracy** (a bundle that knows the procedural classes, e.g. the micro CLIP): zero-shot accuracy on the
  held-out stream of every shift with both encoders, the paired difference with a 95 % bootstrap interval over
  frames; and TPT with its views encoded by each (``--tpt-n`` frames per shift, 0 skips it).
"""

from __future__ import annotations

import argparse
import logging
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from edgeclip.bench.common import model_label, random_weight_bundle, torch_threads
from edgeclip.bench.memory import PeakMemory
from edgeclip.bench.paired import MEAN, paired_differences
from edgeclip.bench.report import machine_info, write_report
from edgeclip.bench.timing import paired_calls, ratio_with_spread
from edgeclip.data import shapes
from edgeclip.data.streams import EVAL_SEED, held_out

__all__ = ["add_arguments", "bench_precision", "int8_variant", "run"]

log = logging.getLogger(__name__)

REPORT_NAME = "precision"
ACCURACY_SHIFTS = ("clean", "gaussian_noise", "blur", "low_contrast", "sketch", "textured_background")


def cached_variant(bundle: Any, cache_dir: str | Path, kind: str, make: Callable[[Path, Path], Any],
                   tag: str = "") -> Any:
    """The ``kind`` variant of `bundle` in ``cache_dir/<bundle>-<kind><tag>``, made once by ``make(source path,
    out path)``; a cached one is reused while it verifies and names this source's manifest."""
    from edgeclip.errors import BundleError
    from edgeclip.runtime import bundle as B

    out = Path(cache_dir).expanduser() / f"{Path(bundle.path).name}-{kind}{tag}"
    if (out / "manifest.json").is_file():
        try:
            cached = B.open_bundle(out, verify=True)
            source = cached.manifest.get("extra", {}).get("variant", {}).get("source", {})
            if source.get("manifest_sha256") == bundle.manifest.get("manifest_sha256"):
                return cached
        except BundleError as exc:
            log.warning("cached %s bundle %s is unusable (%s); making it again", kind, out, exc)
    out.parent.mkdir(parents=True, exist_ok=True)
    make(Path(bundle.path), out)
    return B.open_bundle(out, verify=True)


def int8_variant(bundle: Any, cache_dir: str | Path, calib: str = "shapes:256") -> Any:
    """The INT8 variant of `bundle` in ``cache_dir`` (`cached_variant`; a calibration other than the default
    ``shapes:256`` gets a folder of its own)."""
    from edgeclip.export.quantize import quantize_bundle

    tag = "" if calib == "shapes:256" else "-" + "".join(c if c.isalnum() else "_" for c in calib)[:40]
    return cached_variant(bundle, cache_dir, "int8",
                          lambda src, out: quantize_bundle(src, out, calib=calib, overwrite=True), tag)


def _speed(fp32: Any, int8: Any, batches: Sequence[int], rounds: int, max_time: float) -> list[dict[str, Any]]:
    rows = []
    memory = PeakMemory("cpu")
    size = fp32.preprocess_cfg.image_size
    for batch in batches:
        pixels = torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(batch))
        fns = {"fp32": lambda i, x=pixels: fp32.image_encoder(x), "int8": lambda i, x=pixels: int8.image_encoder(x)}
        m = paired_calls(fns, rounds, memory=memory, sync=None, max_time=max_time, min_rounds=2)
        r = ratio_with_spread(m.stats["int8"], m.stats["fp32"], paired=True)
        rows.append({"encoder": "image", "batch": batch, "fp32_ms": m.stats["fp32"].median_ms,
                     "int8_ms": m.stats["int8"].median_ms, "speedup": r["ratio"], "speedup_lo": r["ratio_lo"],
                     "speedup_hi": r["ratio_hi"], "rounds": m.stats["fp32"].n})
        log.info("image batch %d: int8 %.2f× (%.2f–%.2f)", batch, r["ratio"], r["ratio_lo"], r["ratio_hi"])
    prompts = [f"a photo of a {n}." for n in shapes.class_names()] * 8
    fns = {"fp32": lambda i: fp32.encode_text(prompts), "int8": lambda i: int8.encode_text(prompts)}
    m = paired_calls(fns, rounds, memory=memory, sync=None, max_time=max_time, min_rounds=2)
    r = ratio_with_spread(m.stats["int8"], m.stats["fp32"], paired=True)
    rows.append({"encoder": "text (FP32 in both)", "batch": len(prompts), "fp32_ms": m.stats["fp32"].median_ms,
                 "int8_ms": m.stats["int8"].median_ms, "speedup": r["ratio"], "speedup_lo": r["ratio_lo"],
                 "speedup_hi": r["ratio_hi"], "rounds": m.stats["fp32"].n})
    return rows


def _op_profile(src: Any, variant: Any, batch: int, runs: int, threads: int | None) -> dict[str, Any]:
    from edgeclip.bench.op_profile import op_breakdown
    from edgeclip.runtime.bundle import IMAGE_ONNX
    from edgeclip.runtime.io_spec import PIXELS

    size = src.image_size
    feeds = {PIXELS.name: torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(batch)).numpy()}
    out = op_breakdown(src.file(IMAGE_ONNX), variant.file(IMAGE_ONNX), feeds, runs=runs, threads=threads)
    return {**out, "batch": batch}


def _accuracy(fp32: Any, int8: Any, n: int, tpt_n: int, shifts: Sequence[str]) -> dict[str, Any]:
    from edgeclip.runtime.methods import create_method

    names = shapes.class_names()
    correct: dict[str, dict[str, Any]] = {"fp32": {}, "int8": {}, "tpt-fp32": {}, "tpt-int8": {}}
    for shift in shifts:
        batch = held_out(shift, n)
        for label, model in (("fp32", fp32), ("int8", int8)):
            pred = create_method("zeroshot", model, names).predict(list(batch.images)).labels.numpy()
            correct[label][shift] = pred == batch.labels
            if tpt_n:
                tpt = create_method("tpt", model, names, seed=0)
                frames = list(batch.images[:tpt_n])
                correct[f"tpt-{label}"][shift] = tpt.predict(frames).labels.numpy() == batch.labels[:tpt_n]
        log.info("accuracy %s: fp32 %.1f %%, int8 %.1f %%", shift, 100 * correct["fp32"][shift].mean(),
                 100 * correct["int8"][shift].mean())
    out: dict[str, Any] = {"rows": [], "differences": {}}
    pairs = [("zero-shot", "fp32", "int8")] + ([("TPT", "tpt-fp32", "tpt-int8")] if tpt_n else [])
    for what, a, b in pairs:
        d = paired_differences(correct[b], correct[a])
        for label in (a, b):
            out["rows"].append({"method": what, "encoder": label.split("-")[-1].upper(),
                                **{s: 100.0 * float(correct[label][s].mean()) for s in shifts},
                                "mean": 100.0 * float(sum(correct[label][s].mean() for s in shifts) / len(shifts))})
        out["rows"].append({"method": what, "encoder": "INT8 − FP32", **{s: d[s].format() for s in shifts},
                            "mean": d[MEAN].format()})
        out["differences"][what] = {k: v.to_dict() for k, v in d.items()}
        out[f"{what}_worst_shift_loss"] = max(-d[s].diff for s in shifts)
    return out


def bench_precision(bundle: Any = None, *, model_name: str | None = None, batches: Sequence[int] = (1, 8, 64),
                    rounds: int = 5, max_time: float = 60.0, n: int = 512, tpt_n: int = 32,
                    shifts: Sequence[str] = ACCURACY_SHIFTS, calib: str = "shapes:256", threads: int | None = None,
                    cache_dir: str | Path = "bench-results/bundles", op_runs: int = 10) -> dict[str, Any]:
    """INT8 vs FP32 (see the module docstring); a `write_report` dict. Accuracy only for a bundle that knows the
    procedural classes (not a random-weight `model_name` bundle). ``op_runs`` (0: none): profiled runs of both
    image graphs at the largest batch, for where the time goes (`edgeclip.bench.op_profile.op_breakdown`)."""
    import edgeclip
    from edgeclip.runtime import bundle as B

    src = random_weight_bundle(model_name, cache_dir) if model_name else B.open_bundle(
        bundle or edgeclip.default_bundle(), verify=True)
    t0 = time.perf_counter()
    variant = int8_variant(src, cache_dir, calib)
    quantise_s = time.perf_counter() - t0
    with torch_threads(threads):
        fp32 = edgeclip.load(src.path, backend="onnxruntime", threads=threads)
        int8 = edgeclip.load(variant.path, backend="onnxruntime", threads=threads)
        speed = _speed(fp32, int8, batches, rounds, max_time)
        acc = None if model_name else _accuracy(fp32, int8, n, tpt_n, shifts)
        ops = _op_profile(src, variant, max(batches), op_runs, threads) if op_runs else None
    parity = variant.manifest.get("parity", {})
    big = next(r for r in speed if r["encoder"] == "image" and r["batch"] == max(batches))
    notes = [f"{model_label(src)}: INT8 variant by `quantize_bundle` (calib {calib}; "
             f"{variant.manifest.get('extra', {}).get('variant', {}).get('int8', {}).get('method', '?')} "
             f"calibration; {quantise_s:.0f} s when not cached), both through onnxruntime CPU; image encoder "
             f"min cosine vs FP32 {parity.get('image_min_cos', float('nan')):.5f} on held-out calibration images.",
             f"image encoder at batch {big['batch']}: INT8 {big['speedup']:.2f}× FP32 [{big['speedup_lo']:.2f}, "
             f"{big['speedup_hi']:.2f}] (median of paired rounds, 10th–90th percentile); goal ≥ 2×: "
             f"{'met' if big['speedup_lo'] >= 2.0 else 'missed'}."]
    if acc is not None:
        loss = acc["zero-shot_worst_shift_loss"]
        notes.append(f"zero-shot on {n} held-out images per shift (seed {EVAL_SEED}): the largest loss on any shift "
                     f"{loss:+.1f} points (goal ≤ 1: {'met' if loss <= 1.0 else 'missed'}); TPT on the first "
                     f"{tpt_n} of them per shift, its views encoded by each encoder.")
    tables = [] if acc is None else [{"title": "Accuracy (%) with each image encoder; INT8 − FP32 paired 95 % CI",
                                      "columns": ["method", "encoder", *shifts, "mean"], "rows": acc["rows"]}]
    if ops is not None:
        tables.append({"title": f"Where the image encoder's time goes at batch {ops['batch']} (onnxruntime profiler, "
                                f"ms per call, {ops['runs']} runs)",
                       "columns": ["op", "gemm", "fp32_ms", "int8_ms", "fp32_share", "int8_share"],
                       "rows": ops["rows"]})
        notes.append(f"op profile at batch {ops['batch']}: the weight GEMMs are {100 * ops['gemm_share']:.0f} % of "
                     f"FP32's kernel time and run {ops['gemm_speedup']:.2f}× faster in INT8; the rest (LayerNorm, "
                     "GELU, softmax, the adds and the attention's data movement stay FP32, plus the quantise steps) "
                     f"bounds INT8 at {ops['int8_bound']:.2f}× FP32 even with free GEMMs (Amdahl).")
    return {"title": f"INT8 vs FP32 image encoder on {model_label(src)} (onnxruntime CPU)", "bench": "precision",
            "config": {"bundle": str(src.path), "model": model_label(src), "variant": str(variant.path),
                       "batches": list(batches), "rounds": rounds, "max_time": max_time, "n": n, "tpt_n": tpt_n,
                       "shifts": list(shifts), "calib": calib, "threads": threads, "op_runs": op_runs},
            "columns": ["encoder", "batch", "fp32_ms", "int8_ms", "speedup", "speedup_lo", "speedup_hi", "rounds"],
            "rows": speed, "tables": tables, "accuracy": acc, "parity": parity, "op_profile": ops, "notes": notes,
            "machine": machine_info(threads)}


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The options of `edgeclip bench precision`."""
    src = p.add_mutually_exclusive_group()
    src.add_argument("--bundle", default=None, help="bundle (default: the embedded micro CLIP)")
    src.add_argument("--model", default=None, help="open_clip name: a random-weight bundle (speed only)")
    p.add_argument("--batches", default="1,8,64", help="image batch sizes (default 1,8,64)")
    p.add_argument("--rounds", type=int, default=5, help="paired rounds per batch size (default 5)")
    p.add_argument("--max-time", type=float, default=60.0, help="seconds of the slower encoder per batch size")
    p.add_argument("--n", type=int, default=512, help="held-out images per shift for zero-shot (default 512)")
    p.add_argument("--tpt-n", type=int, default=32, help="frames per shift for TPT (default 32; 0 skips it)")
    p.add_argument("--calib", default="shapes:256", help="calibration images of the INT8 variant")
    p.add_argument("--op-runs", type=int, default=10, help="profiled runs of both image graphs at the largest batch, "
                   "for where the time goes per op type (default 10; 0 skips it)")
    p.add_argument("--threads", type=int, default=None, help="onnxruntime and torch threads")
    p.add_argument("--cache", default="bench-results/bundles", help="where the variants are kept")
    p.add_argument("--out", type=Path, default=Path("bench-results"), help="folder for the JSON and Markdown")
    p.add_argument("--name", default=None, help="report file stem (default precision-<bundle or model>)")


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Run `edgeclip bench precision` with parsed `args`: write the report, return the results."""
    from edgeclip.errors import InputError

    try:
        batches = [int(b) for b in args.batches.split(",") if b.strip()]
    except ValueError as exc:
        raise InputError(f"--batches takes comma-separated integers, got {args.batches!r}") from exc
    if not batches or min(batches) < 1:
        raise InputError(f"--batches needs positive sizes, got {args.batches!r}")
    results = bench_precision(args.bundle, model_name=args.model, batches=batches, rounds=args.rounds,
                              max_time=args.max_time, n=args.n, tpt_n=args.tpt_n, calib=args.calib,
                              threads=args.threads, cache_dir=args.cache, op_runs=args.op_runs)
    if args.name is None:
        args.name = f"{REPORT_NAME}-" + (args.model or (Path(args.bundle).name if args.bundle else "micro"))
    for path in write_report(results, args.out, args.name).values():
        log.info("wrote %s", path)
    return results
