"""SHIP: the VAE's architecture and loss, the synthetic features, the prompt stage, selection, heads, bad input."""

from __future__ import annotations

import inspect
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import edgeclip
from edgeclip.data import shapes
from edgeclip.errors import BundleError, ClassNameError, InputError
from edgeclip.runtime.feature_pool import FeaturePool, ViewPolicy, build_feature_pool
from edgeclip.runtime.methods import create_method
from edgeclip.runtime.methods.coop import pool_labels_for
from edgeclip.runtime.methods.ship import SHIP, SHIPConfig, ShipVAE, base_new_accuracy, biased_prompts, vae_loss

NAMES = shapes.class_names()
BASE = [n for n in NAMES if n.split()[1] in ("circle", "square")]
NEW = [n for n in NAMES if n not in BASE]
FAST = {"vae_epochs": 2, "prompt_every": 1, "epochs": 2, "batch_size": 32, "lr": 0.02, "vae_batch_size": 64}


@pytest.fixture(scope="module")
def pools(micro: edgeclip.EdgeClip) -> tuple[FeaturePool, FeaturePool]:
    train = build_feature_pool(micro, "shapes:32", class_names=BASE, views=ViewPolicy(extra_views=2), cache=False)
    val = build_feature_pool(micro, "shapes:32", class_names=NAMES, seed=4242, cache=False)
    return train, val


@pytest.fixture(scope="module")
def trained(micro, pools):
    ship = create_method("ship", micro, BASE + NEW, new_classes=tuple(NEW), **FAST)
    report = ship.fit(pools[0], val=pools[1])
    return ship, report


def test_vae_architecture_and_init() -> None:
    vae = ShipVAE(128, 64, generator=torch.Generator().manual_seed(0))
    linears = [m for m in vae.modules() if isinstance(m, nn.Linear)]
    assert [tuple(m.weight.shape) for m in linears] == [(2048, 128), (128, 2048), (128, 2048), (4096, 128),
                                                         (64, 4096)]
    assert isinstance(vae.encoder[1], nn.ReLU) and isinstance(vae.generator[1], nn.ReLU) and len(vae.generator) == 3
    for m in linears:
        assert float(m.weight.detach().std()) == pytest.approx(0.02, rel=0.05)
        assert float(m.weight.detach().mean()) == pytest.approx(0.0, abs=2e-3)
        assert torch.equal(m.bias, torch.zeros_like(m.bias))
    bias, mu, log_var = vae(torch.randn(5, 128), torch.randn(5, 128))
    assert bias.shape == (5, 64) and mu.shape == log_var.shape == (5, 128)


def test_default_config_is_the_papers() -> None:
    cfg = SHIPConfig()
    assert (cfg.vae_n_ctx, cfg.encoder_hidden, cfg.generator_hidden, cfg.weight_std) == (4, 2048, 4096, 0.02)
    assert (cfg.vae_epochs, cfg.vae_batch_size, cfg.vae_lr, cfg.kl_weight) == (50, 256, 1e-3, 1.0)
    assert (cfg.logit_scale, cfg.synthetic_per_real, cfg.prompt_every) == (100.0, 1, 10)
    assert cfg.prompt.init == "a photo of a" and cfg.prompt.lr == 2e-3 and cfg.prompt.momentum == 0.0


def test_one_bias_is_added_to_all_four_context_vectors(micro) -> None:
    prompt = micro.prompt_context(torch.randn(4, micro.text_tower.width) * 0.02)
    tokens, eot = prompt.build(NAMES)
    labels = torch.tensor([3, 0, 15])
    bias = torch.randn(3, micro.text_tower.width)
    seq, seq_eot = biased_prompts(prompt, NAMES, labels, bias)
    assert torch.equal(seq_eot, eot[labels])
    for row, c in enumerate(labels.tolist()):
        torch.testing.assert_close(seq[row, 1:5] - tokens[c, 1:5], bias[row].expand(4, -1))
        assert torch.equal(seq[row, :1], tokens[c, :1]) and torch.equal(seq[row, 5:], tokens[c, 5:])


def test_loss_is_summed_squared_error_plus_kl() -> None:
    g = torch.Generator().manual_seed(1)
    x, recon = torch.randn(6, 10, generator=g), torch.randn(6, 10, generator=g)
    mu, log_var = torch.randn(6, 10, generator=g), torch.randn(6, 10, generator=g)
    loss, rec, kl = vae_loss(recon, x, mu, log_var)
    assert float(rec) == pytest.approx(float(((recon - x) ** 2).sum() / 6))
    q = torch.distributions.Normal(mu, torch.exp(0.5 * log_var))
    p = torch.distributions.Normal(torch.zeros(10), torch.ones(10))
    assert float(kl) == pytest.approx(float(torch.distributions.kl_divergence(q, p).sum() / 6), rel=1e-5)
    assert float(loss) == pytest.approx(float(rec + kl))
    assert float(vae_loss(recon, x, mu, log_var, kl_weight=0.0)[0]) == pytest.approx(float(rec))


