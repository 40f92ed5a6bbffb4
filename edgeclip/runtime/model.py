"""A loaded bundle: encoders on the chosen backend, the differentiable text tower, zero-shot classifier."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from functools import cached_property
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from edgeclip.errors import BackendError, BundleError, ClassNameError
from edgeclip.runtime import bundle as B
from edgeclip.runtime.classnames import validate_class_names
from edgeclip.runtime.encoders import (
    ImageEncoder,
    OrtImageEncoder,
    OrtTextEncoder,
    TextEncoder,
    TorchImageEncoder,
    TorchTextEncoder,
)
from edgeclip.runtime.images import PreprocessConfig, preprocess
from edgeclip.runtime.ort_session import available_providers, make_session
from edgeclip.runtime.prediction import Prediction
from edgeclip.runtime.prompt import PromptContext
from edgeclip.runtime.text_tower import TextTower, load_float_state
from edgeclip.runtime.tokenizer import Tokenizer, TokenizerSpec

log = logging.getLogger(__name__)

BACKENDS = ("auto", "torch", "onnxruntime")
DEFAULT_TEMPLATE = "a photo of a {}."


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    try:
        return load_file(str(path))
    except Exception as exc:  # safetensors raises its own error types
        raise BundleError(f"{path} is not a readable safetensors file: {exc}") from exc


def resolve_backend(backend: str) -> str:
    if backend not in BACKENDS:
        raise BackendError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    if backend == "auto":
        backend = "onnxruntime" if available_providers() else "torch"
        log.info("backend auto -> %s", backend)
    elif backend == "onnxruntime" and not available_providers():
        raise BackendError("backend 'onnxruntime' asked for but onnxruntime is not installed: "
                           "pip install 'edgeclip[cpu]' (or 'edgeclip[gpu]')")
    return backend


class EdgeClip:
    """A bundle loaded for inference and adaptation. Create with `edgeclip.load`."""

    def __init__(self, bundle: B.Bundle, backend: str = "auto", device: str = "cpu",
                 threads: int | None = None) -> None:
        self.bundle = bundle
        self.device = torch.device(device)
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise BackendError(f"device {device!r} asked for but CUDA is not available; use device='cpu'")
        self.backend = resolve_backend(backend)
        self.threads = threads
        m = bundle.manifest
        self.preprocess_cfg = PreprocessConfig.from_dict(m["image"])
        self.tokenizer = Tokenizer(TokenizerSpec.from_dict(m["text"]["tokenizer"]))
        self.logit_scale = float(m["logit_scale"])
        self.logit_bias = m.get("logit_bias")
        self.image_encoder = self._make_image_encoder()
        self.text_encoder = self._make_text_encoder()

    # -- construction ---------------------------------------------------------------------------
    def _session(self, name: str) -> Any:
        return make_session(self.bundle.file(name), str(self.device), self.threads,
                            engine_cache=self.bundle.path / "engines" / "ort_trt")

    def _make_image_encoder(self) -> ImageEncoder:
        size = self.preprocess_cfg.image_size
        if self.backend == "onnxruntime":
            return OrtImageEncoder(self._session(B.IMAGE_ONNX), size, self.bundle.embed_dim, str(self.device))
        return TorchImageEncoder(self._build_visual(), size, str(self.device))

    def _make_text_encoder(self) -> TextEncoder:
        t = self.bundle.text
        if self.backend == "onnxruntime":
            return OrtTextEncoder(self._session(B.TEXT_ONNX), t["width"], t["context_length"],
                                  self.bundle.embed_dim, t["causal"], str(self.device))
        return TorchTextEncoder(self.text_tower, self.bundle.embed_dim, str(self.device))

    def _build_visual(self) -> torch.nn.Module:
        if not self.bundle.has(B.IMAGE_TOWER):
            raise BackendError(
                f"bundle {self.bundle.path} has no {B.IMAGE_TOWER}, so the torch image backend cannot run; "
                "use backend='onnxruntime' or re-export with the image tower"
            )
        from open_clip.model import _build_vision_tower

        cfg = self.bundle.manifest["model_config"]
        visual = _build_vision_tower(cfg["embed_dim"], dict(cfg["vision_cfg"]),
                                     quick_gelu=self.bundle.manifest.get("quick_gelu", False))
        path = self.bundle.file(B.IMAGE_TOWER)
        load_float_state(visual, _read_safetensors(path), str(path))
        return visual

    @cached_property
    def text_tower(self) -> TextTower:
        """The frozen differentiable text transformer (PyTorch), on this model's device."""
        m = self.bundle.manifest
        cfg = m["model_config"]
        tower = TextTower.from_config(cfg["embed_dim"], cfg["text_cfg"], m.get("quick_gelu", False))
        path = self.bundle.file(B.TEXT_TOWER)
        load_float_state(tower, _read_safetensors(path), str(path))
        if tower.causal != bool(m["text"]["causal"]):
            raise BundleError(f"{self.bundle.path}: manifest says causal={m['text']['causal']}, config disagrees")
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

    def classifier(self, class_names: Sequence[str], template: str = DEFAULT_TEMPLATE) -> Classifier:
        return Classifier(self, class_names, template)

    def describe(self) -> dict[str, Any]:
        return {"bundle": str(self.bundle.path), "backend": self.backend, "device": str(self.device),
                "image_encoder": type(self.image_encoder).__name__,
                "text_encoder": type(self.text_encoder).__name__}


class Classifier:
    """Zero-shot classifier: class text embeddings computed once, images scored by scaled cosine."""

    def __init__(self, model: EdgeClip, class_names: Sequence[str], template: str = DEFAULT_TEMPLATE) -> None:
        if "{}" not in template:
            raise ClassNameError(f"template {template!r} must contain '{{}}' where the class name goes")
        self.model = model
        self.class_names = validate_class_names(class_names)
        self.template = template
        self.text_embeds = model.encode_text([template.format(c) for c in self.class_names])

    def logits(self, image_embeds: torch.Tensor) -> torch.Tensor:
        out = self.model.logit_scale * F.normalize(image_embeds, dim=-1) @ self.text_embeds.T
        if self.model.logit_bias is not None:
            out = out + self.model.logit_bias
        return out

    def predict(self, images: Any) -> Prediction:
        t0 = time.perf_counter()
        pixels = self.model.preprocess(images)
        t1 = time.perf_counter()
        emb = self.model.image_encoder(pixels)
        t2 = time.perf_counter()
        probs = self.logits(emb).softmax(dim=-1)
        t3 = time.perf_counter()
        return Prediction(probs.argmax(dim=-1).cpu(), probs.cpu(), self.class_names,
                          {"preprocess": t1 - t0, "image_encoder": t2 - t1, "head": t3 - t2})


def load(bundle: str | Path | B.Bundle, backend: str = "auto", device: str = "cpu",
         threads: int | None = None, verify: bool = True) -> EdgeClip:
    """Load a bundle directory (verifying hashes and format version) on a backend and device."""
    b = bundle if isinstance(bundle, B.Bundle) else B.open_bundle(bundle, verify=verify)
    return EdgeClip(b, backend=backend, device=device, threads=threads)
