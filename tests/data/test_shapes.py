"""The procedural shapes dataset: determinism, shapes, captions, shifts and errors."""

from __future__ import annotations

import numpy as np
import pytest

from edgeclip.data import shapes
from edgeclip.data.shapes import SHIFTS, ShapesDataset, class_names, make_batch, save_image_folder
from edgeclip.errors import EdgeClipError, InputError


def test_class_names_unique_and_in_range() -> None:
    names = class_names()
    assert 8 <= len(names) <= 16
    assert len(set(names)) == len(names)
    assert names == [f"{c} {s}" for c in shapes.COLOURS for s in shapes.SHAPES]


def test_zero_shot_template_is_a_caption_template() -> None:
    assert "a photo of a {cls}." in shapes.caption_templates
    assert all("{cls}" in t for t in shapes.caption_templates)


def test_batch_shapes_and_dtypes() -> None:
    b = make_batch(12, seed=0, render_size=48)
    assert b.images.shape == (12, 48, 48, 3) and b.images.dtype == np.uint8
    assert b.labels.shape == (12,) and b.labels.dtype == np.int64
    assert len(b.captions) == 12 and len(b) == 12
    assert b.class_names == class_names()
    assert b.labels.min() >= 0 and b.labels.max() < len(b.class_names)
    assert make_batch(5).images.shape == (5, 64, 64, 3)  # default render size
    assert make_batch(0, seed=1).images.shape == (0, 64, 64, 3)


def test_captions_contain_their_class_name() -> None:
    b = make_batch(200, seed=1)
    names = b.class_names
    for caption, label in zip(b.captions, b.labels, strict=True):
        assert names[label] in caption
        # no other class name appears in the caption
        assert sum(n in caption for n in names) == 1
    assert len(set(b.captions)) > 50  # varied captions
    assert any(c.startswith("a photo of a ") for c in b.captions)


def test_deterministic_for_a_seed() -> None:
    a, b = make_batch(16, seed=7), make_batch(16, seed=7)
    np.testing.assert_array_equal(a.images, b.images)
    np.testing.assert_array_equal(a.labels, b.labels)
    assert a.captions == b.captions
    c = make_batch(16, seed=8)
    assert not np.array_equal(a.images, c.images)
    g1, g2 = np.random.default_rng(3), np.random.default_rng(3)
    np.testing.assert_array_equal(make_batch(4, seed=g1).images, make_batch(4, seed=g2).images)


def test_forced_labels() -> None:
    labels = np.arange(16)
    b = make_batch(16, seed=0, labels=labels)
    np.testing.assert_array_equal(b.labels, labels)
    with pytest.raises(InputError):
        make_batch(3, seed=0, labels=[0, 1])
    with pytest.raises(InputError):
        make_batch(1, seed=0, labels=[99])


@pytest.mark.parametrize("shift", [s for s in SHIFTS if s != "clean"])
def test_every_shift_changes_the_image_but_not_the_scene(shift: str) -> None:
    clean = make_batch(8, seed=5)
    shifted = make_batch(8, seed=5, shift=shift)
    assert shifted.images.shape == clean.images.shape and shifted.images.dtype == np.uint8
    assert shifted.shift == shift
    np.testing.assert_array_equal(shifted.labels, clean.labels)
    assert shifted.captions == clean.captions
    diff = np.abs(shifted.images.astype(int) - clean.images.astype(int)).mean(axis=(1, 2, 3))
    assert (diff > 1.0).all(), diff
    again = make_batch(8, seed=5, shift=shift)
    np.testing.assert_array_equal(again.images, shifted.images)


def test_clean_shift_is_identity() -> None:
    images = make_batch(2, seed=0).images
    np.testing.assert_array_equal(SHIFTS["clean"](images), images)


def test_post_process_shift_callable_matches_make_batch() -> None:
    clean = make_batch(4, seed=2).images
    np.testing.assert_array_equal(SHIFTS["invert"](clean), make_batch(4, seed=2, shift="invert").images)
    assert SHIFTS["blur"](clean, np.random.default_rng(0)).shape == clean.shape


