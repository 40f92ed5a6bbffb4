"""TensorRT engines kept with a bundle: optimisation profiles, the key an engine is valid under, the cache.

An engine is a TensorRT plan built for one encoder graph on one GPU model with one TensorRT version; it does
not move between TensorRT versions or GPUs. `edgeclip.export.tensorrt` builds them; the ``tensorrt`` backend
(`edgeclip.runtime.trt_runner`) runs them. This module needs neither TensorRT nor a GPU: it computes profiles,
keys and validity, so all of it is tested on any machine.

Where: ``<bundle>/engines/<encoder>-<precision>-<digest>.plan`` with a JSON sidecar (same stem, ``.json``)
holding the `EngineKey`, the parity figures the build measured and the plan's sha256. A bundle folder that
cannot be written (a packaged bundle in site-packages) keeps them under ``$EDGECLIP_CACHE/engines/<manifest
sha256[:16]>/`` instead; both places are read.

Valid here means: the plan's size and sha256 match its sidecar, the bundle's graph file still has the sha256
the engine was built from, and this machine's TensorRT version, GPU name and compute capability are the
build's. An engine that fails any of these is listed with the reason and never used; `engine build` replaces
it.

Profiles (`profile_for`): one per encoder, batch 1..max with the optimum at `OPT_BATCH` (the batch the
methods use: TPT's 64 views) or at max when max is smaller; a causal text tower's sequence axis runs
1..context with the optimum at the typical truncated length (the longest "a photo of a {class}." of the
bundle's classes, else `TEXT_OPT_TOKENS`); a bidirectional tower always runs its full context.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from edgeclip.errors import BackendError, InputError
from edgeclip.runtime import bundle as B
from edgeclip.runtime.io_spec import EOT_INDEX, MAX_BATCH, PIXELS, TOKEN_EMBEDS

__all__ = [
    "BUILD_PREFERENCE",
    "ENCODER_FILES",
    "OPT_BATCH",
    "ORT_TRT_MAX_BATCH",
    "PRECISIONS",
    "EngineKey",
    "EngineRecord",
    "HostIdentity",
    "Profile",
    "engine_dirs",
    "find_engine",
    "graph_precision",
    "has_valid_engines",
    "host_identity",
    "list_engines",
    "ort_trt_cache_dir",
    "ort_trt_profile_options",
    "pick_engine",
    "profile_for",
    "write_dir",
]

log = logging.getLogger(__name__)

FORMAT = "edgeclip.trt_engine"
FORMAT_VERSION = 1
PRECISIONS = ("fp32", "fp16", "int8")
OPT_BATCH = 64
TEXT_OPT_TOKENS = 16
ENGINES_DIR = "engines"
ENCODER_FILES = {"image": B.IMAGE_ONNX, "text": B.TEXT_ONNX}


# -- profiles -------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Profile:
    """One optimisation profile: per input, its (min, opt, max) shapes."""

    shapes: tuple[tuple[str, tuple[int, ...], tuple[int, ...], tuple[int, ...]], ...]

    @property
    def max_batch(self) -> int:
        return min(s[3][0] for s in self.shapes)

    def to_dict(self) -> dict[str, dict[str, list[int]]]:
        return {name: {"min": list(lo), "opt": list(opt), "max": list(hi)} for name, lo, opt, hi in self.shapes}

    @classmethod
    def from_dict(cls, d: Mapping[str, Mapping[str, Sequence[int]]]) -> Profile:
        return cls(tuple((str(n), tuple(int(x) for x in v["min"]), tuple(int(x) for x in v["opt"]),
                          tuple(int(x) for x in v["max"])) for n, v in d.items()))


def _check_batch(max_batch: int, what: str) -> None:
    if isinstance(max_batch, bool) or not isinstance(max_batch, int) or not 1 <= max_batch <= MAX_BATCH:
        raise InputError(f"{what} must be an integer in 1..{MAX_BATCH}, got {max_batch!r}")


def typical_text_tokens(bundle: B.Bundle) -> int:
    """The longest "a photo of a {class}." of the bundle's own classes in tokens (with start and end), or
    `TEXT_OPT_TOKENS` for a bundle that names no classes; at most the context length."""
    t = bundle.spec.text
    if not bundle.spec.classes:
        return min(TEXT_OPT_TOKENS, t.context_length)
    from edgeclip.runtime.tokenizer import Tokenizer

    _, eot = Tokenizer(t.tokenizer).ids([f"a photo of a {c}." for c in bundle.spec.classes])
    return min(int(eot.max()) + 1, t.context_length)


def profile_for(bundle: B.Bundle, encoder: str, max_batch: int, opt_batch: int = OPT_BATCH) -> Profile:
    """The optimisation profile of one encoder (see the module docstring)."""
    _check_batch(max_batch, "max batch")
    opt = min(opt_batch, max_batch)
    if encoder == "image":
        s = bundle.image_size
        return Profile(((PIXELS.name, (1, 3, s, s), (opt, 3, s, s), (max_batch, 3, s, s)),))
    if encoder != "text":
        raise InputError(f"encoder must be 'image' or 'text', got {encoder!r}")
    t = bundle.spec.text
    lo, mid, hi = (1, typical_text_tokens(bundle), t.context_length) if t.causal else (t.context_length,) * 3
    return Profile(((TOKEN_EMBEDS.name, (1, lo, t.width), (opt, mid, t.width), (max_batch, hi, t.width)),
                    (EOT_INDEX.name, (1,), (opt,), (max_batch,))))


def ort_trt_profile_options(profile: Profile) -> dict[str, str]:
    """onnxruntime's TensorRT EP options for explicit profile shapes (``trt_profile_min_shapes`` ...), so the
    EP builds one engine for the whole range instead of one per new input shape."""
    def fmt(i: int) -> str:
        return ",".join(f"{s[0]}:{'x'.join(str(d) for d in s[i])}" for s in profile.shapes)

    return {"trt_profile_min_shapes": fmt(1), "trt_profile_opt_shapes": fmt(2), "trt_profile_max_shapes": fmt(3)}


# -- what a graph is ------------------------------------------------------------------------------------------
def graph_precision(bundle: B.Bundle, encoder: str) -> str:
    """The precision of the bundle's own graph for ``encoder``: "fp32", "fp16" (an FP16 variant) or "int8"
    (the image graph of an INT8 variant; its text graph stays FP32)."""
    record = bundle.spec.extra.get("variant")
    kind = record.get("kind") if isinstance(record, Mapping) else None
    if kind == "fp16":
        return "fp16"
    if kind == "int8":
        return "int8" if encoder == "image" else "fp32"
    return "fp32"


# -- the machine ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class HostIdentity:
    """What an engine is bound to: the TensorRT version and the GPU (None where absent)."""

    tensorrt: str | None
    gpu: str | None
    compute_capability: str | None


def host_identity() -> HostIdentity:
    """This machine's TensorRT version (None when it cannot be imported) and CUDA GPU 0 (None without CUDA)."""
    import importlib.util

    import torch

    version = None
    if importlib.util.find_spec("tensorrt") is not None:
        try:
            import tensorrt

            version = str(tensorrt.__version__)
        except Exception as exc:  # a broken install raises anything; the engines are then not usable
            log.warning("tensorrt is present but cannot be imported: %s", exc)
    if torch.cuda.is_available():
        major, minor = torch.cuda.get_device_capability(0)
        return HostIdentity(version, torch.cuda.get_device_name(0), f"{major}.{minor}")
    return HostIdentity(version, None, None)


