"""edgeclip: frozen CLIP encoders exported once, a small head that adapts on device.

The public API, from the package root::

    import edgeclip

    model = edgeclip.load()                                      # the embedded micro CLIP, or a bundle folder
    method = edgeclip.create_method("tpt", model, ["cat", "dog"], n_views=32)
    pred = method.predict(images)                                # edgeclip.Prediction
    with edgeclip.Session(model, ["cat", "dog"], method="tpt", budget_ms=150) as session:
        future = session.submit(frame)                           # latest frame wins; future.result()
    edgeclip.list_methods()                                      # zeroshot, tpt, promptsync, zero, ...
    edgeclip.kernels.augment_views(frame, n_views=64)            # the per-frame kernels
    edgeclip.shapes.make_batch(8, shift="blur")                  # the demo's procedural images

Names are imported on first use (``import edgeclip`` stays light, and the export side, which needs open_clip,
is only loaded when `export_bundle` is used); every name is the real object, with its real signature.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# name -> module it lives in (every name is also in __all__, spelled out below for tools that read it)
_PUBLIC: dict[str, str] = {
    # loading and exporting
    "load": "edgeclip.runtime.model",
    "EdgeClip": "edgeclip.runtime.model",
    "export_bundle": "edgeclip.export",
    "Prediction": "edgeclip.runtime.prediction",
    # methods: the contract, the factory, every method and its config
    "Method": "edgeclip.runtime.methods.base",
    "Trainable": "edgeclip.runtime.methods.base",
    "ViewMethod": "edgeclip.runtime.methods.base",
    "FitReport": "edgeclip.runtime.methods.base",
    "create_method": "edgeclip.runtime.methods.registry",
    "list_methods": "edgeclip.runtime.methods.registry",
    "register_method": "edgeclip.runtime.methods.registry",
    "configure": "edgeclip.runtime.methods.config",
    "ViewConfig": "edgeclip.runtime.methods.config",
    "GuardConfig": "edgeclip.runtime.methods.config",
    "ZeroShot": "edgeclip.runtime.methods.zeroshot",
    "ZeroShotConfig": "edgeclip.runtime.methods.zeroshot",
    "TPT": "edgeclip.runtime.methods.tpt",
    "TPTConfig": "edgeclip.runtime.methods.tpt",
    "PromptSync": "edgeclip.runtime.methods.promptsync",
    "PromptSyncConfig": "edgeclip.runtime.methods.promptsync",
    "Zero": "edgeclip.runtime.methods.zero",
    "ZeroConfig": "edgeclip.runtime.methods.zero",
    "OnlinePrototypes": "edgeclip.runtime.methods.online_prototypes",
    "OnlinePrototypesConfig": "edgeclip.runtime.methods.online_prototypes",
    "CoOp": "edgeclip.runtime.methods.coop",
    "CoOpConfig": "edgeclip.runtime.methods.coop",
    "PseudoLabel": "edgeclip.runtime.methods.pseudolabel",
    "PseudoLabelConfig": "edgeclip.runtime.methods.pseudolabel",
    "SHIP": "edgeclip.runtime.methods.ship",
    "SHIPConfig": "edgeclip.runtime.methods.ship",
    "CLAP": "edgeclip.runtime.methods.clap",
    "CLAPConfig": "edgeclip.runtime.methods.clap",
    "ARF": "edgeclip.runtime.methods.arf",
    "ARFConfig": "edgeclip.runtime.methods.arf",
    # prototypes, the bank, feature pools, heads
    "ClassPrototypes": "edgeclip.runtime.prototypes",
    "build_prototypes": "edgeclip.runtime.prototypes",
    "PrototypeBank": "edgeclip.runtime.prototype_bank",
    "FeaturePool": "edgeclip.runtime.feature_pool",
    "ViewPolicy": "edgeclip.runtime.feature_pool",
    "build_feature_pool": "edgeclip.runtime.feature_pool",
    "read_head": "edgeclip.runtime.head",
    "default_head_path": "edgeclip.runtime.head",
    # streaming
    "Session": "edgeclip.runtime.session",
    "FrameFuture": "edgeclip.runtime.session",
    "SessionStats": "edgeclip.runtime.session_stats",
    # errors
    "EdgeClipError": "edgeclip.errors",
    "BundleError": "edgeclip.errors",
    "ExportError": "edgeclip.errors",
    "ImageError": "edgeclip.errors",
    "ClassNameError": "edgeclip.errors",
    "InputError": "edgeclip.errors",
    "BackendError": "edgeclip.errors",
    "SessionError": "edgeclip.errors",
    "SourceError": "edgeclip.errors",
    "VideoWriteError": "edgeclip.errors",
}

__all__ = [
    "ARF",
    "CLAP",
    "SHIP",
    "TPT",
    "ARFConfig",
    "BackendError",
    "BundleError",
    "CLAPConfig",
    "ClassNameError",
    "ClassPrototypes",
    "CoOp",
    "CoOpConfig",
    "EdgeClip",
    "EdgeClipError",
    "ExportError",
    "FeaturePool",
    "FitReport",
    "FrameFuture",
    "GuardConfig",
    "ImageError",
    "InputError",
    "Method",
    "OnlinePrototypes",
    "OnlinePrototypesConfig",
    "Prediction",
    "PromptSync",
    "PromptSyncConfig",
    "PrototypeBank",
    "PseudoLabel",
    "PseudoLabelConfig",
    "SHIPConfig",
    "Session",
    "SessionError",
    "SessionStats",
    "SourceError",
    "TPTConfig",
    "Trainable",
    "VideoWriteError",
    "ViewConfig",
    "ViewMethod",
    "ViewPolicy",
    "Zero",
    "ZeroConfig",
    "ZeroShot",
    "ZeroShotConfig",
    "__version__",
    "build_feature_pool",
    "build_prototypes",
    "configure",
    "create_method",
    "default_bundle",
    "default_head_path",
    "export_bundle",
    "list_methods",
    "load",
    "read_head",
    "register_method",
]

if TYPE_CHECKING:
    from edgeclip.errors import (
        BackendError,
        BundleError,
        ClassNameError,
        EdgeClipError,
        ExportError,
        ImageError,
        InputError,
        SessionError,
        SourceError,
        VideoWriteError,
    )
    from edgeclip.export import export_bundle
    from edgeclip.runtime.feature_pool import FeaturePool, ViewPolicy, build_feature_pool
    from edgeclip.runtime.head import default_head_path, read_head
    from edgeclip.runtime.methods.arf import ARF, ARFConfig
    from edgeclip.runtime.methods.base import FitReport, Method, Trainable, ViewMethod
    from edgeclip.runtime.methods.clap import CLAP, CLAPConfig
    from edgeclip.runtime.methods.config import GuardConfig, ViewConfig, configure
    from edgeclip.runtime.methods.coop import CoOp, CoOpConfig
    from edgeclip.runtime.methods.online_prototypes import OnlinePrototypes, OnlinePrototypesConfig
    from edgeclip.runtime.methods.promptsync import PromptSync, PromptSyncConfig
    from edgeclip.runtime.methods.pseudolabel import PseudoLabel, PseudoLabelConfig
    from edgeclip.runtime.methods.registry import create_method, list_methods, register_method
    from edgeclip.runtime.methods.ship import SHIP, SHIPConfig
    from edgeclip.runtime.methods.tpt import TPT, TPTConfig
    from edgeclip.runtime.methods.zero import Zero, ZeroConfig
    from edgeclip.runtime.methods.zeroshot import ZeroShot, ZeroShotConfig
    from edgeclip.runtime.model import EdgeClip, load
    from edgeclip.runtime.prediction import Prediction
    from edgeclip.runtime.prototype_bank import PrototypeBank
    from edgeclip.runtime.prototypes import ClassPrototypes, build_prototypes
    from edgeclip.runtime.session import FrameFuture, Session
    from edgeclip.runtime.session_stats import SessionStats


def default_bundle() -> Any:
    """Path of the embedded micro CLIP bundle shipped in `edgeclip/assets/` (16 coloured shapes)."""
    from edgeclip.assets import default_bundle_path

    return default_bundle_path()


# public submodules reached as attributes: the per-frame kernels, and the procedural shapes data of the demo
_SUBMODULES: dict[str, str] = {"kernels": "edgeclip.kernels", "shapes": "edgeclip.data.shapes",
                               "sources": "edgeclip.sources"}


def __getattr__(name: str) -> Any:
    if name in _SUBMODULES:
        value = importlib.import_module(_SUBMODULES[name])
        globals()[name] = value
        return value
    module = _PUBLIC.get(name)
    if module is None:
        raise AttributeError(f"module 'edgeclip' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_PUBLIC) | set(_SUBMODULES))
