"""`backend="auto"`: pick the faster backend per encoder and batch size from a short measured calibration.

For each encoder (image, text) every backend that can run here ("torch": the image side needs the bundle's
``image_tower.safetensors``; "onnxruntime": the package, and a GPU provider on CUDA; "tensorrt" on CUDA: a
valid engine of that encoder built by `edgeclip engine build`, see `edgeclip.runtime.engine_cache`) is timed
at a few batch sizes, the *buckets*:

- image: `IMAGE_BUCKETS` = 1, 8, 64 images (one frame; a small batch; a TPT-size batch of views);
- text: `TEXT_BUCKETS` = 1, 16, 128 prompts (one prompt; a small and a large class list) of `TEXT_TOKENS`
  tokens each (a causal tower; a bidirectional one runs its full context length).

Per bucket: one warm-up call per backend, then rounds of one timed call per backend (round-robin, so a load
spike from elsewhere hits every backend), until `REPEATS` rounds are done or the slowest backend's timed calls
reach the bucket's share of `ENCODER_BUDGET_S` (at least `MIN_REPEATS` rounds, or one when every backend's
call is longer than the share, or when the warm-up and the timed calls both find one backend `CLEAR_RATIO`
times faster); the median is kept. A call shorter than `SETTLE_BELOW_S` is preceded by an untimed call of
the same backend: the other library's worker threads may still be spinning from its last call. Buckets are
timed small to large; one whose estimated cost would take the encoder past `MAX_ENCODER_S` is not timed and
takes the winner of the largest bucket timed. Measured on 2 CPU cores beside other work: the embedded micro
bundle 1.3 s with 1 thread, 4.5 s with 2 (PyTorch's threads stall when the cores are busy); a ViT-B-32 27 s
with 2 threads (its batch-64 image bucket left out by the cap). Idle, the micro bundle's timing should take
under a second. Building the torch image tower adds open_clip's import the first time in a process. On CUDA
the device is synchronised before every clock read. A calibration made while the machine was busy is biased:
the load average is recorded with it, and `edgeclip info --calibrate` (or ``EdgeClip(..., recalibrate=True)``)
times it again.

A bucket's winner is the backend with the lowest median, except that the preferred backend (`PREFERENCE`:
tensorrt, then onnxruntime, the deployment paths) keeps the bucket unless another is more than `TIE_MARGIN`
faster: near-ties do not flip between runs or cost a second copy of the weights.

The result is cached as JSON under ``$EDGECLIP_CACHE/backends/`` (default ``~/.cache/edgeclip/backends/``),
keyed by the machine (architecture, CPU model, instruction-set flags, device, GPU name on CUDA), the thread
counts, the torch and onnxruntime versions and providers, the bundle's identity (manifest and file sha256)
and the calibration's own settings. A cache file that cannot be read, or that holds another key, is logged,
ignored and rewritten.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import logging
import math
import os
import platform
import statistics
import tempfile
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

from edgeclip.cache_paths import cache_root
from edgeclip.errors import BackendError, EdgeClipError
from edgeclip.runtime import bundle as B
from edgeclip.runtime.encoders import nearest_bucket
from edgeclip.runtime.ort_session import CPU_EP, CUDA_EP, TRT_EP, available_providers

__all__ = [
    "ENCODERS",
    "IMAGE_BUCKETS",
    "TEXT_BUCKETS",
    "BackendChoice",
    "EncoderChoice",
    "cache_dir",
    "cache_key",
    "cache_path",
    "cache_root",
    "calibrate_encoder",
    "candidate_backends",
    "choose_backends",
    "pick_winners",
    "read_cached",
]

log = logging.getLogger(__name__)

FORMAT = "edgeclip.backend_choice"
FORMAT_VERSION = 1
ENCODERS = ("image", "text")
IMAGE_BUCKETS: tuple[int, ...] = (1, 8, 64)
TEXT_BUCKETS: tuple[int, ...] = (1, 16, 128)
TEXT_TOKENS = 16  # tokens per calibration prompt of a causal tower ("a photo of a ..." plus a few words)
REPEATS = 5  # the most rounds (one timed call per backend) per bucket
MIN_REPEATS = 3  # the fewest, unless every backend's call is longer than the bucket's share of the budget
ENCODER_BUDGET_S = 1.0  # timed seconds per encoder, shared by its buckets and backends
SETTLE_BELOW_S = 0.02  # a call shorter than this is preceded by an untimed call of the same backend
CLEAR_RATIO = 2.0  # a backend this much slower in the warm-up and the timed calls: the bucket needs no more rounds
MAX_ENCODER_S = 20.0  # a bucket that would take an encoder's calibration past this is not timed
TIE_MARGIN = 0.05  # another backend must be this much faster than the preferred one to win a bucket
PREFERENCE = ("tensorrt", "onnxruntime", "torch")

_LOCK = threading.Lock()  # one calibration at a time in this process (they would time each other)

Clock = Callable[[], float]
Build = Callable[[str, str], Any]  # (encoder, backend) -> encoder object


# -- where ----------------------------------------------------------------------------------------------------
def cache_dir() -> Path:
    """``$EDGECLIP_CACHE/backends`` (default ``~/.cache/edgeclip/backends``)."""
    return cache_root() / "backends"


# -- what can run -----------------------------------------------------------------------------------------------
def candidate_backends(bundle: B.Bundle, device: str) -> dict[str, list[str]]:
    """The backends each encoder can run on here, in `PREFERENCE` order: ``{"image": [...], "text": [...]}``."""
    providers = set(available_providers())
    gpu = torch.device(device).type == "cuda"
    ort = bool(providers & {TRT_EP, CUDA_EP}) if gpu else CPU_EP in providers
    image = (["onnxruntime"] if ort else []) + (["torch"] if bundle.has(B.IMAGE_TOWER) else [])
    text = (["onnxruntime"] if ort else []) + ["torch"]
    if gpu:
        from edgeclip.runtime.engine_cache import has_valid_engines

        image = (["tensorrt"] if has_valid_engines(bundle, "image") else []) + image
        text = (["tensorrt"] if has_valid_engines(bundle, "text") else []) + text
    return {"image": image, "text": text}


# -- the key --------------------------------------------------------------------------------------------------
def _machine(device: torch.device) -> dict[str, Any]:
    from edgeclip.kernels.cpu_info import cpu_model, isa_signature, simd_flags

    gpu = None
    if device.type == "cuda":
        gpu = {"name": torch.cuda.get_device_name(device), "cuda": torch.version.cuda}
    return {"arch": platform.machine(), "cpu": cpu_model(), "simd": simd_flags(), "isa": isa_signature(),
            "cpu_count": os.cpu_count(), "device": device.type, "gpu": gpu}


def _ort_version() -> str | None:
    try:
        import onnxruntime
    except ImportError:
        return None
    return str(onnxruntime.__version__)


def cache_key(bundle: B.Bundle, device: str = "cpu", threads: int | None = None,
              candidates: Mapping[str, Sequence[str]] | None = None) -> dict[str, Any]:
    """Everything a calibration depends on, JSON-ready. ``threads`` is what the model was asked for (None:
    the libraries' defaults); the effective PyTorch thread count is recorded beside it."""
    dev = torch.device(device)
    cands = candidate_backends(bundle, device) if candidates is None else candidates
    ident = bundle.identity()
    return {
        "format": FORMAT, "version": FORMAT_VERSION,
        "machine": _machine(dev),
        "threads": threads, "torch_threads": threads if threads is not None else torch.get_num_threads(),
        "versions": {"torch": torch.__version__, "onnxruntime": _ort_version()},
        "providers": available_providers(),
        "bundle": {"manifest_sha256": ident["manifest_sha256"], "files": ident["files"]},
        "candidates": {k: list(v) for k, v in cands.items()},
        "calibration": {"image_buckets": list(IMAGE_BUCKETS), "text_buckets": list(TEXT_BUCKETS),
                        "text_tokens": TEXT_TOKENS, "tie_margin": TIE_MARGIN},
    }


def key_digest(key: Mapping[str, Any]) -> str:
    """The sha256 of the key's canonical JSON."""
    return hashlib.sha256(json.dumps(key, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def cache_path(bundle: B.Bundle, key: Mapping[str, Any]) -> Path:
    """``cache_dir()/<architecture>-<key digest>.json``."""
    arch = "".join(c if c.isalnum() or c in "-_." else "_" for c in str(bundle.spec.source.architecture or "bundle"))
    return cache_dir() / f"{arch[:48]}-{key_digest(key)[:20]}.json"


# -- the result -----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class EncoderChoice:
    """The backend one encoder uses at each bucket, with the medians measured (ms per call; None: not timed)."""

    encoder: str  # "image" | "text"
    buckets: tuple[int, ...]
    winners: tuple[str, ...]  # the backend of each bucket
    candidates: tuple[str, ...]  # the backends that could run
    medians_ms: dict[str, tuple[float | None, ...]] = field(default_factory=dict)  # backend -> per bucket

    @property
    def backends(self) -> tuple[str, ...]:
        """The distinct winners, in bucket order."""
        return tuple(dict.fromkeys(self.winners))

    @property
    def measured(self) -> bool:
        return bool(self.medians_ms)

    def backend_for(self, batch: int) -> str:
        """The winner of the bucket nearest to ``batch`` (`nearest_bucket`)."""
        return self.winners[self.buckets.index(nearest_bucket(batch, self.buckets))]

    @property
    def label(self) -> str:
        """``"torch"``, or per bucket when the winners differ: ``"onnxruntime@1,8/torch@64"``."""
        if len(self.backends) == 1:
            return self.backends[0]
        return "/".join(f"{b}@{','.join(str(n) for n, w in zip(self.buckets, self.winners, strict=True) if w == b)}"
                        for b in self.backends)

    def to_dict(self) -> dict[str, Any]:
        return {"buckets": list(self.buckets), "winners": list(self.winners), "candidates": list(self.candidates),
                "medians_ms": {k: list(v) for k, v in self.medians_ms.items()}}

    @classmethod
    def from_dict(cls, encoder: str, d: Mapping[str, Any], buckets: Sequence[int],
                  candidates: Sequence[str]) -> EncoderChoice:
        """Read `to_dict`'s form back; ValueError unless it fits ``buckets`` and ``candidates`` (the backends
        that could run; the ones recorded may be fewer, when one failed to build)."""
        if not isinstance(d, Mapping):
            raise ValueError(f"{encoder}: not an object")
        got_buckets = tuple(int(n) for n in d["buckets"])
        winners = tuple(str(w) for w in d["winners"])
        if got_buckets != tuple(buckets) or len(winners) != len(buckets):
            raise ValueError(f"{encoder}: buckets {list(got_buckets)} are not {list(buckets)}")
        ran = tuple(str(c) for c in d["candidates"])
        if not ran or not set(ran) <= set(candidates) or not set(winners) <= set(ran):
            raise ValueError(f"{encoder}: backends {sorted(set(winners))} are not among {list(candidates)}")
        medians: dict[str, tuple[float | None, ...]] = {}
        for name, values in dict(d.get("medians_ms") or {}).items():
            vals = tuple(None if v is None else float(v) for v in values)
            if name not in ran or len(vals) != len(buckets) or any(
                    v is not None and not (math.isfinite(v) and v > 0) for v in vals):
                raise ValueError(f"{encoder}: bad medians for {name!r}")
            medians[name] = vals
        return cls(encoder, got_buckets, winners, ran, medians)


@dataclass(frozen=True)
class BackendChoice:
    """What ``backend="auto"`` chose for a bundle on this machine: an `EncoderChoice` per encoder.

    ``source``: "calibrated" (timed just now), "cache" (read from ``path``) or "single" (each encoder had one
    backend that could run, so nothing was timed). ``seconds``: how long the calibration took; ``load_avg``:
    the machine's 1-minute load average when it started (None where the OS does not say).
    """

    image: EncoderChoice
    text: EncoderChoice
    source: str
    seconds: float
    created: str
    key_digest: str
    path: str | None = None
    load_avg: float | None = None

    def __getitem__(self, encoder: str) -> EncoderChoice:
        return {"image": self.image, "text": self.text}[encoder]

    @property
    def label(self) -> str:
        """``"torch"`` or ``"onnxruntime"`` when both encoders use only that backend, else
        ``"auto(image=..., text=...)"`` with each encoder's `EncoderChoice.label`."""
        if self.image.label == self.text.label and len(self.image.backends) == 1:
            return self.image.label
        return f"auto(image={self.image.label}, text={self.text.label})"

    def to_dict(self) -> dict[str, Any]:
        return {"label": self.label, "source": self.source, "seconds": round(self.seconds, 4),
                "created": self.created, "load_avg": self.load_avg, "key_digest": self.key_digest, "path": self.path,
                "image": self.image.to_dict(), "text": self.text.to_dict()}


# -- timing ---------------------------------------------------------------------------------------------------
def pick_winners(medians_ms: Mapping[str, Sequence[float | None]], n_buckets: int,
                 preference: Sequence[str] = PREFERENCE, margin: float = TIE_MARGIN) -> tuple[str, ...]:
    """Per bucket, the backend with the lowest median; the most preferred backend timed there keeps the bucket
    unless the fastest is more than ``margin`` faster. A bucket nobody timed takes the previous bucket's winner
    (buckets are timed small to large)."""
    order = sorted(medians_ms, key=lambda b: preference.index(b) if b in preference else len(preference))
    winners: list[str] = []
    for i in range(n_buckets):
        timed: dict[str, float] = {b: v for b in order if (v := medians_ms[b][i]) is not None}
        if not timed:
            if not winners:
                raise ValueError("the smallest bucket was not timed on any backend")
            winners.append(winners[-1])
            continue
        best = min(timed, key=timed.__getitem__)
        first = next(iter(timed))
        keep = timed[best] >= (1.0 - margin) * timed[first]
        winners.append(first if keep else best)
    return tuple(winners)


def _timed(fn: Callable[[], Any], sync: Callable[[], Any] | None, clock: Clock) -> float:
    if sync is not None:
        sync()
    t0 = clock()
    fn()
    if sync is not None:
        sync()
    return clock() - t0


def _round_robin(fns: Mapping[str, Callable[[], Any]], share_s: float, sync: Callable[[], Any] | None,
                 clock: Clock) -> dict[str, float]:
    """One warm-up call of each, then rounds of one timed call of each (see the module docstring); the median
    of each in seconds."""
    warm = {b: _timed(fn, sync, clock) for b, fn in fns.items()}
    last = dict(warm)
    everyone_slow = min(warm.values()) >= share_s
    samples: dict[str, list[float]] = {b: [] for b in fns}
    rounds = 0
    while rounds < REPEATS:
        for b, fn in fns.items():
            if last[b] < SETTLE_BELOW_S and len(fns) > 1:
                _timed(fn, sync, clock)  # untimed: the other library's threads may still be spinning
            last[b] = _timed(fn, sync, clock)
            samples[b].append(last[b])
        rounds += 1
        medians = {b: statistics.median(v) for b, v in samples.items()}
        if max(sum(v) for v in samples.values()) >= share_s and (
                rounds >= MIN_REPEATS or everyone_slow or _clear(medians, warm)):
            break
    return {b: statistics.median(v) for b, v in samples.items()}


def _clear(medians: Mapping[str, float], warm: Mapping[str, float]) -> bool:
    """Whether the timed medians and the warm-up calls agree on one backend, each by at least `CLEAR_RATIO`."""
    if len(medians) < 2:
        return True
    best = min(medians, key=lambda b: medians[b])
    others = [b for b in medians if b != best]
    return all(medians[b] >= CLEAR_RATIO * medians[best] and warm[b] >= CLEAR_RATIO * warm[best] for b in others)


def calibrate_encoder(
    encoder: str,
    encoders: Mapping[str, Callable[..., Any]],
    make_inputs: Callable[[int], tuple[Any, ...]],
    buckets: Sequence[int],
    *,
    sync: Callable[[], Any] | None = None,
    budget_s: float = ENCODER_BUDGET_S,
    max_s: float = MAX_ENCODER_S,
    clock: Clock = time.perf_counter,
) -> EncoderChoice:
    """Time ``encoders`` (backend -> callable) on ``make_inputs(batch)`` at every bucket; the choice.

    Inputs are built once per bucket and shared by the backends, which are timed round-robin (a load spike hits
    all of them); their order alternates from one bucket to the next. ``clock`` (seconds) and ``sync`` (called
    around every clock read) are injectable.
    """
    names = list(encoders)
    share = budget_s / (len(buckets) * len(names))
    medians: dict[str, list[float | None]] = {b: [None] * len(buckets) for b in names}
    start = clock()
    per_item: float | None = None  # seconds per item of one call on every backend, at the last bucket timed
    with torch.no_grad():
        for i, n in enumerate(buckets):
            if per_item is not None and clock() - start + 2 * per_item * n > max_s:  # a warm-up and one round
                log.info("%s encoder: bucket %d not timed (it would take the calibration past %.0f s)",
                         encoder, n, max_s)
                continue
            inputs = make_inputs(n)
            order = names if i % 2 == 0 else names[::-1]
            timed = _round_robin({b: functools.partial(encoders[b], *inputs) for b in order}, share, sync, clock)
            for b, seconds in timed.items():
                medians[b][i] = 1e3 * seconds
            per_item = sum(timed.values()) / n
    choice = EncoderChoice(encoder, tuple(buckets), pick_winners(medians, len(buckets)), tuple(names),
                           {b: tuple(v) for b, v in medians.items()})
    log.info("%s encoder: %s (medians ms %s)", encoder, choice.label,
             {b: [None if v is None else round(v, 3) for v in vals] for b, vals in medians.items()})
    return choice


def _image_inputs(bundle: B.Bundle, device: torch.device) -> Callable[[int], tuple[Any, ...]]:
    size = bundle.image_size

    def make(n: int) -> tuple[Any, ...]:
        g = torch.Generator().manual_seed(n)
        return (torch.randn(n, 3, size, size, generator=g).to(device),)  # (B, 3, S, S), "normalised"

    return make


def _text_inputs(bundle: B.Bundle, device: torch.device) -> Callable[[int], tuple[Any, ...]]:
    t = bundle.spec.text
    length = min(TEXT_TOKENS, t.context_length) if t.causal else t.context_length

    def make(n: int) -> tuple[Any, ...]:
        g = torch.Generator().manual_seed(n)
        embeds = 0.02 * torch.randn(n, length, t.width, generator=g)  # (N, L, W) token embeddings
        eot = torch.full((n,), length - 1, dtype=torch.int64)  # (N,)
        return embeds.to(device), eot.to(device)

    return make


def _load_avg() -> float | None:
    try:
        return round(os.getloadavg()[0], 2)
    except (OSError, AttributeError):
        return None


# -- the cache ------------------------------------------------------------------------------------------------
def _parse(data: Any, key: Mapping[str, Any], path: Path) -> BackendChoice:
    if not isinstance(data, Mapping) or data.get("format") != FORMAT:
        raise ValueError("not an edgeclip backend calibration")
    if data.get("key") != key:
        raise ValueError("made for another machine, bundle, thread count or library version")
    cal, cands = key["calibration"], key["candidates"]
    enc = {e: EncoderChoice.from_dict(e, data["choice"][e], cal[f"{e}_buckets"], cands[e]) for e in ENCODERS}
    load = data.get("load_avg")
    return BackendChoice(enc["image"], enc["text"], "cache", float(data["seconds"]), str(data["created"]),
                         key_digest(key), str(path), None if load is None else float(load))


def read_cached(bundle: B.Bundle, device: str = "cpu", threads: int | None = None) -> BackendChoice | None:
    """The cached calibration of ``bundle`` on this machine, device and thread count, or None (logged when a
    file is there but cannot be used)."""
    key = cache_key(bundle, device, threads)
    return _read(cache_path(bundle, key), key)


def _read(path: Path, key: Mapping[str, Any]) -> BackendChoice | None:
    if not path.is_file():
        return None
    try:
        return _parse(json.loads(path.read_text(encoding="utf-8")), key, path)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, ValueError, KeyError, TypeError) as exc:
        log.warning("ignoring backend calibration cache %s (%s); it will be calibrated again and rewritten",
                    path, exc)
        return None


def _write(path: Path, key: Mapping[str, Any], choice: BackendChoice) -> None:
    """Write atomically (temp file + os.replace); a cache that cannot be written is logged, not raised."""
    payload = {"format": FORMAT, "key": key, "seconds": choice.seconds, "created": choice.created,
               "load_avg": choice.load_avg,
               "choice": {e: choice[e].to_dict() for e in ENCODERS}}
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(payload, f, indent=1)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        log.warning("could not write backend calibration cache %s: %s", path, exc)
        if tmp is not None:
            with contextlib.suppress(OSError):
                os.unlink(tmp)


# -- the whole choice -----------------------------------------------------------------------------------------
def choose_backends(bundle: B.Bundle, device: str, threads: int | None, build: Build, *,
                    recalibrate: bool = False) -> tuple[BackendChoice, dict[tuple[str, str], Any]]:
    """The choice for ``bundle`` here: the cached one when it fits (unless ``recalibrate``), else a fresh
    calibration (cached). ``build(encoder, backend)`` makes an encoder; the ones built for the calibration are
    returned too, keyed by (encoder, backend), so the caller need not build them again. A backend whose encoder
    cannot be built (an `EdgeClipError`) is left out, logged."""
    dev = torch.device(device)
    candidates = candidate_backends(bundle, device)
    for enc in ENCODERS:
        if not candidates[enc]:
            raise BackendError(
                f"no backend can run the {enc} encoder of {bundle.path}: it has no {B.IMAGE_TOWER} for torch and "
                "onnxruntime is not installed (or has no provider for this device); pip install 'edgeclip[cpu]' "
                "(or 'edgeclip[gpu]'), or re-export the bundle with the image tower")
    key = cache_key(bundle, device, threads, candidates)
    path = cache_path(bundle, key)
    with _LOCK:
        if not recalibrate and (cached := _read(path, key)) is not None:
            return cached, {}
        built: dict[tuple[str, str], Any] = {}
        load = _load_avg()
        start = time.perf_counter()
        choices: dict[str, EncoderChoice] = {}
        sync = (lambda: torch.cuda.synchronize(dev)) if dev.type == "cuda" else None
        inputs = {"image": _image_inputs(bundle, dev), "text": _text_inputs(bundle, dev)}
        buckets = {"image": IMAGE_BUCKETS, "text": TEXT_BUCKETS}
        for enc in ENCODERS:
            names = list(candidates[enc])
            if len(names) > 1:
                for b in list(names):
                    try:
                        built[(enc, b)] = build(enc, b)
                    except EdgeClipError as exc:
                        log.warning("backend auto: %s encoder cannot run on %s: %s", enc, b, exc)
                        names.remove(b)
                if not names:
                    raise BackendError(f"no backend could build the {enc} encoder of {bundle.path}; see the log")
            if len(names) == 1:
                choices[enc] = EncoderChoice(enc, buckets[enc], (names[0],) * len(buckets[enc]), tuple(names))
            else:
                choices[enc] = calibrate_encoder(enc, {b: built[(enc, b)] for b in names}, inputs[enc],
                                                 buckets[enc], sync=sync)
        measured = any(c.measured for c in choices.values())
        choice = BackendChoice(choices["image"], choices["text"], "calibrated" if measured else "single",
                               time.perf_counter() - start, datetime.now(timezone.utc).isoformat(timespec="seconds"),
                               key_digest(key), str(path) if measured else None, load)
        if measured:
            _write(path, key, choice)
            log.info("backend auto: calibrated %s in %.2f s -> %s (cached in %s)", bundle.path, choice.seconds,
                     choice.label, path)
        return choice, built
