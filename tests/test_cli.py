"""The `edgeclip` command, run in-process as a user would type it."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from edgeclip.cli import main


def _images(folder: Path, n: int = 3) -> Path:
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(n):
        Image.fromarray(rng.integers(0, 255, (48, 40, 3), dtype=np.uint8)).save(folder / f"img{i}.png")
    return folder


def test_classify_folder_json(tiny_bundle: Path, tmp_path: Path, capsys) -> None:
    folder = _images(tmp_path / "imgs")
    rc = main(["classify", "--bundle", str(tiny_bundle), "--classes", "cat, dog,robot arm", str(folder), "--json"])
    assert rc == 0
    records = [json.loads(line) for line in capsys.readouterr().out.splitlines()]  # JSON Lines
    assert [r["image"] for r in records] == [str(folder / f"img{i}.png") for i in range(3)]
    assert {r["label"] for r in records} <= {"cat", "dog", "robot arm"}
    assert all(len(r["top"]) == 3 and r["top"][0]["label"] == r["label"] for r in records)


def test_classify_class_file_and_errors(tiny_bundle: Path, tmp_path: Path, capsys) -> None:
    folder = _images(tmp_path / "imgs", 1)
    classes = tmp_path / "classes.txt"
    classes.write_text("cat\ndog\n")
    assert main(["classify", "--bundle", str(tiny_bundle), "--classes", f"@{classes}", str(folder)]) == 0
    assert "img0.png" in capsys.readouterr().out
    assert main(["classify", "--bundle", str(tiny_bundle), "--classes", "cat,Cat", str(folder)]) == 2
    assert "duplicate class name" in capsys.readouterr().err
    assert main(["classify", "--bundle", str(tiny_bundle), "--classes", ",", str(folder)]) == 2
    assert "class list is empty" in capsys.readouterr().err
    assert main(["classify", "--bundle", str(tiny_bundle), "--classes", "a,b", str(tmp_path / "nope.jpg")]) == 2
    assert "nope.jpg" in capsys.readouterr().err


def test_info(tiny_bundle: Path, capsys) -> None:
    assert main(["info", str(tiny_bundle), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["parity"]["image_min_cos"] >= 0.9999
    assert "torch:cpu" in info["machine"]["runnable"]
    assert main(["info", str(tiny_bundle)]) == 0
    assert "parity" in capsys.readouterr().out


def test_info_text_is_clean_and_says_what_the_micro_model_knows(capsys) -> None:
    import edgeclip
    from edgeclip.data import shapes
    from edgeclip.runtime.bundle import open_bundle

    assert main(["info"]) == 0
    text = capsys.readouterr().out
    assert "only these 16 classes: red circle," in text and all(c in text for c in shapes.class_names())
    assert "checkpoint edgeclip-micro.pt" in text
    built_at = open_bundle(edgeclip.default_bundle()).manifest["source"]["checkpoint"]
    assert built_at.startswith("/") and built_at not in text  # the exporting machine's folders stay out
    assert not any(ch in text for ch in "{}[]'")  # no Python dict, list or string reprs
    assert "clean 99.5%" in text
    assert main(["info", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["source"]["checkpoint"] == "edgeclip-micro.pt" and len(info["classes"]) == 16
    assert info["identity"]["manifest_sha256"] == open_bundle(edgeclip.default_bundle()).identity()["manifest_sha256"]


def test_broken_pipe_exits_quietly(tmp_path: Path) -> None:
    import os
    import subprocess
    import sys

    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader is gone before the first write, as `| head -1` after its line
    try:
        proc = subprocess.run([sys.executable, "-m", "edgeclip.cli", "info", "--json"], stdout=write_end,
                              stderr=subprocess.PIPE, timeout=300, cwd=tmp_path)
    finally:
        os.close(write_end)
    err = proc.stderr.decode()
    assert proc.returncode == 1, err
    assert "Traceback" not in err and "BrokenPipeError" not in err


def test_export_from_checkpoint(tiny_names: list[str], tmp_path: Path, capsys) -> None:
    import open_clip

    ckpt = tmp_path / "w.pt"
    torch.save(open_clip.create_model("test-tiny-eos").state_dict(), ckpt)
    out = tmp_path / "cli.bundle"
    argv = ["export", "--model", "test-tiny-eos", "--checkpoint", str(ckpt), "--out", str(out), "--json"]
    assert main(argv) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["parity"]["text_min_cos"] >= 0.9999 and (out / "manifest.json").is_file()
    assert main(argv) == 2  # exists, no --overwrite
    assert "already exists" in capsys.readouterr().err


def test_bad_arguments_exit_cleanly(capsys) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["bench", "encoders", "--batch", "0,x"])
    assert exc.value.code == 2
