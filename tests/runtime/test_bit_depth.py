"""Integer pixels are scaled by one explicit bit-depth rule, for arrays and PIL images alike."""

from __future__ import annotations

import io
import logging

import numpy as np
import pytest
from PIL import Image

from edgeclip.errors import ImageError, InputError
from edgeclip.runtime.images import PreprocessConfig, default_bit_depth, load_image, preprocess


def _grey(im: Image.Image) -> list[int]:
    return [im.getpixel((x, 0))[0] for x in range(im.size[0])]


def _depth_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if "looks like" in r.getMessage()]


def test_defaults_by_dtype() -> None:
    assert default_bit_depth(np.uint8) == 8
    assert default_bit_depth(np.uint16) == 16 and default_bit_depth(">u2") == 16
    assert default_bit_depth(np.int32) == 16
    assert default_bit_depth(np.int64) == 8 and default_bit_depth(np.int16) == 8


def test_int32_array_and_mode_i_image_read_alike() -> None:
    pixels = np.array([[0, 257 * 100, 65535]], np.int32)
    im = Image.fromarray(pixels)
    assert im.mode == "I"
    assert _grey(load_image(pixels)) == _grey(load_image(im)) == [0, 100, 255]
    # and with an explicit depth, both follow it
    low = np.array([[0, 100, 255]], np.int32)
    assert _grey(load_image(low, bit_depth=8)) == _grey(load_image(Image.fromarray(low), bit_depth=8)) == [0, 100, 255]


def test_16bit_pgm_file_decodes_as_mode_i_and_keeps_its_scale() -> None:
    buf = io.BytesIO()
    Image.fromarray(np.array([[0, 257 * 64, 65535]], np.uint16)).save(buf, "PPM")
    im = Image.open(io.BytesIO(buf.getvalue()))
    assert im.mode == "I"  # what Pillow makes of a 16-bit PGM
    assert _grey(load_image(buf.getvalue())) == [0, 64, 255]


def test_mono12_uint16_warns_and_bit_depth_12_restores_it(caplog: pytest.LogCaptureFixture) -> None:
    mono12 = np.array([[0, 2048, 4095]], np.uint16)
    with caplog.at_level(logging.WARNING, logger="edgeclip"):
        dark = load_image(mono12)
    assert _grey(dark) == [0, 8, 16]  # read as 16-bit: near black
    (msg,) = _depth_warnings(caplog)
    assert "12-bit" in msg and "bit_depth=12" in msg and "4095" in msg
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="edgeclip"):
        right = load_image(mono12, bit_depth=12)
        kept = load_image(mono12, bit_depth=16)  # an explicit depth is trusted: no warning
    assert _grey(right) == [0, 128, 255] and _grey(kept) == [0, 8, 16]
    assert _depth_warnings(caplog) == []


def test_warning_once_per_preprocess_call(caplog: pytest.LogCaptureFixture) -> None:
    frames = [np.full((8, 8), 1000 + i, np.uint16) for i in range(5)]
    cfg = PreprocessConfig(image_size=8)
    with caplog.at_level(logging.WARNING, logger="edgeclip"):
        dark = preprocess(frames, cfg)
    (msg,) = _depth_warnings(caplog)
    assert "and 4 more images" in msg and "10-bit" in msg and "bit_depth=10" in msg
    bright = preprocess(frames, cfg, bit_depth=10)
    assert float(bright.mean()) > float(dark.mean()) + 1.0


def test_values_above_the_depth_and_bad_depths_are_refused() -> None:
    with pytest.raises(ImageError, match=r"\[0, 4095\] for 12-bit data \(bit_depth\)"):
        load_image(np.array([[0, 5000]], np.uint16), bit_depth=12)
    with pytest.raises(ImageError, match="bit_depth="):
        load_image(np.array([[0, 70000]], np.int32))
    for bad in (0, 7, 33, 12.0, True):
        with pytest.raises(InputError, match="bit_depth"):
            load_image(np.zeros((2, 2), np.uint16), bit_depth=bad)
    with pytest.raises(ValueError):  # InputError is a ValueError
        preprocess([np.zeros((2, 2), np.uint16)], PreprocessConfig(image_size=4), bit_depth=40)


def test_uint8_is_always_8_bit() -> None:
    assert _grey(load_image(np.array([[0, 100, 255]], np.uint8), bit_depth=12)) == [0, 100, 255]
