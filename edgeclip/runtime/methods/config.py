"""Method configuration: frozen dataclasses with a comment on every field, and the one way to change them.

Every method has one frozen config dataclass (``TPTConfig``, ``PromptSyncConfig``, ...). A config is made
with its defaults and changed with `configure` (a checked `dataclasses.replace`), never through ``**kwargs``
chains::

    cfg = configure(TPTConfig(), lr=1e-3, n_views=32)   # n_views is routed to cfg.views (a ViewConfig)

`configure` routes a name that is not a field of the config itself to the one nested config that has it
(``n_views`` → ``views.n_views``), so ``create_method("tpt", model, names, n_views=32)`` reads naturally;
a name that no config has is an `InputError` listing the valid names. Configs go to JSON (a saved head's
header) with `config_to_dict` and come back with `config_from_dict`.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

import torch

from edgeclip.errors import InputError

__all__ = [
    "MODES",
    "GuardConfig",
    "ViewConfig",
    "ViewFn",
    "check_finite",
    "check_mode",
    "check_positive_int",
    "config_fields",
    "config_from_dict",
    "config_to_dict",
    "configure",
]

ViewFn = Callable[[torch.Tensor, int, torch.Generator], torch.Tensor]
"""``(frame uint8 [H, W, 3], n_views, generator) -> normalised views [N, 3, S, S]``; view 0 is the plain one."""

#: How a view-based method treats its state between frames.
MODES = ("episodic", "online")

C = TypeVar("C")


def check_positive_int(name: str, value: Any, minimum: int = 1) -> None:
    """Raise `InputError` unless `value` is an int (not a bool) ``>= minimum``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise InputError(f"{name} must be an integer >= {minimum}, got {value!r}")


def check_finite(name: str, value: Any, *, minimum: float | None = 0.0, strict: bool = False) -> None:
    """Raise `InputError` unless `value` is a finite real number ``>= minimum`` (``> minimum`` when `strict`)."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if ok and minimum is not None:
        ok = value > minimum if strict else value >= minimum
    if not ok:
        bound = "" if minimum is None else f" {'>' if strict else '>='} {minimum}"
        raise InputError(f"{name} must be a finite number{bound}, got {value!r}")


def check_mode(mode: Any, allowed: tuple[str, ...] = MODES) -> None:
    if mode not in allowed:
        raise InputError(f"mode must be one of {allowed}, not {mode!r}")


@dataclass(frozen=True)
class ViewConfig:
    """The views a view-based method (TPT, PromptSync, ZERO, online prototypes) takes of every frame."""

    # views per frame, all encoded in one batch; view 0 is the plain CLIP view (centred square, bicubic),
    # views 1..N-1 TPT's random resized crops (area 8–100 %, aspect 3/4–4/3, bilinear) flipped with p = 0.5
    n_views: int = 64
    # share of the views kept as "confident" (lowest softmax entropy): max(1, int(rho · n_views)); TPT: 10 %
    rho: float = 0.1
    # seed of the view generator: the same seed and frames give the same views (and predictions)
    seed: int = 0
    # custom views: (frame uint8 [H, W, 3], n_views, generator) -> normalised views [N, 3, S, S];
    # None = `edgeclip.kernels.augment_views` at the encoder's input size and normalisation
    view_fn: ViewFn | None = None

    def __post_init__(self) -> None:
        check_positive_int("n_views", self.n_views)
        check_finite("rho", self.rho, strict=True)
        if self.rho > 1.0:
            raise InputError(f"rho must lie in (0, 1], got {self.rho}")
        check_positive_int("seed", self.seed, minimum=0)
        if self.view_fn is not None and not callable(self.view_fn):
            raise InputError(f"view_fn must be callable, got {type(self.view_fn).__name__}")


@dataclass(frozen=True)
class GuardConfig:
    """The collapse guard of online adaptation: reset when one class takes over the recent predictions."""

    # predictions watched (a sliding window of frames)
    window: int = 64
    # a class holding more than this share of a full window is a collapse; set it above the largest share a
    # class can honestly have in the stream (a stream where one class is 70 % of frames needs more than 0.7)
    max_share: float = 0.8

    def __post_init__(self) -> None:
        check_positive_int("window", self.window, minimum=2)
        check_finite("max_share", self.max_share, strict=True)
        if not self.max_share < 1.0:
            raise InputError(f"max_share must lie in (0, 1), got {self.max_share}")


def config_fields(config: Any) -> dict[str, str]:
    """Every name `configure` accepts for `config`: its own fields and those of its nested configs (→ owner)."""
    out: dict[str, str] = {}
    for f in dataclasses.fields(config):
        out[f.name] = f.name
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            for sub in dataclasses.fields(value):
                out.setdefault(sub.name, f"{f.name}.{sub.name}")
    return out


def configure(config: C, /, **overrides: Any) -> C:
    """`config` with `overrides` applied (a checked `dataclasses.replace`; the config's own checks run).

    A name that is not a field of `config` goes to the nested config that has it (``n_views`` →
    ``views.n_views``); an unknown name raises `InputError` with the valid ones.
    """
    if not dataclasses.is_dataclass(config) or isinstance(config, type):
        raise InputError(f"configure needs a config dataclass instance, got {type(config).__name__}")
    own = {f.name for f in dataclasses.fields(config)}
    direct: dict[str, Any] = {}
    nested: dict[str, dict[str, Any]] = {}
    routes = config_fields(config)
    for key, value in overrides.items():
        if key in own:
            direct[key] = value
            continue
        route = routes.get(key)
        if route is None:
            raise InputError(f"{type(config).__name__} has no setting {key!r}; valid: {', '.join(sorted(routes))}")
        owner, _, sub = route.partition(".")
        nested.setdefault(owner, {})[sub] = value
    for owner, values in nested.items():
        base = direct.get(owner, getattr(config, owner))
        direct[owner] = dataclasses.replace(base, **values)
    try:
        return dataclasses.replace(config, **direct)
    except TypeError as exc:  # a wrong type that the dataclass itself noticed
        raise InputError(f"bad {type(config).__name__} setting: {exc}") from exc


def _jsonable(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if callable(value):
        return f"callable:{getattr(value, '__module__', '?')}.{getattr(value, '__qualname__', repr(value))}"
    if isinstance(value, tuple):
        return [_jsonable(v) for v in value]
    return value


def config_to_dict(config: Any) -> dict[str, Any]:
    """A JSON-ready dict of `config` (nested configs as dicts; a callable as ``"callable:module.name"``)."""
    return _jsonable(config)


def config_from_dict(cls: type[C], data: Mapping[str, Any]) -> C:
    """Rebuild a config of type `cls` from `config_to_dict` output. A stored callable cannot be restored:
    it comes back as None (the default views), and raises if the field has no such default."""
    if not isinstance(data, Mapping):
        raise InputError(f"a {cls.__name__} must be a JSON object, got {type(data).__name__}")
    known = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(known))
    if unknown:
        raise InputError(f"{cls.__name__} has no setting(s) {unknown}")
    default = cls()
    values: dict[str, Any] = {}
    for name, raw in data.items():
        current = getattr(default, name)
        if dataclasses.is_dataclass(current):
            values[name] = config_from_dict(type(current), raw)
        elif isinstance(raw, str) and raw.startswith("callable:"):
            if current is not None:
                raise InputError(f"{cls.__name__}.{name} was a custom callable ({raw}); it cannot be restored")
            values[name] = None
        elif isinstance(current, tuple) and isinstance(raw, list):
            values[name] = tuple(raw)
        else:
            values[name] = raw
    return dataclasses.replace(default, **values)
