"""The embedded default bundle: a micro CLIP trained and exported by `edgeclip train-micro`."""

from __future__ import annotations

from pathlib import Path

from edgeclip.errors import BundleError

MICRO_BUNDLE = Path(__file__).resolve().parent / "micro.bundle"


def default_bundle_path() -> Path:
    if not (MICRO_BUNDLE / "manifest.json").is_file():
        raise BundleError(
            f"the embedded bundle {MICRO_BUNDLE} is missing; rebuild it with `edgeclip train-micro`"
        )
    return MICRO_BUNDLE
