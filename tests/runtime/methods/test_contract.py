"""The contract every registered method keeps, one parametrised test per rule (no per-method copies).

A new method is registered → it must appear in CASES (the first test fails otherwise) → it runs every rule.
"""

from __future__ import annotations

import threading
from typing import Any

import numpy as np
import pytest
import torch

import edgeclip
from edgeclip.data import shapes
from edgeclip.errors import ImageError, InputError
from edgeclip.kernels import augment_views
from edgeclip.runtime.methods import create_method, list_methods, method_class
from edgeclip.runtime.methods.base import ViewMethod
from edgeclip.runtime.prototypes import ClassPrototypes, build_prototypes

NAMES = shapes.class_names()
VIEWS = 8

# (registry name, overrides): every registered method, and the online variants of those that have one
CASES: list[tuple[str, dict[str, Any]]] = [
    ("zeroshot", {}),
    ("tpt", {}),
    ("tpt", {"mode": "online"}),
    ("promptsync", {}),
    ("promptsync", {"mode": "online"}),
    ("zero", {}),
    ("online_prototypes", {}),
    ("online_prototypes", {"mode": "episodic"}),
    ("coop", {}),
    ("ship", {}),
    ("pseudolabel", {}),
    ("arf", {}),
    ("clap", {}),
]
IDS = [name + ("-" + "-".join(map(str, o.values())) if o else "") for name, o in CASES]


@pytest.fixture(scope="module")
def protos(micro: edgeclip.EdgeClip) -> ClassPrototypes:
    return build_prototypes(micro, "shapes:32")


@pytest.fixture(scope="module")
def frames() -> np.ndarray:
    return shapes.make_batch(6, seed=77, shift="low_contrast").images


def make(micro: edgeclip.EdgeClip, protos: ClassPrototypes, name: str, overrides: dict[str, Any],
         **extra: Any) -> Any:
    kw: dict[str, Any] = {**overrides, **extra}
    cls = edgeclip.runtime.methods.method_class(name)
    if "views" in {f for f in cls.config_class.__dataclass_fields__}:
        kw.setdefault("n_views", VIEWS)
    if "prototypes" in cls.resources:
        kw["prototypes"] = protos
    return create_method(name, micro, NAMES, **kw)


def content_views(micro: edgeclip.EdgeClip):
    """Views that depend on the frame only (not on the call order): boxes drawn from the frame's own bytes."""
    cfg = micro.preprocess_cfg

    def views(frame: torch.Tensor, n: int, _: torch.Generator) -> torch.Tensor:
        g = torch.Generator().manual_seed(int(frame.to(torch.int64).sum()) % (2**31))
        return augment_views(frame, n, cfg.image_size, mean=cfg.mean, std=cfg.std, generator=g)[0]

    return views


