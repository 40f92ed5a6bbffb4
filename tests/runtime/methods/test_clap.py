"""CLAP4CLIP: the paper's rules (adapter start, σ floor, KL weight, task masking, per-image attention, frozen old
adapters, memory bound, per-image exemplar scores), the continual API, uncertainty, heads, resume, bad input."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch.distributions import Normal, kl_divergence

import edgeclip
from edgeclip.data import shapes
from edgeclip.errors import BundleError, ClassNameError, InputError
from edgeclip.runtime.feature_pool import FeaturePool, ViewPolicy, build_feature_pool
from edgeclip.runtime.methods import clap as C
from edgeclip.runtime.methods import create_method, list_methods
from edgeclip.runtime.methods.clap_memory import (
    energy_scores,
    entropy_scores,
    per_class_quota,
    selection_order,
    variance_scores,
)

NAMES = shapes.class_names()
TASKS = [NAMES[i::4] for i in range(4)]  # four tasks of four classes, colours mixed
FAST = {"epochs": 2, "finetune_epochs": 1, "mc_samples": 4, "batch_size": 16, "memory_views": 2}
REAL_RUN = C.CLAP._run_epochs


def task_pool(micro: edgeclip.EdgeClip, t: int, n: int = 32, shift: str = "low_contrast",
              seed: int = 100) -> FeaturePool:
    return build_feature_pool(micro, f"shapes:{n}:{shift}", class_names=TASKS[t], seed=seed + t,
                              views=ViewPolicy(extra_views=1), cache=False)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def pools(micro: edgeclip.EdgeClip) -> list[FeaturePool]:
    return [task_pool(micro, t) for t in range(3)]


@pytest.fixture(scope="module")
def learner(micro: edgeclip.EdgeClip, pools: list[FeaturePool]) -> C.CLAP:
    """Two tasks learnt (read-only for the tests that use it)."""
    clap = create_method("clap", micro, [], **FAST)
    clap.learn_task(pools[0])
    clap.learn_task(pools[1])
    return clap


class Interrupted(Exception):
    """Stands for Ctrl-C or a crash while a task trains."""


# -- creation and config --------------------------------------------------------------------------------------
def test_created_through_the_registry_with_no_classes(micro) -> None:
    assert "clap" in list_methods()
    clap = create_method("clap", micro, [])
    assert isinstance(clap, C.CLAP) and clap.class_names == [] and clap.n_tasks == 0
    assert clap.config.mc_samples == 20 and clap.config.kl_weight == 0.001 and clap.config.beta == 15.0
    assert clap.config.memory_per_class == 20 and clap.config.selector == "random"
    with pytest.raises(InputError, match="no task yet"):
        clap.predict(shapes.make_batch(1, seed=0).images)
    for bad in ({"templates": ("a {}.",)}, {"selector": "herding"}, {"mc_samples": 0}, {"lr": 0.0}):
        with pytest.raises(InputError):
            create_method("clap", micro, [], **bad)


def test_created_with_classes_it_is_the_continual_clip_baseline(micro) -> None:
    clap = create_method("clap", micro, NAMES)
    frames = shapes.make_batch(5, seed=4, shift="low_contrast").images
    pred = clap.predict(frames)
    text = clap.template_features(NAMES)[0]
    want = (micro.logit_scale * micro.encode_images(list(frames)).float() @ text.T).softmax(-1)
    assert torch.allclose(pred.probs, want, atol=1e-5) and pred.class_names == NAMES
    assert torch.equal(pred.info["mc_variance"], torch.zeros(5))
    with pytest.raises(InputError, match="Continual-CLIP"):
        clap.learn_task(torch.zeros(2, 128), [0, 0], ["a new class"])


def test_text_features_are_the_template_ensemble_mean(micro) -> None:
    clap = create_method("clap", micro, [], templates=("a photo of a {}.", "a {}.", "there is a {}."))
    text, mean, var = clap.template_features(TASKS[0])
    per = torch.stack([micro.encode_text([t.format(c) for t in clap.config.templates]).float() for c in TASKS[0]])
    assert torch.allclose(mean, per.mean(1), atol=1e-6)
    assert torch.allclose(text, F.normalize(per.mean(1), dim=-1), atol=1e-6)
    assert torch.allclose(var, per.var(1), atol=1e-7) and bool((var > 0).all())


# -- the paper's rules ----------------------------------------------------------------------------------------
def test_adapters_start_from_the_template_statistics_of_every_class_seen(micro, pools, monkeypatch) -> None:
    monkeypatch.setattr(C.CLAP, "_run_epochs", lambda self, *a, **k: {"steps": 0, "losses": [], "skipped": 0})
    clap = create_method("clap", micro, [], **FAST)
    clap.learn_task(pools[0])
    clap.learn_task(pools[1])
    d = micro.bundle.embed_dim
    for k, n_seen in ((0, 4), (1, 8)):
        e, v = clap.text_mean[:n_seen], clap.text_var[:n_seen]
        a = clap.adapters[k]
        assert torch.allclose(a.mu.weight, e.T @ e / d, atol=1e-7)
        assert torch.allclose(a.sigma_fc.weight, v.T @ v / d, atol=1e-9)
    _, mean, var = clap.template_features(TASKS[0] + TASKS[1])
    assert torch.allclose(clap.text_mean, mean, atol=1e-6) and torch.allclose(clap.text_var, var, atol=1e-7)


def test_sigma_is_softplus_scaled_with_a_floor() -> None:
    a = C.TaskAdapter(8)
    h = torch.randn(3, 8)
    with torch.no_grad():
        a.sigma_fc.bias.fill_(-1e4)
    assert torch.allclose(a.sigma(h), torch.full((3, 8), 0.001))
    with torch.no_grad():
        a.sigma_fc.bias.normal_()
    assert torch.allclose(a.sigma(h), F.softplus(a.sigma_fc(h)) * 0.999 + 0.001)
    assert bool((a.sigma(h) >= 0.001).all())


def test_kl_weight_and_language_aware_term(learner) -> None:
    g = torch.Generator().manual_seed(0)
    b, d = 3, learner.dim
    c = len(learner.class_names)
    mu = torch.randn(b, c, d, generator=g) * 0.1
    sigma = torch.rand(b, c, d, generator=g) + 0.01
    eps = torch.randn(5, c, d, generator=g)
    kl, lang = learner._regulariser(mu, sigma, eps, [1])
    s = slice(4, 8)  # task 2's classes
    ref_kl = kl_divergence(Normal(mu[:, s], sigma[:, s]), Normal(0.0, 1.0)).sum(-1).mean()
    assert torch.allclose(kl, 0.001 * ref_kl, rtol=1e-5)
    # the official term from explicit samples: sims = mean over samples of (template mean · sample)
    r = mu[:, s].unsqueeze(0) + sigma[:, s].unsqueeze(0) * eps[:, s].unsqueeze(1)  # [M, B, Ct, D]
    sims = torch.einsum("cd,mbkd->mbck", learner.text_mean[s], r).mean(0)
    ref_lang = F.cross_entropy(sims.reshape(-1, 4), torch.arange(4).repeat(b))
    assert torch.allclose(lang, 15.0 * ref_lang, rtol=1e-5)
    kl_all, _ = learner._regulariser(mu, sigma, eps, [0, 1])
    assert float(kl_all) > float(kl)


def test_classes_of_different_tasks_are_masked_from_each_other(learner) -> None:
    mask = C.task_mask([2, 3])
    assert mask.tolist() == [[False, False, True, True, True], [False, False, True, True, True],
                             [True, True, False, False, False], [True, True, False, False, False],
                             [True, True, False, False, False]]
    # functionally: changing task 2's class queries leaves task 1's attention outputs unchanged
    q = learner.text.unsqueeze(0)
    memory = F.normalize(torch.randn(1, 4, learner.dim), dim=-1)
    m = C.task_mask(learner.task_sizes)
    with torch.no_grad():
        out = learner.vga(q, memory, tgt_mask=m)
        q2 = q.clone()
        q2[:, 4:] = torch.randn_like(q2[:, 4:])
        out2 = learner.vga(q2, memory, tgt_mask=m)
        unmasked = learner.vga(q2, memory)
    assert torch.allclose(out[:, :4], out2[:, :4], atol=1e-6)
    assert not torch.allclose(out[:, :4], unmasked[:, :4], atol=1e-4)


def test_an_image_gets_the_same_prediction_alone_and_in_any_batch(learner) -> None:
    frames = shapes.make_batch(64, seed=5, shift="low_contrast").images
    alone = learner.predict(frames[7])
    one = learner.predict(frames[7:8])
    batch = learner.predict(frames)
    assert alone.labels.tolist() == one.labels.tolist() == [int(batch.labels[7])]
    assert torch.allclose(alone.probs[0], batch.probs[7], atol=1e-5)
    assert torch.allclose(one.probs[0], batch.probs[7], atol=1e-5)
    assert torch.allclose(alone.info["energy"][0], batch.info["energy"][7], atol=1e-4)
    # and the attention reads the image's own views: other views change the prediction
    emb = learner.encode(frames[:2])
    swapped = torch.cat([emb[:1, :1], emb[1:2, 1:]], 1)
    assert not torch.allclose(learner.mc_logits(emb[:1]), learner.mc_logits(swapped), atol=1e-4)
    # a view an image does not have (padding) is never attended to
    padded = torch.cat([emb[:1, :1], F.normalize(torch.randn(1, 1, learner.dim), dim=-1)], 1)
    valid = torch.tensor([[True, False]])
    assert torch.allclose(learner.mc_logits(emb[:1, :1]), learner.mc_logits(padded, valid), atol=1e-5)


def test_old_adapters_stay_frozen_and_the_finetune_follows_the_protocol(micro, pools, monkeypatch) -> None:
    calls: list[dict] = []

    def spy(self, emb, valid, y, **kw):
        before = {"vga": {k: v.clone() for k, v in self.vga.state_dict().items()},
                  "a": [a.mu.weight.detach().clone() for a in self.adapters],
                  "trainable": [any(p.requires_grad for p in a.parameters()) for a in self.adapters],
                  "vga_trainable": any(p.requires_grad for p in self.vga.parameters()), "kw": kw, "n": len(y)}
        out = REAL_RUN(self, emb, valid, y, **kw)
        before["vga_after"] = self.vga.state_dict()
        before["a_after"] = [a.mu.weight.detach().clone() for a in self.adapters]
        calls.append(before)
        return out

    monkeypatch.setattr(C.CLAP, "_run_epochs", spy)
    clap = create_method("clap", micro, [], **FAST)
    clap.learn_task(pools[0])
    clap.learn_task(pools[1])
    first, main, fine = calls
    assert len(calls) == 3  # no fine-tune after the first task
    assert main["trainable"] == [False, True] and main["vga_trainable"] and main["kw"]["attention_train"]
    assert torch.equal(main["a"][0], main["a_after"][0])  # the old adapter is frozen
    assert not torch.equal(main["a"][1], main["a_after"][1])
    assert any(not torch.equal(main["vga"][k], main["vga_after"][k]) for k in main["vga"])
    assert first["n"] == 32 and main["n"] == 32 + 32  # task 2: its images and task 1's exemplars
    # the fine-tune: memory only, lr / 10, no warm-up, attention frozen, every adapter trainable
    assert fine["trainable"] == [True, True] and not fine["vga_trainable"] and not fine["kw"]["attention_train"]
    assert fine["kw"]["lr"] == pytest.approx(main["kw"]["lr"] / 10) and not fine["kw"]["warmup"]
    assert fine["n"] == len(clap.memory) and fine["kw"]["reg_tasks"] == [0, 1] and main["kw"]["reg_tasks"] == [1]
    assert all(torch.equal(fine["vga"][k], fine["vga_after"][k]) for k in fine["vga"])
    assert not torch.equal(fine["a"][0], fine["a_after"][0])
    assert all(p.dtype == torch.float32 for p in clap.adapters.parameters())


def test_the_memory_is_bounded_and_keeps_old_exemplars(micro, pools) -> None:
    assert per_class_quota(8, 5, 24) == 3 and per_class_quota(4, 5, 24) == 5 and per_class_quota(4, 5, None) == 5
    clap = create_method("clap", micro, [], memory_per_class=5, memory_total=24, **FAST)
    clap.learn_task(pools[0])
    assert clap.memory.counts(4).tolist() == [5, 5, 5, 5]
    old = clap.memory.embeds.clone()
    old_labels = clap.memory.labels.clone()
    clap.learn_task(pools[1])
    assert len(clap.memory) <= 24 and clap.memory.counts(8).tolist() == [3] * 8
    for c in range(4):  # an old class keeps its first exemplars
        assert torch.equal(clap.memory.embeds[clap.memory.labels == c], old[old_labels == c][:3])
    assert clap.reports[-1]["extra"]["n_memory_used"] == 20  # task 2 trained on its data plus the memory


def test_exemplar_scores_use_each_images_own_samples() -> None:
    g = torch.Generator().manual_seed(0)
    m, b, c = 6, 5, 4
    logits = torch.randn(m, b, c, generator=g) * 3
    var, energy, ent = variance_scores(logits), energy_scores(logits), entropy_scores(logits)
    for i in range(b):
        own = logits[:, i]
        assert torch.allclose(var[i], own.softmax(-1).var(0).sum())
        assert torch.allclose(energy[i], torch.logsumexp(own, -1).mean())
        p = own.mean(0).softmax(-1)
        assert torch.allclose(ent[i], -(p * p.log()).sum(), atol=1e-6)
    perm = torch.randperm(b, generator=g)
    assert torch.allclose(variance_scores(logits[:, perm]), var[perm])
    # the official reshape of sample-major logits mixes images; these scores do not
    mixed = logits.reshape(m * b, c).reshape(b, m, c)
    assert not torch.allclose(torch.logsumexp(mixed, -1).mean(1), energy)
    gen = torch.Generator()
    assert selection_order("entropy", logits, b, gen)[0] == int(ent.argmax())
    assert selection_order("variance", logits, b, gen)[0] == int(var.argmin())
    assert selection_order("energy", logits, b, gen)[0] == int(energy.argmin())
    assert selection_order("random", None, b, gen, keep_order=True).tolist() == list(range(b))


def test_energy_selector_keeps_the_lowest_logsumexp_images_of_a_class(micro, pools) -> None:
    clap = create_method("clap", micro, [], selector="energy", memory_per_class=3, **FAST)
    clap.learn_task(pools[0])
    pool = pools[0]
    for c in range(4):
        rows = torch.nonzero(pool.labels == c).flatten()
        emb, valid = clap._fit_views(pool.embeds[rows], None)
        want = emb[torch.argsort(energy_scores(clap.mc_logits(emb, valid)), stable=True)[:3]]
        assert torch.equal(clap.memory.embeds[clap.memory.labels == c], want)


# -- the continual API, uncertainty ------------------------------------------------------------------------------
def test_learn_task_from_images_scores_every_class_seen(micro) -> None:
    clap = create_method("clap", micro, [], **FAST)
    a = shapes.make_batch(16, seed=1, labels=[NAMES.index(c) for c in TASKS[0]] * 4)
    clap.learn_task(list(a.images), [i % 4 for i in range(16)], TASKS[0])
    b = shapes.make_batch(8, seed=2, labels=[NAMES.index(c) for c in TASKS[1][:2]] * 4)
    clap.learn_task(b.images, torch.tensor([i % 2 for i in range(8)]), TASKS[1][:2])
    assert clap.class_names == TASKS[0] + TASKS[1][:2] and clap.tasks == [TASKS[0], TASKS[1][:2]]
    pred = clap.predict(shapes.make_batch(3, seed=3).images)
    assert pred.probs.shape == (3, 6) and pred.class_names == clap.class_names
    assert torch.allclose(pred.probs.sum(1), torch.ones(3), atol=1e-5)


def test_fit_and_pools_with_another_class_order(micro, pools) -> None:
    clap = create_method("clap", micro, [], **FAST)
    report = clap.fit(pools[0])  # Trainable.fit: one task from a labelled pool
    assert report.method == "clap" and report.steps > 0 and clap.tasks == [TASKS[0]]
    order = TASKS[1][::-1]
    clap.learn_task(pools[1], class_names=order)  # the pool's labels follow the given order
    assert clap.tasks[1] == order
    assert clap.memory.counts(8)[4:].tolist() == [8] * 4
    for c, name in enumerate(order):
        rows = clap.memory.embeds[clap.memory.labels == 4 + c][:, 0]
        mine = pools[1].plain[pools[1].labels == pools[1].class_names.index(name)]
        assert bool((torch.cdist(rows, mine).min(1).values < 1e-6).all())
    with pytest.raises(ClassNameError, match="not among"):
        create_method("clap", micro, [], **FAST).learn_task(pools[1], class_names=TASKS[2])


def test_uncertainty_and_calibrated_novelty(micro, learner) -> None:
    held = build_feature_pool(micro, "shapes:32:low_contrast", class_names=TASKS[0] + TASKS[1], seed=777,
                              views=ViewPolicy(extra_views=1), cache=False)
    pred = learner.predict(held)
    assert pred.info["energy"].shape == (32,) and pred.info["mc_variance"].shape == (32,)
    assert pred.info["is_novel"] is None and pred.info["frames"][0]["is_novel"] is None
    assert torch.allclose(pred.info["energy"], -torch.logsumexp(learner.mc_logits(held.embeds).mean(0), -1))
    clap = create_method("clap", micro, [], **FAST)
    clap.load_state_dict(learner.state_dict())
    thr = clap.calibrate_novelty(held, fpr=0.1)
    flagged = clap.predict(held).info["is_novel"]
    assert flagged.dtype == torch.bool and float(flagged.float().mean()) <= 0.1
    assert clap.state_dict()["adapted"]["novelty"]["threshold"] == thr
    future = build_feature_pool(micro, "shapes:32:low_contrast", class_names=TASKS[3], seed=778,
                                views=ViewPolicy(extra_views=1), cache=False)
    assert float(clap.energy(future).mean()) > float(clap.energy(held).mean())  # unseen classes look novel
    with pytest.raises(InputError, match="fpr"):
        clap.calibrate_novelty(held, fpr=1.5)


def test_it_learns_beyond_zero_shot_under_a_shift(micro) -> None:
    train = task_pool(micro, 2, n=64)
    test = build_feature_pool(micro, "shapes:64:low_contrast", class_names=TASKS[2], seed=902, cache=False)
    clap = create_method("clap", micro, [], epochs=12, mc_samples=8, memory_views=2)
    clap.learn_task(train)
    zero_shot = float(((test.plain @ clap.text.T).argmax(1) == test.labels).float().mean())
    acc = float((clap.predict(test).labels == test.labels).float().mean())
    assert acc >= zero_shot + 0.05, (acc, zero_shot)


# -- state, heads, resume -----------------------------------------------------------------------------------------
def test_state_dict_round_trip_and_reset(micro, learner) -> None:
    frames = shapes.make_batch(4, seed=9, shift="low_contrast").images
    other = create_method("clap", micro, [], **FAST)
    other.load_state_dict(learner.state_dict())
    assert other.class_names == learner.class_names
    assert torch.equal(other.predict(frames).probs, learner.predict(frames).probs)
    other.reset()
    assert other.class_names == [] and other.n_tasks == 0 and len(other.memory) == 0


def test_a_head_loads_on_the_device_and_not_on_another_bundle(micro, learner, tiny_bundle: Path, tmp_path) -> None:
    path = learner.save_head(tmp_path / "clap.head.safetensors")
    frames = shapes.make_batch(5, seed=10, shift="low_contrast").images
    loaded = create_method("clap", micro, None, head=path)
    assert loaded.tasks == learner.tasks and loaded.config == learner.config
    assert torch.equal(loaded.predict(frames).probs, learner.predict(frames).probs)
    assert torch.equal(loaded.memory.embeds, learner.memory.embeds)
    with edgeclip.Session(micro, None, method="clap", head=path) as session:
        assert torch.allclose(session.predict(frames[0]).probs, learner.predict(frames[0]).probs, atol=1e-6)
    with pytest.raises(BundleError, match="another model"):
        create_method("clap", edgeclip.load(tiny_bundle, backend="torch"), None, head=path)


def test_a_run_interrupted_between_tasks_resumes_with_nothing_lost(micro, pools, tmp_path, monkeypatch) -> None:
    reference = create_method("clap", micro, [], **FAST)
    for p in pools:
        reference.learn_task(p)
    head = tmp_path / "run.head.safetensors"
    first = C.open_learner(micro, head, **FAST)
    first.learn_task(pools[0], save_to=head)
    calls = {"n": 0}

    def crash(self, *a, **k):
        calls["n"] += 1
        raise Interrupted("power cut")

    monkeypatch.setattr(C.CLAP, "_run_epochs", crash)
    with pytest.raises(Interrupted):
        first.learn_task(pools[1], save_to=head)
    assert first.tasks == [TASKS[0]] and len(first.adapters) == 1  # the broken task left no trace
    monkeypatch.setattr(C.CLAP, "_run_epochs", REAL_RUN)
    again = C.open_learner(micro, head)  # a new process: the saved state, its config
    assert again.tasks == [TASKS[0]] and again.config == first.config
    reports = [again.learn_task(p, save_to=head) for p in pools]  # the script simply runs again
    assert reports[0].extra.get("resumed") and not reports[1].extra.get("resumed")
    frames = shapes.make_batch(6, seed=11, shift="low_contrast").images
    assert again.tasks == reference.tasks
    assert torch.allclose(again.predict(frames).probs, reference.predict(frames).probs, atol=1e-6)
    assert torch.equal(again.memory.embeds, reference.memory.embeds)
    assert create_method("clap", micro, None, head=head).tasks == reference.tasks


# -- bad input ------------------------------------------------------------------------------------------------------
def test_bad_tasks_get_clear_errors(micro, learner, pools) -> None:
    clap = create_method("clap", micro, [], **FAST)
    with pytest.raises(InputError, match="empty task"):
        clap.learn_task([], [], TASKS[0])
    with pytest.raises(ClassNameError, match="empty task"):
        clap.learn_task(pools[0], [], [])
    with pytest.raises(InputError, match="unknown classes"):
        clap.learn_task(pools[0].embeds, torch.full((32,), 4), TASKS[0])
    with pytest.raises(InputError, match="unknown classes"):
        clap.learn_task(pools[0].embeds, torch.full((32,), -1), TASKS[0])
    with pytest.raises(InputError, match="one per image"):
        clap.learn_task(pools[0].embeds, torch.zeros(3, dtype=torch.long), TASKS[0])
    with pytest.raises(InputError, match="no images"):
        clap.learn_task(pools[0].embeds, torch.zeros(32, dtype=torch.long), TASKS[0])
    with pytest.raises(InputError, match="needs labels"):
        clap.learn_task(pools[0].embeds)
    assert clap.n_tasks == 0
    repeat = [*TASKS[2][:2], TASKS[0][1]]
    with pytest.raises(ClassNameError, match="repeats"):
        learner.learn_task(pools[2].embeds[:6], torch.tensor([0, 1, 2] * 2), repeat)
    with pytest.raises(ClassNameError, match="repeats"):
        learner.learn_task(task_pool(micro, 0, seed=500))  # the same classes with other images: a repeat
    assert learner.learn_task(pools[0]).extra["resumed"]  # the very same task again: recognised, skipped
    assert learner.n_tasks == 2


def test_a_state_that_does_not_fit_is_refused(micro, learner) -> None:
    state = learner.state_dict()
    state["adapted"]["text"] = torch.zeros(8, 3)
    with pytest.raises(InputError, match="another bundle"):
        create_method("clap", micro, [], **FAST).load_state_dict(state)
    with pytest.raises(InputError, match="holds no learnt state"):
        create_method("clap", micro, ["red circle"]).learn_task(torch.zeros(2, 128), [0, 0], ["blue cross"])


def test_a_non_finite_loss_is_skipped_and_counted(micro, pools, monkeypatch) -> None:
    real = C.CLAP._regulariser
    calls = {"n": 0}

    def poisoned(self, *a, **k):
        calls["n"] += 1
        kl, lang = real(self, *a, **k)
        return (kl * float("nan"), lang) if calls["n"] <= 2 else (kl, lang)

    monkeypatch.setattr(C.CLAP, "_regulariser", poisoned)
    clap = create_method("clap", micro, [], **FAST)
    report = clap.learn_task(pools[0])
    assert report.skipped_steps == 2 and clap.skipped_steps == 2
    assert all(bool(torch.isfinite(p).all()) for p in [*clap.adapters.parameters(), *clap.vga.parameters()])
