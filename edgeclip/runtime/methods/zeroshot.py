"""Zero-shot CLIP: class text embeddings computed once, images scored by scaled cosine (the floor every
adaptation method is compared with)."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from edgeclip.runtime.classnames import validate_template
from edgeclip.runtime.methods.base import Method
from edgeclip.runtime.model import DEFAULT_TEMPLATE, EdgeClip
from edgeclip.runtime.prediction import Prediction

__all__ = ["ZeroShot", "ZeroShotConfig", "image_logits"]


@dataclass(frozen=True)
class ZeroShotConfig:
    """Zero-shot settings."""

    # the prompt, "{}" where the class name goes (CLIP's single-template "a photo of a {}.")
    template: str = DEFAULT_TEMPLATE

    def __post_init__(self) -> None:
        validate_template(self.template)


def image_logits(model: EdgeClip, image_embeds: torch.Tensor, text_embeds: torch.Tensor) -> torch.Tensor:
    """``scale · cos(image, text)`` (+ the model's logit bias, if any) for image ``[B, D]`` and text ``[C, D]``."""
    out = model.logit_scale * F.normalize(image_embeds, dim=-1) @ F.normalize(text_embeds, dim=-1).T
    if model.logit_bias is not None:
        out = out + model.logit_bias
    return out


def predict_with_text(model: EdgeClip, images: Any, text_embeds: torch.Tensor, class_names: list[str],
                      method: str) -> Prediction:
    """Preprocess `images` the encoder's way, encode them in one batch, score them against `text_embeds`."""
    t0 = time.perf_counter()
    if isinstance(images, (np.ndarray, torch.Tensor)) and images.ndim == 4 and images.shape[-1] in (1, 3, 4):
        images = list(images)  # a batch of H×W×C frames (a ready [B, 3, S, S] pixel tensor goes through as is)
    pixels = model.preprocess(images)
    t1 = time.perf_counter()
    with torch.no_grad():
        emb = model.image_encoder(pixels)
        t2 = time.perf_counter()
        probs = image_logits(model, emb, text_embeds.to(emb.device)).softmax(dim=-1)
    t3 = time.perf_counter()
    return Prediction(probs.argmax(dim=-1).cpu(), probs.float().cpu(), class_names,
                      {"preprocess": t1 - t0, "image_encoder": t2 - t1, "head": t3 - t2}, {"method": method})


class ZeroShot(Method):
    """Zero-shot classifier (stateless: `reset` and `state_dict` have nothing to keep)."""

    name = "zeroshot"
    config_class = ZeroShotConfig

    def __init__(self, model: EdgeClip, class_names: Sequence[str], config: ZeroShotConfig | None = None) -> None:
        super().__init__(model, class_names, config)
        self.template = self.config.template
        self.text_embeds = model.encode_text([self.template.format(c) for c in self.class_names])

    def logits(self, image_embeds: torch.Tensor) -> torch.Tensor:
        """Scaled cosine logits ``[B, C]`` of image embeddings ``[B, D]``."""
        return image_logits(self.model, image_embeds, self.text_embeds)

    def _predict(self, images: Any) -> Prediction:
        pred = predict_with_text(self.model, images, self.text_embeds, self.class_names, self.name)
        self.frames_seen += len(pred.labels)
        return pred
