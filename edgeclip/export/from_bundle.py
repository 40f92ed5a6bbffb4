"""Rebuild a full open_clip model (image tower, text tower, logit scale) from a bundle's PyTorch towers.

A bundle exported with its image tower (``image_tower.safetensors``, the default) carries every weight of the
model it came from: the vision tower's state dict, the text tower's (`TextTower`'s, ``text_tower.safetensors``),
and the logit scale and bias in the manifest. `model_from_bundle` puts them back into an open_clip ``CLIP`` (or
``CustomTextCLIP``) built from the manifest's ``model_config``, so a bundle can be fine-tuned on the workstation
(`edgeclip.export.finetune`) and re-exported without the checkpoint file it was made from. The embedded micro
bundle ships no checkpoint, which is why this exists.

Key mapping. `TextTower` keeps open_clip's own names for the text weights (``token_embedding.weight``,
``positional_embedding``, ``transformer.*``, ``ln_final.*``, ``text_projection`` as a matrix, or
``text_projection.weight`` / ``.bias`` as a Linear). In ``CLIP`` they sit at the top level of the state dict;
in ``CustomTextCLIP`` under ``text.``. The image tower's keys go under ``visual.``; the manifest's
``logit_scale`` (stored as exp of the parameter) goes back as its log into ``logit_scale``, and ``logit_bias``
where the model has one. The assembled state dict is loaded strictly: a key the model has but the bundle lacks,
or the reverse, is a `BundleError` that names the keys.

Choices that are ours: the model is built directly from ``model_config`` (the architecture need not be
registered with open_clip to rebuild it; exporting it again does need the name registered, as any export
does); fp16-stored weights come back as float32 holding the fp16 values (as the runtime loads them); the
bundle's preprocessing is written onto ``model.visual.preprocess_cfg`` so a re-export records the same one.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file
from torch import nn

from edgeclip.errors import BundleError, InputError
from edgeclip.runtime import bundle as B

__all__ = ["BundleModel", "model_from_bundle", "text_key_prefix"]

log = logging.getLogger(__name__)


@dataclass
class BundleModel:
    """A model rebuilt from a bundle: the open_clip ``model`` (eval mode, float32, on the CPU), its
    architecture name (``model_name``, as the manifest records it) and the `Bundle` it came from."""

    model: nn.Module
    model_name: str
    bundle: B.Bundle


def _as_bundle(bundle: Any) -> B.Bundle:
    from edgeclip.runtime.model import EdgeClip

    if isinstance(bundle, EdgeClip):
        return bundle.bundle
    if isinstance(bundle, B.Bundle):
        return bundle
    if isinstance(bundle, (str, Path)):
        return B.open_bundle(bundle)
    raise InputError(f"expected a bundle (a folder path, a Bundle or a loaded EdgeClip), got {type(bundle).__name__}")


def _read(path: Path) -> dict[str, torch.Tensor]:
    try:
        state = load_file(str(path))
    except Exception as exc:  # safetensors raises its own error types
        raise BundleError(f"{path} is not a readable safetensors file: {exc}") from exc
    return {k: v.float() if v.is_floating_point() else v for k, v in state.items()}


def text_key_prefix(model: nn.Module) -> str:
    """Where an open_clip model keeps its text weights in its state dict: ``""`` for ``CLIP`` (top level),
    ``"text."`` for ``CustomTextCLIP``."""
    return "text." if isinstance(getattr(model, "text", None), nn.Module) else ""


def _build(spec: Any) -> nn.Module:
    from open_clip.model import CLIP, CustomTextCLIP

    cfg = {k: (dict(v) if isinstance(v, dict) or hasattr(v, "items") else v) for k, v in spec.model_config.items()}
    vision = dict(cfg.get("vision_cfg", {}))
    text = dict(cfg.get("text_cfg", {}))
    if "multimodal_cfg" in cfg:
        raise BundleError("CoCa models (multimodal_cfg) cannot be rebuilt from a bundle")
    if "hf_model_name" in text:
        raise BundleError("Hugging Face text towers cannot be rebuilt from a bundle")
    if "timm_model_name" in vision:
        vision["timm_model_pretrained"] = False  # never download: the weights come from the bundle
    custom = bool(cfg.pop("custom_text", False))
    cfg.update(vision_cfg=vision, text_cfg=text, quick_gelu=bool(spec.quick_gelu))
    cls = CustomTextCLIP if custom else CLIP
    try:
        return cls(**cfg)
    except TypeError as exc:
        raise BundleError(f"the manifest's model_config cannot build an open_clip {cls.__name__}: {exc}") from exc


def model_from_bundle(bundle: str | Path | B.Bundle | Any) -> BundleModel:
    """The open_clip model whose towers `bundle` carries (see the module docstring).

    `bundle` is a bundle folder, a `Bundle` or a loaded `EdgeClip`. `InputError` when the bundle has no
    ``image_tower.safetensors`` (re-export it with ``include_image_tower=True``, the default); `BundleError`
    when the weights do not fit the architecture its manifest names.
    """
    b = _as_bundle(bundle)
    spec = b.spec
    if not b.has(B.IMAGE_TOWER):
        raise InputError(f"bundle {b.path} has no {B.IMAGE_TOWER}, so its image encoder cannot be fine-tuned in "
                         "PyTorch: re-export it with the image tower (export_bundle(..., include_image_tower=True)) "
                         "or fine-tune from the open_clip checkpoint")
    if not b.has(B.TEXT_TOWER):
        raise InputError(f"bundle {b.path} has no {B.TEXT_TOWER}; re-export it")
    from edgeclip.micro.config import register_micro_config

    register_micro_config()
    model = _build(spec)
    prefix = text_key_prefix(model)
    state: dict[str, torch.Tensor] = {}
    for k, v in _read(b.file(B.IMAGE_TOWER)).items():
        state[f"visual.{k}"] = v
    for k, v in _read(b.file(B.TEXT_TOWER)).items():
        state[f"{prefix}{k}"] = v
    own = model.state_dict()
    state["logit_scale"] = torch.full_like(own["logit_scale"], math.log(spec.logit_scale))
    if "logit_bias" in own:
        if spec.logit_bias is None:
            raise BundleError(f"{b.path}: the architecture has a logit bias but the manifest records none")
        state["logit_bias"] = torch.full_like(own["logit_bias"], float(spec.logit_bias))
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = sorted(k for k in set(own) & set(state) if tuple(own[k].shape) != tuple(state[k].shape))
    if missing or unexpected or shapes:
        parts = [f"missing {missing[:6]}" if missing else "", f"unexpected {unexpected[:6]}" if unexpected else "",
                 f"other shapes {shapes[:6]}" if shapes else ""]
        raise BundleError(f"the towers of {b.path} do not fit the {type(model).__name__} its manifest describes ("
                          + "; ".join(p for p in parts if p) + "); re-export the bundle")
    model.load_state_dict(state, strict=True)
    from open_clip import set_model_preprocess_cfg

    img = spec.image
    set_model_preprocess_cfg(model, {
        "size": (img.image_size, img.image_size), "mode": "RGB", "mean": tuple(img.mean), "std": tuple(img.std),
        "interpolation": img.interpolation, "resize_mode": img.resize_mode, "fill_color": img.fill_color,
    })
    model.eval()
    log.info("rebuilt %s (%s) from bundle %s", spec.source.architecture, type(model).__name__, b.path)
    return BundleModel(model, spec.source.architecture, b)
