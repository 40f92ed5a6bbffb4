"""Reading images safely and turning them into CLIP's input tensor.

Three jobs, each with a clear error for bad input:

* :func:`load_image` reads a path, bytes, a binary stream, a PIL image or a numpy array and returns an 8-bit
  RGB PIL image. Every PIL mode is handled (alpha is composited onto a background, white by default;
  16-bit data is scaled, not clipped); EXIF orientation is applied; decompression bombs, empty, truncated,
  unreadable and non-image files raise :class:`~edgeclip.errors.ImageError` naming the source.
* :func:`iter_image_paths` expands folders into a sorted list of image files.
* :func:`preprocess` turns images into the normalized ``float32 [B, 3, S, S]`` tensor the exported image
  encoder takes, matching open_clip's inference transform (``open_clip.image_transform(..., is_train=False)``)
  for RGB inputs. The geometry (resize, crop, pad) is done with PIL exactly as torchvision does it for PIL
  images, so no torchvision import is needed.

Only PIL, numpy and torch are used.
"""

from __future__ import annotations

import contextlib
import io
import logging
import math
import os
import threading
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np
import torch
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from edgeclip.errors import ImageError, InputError

__all__ = [
    "ALPHA_BACKGROUND",
    "IMAGE_EXTENSIONS",
    "MAX_PIXELS",
    "OPENAI_MEAN",
    "OPENAI_STD",
    "ImageSource",
    "PreprocessConfig",
    "iter_image_paths",
    "load_image",
    "preprocess",
]

logger = logging.getLogger(__name__)

MAX_PIXELS: int = 64_000_000
"""Default largest image (width × height) :func:`load_image` decodes; larger ones are refused as
decompression bombs. Pass ``max_pixels=`` (or ``None`` for no limit) to change it per call."""

ALPHA_BACKGROUND: tuple[int, int, int] = (255, 255, 255)
"""Colour transparent pixels are composited onto. White, because transparent images are mostly logos,
icons and cut-out product shots drawn to be seen on a light page: dropping the alpha channel (what a bare
``convert("RGB")`` does) shows whatever colour hides under it, often black, which erases dark strokes."""

