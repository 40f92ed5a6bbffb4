"""Online prototypes: zero-shot plus a bounded cache term, state carried across frames and predict calls."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import edgeclip
from edgeclip.data import shapes
from edgeclip.errors import BundleError, InputError
from edgeclip.kernels import cosine_logits, select_confident
from edgeclip.runtime.methods import create_method
from edgeclip.runtime.prototypes import ClassPrototypes, build_prototypes


@pytest.fixture(scope="module")
def frames() -> shapes.ShapesBatch:
    return shapes.make_batch(10, seed=321, shift="blur")


def test_stream_fills_the_bank_and_state_carries(micro: edgeclip.EdgeClip, frames: shapes.ShapesBatch) -> None:
    names = shapes.class_names()
    method = create_method("online_prototypes", micro, names, n_views=8, rho=0.25, seed=0)
    nbytes = method.bank.state_nbytes()
    pred = method.predict(frames.images[:6])
    assert pred.probs.shape == (6, 16) and pred.info["method"] == "online_prototypes"
    torch.testing.assert_close(pred.probs.sum(1), torch.ones(6))
    infos = pred.info["frames"]
    assert infos[0]["absorbed"] and [i["bank_entries"] for i in infos] == sorted(i["bank_entries"] for i in infos)
    filled = len(method.bank)
    assert 1 <= filled <= 6 and filled <= 16 * method.bank.capacity
    method.predict(frames.images[6:])  # a second call continues the same stream
    assert len(method.bank) >= filled and method.bank.offered == 10
    assert method.bank.state_nbytes() == nbytes
    method.reset()
    assert len(method.bank) == 0
    episodic = create_method("online_prototypes", micro, names, n_views=8, rho=0.25, mode="episodic")
    episodic.predict(frames.images[:2])
    assert len(episodic.bank) == 0 and episodic.bank.offered == 0  # emptied after every frame


def test_logits_are_zero_shot_plus_the_cache_term(micro: edgeclip.EdgeClip, frames: shapes.ShapesBatch) -> None:
    names = shapes.class_names()
    method = create_method("online_prototypes", micro, names, n_views=8, rho=0.25, seed=3, alpha=2.0, beta=5.0)
    check = create_method("online_prototypes", micro, names, n_views=8, rho=0.25, seed=3, alpha=0.0)
    for i, frame in enumerate(frames.images[:5]):
        embeds, _ = check.embed_views(torch.from_numpy(frame))
        zs = cosine_logits(embeds[:1], check.text, check.scale)
        expected = zs + 2.0 * method.scale / 100 * method.bank.affinity_logits(embeds[:1], 5.0)
        torch.testing.assert_close(method.logits(embeds[:1]), expected)
        result = method.adapt(embeds)
        torch.testing.assert_close(result.probs, expected[0].softmax(-1))
        assert result.label == int(expected.argmax())
        # alpha = 0: plain zero-shot on view 0, whatever the bank holds
        assert check.adapt(embeds).label == int(zs.argmax())
        if i:
            assert len(method.bank) >= 1


def test_absorbs_the_confident_mean_with_its_entropy(micro: edgeclip.EdgeClip) -> None:
    method = create_method("online_prototypes", micro, ["a", "b", "c"], n_views=4, rho=0.5, capacity=2)
    method.text = torch.eye(3, 128)
    method.bank = type(method.bank)(3, 128, 2)
    embeds = torch.zeros(4, 128)
    embeds[0, :3] = torch.tensor([1.0, 0.2, 0.0])
    embeds[1, :3] = torch.tensor([1.0, 0.0, 0.0])
    embeds[2:, :3] = 1.0  # uniform views: not confident
    result = method.adapt(embeds)
    assert result.label == 0 and result.info["absorbed"]
    sel = select_confident(cosine_logits(embeds, method.text, method.scale), 0.5)
    assert sorted(sel.index.tolist()) == [0, 1]
    torch.testing.assert_close(method.bank.keys[0, 0], F.normalize(embeds[:2].mean(0), dim=0))
    p = sel.log_mean_prob.exp()
    torch.testing.assert_close(method.bank.scores[0, 0], -(p * p.log()).sum())
    assert method.bank.counts().tolist() == [1, 0, 0]


def test_offline_prototypes_seed_the_prior(micro: edgeclip.EdgeClip, frames: shapes.ShapesBatch) -> None:
    protos = build_prototypes(micro, "shapes:16", progress=False)
    names = list(reversed(shapes.class_names()))
    method = create_method("online_prototypes", micro, names, prototypes=protos, n_views=4, rho=0.5)
    torch.testing.assert_close(method.prior, protos.embeds.flip(0))  # aligned to the method's class order
    embeds, _ = method.embed_views(torch.from_numpy(frames.images[0]))
    q = F.normalize(embeds[:1], dim=-1)
    expected = cosine_logits(q, method.text, method.scale) + method.scale * q @ method.prior.T  # empty bank
    torch.testing.assert_close(method.logits(embeds[:1]), expected)
    pred = method.predict(frames.images[:3])
    assert pred.labels.shape == (3,) and len(method.bank) >= 1
    with pytest.raises(BundleError, match="width"):
        create_method("online_prototypes", micro, names, prototypes=ClassPrototypes(torch.randn(16, 64), names))
    with pytest.raises(InputError, match="alpha"):
        create_method("online_prototypes", micro, names, alpha=float("nan"))
