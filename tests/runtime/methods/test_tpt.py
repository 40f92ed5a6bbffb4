"""TPT: the tuning step lowers its loss, only the context moves, reset restores it, and zero steps is
zero-shot on the plain view."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import edgeclip
from edgeclip.data import shapes
from edgeclip.kernels import cosine_logits, select_confident
from edgeclip.runtime.methods import create_method
from edgeclip.runtime.methods.tpt import mean_entropy


@pytest.fixture(scope="module")
def frames() -> shapes.ShapesBatch:
    return shapes.make_batch(6, seed=123, shift="blur")


def test_zero_steps_is_zero_shot_on_the_plain_view(micro: edgeclip.EdgeClip, frames: shapes.ShapesBatch) -> None:
    names = shapes.class_names()
    tpt = create_method("tpt", micro, names, steps=0, n_views=8)
    pred = tpt.predict(frames.images)
    zs = micro.classifier(names, "a photo of a {}.").predict(list(frames.images))
    # view 0 is the centred crop resampled by the view kernel; the classifier resizes with PIL: same classes
    assert torch.equal(pred.labels, zs.labels)
    torch.testing.assert_close(pred.probs, zs.probs, atol=0.02, rtol=0)


def test_step_lowers_the_loss_and_moves_only_the_context(micro: edgeclip.EdgeClip,
                                                         frames: shapes.ShapesBatch) -> None:
    tpt = create_method("tpt", micro, shapes.class_names(), n_views=16, rho=0.25)
    embeds, _ = tpt.embed_views(torch.from_numpy(frames.images[0]))
    tower_before = {k: v.clone() for k, v in tpt.tower.state_dict().items()}

    def loss() -> float:
        with torch.no_grad():
            logits = cosine_logits(embeds, tpt.text_embeds(), tpt.scale)
            return float(mean_entropy(select_confident(logits, tpt.rho).log_mean_prob))

    before = loss()
    step_loss = tpt.step(embeds)
    assert step_loss == pytest.approx(before, rel=1e-5)
    assert loss() < before
    assert not torch.equal(tpt.prompt.ctx, tpt.prompt.ctx_init)
    assert all(p.grad is None for p in tpt.tower.parameters())
    for k, v in tpt.tower.state_dict().items():
        assert torch.equal(v, tower_before[k])
    tpt.reset()
    assert torch.equal(tpt.prompt.ctx, tpt.prompt.ctx_init)
    assert tpt.optimizer.state_dict()["state"] == {}


def test_predict_is_episodic_and_reproducible(micro: edgeclip.EdgeClip, frames: shapes.ShapesBatch) -> None:
    names = shapes.class_names()
    a = create_method("tpt", micro, names, n_views=16, seed=5).predict(frames.images)
    b = create_method("tpt", micro, names, n_views=16, seed=5).predict(list(frames.images))
    assert torch.equal(a.labels, b.labels)
    torch.testing.assert_close(a.probs, b.probs)
    one_by_one = create_method("tpt", micro, names, n_views=16, seed=5)
    singles = [one_by_one.predict(img) for img in frames.images]
    torch.testing.assert_close(torch.cat([s.probs for s in singles]), a.probs)
    assert a.probs.shape == (6, 16) and np.allclose(a.probs.sum(1).numpy(), 1.0, atol=1e-5)
    assert a.info["method"] == "tpt" and len(a.info["frames"]) == 6
    assert {"views", "image_encoder", "adapt"} <= set(a.timings)


def test_amp_text_tower_is_bf16_autocast_close_to_fp32(micro: edgeclip.EdgeClip, frames: shapes.ShapesBatch) -> None:
    names = shapes.class_names()
    plain = create_method("tpt", micro, names, n_views=16, seed=1)
    assert plain.amp is False  # off by default on the CPU (on by default on CUDA)
    amp = create_method("tpt", micro, names, n_views=16, seed=1, amp=True)
    e32, e16 = plain.text_embeds(), amp.text_embeds()
    assert e16.dtype == torch.float32 and e16.requires_grad
    assert not torch.equal(e32, e16)  # it did run in reduced precision
    torch.testing.assert_close(e16, e32, atol=0.05, rtol=0.05)
    p32, p16 = plain.predict(frames.images[:2]).probs, amp.predict(frames.images[:2]).probs
    torch.testing.assert_close(p16, p32, atol=0.03, rtol=0.0)
