"""edgeclip: frozen CLIP encoders exported once, a small head that adapts on device."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

__all__ = ["Classifier", "EdgeClip", "Prediction", "__version__", "default_bundle", "export_bundle", "load"]

if TYPE_CHECKING:
    from edgeclip.runtime.model import Classifier, EdgeClip
    from edgeclip.runtime.prediction import Prediction


def load(bundle: Any = None, backend: str = "auto", device: str = "cpu", threads: int | None = None,
         verify: bool = True) -> EdgeClip:
    """Load a bundle (default: the embedded micro CLIP) on `backend` ("auto", "torch", "onnxruntime")."""
    from edgeclip.runtime.model import load as _load

    return _load(bundle if bundle is not None else default_bundle(), backend, device, threads, verify)


def export_bundle(out: Any, model_name: str, **kwargs: Any) -> Any:
    """Export an open_clip model to a bundle; see `edgeclip.export.export_bundle`."""
    from edgeclip.export import export_bundle as _export_bundle

    return _export_bundle(out, model_name, **kwargs)


def default_bundle() -> Any:
    """Path of the embedded micro CLIP bundle shipped in `edgeclip/assets/`."""
    from edgeclip.assets import default_bundle_path

    return default_bundle_path()


def __getattr__(name: str) -> Any:
    if name in ("Classifier", "EdgeClip"):
        from edgeclip.runtime import model

        return getattr(model, name)
    if name == "Prediction":
        from edgeclip.runtime.prediction import Prediction

        return Prediction
    raise AttributeError(f"module 'edgeclip' has no attribute {name!r}")
