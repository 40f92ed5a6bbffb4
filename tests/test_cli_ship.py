"""`edgeclip train ship` and the head it writes, used by `edgeclip classify --head`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from edgeclip.cli import main
from edgeclip.data import shapes

NAMES = shapes.class_names()
NEW = [n for n in NAMES if n.split()[1] in ("triangle", "cross")]
FAST = ["--set", "vae_epochs=2", "--set", "prompt_every=1", "--set", "epochs=2", "--set", "batch_size=32",
        "--set", "lr=0.02", "--extra-views", "1", "--no-cache"]


@pytest.fixture(scope="module")
def new_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("names") / "new.txt"
    path.write_text("\n".join(NEW) + "\n", encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def head(tmp_path_factory: pytest.TempPathFactory, new_file: Path) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("heads") / "ship.head.safetensors"
    import contextlib
    import io

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        assert main(["train", "ship", "--labeled", "shapes:40", "--new-classes", str(new_file), "--out", str(out),
                     *FAST, "--json"]) == 0
    return out, json.loads(buf.getvalue())


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("frames")
    for i, im in enumerate(shapes.make_batch(3, seed=11).images):
        Image.fromarray(im).save(folder / f"{i}.png")
    return folder


def test_train_writes_a_head_over_base_then_new(head: tuple[Path, dict]) -> None:
    path, report = head
    assert path.is_file() and report["method"] == "ship"
    assert report["new_classes"] == NEW and report["base_classes"] == [n for n in NAMES if n not in NEW]
    assert report["classes"] == report["base_classes"] + NEW
    assert report["report"]["n_train"] == 32 and report["report"]["n_val"] == 8  # 20 % of 40 held out
    assert report["report"]["extra"]["selected_on"] == "validation"
    assert len(report["report"]["extra"]["prompt_runs"]) == 2


def test_classify_with_the_head(head: tuple[Path, dict], images: Path, capsys: pytest.CaptureFixture[str]) -> None:
    capsys.readouterr()
    assert main(["classify", "--head", str(head[0]), str(images), "--json"]) == 0
    records = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(records) == 3 and all(r["label"] in NAMES for r in records)


def test_text_summary_and_inline_new_classes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "s.head.safetensors"
    assert main(["train", "ship", "--labeled", "shapes:8", "--base-classes", "red circle,blue square",
                 "--new-classes", "green cross,black triangle", "--out", str(out), *FAST]) == 0
    text = capsys.readouterr().out
    assert f"wrote {out}" in text and "2 base + 2 new classes" in text and "(kept)" in text


def test_head_of_another_bundle_is_refused(head: tuple[Path, dict], images: Path, tiny_bundle: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    capsys.readouterr()
    assert main(["classify", "--bundle", str(tiny_bundle), "--head", str(head[0]), str(images)]) == 2
    assert "another model" in capsys.readouterr().err


def test_bad_input(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = str(tmp_path / "x.head.safetensors")
    # a new-class file that repeats a base class
    repeat = tmp_path / "repeat.txt"
    repeat.write_text("red circle\ngreen cross\n", encoding="utf-8")
    folder = tmp_path / "labeled"
    for name in ("red_circle", "blue_square"):
        (folder / name).mkdir(parents=True)
        for i, im in enumerate(shapes.make_batch(2, seed=3).images):
            Image.fromarray(im).save(folder / name / f"{i}.png")
    assert main(["train", "ship", "--labeled", str(folder), "--new-classes", str(repeat), "--out", out, *FAST]) == 2
    err = capsys.readouterr().err
    assert "repeats base classes" in err and "red circle" in err
    assert main(["train", "ship", "--labeled", "shapes:8", "--base-classes", "red circle,green cross",
                 "--new-classes", str(repeat), "--out", out, *FAST]) == 2
    assert "repeats base classes" in capsys.readouterr().err
    # labels naming classes not in the list (a shapes spec of an unknown class)
    assert main(["train", "ship", "--labeled", "shapes:8", "--base-classes", "purple hexagon",
                 "--new-classes", "green cross", "--out", out, *FAST]) == 2
    assert "purple hexagon" in capsys.readouterr().err
    # an empty labelled source
    empty = tmp_path / "empty"
    (empty / "red_circle").mkdir(parents=True)
    assert main(["train", "ship", "--labeled", str(empty), "--new-classes", "green cross", "--out", out,
                 *FAST]) == 2
    assert "no images" in capsys.readouterr().err
    assert not Path(out).exists()
