"""Images in, CLIP's input tensor out: the public names of :mod:`edgeclip.runtime.decode` (reading any image
source safely into 8-bit RGB) and :mod:`edgeclip.runtime.preprocess` (open_clip-exact resize, crop and
normalisation), importable from one place."""

from __future__ import annotations

from edgeclip.runtime.decode import (
    ALPHA_BACKGROUND,
    IMAGE_EXTENSIONS,
    MAX_PIXELS,
    ImageSource,
    default_bit_depth,
    iter_image_paths,
    load_image,
)
from edgeclip.runtime.preprocess import (
    INTERPOLATIONS,
    OPENAI_MEAN,
    OPENAI_STD,
    RESIZE_MODES,
    PreprocessConfig,
    preprocess,
)

__all__ = [
    "ALPHA_BACKGROUND",
    "IMAGE_EXTENSIONS",
    "INTERPOLATIONS",
    "MAX_PIXELS",
    "OPENAI_MEAN",
    "OPENAI_STD",
    "RESIZE_MODES",
    "ImageSource",
    "PreprocessConfig",
    "default_bit_depth",
    "iter_image_paths",
    "load_image",
    "preprocess",
]
