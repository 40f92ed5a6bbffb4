"""`edgeclip engine build`: TensorRT engines for a bundle's encoders, with the TensorRT 10 Python API.

Per encoder: ``Builder`` -> a network created ``STRONGLY_TYPED`` (where the version has the flag; TensorRT 11
is always strongly typed) -> ``OnnxParser.parse_from_file`` -> one optimisation profile
(`edgeclip.runtime.engine_cache.profile_for`) -> ``build_serialized_network``, with the workspace set by
``set_memory_pool_limit`` and a timing cache kept beside the engines (one per TensorRT version and GPU).

Precision comes from the graph, never from builder flags (TensorRT >= 10.12 deprecates the weakly typed
``BuilderFlag.FP16/INT8`` and TensorRT 11 removes them; a build that set them would get an FP32 engine):

- ``fp32``: the bundle's FP32 graphs; TF32 is cleared, so the engine is an FP32 parity build.
- ``fp16``: an FP16 graph with FP32 islands for LayerNorm, Softmax and the final projection
  (`edgeclip.export.fp16.convert_graph_fp16`, made on the fly from an FP32 bundle; an FP16 variant's own
  graphs are used as they are).
- ``int8``: the explicit Q/DQ image graph of an INT8 variant (`edgeclip quantize`); its text graph is FP32 and
  is built so. There is no implicit calibrator.

After every build the engine runs through the parity gate before it is kept: its embeddings against the
bundle's own ONNX through onnxruntime on the CPU, on the same real images and prompts as the variants'
parity (`edgeclip.export.variant`). The minimum cosine must reach `MIN_COS` (0.9999 FP32, 0.999 FP16, the
INT8 variant's own 0.95); a failing engine is refused with the figures and not written. A valid engine for
the same key (`edgeclip.runtime.engine_cache`) is reused unless ``force``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch

from edgeclip.errors import BackendError, ExportError, InputError
from edgeclip.export.quantize import MIN_INT8_COS
from edgeclip.runtime import bundle as B
from edgeclip.runtime import engine_cache as EC
from edgeclip.runtime.trt_runner import TrtRunner, check_tensorrt, import_tensorrt, trt_logger

__all__ = ["MIN_COS", "EngineBuildResult", "build_engines", "build_plan", "engine_parity", "prepare_graph"]

log = logging.getLogger(__name__)

MIN_COS = {"fp32": 0.9999, "fp16": 0.999, "int8": MIN_INT8_COS}
DEFAULT_WORKSPACE_GB = 2.0


# -- one network ----------------------------------------------------------------------------------------------
def _network_flags(trt: Any) -> int:
    flag = getattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED", None)
    if flag is None:
        raise BackendError(f"TensorRT {trt.__version__} has no strongly typed networks; edgeclip needs >= 10.3")
    return 1 << int(flag)


def build_plan(trt: Any, onnx_path: Path, profile: EC.Profile, *, workspace_bytes: int,
               timing_cache: Path | None = None, tf32: bool = False) -> bytes:
    """Parse ``onnx_path`` into a strongly typed network and build a serialised engine for ``profile``. The
    timing cache file is read when present and written back after the build. TF32 is cleared unless ``tf32``.
    An ONNX graph TensorRT cannot parse, or a failed build, is an `ExportError` with TensorRT's messages."""
    logger = trt_logger(trt)
    builder = trt.Builder(logger)
    network = builder.create_network(_network_flags(trt))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = [str(parser.get_error(i)) for i in range(parser.num_errors)]
        raise ExportError(f"TensorRT could not parse {onnx_path.name}: " + "; ".join(errors or ["no message"]))
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_bytes))
    if not tf32 and hasattr(trt.BuilderFlag, "TF32"):
        config.clear_flag(trt.BuilderFlag.TF32)
    opt = builder.create_optimization_profile()
    for name, lo, mid, hi in profile.shapes:
        opt.set_shape(name, lo, mid, hi)
    config.add_optimization_profile(opt)
    blob = timing_cache.read_bytes() if timing_cache is not None and timing_cache.is_file() else b""
    cache = config.create_timing_cache(blob)
    config.set_timing_cache(cache, False)
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise ExportError(f"TensorRT could not build an engine from {onnx_path.name}; see TensorRT's log above "
                          "(a smaller --max-batch or a larger --workspace-gb may help)")
    if timing_cache is not None:
        _atomic_write(timing_cache, bytes(config.get_timing_cache().serialize()))
    return bytes(plan)


def _atomic_write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


