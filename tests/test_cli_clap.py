"""`edgeclip train clap`: one task per call on a saved state, resumable, with a novelty threshold."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from edgeclip.cli import main

FAST = ["--set", "epochs=2", "--set", "finetune_epochs=1", "--set", "mc_samples=4", "--extra-views", "1",
        "--no-cache"]


def _task(state: Path, classes: str, *extra: str) -> list[str]:
    return ["train", "clap", "--task", "shapes:24:low_contrast", "--classes", classes, "--state", str(state),
            "--json", *extra]


def test_two_tasks_then_classify_with_uncertainty(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    state = tmp_path / "clap.head.safetensors"
    assert main(_task(state, "red circle,red square", *FAST)) == 0
    first = json.loads(capsys.readouterr().out)
    assert first["tasks"] == [["red circle", "red square"]] and not first["resumed_state"] and state.is_file()
    # the second call resumes the saved state (its config is the state's: --set is refused there)
    assert main(_task(state, "blue circle,blue square", "--set", "epochs=2", "--no-cache")) == 2
    assert "keeps its own config" in capsys.readouterr().err
    assert main(_task(state, "blue circle,blue square", "--extra-views", "1", "--no-cache", "--calibrate",
                      "shapes:16", "--fpr", "0.1")) == 0
    second = json.loads(capsys.readouterr().out)
    assert second["resumed_state"] and len(second["tasks"]) == 2 and second["novelty_threshold"] is not None
    # the same task again is recognised and changes nothing
    before = state.read_bytes()
    assert main(_task(state, "blue circle,blue square", "--extra-views", "1", "--no-cache")) == 0
    assert json.loads(capsys.readouterr().out)["report"]["extra"]["resumed"] and state.read_bytes() == before
    frames = tmp_path / "frames"
    from edgeclip.data import shapes

    shapes.save_image_folder(frames, 1, seed=3)
    assert main(["classify", "--method", "clap", "--head", str(state), str(frames / "red_circle"), "--json"]) == 0
    record = json.loads(capsys.readouterr().out.splitlines()[0])
    assert record["label"] in ("red circle", "red square", "blue circle", "blue square")
    assert {"energy", "mc_variance", "is_novel"} <= set(record) and isinstance(record["is_novel"], bool)


def test_bad_tasks_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    state = tmp_path / "clap.head.safetensors"
    assert main(_task(state, "red circle", *FAST)) == 0
    capsys.readouterr()
    before = state.read_bytes()
    assert main(_task(state, "red circle,green cross", "--extra-views", "1", "--no-cache")) == 2  # an old class
    assert "repeats class" in capsys.readouterr().err
    empty = tmp_path / "empty"
    (empty / "green_cross").mkdir(parents=True)
    assert main(["train", "clap", "--task", str(empty), "--state", str(state), "--no-cache"]) == 2
    assert "no images" in capsys.readouterr().err
    assert main(_task(state, "green cross", "--fpr", "1.5")) == 2
    assert "--fpr" in capsys.readouterr().err
    assert state.read_bytes() == before  # nothing written by a refused task
