"""What identifies a bundle's encoders, for everything derived from them (heads, feature pools, prototypes).

A head trained on one bundle's embeddings is meaningless on another's, and so is a cached feature pool. They
record `bundle_identity` and are refused (`check_same_encoders`) when the bundle they meet has other encoders.
The identity is made of the sha256 of every file the manifest lists (recorded at export, verified on load)
and of the manifest's own content, so a re-export with other weights, another preprocessing or another logit
scale is a different identity, while moving or copying the bundle folder is not.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from edgeclip.errors import BundleError
from edgeclip.runtime import bundle as B

__all__ = ["ENCODER_FILES", "bundle_identity", "check_same_encoders"]

#: The files whose hashes decide whether derived state fits: the encoders and the differentiable text tower.
ENCODER_FILES = (B.IMAGE_ONNX, B.TEXT_ONNX, B.TEXT_TOWER)


def bundle_identity(bundle: B.Bundle) -> dict[str, Any]:
    """``{"manifest_sha256", "files": {name: sha256}, "architecture", "embed_dim"}`` (`Bundle.identity`)."""
    return bundle.identity()


def check_same_encoders(recorded: Mapping[str, Any], bundle: B.Bundle, what: str) -> None:
    """Raise `BundleError` unless the encoder files recorded in `recorded` (a `bundle_identity`) are the
    bundle's. `what` names the thing being loaded, for the message."""
    theirs = bundle_identity(bundle)["files"]
    mine = recorded.get("files", {}) if isinstance(recorded, Mapping) else {}
    for name in ENCODER_FILES:
        a, b = mine.get(name), theirs.get(name)
        if a != b:
            raise BundleError(
                f"{what} was made with another model: its {name} has sha256 {str(a)[:12]}…, bundle "
                f"{bundle.path} has {str(b)[:12]}…; make it again with this bundle"
            )