def test_synthetic_features_are_normalised_and_new_classes_uniform(micro) -> None:
    ship = SHIP(micro, BASE + NEW, SHIPConfig(new_classes=tuple(NEW)))
    g = torch.Generator().manual_seed(0)
    vae = ShipVAE(micro.bundle.embed_dim, micro.text_tower.width, 64, 64, generator=g)
    prompt = micro.prompt_context(torch.randn(4, micro.text_tower.width) * 0.02)
    feats, classes = ship.synthesize(vae, prompt, 4000, g)
    assert feats.shape == (4000, micro.bundle.embed_dim)
    torch.testing.assert_close(feats.norm(dim=1), torch.ones(4000))
    assert set(classes.tolist()) == set(ship.new_index)
    counts = torch.bincount(classes, minlength=16)[ship.new_index].float()
    assert float(counts.min()) > 400 and float(counts.max()) < 600  # 500 expected each (8 classes)


def test_fit_uses_one_synthetic_feature_per_real_one_at_scale_100(micro, pools, monkeypatch) -> None:
    ship = create_method("ship", micro, BASE + NEW, new_classes=tuple(NEW), **FAST)
    asked: list[int] = []
    batches: list[tuple[int, torch.Tensor]] = []
    synth, logits_fn = ship.synthesize, ship.prompt_logits

    def counting(*args, **kwargs):
        out = synth(*args, **kwargs)
        asked.append(len(out[1]))
        return out

    def recording(x):
        out = logits_fn(x)
        with torch.no_grad():
            cos = F.normalize(x, dim=-1) @ ship._train_text().T
        batches.append((len(x), out.detach() / cos))
        return out

    monkeypatch.setattr(ship, "synthesize", counting)
    monkeypatch.setattr(ship, "prompt_logits", recording)
    report = ship.fit(pools[0])
    n_samples = len(pools[0]) * pools[0].n_views
    runs = len(report.extra["prompt_runs"])
    assert runs == 2 and sum(asked) == runs * FAST["epochs"] * n_samples  # one per real sample, every epoch
    assert [b for b, _ in batches] == [2 * k for k in asked]  # each batch: k real + k synthetic
    for _, ratio in batches:  # the cross-entropy's logits are 100 · cos(image, text)
        torch.testing.assert_close(ratio, torch.full_like(ratio, 100.0), rtol=1e-3, atol=1e-3)
    assert report.extra["selected_on"].startswith("last run") and report.best_epoch == 1


def test_fit_selects_on_validation(micro, pools, trained) -> None:
    ship, report = trained
    assert list(inspect.signature(SHIP.fit).parameters) == ["self", "pool", "val", "progress"]  # no test set
    runs = report.extra["prompt_runs"]
    assert [r["vae_epoch"] for r in runs] == [0, 1] and len(report.val_accuracy) == 2
    assert report.extra["selected_on"] == "validation"
    kept = max(range(2), key=lambda i: (report.val_accuracy[i], -i))
    assert report.extra["kept_run"] == kept and report.best_epoch == runs[kept]["vae_epoch"]
    for r in runs:  # the validation pool has base and new classes: the score is H
        assert r["val_score"] == pytest.approx(2 * r["val_base"] * r["val_new"] / (r["val_base"] + r["val_new"]))
    val = pools[1]
    scores = ship._score(F.normalize(val.plain, dim=-1), pool_labels_for(val, ship.class_names))
    assert scores["score"] == pytest.approx(report.val_accuracy[kept])  # the kept context is that run's
    assert ship.fitted and not torch.equal(ship.prompt.ctx, ship.prompt.ctx_init)
    assert len(report.train_loss) == 2 and all(torch.isfinite(torch.tensor(report.train_loss)))


def test_base_new_accuracy_uses_each_side_alone() -> None:
    # base 0, 1; new 2, 3. Rows 0 and 2 are right only when each side is scored alone; rows 1 and 3 wrong.
    logits = torch.tensor([[2.0, 1.0, 0.0, 9.0], [5.0, 1.0, 0.0, 0.0], [0.0, 9.0, 1.0, 2.0], [0.0, 9.0, 1.0, 3.0]])
    out = base_new_accuracy(logits, torch.tensor([0, 1, 3, 2]), [0, 1], [2, 3])
    assert out["base"] == 0.5 and out["new"] == 0.5 and out["H"] == pytest.approx(0.5)
    assert base_new_accuracy(logits[:2], torch.tensor([0, 1]), [0, 1], [2, 3])["H"] is None


