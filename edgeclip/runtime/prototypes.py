"""Class prototypes: the normalised mean image embedding of every class, built offline from a proxy set.

PromptSync aligns a test sample's prototype to these (METHODS.md, PromptSync: ``P ∈ R^{C×D}``), and the
online prototype methods start from them. They are computed by the bundle's *exported* image encoder
(``EdgeClip.encode_images``), so on the device they live in the same space as the test embeddings.

Sources (:func:`build_prototypes`):

* an **image folder** with one sub-folder per class: ``root/<class name>/*.png``; the class name is the
  folder name with underscores read as spaces (``red_circle`` → ``red circle``). Folders are taken in
  sorted order unless ``class_names`` is given or ``root/classnames.txt`` lists the names (one per line, as
  :func:`edgeclip.data.shapes.save_image_folder` writes it); then that order is used.
* a **procedural spec** ``"shapes[:N[:SHIFT]]"``: N images in total (default :data:`DEFAULT_PROCEDURAL_N`)
  of :mod:`edgeclip.data.shapes`, spread evenly over the classes (class ``i`` gets ``N // C`` images, one
  more for the first ``N % C``), under shift SHIFT (default ``clean``: a proxy set comes from the source
  domain, like the paper's LAION subset). The images are rendered in chunks of :data:`PROCEDURAL_CHUNK`;
  chunk ``k`` uses ``SeedSequence(seed, spawn_key=(PROTOTYPE_STREAM, k))`` with ``seed`` defaulting to
  :data:`PROTOTYPE_SEED`. The evaluation stream renders ``make_batch(n, seed=EVAL_SEED + k)`` (an empty spawn
  key) and training ``SeedSequence(seed, spawn_key=(TRAIN_STREAM, step))``; seed sequences with different
  spawn keys are independent streams, so the proxy set never reproduces an evaluation or training image.

Storage (:meth:`ClassPrototypes.save`): one safetensors file holding ``embeds`` (float32 ``[C, D]``) and
``counts`` (int64 ``[C]``), with the class names and a JSON ``meta`` block (the bundle, the sha256 of its
manifest and encoders, the source, the date, the tool versions) in the header. It is written atomically
(temporary file in the same folder, then ``os.replace``). The default place is *beside* the bundle
(:func:`default_prototypes_path`), not inside it: a bundle is verified file by file against its manifest,
and prototypes are rebuilt from different proxy sets without re-exporting anything.
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import os
import re
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import save_file
from tqdm import tqdm

from edgeclip.errors import BundleError, ClassNameError, EdgeClipError, ImageError, InputError
from edgeclip.runtime.classnames import validate_class_names
from edgeclip.runtime.images import iter_image_paths
from edgeclip.runtime.model import DEFAULT_TEMPLATE, EdgeClip

__all__ = [
    "DEFAULT_PROCEDURAL_N",
    "FORMAT",
    "FORMAT_VERSION",
    "PROCEDURAL_CHUNK",
    "PROTOTYPE_SEED",
    "PROTOTYPE_STREAM",
    "ClassPrototypes",
    "build_prototypes",
    "default_prototypes_path",
    "parse_procedural_spec",
    "procedural_batches",
    "resolve_prototypes",
    "text_fallback",
]

log = logging.getLogger(__name__)

FORMAT = "edgeclip.prototypes"
FORMAT_VERSION = 1
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
_NORM_TOL = 1e-3


def _norm_name(name: str) -> str:
    return " ".join(name.split()).lower()


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def default_prototypes_path(bundle_path: str | os.PathLike) -> Path:
    """Where the prototypes of a bundle live by default: a file *beside* the bundle folder.

    ``/models/vitb16`` → ``/models/vitb16.prototypes.safetensors``; a trailing ``.bundle`` is dropped, so
    ``/x/micro.bundle`` → ``/x/micro.prototypes.safetensors``. Beside, not inside: the bundle is verified
    against its manifest's hashes, and prototypes change without re-exporting.
    """
    p = Path(bundle_path).expanduser()
    stem = p.name[: -len(".bundle")] if p.name.endswith(".bundle") and len(p.name) > len(".bundle") else p.name
    if not stem:
        raise InputError(f"cannot derive a prototypes path from bundle path {str(bundle_path)!r}")
    return p.parent / f"{stem}.prototypes.safetensors"


def _bundle_identity(model: EdgeClip) -> dict[str, Any]:
    """What identifies the encoders that made a set of prototypes: bundle path and hashes."""
    from edgeclip.runtime.bundle import IMAGE_ONNX, MANIFEST, TEXT_ONNX, sha256_file

    bundle = model.bundle
    files = bundle.manifest.get("files", {})
    manifest = Path(bundle.path) / MANIFEST
    return {
        "bundle": str(bundle.path),
        "bundle_manifest_sha256": sha256_file(manifest) if manifest.is_file() else None,
        "image_encoder_sha256": files.get(IMAGE_ONNX, {}).get("sha256"),
        "text_encoder_sha256": files.get(TEXT_ONNX, {}).get("sha256"),
        "architecture": bundle.manifest.get("source", {}).get("architecture"),
        "embed_dim": bundle.embed_dim,
        "backend": model.backend,
    }


def _versions() -> dict[str, str]:
    from edgeclip import __version__

    return {"edgeclip": __version__, "torch": torch.__version__}


# ----------------------------------------------------------------------------------------------------------
# the prototypes
# ----------------------------------------------------------------------------------------------------------


@dataclass
class ClassPrototypes:
    """Per-class prototypes ``embeds [C, D]`` (float32, rows L2-normalised) with their class names.

    Attributes:
        embeds: the normalised mean image embedding of each class (or its text embedding for a text fallback).
        class_names: the C class names, in row order.
        counts: ``[C]`` int64, how many images went into each row (0 for text fallback rows).
        meta: JSON-ready provenance: ``kind`` (``"images"`` or ``"text"``), ``source``, the bundle and its
            hashes, ``created`` (UTC), ``versions``.

    The constructor checks shapes and values (:class:`~edgeclip.errors.InputError`,
    :class:`~edgeclip.errors.ClassNameError`) and normalises the rows.
    """

    embeds: torch.Tensor
    class_names: list[str]
    counts: torch.Tensor | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        e = self.embeds
        if not isinstance(e, torch.Tensor) or e.dim() != 2 or e.shape[0] < 1 or e.shape[1] < 1:
            got = list(e.shape) if isinstance(e, torch.Tensor) else type(e).__name__
            raise InputError(f"prototype embeds must be a tensor [C, D] with C, D >= 1, got {got}")
        if not e.is_floating_point():
            raise InputError(f"prototype embeds must be floating point, got {e.dtype}")
        e = e.detach().to("cpu", torch.float32)
        if not bool(torch.isfinite(e).all()):
            raise InputError("prototype embeds contain NaN or Inf")
        norms = e.norm(dim=1)
        if bool((norms < 1e-12).any()):
            bad = [int(i) for i in (norms < 1e-12).nonzero().flatten()[:5]]
            raise InputError(f"prototype rows {bad} are zero vectors and cannot be normalised")
        # rows already unit to float precision are kept bit for bit, so save/load/aligned round trips are exact
        unit = ((norms - 1).abs() <= 1e-6).unsqueeze(1)
        self.embeds = torch.where(unit, e, F.normalize(e, dim=1)).contiguous()
        self.class_names = validate_class_names(self.class_names)
        if len(self.class_names) != e.shape[0]:
            raise ClassNameError(f"{len(self.class_names)} class names for {e.shape[0]} prototype rows")
        counts = torch.zeros(e.shape[0], dtype=torch.int64) if self.counts is None else self.counts
        counts = torch.as_tensor(counts)
        if counts.shape != (e.shape[0],) or counts.is_floating_point() or bool((counts < 0).any()):
            raise InputError(f"prototype counts must be {e.shape[0]} non-negative integers, got {counts.tolist()}")
        self.counts = counts.to("cpu", torch.int64).contiguous()
        if not isinstance(self.meta, dict):
            raise InputError(f"prototype meta must be a dict, got {type(self.meta).__name__}")

    # -- shape -------------------------------------------------------------------------------------------
    @property
    def n_classes(self) -> int:
        return int(self.embeds.shape[0])

    @property
    def dim(self) -> int:
        return int(self.embeds.shape[1])

    @property
    def kind(self) -> str:
        """``"images"`` (built from images) or ``"text"`` (the text fallback)."""
        return str(self.meta.get("kind", "images"))

    # -- compatibility -----------------------------------------------------------------------------------
    def check_compatible(self, model: EdgeClip, class_names: Sequence[str] | None = None, *,
                         strict: bool = True) -> None:
        """Raise unless these prototypes fit `model` (and, when given, `class_names` in that order).

        Raises:
            BundleError: the embedding width differs from the bundle's, or (``strict``) the prototypes record
                an encoder sha256 different from the bundle's (made by another model: rebuild them). With
                ``strict=False`` the hash mismatch is only logged.
            ClassNameError: the class names differ (missing or extra names, or another order; for another
                order or a subset use :meth:`aligned`).
        """
        width = model.bundle.embed_dim
        if self.dim != width:
            raise BundleError(
                f"prototypes have embedding width {self.dim} but bundle {model.bundle.path} embeds to {width}: "
                "they were built with another model; rebuild them with `edgeclip prototypes build --bundle ...`"
            )
        key = "text_encoder_sha256" if self.kind == "text" else "image_encoder_sha256"
        mine = self.meta.get(key)
        theirs = _bundle_identity(model).get(key)
        if mine and theirs and mine != theirs:
            msg = (f"prototypes were built by an encoder with sha256 {mine[:12]}…, bundle {model.bundle.path} has "
                   f"{theirs[:12]}… (another model or export): rebuild them with `edgeclip prototypes build`")
            if strict:
                raise BundleError(msg)
            log.warning("%s", msg)
        if class_names is not None:
            want = validate_class_names(class_names)
            have = [_norm_name(n) for n in self.class_names]
            if [_norm_name(n) for n in want] != have:
                missing = [n for n in want if _norm_name(n) not in have]
                extra = [n for n in self.class_names if _norm_name(n) not in {_norm_name(w) for w in want}]
                if not missing and not extra:
                    detail = "the same classes in another order; use prototypes.aligned(class_names)"
                else:
                    detail = (f"missing {missing[:8]}" if missing else "") + (
                        (", " if missing and extra else "") + (f"extra {extra[:8]}" if extra else ""))
                raise ClassNameError(f"prototype classes do not match the class list: {detail}")

    def aligned(self, class_names: Sequence[str]) -> ClassPrototypes:
        """The rows for `class_names`, in that order (a reordering or a subset; names compare case- and
        whitespace-insensitively). Raises :class:`~edgeclip.errors.ClassNameError` for a class without a row."""
        want = validate_class_names(class_names)
        index = {_norm_name(n): i for i, n in enumerate(self.class_names)}
        missing = [n for n in want if _norm_name(n) not in index]
        if missing:
            raise ClassNameError(
                f"no prototype for class(es) {missing[:8]}; the prototypes cover {self.class_names[:8]}"
                + ("…" if self.n_classes > 8 else "") + "; rebuild them with those classes"
            )
        rows = torch.tensor([index[_norm_name(n)] for n in want], dtype=torch.int64)
        return ClassPrototypes(self.embeds[rows].clone(), want, self.counts[rows].clone(), dict(self.meta))

    # -- text fallback -----------------------------------------------------------------------------------
    @classmethod
    def text_fallback(cls, model: EdgeClip, class_names: Sequence[str],
                      template: str = DEFAULT_TEMPLATE) -> ClassPrototypes:
        """Prototypes made of the class text embeddings (``template.format(name)``), for when no image
        prototypes exist. ``meta["kind"] == "text"`` says so; counts are 0."""
        if "{}" not in template:
            raise ClassNameError(f"template {template!r} must contain '{{}}' where the class name goes")
        names = validate_class_names(class_names)
        embeds = model.encode_text([template.format(n) for n in names]).float().cpu()
        meta = {"kind": "text", "source": {"type": "text", "template": template},
                **_bundle_identity(model), "created": _now(), "versions": _versions()}
        return cls(embeds, names, torch.zeros(len(names), dtype=torch.int64), meta)

    # -- files -------------------------------------------------------------------------------------------
    def save(self, path: str | os.PathLike) -> Path:
        """Write to `path` (safetensors) atomically: a temporary file in the same folder, then a rename."""
        path = Path(path).expanduser()
        if path.is_dir():
            raise InputError(f"{path} is a directory; give a file path such as {path / 'x.prototypes.safetensors'}")
        path.parent.mkdir(parents=True, exist_ok=True)
        metadata = {"format": FORMAT, "format_version": str(FORMAT_VERSION),
                    "class_names": json.dumps(self.class_names), "meta": json.dumps(self.meta, default=str)}
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        os.close(fd)
        try:
            save_file({"embeds": self.embeds.contiguous(), "counts": self.counts.contiguous()}, tmp, metadata)
            with open(tmp, "rb") as f:
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        log.info("wrote %d prototypes (D=%d) to %s", self.n_classes, self.dim, path)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> ClassPrototypes:
        """Read and validate a prototypes file written by :meth:`save`.

        Raises:
            BundleError: missing, unreadable or corrupt file, not an edgeclip prototypes file, a newer format,
                wrong tensor shapes or dtypes, NaN/Inf or non-normalised rows, class names that do not fit.
        """
        path = Path(path).expanduser()
        if not path.exists():
            raise BundleError(f"prototypes file {path} does not exist; build it with `edgeclip prototypes build`")
        if not path.is_file():
            raise BundleError(f"prototypes path {path} is not a file")
        try:
            with safe_open(str(path), framework="pt") as f:
                header = dict(f.metadata() or {})
                tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 - safe_open has no __iter__
        except Exception as exc:  # safetensors raises its own error types
            raise BundleError(f"{path} is not a readable safetensors file ({exc}); rebuild the prototypes") from exc
        if header.get("format") != FORMAT:
            raise BundleError(f"{path} is not an edgeclip prototypes file (format {header.get('format')!r})")
        try:
            version = int(header.get("format_version", ""))
        except ValueError:
            raise BundleError(f"{path} has no integer format_version; rebuild the prototypes") from None
        if version > FORMAT_VERSION:
            raise BundleError(f"{path} has prototypes format {version}, newer than this edgeclip reads "
                              f"({FORMAT_VERSION}): upgrade edgeclip")
        try:
            names = json.loads(header.get("class_names", ""))
            meta = json.loads(header.get("meta", "{}"))
        except json.JSONDecodeError as exc:
            raise BundleError(f"{path}: its class names or meta are not valid JSON ({exc})") from exc
        if not isinstance(names, list) or not isinstance(meta, dict):
            raise BundleError(f"{path}: class_names must be a JSON list and meta a JSON object")
        embeds, counts = tensors.get("embeds"), tensors.get("counts")
        if embeds is None or counts is None:
            raise BundleError(f"{path} lacks the 'embeds' or 'counts' tensor (has {sorted(tensors)})")
        if embeds.dim() != 2 or embeds.dtype != torch.float32:
            raise BundleError(f"{path}: embeds must be float32 [C, D], got {embeds.dtype} {list(embeds.shape)}")
        if counts.shape != (embeds.shape[0],) or counts.dtype != torch.int64:
            raise BundleError(f"{path}: counts must be int64 [{embeds.shape[0]}], got {counts.dtype} "
                              f"{list(counts.shape)}")
        if len(names) != embeds.shape[0]:
            raise BundleError(f"{path}: {len(names)} class names for {embeds.shape[0]} prototype rows")
        if not bool(torch.isfinite(embeds).all()):
            raise BundleError(f"{path}: prototypes contain NaN or Inf; rebuild them")
        if embeds.shape[0] and float((embeds.norm(dim=1) - 1).abs().max()) > _NORM_TOL:
            raise BundleError(f"{path}: prototype rows are not unit vectors (file altered or corrupt); rebuild it")
        try:
            return cls(embeds, names, counts, meta)
        except EdgeClipError as exc:
            raise BundleError(f"{path}: {exc}") from exc

    def summary(self) -> dict[str, Any]:
        """JSON-ready description: classes, images per class, width, kind, source."""
        return {"classes": list(self.class_names), "counts": dict(zip(self.class_names, self.counts.tolist(),
                                                                        strict=True)),
                "images": int(self.counts.sum()), "embed_dim": self.dim, "kind": self.kind,
                "source": self.meta.get("source"), "bundle": self.meta.get("bundle")}


def text_fallback(model: EdgeClip, class_names: Sequence[str], template: str = DEFAULT_TEMPLATE) -> ClassPrototypes:
    """Module-level alias of :meth:`ClassPrototypes.text_fallback`."""
    return ClassPrototypes.text_fallback(model, class_names, template)


def resolve_prototypes(model: EdgeClip, class_names: Sequence[str], path: str | os.PathLike | None = None, *,
                       template: str = DEFAULT_TEMPLATE, strict: bool = True) -> ClassPrototypes:
    """The prototypes a method should use for `class_names`, aligned to that order.

    `path` given: load it (it must exist). Otherwise the default file beside the bundle
    (:func:`default_prototypes_path`) when present, else the text fallback (logged).
    """
    if path is None:
        candidate = default_prototypes_path(model.bundle.path)
        if not candidate.is_file():
            log.info("no prototypes at %s; using the class text embeddings instead", candidate)
            return ClassPrototypes.text_fallback(model, class_names, template)
        path = candidate
    protos = ClassPrototypes.load(path)
    protos.check_compatible(model, strict=strict)
    return protos.aligned(class_names)


# ----------------------------------------------------------------------------------------------------------
# building
# ----------------------------------------------------------------------------------------------------------


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
    from edgeclip.data.shapes import make_batch

    labels = np.asarray(class_index, dtype=np.int64)
    rows = np.arange(n, dtype=np.int64) % len(labels)
    for j, start in enumerate(range(0, n, chunk)):
        r = rows[start : start + chunk]
        ss = np.random.SeedSequence(seed, spawn_key=(PROTOTYPE_STREAM, j))
        batch = make_batch(len(r), seed=ss, shift=shift, render_size=render_size, labels=labels[r])
        yield batch.images, r


def _folder_classes(root: Path, class_names: Sequence[str] | None) -> tuple[list[str], list[list[Path]]]:
    if not root.exists():
        raise InputError(f"image folder {root} does not exist (and {str(root)!r} is not a spec like 'shapes:512')")
    if not root.is_dir():
        raise InputError(f"{root} is not a folder; expected {root}/<class name>/<images>")
    folders = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not folders:
        raise InputError(f"{root} has no class sub-folders; expected {root}/<class name>/<images>")
    by_name: dict[str, Path] = {}
    for p in folders:
        key = _norm_name(p.name.replace("_", " "))
        if key in by_name:
            raise ClassNameError(f"class folders {by_name[key].name!r} and {p.name!r} name the same class")
        by_name[key] = p
    origin = "the class list"
    if class_names is None and (root / "classnames.txt").is_file():
        lines = (root / "classnames.txt").read_text(encoding="utf-8").splitlines()
        class_names = [ln for ln in (" ".join(x.split()) for x in lines) if ln]
        origin = str(root / "classnames.txt")
    if class_names is None:
        names = validate_class_names([" ".join(p.name.replace("_", " ").split()) for p in folders])
    else:
        names = validate_class_names(class_names)
        missing = [n for n in names if _norm_name(n) not in by_name]
        if missing:
            raise InputError(f"class(es) {missing[:8]} from {origin} have no folder in {root} "
                             f"(folders: {[p.name for p in folders][:8]})")
        unused = sorted(set(by_name) - {_norm_name(n) for n in names})
        if unused:
            log.warning("%s: ignoring folders not in %s: %s", root, origin, unused[:8])
    paths = []
    for name in names:
        folder = by_name[_norm_name(name)]
        found = iter_image_paths(folder)
        if not found:
            raise InputError(f"class {name!r}: folder {folder} holds no images "
                             "(every class needs at least one image)")
        paths.append(found)
    return names, paths


def _encode(model: EdgeClip, images: list[Any], what: str) -> torch.Tensor:
    with torch.no_grad():
        emb = model.encode_images(images, normalize=False).float().cpu()
    if not bool(torch.isfinite(emb).all()):
        raise ImageError(f"the image encoder returned NaN or Inf for {what}")
    return F.normalize(emb, dim=-1)


def build_prototypes(model: EdgeClip, data: str | os.PathLike, *, class_names: Sequence[str] | None = None,
                     batch_size: int = 64, progress: bool = True, seed: int = PROTOTYPE_SEED) -> ClassPrototypes:
    """Class prototypes from an image folder or a procedural spec, through the bundle's image encoder.

    Args:
        model: the loaded bundle (``edgeclip.load``); its ``encode_images`` embeds the images.
        data: a folder ``root/<class name>/<images>`` (see the module docstring for names and order), or a
            spec ``"shapes[:N[:SHIFT]]"`` (N images in total over the classes, default 512; shift default
            ``clean``). An existing folder wins over a spec of the same spelling.
        class_names: the classes wanted, in this order (folder: those folders; spec: a subset of
            ``edgeclip.data.shapes.class_names()``). Default: every class found.
        batch_size: images per encoder call.
        progress: show a tqdm bar.
        seed: base seed of the procedural proxy set (default :data:`PROTOTYPE_SEED`).

    Returns:
        :class:`ClassPrototypes`: per class the L2-normalised mean of the L2-normalised image embeddings.

    Raises:
        InputError: missing folder, no class folders, an empty class, a bad spec, a class count above N.
        ClassNameError: bad or unknown class names.
        ImageError: an unreadable image (named).
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise InputError(f"batch_size must be a positive int, got {batch_size!r}")
    spec = None
    if isinstance(data, str) and not Path(data).expanduser().is_dir():
        spec = parse_procedural_spec(data)
    elif isinstance(data, str) and parse_procedural_spec(data) is not None:
        log.warning("%r is an existing folder; reading images from it rather than the procedural spec", data)
    if spec is not None:
        names, batches, total, source = _procedural_source(spec, class_names, seed)
    else:
        root = Path(data).expanduser()
        names, paths = _folder_classes(root, class_names)
        total = sum(len(p) for p in paths)
        flat = [(path, c) for c, ps in enumerate(paths) for path in ps]
        batches = ((([p for p, _ in flat[i:i + batch_size]]), np.array([c for _, c in flat[i:i + batch_size]]))
                   for i in range(0, len(flat), batch_size))
        source = {"type": "image_folder", "path": str(root.resolve()), "images": total}
    dim = model.bundle.embed_dim
    sums = torch.zeros(len(names), dim, dtype=torch.float64)
    counts = torch.zeros(len(names), dtype=torch.int64)
    with tqdm(total=total, desc="prototypes", unit="img", disable=not progress) as bar:
        for items, rows in batches:
            for start in range(0, len(rows), batch_size):
                chunk = items[start : start + batch_size]
                r = torch.from_numpy(np.asarray(rows[start : start + batch_size], dtype=np.int64))
                what = f"images {chunk[0]} … {chunk[-1]}" if isinstance(chunk[0], Path) else "procedural images"
                emb = _encode(model, list(chunk), what)
                if emb.shape[1] != dim:
                    raise BundleError(f"the image encoder returned width {emb.shape[1]}, the bundle says {dim}")
                sums.index_add_(0, r, emb.double())
                counts.index_add_(0, r, torch.ones_like(r))
                bar.update(len(r))
    empty = [names[i] for i in (counts == 0).nonzero().flatten().tolist()]
    if empty:
        raise InputError(f"no images for class(es) {empty[:8]}")
    means = sums / counts.unsqueeze(1)
    if bool((means.norm(dim=1) < 1e-8).any()):
        raise InputError("a class mean embedding is zero (its images cancel out); add more images")
    meta = {"kind": "images", "source": source, **_bundle_identity(model), "created": _now(),
            "versions": _versions()}
    protos = ClassPrototypes(means.float(), names, counts, meta)
    log.info("built %d prototypes from %d images (%s)", protos.n_classes, total, source["type"])
    return protos


