"""ARF's workstation mode: the model rebuilt from a bundle, the image-encoder fine-tune, WiSE-FT and re-export."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import open_clip
import pytest
import torch
import torch.nn.functional as F

import edgeclip
from edgeclip.data import shapes
from edgeclip.errors import EdgeClipError, InputError
from edgeclip.export.finetune import (
    arf_loss,
    export_finetuned,
    finetune_image_encoder,
    load_model,
    random_resized_crop,
    wise_ft,
)
from edgeclip.export.from_bundle import model_from_bundle, text_key_prefix
from edgeclip.runtime.manifest import IMAGE_TOWER, write_manifest
from edgeclip.runtime.methods.arf_anchors import anchor_loss, flyp_loss

NAMES = shapes.class_names()
PROMPTS = ["a photo of a red circle.", "a large blue cross on a striped pink background, at the top"]
# a short run: 16 blurred images, 2 steps of 8 (the micro model trains in seconds)
SHORT = {"epochs": 1, "batch_size": 8, "lr": 1e-3, "seed": 0}


def _cos(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(F.cosine_similarity(a.float(), b.float(), dim=-1).min())


def _is_visual(key: str) -> bool:
    return key.startswith("visual.")


@pytest.fixture(scope="module")
def data() -> shapes.ShapesBatch:
    return shapes.make_batch(16, seed=5, shift="blur")


@pytest.fixture(scope="module")
def pool() -> tuple[list[np.ndarray], list[str]]:
    b = shapes.make_batch(16, seed=7)
    return list(b.images), list(b.captions)


@pytest.fixture(scope="module")
def zero_shot() -> torch.nn.Module:
    return model_from_bundle(edgeclip.default_bundle()).model


@pytest.fixture(scope="module")
def arf(data, pool):
    return finetune_image_encoder(edgeclip.default_bundle(), data.images, data.labels, NAMES, captions=data.captions,
                                  pairs=pool, retrieval_k=2, min_similarity=-1.0, **SHORT)


@pytest.fixture(scope="module")
def plain(data):
    return finetune_image_encoder(edgeclip.default_bundle(), data.images, data.labels, NAMES, **SHORT)


# -- the model rebuilt from a bundle -------------------------------------------------------------------------------


def test_rebuilt_micro_model_reproduces_the_bundle_runtime(zero_shot, data):
    """The open_clip CLIP rebuilt from the micro bundle's towers gives the embeddings of the bundle's exported
    ONNX encoders (through open_clip's own encode_image / encode_text, so the key mapping is checked)."""
    runtime = edgeclip.load(edgeclip.default_bundle(), backend="onnxruntime")
    assert type(zero_shot).__name__ == "CLIP" and text_key_prefix(zero_shot) == ""
    px = runtime.preprocess(list(data.images[:8]))
    with torch.no_grad():
        img = zero_shot.encode_image(px)
        txt = zero_shot.encode_text(open_clip.get_tokenizer("edgeclip-micro")(PROMPTS))
    assert _cos(img, runtime.encode_images(px)) > 0.999
    assert _cos(txt, runtime.encode_text(PROMPTS)) > 0.999
    assert float(zero_shot.logit_scale.detach().exp()) == pytest.approx(runtime.logit_scale, rel=1e-6)
    assert zero_shot.visual.preprocess_cfg["size"] == (32, 32)


def test_rebuilt_custom_text_model_maps_text_keys_under_text(bundle_factory):
    """A CustomTextCLIP bundle (EOS pooling) maps the TextTower's keys under ``text.``."""
    path = bundle_factory("test-tiny-eos")
    rebuilt = model_from_bundle(path)
    assert text_key_prefix(rebuilt.model) == "text."
    runtime = edgeclip.load(path, backend="onnxruntime")
    px = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        img = rebuilt.model.encode_image(px)
        txt = rebuilt.model.encode_text(open_clip.get_tokenizer("test-tiny-eos")(PROMPTS))
    assert _cos(img, runtime.encode_images(px)) > 0.999
    assert _cos(txt, runtime.encode_text(PROMPTS)) > 0.999


def test_checkpoint_source_gives_the_same_model(zero_shot, tmp_path):
    ckpt = tmp_path / "micro.pt"
    torch.save(zero_shot.state_dict(), ckpt)
    lm = load_model(ckpt, model_name="edgeclip-micro")
    assert lm.origin["checkpoint"] == str(ckpt.resolve())
    for k, v in zero_shot.state_dict().items():
        assert torch.equal(v, lm.model.state_dict()[k]), k
    assert lm.tokenizer.spec.eot_id == 49407 and lm.preprocess.image_size == 32


# -- the fine-tune -----------------------------------------------------------------------------------------------


def test_finetune_moves_the_image_tower_and_leaves_the_text_tower_bit_identical(arf, zero_shot):
    before, after = zero_shot.state_dict(), arf.model.state_dict()
    assert set(before) == set(after)
    visual = [k for k in before if _is_visual(k) and before[k].is_floating_point()]
    moved = [k for k in visual if not torch.equal(before[k], after[k])]
    assert len(moved) == len(visual)  # every weight of the image tower trained (weight decay touches all)
    others = [k for k in before if not _is_visual(k)]
    assert "token_embedding.weight" in others and "logit_scale" in others
    for k in others:
        assert torch.equal(before[k], after[k]), f"{k} changed"
    assert not any(p.requires_grad for p in arf.model.parameters())
    assert arf.steps == 2 and arf.skipped_steps == 0
    assert arf.settings["method"] == "arf" and arf.settings["caption_anchors"] == 16
    assert 0 < arf.settings["pair_anchors"] <= 16
    row = arf.history[-1]
    assert {"total", "ft", "tc", "it"} <= set(row) and all(np.isfinite(v) for v in row.values())


def test_arf_loss_decomposes_into_flyp_and_the_anchor_terms():
    g = torch.Generator().manual_seed(0)
    img, ctext = torch.randn(8, 16, generator=g), torch.randn(5, 16, generator=g)
    labels = torch.tensor([0, 1, 1, 2, 3, 3, 3, 4])
    tc = (img, torch.randn(8, 16, generator=g), torch.tensor([0, 0, 1, 2, 3, 4, 5, 6]))
    it = (torch.randn(6, 16, generator=g), torch.randn(6, 16, generator=g), torch.arange(6))
    ft = flyp_loss(img, ctext, labels, 10.0)
    off = arf_loss(img, labels, ctext, 10.0, tc=tc, it=it, lambda_tc=0.0, lambda_it=0.0)
    assert torch.equal(off.total, ft) and off.tc is None and off.it is None
    assert torch.equal(arf_loss(img, labels, ctext, 10.0).total, ft)  # no anchors at all
    only_tc = arf_loss(img, labels, ctext, 10.0, tc=tc, it=it, lambda_tc=1.0, lambda_it=0.0)
    torch.testing.assert_close(only_tc.total, ft + anchor_loss(*tc, 10.0))
    both = arf_loss(img, labels, ctext, 10.0, tc=tc, it=it, lambda_tc=0.5, lambda_it=2.0)
    torch.testing.assert_close(both.total, ft + 0.5 * anchor_loss(*tc, 10.0) + 2.0 * anchor_loss(*it, 10.0))
    assert float(both.tc) > 0 and float(both.it) > 0


def test_lambda_zero_is_plain_finetuning_and_anchors_change_the_result(data, pool, plain, arf):
    """With both weights 0 the anchors are ignored: the weights are bit-identical to plain fine-tuning (same
    seed); with the anchor terms on they are not."""
    off = finetune_image_encoder(edgeclip.default_bundle(), data.images, data.labels, NAMES, captions=data.captions,
                                 pairs=pool, lambda_tc=0.0, lambda_it=0.0, **SHORT)
    assert off.settings["method"] == plain.settings["method"] == "flyp"
    a, b = off.model.state_dict(), plain.model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert set(plain.history[-1]) == {"total", "ft", "lr"}
    c = arf.model.state_dict()
    assert any(not torch.equal(c[k], b[k]) for k in b if _is_visual(k))


def test_caption_file_anchors_are_a_separate_anchor_batch(data, tmp_path):
    """A caption JSONL gives text-compensated anchors with images of their own (drawn beside the batch)."""
    from PIL import Image

    lines = []
    for i in range(4):
        Image.fromarray(data.images[i]).save(tmp_path / f"{i}.png")
        lines.append(json.dumps({"image": f"{i}.png", "caption": data.captions[i]}))
    (tmp_path / "caps.jsonl").write_text("\n".join(lines) + "\n")
    res = finetune_image_encoder(edgeclip.default_bundle(), data.images, data.labels, NAMES,
                                 captions=tmp_path / "caps.jsonl", anchor_batch_size=2, **SHORT)
    assert res.settings["method"] == "arf" and res.settings["caption_anchors"] == 4
    assert res.settings["lambda_it"] == 0.0 and "tc" in res.history[-1] and "it" not in res.history[-1]


def test_a_non_finite_loss_skips_its_step(data, zero_shot, monkeypatch):
    import edgeclip.export.finetune as ft

    real = ft.arf_loss

    def nan_loss(*args, **kwargs):
        out = real(*args, **kwargs)
        out.total = out.total * float("nan")
        return out

    monkeypatch.setattr(ft, "arf_loss", nan_loss)
    res = finetune_image_encoder(edgeclip.default_bundle(), data.images[:8], data.labels[:8], NAMES, **SHORT)
    assert res.steps == 1 and res.skipped_steps == 1
    before = zero_shot.state_dict()
    assert all(torch.equal(v, before[k]) for k, v in res.model.state_dict().items())


def test_random_resized_crop_keeps_shape_and_is_seeded():
    x = torch.randn(4, 3, 32, 32)
    a = random_resized_crop(x, torch.Generator().manual_seed(3))
    b = random_resized_crop(x, torch.Generator().manual_seed(3))
    assert a.shape == x.shape and torch.equal(a, b) and not torch.equal(a, x)
    full = random_resized_crop(x, torch.Generator().manual_seed(3), scale=(1.0, 1.0), ratio=(1.0, 1.0))
    torch.testing.assert_close(full, x, atol=1e-5, rtol=0)  # the whole image: the identity


# -- WiSE-FT -------------------------------------------------------------------------------------------------------


def test_wise_ft_interpolates_every_weight(zero_shot, plain):
    zs, ft = zero_shot.state_dict(), plain.model.state_dict()
    at0, at1 = wise_ft(zero_shot, plain, alpha=0.0).state_dict(), wise_ft(zero_shot, plain, alpha=1.0).state_dict()
    mid = wise_ft(zero_shot, plain.model, alpha=0.5).state_dict()
    for k in zs:
        assert torch.equal(at0[k], zs[k]), k
        assert torch.equal(at1[k], ft[k]), k
        torch.testing.assert_close(mid[k], (zs[k] + ft[k]) / 2, rtol=0, atol=1e-6)
    assert any(not torch.equal(mid[k], zs[k]) and not torch.equal(mid[k], ft[k]) for k in zs if _is_visual(k))
    # the inputs are untouched
    assert all(torch.equal(v, zero_shot.state_dict()[k]) for k, v in zs.items())
    with pytest.raises(InputError, match="alpha"):
        wise_ft(zero_shot, plain, alpha=1.5)


def test_wise_ft_refuses_other_architectures(zero_shot, tiny_names):
    other = open_clip.create_model("test-tiny-vit")
    with pytest.raises(InputError, match="same architecture"):
        wise_ft(zero_shot, other)


# -- export ------------------------------------------------------------------------------------------------------


def test_finetuned_model_exports_a_bundle_whose_onnx_matches_pytorch(arf, data, tmp_path):
    res = export_finetuned(arf, tmp_path / "arf.bundle")
    assert res.parity.image_min_cos >= 0.9999 and res.parity.text_min_cos >= 0.9999
    model = edgeclip.load(res.path, backend="onnxruntime")
    px = model.preprocess(list(data.images[:8]))
    with torch.no_grad():
        ref = arf.model.encode_image(px)
    assert _cos(model.encode_images(px, normalize=False), ref) > 0.9999
    micro = edgeclip.load(edgeclip.default_bundle(), backend="onnxruntime")
    assert _cos(micro.encode_images(px), F.normalize(ref, dim=-1)) < 0.9999  # it is really the fine-tuned encoder
    manifest = json.loads((res.path / "manifest.json").read_text())
    assert manifest["extra"]["finetune"]["method"] == "arf"
    assert manifest["source"]["architecture"] == "edgeclip-micro"
    # the new bundle carries its towers: it can be rebuilt (and fine-tuned) again
    again = model_from_bundle(res.path).model
    assert all(torch.equal(v, arf.model.state_dict()[k]) for k, v in again.state_dict().items() if _is_visual(k))


def test_failed_export_leaves_nothing(arf, tmp_path, monkeypatch):
    import edgeclip.export.bundle_writer as bw

    def boom(*args, **kwargs):
        raise RuntimeError("simulated failure while writing the image graph")

    monkeypatch.setattr(bw, "export_image_graph", boom)
    out = tmp_path / "out" / "ft.bundle"
    with pytest.raises(RuntimeError, match="simulated"):
        export_finetuned(arf, out)
    assert list(out.parent.iterdir()) == []
    with pytest.raises(InputError, match="model_name"):
        export_finetuned(arf.model, tmp_path / "x.bundle")


# -- bad input ---------------------------------------------------------------------------------------------------


def _micro_without_image_tower(tmp_path: Path) -> Path:
    dst = tmp_path / "no_tower.bundle"
    shutil.copytree(edgeclip.default_bundle(), dst)
    (dst / IMAGE_TOWER).unlink()
    raw = json.loads((dst / "manifest.json").read_text())
    del raw["files"][IMAGE_TOWER]
    raw.pop("manifest_sha256")
    write_manifest(dst, raw)
    return dst


def test_bad_input_is_a_clear_error(data, tmp_path):
    src = edgeclip.default_bundle()
    imgs, labels = data.images[:4], data.labels[:4]
    with pytest.raises(InputError, match="no images"):
        finetune_image_encoder(src, [], [], NAMES, **SHORT)
    with pytest.raises(InputError, match="no images"):
        finetune_image_encoder(src, np.zeros((0, 64, 64, 3), np.uint8), [], NAMES, **SHORT)
    with pytest.raises(InputError, match=r"lie in \[0, 16\)"):
        finetune_image_encoder(src, imgs, [0, 1, 2, 16], NAMES, **SHORT)
    with pytest.raises(InputError, match=r"lie in \[0, 16\)"):
        finetune_image_encoder(src, imgs, [0, -1, 2, 3], NAMES, **SHORT)
    with pytest.raises(InputError, match="one integer per image"):
        finetune_image_encoder(src, imgs, labels[:3], NAMES, **SHORT)
    with pytest.raises(InputError, match="one per fine-tune image"):
        finetune_image_encoder(src, imgs, labels, NAMES, captions=data.captions[:3], **SHORT)
    with pytest.raises(InputError, match=r"empty caption.*image 2"):
        finetune_image_encoder(src, imgs, labels, NAMES, captions=["a", "b", "  ", "d"], **SHORT)
    with pytest.raises(InputError, match="empty caption"):
        finetune_image_encoder(src, imgs, labels, NAMES, pairs=(list(imgs[:2]), ["a red circle", ""]), **SHORT)
    with pytest.raises(InputError, match="2 captions for 3 images"):
        finetune_image_encoder(src, imgs, labels, NAMES, pairs=(list(imgs[:3]), ["x", "y"]), **SHORT)
    with pytest.raises(InputError, match=r"longer than|more than the text context"):
        finetune_image_encoder(src, imgs, labels, NAMES, captions=["word " * 80] * 4, **SHORT)
    with pytest.raises(InputError, match="no pair with similarity"):
        finetune_image_encoder(src, imgs, labels, NAMES, pairs=(list(imgs), ["a red circle"] * 4),
                               min_similarity=1.5, **SHORT)
    caption_file = tmp_path / "caps.jsonl"
    caption_file.write_text(json.dumps({"image": "missing.png", "caption": "a red circle"}) + "\n")
    with pytest.raises(InputError, match="does not exist"):
        finetune_image_encoder(src, imgs, labels, NAMES, captions=caption_file, **SHORT)
    with pytest.raises(InputError, match=f"no {IMAGE_TOWER}"):
        finetune_image_encoder(_micro_without_image_tower(tmp_path), imgs, labels, NAMES, **SHORT)
    with pytest.raises(InputError, match="model_name"):
        finetune_image_encoder(tmp_path / "caps.jsonl", imgs, labels, NAMES, **SHORT)
    with pytest.raises(InputError, match="epochs"):
        finetune_image_encoder(src, imgs, labels, NAMES, epochs=0)
    with pytest.raises(EdgeClipError):
        finetune_image_encoder(src, imgs, labels, [], **SHORT)
