"""Encoder latency: PyTorch eager against ONNX Runtime (every provider present), image and text, and what
``backend="auto"`` picks at each batch size.

For every backend the image encoder runs on random normalised pixels and the text encoder on
realistic prompts ("a photo of a {name}." with 1–4-word class names), at each batch size. Inputs are
built once and shared by every backend. All backends are loaded at once and each case is timed on
them round-robin (`measure_interleaved`), so they share whatever else the machine is doing; the rows
of ONNX Runtime carry their speedup over PyTorch eager at the same batch, with its spread over the
paired calls.

Time budget: each case gets `warmup` untimed calls per backend and up to `repeats` rounds, but stops
once the slowest backend has `time_budget_s` seconds of timed calls (never fewer than `MIN_REPEATS`
rounds), and each warm-up stops after half the budget; every timed call also costs a 0.1 s settle
period (`timing.SETTLE_S`). So a slow case (ViT-B-32 images at batch 64 on 2 CPU cores: ~3.2 s a
call per backend) costs 5 rounds plus ~3 warm-up calls per backend (~50 s for torch + ORT) instead
of 23 calls per backend (~150 s), while a fast case still gets all `repeats`; the whole ViT-B-32
bench at batches 1, 8, 64 takes about 3 minutes on 2 cores.

Auto: every row carries ``auto_pick``, the backend ``edgeclip.load(..., backend="auto")`` runs that encoder and
batch on (its cached calibration, or one made now: `edgeclip.runtime.backend_choice`), so the pick stands next
to this run's own medians; a note counts the cases where it is this run's faster backend. ``"auto"`` given as
a backend is also timed as a row of its own (the dispatching encoder as users get it).

Precision (``precision=("fp32", "int8")``, CLI ``--precision fp32,int8``): besides the FP32 rows of every backend,
each other precision is a variant bundle timed through ONNX Runtime (the provider edgeclip picks on `device`; a
variant has no PyTorch tower) in the same round-robin, on the same inputs. INT8 is `precision.int8_variant` (the
`edgeclip bench precision` one, kept in `cache_dir`; its text encoder stays FP32 by design), FP16 is
`edgeclip.export.fp16.convert_bundle_fp16` (kept in `cache_dir` too; on the CPU it is timed for completeness, not
as a deployment path). Their rows carry ``vs_fp32`` (FP32 ONNX Runtime time on the same provider / this row's, with
its spread over the paired rounds, `ratio_with_spread`).
"""

from __future__ import annotations

import gc
import logging
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

import edgeclip
from edgeclip.bench.common import (
    TEMPLATE,
    class_names,
    model_label,
    prompts,
    random_weight_bundle,
    resolve_bundle,
    retry_oom,
    torch_threads,
)
from edgeclip.bench.report import add_busy_note, cpu_snapshot, machine_info, other_cpu_load
from edgeclip.bench.timing import RATIO_NOTE, TimingStats, is_cuda, measure, measure_interleaved, ratio_with_spread
from edgeclip.errors import BackendError, EdgeClipError, InputError
from edgeclip.runtime import bundle as B
from edgeclip.runtime.backend_choice import TIE_MARGIN
from edgeclip.runtime.model import EdgeClip
from edgeclip.runtime.ort_session import (
    CPU_EP,
    PROVIDER_ORDER,
    available_providers,
    choose_providers,
    import_ort,
)

log = logging.getLogger(__name__)

__all__ = [
    "COLUMNS",
    "BackendSpec",
    "bench_encoders",
    "bench_encoders_for_model",
    "class_names",
    "default_backends",
    "parse_backend",
    "parse_precisions",
    "prompts",
]

DEFAULT_TIME_BUDGET_S = 10.0
DEFAULT_CACHE = "bench-results/bundles"
MIN_REPEATS = 5
# the Markdown table's columns; the JSON rows carry more (device, min, samples, ...)
COLUMNS = ["encoder", "backend", "provider", "batch", "tokens", "n", "median_ms", "p90_ms", "per_item_ms",
           "speedup", "speedup_lo", "speedup_hi", "auto_pick", "other_load"]
AUTO = "auto"
TENSORRT = "tensorrt"
FP32 = "fp32"
PRECISIONS = (FP32, "int8", "fp16")
#: columns added to the Markdown table when a precision other than fp32 is timed
PRECISION_COLUMNS = ["precision", "items_per_s", "vs_fp32", "vs_fp32_lo", "vs_fp32_hi"]