# -- keys and records -----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class EngineKey:
    """Everything an engine depends on. ``precision`` is the engine's (the graph's) precision; ``build`` the
    precision asked of `engine build` (an INT8 build keeps the text encoder in FP32)."""

    encoder: str
    precision: str
    build: str
    bundle_file: str  # the bundle's graph the engine was made from
    bundle_file_sha256: str
    parsed_sha256: str  # the graph TensorRT parsed (differs when an FP16 graph was made on the fly)
    tensorrt: str
    gpu: str
    compute_capability: str
    profile: dict[str, dict[str, list[int]]]
    tf32: bool = False

    def digest(self) -> str:
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True, separators=(",", ":")).encode()).hexdigest()

    @property
    def stem(self) -> str:
        return f"{self.encoder}-{self.precision}-{self.digest()[:16]}"

    @property
    def max_batch(self) -> int:
        return Profile.from_dict(self.profile).max_batch


@dataclass(frozen=True)
class EngineRecord:
    """An engine found next to a bundle: its plan file, key, build figures, and whether it is valid here."""

    path: Path
    key: EngineKey
    parity: dict[str, float]
    built: str
    build_seconds: float
    plan_sha256: str
    plan_bytes: int
    problems: tuple[str, ...] = ()

    @property
    def valid(self) -> bool:
        return not self.problems

    def to_dict(self) -> dict[str, Any]:
        return {"file": self.path.name, "folder": str(self.path.parent), "encoder": self.key.encoder,
                "precision": self.key.precision, "build": self.key.build, "tensorrt": self.key.tensorrt,
                "gpu": self.key.gpu, "compute_capability": self.key.compute_capability,
                "max_batch": self.key.max_batch, "profile": self.key.profile, "parity": self.parity,
                "built": self.built, "build_seconds": self.build_seconds, "bytes": self.plan_bytes,
                "valid": self.valid, "problems": list(self.problems)}


