"""onnxruntime sessions: provider choice (TensorRT EP -> CUDA EP -> CPU), threads, engine cache."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from edgeclip.errors import BackendError

log = logging.getLogger(__name__)

TRT_EP = "TensorrtExecutionProvider"
CUDA_EP = "CUDAExecutionProvider"
CPU_EP = "CPUExecutionProvider"
PROVIDER_ORDER = (TRT_EP, CUDA_EP, CPU_EP)


def import_ort() -> Any:
    try:
        import onnxruntime as ort
    except ImportError as exc:
        raise BackendError(
            "onnxruntime is not installed: pip install 'edgeclip[cpu]' (or 'edgeclip[gpu]' on NVIDIA; "
            "never both)"
        ) from exc
    return ort


def available_providers() -> list[str]:
    try:
        ort = import_ort()
    except BackendError:
        return []
    return list(ort.get_available_providers())


def choose_providers(device: str, engine_cache: Path | None = None,
                     trt_profile: Mapping[str, str] | None = None) -> list[Any]:
    """Providers for `device` in edgeclip's order, with options; CPU is always last. ``trt_profile``: the
    TensorRT EP's explicit profile shapes (`engine_cache.ort_trt_profile_options`), so one engine covers every
    batch up to the profile's maximum instead of one engine per new shape."""
    present = set(available_providers())
    if not present:
        raise BackendError("onnxruntime is not installed")
    chosen: list[Any] = []
    if device.startswith("cuda"):
        dev_id = int(device.split(":")[1]) if ":" in device else 0
        if TRT_EP in present:
            opts: dict[str, Any] = {"device_id": dev_id, "trt_fp16_enable": False}
            if engine_cache is not None:
                engine_cache.mkdir(parents=True, exist_ok=True)
                opts.update(trt_engine_cache_enable=True, trt_engine_cache_path=str(engine_cache),
                            trt_timing_cache_enable=True, trt_timing_cache_path=str(engine_cache))
            if trt_profile:
                opts.update(trt_profile)
            chosen.append((TRT_EP, opts))
        if CUDA_EP in present:
            chosen.append((CUDA_EP, {"device_id": dev_id}))
        if not chosen:
            raise BackendError(
                f"device {device!r} asked for, but this onnxruntime has no GPU provider "
                f"(present: {sorted(present)}); install 'edgeclip[gpu]' or use device='cpu'"
            )
    chosen.append(CPU_EP)
    return chosen


def make_session(path: Path, device: str = "cpu", threads: int | None = None,
                 engine_cache: Path | None = None, trt_profile: Mapping[str, str] | None = None) -> Any:
    """An InferenceSession for one graph; errors name the file. ``engine_cache`` and ``trt_profile`` are the
    TensorRT EP's (see `choose_providers`)."""
    ort = import_ort()
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if threads is not None:
        if threads < 1:
            raise BackendError(f"threads must be >= 1, got {threads}")
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
    providers = choose_providers(device, engine_cache, trt_profile)
    try:
        sess = ort.InferenceSession(str(path), opts, providers=providers)
    except Exception as exc:  # onnxruntime raises its own exception types
        raise BackendError(f"onnxruntime could not load {path}: {exc}") from exc
    log.info("%s runs on %s", path.name, sess.get_providers()[0])
    return sess