# -- backends -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class BackendSpec:
    """One backend to time: `torch`, `onnxruntime` with exactly one execution provider, or `auto` (what
    ``backend="auto"`` builds)."""

    backend: str  # "torch" | "onnxruntime" | "auto" | "tensorrt" (the bundle's engines, CUDA only)
    provider: str | None  # ORT execution provider; None for torch and auto
    device: str  # where inputs live and the encoders run
    precision: str = FP32  # "fp32", or a variant bundle's precision (onnxruntime only)

    @property
    def label(self) -> str:
        base = self.backend if self.provider is None else f"{self.backend}:{self.provider}"
        return base if self.precision == FP32 else f"{base}@{self.precision}"


def parse_precisions(spec: str | Sequence[str]) -> list[str]:
    """Precisions to time, from a comma list (``"fp32,int8"``) or a sequence: each of `PRECISIONS`, repeats
    dropped, fp32 always first (it is the reference of ``vs_fp32``; added when missing).

    Raises:
        InputError: an unknown or empty name, or nothing given.
    """
    names = spec.split(",") if isinstance(spec, str) else list(spec)
    out: list[str] = []
    for raw in names:
        name = str(raw).strip().lower()
        if name not in PRECISIONS:
            raise InputError(f"unknown precision {str(raw).strip()!r}; use a comma list of {', '.join(PRECISIONS)} "
                             "(e.g. fp32,int8)")
        if name not in out:
            out.append(name)
    if not out:
        raise InputError(f"no precision given; use a comma list of {', '.join(PRECISIONS)}")
    return [FP32, *[p for p in out if p != FP32]]



def parse_backend(spec: str, device: str = "cpu") -> BackendSpec:
    """Parse a backend name: `torch`, `auto`, `onnxruntime` (the provider edgeclip picks on `device`) or
    `onnxruntime:<EP>` (exactly that execution provider).

    The CPU execution provider always runs on the host; any other provider needs a CUDA `device`.
    """
    name, _, provider = spec.partition(":")
    if name == TENSORRT:
        if provider:
            raise ValueError(f"backend {spec!r}: tensorrt takes no provider; use 'tensorrt'")
        if not is_cuda(device):
            raise ValueError(f"backend {spec!r} runs on the GPU: pass device='cuda' (got device={device!r})")
        return BackendSpec(TENSORRT, None, device)
    if name in ("torch", AUTO):
        if provider:
            raise ValueError(f"backend {spec!r}: {name} takes no provider; use {name!r}")
        return BackendSpec(name, None, device)
    if name != "onnxruntime":
        raise ValueError(f"unknown backend {spec!r}; use 'torch', 'auto', 'tensorrt', 'onnxruntime' or "
                         "'onnxruntime:<provider>'")
    present = available_providers()
    if not present:
        raise BackendError("backend 'onnxruntime' asked for but onnxruntime is not installed: "
                           "pip install 'edgeclip[cpu]' (or 'edgeclip[gpu]')")
    if not provider:
        provider = _provider_name(choose_providers(device)[0])
    if provider not in present:
        raise BackendError(f"backend {spec!r}: provider {provider} is not in this onnxruntime "
                           f"(present: {', '.join(present)})")
    if provider == CPU_EP:
        return BackendSpec("onnxruntime", provider, "cpu")
    if not is_cuda(device):
        raise ValueError(f"backend {spec!r} runs on the GPU: pass device='cuda' (got device={device!r})")
    return BackendSpec("onnxruntime", provider, device)


def default_backends(device: str = "cpu", bundle: B.Bundle | None = None) -> list[str]:
    """`torch` plus `onnxruntime:<EP>` for every compute provider present that can run on `device`, and on CUDA
    `tensorrt` when ``bundle`` has valid TensorRT engines here (`edgeclip engine build`).

    Providers edgeclip does not place (e.g. AzureExecutionProvider) are left out, and so are GPU
    providers when `device` is the CPU; both are named in the log.
    """
    out = ["torch"]
    if bundle is not None and is_cuda(device):
        from edgeclip.runtime.engine_cache import has_valid_engines

        if has_valid_engines(bundle, "image") and has_valid_engines(bundle, "text"):
            out.append(TENSORRT)
    for p in available_providers():
        if p not in PROVIDER_ORDER:
            log.info("skipping onnxruntime provider %s (not a compute provider edgeclip places)", p)
        elif p != CPU_EP and not is_cuda(device):
            log.info("skipping onnxruntime provider %s: it needs device='cuda'", p)
        else:
            out.append(f"onnxruntime:{p}")
    return out


