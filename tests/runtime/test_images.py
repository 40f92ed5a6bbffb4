"""Tests for edgeclip.runtime.images: loading odd images safely and open_clip-exact preprocessing."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageFile

from edgeclip.errors import ImageError, InputError
from edgeclip.runtime.images import (
    MAX_PIXELS,
    PreprocessConfig,
    iter_image_paths,
    load_image,
    preprocess,
)

# --------------------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------------------


def _noise(width: int, height: int, seed: int = 0, mode: str = "RGB") -> Image.Image:
    rng = np.random.default_rng(seed)
    shape = (height, width, 3) if mode == "RGB" else (height, width)
    return Image.fromarray(rng.integers(0, 256, size=shape, dtype=np.uint8), mode)


def _save(im: Image.Image, path: Path, **kwargs: object) -> Path:
    im.save(path, **kwargs)
    return path


def _px(im: Image.Image, xy: tuple[int, int] = (0, 0)) -> tuple[int, ...]:
    assert im.mode == "RGB"
    return tuple(im.getpixel(xy))


# --------------------------------------------------------------------------------------------------------
# modes → RGB
# --------------------------------------------------------------------------------------------------------


def test_l_and_1_modes() -> None:
    grey = Image.new("L", (3, 2), 77)
    assert _px(load_image(grey)) == (77, 77, 77)
    bits = Image.new("1", (3, 2), 1)
    assert _px(load_image(bits)) == (255, 255, 255)
    assert _px(load_image(Image.new("1", (3, 2), 0))) == (0, 0, 0)


def test_rgba_composited_onto_white_by_default() -> None:
    arr = np.zeros((1, 3, 4), np.uint8)
    arr[0, 0] = (255, 0, 0, 0)  # fully transparent red
    arr[0, 1] = (255, 0, 0, 255)  # opaque red
    arr[0, 2] = (0, 0, 0, 128)  # half-transparent black
    rgba = Image.fromarray(arr, "RGBA")
    out = load_image(rgba)
    assert _px(out, (0, 0)) == (255, 255, 255)
    assert _px(out, (1, 0)) == (255, 0, 0)
    assert all(abs(c - 127) <= 1 for c in _px(out, (2, 0)))
    black = load_image(rgba, background=(0, 0, 0))
    assert _px(black, (0, 0)) == (0, 0, 0)


def test_la_mode() -> None:
    la = Image.fromarray(np.array([[[100, 255], [100, 0]]], np.uint8), "LA")
    out = load_image(la)
    assert _px(out, (0, 0)) == (100, 100, 100)
    assert _px(out, (1, 0)) == (255, 255, 255)


def test_palette_with_transparency(tmp_path: Path) -> None:
    p = Image.new("P", (2, 1), 0)
    p.putpalette([255, 0, 0, 0, 0, 255] + [0] * (256 * 3 - 6))
    p.putpixel((1, 0), 1)
    path = _save(p, tmp_path / "p.png", transparency=0)
    reloaded = Image.open(path)
    assert reloaded.mode == "P" and "transparency" in reloaded.info
    out = load_image(path)
    assert _px(out, (0, 0)) == (255, 255, 255)  # transparent index → background
    assert _px(out, (1, 0)) == (0, 0, 255)
    opaque = Image.new("P", (1, 1), 0)
    opaque.putpalette([10, 20, 30] + [0] * 765)
    assert _px(load_image(opaque)) == (10, 20, 30)


def test_cmyk() -> None:
    assert _px(load_image(Image.new("CMYK", (2, 2), (0, 255, 255, 0)))) == (255, 0, 0)
    assert _px(load_image(Image.new("CMYK", (2, 2), (0, 0, 0, 0)))) == (255, 255, 255)


def test_16bit_grey_is_scaled_not_clipped(tmp_path: Path) -> None:
    arr = np.array([[0, 257 * 128, 65535]], np.uint16)
    im = Image.fromarray(arr)
    assert im.mode == "I;16"
    path = _save(im, tmp_path / "deep.png")
    for src in (im, path):
        out = load_image(src)
        assert [_px(out, (x, 0))[0] for x in range(3)] == [0, 128, 255]
        assert _px(out, (2, 0)) == (255, 255, 255)
    big_endian = Image.frombytes("I;16B", (3, 1), arr.astype(">u2").tobytes())
    assert [_px(load_image(big_endian), (x, 0))[0] for x in range(3)] == [0, 128, 255]
    assert _px(load_image(arr), (2, 0)) == (255, 255, 255)  # uint16 array too


def test_int32_mode_i() -> None:
    im = Image.fromarray(np.array([[0, 65535]], np.int32))
    assert im.mode == "I"
    out = load_image(im)
    assert _px(out, (0, 0)) == (0, 0, 0) and _px(out, (1, 0)) == (255, 255, 255)
    # negative values have no bit-depth scale: refused, naming the depth it was read with and the fix
    with pytest.raises(ImageError, match=r"\[0, 65535\] for 16-bit data.*bit_depth="):
        load_image(Image.fromarray(np.array([[-1000, 1000]], np.int32)))


def test_float_mode_f() -> None:
    unit = load_image(Image.fromarray(np.array([[0.0, 0.5, 1.0]], np.float32)))
    assert [_px(unit, (x, 0))[0] for x in range(3)] == [0, 128, 255]
    byte_scale = load_image(Image.fromarray(np.array([[0.0, 100.0, 200.0]], np.float32)))
    assert [_px(byte_scale, (x, 0))[0] for x in range(3)] == [0, 100, 200]
    with pytest.raises(ImageError, match="NaN"):
        load_image(Image.fromarray(np.array([[0.0, np.nan]], np.float32)))


def test_numpy_inputs() -> None:
    rgb = np.zeros((4, 5, 3), np.uint8)
    rgb[..., 1] = 200
    out = load_image(rgb)
    assert out.size == (5, 4) and _px(out) == (0, 200, 0)
    assert _px(load_image(np.full((4, 5), 9, np.uint8))) == (9, 9, 9)
    assert _px(load_image(np.full((4, 5, 1), 9, np.uint8))) == (9, 9, 9)
    rgba = np.zeros((2, 2, 4), np.uint8)  # fully transparent
    assert _px(load_image(rgba)) == (255, 255, 255)
    assert _px(load_image(np.full((2, 2, 3), 0.5, np.float32))) == (128, 128, 128)
    assert _px(load_image(np.ones((2, 2), bool))) == (255, 255, 255)
    assert _px(load_image(np.full((2, 2), 3, np.int64))) == (3, 3, 3)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_numpy_nan_inf_refused(bad: float) -> None:
    arr = np.zeros((4, 4, 3), np.float32)
    arr[1, 2, 0] = bad
    with pytest.raises(ImageError, match="NaN or Inf"):
        load_image(arr)
    with pytest.raises(ImageError, match="NaN or Inf"):
        preprocess([arr], PreprocessConfig(image_size=8))


def test_numpy_bad_values_and_shapes() -> None:
    with pytest.raises(ImageError, match=r"\[0, 1\]"):
        load_image(np.full((2, 2, 3), 2.0, np.float32))
    with pytest.raises(ImageError, match="channel-first"):
        load_image(np.zeros((3, 8, 8), np.uint8))
    with pytest.raises(ImageError, match="no pixels"):
        load_image(np.zeros((0, 8, 3), np.uint8))
    with pytest.raises(ImageError, match=r"\[0, 255\]"):
        load_image(np.full((2, 2), 300, np.int64))  # int64 (Python ints) is read as 8-bit data
    with pytest.raises(ImageError):
        load_image(np.zeros((2, 2, 2, 2), np.uint8))


def test_zero_size_pil_image() -> None:
    with pytest.raises(ImageError, match="no pixels"):
        load_image(Image.new("RGB", (0, 5)))


def test_unsupported_type() -> None:
    with pytest.raises(ImageError, match="int"):
        load_image(42)  # type: ignore[arg-type]


def test_bytes_and_stream(tmp_path: Path) -> None:
    buf = io.BytesIO()
    Image.new("RGB", (6, 4), (1, 2, 3)).save(buf, "PNG")
    assert _px(load_image(buf.getvalue())) == (1, 2, 3)
    buf.seek(0)
    assert _px(load_image(buf)) == (1, 2, 3)
    with pytest.raises(ImageError, match="0 bytes"):
        load_image(b"")


# --------------------------------------------------------------------------------------------------------
# EXIF
# --------------------------------------------------------------------------------------------------------


def test_exif_orientation_honoured(tmp_path: Path) -> None:
    im = Image.new("RGB", (40, 20), (255, 0, 0))
    im.paste((0, 0, 255), (20, 0, 40, 20))  # left half red, right half blue
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90° clockwise to display
    path = _save(im, tmp_path / "rotated.jpg", exif=exif.tobytes(), quality=95)
    out = load_image(path)
    assert out.size == (20, 40)
    top, bottom = _px(out, (10, 5)), _px(out, (10, 35))
    assert top[0] > 200 and top[2] < 60  # the left (red) half is now on top
    assert bottom[2] > 200 and bottom[0] < 60
    raw = load_image(path, apply_exif=False)
    assert raw.size == (40, 20)


# --------------------------------------------------------------------------------------------------------
# decompression bombs
# --------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def bomb_png(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 10000×10000 (100 MP) 1-bit PNG: a few tens of kB on disk."""
    path = tmp_path_factory.mktemp("bomb") / "bomb.png"
    Image.new("1", (10_000, 10_000), 1).save(path)
    return path


