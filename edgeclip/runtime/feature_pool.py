"""Feature pools: images encoded once by the bundle's exported image encoder, cached on disk, resumable.

Training methods and prototype building never re-run the image encoder per epoch: they read a
`FeaturePool`, ``embeds [M, V, D]`` (L2-normalised float32) for M images with V views each. View 0 is the
image as the encoder's own preprocessing reads it (``EdgeClip.preprocess``: resize and centre crop); views
1..V-1 (``extra_views``) are random resized crops with flips made by `edgeclip.kernels.augment_views`
(area ``view_scale``, 50–100 % by default, as SHIP augments its features). Image ``i``'s crops come from a
generator seeded by ``(view_seed, i)``, so they do not depend on the batch or chunk the image falls in.

**Cache.** With ``cache`` on (the default) the pool is stored as one safetensors file under
``$EDGECLIP_CACHE/pools`` (default ``~/.cache/edgeclip/pools``) or the folder given, named by the sha256 of
its key: the bundle's encoder identity, the source's fingerprint (file paths with sizes and modification
times, the procedural spec and seed, or the hash of in-memory pixels) and the view policy. A changed file,
bundle or policy is a new key, so a stale pool is never read. **Resume.** Images are encoded in chunks; each
finished chunk is written at once (atomically) to ``<key>.partial/``, and a build that is interrupted
(Ctrl-C, SIGTERM, a crash) picks up from the last finished chunk when run again with the same arguments.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import logging
import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from edgeclip.errors import BundleError, ImageError, InputError
from edgeclip.runtime.identity import bundle_identity, check_same_encoders
from edgeclip.runtime.model import EdgeClip
from edgeclip.runtime.pool_sources import PROTOTYPE_SEED, PoolSource, open_source
from edgeclip.runtime.safetensors_io import atomic_save, read, read_format

__all__ = ["FORMAT", "FeaturePool", "ViewPolicy", "build_feature_pool", "default_cache_dir"]

log = logging.getLogger(__name__)

FORMAT = "edgeclip.feature_pool"
FORMAT_VERSION = 1


def default_cache_dir() -> Path:
    """``$EDGECLIP_CACHE/pools``, or ``~/.cache/edgeclip/pools``."""
    from edgeclip.cache_paths import cache_root

    return cache_root() / "pools"


@dataclass(frozen=True)
class ViewPolicy:
    """The views a pool holds per image: the plain one plus ``extra_views`` random resized crops."""

    # augmented views per image besides the plain one (0: the plain view only)
    extra_views: int = 0
    # crop area range, as a fraction of the image (SHIP: RandomResizedCrop(0.5, 1))
    view_scale: tuple[float, float] = (0.5, 1.0)
    # probability of a horizontal flip
    flip_p: float = 0.5
    # seed of the crops (image i uses a generator seeded by (view_seed, i))
    view_seed: int = 0

    def __post_init__(self) -> None:
        if isinstance(self.extra_views, bool) or not isinstance(self.extra_views, int) or self.extra_views < 0:
            raise InputError(f"extra_views must be an integer >= 0, got {self.extra_views!r}")
        lo, hi = self.view_scale
        if not 0.0 < lo <= hi <= 1.0:
            raise InputError(f"view_scale must satisfy 0 < lo <= hi <= 1, got {self.view_scale}")
        if not 0.0 <= self.flip_p <= 1.0:
            raise InputError(f"flip_p must lie in [0, 1], got {self.flip_p}")

    def to_dict(self) -> dict[str, Any]:
        return {"extra_views": self.extra_views, "view_scale": list(self.view_scale), "flip_p": self.flip_p,
                "view_seed": self.view_seed}


@dataclass
class FeaturePool:
    """``embeds [M, V, D]`` (normalised float32; view 0 plain), ``labels [M]`` (int64, -1 = unlabelled),
    the class names the labels index, an id per image (``items``: its path, or ``shapes:<seed>:<i>``), and
    ``meta`` (bundle identity, source, view policy, when)."""

    embeds: torch.Tensor
    labels: torch.Tensor
    class_names: list[str] | None
    items: list[str]
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        e, lab = self.embeds, self.labels
        if e.dim() != 3 or e.shape[0] < 1 or e.shape[1] < 1:
            raise InputError(f"pool embeds must be [M, V, D] with M, V >= 1, got {list(e.shape)}")
        if lab.shape != (e.shape[0],) or lab.dtype != torch.int64:
            raise InputError(f"pool labels must be int64 [{e.shape[0]}], got {lab.dtype} {list(lab.shape)}")
        if len(self.items) != e.shape[0]:
            raise InputError(f"{len(self.items)} item ids for {e.shape[0]} pool rows")

    def __len__(self) -> int:
        return int(self.embeds.shape[0])

    @property
    def n_views(self) -> int:
        return int(self.embeds.shape[1])

    @property
    def dim(self) -> int:
        return int(self.embeds.shape[2])

    @property
    def plain(self) -> torch.Tensor:
        """``[M, D]``: view 0 of every image."""
        return self.embeds[:, 0]

    @property
    def is_labelled(self) -> bool:
        return self.class_names is not None and bool((self.labels >= 0).all())

    def subset(self, index: Sequence[int] | torch.Tensor) -> FeaturePool:
        """The pool restricted to rows `index` (in that order)."""
        idx = torch.as_tensor(index, dtype=torch.int64)
        return FeaturePool(self.embeds[idx], self.labels[idx], self.class_names,
                           [self.items[i] for i in idx.tolist()], dict(self.meta))

    def split(self, fraction: float, seed: int = 0) -> tuple[FeaturePool, FeaturePool]:
        """``(rest, held_out)``: `fraction` of each class's images held out (at least one of a class with two or
        more), drawn with `seed`; an unlabelled pool is split at random."""
        if not 0.0 < fraction < 1.0:
            raise InputError(f"split fraction must lie in (0, 1), got {fraction}")
        rng = np.random.default_rng(seed)
        labels = self.labels.numpy()
        held: list[int] = []
        for c in np.unique(labels):
            rows = np.flatnonzero(labels == c)
            # at least one of a class with two or more images, never all of it
            k = min(max(round(fraction * len(rows)), 1), len(rows) - 1) if len(rows) > 1 else 0
            held.extend(rng.permutation(rows)[:k].tolist())
        held_set = set(held)
        if not held_set:
            raise InputError(f"a {fraction:.0%} split of {len(self)} images holds out nothing")
        rest = [i for i in range(len(self)) if i not in held_set]
        return self.subset(rest), self.subset(sorted(held_set))

    def check_compatible(self, model: EdgeClip) -> None:
        """Raise `BundleError` unless this pool was encoded by `model`'s encoders."""
        if self.dim != model.bundle.embed_dim:
            raise BundleError(f"the feature pool has width {self.dim}, bundle {model.bundle.path} embeds to "
                              f"{model.bundle.embed_dim}: it was encoded by another model")
        check_same_encoders(self.meta.get("bundle", {}), model.bundle, "the feature pool")

    # -- files ---------------------------------------------------------------------------------------------
    def save(self, path: str | os.PathLike) -> Path:
        """Write to `path` (safetensors) atomically."""
        header = {"format": FORMAT, "format_version": str(FORMAT_VERSION),
                  "class_names": json.dumps(self.class_names), "items": json.dumps(self.items),
                  "meta": json.dumps(self.meta, default=str)}
        return atomic_save({"embeds": self.embeds, "labels": self.labels}, path, header)

    @classmethod
    def load(cls, path: str | os.PathLike) -> FeaturePool:
        """Read a pool written by `save` (a `BundleError` for anything that is not one)."""
        path = Path(path).expanduser()
        header, tensors, _ = read_format(path, FORMAT, FORMAT_VERSION, "feature pool", "delete it to rebuild")
        try:
            return cls(tensors["embeds"], tensors["labels"], json.loads(header["class_names"]),
                       json.loads(header["items"]), json.loads(header["meta"]))
        except (KeyError, json.JSONDecodeError, InputError) as exc:
            raise BundleError(f"{path} is not a valid feature pool ({exc}); delete it to rebuild") from exc


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _encode_plain(model: EdgeClip, images: list[Any], what: str) -> torch.Tensor:
    with torch.no_grad():
        emb = model.encode_images(images, normalize=False).float().cpu()
    if not bool(torch.isfinite(emb).all()):
        raise ImageError(f"the image encoder returned NaN or Inf for {what}")
    if emb.shape[1] != model.bundle.embed_dim:
        raise BundleError(f"the image encoder returned width {emb.shape[1]}, the bundle says {model.bundle.embed_dim}")
    return F.normalize(emb, dim=-1)


