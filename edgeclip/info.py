"""`edgeclip info`: what a bundle holds, its parity figures, and what this machine can run."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import torch

from edgeclip.runtime.bundle import open_bundle
from edgeclip.runtime.ort_session import PROVIDER_ORDER, available_providers


def machine_backends() -> dict[str, Any]:
    """Backends and devices usable here: torch CPU/CUDA, onnxruntime providers, TensorRT, Triton."""
    cuda = torch.cuda.is_available()
    providers = available_providers()
    runnable = ["torch:cpu"] + (["torch:cuda"] if cuda else [])
    runnable += [f"onnxruntime:{p}" for p in PROVIDER_ORDER if p in providers]
    return {
        "cuda": cuda,
        "cuda_device": torch.cuda.get_device_name(0) if cuda else None,
        "onnxruntime_providers": providers,
        "tensorrt": importlib.util.find_spec("tensorrt") is not None,
        "triton": cuda and importlib.util.find_spec("triton") is not None,
        "runnable": runnable,
        "auto": "onnxruntime" if providers else "torch",
    }


def bundle_info(bundle: str | Path | None = None, verify: bool = True) -> dict[str, Any]:
    from edgeclip import default_bundle

    b = open_bundle(bundle if bundle is not None else default_bundle(), verify=verify)
    m = b.manifest
    return {
        "path": str(b.path),
        "verified": verify,
        "format_version": m["format_version"],
        "source": m["source"],
        "embed_dim": m["embed_dim"],
        "image": m["image"],
        "text": {k: v for k, v in m["text"].items() if k != "tokenizer"} | {"tokenizer": m["text"]["tokenizer"]},
        "logit_scale": m["logit_scale"],
        "precision": m["precision"],
        "parity": m["parity"],
        "files": {k: v["size"] for k, v in m["files"].items()},
        "total_bytes": sum(v["size"] for v in m["files"].values()) + (b.path / "manifest.json").stat().st_size,
        "tool_versions": m.get("tool_versions", {}),
        "extra": m.get("extra", {}),
        "machine": machine_backends(),
    }


def info_text(info: dict[str, Any]) -> str:
    src = info["source"]
    origin = src.get("pretrained") or src.get("checkpoint") or src.get("weights") or src.get("object")
    t, im, par, mach = info["text"], info["image"], info["parity"], info["machine"]
    lines = [
        f"bundle        {info['path']}  (format {info['format_version']}, "
        f"{'hashes verified' if info['verified'] else 'hashes NOT verified'})",
        f"model         {src.get('architecture')}  weights: {origin}",
        f"embed dim     {info['embed_dim']}   logit scale {info['logit_scale']:.2f}",
        f"image         {im['image_size']}px, resize {im['resize_mode']} ({im['interpolation']}), "
        f"mean {tuple(round(x, 4) for x in im['mean'])}",
        f"text          context {t['context_length']}, width {t['width']}, "
        f"{'causal (truncated to max EOT + 1)' if t['causal'] else 'bidirectional (always full length)'}, "
        f"pooling {t['pool']}",
        f"precision     compute {info['precision']['compute']}, storage {info['precision']['storage']}",
        f"parity        image min cos {par['image_min_cos']:.7f}, text min cos {par['text_min_cos']:.7f}, "
        f"truncation max abs {par['truncation_max_abs']:.2e}",
        "files         " + ", ".join(f"{k} {v / 1e6:.2f} MB" for k, v in info["files"].items()),
        f"total         {info['total_bytes'] / 1e6:.2f} MB",
        f"this machine  can run: {', '.join(mach['runnable'])}; auto -> {mach['auto']}"
        + (f"; GPU {mach['cuda_device']}" if mach["cuda"] else "; no CUDA")
        + (", TensorRT present" if mach["tensorrt"] else ", no TensorRT"),
    ]
    if info.get("extra"):
        for k, v in info["extra"].items():
            lines.append(f"{k:13s} {v}")
    return "\n".join(lines)
