"""`edgeclip train pseudolabel`: a head from unlabeled images, used by `classify --head`; bad input exits 2."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from edgeclip.cli import main
from edgeclip.data import shapes

NAMES = shapes.class_names()


@pytest.fixture(scope="module")
def names_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("names") / "classes.txt"
    path.write_text("\n".join(NAMES) + "\n", encoding="utf-8")
    return path


def _save(folder: Path, n: int, seed: int) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i, im in enumerate(shapes.make_batch(n, seed=seed, shift="blur").images):
        Image.fromarray(im).save(folder / f"{i}.png")
    return folder


def plot_args(tmp_path: Path) -> list[str]:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return []
    return ["--plot", str(tmp_path / "per-class.png")]


def test_train_ul_then_classify_with_the_head(names_file: Path, tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "pl.head.safetensors"
    rc = main(["train", "pseudolabel", "--classes", f"@{names_file}", "--unlabeled", "shapes:96:blur",
               "--strategy", "grip", "--paradigm", "ul", "--set", "rounds=2", "--set", "epochs=1", "--no-cache",
               "--out", str(out), "--json", *plot_args(tmp_path)])
    assert rc == 0
    report = json.loads(capsys.readouterr().out)
    if "plot" in report:  # with matplotlib: the per-class chart
        assert Path(report["plot"]).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert report["head"] == str(out) and report["method"] == "pseudolabel"
    rounds = report["report"]["extra"]["rounds"]
    assert [r["k"] for r in rounds] == [3, 6] and report["report"]["extra"]["strategy"] == "grip"
    assert "per_class" in report["report"]["extra"]
    assert not (tmp_path / "pl.head.safetensors.rounds").exists()  # the default work folder is cleaned up
    frames = _save(tmp_path / "frames", 3, 5)
    assert main(["classify", "--head", str(out), str(frames), "--json"]) == 0
    records = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(records) == 3 and all(r["label"] in NAMES for r in records)


def test_ssl_from_folders_keeps_a_given_work_folder(names_file: Path, tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    labeled = tmp_path / "labeled"
    batch = shapes.make_batch(32, seed=77, shift="blur")
    for i, (im, lab) in enumerate(zip(batch.images, batch.labels, strict=True)):
        d = labeled / NAMES[int(lab)].replace(" ", "_")
        d.mkdir(parents=True, exist_ok=True)
        Image.fromarray(im).save(d / f"{i}.png")
    unlabeled = _save(tmp_path / "unlabeled", 64, 9)
    work = tmp_path / "work"
    rc = main(["train", "pseudolabel", "--classes", ",".join(NAMES), "--unlabeled", str(unlabeled), "--labeled",
               str(labeled), "--strategy", "fpl", "--paradigm", "ssl", "--set", "k=4", "--set", "epochs=1",
               "--no-cache", "--work", str(work), "--out", str(tmp_path / "ssl.head.safetensors")])
    assert rc == 0
    text = capsys.readouterr().out
    assert "fpl / ssl" in text and "round  1: K=4, 64 pseudo-labels" in text
    assert [p.name for p in work.iterdir()] == ["round-001.safetensors"]
    if plot_args(tmp_path):  # unlabeled images without classes cannot be scored per class: refused before training
        rc = main(["train", "pseudolabel", "--classes", ",".join(NAMES), "--unlabeled", str(unlabeled),
                   "--no-cache", "--out", str(tmp_path / "x.head.safetensors"), *plot_args(tmp_path)])
        assert rc == 2 and "--plot needs the classes" in capsys.readouterr().err
        assert not (tmp_path / "x.head.safetensors").exists()


def test_bad_input_exits_2_with_a_clear_message(names_file: Path, tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "empty").mkdir()
    out = str(tmp_path / "x.head.safetensors")
    base = ["train", "pseudolabel", "--classes", f"@{names_file}", "--no-cache", "--out", out]
    assert main([*base, "--unlabeled", str(tmp_path / "empty")]) == 2
    assert "holds no images" in capsys.readouterr().err
    cats = tmp_path / "cats" / "cat"
    _save(cats, 2, 1)
    assert main([*base, "--unlabeled", "shapes:64", "--paradigm", "ssl", "--labeled", str(cats.parent),
                 "--strategy", "fpl", "--set", "k=4"]) == 2
    assert "'cat'" in capsys.readouterr().err
    assert main([*base, "--unlabeled", "shapes:8", "--strategy", "fpl", "--set", "epochs=1"]) == 2
    assert "got no pseudo-label" in capsys.readouterr().err
    assert main([*base, "--unlabeled", "shapes:64", "--paradigm", "ssl"]) == 2
    assert "needs --labeled" in capsys.readouterr().err
    assert main([*base, "--unlabeled", "shapes:64", "--seen", "red circle"]) == 2
    assert "--seen goes with --paradigm trzsl" in capsys.readouterr().err
