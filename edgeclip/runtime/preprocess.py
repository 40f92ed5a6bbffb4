"""Turning decoded images into CLIP's input tensor, exactly as open_clip's inference transform does.

* `PreprocessConfig` (stored in the bundle manifest): input size, mean/std, resize mode, interpolation.
* :func:`preprocess` turns images into the normalized ``float32 [B, 3, S, S]`` tensor the exported image
  encoder takes, matching open_clip's ``image_transform(..., is_train=False)`` for RGB inputs. The geometry
  (resize, crop, pad) is done with PIL exactly as torchvision does it for PIL images, so no torchvision import
  is needed. Reading the images is :mod:`edgeclip.runtime.decode`'s job.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image

from edgeclip.errors import ImageError, InputError
from edgeclip.runtime.decode import (
    ALPHA_BACKGROUND,
    MAX_PIXELS,
    DepthNotes,
    ImageSource,
    check_bit_depth,
    decode_image,
)

__all__ = ["INTERPOLATIONS", "OPENAI_MEAN", "OPENAI_STD", "RESIZE_MODES", "PreprocessConfig", "preprocess"]

logger = logging.getLogger(__name__)

OPENAI_MEAN: tuple[float, float, float] = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD: tuple[float, float, float] = (0.26862954, 0.26130258, 0.27577711)

RESIZE_MODES: tuple[str, ...] = ("shortest", "longest", "squash")
_RESAMPLE: dict[str, Image.Resampling] = {
    "bicubic": Image.Resampling.BICUBIC,
    "bilinear": Image.Resampling.BILINEAR,
    "nearest": Image.Resampling.NEAREST,
}

INTERPOLATIONS: tuple[str, ...] = tuple(_RESAMPLE)


def _triple(value: Any, name: str) -> tuple[float, float, float]:
    if isinstance(value, (int, float)):
        value = (value,) * 3
    try:
        out = tuple(float(v) for v in value)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{name} must be three numbers (one per RGB channel), got {value!r}") from exc
    if len(out) != 3 or not all(math.isfinite(v) for v in out):
        raise ValueError(f"{name} must be three finite numbers (one per RGB channel), got {value!r}")
    return out  # type: ignore[return-value]


@dataclass(frozen=True)
class PreprocessConfig:
    """How an image becomes the encoder's input; stored in the bundle manifest.

    Attributes:
        image_size: side ``S`` of the square input.
        mean, std: per-channel normalization applied to pixels scaled to [0, 1].
        resize_mode: ``"shortest"`` (open_clip's default: shorter side to ``S`` then center crop),
            ``"longest"`` (longer side to ``S`` then center pad with ``fill_color``) or ``"squash"``
            (both sides to ``S``, aspect ratio not kept).
        interpolation: ``"bicubic"`` (default), ``"bilinear"`` or ``"nearest"``.
        fill_color: 8-bit grey level of the padding in ``"longest"`` mode (open_clip's ``fill_color``).
    """

    image_size: int
    mean: tuple[float, float, float] = OPENAI_MEAN
    std: tuple[float, float, float] = OPENAI_STD
    resize_mode: str = "shortest"
    interpolation: str = "bicubic"
    fill_color: int = 0

    def __post_init__(self) -> None:
        size = self.image_size
        if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size <= 0:
            raise ValueError(f"image_size must be a positive int, got {size!r}")
        object.__setattr__(self, "image_size", int(size))
        object.__setattr__(self, "mean", _triple(self.mean, "mean"))
        std = _triple(self.std, "std")
        if any(s <= 0 for s in std):
            raise ValueError(f"std must be positive, got {std}")
        object.__setattr__(self, "std", std)
        if self.resize_mode not in RESIZE_MODES:
            raise ValueError(f"resize_mode must be one of {RESIZE_MODES}, got {self.resize_mode!r}")
        if self.interpolation not in _RESAMPLE:
            raise ValueError(f"interpolation must be one of {tuple(_RESAMPLE)}, got {self.interpolation!r}")
        fill = self.fill_color
        if isinstance(fill, bool) or not isinstance(fill, (int, np.integer)) or not 0 <= fill <= 255:
            raise ValueError(f"fill_color must be an int in [0, 255], got {fill!r}")
        object.__setattr__(self, "fill_color", int(fill))

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (lists for the triples) for the bundle manifest."""
        return {
            "image_size": self.image_size,
            "mean": list(self.mean),
            "std": list(self.std),
            "resize_mode": self.resize_mode,
            "interpolation": self.interpolation,
            "fill_color": self.fill_color,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> PreprocessConfig:
        """Inverse of :meth:`to_dict`. ``image_size`` is required; other keys default as in the class.

        Unknown keys (from a newer writer) are ignored with a warning in the log.
        """
        if not isinstance(data, Mapping):
            raise ValueError(f"preprocess config must be a mapping, got {type(data).__name__}")
        if "image_size" not in data:
            raise ValueError(f"preprocess config has no 'image_size' (keys: {sorted(data)})")
        known = {"image_size", "mean", "std", "resize_mode", "interpolation", "fill_color"}
        unknown = sorted(set(data) - known)
        if unknown:
            logger.warning("ignoring unknown preprocess config keys %s", unknown)
        return cls(**{k: v for k, v in data.items() if k in known})

    @classmethod
    def from_open_clip(cls, model: Any) -> PreprocessConfig:
        """Read the inference preprocessing of an open_clip model.

        open_clip 3.x stores it as a dict in ``model.visual.preprocess_cfg`` (keys ``size``, ``mean``,
        ``std``, ``interpolation``, ``resize_mode``, ``fill_color``; set by ``create_model``), with the
        legacy attributes ``visual.image_mean`` / ``visual.image_std`` and the tower's ``visual.image_size``
        beside it. A model built without the factory may lack some of these: ``image_size`` then comes
        from ``visual.image_size`` and mean/std default to OpenAI's values. Raises ``ValueError`` for a
        non-square input size, which edgeclip does not support.
        """
        visual = getattr(model, "visual", model)
        pp = dict(getattr(visual, "preprocess_cfg", None) or {})
        size = pp.get("size", getattr(visual, "image_size", None))
        if size is None:
            raise ValueError(
                f"cannot find the input size of {type(model).__name__}: no visual.preprocess_cfg['size'] "
                "and no visual.image_size"
            )
        if isinstance(size, (tuple, list)):
            if len(size) != 2 or int(size[0]) != int(size[1]):
                raise ValueError(f"non-square image size {tuple(size)} is not supported; edgeclip needs S×S")
            size = size[0]
        mean = pp.get("mean") or getattr(visual, "image_mean", None) or OPENAI_MEAN
        std = pp.get("std") or getattr(visual, "image_std", None) or OPENAI_STD
        interpolation = pp.get("interpolation") or "bicubic"
        if interpolation == "random":  # open_clip uses bicubic at inference for 'random'
            interpolation = "bicubic"
        return cls(
            image_size=int(size),
            mean=tuple(mean) if not isinstance(mean, (int, float)) else mean,
            std=tuple(std) if not isinstance(std, (int, float)) else std,
            resize_mode=pp.get("resize_mode") or "shortest",
            interpolation=interpolation,
            fill_color=int(pp.get("fill_color") or 0),
        )


def _center_crop_or_pad(im: Image.Image, size: int, fill: int) -> Image.Image:
    """torchvision's ``center_crop`` / open_clip's ``center_crop_or_pad`` for PIL images."""
    width, height = im.size
    if size > width or size > height:
        left = (size - width) // 2 if size > width else 0
        top = (size - height) // 2 if size > height else 0
        right = (size - width + 1) // 2 if size > width else 0
        bottom = (size - height + 1) // 2 if size > height else 0
        color = (fill,) * len(im.getbands())
        padded = Image.new(im.mode, (width + left + right, height + top + bottom), color)
        padded.paste(im, (left, top))
        im = padded
        width, height = im.size
        if width == size and height == size:
            return im
    top = round((height - size) / 2.0)
    left = round((width - size) / 2.0)
    return im.crop((left, top, left + size, top + size))


def _resize(im: Image.Image, width: int, height: int, resample: Image.Resampling) -> Image.Image:
    if im.size == (width, height):
        return im
    return im.resize((width, height), resample)


def _geometry(im: Image.Image, cfg: PreprocessConfig) -> Image.Image:
    """Resize/crop/pad an RGB image to ``S×S`` the way open_clip's inference transform does."""
    size = cfg.image_size
    resample = _RESAMPLE[cfg.interpolation]
    width, height = im.size
    if cfg.resize_mode == "squash":
        return _resize(im, size, size, resample)
    if cfg.resize_mode == "shortest":
        # torchvision Resize(int): shorter side to S, longer side int(S * long / short)
        if width <= height:
            new_w, new_h = size, int(size * height / width)
        else:
            new_w, new_h = int(size * width / height), size
        return _center_crop_or_pad(_resize(im, new_w, new_h, resample), size, 0)
    # "longest": open_clip ResizeKeepRatio(longest=1) then CenterCropOrPad(fill=fill_color)
    ratio = max(height / size, width / size)
    new_h, new_w = round(height / ratio), round(width / ratio)
    return _center_crop_or_pad(_resize(im, new_w, new_h, resample), size, cfg.fill_color)


def _check_tensor(x: torch.Tensor, cfg: PreprocessConfig, what: str) -> None:
    size = cfg.image_size
    expected = f"[B, 3, {size}, {size}] or [3, {size}, {size}]"
    if x.ndim not in (3, 4) or tuple(x.shape[-3:]) != (3, size, size):
        raise InputError(f"{what}: expected a tensor of shape {expected}, got {list(x.shape)}")
    if not x.is_floating_point():
        raise InputError(f"{what}: expected a float tensor of normalized pixels, got dtype {x.dtype}")
    if not bool(torch.isfinite(x).all()):
        raise ImageError(f"{what}: tensor contains NaN or Inf values")


def _check_item(x: torch.Tensor, cfg: PreprocessConfig, index: int) -> None:
    what = f"preprocess: item {index}"
    _check_tensor(x, cfg, what)
    if x.ndim != 3:
        raise InputError(f"{what}: tensors inside a list must be [3, S, S], got {list(x.shape)}")


def _to_input(im: Image.Image, cfg: PreprocessConfig) -> torch.Tensor:
    arr = np.asarray(_geometry(im, cfg), dtype=np.uint8)
    return torch.from_numpy(arr.copy()).permute(2, 0, 1)


def preprocess(
    images: ImageSource | torch.Tensor | Sequence[ImageSource | torch.Tensor],
    cfg: PreprocessConfig,
    *,
    max_pixels: int | None = MAX_PIXELS,
    background: tuple[int, int, int] = ALPHA_BACKGROUND,
    bit_depth: int | None = None,
) -> torch.Tensor:
    """Turn images into the encoder input: normalized ``float32 [B, 3, S, S]``.

    ``images`` is one image or a list/tuple of them, each anything :func:`~edgeclip.runtime.decode.load_image`
    accepts, decoded with its ``max_pixels``, ``background`` and ``bit_depth`` rules (a warning that integer
    data looks like another bit depth is logged once per call, not once per image). The result
    equals open_clip's ``image_transform(S, is_train=False, mean, std, resize_mode, interpolation)`` applied
    to the RGB image (to within float rounding; bit-identical in practice).

    An already-preprocessed float tensor ``[B, 3, S, S]`` or ``[3, S, S]`` is checked and returned as is
    (same dtype and device; a 3-D tensor gains a batch dimension). Inside a list, ``[3, S, S]`` tensors are
    stacked with the other items (cast to float32 on the CPU when the list mixes tensors and images).

    Raises:
        InputError: an empty list, or a tensor whose shape or dtype does not fit ``cfg.image_size``.
        ImageError: an unreadable image (see :func:`~edgeclip.runtime.decode.load_image`) or a tensor holding
            NaN/Inf.
    """
    check_bit_depth(bit_depth)
    if isinstance(images, torch.Tensor):
        _check_tensor(images, cfg, "preprocess")
        return images if images.ndim == 4 else images.unsqueeze(0)
    items = list(images) if isinstance(images, (list, tuple)) else [images]
    if not items:
        raise InputError("preprocess: no images given (empty list)")
    tensors = [isinstance(item, torch.Tensor) for item in items]
    if all(tensors):
        for i, item in enumerate(items):
            _check_item(item, cfg, i)
        return torch.stack(items)  # type: ignore[arg-type]
    pixels = torch.empty((len(items), 3, cfg.image_size, cfg.image_size), dtype=torch.uint8)
    notes = DepthNotes()
    for i, item in enumerate(items):
        if isinstance(item, torch.Tensor):
            _check_item(item, cfg, i)
            continue
        im = decode_image(item, max_pixels=max_pixels, background=background, bit_depth=bit_depth, notes=notes)
        pixels[i] = _to_input(im, cfg)
    notes.log()
    # the arithmetic of torchvision's ToTensor + Normalize: x / 255, then (x - mean) / std, in float32
    mean = torch.tensor(cfg.mean, dtype=torch.float32).view(1, 3, 1, 1)
    std = torch.tensor(cfg.std, dtype=torch.float32).view(1, 3, 1, 1)
    batch = pixels.to(torch.float32).div_(255).sub_(mean).div_(std)
    for i, item in enumerate(items):
        if isinstance(item, torch.Tensor):
            batch[i] = item.detach().to("cpu", torch.float32)
    return batch