def _encode_views(model: EdgeClip, images: list[Any], first: int, policy: ViewPolicy, what: str) -> torch.Tensor:
    """``[k, extra_views, D]``: the augmented views of images ``first..first+k-1``."""
    from edgeclip.kernels import augment_views
    from edgeclip.runtime.methods.frames import as_frame

    cfg = model.preprocess_cfg
    out = []
    for j, image in enumerate(images):
        seed = int(np.random.SeedSequence([policy.view_seed, first + j]).generate_state(1)[0])
        g = torch.Generator().manual_seed(seed)
        views, _ = augment_views(as_frame(image), policy.extra_views + 1, cfg.image_size, scale=policy.view_scale,
                                 flip_p=policy.flip_p, mean=cfg.mean, std=cfg.std, generator=g)
        with torch.no_grad():
            emb = model.image_encoder(views[1:].to(model.device)).float().cpu()
        if not bool(torch.isfinite(emb).all()):
            raise ImageError(f"the image encoder returned NaN or Inf for a view of {what}")
        out.append(F.normalize(emb, dim=-1))
    return torch.stack(out)


def _cache_key(model: EdgeClip, source: PoolSource, policy: ViewPolicy) -> str:
    ident = bundle_identity(model.bundle)
    key = {"format": FORMAT_VERSION, "encoders": ident["files"], "manifest": ident["manifest_sha256"],
           "source": source.fingerprint, "views": policy.to_dict()}
    return hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:32]


