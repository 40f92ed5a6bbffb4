"""Where a feature pool's images come from: an image folder, a list of images, or a procedural spec.

* an **image folder** with one sub-folder per class: ``root/<class name>/*.png`` (labelled). The class name is
  the folder name with underscores read as spaces (``red_circle`` → ``red circle``). Folders are taken in
  sorted order unless ``class_names`` is given or ``root/classnames.txt`` lists the names (one per line, as
  :func:`edgeclip.data.shapes.save_image_folder` writes it); then that order is used. A folder of images with
  no class sub-folders is an unlabelled pool.
* a **list** of images (paths, PIL images, uint8 arrays), unlabelled, or labelled by ``labels=`` (indices into
  ``class_names``).
* a **procedural spec** ``"shapes[:N[:SHIFT]]"``: N images in total (default :data:`DEFAULT_PROCEDURAL_N`) of
  :mod:`edgeclip.data.shapes`, spread evenly over the classes (class ``i`` gets ``N // C`` images, one more for
  the first ``N % C``), under shift SHIFT (default ``clean``: a proxy set comes from the source domain, like
  PromptSync's LAION subset). They are rendered in chunks of :data:`PROCEDURAL_CHUNK`; chunk ``k`` uses
  ``SeedSequence(seed, spawn_key=(PROTOTYPE_STREAM, k))`` with ``seed`` defaulting to :data:`PROTOTYPE_SEED`.
  The evaluation stream renders ``make_batch(n, seed=EVAL_SEED + k)`` (an empty spawn key) and training
  ``SeedSequence(seed, spawn_key=(TRAIN_STREAM, step))``; seed sequences with different spawn keys are
  independent streams, so the proxy set never reproduces an evaluation or training image.

Every source has a ``fingerprint`` (file paths with sizes and modification times, the spec and its seed, or
the hash of in-memory pixels) that keys the pool cache, and loads any range of its items.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgeclip.errors import ClassNameError, InputError
from edgeclip.runtime.classnames import validate_class_names
from edgeclip.runtime.images import iter_image_paths

__all__ = [
    "DEFAULT_PROCEDURAL_N",
    "PROCEDURAL_CHUNK",
    "PROCEDURAL_RENDER_SIZE",
    "PROTOTYPE_SEED",
    "PROTOTYPE_STREAM",
    "PoolSource",
    "check_every_class_drawn",
    "norm_name",
    "open_source",
    "parse_procedural_spec",
    "procedural_batches",
]

log = logging.getLogger(__name__)

#: Base seed of the procedural proxy set (see the module docstring for why it cannot meet the evaluation set).
PROTOTYPE_SEED = 20_000
#: spawn_key tag of proxy-set chunks: ``SeedSequence(seed, spawn_key=(PROTOTYPE_STREAM, chunk))``. It differs
#: from ``edgeclip.micro.train.TRAIN_STREAM`` (0x7EA1), and evaluation seeds have an empty spawn key.
PROTOTYPE_STREAM = 0x960F
#: Images rendered per chunk of a procedural proxy set (bounds memory for large N).
PROCEDURAL_CHUNK = 256
#: Total images of ``"shapes"`` without a count (32 per class for the 16 shapes classes).
DEFAULT_PROCEDURAL_N = 512
PROCEDURAL_RENDER_SIZE = 64
_SPEC_RE = re.compile(r"^shapes(?::(?P<n>[^:]*))?(?::(?P<shift>[^:]*))?$")


def norm_name(name: str) -> str:
    """A class name compared case- and whitespace-insensitively."""
    return " ".join(name.split()).lower()


def parse_procedural_spec(spec: str) -> tuple[int, str] | None:
    """``"shapes"``, ``"shapes:512"``, ``"shapes:512:blur"``, ``"shapes::blur"`` → ``(n, shift)``; None when
    `spec` is not of that form. Raises :class:`~edgeclip.errors.InputError` for a bad count or shift."""
    from edgeclip.data.shapes import SHIFTS

    m = _SPEC_RE.match(spec.strip())
    if m is None:
        return None
    n_text, shift = (m.group("n") or "").strip(), (m.group("shift") or "").strip() or "clean"
    if n_text:
        if not n_text.isdigit() or int(n_text) < 1:
            raise InputError(f"procedural spec {spec!r}: the image count must be a positive integer, got {n_text!r}")
        n = int(n_text)
    else:
        n = DEFAULT_PROCEDURAL_N
    if shift not in SHIFTS:
        raise InputError(f"procedural spec {spec!r}: unknown shift {shift!r}; valid shifts: {', '.join(SHIFTS)}")
    return n, shift


def procedural_batches(n: int, class_index: Sequence[int], *, shift: str = "clean", seed: int = PROTOTYPE_SEED,
                       chunk: int = PROCEDURAL_CHUNK,
                       render_size: int = PROCEDURAL_RENDER_SIZE) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """The procedural proxy set: chunks ``(images uint8 [k, H, W, 3], rows [k])`` where ``rows`` index into
    `class_index` (the shapes labels wanted). N images spread evenly over the classes; chunk ``j`` drawn from
    ``SeedSequence(seed, spawn_key=(PROTOTYPE_STREAM, j))``, disjoint from the evaluation and training seeds."""
    for j in range(0, (n + chunk - 1) // chunk):
        yield _procedural_chunk(n, class_index, j, shift=shift, seed=seed, chunk=chunk, render_size=render_size)


def _procedural_chunk(n: int, class_index: Sequence[int], j: int, *, shift: str, seed: int, chunk: int,
                      render_size: int) -> tuple[np.ndarray, np.ndarray]:
    from edgeclip.data.shapes import make_batch

    labels = np.asarray(class_index, dtype=np.int64)
    rows = (np.arange(j * chunk, min(n, (j + 1) * chunk), dtype=np.int64)) % len(labels)
    ss = np.random.SeedSequence(seed, spawn_key=(PROTOTYPE_STREAM, j))
    batch = make_batch(len(rows), seed=ss, shift=shift, render_size=render_size, labels=labels[rows])
    return batch.images, rows


@dataclass
class PoolSource:
    """Images to encode: ``items`` (ids for the pool: a path, or ``shapes:<seed>:<i>``), ``labels`` (``[M]``
    int64, -1 = unlabelled), ``class_names`` (None for an unlabelled source), a ``fingerprint`` for the
    cache key, and ``load(start, stop)`` giving the images of items ``start..stop-1``."""

    items: list[str]
    labels: np.ndarray
    class_names: list[str] | None
    fingerprint: dict[str, Any]
    description: dict[str, Any]
    _images: Sequence[Any] | None = None
    _procedural: dict[str, Any] | None = None
    _chunk_cache: dict[int, np.ndarray] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.items)

    def load(self, start: int, stop: int) -> list[Any]:
        """The images of items ``start..stop-1`` (paths, PIL images or uint8 arrays; decoded later)."""
        if self._procedural is None:
            if self._images is not None:
                return list(self._images[start:stop])
            return [Path(p) for p in self.items[start:stop]]
        p = self._procedural
        out: list[Any] = []
        for i in range(start, stop):
            j, k = divmod(i, p["chunk"])
            if j not in self._chunk_cache:
                self._chunk_cache.clear()  # keep one chunk of pixels at a time
                self._chunk_cache[j] = _procedural_chunk(p["n"], p["class_index"], j, shift=p["shift"],
                                                         seed=p["seed"], chunk=p["chunk"],
                                                         render_size=p["render_size"])[0]
            out.append(self._chunk_cache[j][k])
        return out


def _file_fingerprint(paths: Sequence[Path]) -> list[list[Any]]:
    out = []
    for p in paths:
        st = p.stat()
        out.append([str(p.resolve()), st.st_size, st.st_mtime_ns])
    return out


def _folder_classes(root: Path, class_names: Sequence[str] | None) -> tuple[list[str], list[list[Path]]]:
    folders = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    by_name: dict[str, Path] = {}
    for p in folders:
        key = norm_name(p.name.replace("_", " "))
        if key in by_name:
            raise ClassNameError(f"class folders {by_name[key].name!r} and {p.name!r} name the same class")
        by_name[key] = p
    origin = "the class list"
    if class_names is None and (root / "classnames.txt").is_file():
        lines = (root / "classnames.txt").read_text(encoding="utf-8-sig").splitlines()
        class_names = [ln for ln in (" ".join(x.split()) for x in lines) if ln]
        origin = str(root / "classnames.txt")
    if class_names is None:
        names = validate_class_names([" ".join(p.name.replace("_", " ").split()) for p in folders])
    else:
        names = validate_class_names(class_names)
        missing = [n for n in names if norm_name(n) not in by_name]
        if missing:
            raise InputError(f"class(es) {missing[:8]} from {origin} have no folder in {root} "
                             f"(folders: {[p.name for p in folders][:8]})")
        unused = sorted(set(by_name) - {norm_name(n) for n in names})
        if unused:
            log.warning("%s: ignoring folders not in %s: %s", root, origin, unused[:8])
    paths = []
    for name in names:
        folder = by_name[norm_name(name)]
        found = iter_image_paths(folder)
        if not found:
            raise InputError(f"class {name!r}: folder {folder} holds no images "
                             "(every class needs at least one image)")
        paths.append(found)
    return names, paths


def _folder_source(root: Path, class_names: Sequence[str] | None) -> PoolSource:
    if not root.is_dir():
        raise InputError(f"{root} is not a folder; expected {root}/<class name>/<images>")
    has_classes = any(p.is_dir() and not p.name.startswith(".") for p in root.iterdir())
    if not has_classes:
        paths = iter_image_paths(root)
        if not paths:
            raise InputError(f"{root} holds no images and no class sub-folders; expected {root}/<class name>/<images>")
        return _list_source(paths, None, class_names, kind="image_folder", root=root)
    names, per_class = _folder_classes(root, class_names)
    flat = [p for ps in per_class for p in ps]
    labels = np.concatenate([np.full(len(ps), c, dtype=np.int64) for c, ps in enumerate(per_class)])
    desc = {"type": "image_folder", "path": str(root.resolve()), "images": len(flat)}
    fp = {"type": "image_folder", "class_names": names, "labels": labels.tolist(), "files": _file_fingerprint(flat)}
    return PoolSource([str(p) for p in flat], labels, names, fp, desc)


def _list_source(images: Sequence[Any], labels: Sequence[int] | None, class_names: Sequence[str] | None, *,
                 kind: str = "list", root: Path | None = None) -> PoolSource:
    if len(images) == 0:
        raise InputError("a feature pool needs at least one image")
    names = validate_class_names(class_names) if class_names is not None else None
    if labels is None:
        lab = np.full(len(images), -1, dtype=np.int64)
    else:
        if names is None:
            raise InputError("labels= needs class_names= (the labels index into it)")
        lab = np.asarray(labels)
        if lab.shape != (len(images),) or not np.issubdtype(lab.dtype, np.integer):
            raise InputError(f"labels must be {len(images)} integers, got {lab.dtype} {list(lab.shape)}")
        lab = lab.astype(np.int64)
        if lab.min() < 0 or lab.max() >= len(names):
            raise InputError(f"labels must lie in [0, {len(names)}), got {int(lab.min())}..{int(lab.max())}")
    items: list[str] = []
    prints: list[Any] = []
    in_memory = not all(isinstance(x, (str, os.PathLike)) for x in images)
    for i, x in enumerate(images):
        if isinstance(x, (str, os.PathLike)):
            p = Path(x)
            if not p.is_file():
                raise InputError(f"{p}: no such image file")
            items.append(str(p))
            prints.append(_file_fingerprint([p])[0])
        else:
            arr = np.asarray(x)
            items.append(f"image:{i}")
            prints.append([list(arr.shape), str(arr.dtype), hashlib.sha256(arr.tobytes()).hexdigest()])
    desc: dict[str, Any] = {"type": kind, "images": len(items)}
    if root is not None:
        desc["path"] = str(root.resolve())
    fp = {"type": kind, "class_names": names, "labels": lab.tolist(), "items": prints}
    return PoolSource(items, lab, names, fp, desc, _images=list(images) if in_memory else None)


def _procedural_source(spec: tuple[int, str], class_names: Sequence[str] | None, seed: int) -> PoolSource:
    from edgeclip.data import shapes

    n, shift = spec
    all_names = shapes.class_names()
    index = {norm_name(c): i for i, c in enumerate(all_names)}
    names = all_names if class_names is None else validate_class_names(class_names)
    unknown = [c for c in names if norm_name(c) not in index]
    if unknown:
        raise ClassNameError(f"class(es) {unknown[:8]} are not shapes classes; valid: {', '.join(all_names)}")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise InputError(f"seed must be a non-negative int, got {seed!r}")
    wanted = [index[norm_name(c)] for c in names]
    labels = np.arange(n, dtype=np.int64) % len(wanted)
    desc = {"type": "procedural", "dataset": "edgeclip.data.shapes", "n": n, "shift": shift, "seed": seed,
            "stream": PROTOTYPE_STREAM, "chunk": PROCEDURAL_CHUNK, "render_size": PROCEDURAL_RENDER_SIZE}
    proc = {"n": n, "class_index": wanted, "shift": shift, "seed": seed, "chunk": PROCEDURAL_CHUNK,
            "render_size": PROCEDURAL_RENDER_SIZE}
    fp = {**desc, "class_names": names, "class_index": wanted}
    items = [f"shapes:{seed}:{i}" for i in range(n)]
    return PoolSource(items, labels, names, fp, desc, _procedural=proc)


def check_every_class_drawn(data: Any, class_names: Sequence[str] | None) -> None:
    """For a procedural spec: raise `InputError` when it draws fewer images than there are classes (some class
    would get none; prototypes need every class)."""
    from edgeclip.data import shapes

    spec = parse_procedural_spec(data) if isinstance(data, str) and not Path(data).expanduser().is_dir() else None
    if spec is None:
        return
    n, n_classes = spec[0], len(shapes.class_names() if class_names is None else class_names)
    if n < n_classes:
        raise InputError(f"shapes:{n} gives {n} images for {n_classes} classes, so some class would have none; "
                         f"ask for at least {n_classes} (e.g. shapes:{32 * n_classes})")


def open_source(data: Any, *, class_names: Sequence[str] | None = None, labels: Sequence[int] | None = None,
                seed: int = PROTOTYPE_SEED) -> PoolSource:
    """The `PoolSource` for `data`: a folder, a procedural spec ``"shapes[:N[:SHIFT]]"``, or a list of images.

    An existing folder wins over a spec of the same spelling. `seed` is the procedural spec's base seed.
    """
    if isinstance(data, (str, os.PathLike)):
        path = Path(data).expanduser()
        spec = parse_procedural_spec(str(data)) if isinstance(data, str) else None
        if path.is_dir():
            if spec is not None:
                log.warning("%r is an existing folder; reading images from it rather than the procedural spec", data)
            if labels is not None:
                raise InputError("labels= goes with a list of images, not a folder (its sub-folders are the labels)")
            return _folder_source(path, class_names)
        if spec is not None:
            if labels is not None:
                raise InputError("labels= goes with a list of images, not a procedural spec")
            return _procedural_source(spec, class_names, seed)
        if path.is_file():
            return _list_source([path], labels, class_names)
        raise InputError(f"image folder {path} does not exist (and {str(data)!r} is not a spec like 'shapes:512')")
    if isinstance(data, Sequence) and not isinstance(data, (bytes, bytearray)):
        return _list_source(data, labels, class_names)
    if isinstance(data, np.ndarray) and data.ndim == 4:
        return _list_source(list(data), labels, class_names)
    raise InputError(f"a feature pool reads a folder, a spec like 'shapes:512' or a list of images, "
                     f"not {type(data).__name__}")
