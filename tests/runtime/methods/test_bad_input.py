"""What the adaptation methods do with bad or extreme input."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import edgeclip
from edgeclip.data import shapes
from edgeclip.errors import ClassNameError, ImageError, InputError
from edgeclip.runtime.methods import create_method
from edgeclip.runtime.prototypes import ClassPrototypes

NAMES = shapes.class_names()


def test_nan_frame_is_refused(micro: edgeclip.EdgeClip) -> None:
    with pytest.raises(ImageError, match="NaN"):
        create_method("tpt", micro, NAMES, n_views=8).predict(np.full((16, 16, 3), np.nan, dtype=np.float32))


@pytest.mark.parametrize(
    "frame",
    [np.zeros((64, 64, 3), np.uint8), np.full((1, 1, 3), 200, np.uint8), np.zeros((3, 500, 3), np.uint8)],
    ids=["black", "1x1", "3x500"],
)
def test_extreme_frames_give_a_valid_prediction(micro: edgeclip.EdgeClip, frame: np.ndarray) -> None:
    for name in ("tpt", "zero"):
        pred = create_method(name, micro, NAMES, n_views=8).predict(frame)
        assert pred.probs.shape == (1, 16) and torch.isfinite(pred.probs).all()
        assert abs(float(pred.probs.sum()) - 1.0) < 1e-5


def test_one_class(micro: edgeclip.EdgeClip) -> None:
    pred = create_method("tpt", micro, ["red circle"], n_views=8).predict(np.zeros((32, 32, 3), np.uint8))
    assert pred.names == ["red circle"] and float(pred.probs[0, 0]) == pytest.approx(1.0)


def test_non_finite_loss_never_reaches_the_state(micro: edgeclip.EdgeClip) -> None:
    protos = ClassPrototypes(torch.nn.functional.normalize(torch.randn(16, micro.bundle.embed_dim), dim=1), NAMES)
    for method in (create_method("tpt", micro, NAMES, n_views=8),
                   create_method("promptsync", micro, NAMES, n_views=8, prototypes=protos)):
        bad = torch.full((8, micro.bundle.embed_dim), float("nan"))
        before = method.prompt.ctx.detach().clone()
        result = method.adapt(bad)
        assert result.info["skipped_steps"] == 1 and method.skipped_steps == 1
        assert torch.equal(method.prompt.ctx, before)
        if method.name == "promptsync":
            assert torch.isfinite(method.delta).all()


@pytest.mark.parametrize(
    ("name", "overrides", "match"),
    [("tpt", {"mode": "sometimes"}, "mode"), ("tpt", {"n_views": 0}, "n_views"), ("zero", {"rho": 0.0}, "rho"),
     ("zero", {"mode": "online"}, "mode"), ("tpt", {"lr": float("nan")}, "lr"), ("tpt", {"nviews": 8}, "nviews"),
     ("tpt", {"steps": -1}, "steps"), ("promptsync", {"tau": 0.0}, "tau"), ("zero", {"template": "a {} {x}"}, "{x}"),
     ("tpt", {"prototypes": "shapes:16"}, "prototypes"), ("online_prototypes", {"capacity": 0}, "capacity")],
)
def test_bad_method_settings(micro: edgeclip.EdgeClip, name: str, overrides: dict, match: str) -> None:
    with pytest.raises((InputError, ClassNameError), match=match):
        create_method(name, micro, ["a", "b"], **overrides)


def test_bad_method_names_and_models(micro: edgeclip.EdgeClip) -> None:
    with pytest.raises(InputError, match="unknown method 'tptt'; choose one of zeroshot, tpt"):
        create_method("tptt", micro, ["a", "b"])
    with pytest.raises(InputError, match=r"edgeclip\.load"):
        create_method("tpt", "micro", ["a", "b"])
    with pytest.raises(InputError, match="at least one image"):
        create_method("tpt", micro, ["a", "b"]).predict([])
    with pytest.raises(InputError, match="bank"):  # a bank carries state across frames: online only
        from edgeclip.runtime.prototype_bank import PrototypeBank

        create_method("promptsync", micro, ["a", "b"], bank=PrototypeBank(2, micro.bundle.embed_dim))
