"""`edgeclip train-micro`'s packaging: the manifest names the 16 classes, says what the model is, stays sealed."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import open_clip
import torch

from edgeclip.data import shapes
from edgeclip.micro import MICRO_MODEL_NAME, register_micro_config
from edgeclip.micro import build as build_mod
from edgeclip.micro.train import TrainResult
from edgeclip.runtime.bundle import MANIFEST, open_bundle


def test_write_manifest_extra_keeps_the_manifest_sealed(tiny_bundle: Path, tmp_path: Path) -> None:
    copy = tmp_path / "b"
    shutil.copytree(tiny_bundle, copy)
    before = json.loads((copy / MANIFEST).read_text())["manifest_sha256"]
    build_mod.write_manifest_extra(copy, {"note": {"seen": 1}})
    b = open_bundle(copy)  # verifies the manifest's hash
    assert b.spec.extra["note"] == {"seen": 1} and b.spec.manifest_sha256 != before
    assert not [p for p in copy.iterdir() if p.name.startswith(".")]  # the temporary file is gone


def test_build_micro_bundle_records_classes_and_description(tmp_path: Path, monkeypatch) -> None:
    register_micro_config()
    torch.manual_seed(0)
    ckpt = tmp_path / "micro.pt"
    torch.save(open_clip.create_model(MICRO_MODEL_NAME).state_dict(), ckpt)
    monkeypatch.setattr(build_mod, "train_micro", lambda work, **kw: TrainResult(
        checkpoint=ckpt, steps=1, final_loss=1.0, seconds=1.0, clean_accuracy=0.1))
    monkeypatch.setattr(build_mod, "evaluate_bundle", lambda out, **kw: {"clean": 0.5})
    out = tmp_path / "micro.bundle"
    result = build_mod.build_micro_bundle(out, tmp_path / "work")
    b = open_bundle(out)
    assert b.spec.classes == tuple(shapes.class_names()) and b.spec.description == build_mod.MICRO_DESCRIPTION
    assert b.spec.extra["zero_shot_accuracy"]["clean"] == 0.5 and result["shift_accuracy"] == {"clean": 0.5}
    assert b.spec.precision.storage == "float16"
