"""A method's state as plain data: nested dicts of tensors and JSON values, and the pieces that go into it.

`Method.state_dict()` returns ``{"adapted": {...}, "stream": {...}}``: ``adapted`` is everything the method
has learnt (context vectors, visual prompt, optimiser moments, prototype bank, caches), ``stream`` where it is
in the stream (the view generator, frames seen, the collapse guard, counters). `reset()` puts ``adapted``
back to what it was at creation; the stream part moves on. Both are snapshots: tensors are cloned, so a
state dict never changes after it was taken.

`flatten_state` / `unflatten_state` turn a nested state into the flat tensor dict plus JSON a safetensors file
can hold (keys joined with ``.``).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import torch

from edgeclip.errors import InputError

__all__ = [
    "clone_state",
    "flatten_state",
    "generator_state",
    "load_generator_state",
    "load_optimizer_state",
    "optimizer_state",
    "unflatten_state",
]

_SEP = "."


def clone_state(value: Any) -> Any:
    """A deep copy of a nested state: tensors cloned (detached), dicts and lists rebuilt, scalars kept."""
    if isinstance(value, torch.Tensor):
        return value.detach().clone()
    if isinstance(value, Mapping):
        return {k: clone_state(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(clone_state(v) for v in value)
    return value


def optimizer_state(optimizer: torch.optim.Optimizer) -> dict[str, dict[str, torch.Tensor]]:
    """The optimiser's per-parameter state (e.g. AdamW's ``step``, ``exp_avg``, ``exp_avg_sq``), keyed by the
    parameter's position over all groups (``"0"``, ``"1"``, ...); parameters without state are left out."""
    out: dict[str, dict[str, torch.Tensor]] = {}
    params = [p for group in optimizer.param_groups for p in group["params"]]
    for i, p in enumerate(params):
        st = optimizer.state.get(p)
        if st:
            out[str(i)] = {k: (v.detach().clone() if isinstance(v, torch.Tensor) else torch.tensor(v))
                           for k, v in st.items()}
    return out


def load_optimizer_state(optimizer: torch.optim.Optimizer, state: Mapping[str, Mapping[str, torch.Tensor]]) -> None:
    """Restore `optimizer_state` output in place (the state of parameters not in `state` is cleared)."""
    params = [p for group in optimizer.param_groups for p in group["params"]]
    optimizer.state.clear()
    for key, st in state.items():
        if not key.isdigit() or int(key) >= len(params):
            raise InputError(f"optimizer state for parameter {key!r}, but the optimizer has {len(params)}")
        p = params[int(key)]
        restored: dict[str, torch.Tensor] = {}
        for name, value in st.items():
            if not isinstance(value, torch.Tensor):
                raise InputError(f"optimizer state {key}.{name} must be a tensor, got {type(value).__name__}")
            if name != "step" and value.shape != p.shape:
                raise InputError(f"optimizer state {key}.{name} has shape {list(value.shape)}, the parameter "
                                 f"{list(p.shape)}")
            restored[name] = value.detach().clone().to(p.device if name != "step" else value.device)
        optimizer.state[p] = restored


def generator_state(generator: torch.Generator) -> torch.Tensor:
    return generator.get_state().clone()


def load_generator_state(generator: torch.Generator, state: torch.Tensor) -> None:
    if not isinstance(state, torch.Tensor) or state.dtype != torch.uint8:
        raise InputError("a generator state must be the uint8 tensor Generator.get_state() returns")
    generator.set_state(state.clone())


def flatten_state(state: Mapping[str, Any], prefix: str = "") -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """``(tensors, values)``: the tensors of a nested state under dotted keys, and every other value (JSON)
    under the same kind of key."""
    tensors: dict[str, torch.Tensor] = {}
    values: dict[str, Any] = {}
    for key, value in state.items():
        if _SEP in str(key):
            raise InputError(f"state key {key!r} must not contain {_SEP!r}")
        name = f"{prefix}{key}"
        if isinstance(value, torch.Tensor):
            tensors[name] = value.detach().cpu().contiguous()
        elif isinstance(value, Mapping):
            if not value:
                values[name] = {}
            t, v = flatten_state(value, name + _SEP)
            tensors.update(t)
            values.update(v)
        else:
            try:
                json.dumps(value)
            except TypeError as exc:
                raise InputError(f"state value {name} of type {type(value).__name__} cannot be saved") from exc
            values[name] = value
    return tensors, values


def unflatten_state(tensors: Mapping[str, torch.Tensor], values: Mapping[str, Any]) -> dict[str, Any]:
    """Invert `flatten_state`."""
    out: dict[str, Any] = {}
    for key, value in [*values.items(), *tensors.items()]:
        parts = key.split(_SEP)
        node = out
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        if isinstance(value, Mapping) and not value:
            node.setdefault(parts[-1], {})
        else:
            node[parts[-1]] = value
    return out