def test_bomb_refused_by_default(bomb_png: Path) -> None:
    assert MAX_PIXELS < 10_000 * 10_000
    with pytest.raises(ImageError) as info:
        load_image(bomb_png)
    msg = str(info.value)
    assert str(bomb_png) in msg and f"{MAX_PIXELS:,}" in msg and "max_pixels" in msg
    with pytest.raises(ImageError, match="decompression bomb"):
        preprocess([bomb_png], PreprocessConfig(image_size=8))


def test_bomb_accepted_when_limit_raised(bomb_png: Path) -> None:
    limit_before = Image.MAX_IMAGE_PIXELS
    out = load_image(bomb_png, max_pixels=100_000_000)
    assert out.size == (10_000, 10_000) and _px(out, (5000, 5000)) == (255, 255, 255)
    assert limit_before == Image.MAX_IMAGE_PIXELS  # PIL's global is left as it was


def test_small_limit_and_pil_limit_not_leaked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = _save(Image.new("RGB", (100, 100), (5, 5, 5)), tmp_path / "hundred.png")
    with pytest.raises(ImageError, match="1,000") as info:
        load_image(path, max_pixels=1000)
    # PIL itself refused it (above twice its limit): the message quotes this call's one limit, not PIL's
    assert "2,000" not in str(info.value) and "2000" not in str(info.value) and "10,000 pixels" in str(info.value)
    assert str(info.value).count("limit of") == 1 and "max_pixels=" in str(info.value)
    with pytest.raises(ImageError, match="1,000"):
        load_image(Image.open(path), max_pixels=1000)
    # PIL's own limit far below the image (it would raise DecompressionBombError): the caller's limit wins
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    assert load_image(path, max_pixels=20_000).size == (100, 100)
    assert load_image(path, max_pixels=None).size == (100, 100)
    assert Image.MAX_IMAGE_PIXELS == 1000