IMAGE_EXTENSIONS: frozenset[str] = frozenset(
    {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pbm", ".pnm"}
)
"""Suffixes (lower case) :func:`iter_image_paths` picks up when it expands a folder."""

OPENAI_MEAN: tuple[float, float, float] = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD: tuple[float, float, float] = (0.26862954, 0.26130258, 0.27577711)

_ALPHA_MODES = frozenset({"RGBA", "RGBa", "LA", "La", "PA"})
RESIZE_MODES: tuple[str, ...] = ("shortest", "longest", "squash")
_RESAMPLE: dict[str, Image.Resampling] = {
    "bicubic": Image.Resampling.BICUBIC,
    "bilinear": Image.Resampling.BILINEAR,
    "nearest": Image.Resampling.NEAREST,
}

ImageSource = str | os.PathLike | bytes | bytearray | memoryview | IO[bytes] | Image.Image | np.ndarray
"""Anything :func:`load_image` accepts."""

# PIL keeps its decompression-bomb limit and its truncated-image switch in module globals. While this
# module decodes it sets them to what the call asked for and puts them back afterwards; the lock keeps two
# of our own decodes from interleaving those changes. See ``_pil_guard``.
_PIL_LOCK = threading.Lock()


# --------------------------------------------------------------------------------------------------------
# configuration
# --------------------------------------------------------------------------------------------------------


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


# --------------------------------------------------------------------------------------------------------
# loading
# --------------------------------------------------------------------------------------------------------


def _describe(src: Any) -> str:
    if isinstance(src, (str, os.PathLike)):
        return str(src)
    if isinstance(src, (bytes, bytearray, memoryview)):
        return f"<{len(src)} bytes>"
    if isinstance(src, Image.Image):
        return f"<PIL image {src.mode} {src.size[0]}x{src.size[1]}>"
    if isinstance(src, np.ndarray):
        return f"<array {src.dtype} {tuple(src.shape)}>"
    name = getattr(src, "name", None)
    return str(name) if isinstance(name, str) else f"<{type(src).__name__}>"


@contextlib.contextmanager
def _pil_guard(max_pixels: int | None) -> Iterator[None]:
    """Make PIL's own checks agree with this call while it opens and decodes.

    PIL checks image sizes in several places (``Image.open``, GIF frames, TIFF tiles, ``draft``) against the
    global ``Image.MAX_IMAGE_PIXELS``: it warns above it and raises above twice it. For the duration of one
    decode the limit is set to ``max_pixels`` and the warning is raised as an error, so PIL refuses
    exactly what we refuse and a caller who raised the limit is not stopped by PIL's default.
    ``LOAD_TRUNCATED_IMAGES`` is forced off so a truncated file fails even if some other library switched
    it on. Both globals are put back afterwards; nothing leaks past the call. (Code in *other* threads that
    calls PIL directly during the decode sees these values.)
    """
    with _PIL_LOCK:
        saved_limit = Image.MAX_IMAGE_PIXELS
        saved_truncated = ImageFile.LOAD_TRUNCATED_IMAGES
        Image.MAX_IMAGE_PIXELS = max_pixels
        ImageFile.LOAD_TRUNCATED_IMAGES = False
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("error", Image.DecompressionBombWarning)
                yield
        finally:
            Image.MAX_IMAGE_PIXELS = saved_limit
            ImageFile.LOAD_TRUNCATED_IMAGES = saved_truncated


def _bomb_error(name: str, width: int, height: int, max_pixels: int) -> ImageError:
    return ImageError(
        f"{name}: image is {width}x{height} = {width * height:,} pixels, over the limit of {max_pixels:,} "
        "pixels (a possible decompression bomb); pass max_pixels= to load_image/preprocess to allow it"
    )


def _check_size(im: Image.Image, name: str, max_pixels: int | None) -> None:
    width, height = im.size
    if width <= 0 or height <= 0:
        raise ImageError(f"{name}: image has no pixels (size {width}x{height})")
    if max_pixels is not None and width * height > max_pixels:
        raise _bomb_error(name, width, height, max_pixels)


def _decode(opener: Any, name: str, max_pixels: int | None, apply_exif: bool) -> Image.Image:
    """Open (``opener()`` returns a PIL image, possibly lazy), check the size, force the full decode."""
    try:
        with _pil_guard(max_pixels):
            im = opener()
            _check_size(im, name, max_pixels)
            im.load()  # forces the decode here, so truncation and corruption surface now
            if apply_exif:
                try:
                    im = ImageOps.exif_transpose(im)
                except Exception as exc:  # a broken EXIF block must not cost the pixels
                    logger.warning("%s: ignoring unreadable EXIF orientation (%s)", name, exc)
    except ImageError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        limit = "no limit" if max_pixels is None else f"{max_pixels:,} pixels"
        detail = str(exc).rstrip(". ")
        raise ImageError(
            f"{name}: refused as a possible decompression bomb, over the limit of {limit} ({detail}); "
            "pass max_pixels= to load_image/preprocess to allow it"
        ) from exc
    except UnidentifiedImageError as exc:
        raise ImageError(f"{name}: not an image file PIL can read (unknown or unsupported format)") from exc
    except MemoryError as exc:
        raise ImageError(f"{name}: out of memory while decoding; is the image too large?") from exc
    except Exception as exc:  # PIL raises OSError, SyntaxError, ValueError, EOFError, zlib.error, ...
        raise ImageError(f"{name}: truncated or corrupt image ({type(exc).__name__}: {exc})") from exc
    return im


def _open_path(path: Path, max_pixels: int | None, apply_exif: bool) -> Image.Image:
    name = str(path)
    try:
        st = path.stat()
    except FileNotFoundError:
        raise ImageError(f"{name}: no such file") from None
    except OSError as exc:
        raise ImageError(f"{name}: cannot be accessed ({exc.strerror or exc})") from exc
    if path.is_dir():
        raise ImageError(f"{name}: is a directory, not an image file (iter_image_paths expands folders)")
    if not path.is_file():
        raise ImageError(f"{name}: is not a regular file")
    if st.st_size == 0:
        raise ImageError(f"{name}: file is empty (0 bytes)")
    try:
        data = path.read_bytes()  # read once, so the file handle is closed however decoding ends
    except OSError as exc:
        raise ImageError(f"{name}: cannot be read ({exc.strerror or exc})") from exc
    return _decode(lambda: Image.open(io.BytesIO(data)), name, max_pixels, apply_exif)


def _to_uint8_gray(arr: np.ndarray, name: str, kind: str) -> np.ndarray:
    """Scale one high-bit-depth or float channel to uint8 (see :func:`load_image` for the rules)."""
    if arr.dtype.kind == "f":
        arr = arr.astype(np.float64, copy=False)
        if not np.isfinite(arr).all():
            raise ImageError(f"{name}: {kind} contains NaN or Inf pixels")
        lo, hi = float(arr.min()), float(arr.max())
        if lo >= 0.0 and hi <= 1.0:
            return np.rint(arr * 255.0).astype(np.uint8)
        if lo >= 0.0 and hi <= 255.0:
            return np.rint(arr).astype(np.uint8)
    else:
        if arr.dtype.kind == "u" and arr.dtype.itemsize == 2:
            return np.rint(arr.astype(np.float64) / 257.0).astype(np.uint8)
        lo, hi = int(arr.min()), int(arr.max())
        if lo >= 0 and hi <= 65535:
            return np.rint(arr.astype(np.float64) / 257.0).astype(np.uint8)
        arr = arr.astype(np.float64)
    logger.warning(
        "%s: %s pixel range [%g, %g] has no standard scale; stretching it to [0, 255]", name, kind, lo, hi
    )
    span = hi - lo
    if span == 0:
        return np.zeros(arr.shape, dtype=np.uint8)
    return np.rint((arr - lo) * (255.0 / span)).astype(np.uint8)


def _composite(im: Image.Image, background: tuple[int, int, int]) -> Image.Image:
    rgba = im.convert("RGBA")
    base = Image.new("RGBA", rgba.size, (*background, 255))
    return Image.alpha_composite(base, rgba).convert("RGB")


def _pil_to_rgb(im: Image.Image, name: str, background: tuple[int, int, int]) -> Image.Image:
    mode = im.mode
    if mode == "RGB" and "transparency" not in im.info:
        return im
    if mode.startswith("I;16") or mode in ("I", "F"):
        gray = _to_uint8_gray(np.asarray(im), name, f"mode {mode} image")
        return Image.fromarray(gray, "L").convert("RGB")
    has_alpha = mode in _ALPHA_MODES or "transparency" in im.info
    try:
        if has_alpha:
            return _composite(im, background)
        return im.convert("RGB")
    except (ValueError, OSError) as exc:
        raise ImageError(f"{name}: cannot convert mode {mode} to RGB ({exc})") from exc


def _array_to_pil(arr: np.ndarray, name: str, background: tuple[int, int, int]) -> Image.Image:
    if arr.size == 0:
        raise ImageError(f"{name}: array has no pixels (shape {arr.shape})")
    if arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if arr.ndim == 3 and arr.shape[-1] not in (2, 3, 4):
        hint = "; it looks channel-first, pass H×W×C" if arr.shape[0] in (1, 3, 4) else ""
        raise ImageError(f"{name}: expected H×W, H×W×1, H×W×2, H×W×3 or H×W×4 pixels, got {arr.shape}{hint}")
    if arr.ndim not in (2, 3):
        raise ImageError(f"{name}: expected a 2-D (grey) or 3-D (H×W×C) array, got shape {arr.shape}")
    kind = arr.dtype.kind
    if kind == "b":
        arr = arr.astype(np.uint8) * 255
    elif kind == "f":
        arr = arr.astype(np.float64, copy=False)
        if not np.isfinite(arr).all():
            raise ImageError(f"{name}: array contains NaN or Inf pixels")
        lo, hi = float(arr.min()), float(arr.max())
        if lo < -1e-3 or hi > 1.0 + 1e-3:
            raise ImageError(
                f"{name}: float pixels must lie in [0, 1], got range [{lo:g}, {hi:g}]; "
                "pass uint8 for 0–255 data or uint16 for 16-bit data"
            )
        arr = np.rint(np.clip(arr, 0.0, 1.0) * 255.0).astype(np.uint8)
    elif kind == "u" and arr.dtype.itemsize == 2:
        arr = np.rint(arr.astype(np.float64) / 257.0).astype(np.uint8)
    elif kind in "ui" and arr.dtype != np.uint8:
        lo, hi = int(arr.min()), int(arr.max())
        if lo < 0 or hi > 255:
            raise ImageError(
                f"{name}: {arr.dtype} pixels must lie in [0, 255], got range [{lo}, {hi}]; "
                "pass uint8, uint16 (16-bit data) or floats in [0, 1]"
            )
        arr = arr.astype(np.uint8)
    elif arr.dtype != np.uint8:
        raise ImageError(f"{name}: unsupported pixel dtype {arr.dtype}")
    arr = np.ascontiguousarray(arr)
    channels = 1 if arr.ndim == 2 else arr.shape[-1]
    mode = {1: "L", 2: "LA", 3: "RGB", 4: "RGBA"}[channels]
    im = Image.fromarray(arr, mode)
    return _composite(im, background) if channels in (2, 4) else im.convert("RGB")


def load_image(
    src: ImageSource,
    *,
    max_pixels: int | None = MAX_PIXELS,
    background: tuple[int, int, int] = ALPHA_BACKGROUND,
    apply_exif: bool = True,
) -> Image.Image:
    """Read an image from a path, bytes, a binary stream, a PIL image or a numpy array; return it as RGB.

    Conversion rules:

    * alpha (RGBA, LA, PA, palette or grey/RGB images with a transparency key, H×W×2 / H×W×4 arrays) is
      composited onto ``background`` (default :data:`ALPHA_BACKGROUND`, white);
    * 16-bit grey (``I;16*`` modes, uint16 arrays) is scaled by 255/65535, so 65535 → 255;
    * mode ``I`` (32-bit int) with values in [0, 65535] is treated as 16-bit data and scaled the same way;
      mode ``F`` (float) in [0, 1] is scaled by 255 and in [0, 255] is used as is; any other range is
      stretched min→0, max→255 with a warning in the log;
    * float arrays must lie in [0, 1] (scaled by 255); other integer arrays must lie in [0, 255];
    * CMYK, YCbCr, 1-bit, palette and the rest go through PIL's ``convert("RGB")``;
    * multi-frame files (GIF, TIFF) give their first frame.

    EXIF orientation is applied for files, bytes and PIL images (``apply_exif=False`` turns it off).

    Args:
        src: the image.
        max_pixels: largest width × height decoded (default :data:`MAX_PIXELS`); ``None`` for no limit.
            Checked from the header before any pixel is decoded. Applies to files, bytes, streams and PIL
            images, not to numpy arrays (already in memory).
        background: RGB colour transparent pixels are composited onto.
        apply_exif: rotate/flip according to the EXIF Orientation tag.

    Raises:
        ImageError: naming the source and what is wrong: missing path, directory, empty, truncated, corrupt
            or non-image file, too many pixels, no pixels, NaN/Inf or out-of-range values, odd array shapes.
    """
    name = _describe(src)
    background = tuple(int(c) for c in background)  # type: ignore[assignment]
    if isinstance(src, np.ndarray):
        return _array_to_pil(src, name, background)
    if isinstance(src, (str, os.PathLike)):
        im = _open_path(Path(src), max_pixels, apply_exif)
    elif isinstance(src, (bytes, bytearray, memoryview)):
        data = bytes(src)
        if not data:
            raise ImageError(f"{name}: no data (0 bytes)")
        im = _decode(lambda: Image.open(io.BytesIO(data)), name, max_pixels, apply_exif)
    elif isinstance(src, Image.Image):
        im = _decode(lambda: src, name, max_pixels, apply_exif)
    elif hasattr(src, "read"):
        im = _decode(lambda: Image.open(src), name, max_pixels, apply_exif)  # type: ignore[arg-type]
    else:
        raise ImageError(
            f"cannot read an image from {type(src).__name__}: pass a path, bytes, a binary stream, "
            "a PIL image or a numpy array"
        )
    if getattr(im, "n_frames", 1) > 1:
        logger.debug("%s: %d frames, using the first", name, im.n_frames)
    return _pil_to_rgb(im, name, background)


def iter_image_paths(inputs: str | os.PathLike | Sequence[str | os.PathLike]) -> list[Path]:
    """Expand inputs into image file paths.

    Files are kept as given (whatever their suffix), in the given order. A folder is replaced by every
    file under it, recursively, whose suffix is in :data:`IMAGE_EXTENSIONS` (case-insensitive), sorted
    by path; hidden files and folders (names starting with ``.``) are skipped and symlinked folders are not
    followed. A single path may be passed instead of a sequence.

    Raises:
        ImageError: for an input that does not exist.
    """
    if isinstance(inputs, (str, os.PathLike)):
        inputs = [inputs]
    out: list[Path] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            found: list[Path] = []
            for root, dirs, files in os.walk(path):
                dirs[:] = [d for d in dirs if not d.startswith(".")]
                found.extend(
                    Path(root) / f
                    for f in files
                    if not f.startswith(".") and Path(f).suffix.lower() in IMAGE_EXTENSIONS
                )
            if not found:
                logger.warning("%s: folder holds no files with an image suffix", path)
            out.extend(sorted(found))
        elif path.exists():
            out.append(path)
        else:
            raise ImageError(f"{path}: no such file or directory")
    return out


# --------------------------------------------------------------------------------------------------------
# preprocessing
# --------------------------------------------------------------------------------------------------------


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
) -> torch.Tensor:
    """Turn images into the encoder input: normalized ``float32 [B, 3, S, S]``.

    ``images`` is one image or a list/tuple of them, each anything :func:`load_image` accepts. The result
    equals open_clip's ``image_transform(S, is_train=False, mean, std, resize_mode, interpolation)`` applied
    to the RGB image (to within float rounding; bit-identical in practice).

    An already-preprocessed float tensor ``[B, 3, S, S]`` or ``[3, S, S]`` is checked and returned as is
    (same dtype and device; a 3-D tensor gains a batch dimension). Inside a list, ``[3, S, S]`` tensors are
    stacked with the other items (cast to float32 on the CPU when the list mixes tensors and images).

    Raises:
        InputError: an empty list, or a tensor whose shape or dtype does not fit ``cfg.image_size``.
        ImageError: an unreadable image (see :func:`load_image`) or a tensor holding NaN/Inf.
    """
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
    for i, item in enumerate(items):
        if isinstance(item, torch.Tensor):
            _check_item(item, cfg, i)
            continue
        pixels[i] = _to_input(load_image(item, max_pixels=max_pixels, background=background), cfg)
    # the arithmetic of torchvision's ToTensor + Normalize: x / 255, then (x - mean) / std, in float32
    mean = torch.tensor(cfg.mean, dtype=torch.float32).view(1, 3, 1, 1)
    std = torch.tensor(cfg.std, dtype=torch.float32).view(1, 3, 1, 1)
    batch = pixels.to(torch.float32).div_(255).sub_(mean).div_(std)
    for i, item in enumerate(items):
        if isinstance(item, torch.Tensor):
            batch[i] = item.detach().to("cpu", torch.float32)
    return batch
