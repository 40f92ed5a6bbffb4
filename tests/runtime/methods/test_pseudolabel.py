"""Pseudo-label prompt tuning (FPL / IFPL / GRIP): the labelling rules, the schedules, the losses, resume."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import edgeclip
from edgeclip.data import shapes
from edgeclip.errors import BundleError, ClassNameError, InputError
from edgeclip.runtime.feature_pool import FeaturePool, build_feature_pool
from edgeclip.runtime.methods import create_method
from edgeclip.runtime.methods import pseudolabel as P
from edgeclip.runtime.methods.pseudolabel import assign_top_k, harmonic_mean, k_schedule

NAMES = shapes.class_names()
FAST = {"epochs": 2, "batch_size": 32}
REAL_TRAIN = P.train_context


@pytest.fixture(scope="module")
def unlabeled(micro: edgeclip.EdgeClip) -> FeaturePool:
    return build_feature_pool(micro, "shapes:128:blur", cache=False)


@pytest.fixture(scope="module")
def labeled(micro: edgeclip.EdgeClip) -> FeaturePool:
    return build_feature_pool(micro, "shapes:32:blur", seed=4242, cache=False)


class Interrupted(Exception):
    """Stands for Ctrl-C or a crash in the middle of a fit."""


class Spy:
    """Wraps `train_context`: records each round's starting and final context and its training set size."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, fail_at: int | None = None) -> None:
        self.starts: list[torch.Tensor] = []
        self.ends: list[torch.Tensor] = []
        self.sizes: list[int] = []
        self.labels: list[torch.Tensor] = []
        real = REAL_TRAIN

        def wrapped(method, x, y, opt, report, **kw):
            if fail_at is not None and len(self.starts) == fail_at:
                raise Interrupted("simulated interruption")
            self.starts.append(method.prompt.ctx.detach().clone())
            self.sizes.append(len(y))
            self.labels.append(y.clone())
            out = real(method, x, y, opt, report, **kw)
            self.ends.append(method.prompt.ctx.detach().clone())
            return out

        monkeypatch.setattr(P, "train_context", wrapped)


