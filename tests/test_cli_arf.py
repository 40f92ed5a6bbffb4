"""`edgeclip train arf`: the device mode's head (anchors from caption and pair files), baselines, bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from edgeclip.cli import main
from edgeclip.data import shapes

FAST = ["--set", "epochs=2", "--no-cache", "--json"]


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("arf")
    return (shapes.save_image_folder(root / "train", 3, seed=1, shift="blur"),
            shapes.save_image_folder(root / "pairs", 2, seed=2))


def test_device_head_with_anchors_and_held_out_classes(data, tmp_path: Path,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    train, pairs = data
    out = tmp_path / "arf.head.safetensors"
    assert main(["train", "arf", "--data", str(train), "--captions", str(train / "captions.jsonl"), "--pairs",
                 str(pairs / "captions.jsonl"), "--extra-classes", "purple hexagon", "--out", str(out),
                 *FAST]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["mode"] == "device" and report["classes"][-1] == "purple hexagon" and out.is_file()
    assert report["report"]["steps"] > 0
    assert main(["classify", "--method", "arf", "--head", str(out), str(pairs / "red_circle"), "--json"]) == 0
    records = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(records) == 2 and all(r["label"] in report["classes"] for r in records)


def test_plain_and_wise_baselines_need_no_anchor_files(data, tmp_path: Path,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    train, _ = data
    out = tmp_path / "plain.head.safetensors"
    assert main(["train", "arf", "--data", str(train), "--set", "lambda_tc=0", "--set", "lambda_it=0",
                 "--wise-alpha", "0.5", "--out", str(out), *FAST]) == 0
    assert json.loads(capsys.readouterr().out)["head"] == str(out)


def test_bad_input_exits_2(data, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    train, pairs = data
    out = str(tmp_path / "x.head.safetensors")
    assert main(["train", "arf", "--data", str(train), "--pairs", str(pairs / "captions.jsonl"), "--out", out,
                 *FAST]) == 2
    assert "--captions is needed" in capsys.readouterr().err
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"image": "missing.png", "caption": "a red circle"}) + "\n", encoding="utf-8")
    assert main(["train", "arf", "--data", str(train), "--captions", str(bad), "--set", "lambda_it=0", "--out",
                 out, *FAST]) == 2
    assert "line 1" in capsys.readouterr().err
    assert main(["train", "arf", "--data", str(train), "--set", "lambda_tc=0", "--set", "lambda_it=0",
                 "--wise-alpha", "2", "--out", out, *FAST]) == 2
    assert "--wise-alpha" in capsys.readouterr().err
    assert main(["train", "arf", "--data", str(train), "--set", "lambda_tc=0", "--set", "lambda_it=0",
                 "--mode", "workstation", *FAST]) == 2
    assert "--out-bundle" in capsys.readouterr().err
    assert not Path(out).exists()


def test_workstation_mode_exports_a_bundle_that_classifies(data, tmp_path: Path,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    train, pairs = data
    out = tmp_path / "ws.bundle"
    assert main(["train", "arf", "--mode", "workstation", "--data", str(train), "--captions",
                 str(train / "captions.jsonl"), "--pairs", str(pairs / "captions.jsonl"), "--set", "epochs=1",
                 "--set", "batch_size=32", "--wise-alpha", "0.5", "--out-bundle", str(out), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["mode"] == "workstation" and report["steps"] == 2 and report["wise_alpha"] == 0.5
    assert report["parity"]["image_min_cos"] > 0.9999
    import edgeclip

    model = edgeclip.load(out)
    assert model.bundle.manifest["extra"]["finetune"]["wise_alpha"] == 0.5
    assert main(["classify", "--bundle", str(out), "--classes", "red circle,blue square",
                 str(pairs / "red_circle"), "--json"]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 2
    # an existing bundle is not replaced without --overwrite; a device-only setting is refused
    assert main(["train", "arf", "--mode", "workstation", "--data", str(train), "--set", "lambda_tc=0", "--set",
                 "lambda_it=0", "--out-bundle", str(out)]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert main(["train", "arf", "--mode", "workstation", "--data", str(train), "--set", "lambda_tc=0", "--set",
                 "lambda_it=0", "--set", "adapter_lr=0.1", "--out-bundle", str(tmp_path / "b2")]) == 2
    assert "adapter_lr" in capsys.readouterr().err and not (tmp_path / "b2").exists()