def test_the_frozen_tower_never_moves(micro, pools) -> None:
    before = {k: v.clone() for k, v in micro.text_tower.state_dict().items()}
    create_method("ship", micro, BASE + NEW, new_classes=tuple(NEW), **{**FAST, "vae_epochs": 1}).fit(pools[0])
    for k, v in micro.text_tower.state_dict().items():
        assert torch.equal(v, before[k])


def test_head_round_trip_and_session(micro, trained, tmp_path: Path) -> None:
    ship, _ = trained
    path = ship.save_head(tmp_path / "ship.head.safetensors")
    frames = list(shapes.make_batch(6, seed=8).images)
    loaded = create_method("ship", micro, None, head=path)
    assert loaded.class_names == BASE + NEW and loaded.config == ship.config and loaded.new_classes == NEW
    assert torch.equal(loaded.predict(frames).probs, ship.predict(frames).probs)
    session = edgeclip.Session(micro, None, method="ship", head=path)
    try:
        assert session.predict(frames[0]).labels.tolist() == ship.predict(frames[0]).labels.tolist()
    finally:
        session.close()


def test_head_refused_on_another_bundle(trained, tiny_bundle: Path, tmp_path: Path) -> None:
    ship, _ = trained
    path = ship.save_head(tmp_path / "ship.head.safetensors")
    with pytest.raises(BundleError, match="another model"):
        create_method("ship", edgeclip.load(tiny_bundle), None, head=path)


def test_new_classes_must_be_new_and_listed(micro) -> None:
    with pytest.raises(ClassNameError):  # a new class repeating a base class: the list has it twice
        create_method("ship", micro, [*BASE, BASE[0]], new_classes=(BASE[0],))
    with pytest.raises(ClassNameError, match="not among"):
        create_method("ship", micro, BASE, new_classes=("purple hexagon",))
    with pytest.raises(ClassNameError, match="twice"):
        create_method("ship", micro, BASE + NEW, new_classes=(NEW[0], NEW[0].upper()))
    with pytest.raises(ClassNameError, match="every class"):
        create_method("ship", micro, NEW, new_classes=tuple(NEW))
    with pytest.raises(InputError, match="tuple of class names"):
        SHIPConfig(new_classes="red cross")  # type: ignore[arg-type]


def test_fit_refuses_bad_pools(micro, pools, tiny_bundle: Path) -> None:
    ship = create_method("ship", micro, BASE + NEW, new_classes=tuple(NEW), **FAST)
    with pytest.raises(ClassNameError, match="listed as new"):  # images of a class that is declared new
        ship.fit(pools[1])
    other = build_feature_pool(micro, list(shapes.make_batch(2, seed=1).images), class_names=["cat", "dog"],
                               labels=[0, 1], cache=False)
    with pytest.raises(ClassNameError, match="cat"):  # labels naming classes not in the list
        ship.fit(other)
    few = pools[0].subset([i for i in range(len(pools[0])) if int(pools[0].labels[i]) != 0])
    with pytest.raises(InputError, match="no images"):
        ship.fit(few)
    with pytest.raises(InputError, match="at least one new class"):
        create_method("ship", micro, BASE, **FAST).fit(pools[0])
    unlabelled = build_feature_pool(micro, list(shapes.make_batch(2, seed=1).images), cache=False)
    with pytest.raises(InputError, match="labelled"):
        ship.fit(unlabelled)
    foreign = build_feature_pool(edgeclip.load(tiny_bundle), list(shapes.make_batch(2, seed=1).images),
                                 class_names=BASE, labels=[0, 1], cache=False)
    with pytest.raises(BundleError):
        ship.fit(foreign)


def test_empty_labelled_source(micro, tmp_path: Path) -> None:
    with pytest.raises(InputError, match="at least one image"):
        build_feature_pool(micro, [], class_names=BASE, labels=[], cache=False)
    (tmp_path / "red_circle").mkdir()
    with pytest.raises(InputError, match="no images"):
        build_feature_pool(micro, tmp_path, cache=False)


def test_synthetic_features_of_the_fitted_generator(micro, trained) -> None:
    ship, _ = trained
    feats, classes = ship.synthetic_features(5, seed=3)
    assert feats.shape == (5 * len(NEW), micro.bundle.embed_dim)
    assert sorted(set(classes.tolist())) == ship.new_index and (classes.bincount()[ship.new_index] == 5).all()
    torch.testing.assert_close(feats.norm(dim=-1), torch.ones(len(feats)))
    again, _ = ship.synthetic_features(5, seed=3)
    torch.testing.assert_close(feats, again)  # seeded
    fresh = create_method("ship", micro, BASE + NEW, new_classes=tuple(NEW))
    with pytest.raises(InputError, match="generator of a fit"):
        fresh.synthetic_features(5)