# --------------------------------------------------------------------------------------------------------
# bad files
# --------------------------------------------------------------------------------------------------------


def _truncated(tmp_path: Path, fmt: str) -> Path:
    path = tmp_path / f"cut.{fmt.lower()}"
    _noise(64, 64).save(path, fmt)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def test_bad_files_raise_image_error_naming_the_path(tmp_path: Path) -> None:
    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    text = tmp_path / "notes.jpg"
    text.write_text("this is not a JPEG\n")
    folder = tmp_path / "folder.png"
    folder.mkdir()
    cases = {
        empty: "empty",
        _truncated(tmp_path, "JPEG"): "truncated",
        _truncated(tmp_path, "PNG"): "truncated",
        text: "not an image",
        tmp_path / "missing.png": "no such file",
        folder: "directory",
    }
    for path, what in cases.items():
        with pytest.raises(ImageError) as info:
            load_image(path)
        assert str(path) in str(info.value), info.value
        assert what in str(info.value), info.value
        with pytest.raises(ImageError):
            load_image(str(path))


def test_truncated_refused_even_if_pil_told_to_allow(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)
    path = _truncated(tmp_path, "JPEG")
    with pytest.raises(ImageError, match="truncated"):
        load_image(path)
    with pytest.raises(ImageError, match="truncated"):
        load_image(path.read_bytes())
    assert ImageFile.LOAD_TRUNCATED_IMAGES is True