def sidecar_payload(key: EngineKey, parity: Mapping[str, float], built: str, build_seconds: float,
                    plan_sha256: str, plan_bytes: int) -> dict[str, Any]:
    """The JSON written beside a plan."""
    return {"format": FORMAT, "version": FORMAT_VERSION, "key": asdict(key), "parity": dict(parity),
            "built": built, "build_seconds": build_seconds, "plan_sha256": plan_sha256, "plan_bytes": plan_bytes}


def _plan_sha256(plan: Path) -> str:
    """The plan file's sha256, hashed once per file version in this process (a plan is hundreds of MB, and a
    load lists the engines several times: the auto candidates, then each encoder's pick)."""
    st = plan.stat()
    return _sha256_of(str(plan.resolve()), st.st_size, st.st_mtime_ns)


@functools.lru_cache(maxsize=64)
def _sha256_of(path: str, size: int, mtime_ns: int) -> str:
    return B.sha256_file(Path(path))


def _problems(bundle: B.Bundle, key: EngineKey, plan: Path, plan_sha256: str, plan_bytes: int,
              here: HostIdentity, verify: bool) -> list[str]:
    out: list[str] = []
    if not plan.is_file():
        return [f"{plan.name} is missing"]
    if plan.stat().st_size != plan_bytes or (verify and _plan_sha256(plan) != plan_sha256):
        out.append(f"{plan.name} does not match its record (corrupt or replaced)")
    entry = bundle.spec.files.get(key.bundle_file)
    if entry is None:
        out.append(f"the bundle has no {key.bundle_file} any more")
    elif entry.sha256 != key.bundle_file_sha256:
        out.append(f"{key.bundle_file} changed since the build (sha256 {entry.sha256[:12]}, engine built from "
                   f"{key.bundle_file_sha256[:12]})")
    if here.tensorrt is None:
        out.append(f"built with TensorRT {key.tensorrt}; TensorRT is not installed here")
    elif here.tensorrt != key.tensorrt:
        out.append(f"built with TensorRT {key.tensorrt}; this machine has {here.tensorrt}")
    if here.gpu is None:
        out.append(f"built for {key.gpu} (compute {key.compute_capability}); no CUDA GPU here")
    elif (here.gpu, here.compute_capability) != (key.gpu, key.compute_capability):
        out.append(f"built for {key.gpu} (compute {key.compute_capability}); this GPU is {here.gpu} "
                   f"(compute {here.compute_capability})")
    return out


def read_record(bundle: B.Bundle, sidecar: Path, here: HostIdentity, verify: bool = True) -> EngineRecord | None:
    """The record of one sidecar, validity checked; None (logged) when it is not an edgeclip engine record."""
    try:
        data = json.loads(sidecar.read_text(encoding="utf-8"))
        if not isinstance(data, Mapping) or data.get("format") != FORMAT:
            raise ValueError("not an edgeclip engine record")
        key = EngineKey(**data["key"])
        plan = sidecar.with_suffix(".plan")
        rec = EngineRecord(plan, key, {k: float(v) for k, v in dict(data["parity"]).items()}, str(data["built"]),
                           float(data["build_seconds"]), str(data["plan_sha256"]), int(data["plan_bytes"]))
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError) as exc:
        log.warning("ignoring engine record %s: %s", sidecar, exc)
        return None
    problems = _problems(bundle, key, rec.path, rec.plan_sha256, rec.plan_bytes, here, verify)
    return EngineRecord(rec.path, key, rec.parity, rec.built, rec.build_seconds, rec.plan_sha256,
                        rec.plan_bytes, tuple(problems))


# -- where ----------------------------------------------------------------------------------------------------
def _user_dir(bundle: B.Bundle) -> Path:
    from edgeclip.cache_paths import cache_root

    return cache_root() / ENGINES_DIR / bundle.identity()["manifest_sha256"][:16]


