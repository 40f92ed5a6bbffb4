"""The one factory of methods: ``create_method(name, model, class_names, **overrides)``.

The CLI (``--method NAME``), the demo, the benches and (next) the streaming session create methods only here.
A keyword is either one of the method's resources (data such as ``prototypes=``, listed in its ``resources``)
or a setting of its config, applied with `configure` (``n_views=32`` reaches ``config.views.n_views``); an
unknown keyword is an `InputError` that lists the valid ones. ``head=`` loads a trained head (a `Trainable`
method's learnt state, checked against the bundle and the classes; with ``class_names=None`` the head's
classes are used).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any, TypeVar

from edgeclip.errors import InputError
from edgeclip.runtime.classnames import validate_class_names
from edgeclip.runtime.methods.base import Method, Trainable
from edgeclip.runtime.methods.config import configure

__all__ = ["create_method", "list_methods", "method_class", "register_method"]

M = TypeVar("M", bound=type[Method])
_REGISTRY: dict[str, type[Method]] = {}


def register_method(cls: M) -> M:
    """Add a `Method` subclass under its ``name`` (a class decorator); a name is registered once."""
    if not (isinstance(cls, type) and issubclass(cls, Method)) or not cls.name:
        raise InputError(f"only Method subclasses with a name can be registered, got {cls!r}")
    if _REGISTRY.get(cls.name, cls) is not cls:
        raise InputError(f"a method named {cls.name!r} is already registered ({_REGISTRY[cls.name].__name__})")
    _REGISTRY[cls.name] = cls
    return cls


def _builtin() -> None:
    if _REGISTRY:
        return
    from edgeclip.runtime.methods.arf import ARF
    from edgeclip.runtime.methods.clap import CLAP
    from edgeclip.runtime.methods.coop import CoOp
    from edgeclip.runtime.methods.online_prototypes import OnlinePrototypes
    from edgeclip.runtime.methods.promptsync import PromptSync
    from edgeclip.runtime.methods.pseudolabel import PseudoLabel
    from edgeclip.runtime.methods.ship import SHIP
    from edgeclip.runtime.methods.tpt import TPT
    from edgeclip.runtime.methods.zero import Zero
    from edgeclip.runtime.methods.zeroshot import ZeroShot

    for cls in (ZeroShot, TPT, PromptSync, Zero, OnlinePrototypes, CoOp, SHIP, PseudoLabel, ARF, CLAP):
        register_method(cls)


def list_methods() -> list[str]:
    """The registered method names, in registration order (``zeroshot`` first)."""
    _builtin()
    return list(_REGISTRY)


def method_class(name: str) -> type[Method]:
    """The class registered as `name` (`InputError` naming the valid ones otherwise)."""
    _builtin()
    key = name.strip().lower().replace("-", "_") if isinstance(name, str) else name
    if key not in _REGISTRY:
        raise InputError(f"unknown method {name!r}; choose one of {', '.join(_REGISTRY)}")
    return _REGISTRY[key]


def create_method(name: str, model: Any, class_names: Sequence[str] | None, *, config: Any = None,
                  head: str | os.PathLike | None = None, **overrides: Any) -> Method:
    """A new method `name` for `model` and `class_names`.

    Args:
        name: a registered name (`list_methods()`; ``-`` and ``_`` are the same).
        model: the loaded bundle (``edgeclip.load``).
        class_names: the classes, in order; None only with a `head` (its classes are used).
        config: a complete config to start from (default: the method's defaults, or the head's).
        head: a head file saved by a `Trainable` of this kind (checked against the bundle and classes).
        **overrides: resources (``prototypes=``, ``bank=``, see the method's ``resources``) and config settings.
    """
    cls = method_class(name)
    resources = {k: overrides.pop(k) for k in list(overrides) if k in cls.resources}
    loaded = None
    if head is not None:
        if not issubclass(cls, Trainable):
            raise InputError(f"method {cls.name!r} does not train, so it takes no head; trainable: "
                             f"{', '.join(n for n, c in _REGISTRY.items() if issubclass(c, Trainable))}")
        from edgeclip.runtime.head import read_head

        loaded = read_head(head)
        class_names = None if class_names is None else validate_class_names(class_names)
        loaded.check(cls.name, model.bundle, class_names)
        if class_names is None:
            class_names = loaded.class_names
        if config is None:
            config = loaded.config_for(cls.config_class)
    if class_names is None:
        raise InputError(f"create_method({cls.name!r}, ...) needs class_names (or a head that brings them)")
    cfg = cls.config_class() if config is None else config
    if not isinstance(cfg, cls.config_class):
        raise InputError(f"method {cls.name!r} takes a {cls.config_class.__name__}, got {type(cfg).__name__}")
    if overrides:
        cfg = configure(cfg, **overrides)
    method = cls(model, class_names, cfg, **resources)
    if loaded is not None:
        loaded.apply_to(method)
    return method
