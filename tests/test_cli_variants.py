"""`edgeclip convert --precision fp16` and `edgeclip quantize`: variant bundles that load and classify."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from edgeclip.cli import main
from edgeclip.data import shapes


def test_convert_and_quantize_then_classify(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    frames = shapes.save_image_folder(tmp_path / "frames", 1, seed=4)
    for verb, extra in (("convert", ["--precision", "fp16"]), ("quantize", ["--calib", "shapes:16"])):
        out = tmp_path / f"{verb}.bundle"
        assert main([verb, *extra, "--out", str(out), "--json"]) == 0
        res = json.loads(capsys.readouterr().out)
        assert res["path"] == str(out) and res["kind"] == ("fp16" if verb == "convert" else "int8")
        assert res["parity"]["image_min_cos"] > 0.99
        assert main(["classify", "--bundle", str(out), "--classes", "red circle,blue square",
                     str(frames / "red_circle"), "--json"]) == 0
        assert json.loads(capsys.readouterr().out.splitlines()[0])["label"] == "red circle"
        # an existing variant is not replaced without --overwrite
        assert main([verb, *extra, "--out", str(out)]) == 2
        assert "overwrite" in capsys.readouterr().err
    assert main(["quantize", "--calib", "shapes:0", "--out", str(tmp_path / "bad")]) == 2
    assert not (tmp_path / "bad").exists()