# -- which graph ----------------------------------------------------------------------------------------------
def prepare_graph(bundle: B.Bundle, encoder: str, build: str, workdir: Path) -> tuple[Path, str]:
    """The graph to parse for ``encoder`` under build precision ``build``, and the engine's precision."""
    if build not in EC.PRECISIONS:
        raise InputError(f"precision must be one of {', '.join(EC.PRECISIONS)}, got {build!r}")
    own = EC.graph_precision(bundle, encoder)
    path = bundle.file(EC.ENCODER_FILES[encoder])
    if build == "int8":
        if EC.graph_precision(bundle, "image") != "int8":
            raise InputError(f"--precision int8 needs an INT8 bundle: make one with `edgeclip quantize --bundle "
                             f"{bundle.path} --out DIR`, then build engines for DIR")
        return path, own  # the Q/DQ image graph; the variant's text graph is FP32
    if own == build:
        return path, own
    if build == "fp16" and own == "fp32":
        import onnx

        from edgeclip.export.fp16 import convert_graph_fp16
        from edgeclip.export.onnx_graph import save_onnx

        proto, _ = convert_graph_fp16(onnx.load(str(path)))
        out = workdir / f"{encoder}-fp16.onnx"
        save_onnx(proto, out)
        return out, "fp16"
    raise InputError(f"bundle {bundle.path} has a {own} {encoder} graph; it cannot be built at {build} (build "
                     f"--precision {own}, or start from the FP32 bundle)")


# -- the gate -------------------------------------------------------------------------------------------------
def engine_parity(bundle: B.Bundle, encoder: str, run: Callable[[dict[str, torch.Tensor]], np.ndarray],
                  precision: str) -> dict[str, float]:
    """Cosine of the engine's embeddings (``run(feeds) -> [N, D]``) against the bundle's own graph through
    onnxruntime CPU: ``min_cos``, ``mean_cos``, ``n``, ``required``."""
    from edgeclip.export.variant import (
        cosine_stats,
        image_parity_pixels,
        ort_session,
        pixel_feeds,
        run_graph,
        text_parity_feeds,
    )

    if encoder == "image":
        feeds = pixel_feeds(image_parity_pixels(bundle))
    else:
        feeds, _ = text_parity_feeds(bundle)
    ref = run_graph(ort_session(bundle.file(EC.ENCODER_FILES[encoder])), feeds)
    new = np.concatenate([run({k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in f.items()}) for f in feeds])
    mean, low = cosine_stats(ref, new)
    return {"min_cos": low, "mean_cos": mean, "n": float(len(new)), "required": MIN_COS[precision]}


# -- the whole build ------------------------------------------------------------------------------------------
@dataclass
class EngineBuildResult:
    """What `build_engines` did per encoder: ``{"encoder", "precision", "status" ("built" | "cached"),
    "file", "max_batch", "parity", "build_seconds"}``."""

    bundle: Path
    build: str
    engines: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"bundle": str(self.bundle), "precision": self.build, "engines": self.engines}


