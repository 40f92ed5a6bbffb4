"""Loading verifies the bundle: missing or changed files and newer formats fail with clear errors."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

import edgeclip
from edgeclip.errors import BackendError, BundleError
from edgeclip.runtime.bundle import FORMAT_VERSION, MANIFEST, TEXT_ONNX, TEXT_TOWER


@pytest.fixture
def copy(tiny_bundle: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "b"
    shutil.copytree(tiny_bundle, dst)
    return dst


def test_missing_file(copy: Path) -> None:
    (copy / TEXT_ONNX).unlink()
    with pytest.raises(BundleError, match=f"{TEXT_ONNX} is missing"):
        edgeclip.load(copy)


def test_changed_file_hash_mismatch(copy: Path) -> None:
    data = bytearray((copy / TEXT_TOWER).read_bytes())
    data[-1] ^= 0xFF
    (copy / TEXT_TOWER).write_bytes(bytes(data))
    with pytest.raises(BundleError, match="hash mismatch"):
        edgeclip.load(copy)


def test_truncated_file(copy: Path) -> None:
    data = (copy / TEXT_TOWER).read_bytes()
    (copy / TEXT_TOWER).write_bytes(data[:100])
    with pytest.raises(BundleError, match="truncated"):
        edgeclip.load(copy)


def test_newer_format_version(copy: Path) -> None:
    m = json.loads((copy / MANIFEST).read_text())
    m["format_version"] = FORMAT_VERSION + 1
    (copy / MANIFEST).write_text(json.dumps(m))
    with pytest.raises(BundleError, match="upgrade edgeclip"):
        edgeclip.load(copy)


def test_not_a_bundle(tmp_path: Path) -> None:
    with pytest.raises(BundleError, match="does not exist"):
        edgeclip.load(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(BundleError, match="not an edgeclip bundle"):
        edgeclip.load(tmp_path / "empty")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / MANIFEST).write_text("{not json")
    with pytest.raises(BundleError, match="not valid JSON"):
        edgeclip.load(tmp_path / "bad")


def test_unknown_backend(tiny_bundle: Path) -> None:
    with pytest.raises(BackendError, match="unknown backend"):
        edgeclip.load(tiny_bundle, backend="tpu")


def test_cuda_without_gpu(tiny_bundle: Path) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(BackendError, match="CUDA is not available"):
        edgeclip.load(tiny_bundle, device="cuda")


# -- the manifest's schema and seal ---------------------------------------------------------------------------
def _edit(bundle: Path, change, reseal: bool = False) -> None:
    from edgeclip.runtime.manifest import seal_manifest

    m = json.loads((bundle / MANIFEST).read_text())
    change(m)
    (bundle / MANIFEST).write_text(json.dumps(seal_manifest(m) if reseal else m, indent=2))


@pytest.mark.parametrize("key", ["image", "text", "logit_scale", "files", "model_config"])
def test_missing_manifest_key_names_file_and_key(copy: Path, key: str) -> None:
    _edit(copy, lambda m: m.pop(key))
    with pytest.raises(BundleError, match=rf"manifest\.json: {key} must be .*it is missing; re-export") as info:
        edgeclip.load(copy)
    assert str(copy / MANIFEST) in str(info.value)


@pytest.mark.parametrize(("path", "value", "expected"), [
    (("image",), [32, 32], r"image must be an object, got a list"),
    (("text", "tokenizer"), "clip", r"text\.tokenizer must be an object, got the string 'clip'"),
    (("logit_scale",), float("nan"), r"logit_scale must be a finite number > 0, got nan"),
    (("logit_scale",), -100.0, r"logit_scale must be a finite number > 0, got -100\.0"),
    (("image", "image_size"), "32", r"image\.image_size must be an integer >= 1, got the string '32'"),
    (("image", "mean"), [0.5, 0.5], r"image\.mean must be a list of 3 finite numbers"),
    (("text", "causal"), 1, r"text\.causal must be true or false, got 1"),
    (("text", "pool"), "mean", r"text\.pool must be one of 'argmax', 'eos'"),
    (("embed_dim",), 0, r"embed_dim must be an integer >= 1, got 0"),
    (("files", "text_encoder.onnx", "sha256"), "abc", r'files\["text_encoder\.onnx"\]\.sha256 must be 64'),
    (("files", "text_encoder.onnx", "size"), None, r'files\["text_encoder\.onnx"\]\.size must be an integer'),
])
def test_wrong_manifest_value_names_the_key_path(copy: Path, path: tuple[str, ...], value, expected: str) -> None:
    def change(m: dict) -> None:
        obj = m
        for key in path[:-1]:
            obj = obj[key]
        obj[path[-1]] = value

    _edit(copy, change)
    with pytest.raises(BundleError, match=expected):
        edgeclip.load(copy, verify=False)  # the schema holds even without the hash checks


def test_file_names_must_stay_inside_the_bundle(copy: Path) -> None:
    _edit(copy, lambda m: m["files"].update({"../secret": {"sha256": "0" * 64, "size": 1}}), reseal=True)
    with pytest.raises(BundleError, match="plain file name inside the bundle"):
        edgeclip.load(copy)


def test_edited_manifest_value_is_caught_by_its_hash(copy: Path) -> None:
    m = json.loads((copy / MANIFEST).read_text())
    assert len(m["manifest_sha256"]) == 64  # export sealed it
    _edit(copy, lambda m: m.update(logit_scale=50.0))
    with pytest.raises(BundleError, match="was changed after export"):
        edgeclip.load(copy)
    assert edgeclip.load(copy, verify=False).logit_scale == 50.0  # verify=False skips every hash


def test_unsealed_manifest_still_loads_with_a_warning(copy: Path, caplog: pytest.LogCaptureFixture) -> None:
    _edit(copy, lambda m: m.pop("manifest_sha256"))
    with caplog.at_level("WARNING", logger="edgeclip"):
        model = edgeclip.load(copy, backend="onnxruntime")
    assert any("no manifest_sha256" in r.getMessage() and r.levelname == "WARNING" for r in caplog.records)
    assert model.bundle.spec.manifest_sha256 is None


def test_changed_image_size_is_caught(copy: Path) -> None:
    _edit(copy, lambda m: m["image"].update(image_size=40), reseal=True)
    with pytest.raises(BundleError, match=r"image\.image_size is 40 but model_config\.vision_cfg\.image_size is 32"):
        edgeclip.load(copy)

    # consistent everywhere in the manifest, yet not what the exported graph takes: the graph's input shape says so
    def both(m: dict) -> None:
        m["image"]["image_size"] = 40
        m["model_config"]["vision_cfg"]["image_size"] = 40

    _edit(copy, both, reseal=True)
    with pytest.raises(BundleError, match=r"image_encoder\.onnx takes pixels of shape \['batch', 3, 32, 32\]"):
        edgeclip.load(copy, backend="onnxruntime")


def test_spec_is_typed_frozen_and_raw_manifest_stays(tiny_bundle: Path) -> None:
    import dataclasses

    from edgeclip.runtime.bundle import Bundle, open_bundle
    from edgeclip.runtime.manifest import Manifest

    b = open_bundle(tiny_bundle)
    assert isinstance(b.spec, Manifest) and b.spec.image.image_size == 32 and b.spec.text.causal is True
    assert b.manifest["model_config"]["embed_dim"] == b.embed_dim == 32  # the raw dict for existing readers
    assert b.manifest.get("source")["architecture"] == b.spec.source.architecture == "test-tiny-vit"
    with pytest.raises(dataclasses.FrozenInstanceError):
        b.spec.logit_scale = 1.0  # type: ignore[misc]
    broken = dict(b.manifest, logit_scale="high")
    with pytest.raises(BundleError, match="logit_scale must be a finite number"):
        Bundle(tiny_bundle, broken)  # built by hand, validated all the same


def test_identity(tiny_bundle: Path, copy: Path) -> None:
    from edgeclip.runtime.bundle import open_bundle, sha256_file

    ident = open_bundle(tiny_bundle).identity()
    assert set(ident) == {"manifest_sha256", "files", "architecture", "embed_dim"}
    m = json.loads((tiny_bundle / MANIFEST).read_text())
    assert ident["manifest_sha256"] == m["manifest_sha256"]
    assert ident["files"] == {name: sha256_file(tiny_bundle / name) for name in m["files"]}
    assert (ident["architecture"], ident["embed_dim"]) == ("test-tiny-vit", 32)
    assert open_bundle(copy).identity() == ident  # the folder's location is not part of it
    _edit(copy, lambda m: m.update(logit_scale=50.0), reseal=True)
    other = open_bundle(copy).identity()
    assert other["manifest_sha256"] != ident["manifest_sha256"] and other["files"] == ident["files"]


def test_embedded_bundle_is_sealed_and_lists_its_classes() -> None:
    from edgeclip.data import shapes
    from edgeclip.runtime.bundle import open_bundle
    from edgeclip.runtime.manifest import manifest_digest

    b = open_bundle(edgeclip.default_bundle())
    assert b.spec.manifest_sha256 == manifest_digest(b.manifest)
    assert b.spec.classes == tuple(shapes.class_names()) and "16" in (b.spec.description or "")
