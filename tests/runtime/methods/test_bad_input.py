"""What the adaptation methods do with bad or extreme input."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import edgeclip
from edgeclip.data import shapes
from edgeclip.errors import ImageError, InputError
from edgeclip.runtime.methods import TPT, PromptSync, Zero


@pytest.fixture(scope="module")
def micro() -> edgeclip.EdgeClip:
    return edgeclip.load(edgeclip.default_bundle(), backend="torch")


def test_nan_frame_is_refused(micro: edgeclip.EdgeClip) -> None:
    with pytest.raises(ImageError, match="NaN"):
        TPT(micro, shapes.class_names(), n_views=8).predict(np.full((16, 16, 3), np.nan, dtype=np.float32))


@pytest.mark.parametrize(
    "frame",
    [np.zeros((64, 64, 3), np.uint8), np.full((1, 1, 3), 200, np.uint8), np.zeros((3, 500, 3), np.uint8)],
    ids=["black", "1x1", "3x500"],
)
def test_extreme_frames_give_a_valid_prediction(micro: edgeclip.EdgeClip, frame: np.ndarray) -> None:
    for cls in (TPT, Zero):
        pred = cls(micro, shapes.class_names(), n_views=8).predict(frame)
        assert pred.probs.shape == (1, 16) and torch.isfinite(pred.probs).all()
        assert abs(float(pred.probs.sum()) - 1.0) < 1e-5


def test_one_class(micro: edgeclip.EdgeClip) -> None:
    pred = TPT(micro, ["red circle"], n_views=8).predict(np.zeros((32, 32, 3), np.uint8))
    assert pred.names == ["red circle"] and float(pred.probs[0, 0]) == pytest.approx(1.0)


def test_non_finite_loss_never_reaches_the_state(micro: edgeclip.EdgeClip) -> None:
    protos = torch.nn.functional.normalize(torch.randn(16, micro.bundle.embed_dim), dim=1)
    for method in (TPT(micro, shapes.class_names(), n_views=8),
                   PromptSync(micro, shapes.class_names(), n_views=8, prototypes=protos)):
        bad = torch.full((8, micro.bundle.embed_dim), float("nan"))
        before = method.prompt.ctx.detach().clone()
        result = method.adapt(bad)
        assert result.info["skipped_steps"] == 1 and method.skipped_steps == 1
        assert torch.equal(method.prompt.ctx, before)
        if isinstance(method, PromptSync):
            assert torch.isfinite(method.delta).all()


def test_bad_method_arguments(micro: edgeclip.EdgeClip) -> None:
    with pytest.raises(InputError, match="modes"):
        TPT(micro, ["a", "b"], mode="sometimes")
    with pytest.raises(InputError, match="n_views"):
        TPT(micro, ["a", "b"], n_views=0)
    with pytest.raises(InputError, match="rho"):
        Zero(micro, ["a", "b"], rho=0.0)
    with pytest.raises(InputError, match="at least one image"):
        TPT(micro, ["a", "b"]).predict([])