def test_valid_file_loads(tmp_path: Path) -> None:
    path = _save(Image.new("RGB", (7, 3), (9, 8, 7)), tmp_path / "ok.png")
    out = load_image(path)
    assert out.mode == "RGB" and out.size == (7, 3) and _px(out) == (9, 8, 7)


# --------------------------------------------------------------------------------------------------------
# folder expansion
# --------------------------------------------------------------------------------------------------------


def test_iter_image_paths(tmp_path: Path) -> None:
    root = tmp_path / "data"
    (root / "b" / "deep").mkdir(parents=True)
    (root / ".cache").mkdir()
    for rel in ("b/deep/x.png", "b/a.JPG", "a.jpeg", "z.webp", ".cache/h.png", ".hidden.png"):
        (root / rel).write_bytes(b"x")
    (root / "notes.txt").write_text("x")
    single = tmp_path / "frame.dat"
    single.write_bytes(b"x")
    got = iter_image_paths([single, str(root)])
    expected = [root / "a.jpeg", root / "b" / "a.JPG", root / "b" / "deep" / "x.png", root / "z.webp"]
    assert got == [single, *expected]
    assert iter_image_paths(root) == got[1:]
    empty = tmp_path / "empty"
    empty.mkdir()
    assert iter_image_paths([empty]) == []
    with pytest.raises(ImageError) as info:
        iter_image_paths([root, tmp_path / "nope"])
    assert str(tmp_path / "nope") in str(info.value)


# --------------------------------------------------------------------------------------------------------
# config
# --------------------------------------------------------------------------------------------------------


def test_config_roundtrip_and_validation() -> None:
    cfg = PreprocessConfig(image_size=64, mean=(0.5, 0.4, 0.3), std=(0.2, 0.2, 0.2), resize_mode="longest")
    data = json.loads(json.dumps(cfg.to_dict()))
    assert data["image_size"] == 64 and data["resize_mode"] == "longest"
    assert PreprocessConfig.from_dict(data) == cfg
    assert PreprocessConfig.from_dict({"image_size": 32, "future_key": 1}).image_size == 32
    with pytest.raises(ValueError, match="image_size"):
        PreprocessConfig.from_dict({"mean": [0.5, 0.5, 0.5]})
    for bad in (
        {"image_size": 0},
        {"image_size": 32, "resize_mode": "crop"},
        {"image_size": 32, "interpolation": "lanczos"},
        {"image_size": 32, "std": (0.0, 1.0, 1.0)},
        {"image_size": 32, "mean": (0.5, 0.5)},
    ):
        with pytest.raises(ValueError):
            PreprocessConfig(**bad)


def test_from_open_clip_reads_factory_config(tmp_path: Path) -> None:
    open_clip = pytest.importorskip("open_clip")
    model_dir = tmp_path / "tiny"
    model_dir.mkdir()
    config = {
        "model_cfg": {
            "embed_dim": 16,
            "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 16, "head_width": 16},
            "text_cfg": {"context_length": 8, "vocab_size": 64, "width": 16, "heads": 1, "layers": 1},
        },
        "preprocess_cfg": {
            "mean": [0.5, 0.5, 0.5],
            "std": [0.25, 0.25, 0.25],
            "resize_mode": "squash",
            "interpolation": "bilinear",
        },
    }
    (model_dir / "open_clip_config.json").write_text(json.dumps(config))
    model = open_clip.create_model(f"local-dir:{model_dir}")
    cfg = PreprocessConfig.from_open_clip(model)
    expected = PreprocessConfig(32, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25), "squash", "bilinear")
    assert cfg == expected


def test_from_open_clip_fallbacks() -> None:
    class Visual:
        image_size = (48, 48)

    class Model:
        visual = Visual()

    cfg = PreprocessConfig.from_open_clip(Model())
    assert cfg.image_size == 48 and cfg.resize_mode == "shortest" and cfg.interpolation == "bicubic"
    Visual.image_size = (48, 64)
    with pytest.raises(ValueError, match="non-square"):
        PreprocessConfig.from_open_clip(Model())


