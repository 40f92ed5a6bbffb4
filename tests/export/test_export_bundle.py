"""Export: every supported family exports with parity; bad requests fail before writing anything."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import edgeclip
from edgeclip.errors import ExportError
from edgeclip.export import bundle_writer, export_bundle
from edgeclip.runtime.bundle import IMAGE_ONNX, IMAGE_TOWER, MANIFEST, TEXT_ONNX, TEXT_TOWER, sha256_file

FAMILIES = ["test-tiny-vit", "test-tiny-rn", "test-tiny-mobile", "test-tiny-eos"]


def _cos(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(F.cosine_similarity(a.double(), b.double(), dim=-1).min())


@pytest.mark.parametrize("name", FAMILIES)
def test_family_exports_with_parity(name: str, bundle_factory) -> None:
    path = bundle_factory(name)
    manifest = json.loads((path / MANIFEST).read_text())
    for f in (IMAGE_ONNX, TEXT_ONNX, TEXT_TOWER, IMAGE_TOWER):
        assert manifest["files"][f]["sha256"] == sha256_file(path / f)
    assert manifest["parity"]["image_min_cos"] >= 0.9999
    assert manifest["parity"]["text_min_cos"] >= 0.9999
    assert manifest["text"]["causal"] is (name != "test-tiny-mobile")
    assert manifest["text"]["pool"] == ("eos" if name == "test-tiny-eos" else "argmax")

    # independent check through the runtime: both backends, fresh inputs
    torch_model = edgeclip.load(path, backend="torch")
    ort_model = edgeclip.load(path, backend="onnxruntime")
    size = torch_model.preprocess_cfg.image_size
    pixels = torch.randn(5, 3, size, size, generator=torch.Generator().manual_seed(1))
    assert _cos(torch_model.image_encoder(pixels), ort_model.image_encoder(pixels)) >= 0.9999
    prompts = ["a photo of a cat.", "a robot arm", "a very long description of a scene with many objects in it"]
    assert _cos(torch_model.encode_text(prompts), ort_model.encode_text(prompts)) >= 0.9999


def test_export_from_local_checkpoint(tiny_names: list[str], tmp_path: Path) -> None:
    import open_clip

    torch.manual_seed(123)
    model = open_clip.create_model("test-tiny-vit").eval()
    ckpt = tmp_path / "local.pt"
    torch.save(model.state_dict(), ckpt)
    torch.manual_seed(999)  # a fresh random init must not leak into the bundle
    result = export_bundle(tmp_path / "ck.bundle", "test-tiny-vit", checkpoint=ckpt)
    assert result.manifest["source"]["checkpoint"] == str(ckpt.resolve())
    loaded = edgeclip.load(result.path, backend="onnxruntime")
    prompts = ["a photo of a dog.", "a photo of a robot arm."]
    ids = open_clip.get_tokenizer("test-tiny-vit")(prompts)
    with torch.no_grad():
        ref = F.normalize(model.encode_text(ids), dim=-1)
        img = torch.randn(2, 3, 32, 32)
        ref_img = F.normalize(model.encode_image(img), dim=-1)
    assert _cos(loaded.encode_text(prompts), ref) >= 0.9999
    assert _cos(F.normalize(loaded.image_encoder(img), dim=-1), ref_img) >= 0.9999
    assert loaded.logit_scale == pytest.approx(float(model.logit_scale.detach().exp()))


def _checkpoint_error(tmp_path: Path, ckpt: Path) -> str:
    out = tmp_path / "x.bundle"
    with pytest.raises(ExportError) as info:
        export_bundle(out, "test-tiny-vit", checkpoint=ckpt)
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == sorted([ckpt.name])
    msg = str(info.value)
    assert str(ckpt) in msg and "test-tiny-vit" in msg
    return msg


def test_checkpoint_of_another_architecture(tiny_names: list[str], tmp_path: Path) -> None:
    import open_clip

    ckpt = tmp_path / "eos.pt"
    torch.save(open_clip.create_model("test-tiny-eos").state_dict(), ckpt)
    msg = _checkpoint_error(tmp_path, ckpt)
    assert "does not match the model test-tiny-vit" in msg and "missing" in msg and "of another shape" in msg


def test_files_that_are_not_checkpoints(tiny_names: list[str], tmp_path: Path) -> None:
    (tmp_path / "garbage.pt").write_bytes(b"this is not a pickle" * 20)
    assert "cannot be read: it is not a checkpoint" in _checkpoint_error(tmp_path, tmp_path / "garbage.pt")
    (tmp_path / "garbage.pt").unlink()
    (tmp_path / "empty.pt").write_bytes(b"")
    assert "is empty (0 bytes)" in _checkpoint_error(tmp_path, tmp_path / "empty.pt")
    (tmp_path / "empty.pt").unlink()
    torch.save({"step": torch.tensor(3)}, tmp_path / "other.pt")  # a torch file, but no CLIP weights in it
    assert "does not match the model" in _checkpoint_error(tmp_path, tmp_path / "other.pt")


def test_checkpoint_error_on_the_command_line(tiny_names: list[str], tmp_path: Path, capsys) -> None:
    from edgeclip.cli import main

    (tmp_path / "w.pt").write_bytes(b"\x00" * 64)
    assert main(["export", "--model", "test-tiny-vit", "--checkpoint", str(tmp_path / "w.pt"),
                 "--out", str(tmp_path / "o.bundle")]) == 2
    err = capsys.readouterr().err
    last = err.rstrip("\n").split("\n")[-1]  # after the (closed) progress bar
    assert last.startswith("edgeclip: error: checkpoint ") and "w.pt cannot be read: it is not a checkpoint" in last
    assert err.count("edgeclip: error") == 1 and "Traceback" not in err


def test_fp16_storage_halves_size_and_keeps_parity(tiny_names: list[str], tmp_path: Path, tiny_bundle: Path) -> None:
    torch.manual_seed(0)
    result = export_bundle(tmp_path / "half.bundle", "test-tiny-vit", storage="float16")
    assert result.parity.image_min_cos >= 0.9999 and result.parity.text_min_cos >= 0.9999
    import onnx
    from onnx import numpy_helper

    weight_bytes: dict[str, int] = {}
    for init in onnx.load(str(result.path / IMAGE_ONNX)).graph.initializer:
        arr = numpy_helper.to_array(init)
        weight_bytes[str(arr.dtype)] = weight_bytes.get(str(arr.dtype), 0) + arr.nbytes
    assert weight_bytes["float16"] > 20 * weight_bytes.get("float32", 0)  # only tiny vectors stay fp32
    assert (result.path / IMAGE_ONNX).stat().st_size < (tiny_bundle / IMAGE_ONNX).stat().st_size
    m = edgeclip.load(result.path, backend="torch")
    o = edgeclip.load(result.path, backend="onnxruntime")
    x = torch.randn(3, 3, 32, 32)
    assert _cos(m.image_encoder(x), o.image_encoder(x)) >= 0.9999


def test_parity_failure_writes_nothing(tiny_names: list[str], tmp_path: Path, monkeypatch) -> None:
    real = bundle_writer.check_parity

    def broken(*args, **kwargs):
        report = real(*args, **kwargs)
        report.text_min_cos = 0.95
        return report

    monkeypatch.setattr(bundle_writer, "check_parity", broken)
    out = tmp_path / "bad.bundle"
    with pytest.raises(ExportError, match="disagree with PyTorch"):
        export_bundle(out, "test-tiny-vit")
    assert not out.exists()
    assert list(tmp_path.iterdir()) == []  # the temporary folder is gone too


def test_refuses_to_overwrite_and_unknown_names(tiny_names: list[str], tiny_bundle: Path, tmp_path: Path) -> None:
    with pytest.raises(ExportError, match="already exists"):
        export_bundle(tiny_bundle, "test-tiny-vit")
    with pytest.raises(ExportError, match="unknown open_clip model"):
        export_bundle(tmp_path / "x.bundle", "ViT-Q-99")
    with pytest.raises(ExportError, match="does not exist"):
        export_bundle(tmp_path / "y.bundle", "test-tiny-vit", checkpoint=tmp_path / "missing.pt")


def test_overwrite_replaces_atomically(tiny_names: list[str], tmp_path: Path) -> None:
    out = tmp_path / "o.bundle"
    export_bundle(out, "test-tiny-eos")
    second = export_bundle(out, "test-tiny-eos", overwrite=True)
    assert second.path == out and (out / MANIFEST).is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["o.bundle"]


REAL_ARCHS = ["ViT-B-32", "ViT-B-16", "RN50", "MobileCLIP-S1"]


@pytest.mark.slow
@pytest.mark.parametrize("name", REAL_ARCHS)
def test_full_size_architectures(name: str, tmp_path: Path) -> None:
    torch.manual_seed(0)
    result = export_bundle(tmp_path / f"{name}.bundle", name)
    assert result.parity.image_min_cos >= 0.9999
    assert result.parity.text_min_cos >= 0.9999
    assert result.parity.truncation_max_abs <= 1e-5
    m = edgeclip.load(result.path, backend="onnxruntime")
    p = m.classifier(["cat", "dog", "robot arm"]).predict([np.zeros((300, 200, 3), np.uint8)])
    assert p.probs.shape == (1, 3)