# -- the rules -------------------------------------------------------------------------------------------
def test_grip_k_schedule_is_exact() -> None:
    u, c = 1000, 16
    ks = k_schedule("grip", u, c, 10)
    assert ks[0] == u // (10 * c) == 6
    for t in range(1, 10):  # after round t (1-based), K = ⌊(t+1)·|U|/(10·C)⌋
        assert ks[t] == min((t + 1) * u // (10 * c), u // c)
    assert ks == [6, 12, 18, 25, 31, 37, 43, 50, 56, 62] and ks[-1] == u // c
    assert k_schedule("fpl", u, c, 1) == [16] and k_schedule("ifpl", u, c, 10) == [16] * 10
    assert k_schedule("ifpl", u, c, 3, k=5) == [5, 5, 5]


def test_top_k_leaderboard_one_label_per_image() -> None:
    g = torch.Generator().manual_seed(0)
    scores = torch.rand(50, 4, generator=g).softmax(dim=1)
    labels = assign_top_k(scores, 6)
    assert labels.shape == (50,)
    counts = torch.bincount(labels[labels >= 0], minlength=4)
    assert counts.tolist() == [6, 6, 6, 6]  # K·C <= N: every class exactly K, each image at most once
    free = labels < 0
    for c in range(4):
        taken = scores[labels == c, c]
        assert scores[free, c].max() <= taken.min()  # nobody left over beats a class's chosen images
    # one image most confident for two classes goes to one only (the official code labels it twice)
    s = torch.tensor([[0.9, 0.8], [0.1, 0.2], [0.05, 0.1]])
    assert assign_top_k(s, 1).tolist() == [0, 1, -1]
    # K·C > N: every image gets a label (GRIP's last round labels all of U)
    assert (assign_top_k(scores, 20) >= 0).all()


def test_top_k_is_by_confidence() -> None:
    s = torch.tensor([[0.6, 0.4], [0.9, 0.1], [0.7, 0.3], [0.2, 0.8]])
    assert assign_top_k(s, 1).tolist() == [-1, 0, -1, 1]
    # a full class passes its next image on to that image's next class
    assert assign_top_k(s, 2).tolist() == [1, 0, 0, 1]


def test_config_rules() -> None:
    cfg = P.PseudoLabelConfig()
    assert (cfg.strategy, cfg.paradigm, cfg.n_rounds, cfg.k, cfg.n_ctx, cfg.init, cfg.init_std) == \
        ("grip", "ul", 10, 16, 16, None, 0.02)
    assert (cfg.lr, cfg.momentum, cfg.weight_decay, cfg.batch_size) == (0.1, 0.9, 0.1, 16)
    assert P.PseudoLabelConfig(strategy="fpl").n_rounds == 1
    with pytest.raises(InputError, match="fpl trains one round"):
        P.PseudoLabelConfig(strategy="fpl", rounds=3)
    with pytest.raises(InputError, match="strategy"):
        P.PseudoLabelConfig(strategy="sgd")
    with pytest.raises(InputError, match="paradigm"):
        P.PseudoLabelConfig(paradigm="semi")
    assert P.PseudoLabelConfig(seen=["red circle"]).seen == ("red circle",)  # a JSON list comes back a tuple
    assert harmonic_mean(0.5, 1.0) == pytest.approx(2 / 3) and harmonic_mean(0.0, 1.0) == 0.0


# -- fitting ---------------------------------------------------------------------------------------------
def test_grip_ul_labels_k_per_class_each_round(micro, unlabeled, monkeypatch) -> None:
    spy = Spy(monkeypatch)
    calls: list[bool] = []
    real = P.PseudoLabel.confidences

    def conf(self, embeds, classes, *, zero_shot):
        calls.append(zero_shot)
        return real(self, embeds, classes, zero_shot=zero_shot)

    monkeypatch.setattr(P.PseudoLabel, "confidences", conf)
    pl = create_method("pseudolabel", micro, NAMES, strategy="grip", rounds=3, val_fraction=0.0, **FAST)
    report = pl.fit(unlabeled)
    ks = [128 * t // (3 * 16) for t in (1, 2, 3)]
    assert report.extra["k_schedule"] == ks == [2, 5, 8]
    assert [r["n_pseudo"] for r in report.extra["rounds"]] == [16 * k for k in ks]
    assert [r["min_per_class"] for r in report.extra["rounds"]] == ks
    assert spy.sizes == [16 * k for k in ks]  # no validation share: everything trains
    for y, k in zip(spy.labels, ks, strict=True):
        assert torch.bincount(y, minlength=16).tolist() == [k] * 16
    # the per-class report (zero-shot before, the prompt after) around round 1 by zero-shot CLIP, then the prompt
    assert calls == [True, True, False, False, False]
    assert report.epochs == 3 * 2 and len(report.train_loss) == 6 and pl.fitted
    pc = report.extra["per_class"]
    assert len(pc["zero_shot"]) == len(pc["tuned"]) == 16


def test_rounds_reinitialise_or_warm_start(micro, unlabeled, monkeypatch) -> None:
    spy = Spy(monkeypatch)
    pl = create_method("pseudolabel", micro, NAMES, strategy="ifpl", rounds=2, k=4, **FAST)
    pl.fit(unlabeled)
    init = pl.prompt.ctx_init
    assert all(torch.equal(s, init) for s in spy.starts)  # the paper: every round from the initial context
    assert not torch.equal(spy.ends[0], init)
    spy = Spy(monkeypatch)
    warm = create_method("pseudolabel", micro, NAMES, strategy="ifpl", rounds=2, k=4, warm_start=True, **FAST)
    warm.fit(unlabeled)
    assert torch.equal(spy.starts[0], init) and torch.equal(spy.starts[1], spy.ends[0])


def test_fpl_is_one_zero_shot_round(micro, unlabeled, monkeypatch) -> None:
    spy = Spy(monkeypatch)
    pl = create_method("pseudolabel", micro, NAMES, strategy="fpl", k=4, val_fraction=0.25, **FAST)
    report = pl.fit(unlabeled)
    assert len(report.extra["rounds"]) == 1 and report.extra["rounds"][0]["n_pseudo"] == 64
    assert spy.sizes == [48] and report.extra["rounds"][0]["n_val"] == 16  # 1 of 4 per class held out
    assert len(report.val_accuracy) == 2 and report.best_epoch is not None


def test_ul_loss_is_the_mean_ce_and_ssl_adds_the_labels(micro, unlabeled, labeled, monkeypatch) -> None:
    pl = create_method("pseudolabel", micro, NAMES, paradigm="ssl", strategy="fpl", k=4, val_fraction=0.0,
                       **FAST)
    y = torch.tensor([0, 1, 2, 3])
    assert pl._loss(y, torch.tensor([0, 1, 1, 1])) is None  # ssl and ul: train_context's mean CE over the batch
    spy = Spy(monkeypatch)
    report = pl.fit(unlabeled, labeled=labeled)
    assert spy.sizes == [len(labeled) + 64]  # one sample one vote: labelled and pseudo-labelled together
    assert report.extra["rounds"][0]["n_labeled"] == 32
    with pytest.raises(InputError, match="needs a labelled pool"):
        pl.fit(unlabeled)
    ul = create_method("pseudolabel", micro, NAMES, strategy="fpl", k=4, **FAST)
    with pytest.raises(InputError, match="pseudo-labels only"):
        ul.fit(unlabeled, labeled=labeled)


def test_trzsl_weighting_and_pseudo_labels_only_for_unseen(micro, unlabeled, labeled, monkeypatch) -> None:
    seen = NAMES[:8]
    seen_pool = labeled.subset([i for i, c in enumerate(labeled.labels.tolist()) if c < 8])
    seen_pool.class_names = list(NAMES)
    pl = create_method("pseudolabel", micro, NAMES, paradigm="trzsl", strategy="fpl", k=4, seen=tuple(seen),
                       val_fraction=0.0, **FAST)
    group = torch.tensor([0, 0, 0, 1])
    y = torch.tensor([0, 1, 2, 9])
    loss = pl._loss(y, group)
    logits = torch.randn(4, 16)
    idx = torch.arange(4)
    ce = F.cross_entropy(logits, y, reduction="none")
    expected = ce[:3].mean() + (3 / 1) * ce[3:].mean()  # CE_seen + (|seen|/|unseen|)·CE_unseen (image counts)
    torch.testing.assert_close(loss(logits, idx), expected)
    spy = Spy(monkeypatch)
    report = pl.fit(unlabeled, labeled=seen_pool)
    n_seen = len(seen_pool)
    assert set(spy.labels[0][:n_seen].tolist()) <= set(range(8))  # the labelled seen images first
    pseudo = spy.labels[0][n_seen:]
    assert torch.bincount(pseudo, minlength=16).tolist() == [0] * 8 + [4] * 8  # K per unseen class only
    assert report.extra["rounds"][0]["n_pseudo"] == 32
    other = labeled  # images of unseen classes among the labels
    with pytest.raises(ClassNameError, match="not seen classes"):
        pl.fit(unlabeled, labeled=other)
    with pytest.raises(ClassNameError, match="seen classes"):
        create_method("pseudolabel", micro, NAMES, paradigm="trzsl", seen=("purple moon",))


# -- bad input -------------------------------------------------------------------------------------------
def test_an_unlabeled_source_with_no_images(micro, tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="holds no images"):
        build_feature_pool(micro, tmp_path / "empty", class_names=NAMES, cache=False)


def test_a_class_without_pseudo_labels_is_named(micro) -> None:
    few = build_feature_pool(micro, list(shapes.make_batch(8, seed=3, shift="blur").images), cache=False)
    pl = create_method("pseudolabel", micro, NAMES, strategy="fpl", **FAST)
    with pytest.raises(InputError, match=r"round 1: class\(es\) \[.*\] got no pseudo-label"):
        pl.fit(few)
    grip = create_method("pseudolabel", micro, NAMES, **FAST)
    with pytest.raises(InputError, match="at least 160 images"):
        grip.fit(few)


def test_labels_naming_unknown_classes(micro, unlabeled) -> None:
    other = build_feature_pool(micro, list(shapes.make_batch(2, seed=1).images), class_names=["cat", "dog"],
                               labels=[0, 1], cache=False)
    pl = create_method("pseudolabel", micro, NAMES, paradigm="ssl", strategy="fpl", k=4, **FAST)
    with pytest.raises(ClassNameError, match="cat"):
        pl.fit(unlabeled, labeled=other)


def test_head_round_trip_session_and_other_bundle(micro, unlabeled, tiny_bundle: Path, tmp_path: Path) -> None:
    pl = create_method("pseudolabel", micro, NAMES, strategy="fpl", k=4, seen=None, **FAST)
    pl.fit(unlabeled)
    path = pl.save_head(tmp_path / "pl.head.safetensors")
    frames = list(shapes.make_batch(6, seed=8, shift="blur").images)
    loaded = create_method("pseudolabel", micro, None, head=path)
    assert loaded.config == pl.config and loaded.fitted
    assert torch.equal(loaded.predict(frames).probs, pl.predict(frames).probs)
    with edgeclip.Session(micro, None, method="pseudolabel", head=path) as session:
        assert torch.equal(session.predict(frames[0]).probs, pl.predict(frames[0]).probs)
    with pytest.raises(BundleError, match="another model"):
        create_method("pseudolabel", edgeclip.load(tiny_bundle), NAMES, head=path)
    with pytest.raises(BundleError, match="not 'coop'"):
        create_method("coop", micro, NAMES, head=path)


def test_an_interrupted_fit_resumes_from_its_last_round(micro, unlabeled, tmp_path: Path, monkeypatch) -> None:
    kw = {"strategy": "grip", "rounds": 3, **FAST}
    reference = create_method("pseudolabel", micro, NAMES, **kw)
    ref_report = reference.fit(unlabeled)
    work = tmp_path / "rounds"
    Spy(monkeypatch, fail_at=2)  # raise when round 3 starts training
    first = create_method("pseudolabel", micro, NAMES, **kw)
    with pytest.raises(Interrupted):
        first.fit(unlabeled, work_dir=work)
    assert sorted(p.name for p in work.iterdir()) == ["round-001.safetensors", "round-002.safetensors"]
    spy = Spy(monkeypatch)
    again = create_method("pseudolabel", micro, NAMES, **kw)
    report = again.fit(unlabeled, work_dir=work)
    assert len(spy.starts) == 1  # only round 3 ran
    assert [r.get("resumed", False) for r in report.extra["rounds"]] == [True, True, False]
    assert torch.equal(again.prompt.ctx, reference.prompt.ctx)
    assert report.train_loss == ref_report.train_loss and report.best_epoch == ref_report.best_epoch
    # other settings never resume from these checkpoints
    spy = Spy(monkeypatch)
    create_method("pseudolabel", micro, NAMES, **{**kw, "lr": 0.05}).fit(unlabeled, work_dir=work)
    assert len(spy.starts) == 3


def test_trzsl_selects_on_the_harmonic_mean_of_seen_and_unseen(micro, labeled) -> None:
    pl = create_method("pseudolabel", micro, NAMES, paradigm="trzsl", seen=tuple(NAMES[:8]), **FAST)
    score = pl._evaluator(labeled, labeled.labels, None, torch.zeros(0, dtype=torch.int64), torch.zeros(0), None,
                          list(range(8)))
    with torch.no_grad():
        pred = P.image_logits(micro, labeled.plain, pl._train_text()).argmax(dim=1)
    right = (pred == labeled.labels).float()
    seen = labeled.labels < 8
    assert score() == pytest.approx(harmonic_mean(float(right[seen].mean()), float(right[~seen].mean())))