def adapted_equal(a: Any, b: Any) -> bool:
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.shape == b.shape and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and set(a) == set(b) and all(adapted_equal(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return isinstance(b, (list, tuple)) and len(a) == len(b) and all(map(adapted_equal, a, b))
    return a == b


def test_every_registered_method_is_covered() -> None:
    assert {name for name, _ in CASES} == set(list_methods())


@pytest.mark.parametrize(("name", "overrides"), CASES, ids=IDS)
def test_predict_shape_probabilities_and_records(micro, protos, frames, name, overrides) -> None:
    method = make(micro, protos, name, overrides)
    pred = method.predict(frames)
    assert pred.labels.shape == (6,) and pred.labels.dtype == torch.int64
    assert pred.probs.shape == (6, 16) and torch.isfinite(pred.probs).all() and (pred.probs >= 0).all()
    torch.testing.assert_close(pred.probs.sum(1), torch.ones(6), atol=1e-5, rtol=0)
    assert pred.info["method"] == name and pred.class_names == NAMES
    records = pred.to_records(top_k=3)
    assert [r["label"] for r in records] == pred.names  # what the method decided, not re-derived
    for r, label, row in zip(records, pred.labels.tolist(), pred.probs, strict=True):
        assert r["confidence"] == pytest.approx(float(row[label]))
        assert r["top"][0]["label"] == NAMES[label] and len(r["top"]) == 3
    assert method.predict(frames[0]).probs.shape == (1, 16)  # one frame alone


@pytest.mark.parametrize(("name", "overrides"), CASES, ids=IDS)
def test_reset_returns_to_the_state_as_created(micro, protos, frames, name, overrides) -> None:
    fresh = make(micro, protos, name, overrides).state_dict()["adapted"]
    method = make(micro, protos, name, overrides)
    method.predict(frames)
    after = method.state_dict()["adapted"]
    if getattr(method, "mode", "episodic") == "episodic":
        assert adapted_equal(after, fresh)  # episodic: every frame ends in a reset
    method.reset()
    assert adapted_equal(method.state_dict()["adapted"], fresh)


@pytest.mark.parametrize(("name", "overrides"), CASES, ids=IDS)
def test_state_dict_round_trip_gives_the_identical_next_prediction(micro, protos, frames, name, overrides) -> None:
    method = make(micro, protos, name, overrides)
    method.predict(frames[:4])
    state = method.state_dict()
    expected = method.predict(frames[4:])
    other = make(micro, protos, name, overrides, seed=123) if "views" in method.config.__dataclass_fields__ else \
        make(micro, protos, name, overrides)
    other.load_state_dict(state)
    got = other.predict(frames[4:])
    assert torch.equal(got.labels, expected.labels)
    assert torch.equal(got.probs, expected.probs)
    # a snapshot never changes after it was taken
    assert adapted_equal(state, state | {}) and state is not method.state_dict()


@pytest.mark.parametrize(("name", "overrides"), CASES, ids=IDS)
def test_a_seed_reproduces(micro, protos, frames, name, overrides) -> None:
    a = make(micro, protos, name, overrides).predict(frames)
    b = make(micro, protos, name, overrides).predict(list(frames))
    assert torch.equal(a.labels, b.labels) and torch.equal(a.probs, b.probs)


@pytest.mark.parametrize(("name", "overrides"), CASES, ids=IDS)
def test_bad_inputs(micro, protos, name, overrides) -> None:
    method = make(micro, protos, name, overrides)
    with pytest.raises(InputError):
        method.predict([])
    with pytest.raises(ImageError, match="NaN"):
        method.predict([np.full((16, 16, 3), np.nan, dtype=np.float32)])
    with pytest.raises(InputError):
        method.load_state_dict({"adapted": {}})
    with pytest.raises(InputError, match="no setting"):
        make(micro, protos, name, overrides, not_a_setting=1)
    state = method.state_dict()
    method.predict(shapes.make_batch(1, seed=5).images)  # nothing lost: a bad call left the method usable
    method.load_state_dict(state)


@pytest.mark.parametrize(("name", "overrides"), CASES, ids=IDS)
def test_one_instance_shared_by_four_threads(micro, protos, name, overrides) -> None:
    """4 threads × 6 calls on one instance give what one thread gives, frame for frame (deterministic views);
    an online method's results equal a sequential replay in the order the calls were served."""
    frames = shapes.make_batch(24, seed=9, shift="blur").images
    extra = {"view_fn": content_views(micro)} if issubclass(method_class(name), ViewMethod) else {}
    shared = make(micro, protos, name, overrides, **extra)
    results: dict[int, Any] = {}
    errors: list[BaseException] = []

    def work(rows: list[int]) -> None:
        try:
            for i in rows:
                results[i] = shared.predict(frames[i])
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(list(range(t, 24, 4)),)) for t in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(results) == 24
    online = getattr(shared, "mode", "episodic") == "online"
    order = sorted(results, key=lambda i: results[i].info["frames"][0]["frame"]) if online else range(24)
    alone = make(micro, protos, name, overrides, **extra)
    for i in order:
        ref = alone.predict(frames[i])
        assert torch.equal(results[i].labels, ref.labels), f"frame {i}"
        torch.testing.assert_close(results[i].probs, ref.probs, atol=1e-6, rtol=0)
