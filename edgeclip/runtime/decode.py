"""Reading images safely: any source -> an 8-bit RGB PIL image, with a clear error for bad input.

* :func:`load_image` reads a path, bytes, a binary stream, a PIL image or a numpy array and returns an 8-bit
  RGB PIL image. Every PIL mode is handled (alpha is composited onto a background, white by default; integer
  data deeper than 8 bits is scaled by its bit depth, see :func:`load_image`); EXIF orientation is applied;
  decompression bombs, empty, truncated, unreadable and non-image files raise
  :class:`~edgeclip.errors.ImageError` naming the source.
* :func:`iter_image_paths` expands folders into a sorted list of image files.

Only PIL and numpy are used.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import re
import threading
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import IO, Any

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from edgeclip.errors import ImageError, ImageTooLargeError, InputError

__all__ = [
    "ALPHA_BACKGROUND",
    "IMAGE_EXTENSIONS",
    "MAX_PIXELS",
    "ImageSource",
    "default_bit_depth",
    "iter_image_paths",
    "load_image",
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

ImageSource = str | os.PathLike | bytes | bytearray | memoryview | IO[bytes] | Image.Image | np.ndarray
"""Anything :func:`load_image` accepts."""

_ALPHA_MODES = frozenset({"RGBA", "RGBa", "LA", "La", "PA"})
_LOOKS_LIKE = (8, 10, 12, 14)  # common sensor depths (Mono8, Mono10, Mono12, Mono14) the range check names
_PIL_BOMB = re.compile(r"\((\d+) pixels\)")

# PIL keeps its decompression-bomb limit and its truncated-image switch in module globals. While this
# module decodes it sets them to what the call asked for and puts them back afterwards; the lock keeps two
# of our own decodes from interleaving those changes. See ``_pil_guard``.
_PIL_LOCK = threading.Lock()


# -- bit depth --------------------------------------------------------------------------------------------
def default_bit_depth(dtype: np.dtype | str) -> int:
    """The bit depth integer pixels of ``dtype`` are read with when no ``bit_depth`` is given.

    uint16 (and PIL's ``I;16`` modes, which are uint16 data) → 16; int32 (and PIL mode ``I``, whose pixels are
    int32: Pillow decodes 16-bit PGM/PPM files into it) → 16; uint8 and every other integer dtype (int8, int16,
    int64 — what ``np.array`` makes of Python ints —, uint32, uint64) → 8.
    """
    dt = np.dtype(dtype)
    return 16 if (dt.kind, dt.itemsize) in (("u", 2), ("i", 4)) else 8


def check_bit_depth(bit_depth: int | None) -> None:
    """Raise `InputError` unless ``bit_depth`` is None or an integer from 8 to 32."""
    if bit_depth is not None and (isinstance(bit_depth, bool) or not isinstance(bit_depth, int)
                                  or not 8 <= bit_depth <= 32):
        raise InputError(f"bit_depth must be an integer from 8 to 32 (or None for the default), got {bit_depth!r}")


class DepthNotes:
    """Integer data whose range suggests another bit depth than it was read with, logged once per call."""

    def __init__(self) -> None:
        self._seen: dict[tuple[str, int, int], list[Any]] = {}

    def add(self, name: str, what: str, hi: int, looks: int, read_as: int) -> None:
        entry = self._seen.setdefault((what, looks, read_as), [name, 0, 0])
        entry[1] += 1
        entry[2] = max(entry[2], hi)

    def __bool__(self) -> bool:
        return bool(self._seen)

    def log(self) -> None:
        for (what, looks, read_as), (name, count, hi) in self._seen.items():
            more = f" (and {count - 1} more image{'s' if count > 2 else ''})" if count > 1 else ""
            logger.warning(
                "%s%s: %s pixels reach at most %d, which looks like %d-bit data, but they are read as %d-bit "
                "data (the default for them), so the image comes out dark; pass bit_depth=%d (or bit_depth=%d "
                "to keep this scale and silence this warning)", name, more, what, hi, looks, read_as, looks, read_as)
        self._seen.clear()


def _scale_int(arr: np.ndarray, name: str, what: str, bit_depth: int | None, notes: DepthNotes) -> np.ndarray:
    """Integer pixels -> uint8 by their bit depth: ``round(x * 255 / (2**depth - 1))``."""
    if arr.dtype == np.uint8:
        return arr
    depth = bit_depth if bit_depth is not None else default_bit_depth(arr.dtype)
    top = (1 << depth) - 1
    lo, hi = int(arr.min()), int(arr.max())
    if lo < 0 or hi > top:
        source = "bit_depth" if bit_depth is not None else f"the default bit_depth for {arr.dtype}"
        raise ImageError(
            f"{name}: {what} pixels must lie in [0, {top}] for {depth}-bit data ({source}), got range "
            f"[{lo}, {hi}]; pass bit_depth= with the data's real depth (8 to 32), or scale negative data first"
        )
    if bit_depth is None and hi > 0:
        looks = next((d for d in _LOOKS_LIKE if hi < (1 << d)), depth)
        if looks < depth:
            notes.add(name, what, hi, looks, depth)
    if depth == 8:
        return arr.astype(np.uint8)
    return np.rint(arr.astype(np.float64) * (255.0 / top)).astype(np.uint8)


def _float_gray(arr: np.ndarray, name: str, kind: str) -> np.ndarray:
    """A PIL mode ``F`` channel -> uint8: [0, 1] scaled by 255, [0, 255] as is, anything else stretched."""
    arr = arr.astype(np.float64, copy=False)
    if not np.isfinite(arr).all():
        raise ImageError(f"{name}: {kind} contains NaN or Inf pixels")
    lo, hi = float(arr.min()), float(arr.max())
    if lo >= 0.0 and hi <= 1.0:
        return np.rint(arr * 255.0).astype(np.uint8)
    if lo >= 0.0 and hi <= 255.0:
        return np.rint(arr).astype(np.uint8)
    logger.warning("%s: %s pixel range [%g, %g] has no standard scale; stretching it to [0, 255]", name, kind, lo, hi)
    span = hi - lo
    if span == 0:
        return np.zeros(arr.shape, dtype=np.uint8)
    return np.rint((arr - lo) * (255.0 / span)).astype(np.uint8)


# -- decoding ---------------------------------------------------------------------------------------------
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


def _check_size(im: Image.Image, name: str, max_pixels: int | None) -> None:
    width, height = im.size
    if width <= 0 or height <= 0:
        raise ImageError(f"{name}: image has no pixels (size {width}x{height})")
    if max_pixels is not None and width * height > max_pixels:
        raise ImageTooLargeError(name, width * height, max_pixels, size=(width, height))


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
        # PIL found it (a GIF frame, a TIFF tile, ...): report the one limit of this call, not PIL's own
        found = _PIL_BOMB.search(str(exc))
        raise ImageTooLargeError(name, int(found.group(1)) if found else None, max_pixels or 0) from exc
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


def _composite(im: Image.Image, background: tuple[int, int, int]) -> Image.Image:
    rgba = im.convert("RGBA")
    base = Image.new("RGBA", rgba.size, (*background, 255))
    return Image.alpha_composite(base, rgba).convert("RGB")


def _pil_to_rgb(im: Image.Image, name: str, background: tuple[int, int, int], bit_depth: int | None,
                notes: DepthNotes) -> Image.Image:
    mode = im.mode
    if mode == "RGB" and "transparency" not in im.info:
        return im
    if mode.startswith("I;16") or mode == "I":
        arr = np.asarray(im)
        arr = arr.astype(arr.dtype.newbyteorder("="), copy=False)  # I;16B arrives big-endian
        gray = _scale_int(arr, name, f"mode {mode} image", bit_depth, notes)
        return Image.fromarray(gray, "L").convert("RGB")
    if mode == "F":
        return Image.fromarray(_float_gray(np.asarray(im), name, f"mode {mode} image"), "L").convert("RGB")
    has_alpha = mode in _ALPHA_MODES or "transparency" in im.info
    try:
        if has_alpha:
            return _composite(im, background)
        return im.convert("RGB")
    except (ValueError, OSError) as exc:
        raise ImageError(f"{name}: cannot convert mode {mode} to RGB ({exc})") from exc


def _array_to_pil(arr: np.ndarray, name: str, background: tuple[int, int, int], bit_depth: int | None,
                  notes: DepthNotes) -> Image.Image:
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
    elif kind in "ui":
        arr = _scale_int(arr, name, str(arr.dtype), bit_depth, notes)
    else:
        raise ImageError(f"{name}: unsupported pixel dtype {arr.dtype}")
    arr = np.ascontiguousarray(arr)
    channels = 1 if arr.ndim == 2 else arr.shape[-1]
    mode = {1: "L", 2: "LA", 3: "RGB", 4: "RGBA"}[channels]
    im = Image.fromarray(arr, mode)
    return _composite(im, background) if channels in (2, 4) else im.convert("RGB")


def decode_image(src: ImageSource, *, max_pixels: int | None, background: tuple[int, int, int],
                 bit_depth: int | None, notes: DepthNotes, apply_exif: bool = True) -> Image.Image:
    """:func:`load_image` with the bit-depth notes collected in ``notes`` (the caller logs them)."""
    name = _describe(src)
    background = tuple(int(c) for c in background)  # type: ignore[assignment]
    if isinstance(src, np.ndarray):
        return _array_to_pil(src, name, background, bit_depth, notes)
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
    return _pil_to_rgb(im, name, background, bit_depth, notes)


def load_image(
    src: ImageSource,
    *,
    max_pixels: int | None = MAX_PIXELS,
    background: tuple[int, int, int] = ALPHA_BACKGROUND,
    apply_exif: bool = True,
    bit_depth: int | None = None,
) -> Image.Image:
    """Read an image from a path, bytes, a binary stream, a PIL image or a numpy array; return it as RGB.

    Conversion rules:

    * alpha (RGBA, LA, PA, palette or grey/RGB images with a transparency key, H×W×2 / H×W×4 arrays) is
      composited onto ``background`` (default :data:`ALPHA_BACKGROUND`, white);
    * integer pixels of ``bit_depth`` bits are scaled by ``255 / (2**bit_depth - 1)``, so the largest
      ``bit_depth``-bit value becomes 255. The same rule holds for an array and for the PIL image of the same
      pixels. Without ``bit_depth`` the depth follows the data type (:func:`default_bit_depth`): uint8 and 8-bit
      PIL modes → 8; uint16 and PIL ``I;16*`` → 16; int32 and PIL ``I`` (int32 pixels; Pillow decodes 16-bit
      PGM/PPM into it) → 16; other integer arrays (int8, int16, int64, uint32, uint64) → 8. uint8 data is
      always 8-bit. Values outside ``[0, 2**bit_depth - 1]`` raise :class:`~edgeclip.errors.ImageError`.
      When the depth was not given and the data's maximum fits a smaller common depth (8, 10, 12 or 14 bits:
      uint16 data whose maximum is at most 4095 is most likely Mono12 sensor data), a warning is logged
      once per call naming the ``bit_depth=`` to pass;
    * mode ``F`` (float) in [0, 1] is scaled by 255 and in [0, 255] is used as is; any other range is
      stretched min→0, max→255 with a warning in the log;
    * float arrays must lie in [0, 1] (scaled by 255);
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
        bit_depth: significant bits of integer pixel data, 8 to 32 (``None``: by data type, see above).

    Raises:
        ImageError: naming the source and what is wrong: missing path, directory, empty, truncated, corrupt
            or non-image file, too many pixels (:class:`~edgeclip.errors.ImageTooLargeError`), no pixels,
            NaN/Inf or out-of-range values, odd array shapes.
        InputError: ``bit_depth`` is not an integer from 8 to 32.
    """
    check_bit_depth(bit_depth)
    notes = DepthNotes()
    im = decode_image(src, max_pixels=max_pixels, background=background, bit_depth=bit_depth, notes=notes,
                      apply_exif=apply_exif)
    notes.log()
    return im


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
