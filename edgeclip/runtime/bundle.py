"""The bundle on disk: manifest schema, file names, and verification on load."""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgeclip.errors import BundleError

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
IMAGE_ONNX = "image_encoder.onnx"
TEXT_ONNX = "text_encoder.onnx"
TEXT_TOWER = "text_tower.safetensors"
IMAGE_TOWER = "image_tower.safetensors"
REQUIRED_FILES = (IMAGE_ONNX, TEXT_ONNX, TEXT_TOWER)


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


@dataclass
class Bundle:
    """A bundle directory and its parsed manifest."""

    path: Path
    manifest: dict[str, Any]

    def file(self, name: str) -> Path:
        return self.path / name

    def has(self, name: str) -> bool:
        return name in self.manifest.get("files", {})

    @property
    def embed_dim(self) -> int:
        return int(self.manifest["embed_dim"])

    @property
    def image_size(self) -> int:
        return int(self.manifest["image"]["image_size"])

    @property
    def text(self) -> dict[str, Any]:
        return self.manifest["text"]

    @property
    def logit_scale(self) -> float:
        return float(self.manifest["logit_scale"])


def read_manifest(path: Path) -> dict[str, Any]:
    mpath = path / MANIFEST
    if not path.exists():
        raise BundleError(f"bundle {path} does not exist")
    if not path.is_dir():
        raise BundleError(f"bundle {path} is not a directory (a bundle is a folder holding {MANIFEST})")
    if not mpath.is_file():
        raise BundleError(f"{mpath} is missing: {path} is not an edgeclip bundle (re-run `edgeclip export`)")
    try:
        manifest = json.loads(mpath.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BundleError(f"{mpath} is not valid JSON ({exc}); re-export the bundle") from exc
    version = manifest.get("format_version")
    if not isinstance(version, int):
        raise BundleError(f"{mpath} has no integer format_version; re-export the bundle")
    if version > FORMAT_VERSION:
        raise BundleError(
            f"{mpath} has format version {version}, newer than this edgeclip reads ({FORMAT_VERSION}): "
            "upgrade edgeclip"
        )
    if version < 1:
        raise BundleError(f"{mpath} has unknown format version {version}; re-export the bundle")
    return manifest


def verify_files(path: Path, manifest: dict[str, Any]) -> None:
    """Check that every file the manifest lists is present with the recorded size and sha256."""
    files = manifest.get("files", {})
    for name in REQUIRED_FILES:
        if name not in files:
            raise BundleError(f"{path / MANIFEST} does not list the required file {name}; re-export the bundle")
    for name, meta in files.items():
        fpath = path / name
        if not fpath.is_file():
            raise BundleError(f"bundle file {fpath} is missing; copy the whole bundle folder or re-export it")
        size = fpath.stat().st_size
        if size != meta["size"]:
            raise BundleError(
                f"bundle file {fpath} has {size} bytes, the manifest says {meta['size']}: "
                "the file was changed or truncated; copy the bundle again or re-export it"
            )
        digest = sha256_file(fpath)
        if digest != meta["sha256"]:
            raise BundleError(
                f"bundle file {fpath} does not match its sha256 in the manifest (hash mismatch): "
                "the file was changed or corrupted; copy the bundle again or re-export it"
            )


def open_bundle(path: str | Path, verify: bool = True) -> Bundle:
    """Read and (by default) verify a bundle directory."""
    p = Path(path).expanduser()
    manifest = read_manifest(p)
    if verify:
        verify_files(p, manifest)
    return Bundle(p, manifest)
