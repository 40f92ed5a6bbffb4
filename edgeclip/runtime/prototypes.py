"""Class prototypes: the normalised mean image embedding of every class, built offline from a proxy set.

PromptSync aligns a test sample's prototype to these (METHODS.md, PromptSync: ``P ∈ R^{C×D}``), and the
online prototype methods start from them. They are computed by the bundle's *exported* image encoder
(``EdgeClip.encode_images``), so on the device they live in the same space as the test embeddings.

Sources (:func:`build_prototypes`): an image folder with one sub-folder per class, or a procedural spec
``"shapes[:N[:SHIFT]]"`` (see `edgeclip.runtime.pool_sources` for names, order and seeds). The images are
encoded once into a `FeaturePool` (`edgeclip.runtime.feature_pool`), and a prototype is the normalised mean
of its class's plain-view embeddings.

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
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from edgeclip.errors import BundleError, ClassNameError, EdgeClipError, InputError
from edgeclip.runtime.classnames import validate_class_names
from edgeclip.runtime.identity import bundle_identity
from edgeclip.runtime.model import DEFAULT_TEMPLATE, EdgeClip
from edgeclip.runtime.pool_sources import (
    DEFAULT_PROCEDURAL_N,
    PROCEDURAL_CHUNK,
    PROTOTYPE_SEED,
    PROTOTYPE_STREAM,
    check_every_class_drawn,
    norm_name,
    parse_procedural_spec,
    procedural_batches,
)
from edgeclip.runtime.safetensors_io import atomic_save, read_format

__all__ = [
    "DEFAULT_PROCEDURAL_N",
    "FORMAT",
    "FORMAT_VERSION",
    "PROCEDURAL_CHUNK",
    "PROTOTYPE_SEED",
    "PROTOTYPE_STREAM",
    "ClassPrototypes",
    "PrototypesLike",
    "build_prototypes",
    "default_prototypes_path",
    "parse_procedural_spec",
    "prepare_prototypes",
    "procedural_batches",
    "resolve_prototypes",
    "text_fallback",
]

log = logging.getLogger(__name__)

FORMAT = "edgeclip.prototypes"
FORMAT_VERSION = 1
_NORM_TOL = 1e-3


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
    from edgeclip.runtime.bundle import IMAGE_ONNX, TEXT_ONNX

    ident = bundle_identity(model.bundle)
    return {
        "bundle": str(model.bundle.path),
        "bundle_manifest_sha256": ident["manifest_sha256"],
        "image_encoder_sha256": ident["files"].get(IMAGE_ONNX),
        "text_encoder_sha256": ident["files"].get(TEXT_ONNX),
        "architecture": ident["architecture"],
        "embed_dim": ident["embed_dim"],
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
            have = [norm_name(n) for n in self.class_names]
            if [norm_name(n) for n in want] != have:
                missing = [n for n in want if norm_name(n) not in have]
                extra = [n for n in self.class_names if norm_name(n) not in {norm_name(w) for w in want}]
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
        index = {norm_name(n): i for i, n in enumerate(self.class_names)}
        missing = [n for n in want if norm_name(n) not in index]
        if missing:
            raise ClassNameError(
                f"no prototype for class(es) {missing[:8]}; the prototypes cover {self.class_names[:8]}"
                + ("…" if self.n_classes > 8 else "") + "; rebuild them with those classes"
            )
        rows = torch.tensor([index[norm_name(n)] for n in want], dtype=torch.int64)
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
        atomic_save({"embeds": self.embeds, "counts": self.counts}, path, metadata)
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
        header, tensors, _ = read_format(path, FORMAT, FORMAT_VERSION, "prototypes file", "rebuild the prototypes")
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


PrototypesLike = ClassPrototypes | str | os.PathLike
"""Prototypes as methods take them: a `ClassPrototypes`, a prototypes file, or a folder / spec to build from."""


def prepare_prototypes(model: EdgeClip, class_names: Sequence[str], prototypes: PrototypesLike | None, *,
                       progress: bool = False) -> ClassPrototypes | None:
    """The one check every method makes of its prototypes: load or build them, refuse prototypes made by another
    encoder (their recorded sha256, `ClassPrototypes.check_compatible`), align them to `class_names`' order.

    `prototypes` may be a `ClassPrototypes`, a saved prototypes file, or a folder / ``"shapes:N"`` spec to build
    them from; None gives None.
    """
    if prototypes is None:
        return None
    if isinstance(prototypes, (str, os.PathLike)):
        path = Path(prototypes).expanduser()
        if path.is_file():
            prototypes = ClassPrototypes.load(path)
        else:
            prototypes = build_prototypes(model, prototypes, class_names=class_names, progress=progress)
    if not isinstance(prototypes, ClassPrototypes):
        raise InputError(f"prototypes must be ClassPrototypes (e.g. ClassPrototypes(embeds, class_names)), a "
                         f"prototypes file or a spec to build them from, not {type(prototypes).__name__}")
    prototypes.check_compatible(model)
    return prototypes.aligned(class_names)


# ----------------------------------------------------------------------------------------------------------
# building
# ----------------------------------------------------------------------------------------------------------


def build_prototypes(model: EdgeClip, data: str | os.PathLike, *, class_names: Sequence[str] | None = None,
                     batch_size: int = 64, progress: bool = False, seed: int = PROTOTYPE_SEED,
                     cache: bool | str | os.PathLike = False) -> ClassPrototypes:
    """Class prototypes from an image folder or a procedural spec, through the bundle's image encoder.

    Args:
        model: the loaded bundle (``edgeclip.load``); its image encoder embeds the images.
        data: a folder ``root/<class name>/<images>`` (see `edgeclip.runtime.pool_sources` for names and order),
            or a spec ``"shapes[:N[:SHIFT]]"`` (N images in total over the classes, default 512; shift default
            ``clean``). An existing folder wins over a spec of the same spelling.
        class_names: the classes wanted, in this order (folder: those folders; spec: a subset of
            ``edgeclip.data.shapes.class_names()``). Default: every class found.
        batch_size: images per encoder call.
        progress: show a progress bar.
        seed: base seed of the procedural proxy set (default :data:`PROTOTYPE_SEED`).
        cache: keep the encoded images as a feature pool (`build_feature_pool`'s ``cache``; resumable).

    Returns:
        :class:`ClassPrototypes`: per class the L2-normalised mean of the L2-normalised image embeddings.

    Raises:
        InputError: missing folder, no class folders, an empty class, a bad spec, a class count above N.
        ClassNameError: bad or unknown class names.
        ImageError: an unreadable image (named).
    """
    from edgeclip.runtime.feature_pool import build_feature_pool

    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise InputError(f"batch_size must be a positive int, got {batch_size!r}")
    if not isinstance(data, (str, os.PathLike)):
        raise InputError(f"prototypes are built from a folder or a spec like 'shapes:512', not {type(data).__name__}")
    check_every_class_drawn(data, class_names)
    pool = build_feature_pool(model, data, class_names=class_names, seed=seed, cache=cache, batch_size=batch_size,
                              progress=progress)
    if not pool.is_labelled:
        raise InputError(f"{data} has no class sub-folders; expected {data}/<class name>/<images>")
    return prototypes_from_pool(model, pool)


def prototypes_from_pool(model: EdgeClip, pool: Any) -> ClassPrototypes:
    """Per class the normalised mean of a labelled pool's plain-view embeddings."""
    names = pool.class_names
    if not pool.is_labelled:
        raise InputError("prototypes need a labelled feature pool (every image with a class)")
    pool.check_compatible(model)
    sums = torch.zeros(len(names), pool.dim, dtype=torch.float64)
    sums.index_add_(0, pool.labels, pool.plain.double())
    counts = torch.bincount(pool.labels, minlength=len(names))
    empty = [names[i] for i in (counts == 0).nonzero().flatten().tolist()]
    if empty:
        raise InputError(f"no images for class(es) {empty[:8]}")
    means = sums / counts.unsqueeze(1)
    if bool((means.norm(dim=1) < 1e-8).any()):
        raise InputError("a class mean embedding is zero (its images cancel out); add more images")
    meta = {"kind": "images", "source": pool.meta.get("source"), **_bundle_identity(model), "created": _now(),
            "versions": _versions()}
    protos = ClassPrototypes(means.float(), names, counts, meta)
    log.info("built %d prototypes from %d images (%s)", protos.n_classes, len(pool),
             (pool.meta.get("source") or {}).get("type"))
    return protos
