"""`edgeclip bench report --out DIR [--quick]`: every bench this machine supports, one Markdown report with plots.

`run_suite_report` runs the existing benches one after the other (each through its own function: encoder latency
per backend and precision, per-frame kernels, test-time adaptation accuracy / speed / text path), writes each one's
JSON and Markdown with `write_report` (the TTA parts also their PNGs) into the output folder, then
``report.md`` beside ``report.json``: a header naming the machine (CPU model and SIMD flags, GPU and driver when
CUDA is there, torch / onnxruntime / numpy / edgeclip / TensorRT versions), a table of every bench with its status,
links to each bench's report and three PNG plots:

- ``latency.png``: encoder latency per backend and precision, a bar per backend at each batch size;
- ``accuracy-latency.png``: mean accuracy against median per-image latency per TTA method
  (`edgeclip.bench.tta_accuracy.plot_accuracy`);
- ``memory-classes.png``: peak memory against the number of classes (the text path of one TPT step, edgeclip's
  truncated tower against the reference's full length; and the TPT speed part's per-image peaks).

A bench that cannot run here (no CUDA device, no TensorRT) is listed as ``skipped`` with its reason; a bench that
raises is recorded as ``failed`` with its error and the others still run. The library only logs; the CLI shows
a progress bar (``progress=True``).

``quick``: CI-sized settings (the embedded micro bundle only, batches 1 and 8, a few repeats, 8 frames per shift);
one to two minutes on 2 CPU cores. The full form adds the random-weight ViT-B-32 bundle (exported once into
`cache_dir`) and full-size settings, and takes much longer.
"""

from __future__ import annotations

import logging
import shutil
import subprocess
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgeclip.bench.report import format_value, machine_info, markdown_table, write_report

log = logging.getLogger(__name__)

__all__ = ["BENCHES", "REPORT_NAME", "gpu_info", "library_versions", "plot_latency", "plot_memory",
           "run_suite_report"]

REPORT_NAME = "report"
#: every bench of the suite, in the order they run
BENCHES = ("encoders", "encoders-cuda", "encoders-tensorrt", "kernels", "kernels-cuda", "tta-accuracy", "tta-speed",
           "tta-text-stress")
TRT_EP = "TensorrtExecutionProvider"
PLOTS = {"latency": "latency.png", "accuracy": "accuracy-latency.png", "memory": "memory-classes.png"}

#: settings per form: (quick, full)
_ENCODERS = ({"batches": (1, 8), "warmup": 1, "repeats": 3, "time_budget_s": 1.0},
             {"batches": (1, 8, 64), "warmup": 3, "repeats": 20, "time_budget_s": 10.0})
_KERNELS = ({"frames": ((480, 640),), "classes": (10, 100), "dims": (512,), "warmup": 1, "repeats": 3,
             "time_budget_s": 1.0},
            {})
_TTA = ({"n": 8, "n_reference": 2, "n_views": 16, "model": None, "classes": (10,), "speed_images": 1,
         "text_classes": (10, 100, 300), "text_repeats": 2, "text_time_budget_s": 2.0, "prototypes": "shapes:64"},
        {"n": 512, "n_reference": 64, "n_views": 64, "model": "ViT-B-32", "classes": (10, 100, 1000),
         "speed_images": 3, "text_classes": (10, 100, 1000), "text_repeats": 5, "text_time_budget_s": 60.0,
         "prototypes": None})
_TTA_NAMES = {"tta-accuracy": "accuracy", "tta-speed": "speed", "tta-text-stress": "text-stress"}


