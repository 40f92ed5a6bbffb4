"""`edgeclip classify` streams one result per file and goes on past bad files; bad arguments exit 2."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from edgeclip.classify import FileResult, classify_files
from edgeclip.cli import main, stream_results
from edgeclip.errors import ClassNameError, ImageError, InputError
from edgeclip.runtime.classnames import parse_class_spec, read_class_file
from edgeclip.runtime.prediction import Prediction


def _folder(root: Path, n: int = 3, bad: dict[str, bytes] | None = None) -> Path:
    root.mkdir()
    rng = np.random.default_rng(0)
    for i in range(n):
        Image.fromarray(rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)).save(root / f"img{i}.png")
    for name, data in (bad or {}).items():
        (root / name).write_bytes(data)
    return root


def _classify(bundle: Path, *args: str) -> list[str]:
    return ["classify", "--bundle", str(bundle), "--classes", "cat,dog", *args]


# -- going on past bad files --------------------------------------------------------------------------------
def test_bad_file_is_reported_and_the_others_classified(tiny_bundle: Path, tmp_path: Path, capsys) -> None:
    folder = _folder(tmp_path / "imgs", bad={"broken.png": b"\x89PNG\r\n\x1a\n not really", "empty.jpg": b""})
    rc = main(_classify(tiny_bundle, str(folder), "--json", "--batch-size", "2"))
    captured = capsys.readouterr()
    records = [json.loads(line) for line in captured.out.splitlines()]
    assert [Path(r["image"]).name for r in records] == ["broken.png", "empty.jpg", "img0.png", "img1.png", "img2.png"]
    assert records[0]["error"].startswith("not an image file") and "broken.png" not in records[0]["error"]
    assert records[1] == {"image": str(folder / "empty.jpg"), "error": "file is empty (0 bytes)"}
    assert all(r["label"] in ("cat", "dog") for r in records[2:])
    assert rc == 1 and "2 of 5 images could not be classified" in captured.err


def test_strict_stops_at_the_first_bad_file(tiny_bundle: Path, tmp_path: Path, capsys) -> None:
    folder = _folder(tmp_path / "imgs", bad={"img1.png": b"junk"})  # replaces the second image
    rc = main(_classify(tiny_bundle, str(folder), "--strict"))
    captured = capsys.readouterr()
    lines = captured.out.splitlines()
    assert len(lines) == 2 and lines[0].startswith(f"{folder / 'img0.png'}: ") and "(" in lines[0]
    assert lines[1].startswith(f"{folder / 'img1.png'}: error: ")
    assert rc == 1 and "stopped at" in captured.err and "--strict" in captured.err


def test_too_large_image_names_the_cli_option(tiny_bundle: Path, tmp_path: Path, capsys) -> None:
    folder = _folder(tmp_path / "imgs", n=1)
    assert main(_classify(tiny_bundle, str(folder), "--json", "--max-pixels", "100")) == 1
    (record,) = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert "over the limit of 100 pixels" in record["error"] and "--max-pixels 1920" in record["error"]
    assert "max_pixels=" not in record["error"]
    assert main(_classify(tiny_bundle, str(folder), "--json", "--max-pixels", "none")) == 0


def test_results_are_printed_as_they_come(capsys) -> None:
    def results():
        yield FileResult("a.png", {"label": "cat", "confidence": 0.9, "top": [{"label": "cat", "prob": 0.9}]})
        assert "a.png: cat (90.0%)" in capsys.readouterr().out  # printed before the next batch is computed
        yield FileResult("b.png", exception=ImageError("b.png: truncated or corrupt image"))

    args = argparse.Namespace(json=False, strict=False)
    assert stream_results(args, results()) == 1
    assert capsys.readouterr().out == "b.png: error: truncated or corrupt image\n"


def test_classify_files_is_lazy_and_isolates_a_failing_image(tmp_path: Path) -> None:
    folder = _folder(tmp_path / "imgs", n=4)
    paths = sorted(folder.iterdir())
    calls: list[int] = []

    def predict(images):
        calls.append(len(images))
        if any(im.getpixel((0, 0)) == (0, 0, 0) for im in images):
            raise InputError("black corner")
        return Prediction(torch.zeros(len(images), dtype=torch.long), torch.ones(len(images), 1), ["x"])

    Image.new("RGB", (8, 8)).save(paths[1])  # all black: the predictor refuses it
    results = classify_files(paths, predict, batch_size=2)
    first = next(results)
    assert calls == [2, 1, 1]  # only the first batch so far: its failure retried one image at a time
    assert first.ok and first.record["label"] == "x"
    rest = list(results)
    assert [r.ok for r in rest] == [False, True, True] and rest[0].error == "black corner"
    assert calls == [2, 1, 1, 2]
    with pytest.raises(InputError, match="batch_size"):
        next(classify_files(paths, predict, batch_size=0))


# -- class files ----------------------------------------------------------------------------------------------
def test_class_file_one_name_per_line(tmp_path: Path) -> None:
    f = tmp_path / "classes.txt"
    f.write_bytes("\ufeffcat, tabby\r\n\n  robot   arm \ncafé\n".encode())
    assert read_class_file(f) == ["cat, tabby", "robot arm", "café"]
    assert parse_class_spec(f"@{f}") == ["cat, tabby", "robot arm", "café"]
    assert parse_class_spec("cat, dog") == ["cat", "dog"]


def test_class_file_errors(tmp_path: Path) -> None:
    latin = tmp_path / "latin.txt"
    latin.write_bytes("dog\ncaf\xe9\n".encode("latin-1"))
    with pytest.raises(ClassNameError, match=r"latin\.txt is not UTF-8 text: byte 0xe9 at offset 7.*UTF-8"):
        read_class_file(latin)
    with pytest.raises(ClassNameError, match="does not exist"):
        read_class_file(tmp_path / "nope.txt")
    (tmp_path / "blank.txt").write_text("\n  \n")
    with pytest.raises(ClassNameError, match="holds no class names"):
        read_class_file(tmp_path / "blank.txt")


def test_class_file_through_both_verbs(tiny_bundle: Path, tmp_path: Path, capsys) -> None:
    folder = _folder(tmp_path / "imgs", n=1)
    f = tmp_path / "classes.txt"
    f.write_bytes(b"\xef\xbb\xbfcat, tabby\ndog\n")
    argv = ["classify", "--bundle", str(tiny_bundle), "--classes", f"@{f}", str(folder), "--json", "--top-k", "2"]
    assert main(argv) == 0
    (record,) = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert {t["label"] for t in record["top"]} == {"cat, tabby", "dog"}
    f.write_bytes(b"caf\xe9\n")
    assert main(argv) == 2
    assert "is not UTF-8 text: byte 0xe9 at offset 3" in capsys.readouterr().err
    out = tmp_path / "p.safetensors"
    assert main(["prototypes", "build", "--bundle", str(tiny_bundle), "--data", "shapes:32", "--classes", f"@{f}",
                 "--out", str(out)]) == 2
    assert "is not UTF-8 text" in capsys.readouterr().err and not out.exists()


# -- bad values -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("argv", "message"), [
    (["classify", "--classes", "a,b", "--top-k", "0", "x.png"], "--top-k: expected a positive integer, got 0"),
    (["classify", "--classes", "a,b", "--batch-size", "0", "x.png"], "--batch-size: expected a positive integer"),
    (["classify", "--classes", "a,b", "--threads", "-1", "x.png"], "--threads: expected a positive integer"),
    (["classify", "--classes", "a,b", "--template", "a {} in {place}", "x.png"], "has the field {place}"),
    (["classify", "--classes", "a,b", "--template", "a photo", "x.png"], "needs exactly one {}"),
    (["classify", "--classes", "a,b", "--bit-depth", "4", "x.png"], "a bit depth from 8 to 32"),
    (["classify", "--classes", "a,b", "--max-pixels", "lots", "x.png"], "positive number of pixels or 'none'"),
    (["demo", "--n", "0"], "--n: expected a positive integer, got 0"),
    (["demo", "--tta-n", "-1"], "--tta-n: expected an integer >= 0"),
    (["prototypes", "build", "--data", "shapes", "--batch-size", "0"], "--batch-size: expected a positive integer"),
    (["train-micro", "--steps", "0"], "--steps: expected a positive integer"),
])
def test_bad_values_end_in_one_error_line(argv: list[str], message: str, capsys) -> None:
    with pytest.raises(SystemExit) as info:
        main(argv)
    err = capsys.readouterr().err
    assert info.value.code == 2 and "Traceback" not in err
    assert message in err.strip().splitlines()[-1]


def test_library_errors_are_one_line_and_exit_2(tmp_path: Path, capsys) -> None:
    assert main(["info", str(tmp_path / "missing.bundle")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("edgeclip: error: bundle ") and "does not exist" in err


def test_version(capsys) -> None:
    import edgeclip

    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0 and capsys.readouterr().out.strip() == f"edgeclip {edgeclip.__version__}"


def test_device_and_backend_the_machine_lacks_are_one_line_errors(tiny_bundle: Path, tmp_path: Path,
                                                                  capsys) -> None:
    import importlib.util

    folder = _folder(tmp_path / "imgs", n=1)
    if not torch.cuda.is_available():
        assert main(_classify(tiny_bundle, str(folder), "--device", "cuda", "--backend", "torch")) == 2
        assert "CUDA is not available" in capsys.readouterr().err
    if importlib.util.find_spec("tensorrt") is None:
        assert main(_classify(tiny_bundle, str(folder), "--backend", "tensorrt")) == 2
        assert "TensorRT is not installed" in capsys.readouterr().err
    assert main(_classify(tiny_bundle, str(folder), "--device", "cpu", "--backend", "onnxruntime", "--json")) == 0
    assert json.loads(capsys.readouterr().out.splitlines()[0])["label"] in ("cat", "dog")
