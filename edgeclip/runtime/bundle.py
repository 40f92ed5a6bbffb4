"""The bundle on disk: file names, reading and verifying a bundle folder, and its identity.

The manifest's schema and content hash live in :mod:`edgeclip.runtime.manifest`; `open_bundle` reads the
manifest, validates it (`parse_manifest`), checks its ``manifest_sha256`` and every listed file's size and
sha256, and returns a `Bundle`.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgeclip.errors import BundleError
from edgeclip.runtime.manifest import (
    FORMAT_VERSION,
    IMAGE_ONNX,
    IMAGE_TOWER,
    MANIFEST,
    REQUIRED_FILES,
    TEXT_ONNX,
    TEXT_TOWER,
    Manifest,
    check_manifest_hash,
    manifest_digest,
    parse_manifest,
)

__all__ = [
    "FORMAT_VERSION",
    "IMAGE_ONNX",
    "IMAGE_TOWER",
    "MANIFEST",
    "REQUIRED_FILES",
    "TEXT_ONNX",
    "TEXT_TOWER",
    "Bundle",
    "check_image_input",
    "open_bundle",
    "read_manifest",
    "sha256_file",
    "verify_files",
]


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


@dataclass
class Bundle:
    """A bundle directory: its raw manifest (``manifest``, the JSON object as read) and the validated,
    typed view of it (``spec``, parsed from ``manifest`` when not given)."""

    path: Path
    manifest: dict[str, Any]
    spec: Manifest = field(default=None, repr=False)  # type: ignore[assignment]

    def __post_init__(self) -> None:
        self.path = Path(self.path)
        if self.spec is None:
            self.spec = parse_manifest(self.manifest, self.path / MANIFEST)

    def file(self, name: str) -> Path:
        return self.path / name

    def has(self, name: str) -> bool:
        return name in self.spec.files

    @property
    def embed_dim(self) -> int:
        return self.spec.embed_dim

    @property
    def image_size(self) -> int:
        return self.spec.image.image_size

    @property
    def text(self) -> dict[str, Any]:
        """The manifest's raw ``text`` object (tokenizer, context_length, width, causal, pool, ...)."""
        return self.manifest["text"]

    @property
    def logit_scale(self) -> float:
        return self.spec.logit_scale

    def identity(self) -> dict[str, Any]:
        """What identifies this bundle's encoders, to key heads, feature caches and prototypes:
        ``{"manifest_sha256", "files": {name: sha256}, "architecture", "embed_dim"}``.

        ``manifest_sha256`` is the sha256 of the manifest's canonical JSON without its own
        ``manifest_sha256`` field (equal to that field in a sealed manifest); the file hashes are the ones the
        manifest records, which `open_bundle` checked against the files unless it was told not to verify. The
        bundle's location is not part of it: a copied or moved bundle keeps its identity.
        """
        return {
            "manifest_sha256": manifest_digest(self.manifest),
            "files": {name: entry.sha256 for name, entry in sorted(self.spec.files.items())},
            "architecture": self.spec.source.architecture,
            "embed_dim": self.spec.embed_dim,
        }


def read_manifest(path: Path) -> dict[str, Any]:
    """The JSON object of ``path/manifest.json``; `BundleError` when the folder or the file is not a bundle's."""
    mpath = path / MANIFEST
    if not path.exists():
        raise BundleError(f"bundle {path} does not exist")
    if not path.is_dir():
        raise BundleError(f"bundle {path} is not a directory (a bundle is a folder holding {MANIFEST})")
    if not mpath.is_file():
        raise BundleError(f"{mpath} is missing: {path} is not an edgeclip bundle (re-run `edgeclip export`)")
    try:
        return json.loads(mpath.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BundleError(f"{mpath} is not valid JSON ({exc}); re-export the bundle") from exc


def verify_files(path: Path, spec: Manifest) -> None:
    """Check that every file the manifest lists is present with the recorded size and sha256."""
    for name, entry in spec.files.items():
        fpath = path / name
        if not fpath.is_file():
            raise BundleError(f"bundle file {fpath} is missing; copy the whole bundle folder or re-export it")
        size = fpath.stat().st_size
        if size != entry.size:
            raise BundleError(
                f"bundle file {fpath} has {size} bytes, the manifest says {entry.size}: "
                "the file was changed or truncated; copy the bundle again or re-export it"
            )
        if sha256_file(fpath) != entry.sha256:
            raise BundleError(
                f"bundle file {fpath} does not match its sha256 in the manifest (hash mismatch): "
                "the file was changed or corrupted; copy the bundle again or re-export it"
            )


def check_image_input(bundle: Bundle, shape: Sequence[Any]) -> None:
    """Raise `BundleError` unless the image graph's input ``shape`` ([batch, 3, S, S], symbolic dims as
    strings) takes the manifest's ``image.image_size``."""
    size = bundle.image_size
    dims = list(shape)
    fits = len(dims) == 4 and all(
        d == want or not isinstance(d, int) for d, want in zip(dims[1:], (3, size, size), strict=True))
    if not fits:
        raise BundleError(
            f"{bundle.path / MANIFEST} says image.image_size is {size}, but {bundle.path / IMAGE_ONNX} takes "
            f"pixels of shape {list(shape)}: the manifest does not belong to this graph; restore the original "
            "manifest.json or re-export the bundle"
        )


def open_bundle(path: str | Path, verify: bool = True) -> Bundle:
    """Read and validate a bundle directory; by default (``verify=True``) also check the manifest's own
    ``manifest_sha256`` and every file's size and sha256."""
    p = Path(path).expanduser()
    raw = read_manifest(p)
    spec = parse_manifest(raw, p / MANIFEST)
    if verify:
        check_manifest_hash(raw, p / MANIFEST)
        verify_files(p, spec)
    return Bundle(p, raw, spec)