# -- what this machine has --------------------------------------------------------------------------------
def gpu_info() -> dict[str, Any]:
    """The GPU side of the header: CUDA device name, torch's CUDA version, the driver (nvidia-smi, when present),
    TensorRT (when ``import tensorrt`` works) and onnxruntime's TensorRT provider; every probe guarded."""
    import torch

    info: dict[str, Any] = {"cuda_available": bool(torch.cuda.is_available()), "cuda_device": None,
                            "torch_cuda": torch.version.cuda, "driver": None, "tensorrt": None,
                            "ort_tensorrt_ep": False}
    if info["cuda_available"]:
        try:
            info["cuda_device"] = torch.cuda.get_device_name()
        except Exception as exc:  # a broken driver raises RuntimeError and others
            log.warning("cannot read the CUDA device name: %s", exc)
    smi = shutil.which("nvidia-smi")
    if smi:
        try:
            out = subprocess.run([smi, "--query-gpu=name,driver_version", "--format=csv,noheader"],
                                 capture_output=True, text=True, timeout=15, check=True).stdout.strip()
            if out:
                info["nvidia_smi"] = out.splitlines()
                info["driver"] = out.splitlines()[0].split(",")[-1].strip()
        except (OSError, subprocess.SubprocessError) as exc:
            log.warning("nvidia-smi failed: %s", exc)
    try:
        import tensorrt  # type: ignore[import-not-found]

        info["tensorrt"] = getattr(tensorrt, "__version__", "?")
    except Exception:  # ImportError, or a library that fails to load
        pass
    try:
        from edgeclip.runtime.ort_session import available_providers

        info["ort_tensorrt_ep"] = TRT_EP in available_providers()
    except Exception:  # onnxruntime missing or broken
        pass
    return info


def library_versions() -> dict[str, str | None]:
    """Versions of the libraries the numbers depend on (None: not installed)."""
    import importlib

    out: dict[str, str | None] = {}
    for name in ("edgeclip", "torch", "onnxruntime", "numpy", "onnx", "matplotlib", "open_clip"):
        try:
            out[name] = str(getattr(importlib.import_module(name), "__version__", "?"))
        except Exception:  # not installed, or fails to import
            out[name] = None
    return out


# -- the benches --------------------------------------------------------------------------------------------
@dataclass
class _Bench:
    name: str
    what: str  # one line for the report's table
    run: Callable[[], list[tuple[str, dict[str, Any], dict[str, Path]]]] | None  # -> (report, results, files)
    skip: str | None = None  # why it cannot run here


def _plan(out: Path, quick: bool, device: str, threads: int | None, cache_dir: Path,
          gpu: dict[str, Any]) -> list[_Bench]:
    """Every bench of `BENCHES` with its runner, or the reason it is skipped on this machine."""
    form = 0 if quick else 1
    cuda_skip = None
    if device == "cpu":
        cuda_skip = "device cpu asked (--device cuda or auto runs it)"
    elif not gpu["cuda_available"]:
        cuda_skip = "no CUDA device (torch.cuda.is_available() is False)"
    trt_backends, trt_skip = _tensorrt_backends(gpu, cuda_skip)

    def encoders(dev: str, precision: str, backends: Sequence[str] | None, suffix: str) -> Callable[[], Any]:
        def run() -> list[tuple[str, dict[str, Any], dict[str, Path]]]:
            from edgeclip.bench.encoders import bench_encoders, bench_encoders_for_model

            kw: dict[str, Any] = {**_ENCODERS[form], "threads": threads, "device": dev, "precision": precision,
                                  "backends": backends, "cache_dir": cache_dir}
            res = bench_encoders("micro", **kw)
            done = [(f"encoders-micro{suffix}", res, write_report(res, out, f"encoders-micro{suffix}"))]
            if not quick:
                big = bench_encoders_for_model("ViT-B-32", cache_dir, **kw)
                done.append((f"encoders-ViT-B-32{suffix}", big, write_report(big, out, f"encoders-ViT-B-32{suffix}")))
            return done
        return run

    def cuda_backends(with_trt: bool) -> list[str] | None:
        if cuda_skip:
            return None
        from edgeclip.bench.encoders import default_backends

        return [b for b in default_backends("cuda") if (TRT_EP in b) == with_trt]

    def kernels(dev: str, name: str) -> Callable[[], Any]:
        def run() -> list[tuple[str, dict[str, Any], dict[str, Path]]]:
            from edgeclip.bench.kernels import bench_kernels

            res = bench_kernels(device=dev, threads=threads, **_KERNELS[form])
            return [(name, res, write_report(res, out, name))]
        return run

    def tta(part: str) -> Callable[[], Any]:
        def run() -> list[tuple[str, dict[str, Any], dict[str, Path]]]:
            from edgeclip.bench.tta import REPORT_NAMES, bench_tta

            s = dict(_TTA[form])
            res = bench_tta([part], bundle="micro", device="cpu", threads=threads, n=s["n"],
                            n_reference=s["n_reference"], n_views=s["n_views"], model=s["model"],
                            cache_dir=cache_dir, classes=s["classes"], speed_images=s["speed_images"],
                            text_bundles=("micro",) if quick else ("micro", "model"), text_classes=s["text_classes"],
                            text_repeats=s["text_repeats"], text_time_budget_s=s["text_time_budget_s"],
                            prototypes=s["prototypes"], out_dir=out)
            return [(REPORT_NAMES[part], res["parts"][part], res["files"][part])]
        return run

    return [
        _Bench("encoders", "image and text encoder latency, PyTorch eager vs ONNX Runtime CPU, FP32 vs INT8",
               encoders("cpu", "fp32,int8", None, "")),
        _Bench("encoders-cuda", "encoder latency on the GPU: PyTorch CUDA vs ONNX Runtime's CUDA provider, FP32 vs "
               "FP16", encoders("cuda", "fp32,fp16", cuda_backends(False), "-cuda"), cuda_skip),
        _Bench("encoders-tensorrt", "encoder latency on TensorRT: the bundle's own engines (`edgeclip engine build`) "
               "and ONNX Runtime's TensorRT provider",
               encoders("cuda", "fp32", trt_backends, "-tensorrt"), trt_skip),
        _Bench("kernels", "per-frame kernels (views, cosine + select) vs TPT-style baselines, CPU",
               kernels("cpu", "kernels")),
        _Bench("kernels-cuda", "per-frame kernels on the GPU", kernels("cuda", "kernels-cuda"), cuda_skip),
        _Bench("tta-accuracy", "accuracy and per-image latency of every TTA method (held-out micro stream, CPU)",
               tta("accuracy")),
        _Bench("tta-speed", "edgeclip's TPT against the reference TPT loop per image, with peak memory (CPU)",
               tta("speed")),
        _Bench("tta-text-stress", "text path of one TPT step against the number of classes: latency, peak memory",
               tta("text-stress")),
    ]


