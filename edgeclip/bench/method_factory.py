"""The one place the benchmarks build adaptation methods and their class prototypes.

Every bench that runs a method (`edgeclip bench tta`, `online-memory`, `view-accuracy`) builds it here, by key,
so the benches depend on `edgeclip.runtime.methods` through this module only.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from edgeclip.runtime.model import EdgeClip

__all__ = ["DEFAULT_PROTOTYPES", "METHODS", "load_prototypes", "make_method", "make_tpt"]

#: method keys `make_method` builds, in the accuracy table's order
METHODS = ("zero-shot", "tpt", "promptsync", "promptsync-online", "zero", "online-prototypes", "tpt-reference")
DEFAULT_PROTOTYPES = "shapes:512"


def load_prototypes(model: EdgeClip, names: list[str], prototypes: str | Path | None, progress: bool) -> Any:
    """`ClassPrototypes` for `names`: a saved file when `prototypes` is one, else built from the spec or folder
    it names (default: the disjoint procedural proxy stream ``shapes:512``)."""
    from edgeclip.runtime.prototypes import build_prototypes, resolve_prototypes

    if prototypes is not None and Path(prototypes).expanduser().is_file():
        return resolve_prototypes(model, names, Path(prototypes).expanduser())
    spec = DEFAULT_PROTOTYPES if prototypes is None else str(prototypes)
    return build_prototypes(model, spec, class_names=names, progress=progress)


#: bench keys that are registered methods with settings: key -> (registry name, config overrides)
VARIANTS: dict[str, tuple[str, dict[str, Any]]] = {
    "zero-shot": ("zeroshot", {}),
    "tpt": ("tpt", {}),
    "promptsync": ("promptsync", {}),
    "promptsync-online": ("promptsync", {"mode": "online"}),
    "zero": ("zero", {}),
    "online-prototypes": ("online_prototypes", {}),
}
_VIEWLESS = ("zeroshot",)
_WITH_PROTOTYPES = ("promptsync", "online_prototypes")


def make_method(key: str, model: EdgeClip, names: list[str], protos: Any, n_views: int, seed: int) -> Any:
    """A fresh predictor (``predict(images) -> Prediction``) for bench key `key`: an edgeclip method through
    the registry (`edgeclip.create_method`), or the reference TPT peer (``tpt-reference``)."""
    from edgeclip.runtime.methods import create_method

    if key == "tpt-reference":
        from edgeclip.bench.peers.tpt_reference import ReferenceTPT

        return ReferenceTPT(model, names, n_views=n_views, seed=seed)
    if key not in VARIANTS:
        raise ValueError(f"unknown method {key!r}; choose from {METHODS}")
    name, overrides = VARIANTS[key]
    kw: dict[str, Any] = dict(overrides)
    if name not in _VIEWLESS:
        kw.update(n_views=n_views, seed=seed)
    if name in _WITH_PROTOTYPES:
        kw["prototypes"] = protos
    return create_method(name, model, names, **kw)


def make_tpt(model: EdgeClip, names: list[str], *, n_views: int = 64, seed: int = 0, views: Any = None) -> Any:
    """edgeclip's `TPT` with its defaults; `views` (``(frame, n_views, generator) -> views``), when given,
    replaces the kernel views, so the same TPT can adapt on another implementation's views."""
    from edgeclip.runtime.methods import create_method

    return create_method("tpt", model, names, n_views=n_views, seed=seed, view_fn=views)