def _provider_name(p: Any) -> str:
    return p[0] if isinstance(p, tuple) else str(p)


class _ProviderEdgeClip(EdgeClip):
    """An `EdgeClip` whose ONNX Runtime sessions use exactly one provider (CPU only as the fallback
    for unsupported nodes), e.g. the CUDA EP on a machine whose default would be the TensorRT EP."""

    def __init__(self, bundle: B.Bundle, provider: str, device: str, threads: int | None) -> None:
        self.provider = provider
        super().__init__(bundle, backend="onnxruntime", device=device, threads=threads)

    def _session(self, name: str) -> Any:
        ort = import_ort()
        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if self.threads is not None:
            opts.intra_op_num_threads = self.threads
            opts.inter_op_num_threads = 1
        cache = self.bundle.path / "engines" / "ort_trt"
        configured = [p for p in choose_providers(str(self.device), cache)
                      if _provider_name(p) == self.provider]
        providers = (configured or [self.provider]) + ([CPU_EP] if self.provider != CPU_EP else [])
        sess = ort.InferenceSession(str(self.bundle.file(name)), opts, providers=providers)
        if sess.get_providers()[0] != self.provider:
            raise BackendError(f"{name}: onnxruntime could not start {self.provider} "
                               f"(it fell back to {sess.get_providers()[0]})")
        return sess


def _load(bundle: B.Bundle, spec: BackendSpec, threads: int | None) -> EdgeClip:
    """The model for one backend, through `edgeclip.load` whenever that picks the wanted provider."""
    if spec.backend in ("torch", AUTO, TENSORRT):
        return edgeclip.load(bundle, backend=spec.backend, device=spec.device, threads=threads)
    if _provider_name(choose_providers(spec.device)[0]) == spec.provider:
        return edgeclip.load(bundle, backend="onnxruntime", device=spec.device, threads=threads)
    return _ProviderEdgeClip(bundle, spec.provider or CPU_EP, spec.device, threads)


# -- inputs -------------------------------------------------------------------------------------
@dataclass
class _TextInput:
    token_embeds: torch.Tensor  # (N, context, W): full rows; the encoders cut causal towers themselves
    eot: torch.Tensor  # (N,)

    @property
    def tokens(self) -> int:
        return int(self.eot.max()) + 1


def _pixels(batch: int, size: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed + batch)
    return torch.randn(batch, 3, size, size, generator=g)  # (B, 3, S, S), already "normalised"


def _text_input(model: EdgeClip, batch: int) -> _TextInput:
    ids, eot = model.tokenizer.ids(prompts(batch))
    with torch.no_grad():
        embeds = model.text_tower.embed_tokens(ids.to(model.device)).detach().cpu()  # (N, 77, W)
    return _TextInput(embeds, eot)


# -- running ------------------------------------------------------------------------------------
_torch_threads = torch_threads  # the name `edgeclip.bench.kernels` imports; `common.torch_threads` is the one to use


def _row(encoder: str, spec: BackendSpec, batch: int, tokens: int | None,
         stats: TimingStats | None, error: str | None = None) -> dict[str, Any]:
    return {
        "encoder": encoder, "backend": spec.backend, "provider": spec.provider, "precision": spec.precision,
        "device": spec.device,
        "batch": batch, "requested_batch": batch, "tokens": tokens,
        "n": stats.n if stats else 0,
        "median_ms": stats.median_ms if stats else None,
        "p90_ms": stats.p90_ms if stats else None,
        "mean_ms": stats.mean_ms if stats else None,
        "min_ms": stats.min_ms if stats else None,
        "per_item_ms": stats.median_ms / batch if stats else None,
        "items_per_s": 1e3 * batch / stats.median_ms if stats else None,
        "speedup": None, "speedup_p90": None, "speedup_lo": None, "speedup_hi": None, "speedup_of_medians": None,
        "vs_fp32": None, "vs_fp32_lo": None, "vs_fp32_hi": None,
        "auto_pick": None, "other_load": None, "oom_retry": None, "error": error,
        "samples_ms": list(stats.samples_ms) if stats else [],
    }


Calls = dict[str, Callable[[], Any]]  # backend label -> one call on that backend's device


@dataclass
class _Case:
    """One (encoder, batch) timed on every backend that loaded; `make(batch)` builds its inputs at any batch (the
    case's own, or a smaller one after running out of memory) and returns (tokens, calls)."""

    encoder: str  # "image" | "text"
    batch: int
    labels: list[str]  # the backends that loaded, in order
    make: Callable[[int], tuple[int | None, Calls]]  # tokens: text sequence length after causal truncation


