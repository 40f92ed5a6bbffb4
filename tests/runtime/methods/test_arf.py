"""ARF (device mode): the losses against hand computations, the loss as the documented sum, frozen encoders,
retrieval, caption files, WiSE-FT endpoints, heads, and bad input."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import edgeclip
from edgeclip.data import shapes
from edgeclip.errors import BundleError, ClassNameError, InputError
from edgeclip.runtime.feature_pool import FeaturePool, build_feature_pool
from edgeclip.runtime.methods import create_method
from edgeclip.runtime.methods.arf import ARF, ARFConfig, wise_interpolate
from edgeclip.runtime.methods.arf_anchors import (
    AnchorSet,
    anchor_loss,
    caption_anchors_for_pool,
    class_similarity,
    contrastive_loss,
    encode_pairs,
    flyp_loss,
    read_caption_file,
    retrieve_pairs,
)

NAMES = shapes.class_names()
TASK = NAMES[:8]  # the fine-tune classes; NAMES[8:] are held out
FAST = {"epochs": 3, "batch_size": 32, "anchor_batch_size": 32, "lr": 5e-3, "adapter_lr": 5e-3}


@pytest.fixture(scope="module")
def data(micro: edgeclip.EdgeClip):
    batch = shapes.make_batch(48, seed=3, shift="blur", labels=np.arange(48) % 8)
    pool = build_feature_pool(micro, list(batch.images), class_names=NAMES, labels=batch.labels.tolist(),
                              cache=False)
    side = shapes.make_batch(64, seed=11)  # a pool of image-text pairs from all classes
    pairs = AnchorSet.from_tensors(micro.encode_images(list(side.images)), micro.encode_text(side.captions),
                                   side.captions)
    return batch, pool, pairs


@pytest.fixture(scope="module")
def trained(micro, data):
    batch, pool, pairs = data
    arf = create_method("arf", micro, NAMES, **FAST)
    report = arf.fit(pool, captions=batch.captions, pairs=pairs)
    return arf, report


def _hand_contrastive(img: torch.Tensor, txt: torch.Tensor, target: torch.Tensor, scale: float) -> float:
    """The loss of the docstring, spelled out row by row."""
    img, txt = F.normalize(img, dim=-1), F.normalize(txt, dim=-1)
    logits = scale * img @ txt.T
    i2t = sum(-float(torch.log_softmax(logits[b], 0)[target[b]]) for b in range(len(img))) / len(img)
    t2i = 0.0
    for k in range(len(txt)):
        pos = [b for b in range(len(img)) if int(target[b]) == k]
        col = torch.log_softmax(logits[:, k], 0)
        t2i += -sum(float(col[b]) for b in pos) / len(pos)
    return 0.5 * (i2t + t2i / len(txt))


# -- losses ----------------------------------------------------------------------------------------------------
def test_contrastive_loss_matches_a_hand_computation() -> None:
    g = torch.Generator().manual_seed(0)
    img, txt = torch.randn(5, 6, generator=g), torch.randn(3, 6, generator=g)
    target = torch.tensor([0, 2, 0, 1, 2])
    assert float(contrastive_loss(img, txt, target, 7.0)) == pytest.approx(_hand_contrastive(img, txt, target, 7.0),
                                                                          rel=1e-5)
    with pytest.raises(InputError, match="at least one image"):  # a text nobody points at
        contrastive_loss(img, txt, torch.tensor([0, 0, 0, 1, 1]), 7.0)


def test_flyp_loss_uses_each_batch_class_once_and_ignores_absent_classes() -> None:
    g = torch.Generator().manual_seed(1)
    img, cls = torch.randn(6, 8, generator=g), torch.randn(5, 8, generator=g)
    labels = torch.tensor([3, 1, 3, 3, 4, 1])  # classes 0 and 2 absent; class 3 three times
    got = float(flyp_loss(img, cls, labels, 10.0))
    expected = _hand_contrastive(img, cls[[1, 3, 4]], torch.tensor([1, 0, 1, 1, 2, 0]), 10.0)
    assert got == pytest.approx(expected, rel=1e-5)
    other = cls.clone()
    other[[0, 2]] = torch.randn(2, 8, generator=g)  # absent classes never enter the loss
    assert float(flyp_loss(img, other, labels, 10.0)) == pytest.approx(got, rel=1e-6)


def test_anchor_loss_counts_a_repeated_caption_once() -> None:
    g = torch.Generator().manual_seed(2)
    img, cap = torch.randn(4, 8, generator=g), torch.randn(3, 8, generator=g)
    groups = torch.tensor([5, 9, 5, 2])  # images 0 and 2 share one caption
    text = cap[[0, 1, 0, 2]]
    got = float(anchor_loss(img, text, groups, 5.0))
    assert got == pytest.approx(_hand_contrastive(img, cap[[2, 0, 1]], torch.tensor([1, 2, 1, 0]), 5.0), rel=1e-5)


def test_the_loss_is_the_documented_sum(micro, data) -> None:
    batch, pool, pairs = data
    g = torch.Generator().manual_seed(3)
    x, y = pool.plain[:16], torch.arange(16) % 8
    text = micro.encode_text([f"a photo of a {c}." for c in TASK])
    tc = (pool.plain[16:28], micro.encode_text(batch.captions[16:28]), torch.arange(12))
    rows = torch.randperm(len(pairs), generator=g)[:10]
    it = (pairs.image_embeds[rows], pairs.text_embeds[rows], pairs.groups[rows])
    scale = float(micro.logit_scale)
    ft_ref = float(flyp_loss(x, text, y, scale))  # the head is untrained: the adapter is the identity
    tc_ref = float(anchor_loss(*tc, scale))
    it_ref = float(anchor_loss(*it, scale))
    for lam_tc, lam_it in [(0.7, 0.3), (0.0, 0.3), (0.7, 0.0), (0.0, 0.0)]:
        arf = create_method("arf", micro, NAMES, lambda_tc=lam_tc, lambda_it=lam_it)
        total, parts = arf.objective(x, y, text, tc, it)
        assert parts["ft"] == pytest.approx(ft_ref, rel=1e-5)
        assert math.isnan(parts["tc"]) == (lam_tc == 0) and math.isnan(parts["it"]) == (lam_it == 0)
        assert float(total.detach()) == pytest.approx(ft_ref + lam_tc * tc_ref + lam_it * it_ref, rel=1e-5)
        assert parts["total"] == pytest.approx(float(total.detach()))
    with pytest.raises(InputError, match="lambda_tc"):  # a weight above 0 with no anchors
        create_method("arf", micro, NAMES).objective(x, y, text, None, it)


# -- the head --------------------------------------------------------------------------------------------------
def test_the_untrained_head_is_zero_shot(micro) -> None:
    frames = shapes.make_batch(8, seed=21, shift="low_contrast").images
    arf = create_method("arf", micro, NAMES)
    zs = create_method("zeroshot", micro, NAMES)
    a, z = arf.predict(frames), zs.predict(frames)
    assert torch.equal(a.labels, z.labels)
    torch.testing.assert_close(a.probs, z.probs, atol=1e-6, rtol=0)
    torch.testing.assert_close(arf.text_embeds(), zs.text_embeds, atol=1e-6, rtol=0)
    assert a.info["fitted"] is False


def test_fit_moves_the_head_never_the_encoders(micro, data) -> None:
    batch, pool, pairs = data
    tower = {k: v.clone() for k, v in micro.text_tower.state_dict().items()}
    visual = {k: v.clone() for k, v in micro.image_encoder.visual.state_dict().items()}
    pair_text = pairs.text_embeds.clone()
    arf = create_method("arf", micro, NAMES, **FAST)
    report = arf.fit(pool, captions=batch.captions, pairs=pairs)
    assert all(torch.equal(v, micro.text_tower.state_dict()[k]) for k, v in tower.items())
    assert all(torch.equal(v, micro.image_encoder.visual.state_dict()[k]) for k, v in visual.items())
    assert not any(p.requires_grad for p in micro.text_tower.parameters())
    assert torch.equal(pairs.text_embeds, pair_text)  # anchors are fixed targets
    assert not torch.equal(arf.prompt.ctx, arf.prompt.ctx_init) and float(arf.adapter.weight.detach().abs().max()) > 0
    assert arf.fitted and report.steps == 3 * 2 and len(report.train_loss) == 3
    assert report.extra["task_classes"] == TASK  # held-out classes never enter the fine-tune loss
    assert set(report.extra["retrieval"]["per_class"]) == set(TASK)
    assert report.extra["n_caption_anchors"] == len(pool) and report.extra["n_pair_anchors"] > 0
    for parts in report.extra["loss_parts"]:
        assert parts["total"] == pytest.approx(parts["ft"] + parts["tc"] + parts["it"], rel=1e-5)


def test_plain_fine_tuning_needs_no_anchors_and_differs_from_arf(micro, data, trained) -> None:
    _, pool, _ = data
    plain = create_method("arf", micro, NAMES, lambda_tc=0.0, lambda_it=0.0, **FAST)
    report = plain.fit(pool)
    assert report.extra["loss_parts"][0]["tc"] == 0.0  # a term that is off adds nothing
    assert report.extra["n_caption_anchors"] == report.extra["n_pair_anchors"] == 0
    arf, _ = trained
    assert not torch.equal(plain.adapter.weight, arf.adapter.weight)


def test_train_only_the_context_or_only_the_adapter(micro, data) -> None:
    _, pool, _ = data
    ctx_only = create_method("arf", micro, NAMES, lambda_tc=0.0, lambda_it=0.0, train_adapter=False, epochs=1)
    ctx_only.fit(pool)
    assert float(ctx_only.adapter.weight.detach().abs().max()) == 0 and not torch.equal(ctx_only.prompt.ctx,
                                                                               ctx_only.prompt.ctx_init)
    ad_only = create_method("arf", micro, NAMES, lambda_tc=0.0, lambda_it=0.0, train_context=False, epochs=1)
    ad_only.fit(pool)
    assert torch.equal(ad_only.prompt.ctx, ad_only.prompt.ctx_init)
    assert float(ad_only.adapter.weight.detach().abs().max()) > 0


def test_wise_ft_endpoints_and_midpoint(micro, data, trained) -> None:
    arf, _ = trained
    frames = shapes.make_batch(8, seed=31, shift="blur").images
    fresh = create_method("arf", micro, NAMES, **FAST)
    zero = arf.interpolated(0.0)
    assert torch.equal(zero.prompt.ctx, fresh.prompt.ctx) and float(zero.adapter.weight.detach().abs().max()) == 0
    assert torch.equal(zero.predict(frames).probs, fresh.predict(frames).probs)  # α = 0: zero-shot, exactly
    zs = create_method("zeroshot", micro, NAMES).predict(frames)
    assert torch.equal(zero.predict(frames).labels, zs.labels)
    one = arf.interpolated(1.0)
    assert torch.equal(one.predict(frames).probs, arf.predict(frames).probs)  # α = 1: the fine-tuned head
    half = arf.interpolated(0.5)
    torch.testing.assert_close(half.adapter.weight, 0.5 * arf.adapter.weight)
    torch.testing.assert_close(half.prompt.ctx, 0.5 * (arf.prompt.ctx + arf.prompt.ctx_init))
    mixed = wise_interpolate({"w": torch.zeros(2)}, {"w": torch.tensor([2.0, 4.0])}, 0.25)
    assert torch.equal(mixed["w"], torch.tensor([0.5, 1.0]))
    with pytest.raises(InputError):
        wise_interpolate({"w": torch.zeros(2)}, {"v": torch.zeros(2)}, 0.5)


def test_wise_alpha_in_the_config_interpolates_after_fit(micro, data) -> None:
    _, pool, _ = data
    kw = {"lambda_tc": 0.0, "lambda_it": 0.0, "epochs": 2}
    ft = create_method("arf", micro, NAMES, **kw)
    ft.fit(pool)
    wise = create_method("arf", micro, NAMES, wise_alpha=0.5, **kw)
    report = wise.fit(pool)
    assert report.extra["wise_alpha"] == 0.5
    assert torch.equal(wise.adapter.weight, ft.interpolated(0.5).adapter.weight)
    assert torch.equal(wise.prompt.ctx, ft.interpolated(0.5).prompt.ctx)


def test_head_round_trip_and_another_bundle_refused(micro, trained, tiny_bundle: Path, tmp_path: Path) -> None:
    arf, _ = trained
    frames = shapes.make_batch(5, seed=41).images
    path = arf.save_head(tmp_path / "arf.head.safetensors")
    loaded = create_method("arf", micro, NAMES, head=path)
    assert isinstance(loaded, ARF) and loaded.fitted and loaded.config == arf.config
    assert torch.equal(loaded.predict(frames).probs, arf.predict(frames).probs)
    with pytest.raises(BundleError, match="another model"):
        create_method("arf", edgeclip.load(tiny_bundle), None, head=path)
    with pytest.raises(ClassNameError):
        create_method("arf", micro, NAMES[::-1], head=path)
    arf2 = create_method("arf", micro, NAMES)
    arf2.load_state_dict(arf.state_dict())
    assert torch.equal(arf2.predict(frames).probs, arf.predict(frames).probs)
    arf2.reset()
    assert torch.equal(arf2.adapter.weight, torch.zeros_like(arf2.adapter.weight)) and not arf2.fitted


def test_held_out_classes_are_scored_with_the_learnt_head(trained, data) -> None:
    arf, _ = trained
    _, pool, _ = data
    held = NAMES[8:]
    logits = arf.logits_for(pool.plain[:4], held)
    assert logits.shape == (4, 8)
    torch.testing.assert_close(logits, arf.logits(pool.plain[:4])[:, 8:], atol=1e-4, rtol=0)


# -- retrieval -------------------------------------------------------------------------------------------------
def test_retrieval_picks_the_pairs_most_similar_to_the_class_names(micro) -> None:
    g = torch.Generator().manual_seed(5)
    prompts = micro.encode_text([f"a photo of a {c}." for c in TASK])
    noise = F.normalize(torch.randn(40, prompts.shape[1], generator=g), dim=-1)
    img = F.normalize(torch.cat([prompts[torch.arange(24) % 8] + 0.8 * noise[:24], noise[24:]]), dim=-1)
    txt = F.normalize(torch.randn(40, prompts.shape[1], generator=g), dim=-1)
    pairs = AnchorSet.from_tensors(img, txt)
    for by in ("image", "text", "both"):
        got = retrieve_pairs(micro, pairs, TASK, k=3, min_similarity=-1.0, by=by)
        scores = class_similarity(prompts, pairs, by)
        per_class = got.meta["retrieval"]["per_class"]
        for c, name in enumerate(TASK):
            assert per_class[name]["rows"] == torch.topk(scores[c], 3).indices.tolist()
        rows = sorted({j for v in per_class.values() for j in v["rows"]})
        assert torch.equal(got.image_embeds, pairs.image_embeds[rows]) and len(got) == len(rows)
    # by image, each class's three best pairs are the three built from its own prompt
    got = retrieve_pairs(micro, pairs, TASK, k=3, min_similarity=0.0, by="image")
    for c, name in enumerate(TASK):
        assert sorted(got.meta["retrieval"]["per_class"][name]["rows"]) == [c, c + 8, c + 16]


def test_a_pool_with_no_match_for_a_class_names_it(micro) -> None:
    prompts = micro.encode_text([f"a photo of a {c}." for c in TASK])
    pairs = AnchorSet.from_tensors(prompts[:7].clone(), prompts[:7].clone(), [f"cap {i}" for i in range(7)])
    with pytest.raises(InputError, match=TASK[7]) as err:
        retrieve_pairs(micro, pairs, TASK, k=2, min_similarity=0.99)
    assert TASK[0] not in str(err.value)


# -- caption files ---------------------------------------------------------------------------------------------
def _write(folder: Path, lines: list[dict | str], n_images: int = 3) -> Path:
    batch = shapes.make_batch(n_images, seed=51)
    for i, img in enumerate(batch.images):
        Image.fromarray(img).save(folder / f"img{i}.png")
    path = folder / "captions.jsonl"
    path.write_text("\n".join(x if isinstance(x, str) else json.dumps(x) for x in lines) + "\n", encoding="utf-8")
    return path


def test_a_caption_file_is_read_and_encoded_through_the_frozen_encoders(micro, tmp_path: Path) -> None:
    lines = [{"image": "img0.png", "caption": "a small red circle."}, "",
             {"image": str(tmp_path / "img1.png"), "caption": " a blue square on the left. "}]
    path = _write(tmp_path, lines)
    records = read_caption_file(path)
    assert [(r.image.name, r.caption, r.line) for r in records] == [("img0.png", "a small red circle.", 1),
                                                                   ("img1.png", "a blue square on the left.", 3)]
    anchors = encode_pairs(micro, path)
    torch.testing.assert_close(anchors.image_embeds, micro.encode_images([r.image for r in records]), atol=1e-5,
                               rtol=0)
    torch.testing.assert_close(anchors.text_embeds, micro.encode_text([r.caption for r in records]), atol=1e-5,
                               rtol=0)
    arf = create_method("arf", micro, NAMES, lambda_it=0.0, epochs=1)
    pool = build_feature_pool(micro, [r.image for r in records], class_names=NAMES, labels=[0, 6], cache=False)
    report = arf.fit(pool, captions=path)
    assert report.extra["n_caption_anchors"] == 2


def test_bad_caption_files_name_the_line(tmp_path: Path) -> None:
    missing = _write(tmp_path, [{"image": "img0.png", "caption": "a red circle."},
                                {"image": "nope.png", "caption": "a blue square."}])
    with pytest.raises(InputError, match=r"line 2: image 'nope.png' does not exist"):
        read_caption_file(missing)
    empty = _write(tmp_path, [{"image": "img0.png", "caption": "a red circle."},
                              {"image": "img1.png", "caption": "a."}, {"image": "img2.png", "caption": "  "}])
    with pytest.raises(InputError, match="line 3 has an empty caption"):
        read_caption_file(empty)
    broken = _write(tmp_path, ['{"image": "img0.png", "caption": ', '["a list"]'])
    with pytest.raises(InputError, match=r"line 1 is not valid JSON.*line 2 must be an object"):
        read_caption_file(broken)
    blank = _write(tmp_path, ["", "  "])
    with pytest.raises(InputError, match="no image-caption lines"):
        read_caption_file(blank)
    with pytest.raises(InputError, match="does not exist"):
        read_caption_file(tmp_path / "absent.jsonl")


# -- bad input -------------------------------------------------------------------------------------------------
def test_fit_refuses_bad_training_input(micro, data) -> None:
    batch, pool, pairs = data
    arf = create_method("arf", micro, NAMES, **FAST)
    other = build_feature_pool(micro, list(shapes.make_batch(2, seed=1).images), class_names=["cat", "dog"],
                               labels=[0, 1], cache=False)
    with pytest.raises(ClassNameError, match="cat"):  # labels naming classes the method does not know
        arf.fit(other, captions=["a cat.", "a dog."], pairs=pairs)
    with pytest.raises(InputError, match="FeaturePool"):  # no training set
        arf.fit(None)
    with pytest.raises(InputError):  # an empty pool cannot even be made
        pool.subset([])
    unlabelled = FeaturePool(pool.embeds, torch.full((len(pool),), -1), None, pool.items, pool.meta)
    with pytest.raises(InputError, match="labelled"):
        arf.fit(unlabelled, captions=batch.captions, pairs=pairs)
    with pytest.raises(InputError, match="needs captions"):
        arf.fit(pool, pairs=pairs)
    with pytest.raises(InputError, match="needs pairs"):
        arf.fit(pool, captions=batch.captions)
    with pytest.raises(InputError, match="one caption per pool image"):
        arf.fit(pool, captions=batch.captions[:-1], pairs=pairs)
    with pytest.raises(InputError, match="empty caption"):
        caption_anchors_for_pool(micro, pool, ["", *batch.captions[1:]])
    with pytest.raises(InputError, match="no pair with similarity"):
        create_method("arf", micro, NAMES, min_similarity=0.999, **FAST).fit(pool, captions=batch.captions,
                                                                            pairs=pairs)
    assert not arf.fitted and torch.equal(arf.adapter.weight, torch.zeros_like(arf.adapter.weight))


def test_config_checks() -> None:
    with pytest.raises(InputError, match="workstation"):
        ARFConfig(mode="workstation")
    with pytest.raises(InputError, match="something to learn"):
        ARFConfig(train_context=False, train_adapter=False)
    with pytest.raises(InputError, match="wise_alpha"):
        ARFConfig(wise_alpha=1.5)
    with pytest.raises(InputError, match="retrieve_by"):
        ARFConfig(retrieve_by="caption")
    with pytest.raises(InputError):
        ARFConfig(lambda_tc=-1.0)