def _tensorrt_backends(gpu: dict[str, Any], cuda_skip: str | None) -> tuple[list[str] | None, str | None]:
    """The TensorRT backends of the micro bundle here (its valid engines, ONNX Runtime's TensorRT provider), or
    None and why there are none."""
    if cuda_skip:
        return None, cuda_skip
    out = [f"onnxruntime:{TRT_EP}"] if gpu["ort_tensorrt_ep"] else []
    native = "`import tensorrt` fails"
    if gpu["tensorrt"]:
        import edgeclip
        from edgeclip.runtime.bundle import open_bundle
        from edgeclip.runtime.engine_cache import has_valid_engines

        micro = open_bundle(edgeclip.default_bundle())
        if has_valid_engines(micro, "image") and has_valid_engines(micro, "text"):
            out.insert(0, "tensorrt")
        else:
            native = "the micro bundle has no valid engines here (edgeclip engine build --precision fp16)"
    if out:
        return out, None
    return None, f"no TensorRT: {native}, and onnxruntime has no {TRT_EP}"


# -- plots --------------------------------------------------------------------------------------------------
def _encoder_label(r: dict[str, Any]) -> str:
    provider = (r.get("provider") or "").replace("ExecutionProvider", "")
    base = f"{r['backend']}:{provider}" if provider else r["backend"]
    return f"{base} {r.get('precision', 'fp32')}"


