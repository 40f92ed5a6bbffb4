"""Heads (a trained method's state in one file) and CoOp, the first trainable method."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

import edgeclip
from edgeclip.data import shapes
from edgeclip.errors import BundleError, ClassNameError, InputError
from edgeclip.runtime.feature_pool import FeaturePool, build_feature_pool
from edgeclip.runtime.head import default_head_path, read_head
from edgeclip.runtime.methods import create_method
from edgeclip.runtime.methods.coop import _lr_at

NAMES = shapes.class_names()


@pytest.fixture(scope="module")
def pools(micro: edgeclip.EdgeClip) -> tuple[FeaturePool, FeaturePool]:
    train = build_feature_pool(micro, "shapes:96:blur", cache=False)
    val = build_feature_pool(micro, "shapes:48:blur", seed=31337, cache=False)
    return train, val


@pytest.fixture(scope="module")
def trained(micro: edgeclip.EdgeClip, pools: tuple[FeaturePool, FeaturePool]):
    coop = create_method("coop", micro, NAMES, epochs=4, lr=0.02)
    report = coop.fit(pools[0], val=pools[1])
    return coop, report


def test_fit_trains_only_the_context_and_selects_on_validation(micro, pools, trained) -> None:
    coop, report = trained
    tower = {k: v.clone() for k, v in micro.text_tower.state_dict().items()}
    assert report.epochs == 4 and len(report.train_loss) == 4 and len(report.val_accuracy) == 4
    assert report.n_train == 96 and report.n_val == 48 and report.steps == 4 * 3  # 96 samples / batch 32
    assert report.best_epoch == max(range(4), key=lambda e: (report.val_accuracy[e], -e))
    assert report.train_loss[-1] < report.train_loss[0]
    assert not torch.equal(coop.prompt.ctx, coop.prompt.ctx_init) and coop.fitted
    for k, v in micro.text_tower.state_dict().items():
        assert torch.equal(v, tower[k])  # the frozen tower never moves
    # the kept context is the best epoch's: its validation accuracy is what the report says
    assert coop._accuracy(pools[1].plain, pools[1].labels) == pytest.approx(max(report.val_accuracy))


def test_schedule_never_trains_at_zero_and_ends_near_zero() -> None:
    lrs = [_lr_at(s, 100, 10, 0.1) for s in range(100)]
    assert lrs[0] == pytest.approx(0.01) and min(lrs[:99]) > 0
    assert max(lrs) == pytest.approx(0.1) and lrs[10] == pytest.approx(0.1)
    assert lrs[99] < 1e-3


def test_head_round_trip(micro, trained, tmp_path: Path) -> None:
    coop, _ = trained
    path = coop.save_head(tmp_path / "blur.head.safetensors")
    assert not list(tmp_path.glob(".*tmp"))  # written atomically: no temporary file left
    with safe_open(str(path), framework="pt") as f:
        header = f.metadata()
    assert header["format"] == "edgeclip.head" and header["method"] == "coop"
    assert json.loads(header["class_names"]) == NAMES and json.loads(header["config"])["epochs"] == 4
    ident = json.loads(header["bundle"])
    assert ident["files"]["image_encoder.onnx"] == micro.bundle.manifest["files"]["image_encoder.onnx"]["sha256"]
    frames = list(shapes.make_batch(8, seed=4, shift="blur").images)
    loaded = create_method("coop", micro, NAMES, head=path)
    assert loaded.config == coop.config and loaded.fitted
    assert torch.equal(loaded.predict(frames).probs, coop.predict(frames).probs)
    by_head = create_method("coop", micro, None, head=path)  # the head brings its classes
    assert by_head.class_names == NAMES
    fresh = create_method("coop", micro, NAMES)
    fresh.load_head(path)
    assert torch.equal(fresh.prompt.ctx, coop.prompt.ctx)


def test_head_refused_on_another_bundle_classes_or_method(micro, trained, tiny_bundle: Path, tmp_path: Path) -> None:
    coop, _ = trained
    path = coop.save_head(tmp_path / "h.head.safetensors")
    tiny = edgeclip.load(tiny_bundle)
    with pytest.raises(BundleError, match="another model"):
        create_method("coop", tiny, NAMES, head=path)
    with pytest.raises(ClassNameError, match="trained for the classes"):
        create_method("coop", micro, NAMES[::-1], head=path)
    with pytest.raises(ClassNameError, match="trained for the classes"):
        create_method("coop", micro, NAMES[:4]).load_head(path)
    with pytest.raises(InputError, match="takes no head"):
        create_method("tpt", micro, NAMES, head=path)
    with pytest.raises(BundleError, match="not 'other'"):
        read_head(path).check("other", micro.bundle, NAMES)
    (tmp_path / "junk.head.safetensors").write_bytes(b"\x00" * 64)
    with pytest.raises(BundleError, match="readable"):
        create_method("coop", micro, NAMES, head=tmp_path / "junk.head.safetensors")
    with pytest.raises(BundleError, match="does not exist"):
        create_method("coop", micro, NAMES, head=tmp_path / "missing.head.safetensors")
    protos = tmp_path / "p.safetensors"
    edgeclip.build_prototypes(micro, "shapes:16").save(protos)
    with pytest.raises(BundleError, match="not an edgeclip head"):
        create_method("coop", micro, NAMES, head=protos)


def test_head_inside_the_bundle_keeps_its_verification(micro, trained, tmp_path: Path) -> None:
    coop, _ = trained
    copy = Path(shutil.copytree(micro.bundle.path, tmp_path / "micro.bundle"))
    path = coop.save_head(default_head_path(copy, "coop", "blur"))
    assert path == copy / "heads" / "blur.head.safetensors"
    model = edgeclip.load(copy, backend="torch", verify=True)  # hashes still verify: heads are not listed
    from edgeclip.info import bundle_info

    assert bundle_info(copy)["heads"] == [{"file": "blur.head.safetensors", "method": "coop", "classes": 16,
                                           "fits": True}]
    frames = list(shapes.make_batch(4, seed=2).images)
    assert torch.equal(create_method("coop", model, NAMES, head=path).predict(frames).probs,
                       coop.predict(frames).probs)


def test_a_failed_write_keeps_the_old_head(micro, trained, tmp_path: Path, monkeypatch) -> None:
    coop, _ = trained
    path = coop.save_head(tmp_path / "h.head.safetensors")
    before = path.read_bytes()

    def broken(tensors, filename, metadata=None):
        Path(filename).write_bytes(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr("edgeclip.runtime.safetensors_io.save_file", broken)
    with pytest.raises(OSError, match="disk full"):
        coop.save_head(path)
    assert path.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["h.head.safetensors"]


def test_fit_refuses_bad_pools(micro, pools, tiny_bundle: Path) -> None:
    coop = create_method("coop", micro, NAMES, epochs=1)
    unlabelled = build_feature_pool(micro, list(shapes.make_batch(4, seed=1).images), cache=False)
    with pytest.raises(InputError, match="labelled"):
        coop.fit(unlabelled)
    other = build_feature_pool(micro, list(shapes.make_batch(2, seed=1).images), class_names=["cat", "dog"],
                               labels=[0, 1], cache=False)
    with pytest.raises(ClassNameError, match="cat"):
        coop.fit(other)
    foreign = build_feature_pool(edgeclip.load(tiny_bundle), list(shapes.make_batch(2, seed=1).images),
                                 class_names=NAMES, labels=[0, 1], cache=False)
    with pytest.raises(BundleError):
        coop.fit(foreign)