@pytest.mark.parametrize("shift", ["sketch", "textured_background"])
def test_render_time_shift_refuses_finished_images(shift: str) -> None:
    assert SHIFTS[shift].render_time
    with pytest.raises(InputError, match="make_batch"):
        SHIFTS[shift](make_batch(1, seed=0).images)


def test_unknown_shift_names_the_valid_ones() -> None:
    with pytest.raises(InputError) as err:
        make_batch(2, seed=0, shift="fog")
    assert "fog" in str(err.value) and "gaussian_noise" in str(err.value) and "sketch" in str(err.value)
    assert isinstance(err.value, EdgeClipError)
    with pytest.raises(InputError):
        ShapesDataset(4, shift="fog")


@pytest.mark.parametrize("kwargs", [{"n": -1}, {"n": 2.5}, {"n": 2, "render_size": 8}, {"n": 2, "seed": -3}])
def test_bad_arguments(kwargs: dict) -> None:
    with pytest.raises(InputError):
        make_batch(**kwargs)


def test_shift_rejects_non_uint8() -> None:
    with pytest.raises(InputError):
        SHIFTS["invert"](np.zeros((1, 8, 8, 3), np.float32))


def test_dataset_indexing_is_deterministic_and_independent_of_length() -> None:
    ds = ShapesDataset(300, seed=4)
    assert len(ds) == 300
    img, label, caption = ds[260]
    assert img.shape == (64, 64, 3) and img.dtype == np.uint8
    assert isinstance(label, int) and ds.class_names[label] in caption
    other = ShapesDataset(1000, seed=4)
    np.testing.assert_array_equal(other[260][0], img)
    np.testing.assert_array_equal(ds[-40][0], img)
    assert not np.array_equal(ShapesDataset(300, seed=5)[260][0], img)
    with pytest.raises(IndexError):
        ds[300]
    items = list(ShapesDataset(3, seed=4))
    assert len(items) == 3
    np.testing.assert_array_equal(items[1][0], ds[1][0])


def test_save_image_folder(tmp_path) -> None:
    from PIL import Image

    root = save_image_folder(tmp_path / "shapes", n_per_class=2, seed=0)
    names = class_names()
    assert (root / "classnames.txt").read_text().splitlines() == names
    for name in names:
        files = sorted((root / name.replace(" ", "_")).glob("*.png"))
        assert len(files) == 2
    img = Image.open(files[0])
    assert img.size == (64, 64) and img.mode == "RGB"
    import json

    lines = [json.loads(x) for x in (root / "captions.jsonl").read_text().splitlines()]
    assert len(lines) == 2 * len(names) and all((root / r["image"]).is_file() for r in lines)
    for r in lines:  # the caption names the image's class (its folder)
        assert r["image"].split("/")[0].replace("_", " ") in r["caption"]


def test_render_speed_is_reasonable() -> None:
    import time

    make_batch(8, seed=0)  # build the distance tables
    start = time.perf_counter()
    make_batch(256, seed=0)
    # ~30 ms on an idle 2-core CPU; the bound is loose because CI machines are shared.
    assert time.perf_counter() - start < 1.0


def test_size_colour_shape_class_set_relabels_the_same_scenes() -> None:
    from edgeclip.data.shapes import CLASS_SETS, SIZES

    names = class_names("size-colour-shape")
    assert CLASS_SETS == ("colour-shape", "size-colour-shape")
    assert len(names) == 32 and names[0] == "small red circle" and names[16] == "large red circle"
    a = make_batch(48, seed=3, shift="blur")
    b = make_batch(48, seed=3, shift="blur", classes="size-colour-shape")
    assert (a.images == b.images).all() and b.class_names == names  # random labels: the same images
    assert (b.labels == a.labels + 16 * a.attributes["size"]).all()
    forced = make_batch(64, seed=1, labels=np.arange(64) % 32, classes="size-colour-shape")
    assert (forced.labels == np.arange(64) % 32).all()
    assert [SIZES[s] for s in forced.attributes["size"][:32:16]] == ["small", "large"]  # the label fixes the size
    with pytest.raises(InputError, match="labels must lie"):
        make_batch(2, seed=0, labels=[0, 32], classes="size-colour-shape")
    with pytest.raises(InputError, match="classes must be one of"):
        class_names("colour")