def plot_latency(encoder_results: Sequence[tuple[str, dict[str, Any]]], path: Path) -> None:
    """Median encoder latency per backend and precision: one panel per (report, encoder), a bar per backend at
    each batch size (log y), 10th–90th-ish spread as the p90 whisker."""
    import numpy as np
    from matplotlib.figure import Figure

    from edgeclip.bench.figures import save_figure

    panels = [(name, enc, [r for r in res["rows"] if r["encoder"] == enc and r.get("median_ms")])
              for name, res in encoder_results for enc in ("image", "text")]
    panels = [p for p in panels if p[2]]
    if not panels:
        raise ValueError("no encoder rows with a median to plot")
    fig = Figure(figsize=(6.5 * min(len(panels), 2), 4.2 * ((len(panels) + 1) // 2)))
    for k, (name, enc, rows) in enumerate(panels):
        ax = fig.add_subplot((len(panels) + 1) // 2, min(len(panels), 2), k + 1)
        labels = list(dict.fromkeys(_encoder_label(r) for r in rows))
        batches = sorted({r["batch"] for r in rows})
        width = 0.8 / len(labels)
        for i, label in enumerate(labels):
            by = {r["batch"]: r for r in rows if _encoder_label(r) == label}
            xs = [j + (i - (len(labels) - 1) / 2) * width for j, b in enumerate(batches) if b in by]
            med = [by[b]["median_ms"] for b in batches if b in by]
            p90 = [max(by[b]["p90_ms"] - by[b]["median_ms"], 0.0) for b in batches if b in by]
            ax.bar(xs, med, width, yerr=[np.zeros(len(p90)), p90], capsize=2, label=label, color=f"C{i}")
        ax.set_xticks(range(len(batches)), [str(b) for b in batches])
        ax.set_yscale("log")
        ax.set_xlabel("batch size")
        ax.set_ylabel("median latency per call (ms, log)")
        ax.set_title(f"{name}: {enc} encoder", fontsize=10)
        ax.grid(True, axis="y", which="both", alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle("Encoder latency per backend and precision (whisker: p90)", fontsize=11)
    save_figure(fig, path)


def plot_memory(text_results: dict[str, Any] | None, speed_results: dict[str, Any] | None, path: Path) -> None:
    """Peak memory against the number of classes C (log x): the text-stress part's edgeclip (truncated) and reference
    (full length) per bundle, and the speed part's per-image peaks of both TPTs."""
    from matplotlib.figure import Figure

    from edgeclip.bench.figures import save_figure

    series: dict[str, list[tuple[int, float]]] = {}
    for r in (text_results or {}).get("rows", []):
        if r.get("error") is None and r.get("peak_mb") is not None:
            series.setdefault(f"one TPT text step, {r['bundle']}: {r['impl']}", []).append((r["classes"], r["peak_mb"]))
    for r in (speed_results or {}).get("rows", []):
        if r.get("error") is not None or r.get("names") == "shapes":
            continue
        for key, who in (("edgeclip_peak_mb", "edgeclip"), ("reference_peak_mb", "reference")):
            if r.get(key) is not None:
                series.setdefault(f"TPT per image, {r['bundle']}: {who}", []).append((r["classes"], r[key]))
    if not series:
        raise ValueError("no memory rows to plot")
    fig = Figure(figsize=(8, 4.8))
    ax = fig.add_subplot()
    for i, (label, pts) in enumerate(series.items()):
        pts.sort()
        ax.plot([c for c, _ in pts], [max(m, 1e-3) for _, m in pts], "-o" if "edgeclip" in label else "--s",
                color=f"C{i}", label=label)
    ticks = sorted({c for pts in series.values() for c, _ in pts})
    ax.set_xscale("log")
    ax.set_xticks(ticks, [str(c) for c in ticks])
    ax.minorticks_off()
    ax.set_xlabel("classes C")
    ax.set_ylabel("peak memory growth (MiB)")
    ax.set_title("Peak memory against the number of classes", fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7)
    save_figure(fig, path)


def _draw_plots(out: Path, results: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The three plots from what ran: ``{plot: {"path"} or {"error"}}`` (a plot whose bench did not run, or that
    fails to draw, is recorded, never raised)."""
    from edgeclip.bench.tta_accuracy import plot_accuracy

    enc = [(name, res) for name, res in results.items() if res.get("bench") == "encoders"]
    by = {res.get("bench"): res for res in results.values()}
    jobs: dict[str, tuple[bool, Callable[[Path], None]]] = {
        "latency": (bool(enc), lambda p: plot_latency(enc, p)),
        "accuracy": ("tta-accuracy" in by, lambda p: plot_accuracy(by["tta-accuracy"], p)),
        "memory": ("tta-text-stress" in by or "tta-speed" in by,
                   lambda p: plot_memory(by.get("tta-text-stress"), by.get("tta-speed"), p)),
    }
    done: dict[str, dict[str, Any]] = {}
    for key, (ready, draw) in jobs.items():
        path = out / PLOTS[key]
        if not ready:
            done[key] = {"error": "not drawn: the bench it comes from did not run"}
            continue
        try:
            draw(path)
            done[key] = {"path": path}
        except Exception as exc:  # a plot must not lose the report
            log.warning("plot %s failed: %s", key, exc)
            done[key] = {"error": f"failed: {type(exc).__name__}: {exc}"}
    return done


# -- the report ---------------------------------------------------------------------------------------------
def _header(machine: dict[str, Any], gpu: dict[str, Any], versions: dict[str, str | None]) -> list[str]:
    simd = " ".join(machine.get("simd") or []) or "–"
    lines = [f"- CPU: {machine.get('cpu_model')} ({machine.get('cpu_usable')}/{machine.get('cpu_count')} cores "
             f"usable), SIMD: {simd}; torch CPU capability {machine.get('torch_cpu_capability')}",
             f"- platform: {machine.get('platform')}; Python {machine.get('python')}; load average "
             f"{format_value(machine.get('load_avg_1m'))}; threads {machine.get('threads') or 'library defaults'}"]
    if gpu["cuda_available"]:
        lines.append(f"- GPU: {gpu['cuda_device']}, driver {gpu['driver'] or '?'}, torch CUDA {gpu['torch_cuda']}")
    else:
        lines.append("- GPU: none (no CUDA device)" + (f"; nvidia-smi: {gpu['nvidia_smi']}" if gpu.get("nvidia_smi")
                                                       else ""))
    lines.append("- TensorRT: " + (gpu["tensorrt"] or "not installed") + "; onnxruntime TensorRT provider: "
                 + ("yes" if gpu["ort_tensorrt_ep"] else "no"))
    lines.append("- versions: " + ", ".join(f"{k} {v or '–'}" for k, v in versions.items())
                 + f"; onnxruntime providers: {', '.join(machine.get('ort_providers') or []) or '–'}")
    return lines


def _markdown(summary: dict[str, Any], out: Path) -> str:
    def rel(p: Any) -> str:
        return Path(p).relative_to(out).as_posix() if Path(p).is_relative_to(out) else str(p)

    form = "quick" if summary["quick"] else "full"
    lines = [f"# edgeclip benchmark report ({form})", "", f"{summary['timestamp']}; {summary['seconds']:.0f} s in all; "
             f"{summary['counts']['ok']} ran, {summary['counts']['skipped']} skipped, "
             f"{summary['counts']['failed']} failed.", "", "## Machine", "",
             *_header(summary["machine"], summary["gpu"], summary["versions"]), "", "## Benches", ""]
    rows = []
    for b in summary["benches"]:
        status = b["status"] if b["status"] == "ok" else f"{b['status']}: {b.get('reason') or b.get('error')}"
        links = ", ".join(f"[{n}]({rel(f['md'])}) (" + ", ".join(f"[{k}]({rel(v)})" for k, v in f.items() if k != "md")
                          + ")" for n, f in b["reports"].items())
        rows.append({"bench": b["name"], "what": b["what"], "status": status, "seconds": b.get("seconds"),
                     "reports": links})
    lines += [markdown_table(rows, ["bench", "what", "status", "seconds", "reports"]), "", "## Plots", ""]
    titles = {"latency": "Latency per backend and precision", "accuracy": "Accuracy against latency per method",
              "memory": "Memory against classes"}
    for key, plot in summary["plots"].items():
        lines.append(f"### {titles[key]}")
        lines.append("")
        lines.append(f"![{titles[key]}]({rel(plot['path'])})" if "path" in plot else f"_{plot['error']}_")
        lines.append("")
    failed = [b for b in summary["benches"] if b["status"] == "failed"]
    if failed:
        lines += ["## Failures", ""]
        for b in failed:
            lines += [f"### {b['name']}", "", "```", b.get("traceback", b["error"]).rstrip(), "```", ""]
    lines += ["## Notes", "", f"- Each bench's own report (linked above) holds its notes and every row; "
              f"`{REPORT_NAME}.json` holds this summary.", "- TTA benches run on the CPU with the embedded micro "
              "bundle" + ("." if summary["quick"] else " (the speed part also on a random-weight ViT-B-32)."),
              "- `--quick`: CI-sized settings (few repeats, batches 1 and 8, 8 frames per shift): the numbers are "
              "smoke figures, not claims." if summary["quick"] else "- full-size settings.", ""]
    return "\n".join(lines)


def run_suite_report(
    out: str | Path,
    quick: bool = False,
    device: str = "cpu",
    threads: int | None = None,
    progress: bool = False,
    *,
    benches: Sequence[str] | None = None,
    cache_dir: str | Path = "bench-results/bundles",
) -> dict[str, Any]:
    """Run every bench this machine supports and write one report (see the module docstring) into `out`.

    Args:
        out: the folder for every bench's JSON / Markdown (/ PNG), the plots, ``report.md`` and ``report.json``.
        quick: CI-sized settings (micro bundle only, few repeats).
        device: "cpu" (CPU benches; the CUDA ones listed as skipped), "cuda" or "auto" (the CUDA benches too,
            where a CUDA device is present, else skipped with the reason).
        threads: torch and onnxruntime threads for every bench; None: library defaults.
        progress: a tqdm bar over the benches (stderr).
        benches: run only these of `BENCHES` (the others are listed as skipped: "not selected", or the reason they
            cannot run here); None: all.
        cache_dir: where random-weight bundles and the INT8 / FP16 variants are kept.

    Returns:
        ``{"title", "quick", "device", "timestamp", "seconds", "machine", "gpu", "versions", "benches": [{"name",
        "what", "status": "ok" | "skipped" | "failed", "reason" | "error" (+ "traceback"), "seconds", "reports":
        {report: {kind: path}}}], "plots": {plot: {"path"} | {"error"}}, "counts", "ok", "files": {"md", "json"}}``;
        ``ok`` is False when any bench failed.

    Raises:
        InputError: an unknown bench name or device, or threads < 1.
    """
    import datetime as _dt

    from tqdm.auto import tqdm

    from edgeclip.bench.figures import check_matplotlib
    from edgeclip.bench.report import write_json, write_text
    from edgeclip.errors import InputError

    if device not in ("cpu", "cuda", "auto"):
        raise InputError(f"device must be 'cpu', 'cuda' or 'auto', got {device!r}")
    if threads is not None and threads < 1:
        raise InputError(f"threads must be >= 1, got {threads}")
    chosen = list(BENCHES) if benches is None else list(dict.fromkeys(benches))
    unknown = [b for b in chosen if b not in BENCHES]
    if unknown:
        raise InputError(f"unknown bench(es) {unknown}; choose from {', '.join(BENCHES)}")
    check_matplotlib()  # fail before minutes of benchmarking, not after
    out = Path(out).expanduser()
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    stamp = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    gpu = gpu_info()
    plan = _plan(out, quick, device, threads, Path(cache_dir).expanduser(), gpu)
    records: list[dict[str, Any]] = []
    results: dict[str, dict[str, Any]] = {}
    bar = tqdm(plan, desc="bench report", unit="bench", disable=not progress)
    for bench in bar:
        rec: dict[str, Any] = {"name": bench.name, "what": bench.what, "status": "skipped", "reason": None,
                               "seconds": None, "reports": {}}
        records.append(rec)
        if bench.skip is not None or bench.run is None:  # the reason it cannot run here wins over "not selected"
            rec["reason"] = bench.skip
            log.info("%s skipped: %s", bench.name, bench.skip)
            continue
        if bench.name not in chosen:
            rec["reason"] = "not selected"
            continue
        bar.set_postfix_str(bench.name)
        t0 = time.perf_counter()
        try:
            done = bench.run()
        except Exception as exc:  # one failing bench must not lose the others
            log.warning("%s failed: %s: %s", bench.name, type(exc).__name__, exc)
            rec.update(status="failed", error=f"{type(exc).__name__}: {exc}",
                       traceback="".join(traceback.format_exception(exc)[-12:]))
        else:
            rec["status"] = "ok"
            for name, res, files in done:
                results[name] = res
                rec["reports"][name] = dict(files)
        rec["seconds"] = time.perf_counter() - t0
        log.info("%s %s in %.1f s", bench.name, rec["status"], rec["seconds"])
    bar.close()
    plots = _draw_plots(out, results)
    counts = {s: sum(r["status"] == s for r in records) for s in ("ok", "skipped", "failed")}
    summary: dict[str, Any] = {
        "title": "edgeclip benchmark report", "quick": quick, "device": device, "threads": threads,
        "timestamp": stamp, "seconds": time.perf_counter() - start, "machine": machine_info(threads), "gpu": gpu,
        "versions": library_versions(), "benches": records, "plots": plots, "counts": counts,
        "ok": counts["failed"] == 0,
        "files": {"md": out / f"{REPORT_NAME}.md", "json": out / f"{REPORT_NAME}.json"}}
    write_text(summary["files"]["md"], _markdown(summary, out))
    write_json(summary["files"]["json"], summary)
    return summary