def _time_case(case: _Case, specs: dict[str, BackendSpec], *, warmup: int, repeats: int,
               time_budget_s: float, interleave: bool = True,
               ) -> tuple[list[dict[str, Any]], dict[str, TimingStats], bool]:
    """Time one case on all backends; returns rows, stats by label, and whether the samples are paired.

    Round-robin (`measure_interleaved`) when `interleave`, else one backend after the other. When a backend
    runs out of memory, the whole case is timed once more at a smaller batch (`retry_oom`): its rows carry the
    batch that ran, the batch asked for (`requested_batch`) and the failure (`oom_retry`). When the retry runs
    out of memory too, every backend gets a row with `error` set instead of raising.
    """
    sync = torch.cuda.synchronize if any(is_cuda(s.device) for s in specs.values()) else None
    kw: dict[str, Any] = {"warmup": warmup, "repeats": repeats, "max_time": time_budget_s,
                          "min_repeats": MIN_REPEATS, "sync": sync}
    snap = cpu_snapshot()
    paired = interleave and len(case.labels) > 1

    def run(batch: int) -> tuple[int | None, dict[str, TimingStats]]:
        tokens, calls = case.make(batch)
        if paired:
            return tokens, measure_interleaved(calls, **kw)
        return tokens, {label: measure(fn, **kw) for label, fn in calls.items()}

    res = retry_oom(run, case.batch, f"{case.encoder} encoder")
    tokens, stats = res.value if res.value is not None else (None, {})
    other = other_cpu_load(snap, cpu_snapshot())
    rows = []
    for label in case.labels:
        st = stats.get(label)
        row = _row(case.encoder, specs[label], res.batch or case.batch, tokens, st)
        row.update(res.record(), other_load=other)
        rows.append(row)
        if st is not None:
            log.info("%s %s batch %d: median %.3f ms, p90 %.3f ms (n=%d)",
                     case.encoder, label, row["batch"], st.median_ms, st.p90_ms, st.n)
    return rows, stats, paired


def _add_speedups(rows: list[dict[str, Any]], stats: dict[tuple[str, int], dict[str, TimingStats]],
                  paired: dict[tuple[str, int], bool]) -> None:
    """Fill `speedup*` on ORT rows: PyTorch eager time / this row's (`ratio_with_spread`), same encoder and batch;
    and `vs_fp32*` on the rows of another precision: the FP32 time of the same backend and provider / this row's."""
    for r in rows:
        if r["backend"] == "torch" or r["median_ms"] is None:
            continue
        key = (r["encoder"], r["requested_batch"])
        mine = stats.get(key, {}).get(_label(r))
        if mine is None:
            continue
        ref = stats.get(key, {}).get("torch")
        if ref is not None:
            ratio = ratio_with_spread(mine, ref, paired=paired[key])
            r.update(speedup=ratio["ratio"], speedup_p90=ratio["ratio_p90"], speedup_lo=ratio["ratio_lo"],
                     speedup_hi=ratio["ratio_hi"], speedup_of_medians=ratio["ratio_of_medians"])
        ref32 = stats.get(key, {}).get(_label({**r, "precision": FP32}))
        if r.get("precision", FP32) != FP32 and ref32 is not None:
            ratio = ratio_with_spread(mine, ref32, paired=paired[key])
            r.update(vs_fp32=ratio["ratio"], vs_fp32_lo=ratio["ratio_lo"], vs_fp32_hi=ratio["ratio_hi"])


def _label(row: dict[str, Any]) -> str:
    """The backend label of a row: "torch", "auto" or "onnxruntime:<provider>", with "@<precision>" unless fp32."""
    base = row["backend"] if row["provider"] is None else f"{row['backend']}:{row['provider']}"
    precision = row.get("precision", FP32)
    return base if precision == FP32 else f"{base}@{precision}"


def _auto_choice(bnd: B.Bundle, device: str, threads: int | None) -> Any:
    """What ``backend="auto"`` uses for this bundle here, from an auto model loaded for it (its cached
    calibration or a fresh one) and dropped; None when it cannot load."""
    try:
        model = edgeclip.load(bnd, backend=AUTO, device=device, threads=threads)
    except EdgeClipError as exc:
        log.warning("backend auto cannot load: %s", exc)
        return None
    choice = model.backend_choice
    del model
    gc.collect()
    return choice


