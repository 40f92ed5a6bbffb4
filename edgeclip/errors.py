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


class ClassNameError(EdgeClipError):
    """A class list is empty, has duplicates, or holds a name that does not fit the text context."""


class InputError(EdgeClipError):
    """A tensor given to an encoder or a head has the wrong shape, dtype or values."""


class BackendError(EdgeClipError):
    """A requested backend is not installed or cannot run on this machine."""
