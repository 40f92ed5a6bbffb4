"""Classifying image files in batches, one result per file as soon as its batch is done.

`classify_files` is the loop behind ``edgeclip classify``: it decodes every file itself (so one unreadable
file becomes one error result and the run goes on), hands each batch of decoded images to any
``predict(images) -> Prediction`` callable (a zero-shot classifier, an adaptation method, ...) and yields a
`FileResult` per file, in input order.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from PIL import Image

from edgeclip.errors import EdgeClipError, InputError
from edgeclip.runtime.decode import MAX_PIXELS, DepthNotes, check_bit_depth, decode_image
from edgeclip.runtime.images import ALPHA_BACKGROUND
from edgeclip.runtime.prediction import Prediction

__all__ = ["FileResult", "Predict", "classify_files"]

log = logging.getLogger(__name__)

Predict = Callable[[list[Image.Image]], Prediction]
"""Anything that classifies a list of decoded RGB images: ``Classifier.predict``, a method's ``predict``."""


@dataclass(frozen=True)
class FileResult:
    """One file's outcome: ``record`` (label, confidence, top-k) or the ``exception`` that stopped it."""

    image: str
    record: dict[str, Any] | None = None
    exception: EdgeClipError | None = None

    @property
    def ok(self) -> bool:
        return self.exception is None

    @property
    def error(self) -> str | None:
        """The error message without the file name it starts with (``image`` names the file)."""
        if self.exception is None:
            return None
        text = str(self.exception)
        prefix = f"{self.image}: "
        return text[len(prefix):] if text.startswith(prefix) else text

    def to_dict(self) -> dict[str, Any]:
        """``{"image": ..., "label", "confidence", "top"}`` or ``{"image": ..., "error": ...}``."""
        if self.exception is not None:
            return {"image": self.image, "error": self.error}
        return {"image": self.image, **(self.record or {})}


def _predict_batch(predict: Predict, names: list[str], images: list[Image.Image], top_k: int) -> list[FileResult]:
    try:
        return [FileResult(n, rec) for n, rec in zip(names, predict(images).to_records(top_k), strict=True)]
    except EdgeClipError as exc:
        if len(images) == 1:
            return [FileResult(names[0], exception=exc)]
    # the batch failed as a whole: one image at a time, so only the files at fault are reported
    return [r for n, im in zip(names, images, strict=True) for r in _predict_batch(predict, [n], [im], top_k)]


def classify_files(
    paths: Sequence[str | os.PathLike],
    predict: Predict,
    *,
    batch_size: int = 32,
    top_k: int = 3,
    max_pixels: int | None = MAX_PIXELS,
    bit_depth: int | None = None,
    strict: bool = False,
) -> Iterator[FileResult]:
    """Yield one `FileResult` per path, in order, a batch at a time.

    A file that cannot be decoded or classified (an `EdgeClipError`: unreadable, truncated, too many pixels
    (``max_pixels``), out-of-range pixels for ``bit_depth``, ...) gives a result with its ``exception`` and the
    run goes on; with ``strict=True`` the first such result is the last one yielded. Other exceptions are bugs
    and propagate. A warning that integer pixels look like another bit depth is logged once per run.
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise InputError(f"batch_size must be a positive integer, got {batch_size!r}")
    if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1:
        raise InputError(f"top_k must be a positive integer, got {top_k!r}")
    check_bit_depth(bit_depth)
    notes, warned = DepthNotes(), False
    for start in range(0, len(paths), batch_size):
        chunk = [str(p) for p in paths[start : start + batch_size]]
        results: list[FileResult | None] = [None] * len(chunk)
        decoded: list[int] = []
        images: list[Image.Image] = []
        for i, name in enumerate(chunk):
            try:
                images.append(decode_image(name, max_pixels=max_pixels, background=ALPHA_BACKGROUND,
                                           bit_depth=bit_depth, notes=notes))
                decoded.append(i)
            except EdgeClipError as exc:
                results[i] = FileResult(name, exception=exc)
                if strict:
                    break
        if not warned and notes:
            notes.log()
            warned = True
        if images:
            done = _predict_batch(predict, [chunk[i] for i in decoded], images, top_k)
            for i, res in zip(decoded, done, strict=True):
                results[i] = res
        for res in results:
            if res is None:  # not reached: the run stopped at an earlier file (strict)
                return
            yield res
            if strict and not res.ok:
                return