def build_feature_pool(
    model: EdgeClip,
    data: Any,
    *,
    class_names: Sequence[str] | None = None,
    labels: Sequence[int] | None = None,
    views: ViewPolicy | None = None,
    seed: int = PROTOTYPE_SEED,
    cache: bool | str | os.PathLike = True,
    batch_size: int = 64,
    chunk: int = 256,
    progress: bool = False,
) -> FeaturePool:
    """Encode `data` once through `model`'s image encoder (see the module docstring).

    Args:
        model: the loaded bundle.
        data: an image folder (one sub-folder per class, or a flat folder: unlabelled), a procedural spec
            ``"shapes[:N[:SHIFT]]"``, or a list of images (paths, PIL images, uint8 arrays).
        class_names: the classes wanted, in this order (folder: those sub-folders; spec: shapes classes; list:
            what `labels` index).
        labels: for a list, each image's class index into `class_names` (default: unlabelled).
        views: the view policy (default: the plain view only).
        seed: base seed of a procedural spec.
        cache: True (the default cache folder), False (no cache, no resume), or a folder.
        batch_size: images per encoder call for the plain views.
        chunk: images encoded between two resume points.
        progress: show a progress bar (the CLI does; the library is quiet unless asked).
    """
    for name, v in (("batch_size", batch_size), ("chunk", chunk)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise InputError(f"{name} must be a positive int, got {v!r}")
    policy = views or ViewPolicy()
    source = open_source(data, class_names=class_names, labels=labels, seed=seed)
    n = len(source)
    meta = {"bundle": bundle_identity(model.bundle), "source": source.description, "views": policy.to_dict(),
            "created": _now()}
    cache_dir = None if cache is False else (default_cache_dir() if cache is True else Path(cache).expanduser())
    key = _cache_key(model, source, policy)
    final = partial = None
    if cache_dir is not None:
        final = cache_dir / f"{key}.pool.safetensors"
        partial = cache_dir / f"{key}.partial"
        if final.is_file():
            try:
                pool = FeaturePool.load(final)
                log.info("feature pool of %d images read from the cache %s", n, final)
                return pool
            except BundleError as exc:
                log.warning("ignoring an unreadable cached pool (%s); encoding again", exc)
        partial.mkdir(parents=True, exist_ok=True)
    from tqdm.auto import tqdm

    parts: list[torch.Tensor] = []
    with tqdm(total=n, desc="encoding images", unit="img", disable=not progress) as bar:
        for start in range(0, n, chunk):
            stop = min(n, start + chunk)
            part_file = partial / f"{start:09d}.safetensors" if partial is not None else None
            if part_file is not None and part_file.is_file():
                try:
                    parts.append(read(part_file, "pool chunk")[1]["embeds"])
                    bar.update(stop - start)
                    continue
                except (BundleError, KeyError):
                    log.warning("re-encoding an unreadable partial chunk %s", part_file)
            part = _encode_chunk(model, source, start, stop, policy, batch_size, bar)
            if part_file is not None:
                atomic_save({"embeds": part}, part_file, {"format": FORMAT + ".chunk"})
            parts.append(part)
    pool = FeaturePool(torch.cat(parts), torch.from_numpy(source.labels.copy()), source.class_names, source.items,
                       meta)
    if final is not None and partial is not None:
        pool.save(final)
        shutil.rmtree(partial, ignore_errors=True)
        log.info("feature pool of %d images cached at %s", n, final)
    return pool


def _encode_chunk(model: EdgeClip, source: PoolSource, start: int, stop: int, policy: ViewPolicy, batch_size: int,
                  bar: Any) -> torch.Tensor:
    out = []
    for s in range(start, stop, batch_size):
        e = min(stop, s + batch_size)
        images = source.load(s, e)
        what = f"images {source.items[s]} … {source.items[e - 1]}"
        plain = _encode_plain(model, images, what).unsqueeze(1)  # (k, 1, D)
        if policy.extra_views:
            plain = torch.cat([plain, _encode_views(model, images, s, policy, what)], dim=1)  # (k, V, D)
        out.append(plain)
        bar.update(e - s)
    return torch.cat(out)