def _procedural_source(spec: tuple[int, str], class_names: Sequence[str] | None,
                       seed: int) -> tuple[list[str], Iterator[tuple[Any, np.ndarray]], int, dict[str, Any]]:
    from edgeclip.data import shapes

    n, shift = spec
    all_names = shapes.class_names()
    index = {_norm_name(c): i for i, c in enumerate(all_names)}
    names = all_names if class_names is None else validate_class_names(class_names)
    unknown = [c for c in names if _norm_name(c) not in index]
    if unknown:
        raise ClassNameError(f"class(es) {unknown[:8]} are not shapes classes; valid: {', '.join(all_names)}")
    if n < len(names):
        raise InputError(f"shapes:{n} gives {n} images for {len(names)} classes, so some class would have none; "
                         f"ask for at least {len(names)} (e.g. shapes:{32 * len(names)})")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise InputError(f"seed must be a non-negative int, got {seed!r}")
    wanted = [index[_norm_name(c)] for c in names]
    batches = ((list(images), rows) for images, rows in procedural_batches(n, wanted, shift=shift, seed=seed))
    source = {"type": "procedural", "dataset": "edgeclip.data.shapes", "n": n, "shift": shift, "seed": seed,
              "stream": PROTOTYPE_STREAM, "chunk": PROCEDURAL_CHUNK, "render_size": PROCEDURAL_RENDER_SIZE}
    return names, batches, n, source
