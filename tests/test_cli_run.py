"""`edgeclip run` on a real MP4 (the shift switching half-way), faulty sources, and the robot-loop example."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import edgeclip
from edgeclip.cli import main
from edgeclip.data import shapes
from edgeclip.errors import InputError, SourceError
from edgeclip.run_stream import ANNOTATE_MIN_SIDE, run_stream

cv2 = pytest.importorskip("cv2")
from edgeclip.data.video import write_shift_video  # noqa: E402

N_FRAMES = 48
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def video(tmp_path_factory: pytest.TempPathFactory):
    path = tmp_path_factory.mktemp("video") / "shift.mp4"
    return path, write_shift_video(path, N_FRAMES, shifts=("clean", "blur"), seed=3)


@pytest.fixture(scope="module")
def classes_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("classes") / "classes.txt"
    path.write_text("\n".join(shapes.class_names()) + "\n")
    return path


def _frame_count(path: Path) -> tuple[int, int]:
    cap = cv2.VideoCapture(str(path))
    n = 0
    width = int(cap.get(cv2.CAP_PROP_FRAME_WIDTH))
    while cap.read()[0]:
        n += 1
    cap.release()
    return n, width


def test_run_streams_a_video_writes_every_frame_and_one_json_line_each(video, classes_file, tmp_path, capsys) -> None:
    path, written = video
    out = tmp_path / "annotated.mp4"
    code = main(["run", "--source", str(path), "--classes", f"@{classes_file}", "--out", str(out), "--json"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    records = [json.loads(line) for line in captured.out.splitlines()]
    assert [r["frame"] for r in records] == list(range(N_FRAMES))
    assert [r["seq"] for r in records] == list(range(N_FRAMES))  # a file is served fifo: every frame
    assert all("label" in r and 0.0 <= r["confidence"] <= 1.0 and r["top"][0]["label"] == r["label"]
               for r in records)
    ts = [r["timestamp"] for r in records]
    assert ts == sorted(ts) and ts[-1] > ts[0]
    names = shapes.class_names()
    truth = [names[i] for i in np.asarray(written.labels)]
    half = N_FRAMES // 2
    clean_acc = np.mean([r["label"] == t for r, t in zip(records[:half], truth[:half], strict=True)])
    assert clean_acc >= 0.6, f"zero-shot on the clean half of the video: {clean_acc:.2f}"  # mp4v is lossy
    n_out, width = _frame_count(out)
    assert n_out == N_FRAMES
    assert width >= ANNOTATE_MIN_SIDE  # 64-pixel frames are enlarged so the text stays legible
    assert "48 frames read (fifo): 48 served" in captured.err


def test_run_with_tpt_under_a_budget_reports_views(video, classes_file, capsys) -> None:
    path, _ = video
    code = main(["run", "--source", str(path), "--classes", f"@{classes_file}", "--method", "tpt",
                 "--budget-ms", "5000", "--set", "n_views=16", "--max-frames", "6", "--json"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    records = [json.loads(line) for line in captured.out.splitlines()]
    assert len(records) == 6
    assert records[0]["views"] == 4 and all(4 <= r["views"] <= 16 for r in records)
    assert max(r["views"] for r in records) == 16  # a generous budget lets the method use every view


def test_run_on_a_truncated_video_keeps_what_it_read_and_exits_1(classes_file, tmp_path, capsys) -> None:
    full = tmp_path / "full.avi"  # AVI: the header announces the frame count, so a cut shows mid-stream
    write_shift_video(full, N_FRAMES, shifts=("clean", "blur"), seed=3)
    cut = tmp_path / "cut.avi"
    data = full.read_bytes()
    cut.write_bytes(data[: len(data) * 3 // 5])
    out = tmp_path / "cut-annotated.mp4"
    code = main(["run", "--source", str(cut), "--classes", f"@{classes_file}", "--out", str(out), "--json"])
    captured = capsys.readouterr()
    assert code == 1, captured.err
    records = [json.loads(line) for line in captured.out.splitlines()]
    assert 0 < len(records) < N_FRAMES
    assert [r["frame"] for r in records] == list(range(len(records)))
    assert "the source failed after" in captured.err and f"of the {N_FRAMES}" in captured.err
    assert _frame_count(out)[0] == len(records)  # the annotated video keeps every frame read


class FlakyCamera:
    """A live source whose frames stop with a SourceError (a camera unplugged), or that yields a bad frame."""

    fps = 30.0
    is_live = True

    def __init__(self, n: int, bad: object | None = None) -> None:
        self.n = n
        self.bad = bad

    def __iter__(self):
        frames = shapes.make_batch(self.n, seed=5).images
        for i, image in enumerate(frames):
            yield edgeclip.sources.Frame(image=image, timestamp=float(i), index=i, source="fake")
        if self.bad is not None:
            yield edgeclip.sources.Frame(image=self.bad, timestamp=float(self.n), index=self.n, source="fake")
        raise SourceError("camera 0 stopped delivering frames (unplugged?)")


def test_a_camera_that_disappears_ends_the_run_with_its_error() -> None:
    session = edgeclip.Session(None, shapes.class_names(), policy="latest")
    records: list[dict] = []
    summary = run_stream(session, FlakyCamera(10), on_record=records.append)
    assert summary["source_error"] and "unplugged" in summary["source_error"]
    assert summary["frames"] == 10 and [r["frame"] for r in records] == list(range(10))
    assert session.closed and all(not t.is_alive() for t in session._threads)
    st = summary["stats"]
    assert st["done"] + st["dropped"] + st["failed"] + st["cancelled"] == 10 and st["pending"] == 0


def test_a_bad_frame_from_a_source_is_a_clear_error_and_nothing_hangs() -> None:
    session = edgeclip.Session(None, shapes.class_names(), policy="fifo")
    records: list[dict] = []
    with pytest.raises(InputError, match="uint8"):
        run_stream(session, FlakyCamera(3, bad=np.zeros((8, 8, 3), np.float32)), on_record=records.append)
    assert [r["frame"] for r in records] == [0, 1, 2]  # the frames before it were served and reported
    assert session.closed and all(not t.is_alive() for t in session._threads)


def test_run_refuses_a_missing_source(classes_file, capsys) -> None:
    code = main(["run", "--source", "/nonexistent/video.mp4", "--classes", f"@{classes_file}"])
    assert code == 2 and "nonexistent" in capsys.readouterr().err


def test_robot_loop_example_runs() -> None:
    proc = subprocess.run([sys.executable, str(ROOT / "examples" / "robot_loop.py"), "--seconds", "1.5"],
                          capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    assert "control: frame" in proc.stdout
    assert "camera delivered" in proc.stdout and "failed 0" in proc.stdout
