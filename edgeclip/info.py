"""`edgeclip info`: what a bundle holds, its parity figures, its TensorRT engines and whether each is valid
here, what this machine can run, and which backend ``backend="auto"`` picks for the bundle here (the cached
calibration, or a fresh one on request)."""

from __future__ import annotations

import importlib.util
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from edgeclip.runtime.bundle import MANIFEST, open_bundle
from edgeclip.runtime.engine_cache import list_engines
from edgeclip.runtime.ort_session import PROVIDER_ORDER, available_providers

__all__ = ["auto_choice", "bundle_info", "engine_lines", "info_text", "machine_backends"]


def machine_backends() -> dict[str, Any]:
    """Backends and devices usable here: torch CPU/CUDA, onnxruntime providers, TensorRT, Triton."""
    cuda = torch.cuda.is_available()
    providers = available_providers()
    runnable = ["torch:cpu"] + (["torch:cuda"] if cuda else [])
    runnable += [f"onnxruntime:{p}" for p in PROVIDER_ORDER if p in providers]
    tensorrt = importlib.util.find_spec("tensorrt") is not None
    if cuda and tensorrt:
        runnable.append("tensorrt (with engines from edgeclip engine build)")
    return {
        "cuda": cuda,
        "cuda_device": torch.cuda.get_device_name(0) if cuda else None,
        "onnxruntime_providers": providers,
        "tensorrt": tensorrt,
        "triton": cuda and importlib.util.find_spec("triton") is not None,
        "runnable": runnable,
        "auto": "calibrated per bundle, encoder and batch size" if providers else "torch",
    }


def auto_choice(bundle: Any, device: str = "cpu", threads: int | None = None,
                calibrate: bool = False) -> dict[str, Any] | None:
    """What ``backend="auto"`` picks for an opened bundle on this machine (`BackendChoice.to_dict`): the cached
    calibration, None when there is none yet, or with ``calibrate`` a fresh one (timed now, then cached)."""
    from edgeclip.runtime.backend_choice import read_cached

    if calibrate:
        from edgeclip.runtime.model import EdgeClip

        choice = EdgeClip(bundle, backend="auto", device=device, threads=threads, recalibrate=True).backend_choice
    else:
        choice = read_cached(bundle, device, threads)
    return None if choice is None else choice.to_dict()


def bundle_info(bundle: str | Path | None = None, verify: bool = True, *, calibrate: bool = False,
                device: str = "cpu", threads: int | None = None) -> dict[str, Any]:
    """What `edgeclip info` shows, JSON-ready. The source names a checkpoint by its file name only: the
    exporting machine's folders mean nothing here. ``backend_choice`` is `auto_choice` for ``device`` and
    ``threads`` (with ``calibrate``: timed now)."""
    from edgeclip import default_bundle

    b = open_bundle(bundle if bundle is not None else default_bundle(), verify=verify)
    m, spec = b.manifest, b.spec
    source = {k: v for k, v in m["source"].items() if v is not None}
    if spec.source.checkpoint:
        source["checkpoint"] = spec.source.origin.removeprefix("checkpoint ")
    return {
        "path": str(b.path),
        "verified": verify,
        "manifest_sealed": spec.manifest_sha256 is not None,
        "format_version": spec.format_version,
        "description": spec.description,
        "classes": list(spec.classes) if spec.classes else None,
        "source": source,
        "origin": spec.source.origin,
        "embed_dim": spec.embed_dim,
        "image": m["image"],
        "text": m["text"],
        "logit_scale": spec.logit_scale,
        "precision": m["precision"],
        "parity": m["parity"],
        "files": {k: v.size for k, v in spec.files.items()},
        "total_bytes": sum(v.size for v in spec.files.values()) + (b.path / MANIFEST).stat().st_size,
        "identity": b.identity(),
        "tool_versions": dict(spec.tool_versions),
        "created": spec.created,
        "extra": m.get("extra", {}),
        "heads": bundle_heads(b),
        "engines": [r.to_dict() for r in list_engines(b, verify=verify)],
        "machine": machine_backends(),
        "backend_choice": auto_choice(b, device, threads, calibrate),
    }


def bundle_heads(bundle: Any) -> list[dict[str, Any]]:
    """The heads stored inside the bundle (``<bundle>/heads/*.head.safetensors``): file, method, classes, and
    whether each fits this bundle's encoders (a head whose file cannot be read says why)."""
    from edgeclip.errors import EdgeClipError
    from edgeclip.runtime.head import HEADS_DIR, read_head
    from edgeclip.runtime.identity import check_same_encoders

    out = []
    for path in sorted((bundle.path / HEADS_DIR).glob("*.head.safetensors")):
        try:
            head = read_head(path)
            check_same_encoders(head.bundle, bundle, f"head {path.name}")
            out.append({"file": path.name, "method": head.method, "classes": len(head.class_names), "fits": True})
        except EdgeClipError as exc:
            out.append({"file": path.name, "fits": False, "problem": str(exc)})
    return out


def _value(v: Any) -> str:
    """A manifest value as plain text (no Python reprs): "key value, key value" for objects."""
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, Mapping):
        return ", ".join(f"{k.replace('_', ' ')} {_value(x)}" for k, x in v.items())
    if isinstance(v, (list, tuple)):
        return ", ".join(_value(x) for x in v)
    return str(v)


