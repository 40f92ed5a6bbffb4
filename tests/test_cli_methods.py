"""`edgeclip train` and `edgeclip classify --method/--head`: every method reached by name from the command line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from edgeclip.cli import main
from edgeclip.data import shapes


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("frames")
    batch = shapes.make_batch(3, seed=11, shift="blur")
    for i, im in enumerate(batch.images):
        Image.fromarray(im).save(folder / f"{i}.png")
    return folder


@pytest.fixture(scope="module")
def head(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("heads") / "coop.head.safetensors"
    assert main(["train", "coop", "--data", "shapes:64:blur", "--set", "epochs=2", "--set", "lr=0.01",
                 "--no-cache", "--out", str(out), "--json"]) == 0
    return out


def test_train_writes_a_head_and_reports(head: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert head.is_file()
    out = head.parent / "again.head.safetensors"
    rc = main(["train", "coop", "--data", "shapes:48", "--set", "epochs=1", "--val-split", "0.25", "--no-cache",
               "--out", str(out), "--json"])
    assert rc == 0
    report = json.loads(capsys.readouterr().out)
    assert report["head"] == str(out) and report["method"] == "coop" and len(report["classes"]) == 16
    assert report["report"]["n_train"] == 32 and report["report"]["n_val"] == 16
    assert report["report"]["epochs"] == 1 and len(report["report"]["val_accuracy"]) == 1
    # an existing head is never overwritten by accident
    assert main(["train", "coop", "--data", "shapes:48", "--no-cache", "--out", str(out)]) == 2
    assert "already exists" in capsys.readouterr().err


def test_classify_with_a_head_takes_its_method_and_classes(head: Path, images: Path,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    capsys.readouterr()
    assert main(["classify", "--head", str(head), str(images), "--json"]) == 0
    records = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(records) == 3 and all(r["label"] in shapes.class_names() for r in records)
    assert main(["classify", "--head", str(head), "--classes", "red circle,blue square", str(images)]) == 2
    assert "trained for the classes" in capsys.readouterr().err


def test_head_of_another_bundle_is_refused(head: Path, images: Path, tiny_bundle: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["classify", "--bundle", str(tiny_bundle), "--head", str(head), str(images)]) == 2
    err = capsys.readouterr().err
    assert "another model" in err and err.count("\n") == 1


@pytest.mark.parametrize("method", ["tpt", "zero", "online_prototypes"])
def test_classify_with_a_test_time_method(method: str, images: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(["classify", "--method", method, "--set", "n_views=8", "--classes", "red circle,blue square,black cross",
               str(images), "--json"])
    assert rc == 0
    records = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [Path(r["image"]).name for r in records] == ["0.png", "1.png", "2.png"]


@pytest.mark.parametrize(
    ("argv", "message"),
    [(["--method", "tpt", "--template", "a {}."], "takes no --template"),
     (["--method", "tpt", "--prototypes", "shapes:16"], "takes no --prototypes"),
     (["--method", "tpt", "--set", "not_a_setting=1"], "no setting 'not_a_setting'"),
     (["--method", "coop", "--head", "missing.head.safetensors"], "does not exist"),
     (["--head", "missing.head.safetensors"], "does not exist"),
     ([], "give --classes")],
)
def test_bad_method_arguments(argv: list[str], message: str, images: Path,
                              capsys: pytest.CaptureFixture[str]) -> None:
    classes = [] if message == "give --classes" else ["--classes", "a,b"]
    assert main(["classify", *classes, *argv, str(images)]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


def test_bad_setting_syntax_is_an_argument_error(images: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["classify", "--classes", "a,b", "--set", "n_views", str(images)])
    assert exc.value.code == 2 and "SETTING=VALUE" in capsys.readouterr().err