def _auto_note(rows: list[dict[str, Any]], choice: Any, device: str) -> str:
    """Which backend auto picks per encoder and batch, and in how many cases that is this run's faster one
    (PyTorch eager vs onnxruntime on the provider edgeclip picks)."""
    try:
        ort: str | None = f"onnxruntime:{_provider_name(choose_providers(device)[0])}"
    except BackendError:  # no onnxruntime, or none with a provider for this device
        ort = None
    by = {(r["encoder"], r["requested_batch"], _label(r)): r["median_ms"] for r in rows}
    picks, agree, compared = [], 0, 0
    for enc, n in dict.fromkeys((r["encoder"], r["requested_batch"]) for r in rows):
        pick = choice[enc].backend_for(n)
        picks.append(f"{enc} {n} -> {pick}")
        t, o = by.get((enc, n, "torch")), by.get((enc, n, ort))
        if t is not None and o is not None:
            compared += 1
            agree += pick == ("torch" if t < o else "onnxruntime")
    how = {"cache": "cached calibration", "calibrated": "calibrated for this run", "single": "one backend each"}
    src = f"{how.get(choice.source, choice.source)}, made {choice.created} in {choice.seconds:.2f} s"
    if choice.load_avg is not None:
        src += f" at load average {choice.load_avg:.2f}"
    return (f"auto_pick: the backend backend='auto' runs each case on ({src}; nearest calibration bucket): "
            + ", ".join(picks) + f"; it is this run's faster of torch and onnxruntime in {agree} of {compared} cases "
            f"(auto keeps onnxruntime unless torch was more than {100 * TIE_MARGIN:.0f}% faster when calibrated).")


def _cases(models: dict[str, EdgeClip], specs: dict[str, BackendSpec], batches: list[int],
           text_batches: list[int]) -> Iterator[_Case]:
    """The cases; each builds its inputs (seeded) when timed and copies them to each backend's device up front."""
    first = next(iter(models.values()))
    size = first.preprocess_cfg.image_size

    def image(n: int) -> tuple[int | None, Calls]:
        pixels = _pixels(n, size)  # (B, 3, S, S)
        return None, {label: _image_call(m, pixels.to(specs[label].device)) for label, m in models.items()}

    def text(n: int) -> tuple[int | None, Calls]:
        t = _text_input(first, n)
        return t.tokens, {label: _text_call(m, t, specs[label].device) for label, m in models.items()}

    for n in batches:
        yield _Case("image", n, list(models), image)
    for n in text_batches:
        yield _Case("text", n, list(models), text)