def engine_dirs(bundle: B.Bundle) -> list[Path]:
    """The folders engines of ``bundle`` are read from: ``<bundle>/engines``, then the user cache's."""
    return [bundle.path / ENGINES_DIR, _user_dir(bundle)]


def write_dir(bundle: B.Bundle) -> Path:
    """Where new engines go: ``<bundle>/engines`` when the bundle folder is writable, else the user cache."""
    inside = bundle.path / ENGINES_DIR
    if os.access(inside if inside.is_dir() else bundle.path, os.W_OK):
        return inside
    out = _user_dir(bundle)
    log.info("bundle %s is not writable: engines go to %s", bundle.path, out)
    return out


def list_engines(bundle: B.Bundle, here: HostIdentity | None = None, verify: bool = True) -> list[EngineRecord]:
    """Every engine record next to ``bundle`` (both folders), each checked against this machine."""
    here = host_identity() if here is None else here
    out = []
    for folder in engine_dirs(bundle):
        for sidecar in sorted(folder.glob("*.json")) if folder.is_dir() else []:
            rec = read_record(bundle, sidecar, here, verify)
            if rec is not None:
                out.append(rec)
    return out


def find_engine(bundle: B.Bundle, encoder: str, precision: str, here: HostIdentity | None = None,
                verify: bool = True, profile: Profile | None = None) -> EngineRecord | None:
    """A valid engine of ``encoder`` at ``precision`` (the engine's own precision), or None. With ``profile``
    only one built for exactly that profile; without, the one with the largest max batch."""
    found = [r for r in list_engines(bundle, here, verify) if r.valid and r.key.encoder == encoder
             and r.key.precision == precision and (profile is None or r.key.profile == profile.to_dict())]
    return max(found, key=lambda r: (r.key.max_batch, r.built)) if found else None


#: The batch bounds of the profiles given to onnxruntime's TensorRT EP (larger batches make it rebuild).
ORT_TRT_MAX_BATCH = {"image": 256, "text": 1024}
#: Which engine ``backend="tensorrt"`` takes when no precision is asked: the lowest built (each passed its gate).
BUILD_PREFERENCE = ("int8", "fp16", "fp32")


def pick_engine(bundle: B.Bundle, encoder: str, build: str | None = None,
                here: HostIdentity | None = None) -> EngineRecord:
    """The engine ``backend="tensorrt"`` runs for ``encoder``: a valid one built at ``build`` (the precision
    asked of `engine build`; None: the first of `BUILD_PREFERENCE` present), the largest max batch first. A
    `BackendError` says how to build one, and why the engines present cannot run, when there is none."""
    records = [r for r in list_engines(bundle, here) if r.key.encoder == encoder]
    valid = [r for r in records if r.valid and (build is None or r.key.build == build)]
    if not valid:
        why = "; ".join(f"{r.path.name}: {', '.join(r.problems) or 'another precision'}" for r in records)
        raise BackendError(
            f"no valid TensorRT {encoder} engine{f' built at {build}' if build else ''} for {bundle.path} on this "
            f"machine{f' ({why})' if why else ''}; build one: edgeclip engine build --bundle {bundle.path} "
            f"--precision {build or 'fp16'}")
    return min(valid, key=lambda r: (BUILD_PREFERENCE.index(r.key.build), -r.key.max_batch, r.path.name))


def has_valid_engines(bundle: B.Bundle, encoder: str, here: HostIdentity | None = None) -> bool:
    """Whether ``backend="tensorrt"`` could run ``encoder`` here (TensorRT, a GPU and a valid engine)."""
    here = host_identity() if here is None else here
    if here.tensorrt is None or here.gpu is None:
        return False
    return any(r.valid and r.key.encoder == encoder for r in list_engines(bundle, here))


def ort_trt_cache_dir(bundle: B.Bundle) -> Path:
    """The engine and timing cache folder of onnxruntime's TensorRT EP for ``bundle`` on this machine:
    ``<engines dir>/ort_trt/<onnxruntime version>-<TensorRT version>-<GPU>-<compute capability>``, so a
    change of any of them starts a fresh cache (the EP itself does not check the GPU)."""
    import re

    import onnxruntime

    here = host_identity()
    parts = [onnxruntime.__version__, here.tensorrt or "trt-unknown", here.gpu or "nogpu",
             here.compute_capability or "0"]
    return write_dir(bundle) / "ort_trt" / re.sub(r"[^A-Za-z0-9._-]+", "_", "-".join(parts))[:120]
