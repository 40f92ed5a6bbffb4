"""A loaded bundle: encoders on the chosen backend, the differentiable text tower, zero-shot classifier."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from functools import cached_property
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from edgeclip.errors import BackendError, BundleError, InputError
from edgeclip.runtime import bundle as B
from edgeclip.runtime.backend_choice import BackendChoice, EncoderChoice, choose_backends
from edgeclip.runtime.encoders import (
    DispatchImageEncoder,
    DispatchTextEncoder,
    ImageEncoder,
    OrtImageEncoder,
    OrtTextEncoder,
    TextEncoder,
    TorchImageEncoder,
    TorchTextEncoder,
)
from edgeclip.runtime.engine_cache import (
    ORT_TRT_MAX_BATCH,
    ort_trt_cache_dir,
    ort_trt_profile_options,
    pick_engine,
    profile_for,
)
from edgeclip.runtime.engine_cache import PRECISIONS as ENGINE_PRECISIONS
from edgeclip.runtime.images import preprocess
from edgeclip.runtime.ort_session import TRT_EP, available_providers, make_session
from edgeclip.runtime.prompt import PromptContext
from edgeclip.runtime.text_tower import TextTower, load_float_state
from edgeclip.runtime.tokenizer import Tokenizer

log = logging.getLogger(__name__)

BACKENDS = ("auto", "torch", "onnxruntime", "tensorrt")
DEFAULT_TEMPLATE = "a photo of a {}."


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    try:
        return load_file(str(path))
    except Exception as exc:  # safetensors raises its own error types
        raise BundleError(f"{path} is not a readable safetensors file: {exc}") from exc


def resolve_backend(backend: str) -> str:
    """Validate a backend name; "auto" stays "auto" (it is chosen per encoder by `choose_backends`)."""
    if backend not in BACKENDS:
        raise BackendError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    if backend == "onnxruntime" and not available_providers():
        raise BackendError("backend 'onnxruntime' asked for but onnxruntime is not installed: "
                           "pip install 'edgeclip[cpu]' (or 'edgeclip[gpu]')")
    if backend == "tensorrt":
        from edgeclip.runtime.trt_runner import import_tensorrt

        import_tensorrt()
    return backend


class EdgeClip:
    """A bundle loaded for inference and adaptation. Create with `edgeclip.load`.

    ``backend``: "torch", "onnxruntime", or "auto": each encoder runs on the backend a short measured
    calibration found fastest on this machine, per batch size (`edgeclip.runtime.backend_choice`; cached, so
    it is timed once per bundle, machine, device, thread count and library versions). Under "auto" an encoder
    whose winner differs between batch sizes is a `DispatchImageEncoder` / `DispatchTextEncoder` holding both
    backends. ``backend`` then reads "torch", "onnxruntime" or e.g. "auto(image=onnxruntime, text=torch)", and
    ``backend_choice`` holds the calibration (None for an explicit backend). Once built, the object holds no
    per-call state of its own, so threads may share it.

    "tensorrt" (CUDA only) runs the engines `edgeclip engine build` left in the bundle's engine cache
    (`edgeclip.runtime.engine_cache`): the valid one of each encoder built at ``engine_precision`` ("fp32",
    "fp16", "int8"; None: the lowest precision built, as each passed its parity gate). "auto" on CUDA
    includes it whenever such engines exist. ``cuda_graph_batch``: replay a CUDA graph for image batches of
    exactly that size (`edgeclip.runtime.trt_runner`).
    """

    def __init__(self, bundle: B.Bundle, backend: str = "auto", device: str = "cpu",
                 threads: int | None = None, *, recalibrate: bool = False, engine_precision: str | None = None,
                 cuda_graph_batch: int | None = None) -> None:
        """`threads` limits both onnxruntime's sessions and PyTorch (`torch.set_num_threads`, which is
        process-wide: it applies to every model and all other PyTorch work in this process). None leaves
        both at their defaults. `recalibrate` (with backend "auto"): time the backends again even when a
        cached calibration fits."""
        if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
            raise InputError(f"threads must be a positive integer (or None for the default), got {threads!r}")
        self.bundle = bundle
        self.device = torch.device(device)
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise BackendError(f"device {device!r} asked for but CUDA is not available; use device='cpu'")
        self.backend = resolve_backend(backend)
        if engine_precision is not None and engine_precision not in ENGINE_PRECISIONS:
            raise InputError(f"engine_precision must be one of {', '.join(ENGINE_PRECISIONS)} (or None), got "
                             f"{engine_precision!r}")
        self.engine_precision = engine_precision
        self.cuda_graph_batch = cuda_graph_batch
        self.backend_choice: BackendChoice | None = None
        self.threads = threads
        if threads is not None:
            torch.set_num_threads(threads)
        spec = bundle.spec
        self.preprocess_cfg = spec.image
        self.tokenizer = Tokenizer(spec.text.tokenizer)
        self.logit_scale = spec.logit_scale
        self.logit_bias = spec.logit_bias
        if self.backend == "auto":
            self._build_auto(recalibrate)
        else:
            self.image_encoder = self._make_image_encoder(self.backend)
            self.text_encoder = self._make_text_encoder(self.backend)

    # -- construction ---------------------------------------------------------------------------
    def _session(self, name: str) -> Any:
        profile, cache = None, None
        if self.device.type == "cuda" and TRT_EP in available_providers():
            encoder = "image" if name == B.IMAGE_ONNX else "text"
            profile = ort_trt_profile_options(profile_for(self.bundle, encoder, ORT_TRT_MAX_BATCH[encoder]))
            cache = ort_trt_cache_dir(self.bundle)
        return make_session(self.bundle.file(name), str(self.device), self.threads, engine_cache=cache,
                            trt_profile=profile)

    def _trt_runner(self, encoder: str, cuda_graph_batch: int | None = None) -> Any:
        """The runner of this bundle's engine for ``encoder`` (see `engine_records`)."""
        from edgeclip.runtime.trt_runner import TrtRunner

        if self.device.type != "cuda":
            raise BackendError("backend 'tensorrt' runs on an NVIDIA GPU: use device='cuda'")
        rec = pick_engine(self.bundle, encoder, self.engine_precision)
        log.info("%s encoder: TensorRT engine %s (%s, max batch %d)", encoder, rec.path.name, rec.key.precision,
                 rec.key.max_batch)
        return TrtRunner(rec.path.read_bytes(), str(self.device), cuda_graph_batch=cuda_graph_batch)

    def _make_image_encoder(self, backend: str) -> ImageEncoder:
        size = self.preprocess_cfg.image_size
        if backend == "onnxruntime":
            session = self._session(B.IMAGE_ONNX)
            B.check_image_input(self.bundle, session.get_inputs()[0].shape)
            return OrtImageEncoder(session, size, self.bundle.embed_dim, str(self.device))
        if backend == "tensorrt":
            from edgeclip.runtime.trt_runner import TrtImageEncoder

            return TrtImageEncoder(self._trt_runner("image", self.cuda_graph_batch), size)
        return TorchImageEncoder(self._build_visual(), size, str(self.device))

    def _make_text_encoder(self, backend: str) -> TextEncoder:
        t = self.bundle.spec.text
        if backend == "onnxruntime":
            return OrtTextEncoder(self._session(B.TEXT_ONNX), t.width, t.context_length,
                                  self.bundle.embed_dim, t.causal, str(self.device))
        if backend == "tensorrt":
            from edgeclip.runtime.trt_runner import TrtTextEncoder

            return TrtTextEncoder(self._trt_runner("text"), t.width, t.context_length, self.bundle.embed_dim,
                                  t.causal)
        return TorchTextEncoder(self.text_tower, self.bundle.embed_dim, str(self.device))

    def _make_encoder(self, encoder: str, backend: str) -> ImageEncoder | TextEncoder:
        return self._make_image_encoder(backend) if encoder == "image" else self._make_text_encoder(backend)

    def _build_auto(self, recalibrate: bool) -> None:
        """Choose (cached or calibrated) and build each encoder on its winners; losers are not kept."""
        choice, built = choose_backends(self.bundle, str(self.device), self.threads, self._make_encoder,
                                        recalibrate=recalibrate)

        def assemble(c: EncoderChoice) -> Any:
            encs = {b: built.get((c.encoder, b)) or self._make_encoder(c.encoder, b) for b in c.backends}
            if len(encs) == 1:
                return next(iter(encs.values()))
            cls = DispatchImageEncoder if c.encoder == "image" else DispatchTextEncoder
            return cls(encs, c.buckets, c.winners)

        self.image_encoder = assemble(choice.image)
        self.text_encoder = assemble(choice.text)
        built.clear()
        self.backend_choice = choice
        self.backend = choice.label
        log.info("backend auto -> %s (%s)", self.backend, choice.source)

    def _build_visual(self) -> torch.nn.Module:
        if not self.bundle.has(B.IMAGE_TOWER):
            raise BackendError(
                f"bundle {self.bundle.path} has no {B.IMAGE_TOWER}, so the torch image backend cannot run; "
                "use backend='onnxruntime' or re-export with the image tower"
            )
        from open_clip.model import _build_vision_tower

        spec = self.bundle.spec
        cfg = spec.model_config
        visual = _build_vision_tower(cfg["embed_dim"], dict(cfg["vision_cfg"]), quick_gelu=spec.quick_gelu)
        path = self.bundle.file(B.IMAGE_TOWER)
        load_float_state(visual, _read_safetensors(path), str(path))
        return visual

    @cached_property
    def text_tower(self) -> TextTower:
        """The frozen differentiable text transformer (PyTorch), on this model's device."""
        spec = self.bundle.spec
        cfg = spec.model_config
        tower = TextTower.from_config(cfg["embed_dim"], dict(cfg["text_cfg"]), spec.quick_gelu)
        path = self.bundle.file(B.TEXT_TOWER)
        load_float_state(tower, _read_safetensors(path), str(path))
        if tower.causal != spec.text.causal:
            raise BundleError(f"{self.bundle.path / B.MANIFEST}: text.causal is {spec.text.causal}, but the text "
                              "tower its model_config describes is not; re-export the bundle")
        return tower.to(self.device).eval()

    # -- encoding -------------------------------------------------------------------------------
    def preprocess(self, images: Any) -> torch.Tensor:
        """Images (paths, PIL, arrays, or a ready [B,3,S,S] tensor) -> normalised pixels on the device."""
        return preprocess(images, self.preprocess_cfg).to(self.device)

    def encode_images(self, images: Any, normalize: bool = True) -> torch.Tensor:
        emb = self.image_encoder(self.preprocess(images))
        return F.normalize(emb, dim=-1) if normalize else emb

    def encode_text(self, texts: Sequence[str], normalize: bool = True) -> torch.Tensor:
        """Embed complete prompts (no learned context)."""
        ids, eot = self.tokenizer.ids(list(texts))
        ids, eot = ids.to(self.device), eot.to(self.device)
        with torch.no_grad():
            emb = self.text_encoder(self.text_tower.embed_tokens(ids), eot)
        return F.normalize(emb, dim=-1) if normalize else emb

    def prompt_context(self, init: str = "a photo of a", **kwargs: Any) -> PromptContext:
        """Learnable context vectors for prompt tuning (see `PromptContext`)."""
        return PromptContext(self.text_tower, self.tokenizer, init, **kwargs).to(self.device)

    def classifier(self, class_names: Sequence[str], template: str = DEFAULT_TEMPLATE) -> Any:
        """The zero-shot method for `class_names`: shorthand for
        ``create_method("zeroshot", model, class_names, template=template)``."""
        from edgeclip.runtime.methods import create_method

        return create_method("zeroshot", self, class_names, template=template)

    def describe(self) -> dict[str, Any]:
        """JSON-ready: bundle, backend, device, threads, the encoder types and ``backend_choice`` (the
        calibration behind backend "auto", or None)."""
        return {"bundle": str(self.bundle.path), "backend": self.backend, "device": str(self.device),
                "threads": self.threads, "image_encoder": type(self.image_encoder).__name__,
                "text_encoder": type(self.text_encoder).__name__,
                "backend_choice": self.backend_choice.to_dict() if self.backend_choice is not None else None}


def load(bundle: str | Path | B.Bundle | None = None, backend: str = "auto", device: str = "cpu",
         threads: int | None = None, verify: bool = True, **options: Any) -> EdgeClip:
    """Load a bundle directory (default: the embedded micro CLIP, which knows 16 coloured shapes), validating its
    manifest and verifying its hashes unless `verify=False`, on a backend ("auto": the fastest measured per
    encoder and batch size, see `EdgeClip`; "torch"; "onnxruntime"; "tensorrt": the bundle's TensorRT engines,
    CUDA only) and device. `threads` limits onnxruntime and PyTorch (process-wide; see `EdgeClip`). ``options``
    go to `EdgeClip` (``recalibrate``, ``engine_precision``, ``cuda_graph_batch``)."""
    if bundle is None:
        from edgeclip.assets import default_bundle_path

        bundle = default_bundle_path()
    b = bundle if isinstance(bundle, B.Bundle) else B.open_bundle(bundle, verify=verify)
    return EdgeClip(b, backend=backend, device=device, threads=threads, **options)