def bench_encoders(
    bundle: str | Path | B.Bundle,
    *,
    batches: Sequence[int] = (1, 8, 64),
    backends: Sequence[str] | None = None,
    text_batches: Sequence[int] | None = None,
    warmup: int = 3,
    repeats: int = 20,
    time_budget_s: float = DEFAULT_TIME_BUDGET_S,
    threads: int | None = None,
    device: str = "cpu",
    interleave: bool = True,
    progress: bool = False,
    auto: bool = True,
    precision: str | Sequence[str] = (FP32,),
    cache_dir: str | Path = DEFAULT_CACHE,
    int8_calib: str = "shapes:256",
) -> dict[str, Any]:
    """Time the image and text encoders of `bundle` on each backend, precision and batch size.

    All backends are loaded together and each case (encoder, batch) times them round-robin (see
    `measure_interleaved`), so PyTorch and ONNX Runtime share whatever else the machine is doing and
    the speedup's spread comes from paired calls.

    Args:
        bundle: a bundle directory, an opened `Bundle`, or "micro" (the embedded default bundle).
        batches: image batch sizes.
        backends: "torch", "onnxruntime", "onnxruntime:<provider>", "tensorrt" (the bundle's engines, CUDA) or
            "auto" (timed as users get it); None: `default_backends(device, bundle)`, i.e. PyTorch eager, every
            ONNX Runtime compute provider that runs on `device`, and tensorrt where the bundle has valid engines.
        text_batches: numbers of prompts per text batch; None: the same as `batches`.
        warmup: untimed calls before each case, per backend.
        repeats: the most timed calls per case and backend.
        time_budget_s: seconds of timed calls of the slowest backend after which a case stops (at
            least `MIN_REPEATS` calls; see the module docstring).
        threads: intra-op threads for PyTorch and ONNX Runtime; None: each library's default.
        device: "cpu" or "cuda[:i]" for PyTorch and the GPU providers.
        interleave: time the backends of a case round-robin (paired samples); False: one after the
            other (each alone, unpaired; a cross-check for interference between the libraries).
        progress: show a tqdm bar over the cases (on stderr).
        auto: fill every row's ``auto_pick`` with the backend ``backend="auto"`` runs that case on (loading
            an auto model once to learn its choice, which calibrates it when no cached calibration fits).
        precision: precisions to time side by side (`parse_precisions`: a comma list or a sequence of "fp32",
            "int8", "fp16"; fp32 is always timed, as the reference). Every precision but fp32 is a variant
            bundle timed through ONNX Runtime on the provider edgeclip picks on `device` (the FP32 row of that
            provider is added when `backends` lacks it).
        cache_dir: where the INT8 and FP16 variants of `bundle` are made once and reused while they verify.
        int8_calib: calibration images of the INT8 variant (`quantize_bundle`'s ``calib``).

    Returns:
        `{"title", "bench", "config", "columns", "rows", "notes", "machine"}`. One row per
        (encoder, backend, batch): encoder ("image"/"text"), backend, provider, device, batch, tokens
        (text: sequence length after causal truncation), n, median_ms, p90_ms, mean_ms, min_ms,
        per_item_ms, items_per_s, speedup / speedup_p90 / speedup_lo / speedup_hi (ORT and auto rows: PyTorch
        eager time over this backend's, see `ratio_with_spread`; None on torch rows), precision, vs_fp32 /
        vs_fp32_lo / vs_fp32_hi (rows of another precision: the FP32 time of the same backend and provider over
        this row's, median of the paired ratios and its 10th–90th percentiles; None on fp32 rows), auto_pick (the
        backend ``backend="auto"`` runs this encoder and batch on; None without `auto`), other_load (CPU
        cores other processes kept busy during the case, see `other_cpu_load`; None when the case
        was too short to tell), requested_batch and oom_retry (a case that ran out of memory is timed once
        more at half the batch: `batch` is then the batch that ran and oom_retry the failure), error (None, or
        why the case could not run, e.g. out of memory at both batches) and samples_ms.
    """
    from tqdm.auto import tqdm

    batches = [int(n) for n in batches]
    text_batches = batches if text_batches is None else [int(n) for n in text_batches]
    for n in (*batches, *text_batches):
        if n < 1:
            raise ValueError(f"batch sizes must be >= 1, got {n}")
    if not batches and not text_batches:
        raise ValueError("nothing to time: batches and text_batches are both empty")
    if threads is not None and threads < 1:
        raise ValueError(f"threads must be >= 1, got {threads}")
    precisions = parse_precisions(precision)
    bnd = resolve_bundle(bundle)
    names = default_backends(device, bnd) if backends is None else backends
    spec_list = [parse_backend(s, device) for s in names]
    if not spec_list:
        raise ValueError("no backends to time")
    if len({s.label for s in spec_list}) != len(spec_list):
        raise ValueError(f"backends repeat: {[s.label for s in spec_list]}")
    spec_list += _precision_specs(spec_list, precisions, device)
    specs = {s.label: s for s in spec_list}
    variants: dict[str, B.Bundle] = {}
    label = model_label(bnd)
    snap_start = cpu_snapshot()

    rows: list[dict[str, Any]] = []
    stats: dict[tuple[str, int], dict[str, TimingStats]] = {}
    paired: dict[tuple[str, int], bool] = {}
    with torch_threads(threads):
        models: dict[str, EdgeClip] = {}
        # the auto choice before the timed models load (a calibration then has the machine to itself)
        choice = _auto_choice(bnd, device, threads) if auto and AUTO not in specs else None
        for spec in spec_list:
            try:
                if spec.precision != FP32 and spec.precision not in variants:
                    variants[spec.precision] = _variant(bnd, spec.precision, cache_dir, int8_calib)
                models[spec.label] = _load(variants.get(spec.precision, bnd), spec, threads)
            except EdgeClipError as exc:
                log.warning("%s cannot run on %s: %s", label, spec.label, exc)
                for enc, bs in (("image", batches), ("text", text_batches)):
                    rows += [_row(enc, spec, n, None, None, error=str(exc)) for n in bs]
        if auto and AUTO in models:
            choice = models[AUTO].backend_choice
        bar = tqdm(total=len(batches) + len(text_batches) if models else 0, desc=f"bench {label}",
                   unit="case", disable=not progress)
        try:
            for case in (_cases(models, specs, batches, text_batches) if models else ()):
                bar.set_postfix_str(f"{case.encoder} b={case.batch}")
                case_rows, case_stats, case_paired = _time_case(
                    case, specs, warmup=warmup, repeats=repeats, time_budget_s=time_budget_s,
                    interleave=interleave)
                rows += case_rows
                stats[(case.encoder, case.batch)] = case_stats
                paired[(case.encoder, case.batch)] = case_paired
                bar.update(1)
        finally:
            bar.close()
            models.clear()
            gc.collect()
    _add_speedups(rows, stats, paired)
    order = list(specs)
    rows.sort(key=lambda r: (r["encoder"] != "image", r["requested_batch"], order.index(_label(r))))
    if choice is not None:
        for r in rows:
            r["auto_pick"] = choice[r["encoder"]].backend_for(r["requested_batch"])

    config = {"bundle": str(bnd.path), "model": label, "batches": batches, "text_batches": text_batches,
              "backends": list(specs), "warmup": warmup, "repeats": repeats,
              "min_repeats": MIN_REPEATS, "time_budget_s": time_budget_s, "threads": threads,
              "device": device, "template": TEMPLATE, "interleave": interleave, "precisions": precisions,
              "variants": {p: str(v.path) for p, v in variants.items()}, "int8_calib": int8_calib,
              "other_load": other_cpu_load(snap_start, cpu_snapshot()),
              "auto": choice.to_dict() if choice is not None else None}
    how = ("backends timed round-robin within each case (0.1 s settle before each timed call)" if interleave
           else "backends timed one after the other within each case")
    notes = [
        f"{how}; the speedup compares PyTorch eager's time with this backend's at the same encoder and batch "
        f"(>1: faster than torch): {RATIO_NOTE}.",
        f"each case: {warmup} warm-up calls per backend, then up to {repeats} timed calls each, stopping "
        f"once the slowest backend has {time_budget_s:g} s of timed calls (at least {MIN_REPEATS}); times "
        "in ms per call.",
        "image: random normalised pixels; text: prompts 'a photo of a {name}.' with 1–4-word names, "
        "tokens = sequence length after causal truncation (max EOT + 1).",
    ]
    if choice is not None:
        notes.append(_auto_note(rows, choice, device))
    notes += _precision_notes(precisions, variants, rows, device)
    retried = sorted({(r["encoder"], r["requested_batch"], r["batch"]) for r in rows if r.get("oom_retry")})
    if retried:
        notes.append("out of memory: " + ", ".join(f"{e} batch {a} ran at batch {b}" for e, a, b in retried)
                     + " (timed once more at half the batch; oom_retry in the JSON says what failed).")
    add_busy_note(rows, notes, "absolute times are inflated, PyTorch's multi-threaded ones above all; round-robin "
                  "timing shares the slowdown, but ratios can still shift")
    return {"title": f"Encoder latency: {label}", "bench": "encoders", "config": config,
            "columns": _columns(precisions), "rows": rows, "notes": notes, "machine": machine_info(threads)}