def _extra_lines(extra: Mapping[str, Any]) -> list[str]:
    lines = []
    for key, value in extra.items():
        label = key.replace("_", " ")
        if key == "zero_shot_accuracy" and isinstance(value, Mapping):
            shifts = {k: v for k, v in value.items() if k not in ("seed", "n") and isinstance(v, float)}
            head = f"zero-shot accuracy on {value.get('n', '?')} held-out images per shift: "
            lines.append(f"{'accuracy':13s} {head}" + ", ".join(f"{k} {100 * v:.1f}%" for k, v in shifts.items()))
        else:
            lines.append(f"{label[:13]:13s} {_value(value)}")
    return lines


def _triple(v: Any) -> str:
    return " ".join(f"{x:.3f}" for x in v)


def info_text(info: dict[str, Any]) -> str:
    """The human-readable form of `bundle_info`'s result."""
    t, im, par, mach = info["text"], info["image"], info["parity"], info["machine"]
    verified = "manifest and file hashes verified" if info["verified"] else "hashes NOT verified"
    if info["verified"] and not info["manifest_sealed"]:
        verified = "file hashes verified; manifest not sealed (older export)"
    lines = [f"bundle        {info['path']}  (format {info['format_version']}, {verified})"]
    if info.get("description"):
        lines.append(f"about         {info['description']}")
    if info.get("classes"):
        names = info["classes"]
        lines.append(f"knows         only these {len(names)} classes: {', '.join(names)}")
    lines += [
        f"model         {info['source'].get('architecture')}, {info['origin']}",
        f"embed dim     {info['embed_dim']}   logit scale {info['logit_scale']:.2f}",
        f"image         {im['image_size']}x{im['image_size']} px, resize {im['resize_mode']} ({im['interpolation']}), "
        f"mean {_triple(im['mean'])}, std {_triple(im['std'])}",
        f"text          context {t['context_length']} tokens, width {t['width']}, "
        f"{'causal (truncated to max EOT + 1)' if t['causal'] else 'bidirectional (always full length)'}, "
        f"pooling {t['pool']}",
        f"precision     compute {info['precision']['compute']}, storage {info['precision']['storage']}",
        f"parity        image min cos {par['image_min_cos']:.7f}, text min cos {par['text_min_cos']:.7f}, "
        f"truncation max abs {par['truncation_max_abs']:.2e}",
        "files         " + ", ".join(f"{k} {v / 1e6:.2f} MB" for k, v in info["files"].items()),
        f"total         {info['total_bytes'] / 1e6:.2f} MB",
    ]
    lines += _extra_lines(info.get("extra") or {})
    for h in info.get("heads") or []:
        what = (f"{h['method']}, {h['classes']} classes" if h["fits"] else f"does not fit: {h['problem']}")
        lines.append(f"head          {h['file']} ({what})")
    lines += engine_lines(info.get("engines") or [])
    versions = info.get("tool_versions") or {}
    if versions:
        made = f"{info['created'][:10]} " if info.get("created") else ""
        lines.append(f"exported      {made}with " + ", ".join(f"{k} {v}" for k, v in versions.items()))
    choice = info.get("backend_choice")
    auto = choice["label"] if choice else mach["auto"]
    lines.append(f"this machine  can run: {', '.join(mach['runnable'])}; auto -> {auto}"
                 + (f"; GPU {mach['cuda_device']}" if mach["cuda"] else "; no CUDA")
                 + (", TensorRT present" if mach["tensorrt"] else ", no TensorRT"))
    lines += _choice_lines(choice)
    return "\n".join(lines)


def engine_lines(engines: list[dict[str, Any]]) -> list[str]:
    """One line per engine record (`EngineRecord.to_dict`), for `edgeclip info` and `edgeclip engine list`."""
    if not engines:
        return ["engines       none (edgeclip engine build --bundle B --precision fp16, on the GPU that runs them)"]
    out = []
    for e in engines:
        state = "valid here" if e["valid"] else "NOT valid here: " + "; ".join(e["problems"])
        out.append(f"engine        {e['file']} ({e['encoder']} {e['precision']}, TensorRT {e['tensorrt']}, "
                   f"{e['gpu']} {e['compute_capability']}, max batch {e['max_batch']}, "
                   f"{e['bytes'] / 1e6:.1f} MB): {state}")
    return out


def _ms_text(v: float | None) -> str:
    return "not timed" if v is None else f"{v:.3g} ms"


def _choice_lines(choice: Mapping[str, Any] | None) -> list[str]:
    """The auto backend's lines: how it was chosen, then per encoder each bucket's winner and medians."""
    if not choice:
        return ["auto backend  not calibrated for this bundle here yet: timed on the first load with backend auto, "
                "or now with --calibrate"]
    if choice["source"] == "single":
        head = "one backend per encoder can run here, nothing to time"
    else:
        load = f", load average {choice['load_avg']:.2f}" if choice.get("load_avg") is not None else ""
        when = str(choice.get("created") or "").replace("T", " ").removesuffix("+00:00")
        head = (f"calibrated {when} UTC in {choice['seconds']:.2f} s{load}"
                + (f"; cached in {choice['path']}" if choice.get("path") else ""))
    lines = [f"auto backend  {choice['label']}: {head}"]
    for enc, unit in (("image", "images"), ("text", "prompts")):
        c = choice[enc]
        if not c["medians_ms"]:
            lines.append(f"auto {enc:8s} {c['winners'][0]} (the only backend that can run it)")
            continue
        parts = []
        for i, (n, win) in enumerate(zip(c["buckets"], c["winners"], strict=True)):
            times = ", ".join(f"{b} {_ms_text(v[i])}" for b, v in c["medians_ms"].items())
            parts.append(f"{n} {unit if n > 1 else unit[:-1]} -> {win} ({times})")
        lines.append(f"auto {enc:8s} " + "; ".join(parts))
    return lines
