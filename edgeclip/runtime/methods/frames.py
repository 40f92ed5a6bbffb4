"""Frames for test-time adaptation: any image source -> one uint8 ``H×W×3`` tensor, and its views."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import torch

from edgeclip.errors import ImageError
from edgeclip.kernels import augment_views
from edgeclip.runtime.images import PreprocessConfig, load_image
from edgeclip.runtime.methods.config import ViewFn

__all__ = ["ViewFn", "as_frame", "iter_frames", "kernel_views"]

def as_frame(image: Any) -> torch.Tensor:
    """One image (path, bytes, PIL image, uint8 array or tensor ``H×W×3``) as a uint8 CPU tensor ``H×W×3``."""
    if isinstance(image, torch.Tensor):
        if image.dtype != torch.uint8 or image.dim() != 3 or image.shape[-1] != 3:
            raise ImageError(f"a frame tensor must be uint8 H×W×3, got {image.dtype} {list(image.shape)}")
        return image.contiguous()
    return torch.from_numpy(np.asarray(load_image(image), dtype=np.uint8).copy())


def iter_frames(images: Any) -> Iterable[torch.Tensor]:
    """A batch of frames: a uint8 array/tensor ``[B, H, W, 3]``, or a sequence of single images."""
    if isinstance(images, (np.ndarray, torch.Tensor)) and images.ndim == 4:
        for i in range(images.shape[0]):
            yield as_frame(images[i])
        return
    if isinstance(images, (str, bytes)) or not isinstance(images, Sequence):
        yield as_frame(images)
        return
    for image in images:
        yield as_frame(image)


def kernel_views(cfg: PreprocessConfig, **kwargs: Any) -> ViewFn:
    """The fast path's views: `edgeclip.kernels.augment_views` at the encoder's input size and normalisation."""

    def views(frame: torch.Tensor, n_views: int, generator: torch.Generator) -> torch.Tensor:
        out, _ = augment_views(frame, n_views, cfg.image_size, mean=cfg.mean, std=cfg.std, generator=generator,
                               **kwargs)
        return out

    return views