def _columns(precisions: Sequence[str]) -> list[str]:
    """The Markdown columns: `COLUMNS`, plus `PRECISION_COLUMNS` when not only fp32 runs (precision after the
    provider, images/s and the ratio to FP32 after the per-item time)."""
    if list(precisions) == [FP32]:
        return list(COLUMNS)
    cols: list[str] = []
    for c in COLUMNS:
        cols.append(c)
        if c == "provider":
            cols.append(PRECISION_COLUMNS[0])
        elif c == "per_item_ms":
            cols += PRECISION_COLUMNS[1:]
    return cols


def _precision_specs(spec_list: Sequence[BackendSpec], precisions: Sequence[str], device: str) -> list[BackendSpec]:
    """The extra backends for `precisions` other than fp32: onnxruntime on the provider edgeclip picks on `device`,
    one per precision, plus that provider's FP32 row (the reference of ``vs_fp32``) when `spec_list` lacks it."""
    others = [p for p in precisions if p != FP32]
    if not others:
        return []
    ort = parse_backend("onnxruntime", device)  # BackendError without onnxruntime
    extra = [] if any(s.label == ort.label for s in spec_list) else [ort]
    if extra:
        log.info("adding %s at fp32: the reference of the %s rows", ort.label, ", ".join(others))
    return extra + [BackendSpec(ort.backend, ort.provider, ort.device, p) for p in others]


def _variant(bnd: B.Bundle, precision: str, cache_dir: str | Path, int8_calib: str) -> B.Bundle:
    """The `precision` variant of `bnd` in `cache_dir`, made once and reused while it verifies."""
    if precision == "int8":
        from edgeclip.bench.precision import int8_variant

        return int8_variant(bnd, cache_dir, int8_calib)
    if precision == "fp16":
        return _fp16_variant(bnd, cache_dir)
    raise InputError(f"no variant for precision {precision!r}")