def _slug(s: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", s)[:60]


def _runner_output(runner: TrtRunner) -> Callable[[dict[str, torch.Tensor]], np.ndarray]:
    def run(feeds: dict[str, torch.Tensor]) -> np.ndarray:
        out = runner(feeds)
        return out[runner.outputs[0]].float().cpu().numpy()

    return run


def _prune_same_host(bundle: B.Bundle, key: EC.EngineKey, here: EC.HostIdentity) -> None:
    """Remove this host's dead engines of the same encoder and precision (the bundle's graph changed, or the
    plan is corrupt); engines for other GPUs or TensorRT versions are kept (valid elsewhere)."""
    folder = EC.write_dir(bundle)
    for rec in EC.list_engines(bundle, here, verify=False):
        same = (rec.key.encoder, rec.key.precision, rec.key.tensorrt, rec.key.gpu) == (
            key.encoder, key.precision, key.tensorrt, key.gpu)
        if same and not rec.valid and rec.path.parent == folder:
            log.info("removing stale engine %s (%s)", rec.path.name, "; ".join(rec.problems))
            for p in (rec.path, rec.path.with_suffix(".json")):
                with contextlib.suppress(OSError):
                    p.unlink()


def build_engines(
    bundle: str | Path | B.Bundle,
    precision: str = "fp32",
    max_batch: int = 64,
    *,
    max_text_batch: int | None = None,
    encoders: Sequence[str] = ("image", "text"),
    workspace_gb: float = DEFAULT_WORKSPACE_GB,
    force: bool = False,
    device: str = "cuda",
    here: EC.HostIdentity | None = None,
    trt: Any = None,
    progress: bool = False,
) -> EngineBuildResult:
    """Build (or reuse) the engines of ``bundle``'s ``encoders`` at ``precision`` for this GPU, each passing
    the parity gate, and record them in the bundle's engine cache. ``max_text_batch`` (default: ``max_batch``)
    bounds the text profile; longer class lists run in chunks. ``device``/``here``/``trt`` are injectable for
    tests; a real build needs CUDA and TensorRT >= 10.3."""
    from tqdm.auto import tqdm

    b = bundle if isinstance(bundle, B.Bundle) else B.open_bundle(bundle, verify=True)
    if precision not in EC.PRECISIONS:
        raise InputError(f"precision must be one of {', '.join(EC.PRECISIONS)}, got {precision!r}")
    bad = [e for e in encoders if e not in EC.ENCODER_FILES]
    if bad or not encoders:
        raise InputError(f"encoders must be among image, text; got {list(encoders)}")
    if not workspace_gb > 0:
        raise InputError(f"workspace must be > 0 GB, got {workspace_gb}")
    trt = import_tensorrt() if trt is None else check_tensorrt(trt)
    here = EC.host_identity() if here is None else here
    if torch.device(device).type == "cuda" and not torch.cuda.is_available():
        raise BackendError("TensorRT engines are built on the NVIDIA GPU that will run them; this machine has "
                           "no CUDA device")
    if here.gpu is None or here.compute_capability is None:
        raise BackendError("no CUDA GPU to build TensorRT engines for")
    result = EngineBuildResult(b.path, precision)
    out_dir = EC.write_dir(b)
    timing = out_dir / f"timing-{_slug(str(trt.__version__))}-{_slug(here.gpu)}.cache"
    with tempfile.TemporaryDirectory(prefix="edgeclip-trt-") as tmp:
        for enc in tqdm(list(encoders), desc=f"engine build {precision}", unit="engine", disable=not progress):
            graph, eng_precision = prepare_graph(b, enc, precision, Path(tmp))
            profile = EC.profile_for(b, enc, max_batch if enc == "image" else (max_text_batch or max_batch))
            name = EC.ENCODER_FILES[enc]
            key = EC.EngineKey(enc, eng_precision, precision, name, b.spec.files[name].sha256,
                               B.sha256_file(graph), str(trt.__version__), here.gpu, here.compute_capability,
                               profile.to_dict())
            cached = None if force else EC.find_engine(b, enc, eng_precision, here, profile=profile)
            if cached is not None and cached.key == key:
                log.info("%s engine: valid cached %s", enc, cached.path)
                result.engines.append({"encoder": enc, "precision": eng_precision, "status": "cached",
                                       "file": str(cached.path), "max_batch": profile.max_batch,
                                       "parity": cached.parity, "build_seconds": cached.build_seconds})
                continue
            start = time.perf_counter()
            plan = build_plan(trt, graph, profile, workspace_bytes=int(workspace_gb * (1 << 30)),
                              timing_cache=timing)
            seconds = time.perf_counter() - start
            runner = TrtRunner(plan, device, trt=trt)
            parity = engine_parity(b, enc, _runner_output(runner), eng_precision)
            del runner
            if not parity["min_cos"] >= parity["required"]:
                raise ExportError(
                    f"the {eng_precision} {enc} engine fails the parity gate: min cosine {parity['min_cos']:.6f}, "
                    f"mean {parity['mean_cos']:.6f} over {int(parity['n'])} inputs against {name} on onnxruntime "
                    f"CPU (need >= {parity['required']}); the engine was not kept")
            _prune_same_host(b, key, here)
            plan_path = out_dir / f"{key.stem}.plan"
            _atomic_write(plan_path, plan)
            payload = EC.sidecar_payload(key, parity, datetime.now(timezone.utc).isoformat(timespec="seconds"),
                                         round(seconds, 3), B.sha256_file(plan_path), len(plan))
            _atomic_write(plan_path.with_suffix(".json"), json.dumps(payload, indent=1).encode())
            log.info("%s engine: built %s in %.1f s, parity min cos %.6f", enc, plan_path.name, seconds,
                     parity["min_cos"])
            result.engines.append({"encoder": enc, "precision": eng_precision, "status": "built",
                                   "file": str(plan_path), "max_batch": profile.max_batch, "parity": parity,
                                   "build_seconds": round(seconds, 3)})
    return result