# --------------------------------------------------------------------------------------------------------
# preprocess: parity with open_clip and tensor inputs
# --------------------------------------------------------------------------------------------------------

MEAN = (0.48145466, 0.4578275, 0.40821073)
STD = (0.26862954, 0.26130258, 0.27577711)


@pytest.mark.parametrize("resize_mode", ["shortest", "longest", "squash"])
@pytest.mark.parametrize("interpolation", ["bicubic", "bilinear"])
def test_parity_with_open_clip(resize_mode: str, interpolation: str) -> None:
    open_clip = pytest.importorskip("open_clip")
    size = 64
    cfg = PreprocessConfig(size, MEAN, STD, resize_mode=resize_mode, interpolation=interpolation)
    reference = open_clip.image_transform(
        size, is_train=False, mean=MEAN, std=STD, resize_mode=resize_mode, interpolation=interpolation
    )
    images = [
        _noise(640, 480, 1),
        _noise(97, 203, 2),  # odd sizes, portrait
        _noise(20, 30, 3),  # upscaling
        _noise(64, 64, 4),  # already the target size
        _noise(300, 65, 5),  # very wide
        _noise(81, 81, 6, mode="L"),  # grey
    ]
    ours = preprocess(images, cfg)
    assert ours.shape == (len(images), 3, size, size) and ours.dtype == torch.float32
    theirs = torch.stack([reference(im) for im in images])
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-5)
    # numpy uint8 input gives the same as the PIL image
    arr = np.asarray(images[0])
    torch.testing.assert_close(preprocess(arr, cfg)[0], theirs[0], rtol=0, atol=1e-5)


def test_parity_other_sizes_and_stats() -> None:
    open_clip = pytest.importorskip("open_clip")
    for size, mean, std in [(224, MEAN, STD), (33, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))]:
        cfg = PreprocessConfig(size, mean, std)
        reference = open_clip.image_transform(size, is_train=False, mean=mean, std=std)
        im = _noise(333, 250, size)
        torch.testing.assert_close(preprocess(im, cfg)[0], reference(im), rtol=0, atol=1e-5)


def test_preprocess_paths(tmp_path: Path) -> None:
    cfg = PreprocessConfig(16)
    paths = [_save(_noise(40, 30, i), tmp_path / f"{i}.png") for i in range(3)]
    batch = preprocess(paths, cfg)
    assert batch.shape == (3, 3, 16, 16)
    single = preprocess(paths[1], cfg)
    torch.testing.assert_close(single[0], batch[1], rtol=0, atol=0)


def test_tensor_passthrough() -> None:
    cfg = PreprocessConfig(8)
    x = torch.randn(2, 3, 8, 8)
    assert preprocess(x, cfg) is x
    one = torch.randn(3, 8, 8)
    assert preprocess(one, cfg).shape == (1, 3, 8, 8)
    assert torch.equal(preprocess(one, cfg)[0], one)
    stacked = preprocess([one, one], cfg)
    assert stacked.shape == (2, 3, 8, 8)
    mixed = preprocess([one, np.zeros((10, 10, 3), np.uint8)], cfg)
    assert torch.equal(mixed[0], one) and mixed.shape == (2, 3, 8, 8)


def test_tensor_wrong_shape_and_values() -> None:
    cfg = PreprocessConfig(8)
    with pytest.raises(InputError) as info:
        preprocess(torch.zeros(2, 3, 16, 16), cfg)
    assert "[B, 3, 8, 8]" in str(info.value) and "[2, 3, 16, 16]" in str(info.value)
    with pytest.raises(InputError):
        preprocess(torch.zeros(8, 8, 3), cfg)
    with pytest.raises(InputError, match="float"):
        preprocess(torch.zeros(1, 3, 8, 8, dtype=torch.uint8), cfg)
    with pytest.raises(InputError):
        preprocess([torch.zeros(1, 3, 8, 8)], cfg)
    nan = torch.zeros(1, 3, 8, 8)
    nan[0, 0, 0, 0] = float("nan")
    with pytest.raises(ImageError, match="NaN"):
        preprocess(nan, cfg)
    with pytest.raises(InputError, match="no images"):
        preprocess([], cfg)
