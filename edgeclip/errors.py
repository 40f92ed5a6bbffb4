"""Exceptions raised by edgeclip: every one names what was wrong and, where there is one, the fix."""

from __future__ import annotations


class EdgeClipError(Exception):
    """Base class of every error edgeclip raises on purpose."""


class BundleError(EdgeClipError):
    """A bundle is missing, incomplete, corrupt, or of a format this version cannot read."""


class ExportError(EdgeClipError):
    """A model could not be exported, or the exported graph failed its parity check."""


class ImageError(EdgeClipError):
    """An image could not be read or is unusable (truncated, empty, too large, NaN pixels)."""


class ImageTooLargeError(ImageError):
    """An image has more pixels than the decoder's limit (a possible decompression bomb).

    ``problem`` says what was refused without the fix, so a caller that exposes the limit under another
    name (the command line's ``--max-pixels``) can word the fix itself; ``str(error)`` names the Python
    argument (``max_pixels=``).
    """

    def __init__(self, source: str, pixels: int | None, max_pixels: int, size: tuple[int, int] | None = None) -> None:
        self.source = source
        self.pixels = pixels
        self.max_pixels = max_pixels
        if size is not None:
            what = f"image is {size[0]}x{size[1]} = {size[0] * size[1]:,} pixels"
        elif pixels is not None:
            what = f"image has {pixels:,} pixels"
        else:
            what = "image has too many pixels"
        self.problem = f"{source}: {what}, over the limit of {max_pixels:,} pixels (a possible decompression bomb)"
        super().__init__(f"{self.problem}; pass max_pixels= (None for no limit) to load_image/preprocess to allow it")


class ClassNameError(EdgeClipError, ValueError):
    """A class list is empty, has duplicates or holds a name that does not fit the text context; a class file
    cannot be read; or a prompt template does not have exactly one ``{}``."""


class InputError(EdgeClipError, ValueError):
    """A value given to edgeclip (a tensor for an encoder or a head, an argument) has the wrong shape, dtype,
    type or range."""


class BackendError(EdgeClipError):
    """A requested backend is not installed or cannot run on this machine."""


class SessionError(EdgeClipError):
    """A `Session` was used after `close()`, or its queue was full and the caller asked not to wait."""


class SourceError(EdgeClipError):
    """A frame source could not be opened or failed while reading."""


class VideoWriteError(EdgeClipError):
    """A video file could not be opened for writing, or finishing it failed."""
