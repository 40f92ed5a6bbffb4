"""Zero-shot classification and its bad inputs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import edgeclip
from edgeclip.errors import ClassNameError, ImageError, InputError


@pytest.fixture(scope="module", params=["torch", "onnxruntime"])
def model(request, tiny_bundle: Path):
    return edgeclip.load(tiny_bundle, backend=request.param)


def test_predict_shapes_and_backends_agree(tiny_bundle: Path, tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    paths = []
    for i in range(3):
        p = tmp_path / f"{i}.png"
        Image.fromarray(rng.integers(0, 255, (40 + i, 50, 3), dtype=np.uint8)).save(p)
        paths.append(p)
    preds = [edgeclip.load(tiny_bundle, backend=b).classifier(["cat", "dog", "robot arm"]).predict(paths)
             for b in ("torch", "onnxruntime")]
    for p in preds:
        assert p.probs.shape == (3, 3)
        assert torch.allclose(p.probs.sum(1), torch.ones(3), atol=1e-5)
        assert set(p.timings) == {"preprocess", "image_encoder", "head"}
    assert torch.allclose(preds[0].probs, preds[1].probs, atol=1e-4)
    assert preds[0].names == preds[1].names
    assert len(preds[0].to_records()) == 3


@pytest.mark.parametrize(
    ("names", "match"),
    [([], "empty"), (["cat", "Cat"], "duplicate"), (["cat", "  "], "empty"), ("cat,dog", "single string")],
)
def test_bad_class_lists(model, names, match: str) -> None:
    with pytest.raises(ClassNameError, match=match):
        model.classifier(names)


def test_bad_images(model, tmp_path: Path) -> None:
    clf = model.classifier(["cat", "dog"])
    empty = tmp_path / "zero.jpg"
    empty.write_bytes(b"")
    with pytest.raises(ImageError, match=r"zero\.jpg"):
        clf.predict([empty])
    good = tmp_path / "good.png"
    Image.fromarray(np.full((64, 64, 3), 128, np.uint8)).save(good)
    cut = tmp_path / "cut.png"
    cut.write_bytes(good.read_bytes()[:60])
    with pytest.raises(ImageError, match=r"cut\.png"):
        clf.predict([cut])
    text = tmp_path / "notes.jpg"
    text.write_text("not an image")
    with pytest.raises(ImageError, match=r"notes\.jpg"):
        clf.predict([text])


def test_wrong_shape_and_nan_pixels(model) -> None:
    with pytest.raises(InputError, match=r"\[B, 3, 32, 32\]"):
        model.image_encoder(torch.zeros(1, 3, 64, 64))
    with pytest.raises(InputError, match=r"\[B, 3, 32, 32\]"):
        model.image_encoder(torch.zeros(3, 32, 32))
    bad = torch.zeros(2, 3, 32, 32)
    bad[1, 0, 0, 0] = float("nan")
    with pytest.raises(InputError, match="NaN"):
        model.image_encoder(bad)
    with pytest.raises((InputError, ImageError), match="NaN"):
        model.classifier(["a", "b"]).predict(bad)
    arr = np.zeros((8, 8, 3), np.float32)
    arr[0, 0, 0] = np.nan
    with pytest.raises(ImageError, match="NaN"):
        model.classifier(["a", "b"]).predict([arr])


def test_wrong_text_input_shape(model) -> None:
    with pytest.raises(InputError, match="token_embeds"):
        model.text_encoder(torch.zeros(2, 5, 7), torch.tensor([1, 2]))
    with pytest.raises(InputError, match="eot_index"):
        model.text_encoder(torch.zeros(2, 5, 32), torch.tensor([1, 2, 3]))