def _fp16_variant(bnd: B.Bundle, cache_dir: str | Path) -> B.Bundle:
    """The FP16 variant of `bnd` (`convert_bundle_fp16`) in ``cache_dir/<bundle>-fp16`` (`cached_variant`)."""
    from edgeclip.bench.precision import cached_variant
    from edgeclip.export.fp16 import convert_bundle_fp16

    return cached_variant(bnd, cache_dir, "fp16", lambda src, out: convert_bundle_fp16(src, out, overwrite=True))


def _precision_notes(precisions: Sequence[str], variants: dict[str, B.Bundle], rows: Sequence[dict[str, Any]],
                     device: str) -> list[str]:
    """What the precision rows are: how each variant was made, the INT8 text encoder, FP16 on the CPU, and the
    image encoder's INT8 ratio at the largest batch against the ≥ 2× goal."""
    if list(precisions) == [FP32]:
        return []
    notes = ["precision: every precision but fp32 is a variant bundle timed through onnxruntime only (a variant has "
             "no PyTorch tower), round-robin with the FP32 backends on the same inputs; vs_fp32 = FP32 onnxruntime "
             "time on the same provider / this row's (>1: faster than FP32), with its 10th–90th percentiles over "
             "the paired rounds."]
    for p, v in variants.items():
        extra = v.manifest.get("extra", {}).get("variant", {})
        parity = v.manifest.get("parity", {})
        cos = ", ".join(f"{k} {parity[k]:.5f}" for k in ("image_min_cos", "text_min_cos") if k in parity)
        if p == "int8":
            method = extra.get("int8", {}).get("method", "?")
            notes.append(f"int8: `precision.int8_variant` (`quantize_bundle`, {method} calibration) at {v.path}; only "
                         "the image encoder is INT8 — its text encoder is FP32 by design, so the text rows' vs_fp32 "
                         f"says how level the field is, not a quantisation gain; min cosine vs FP32: {cos or '?'}.")
        elif p == "fp16":
            cpu = "" if is_cuda(device) else (
                " On the CPU, onnxruntime FP16 is not a deployment path (the graph is meant for GPU runtimes; the "
                "CPU provider runs many FP16 ops through inserted casts), so these rows are for completeness. The "
                "converter keeps Transpose → MatMul(const) in FP32, which onnxruntime 1.32's CPU optimiser crashes "
                "on in FP16.")
            notes.append(f"fp16: `convert_bundle_fp16` (LayerNorm, Softmax and the final projection in FP32; inputs "
                         f"and outputs float32) at {v.path}; min cosine vs FP32: {cos or '?'}.{cpu}")
    img = [r for r in rows if r["encoder"] == "image" and r.get("precision") == "int8" and r["vs_fp32"] is not None]
    if img:
        big = max(img, key=lambda r: r["requested_batch"])
        verdict = "met" if big["vs_fp32_lo"] >= 2.0 else "missed"
        notes.append(f"image encoder at batch {big['batch']}: INT8 {big['vs_fp32']:.2f}× FP32 "
                     f"[{big['vs_fp32_lo']:.2f}, {big['vs_fp32_hi']:.2f}]; goal ≥ 2× (lower end): {verdict}.")
    return notes


def _image_call(model: EdgeClip, pixels: torch.Tensor) -> Callable[[], Any]:
    enc = model.image_encoder
    return lambda: enc(pixels)


def _text_call(model: EdgeClip, t: _TextInput, device: str) -> Callable[[], Any]:
    enc = model.text_encoder
    embeds, eot = t.token_embeds.to(device), t.eot.to(device)
    return lambda: enc(embeds, eot)


def bench_encoders_for_model(model_name: str, cache_dir: str | Path, **kwargs: Any) -> dict[str, Any]:
    """Bench a random-weight open_clip `model_name`, exported once to `cache_dir/<name>-random.bundle`
    (`random_weight_bundle`: reused while it verifies, else (re-)exported; ViT-B-32: ~40 s and ~600 MB).
    Keyword arguments go to `bench_encoders`. Random weights time the same as trained ones, so no download is
    needed."""
    bundle = random_weight_bundle(model_name, cache_dir, progress=bool(kwargs.get("progress", False)))
    kwargs.setdefault("cache_dir", cache_dir)  # the INT8 / FP16 variants beside the bundle
    return bench_encoders(bundle, **kwargs)
