"""PromptSync: the losses as formulated, the reusable discrimination step, reset, fallbacks and errors."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F

import edgeclip
from edgeclip.data import shapes
from edgeclip.errors import BundleError, ClassNameError, InputError
from edgeclip.runtime.methods import PromptSync, create_method
from edgeclip.runtime.methods.promptsync import PromptSyncConfig, info_nce
from edgeclip.runtime.prototypes import ClassPrototypes


@pytest.fixture(scope="module")
def protos(micro: edgeclip.EdgeClip) -> torch.Tensor:
    batch = shapes.make_batch(64, seed=99, shift="clean", labels=[i % 16 for i in range(64)])
    emb = F.normalize(micro.encode_images(list(batch.images)), dim=-1)
    labels = torch.tensor(batch.labels)
    return F.normalize(torch.stack([emb[labels == c].mean(0) for c in range(16)]), dim=-1)


def _wrap(embeds: torch.Tensor) -> ClassPrototypes:
    return ClassPrototypes(embeds, shapes.class_names())


def frame_embeds(method: PromptSync, seed: int = 0) -> torch.Tensor:
    frame = torch.from_numpy(shapes.make_batch(1, seed=seed, shift="blur").images[0])
    return method.embed_views(frame)[0]


def test_info_nce_prefers_matching_rows() -> None:
    a = torch.eye(4)
    assert info_nce(a, a, 0.1) < info_nce(a, a.roll(1, 0), 0.1)
    # symmetric: swapping the two sides gives the same value
    b = torch.randn(4, 4)
    torch.testing.assert_close(info_nce(a, b, 0.5), info_nce(b, a, 0.5))


def test_losses_match_the_formulation(micro: edgeclip.EdgeClip, protos: torch.Tensor) -> None:
    cfg = PromptSyncConfig(lambda_align=0.7, lambda_disc=0.3, tau=0.05)
    ps = create_method("promptsync", micro, shapes.class_names(), prototypes=_wrap(protos), config=cfg, n_views=16,
                       rho=0.25)
    embeds = frame_embeds(ps)
    with torch.no_grad():
        ps.delta.normal_(0, 0.01)
        total, parts, p_bar, z = ps.losses(embeds, protos, with_disc=True)
        e = F.normalize(embeds, dim=-1) + ps.delta
        text = ps.text_embeds()
        logits = ps.scale * F.normalize(e, dim=-1) @ F.normalize(text, dim=-1).T
        probs = logits.softmax(-1)
        ent = -(probs * probs.log()).sum(1)
        keep = torch.cat([torch.tensor([0]), ent[1:].argsort()[:4] + 1])
        p_ref = probs[keep].mean(0)
        z_ref = F.normalize(e[keep].mean(0), dim=-1)
        ent_ref = -(p_ref * p_ref.log()).sum()
        align_ref = (p_ref * ((z_ref - protos) ** 2).sum(1)).sum()
        disc_ref = info_nce(text, protos, 0.05)
    torch.testing.assert_close(p_bar, p_ref, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(z, z_ref, rtol=1e-5, atol=1e-6)
    assert parts["ent"] == pytest.approx(float(ent_ref), rel=1e-5)
    assert parts["align"] == pytest.approx(float(align_ref), rel=1e-5)
    assert parts["disc"] == pytest.approx(float(disc_ref), rel=1e-5)
    assert float(total) == pytest.approx(float(ent_ref + 0.7 * align_ref + 0.3 * disc_ref), rel=1e-5)


def test_reusable_discrimination_step_is_exact_at_the_first_step(micro: edgeclip.EdgeClip,
                                                                 protos: torch.Tensor) -> None:
    names = shapes.class_names()
    updates = []
    for reuse in (True, False):
        ps = create_method("promptsync", micro, names, prototypes=_wrap(protos), reuse_disc=reuse, n_views=16, seed=3)
        ps.step(frame_embeds(ps, seed=4))
        updates.append((ps.prompt.ctx.detach().clone(), ps.delta.detach().clone()))
    torch.testing.assert_close(updates[0][0], updates[1][0], rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(updates[0][1], updates[1][1], rtol=1e-5, atol=1e-7)


def test_episodic_reset_and_prediction(micro: edgeclip.EdgeClip, protos: torch.Tensor) -> None:
    ps = create_method("promptsync", micro, shapes.class_names(), prototypes=_wrap(protos), n_views=16)
    batch = shapes.make_batch(4, seed=8, shift="low_contrast")
    pred = ps.predict(batch.images)
    assert pred.probs.shape == (4, 16)
    assert torch.equal(ps.prompt.ctx, ps.prompt.ctx_init) and not ps.delta.abs().sum()
    assert all(len(f["loss"]) == 1 for f in pred.info["frames"])


def test_without_prototypes_warns_and_uses_text(micro: edgeclip.EdgeClip) -> None:
    with pytest.warns(RuntimeWarning, match="no class prototypes"):
        ps = create_method("promptsync", micro, shapes.class_names(), n_views=8)
    assert ps.prototypes_source == "text"
    torch.testing.assert_close(ps.offline.norm(dim=1), torch.ones(16))


@pytest.mark.parametrize("method", ["promptsync", "online_prototypes"])
def test_one_prototype_check_for_every_method(micro: edgeclip.EdgeClip, protos: torch.Tensor, method: str) -> None:
    """PromptSync and online prototypes refuse the same prototypes, through the same check."""
    names = shapes.class_names()
    good = ClassPrototypes(protos, names, meta={"image_encoder_sha256": "0" * 64})  # made by another encoder
    with pytest.raises(BundleError, match="another model"):
        create_method(method, micro, names, prototypes=good, n_views=8)
    with pytest.raises(BundleError, match="width"):
        create_method(method, micro, names, prototypes=ClassPrototypes(torch.randn(16, 8), names), n_views=8)
    with pytest.raises(InputError, match="ClassPrototypes"):
        create_method(method, micro, names, prototypes=protos, n_views=8)  # a bare tensor carries no identity
    with pytest.raises(ClassNameError, match="no prototype"):
        create_method(method, micro, [*names[:15], "purple cow"], prototypes=_wrap(protos), n_views=8)
    # another order of the same classes: aligned, row for row
    flipped = create_method(method, micro, names[::-1], prototypes=_wrap(protos), n_views=8)
    rows = flipped.offline if method == "promptsync" else flipped.prior
    torch.testing.assert_close(rows, F.normalize(protos, dim=-1).flip(0))


def test_bad_config() -> None:
    with pytest.raises(InputError, match="tau"):
        PromptSyncConfig(tau=0)
    with pytest.raises(InputError, match=">= 0"):
        PromptSyncConfig(lambda_align=-1)


def _readout_reference(ps: PromptSync, embeds: torch.Tensor, protos: torch.Tensor, gamma: float) -> torch.Tensor:
    """The prediction as documented: s·cos(x + delta, t) + γ·s·cos(x + delta, P), from the adapted state."""
    x = F.normalize(F.normalize(embeds[:1], dim=-1) + ps.delta, dim=-1)
    text = F.normalize(ps.text_embeds(), dim=-1)
    return (ps.scale * x @ text.T + gamma * ps.scale * x @ F.normalize(protos, dim=-1).T)[0].softmax(-1)


def test_prototype_readout_in_the_prediction(micro: edgeclip.EdgeClip, protos: torch.Tensor) -> None:
    names = shapes.class_names()
    results = {}
    for gamma in (0.0, 2.0):
        ps = create_method("promptsync", micro, names, prototypes=_wrap(protos), proto_weight=gamma, n_views=16,
                           seed=5)
        embeds = frame_embeds(ps, seed=6)
        ps.step(embeds)  # the adapted state the prediction is read from
        with torch.no_grad():
            ref = _readout_reference(ps, embeds, protos, gamma)
        ps.config = dataclasses.replace(ps.config, steps=0)  # adapt() without further steps: only the prediction
        results[gamma] = ps.adapt(embeds).probs
        torch.testing.assert_close(results[gamma], ref, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(results[0.0], results[2.0])  # the readout changes the prediction


def test_online_mode_reads_out_the_bank_prototypes(micro: edgeclip.EdgeClip, protos: torch.Tensor) -> None:
    from edgeclip.runtime.prototype_bank import PrototypeBank

    names = shapes.class_names()
    bank = PrototypeBank(16, micro.bundle.embed_dim, 4)
    ps = create_method("promptsync", micro, names, prototypes=_wrap(protos), mode="online", bank=bank, n_views=16,
                       seed=2)
    assert ps.readout_weight == ps.config.online_proto_weight == 3.0
    episodic = create_method("promptsync", micro, names, prototypes=_wrap(protos), n_views=8)
    assert episodic.readout_weight == 0.0  # episodic: as formulated
    batch = shapes.make_batch(6, seed=12, shift="blur")
    pred = ps.predict(batch.images)
    assert len(bank) >= 1 and bank.offered == 6  # every frame offered to the bank, under its predicted class
    # the cache term: the next prediction uses the bank-refined prototypes, not the offline ones
    refined = ps.current_prototypes()
    assert not torch.allclose(refined, F.normalize(protos, dim=-1))
    embeds = frame_embeds(ps, seed=13)
    state = bank.state_dict()
    ps.config = dataclasses.replace(ps.config, steps=0)
    with torch.no_grad():
        ref = _readout_reference(ps, embeds, refined, 3.0)
    torch.testing.assert_close(ps.adapt(embeds).probs, ref, rtol=1e-5, atol=1e-6)
    bank.load_state_dict(state)
    assert pred.labels.shape == (6,)
    # prompts restart every frame in online mode; the bank is what carries over
    assert torch.equal(ps.prompt.ctx, ps.prompt.ctx_init) and not ps.delta.abs().sum()


def test_bad_readout_weight() -> None:
    with pytest.raises(InputError, match=">= 0"):
        PromptSyncConfig(online_proto_weight=-0.5)


def test_reusable_gradient_follows_the_bank(micro: edgeclip.EdgeClip, protos: torch.Tensor) -> None:
    from edgeclip.runtime.prototype_bank import PrototypeBank

    bank = PrototypeBank(16, micro.bundle.embed_dim, 4)
    ps = create_method("promptsync", micro, shapes.class_names(), prototypes=_wrap(protos), mode="online", bank=bank,
                       n_views=8)

    def exact(p: torch.Tensor) -> torch.Tensor:
        ctx = ps.prompt.ctx
        with torch.no_grad():
            ctx.copy_(ps.prompt.ctx_init)
        loss = ps.config.lambda_disc * info_nce(ps.text_embeds(), p, ps.config.tau)
        return torch.autograd.grad(loss, ctx)[0]

    p0 = ps.current_prototypes()
    g0 = ps._reusable_disc_grad(p0)
    assert ps._reusable_disc_grad(p0.clone()) is g0  # same prototypes: reused, not recomputed
    torch.testing.assert_close(g0, exact(p0))
    bank.add(torch.randn(1, micro.bundle.embed_dim), torch.tensor([3]), torch.tensor([0.1]))
    p1 = ps.current_prototypes()
    g1 = ps._reusable_disc_grad(p1)
    assert g1 is not g0 and not torch.equal(p1, p0)
    torch.testing.assert_close(g1, exact(p1))
