"""Frame sources (files, folders, globs, cameras and streams through a fake capture), annotation and video output."""

from __future__ import annotations

import itertools
import logging
import struct
import sys
import time
from pathlib import Path
from typing import ClassVar

import numpy as np
import pytest
from PIL import Image

from edgeclip.data.shapes import ShapesDataset
from edgeclip.errors import InputError, SourceError
from edgeclip.sources import Frame, open_source
from edgeclip.video_out import VideoWriteError, VideoWriter, annotate

try:
    import cv2
except ImportError:  # the video tests need the `video` extra (part of `test`)
    cv2 = None

needs_cv2 = pytest.mark.skipif(cv2 is None, reason="needs OpenCV: pip install 'edgeclip[video]'")

RED = (210, 30, 40)


def _frames(n: int, size: tuple[int, int] = (64, 48), colour: tuple[int, int, int] = RED) -> list[np.ndarray]:
    """Solid-colour frames with a moving bright bar, so consecutive frames differ."""
    w, h = size
    out = []
    for i in range(n):
        f = np.empty((h, w, 3), dtype=np.uint8)
        f[...] = colour
        x = (i * 4) % (w - 4)
        f[:, x:x + 4] = 250
        out.append(f)
    return out


def _write(path: Path, n: int, fps: float = 10.0, size: tuple[int, int] = (64, 48)) -> Path:
    with VideoWriter(path, fps) as w:
        for f in _frames(n, size):
            w.write(f)
    return path


# -- MP4 surgery: OpenCV writes the index (moov box) after the data, so cutting bytes loses it --------------
_CONTAINER_BOXES = {b"moov", b"trak", b"mdia", b"minf", b"stbl", b"edts", b"dinf", b"udta"}


def _boxes(buf: bytes | bytearray, start: int, end: int):
    i = start
    while i + 8 <= end:
        size, kind = struct.unpack(">I4s", buf[i:i + 8])
        header = 8
        if size == 1:
            size, header = struct.unpack(">Q", buf[i + 8:i + 16])[0], 16
        elif size == 0:
            size = end - i
        yield kind, i, header, size
        i += size


def _shift_chunk_offsets(buf: bytearray, start: int, end: int, delta: int) -> None:
    for kind, i, header, size in _boxes(buf, start, end):
        if kind in _CONTAINER_BOXES:
            _shift_chunk_offsets(buf, i + header, i + size, delta)
        elif kind in (b"stco", b"co64"):
            fmt = ">I" if kind == b"stco" else ">Q"
            width = struct.calcsize(fmt)
            (count,) = struct.unpack(">I", buf[i + header + 4:i + header + 8])
            for k in range(count):
                o = i + header + 8 + k * width
                buf[o:o + width] = struct.pack(fmt, struct.unpack(fmt, buf[o:o + width])[0] + delta)


def _index_first(data: bytes) -> bytes:
    """The same MP4 with its moov box moved before the media data (as a streaming-friendly file has it)."""
    top = {kind: (i, size) for kind, i, _, size in _boxes(data, 0, len(data))}
    (moov_at, moov_size), (mdat_at, _) = top[b"moov"], top[b"mdat"]
    moov = bytearray(data[moov_at:moov_at + moov_size])
    _shift_chunk_offsets(moov, 0, len(moov), len(moov))
    return data[:mdat_at] + bytes(moov) + data[mdat_at:moov_at] + data[moov_at + moov_size:]


# -- a fake cv2.VideoCapture --------------------------------------------------------------------------------
class FakeCapture:
    """Delivers `good` BGR frames, then fails `fail` reads (forever when None), then delivers again."""

    instances: ClassVar[list[FakeCapture]] = []
    good = 3
    fail: int | None = None
    opened = True

    def __init__(self, *args) -> None:
        self.args = args
        self.reads = 0
        self.props: dict[int, float] = {}
        self.released = False
        type(self).instances.append(self)

    def isOpened(self) -> bool:  # OpenCV's name
        return self.opened

    def read(self):
        self.reads += 1
        n = self.reads
        failing = n > self.good and (self.fail is None or n <= self.good + self.fail)
        if failing:
            return False, None
        frame = np.zeros((6, 8, 3), dtype=np.uint8)
        frame[..., 0], frame[..., 1], frame[..., 2] = 10, 20, 250  # BGR: mostly red
        return True, frame

    def get(self, prop: int) -> float:
        return {cv2.CAP_PROP_FPS: 30.0, cv2.CAP_PROP_FRAME_COUNT: -1.0}.get(prop, 0.0)

    def set(self, prop: int, value: float) -> bool:
        self.props[prop] = value
        return True

    def release(self) -> None:
        self.released = True


@pytest.fixture
def fake_capture(monkeypatch: pytest.MonkeyPatch):
    if cv2 is None:
        pytest.skip("needs OpenCV: pip install 'edgeclip[video]'")

    class Capture(FakeCapture):
        instances: ClassVar[list[FakeCapture]] = []

    monkeypatch.setattr(cv2, "VideoCapture", Capture)
    return Capture


# -- video files ----------------------------------------------------------------------------------------------
@needs_cv2
def test_video_file_gives_rgb_frames_with_monotone_timestamps(tmp_path: Path) -> None:
    path = _write(tmp_path / "clip.mp4", 12, fps=10.0)
    with open_source(path) as src:
        assert (src.kind, src.fps, src.frame_count, src.is_live) == ("file", 10.0, 12, False)
        frames = list(src)
    assert src.closed and src.frames_read == 12
    assert [f.index for f in frames] == list(range(12))
    assert all(isinstance(f, Frame) and f.source == str(path) for f in frames)
    img = frames[0].image
    assert img.dtype == np.uint8 and img.shape == (48, 64, 3) and img.flags.c_contiguous
    mean = img[:, 20:].reshape(-1, 3).mean(axis=0)  # away from the bar
    assert np.abs(mean - RED).max() < 15, mean  # red stays in channel 0: BGR was turned into RGB
    times = [f.timestamp for f in frames]
    assert times[0] == 0.0 and all(b > a for a, b in itertools.pairwise(times))
    assert times[-1] == pytest.approx(1.1, abs=1e-3)
    assert next(src, None) is None  # exhausted and closed


@needs_cv2
def test_cut_mp4_cannot_be_opened(tmp_path: Path) -> None:
    data = _write(tmp_path / "clip.mp4", 20).read_bytes()
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(data[: len(data) * 3 // 4])  # the index is written last, so it is gone
    with pytest.raises(SourceError, match=r"cut\.mp4: could not be opened.*truncated"):
        open_source(cut)


@needs_cv2
@pytest.mark.parametrize("suffix", [".mp4", ".avi"])
def test_truncated_video_raises_after_the_readable_frames(tmp_path: Path, suffix: str,
                                                          caplog: pytest.LogCaptureFixture) -> None:
    data = _write(tmp_path / f"clip{suffix}", 30).read_bytes()
    if suffix == ".mp4":
        data = _index_first(data)  # an index-first MP4 still announces 30 frames when its data is cut
        start, size = next((i, size) for kind, i, _, size in _boxes(data, 0, len(data)) if kind == b"mdat")
        end = start + size
    else:  # AVI: the header announces the frame count, the index (idx1) follows the frames (movi)
        start, end = data.find(b"movi"), data.rfind(b"idx1")
    cut = tmp_path / f"cut{suffix}"
    cut.write_bytes(data[: start + (end - start) * 6 // 10])  # cut inside the frame data
    frames: list[Frame] = []
    with open_source(cut) as src:
        assert src.frame_count == 30
        with pytest.raises(SourceError, match=r"ended after (\d+) of the 30 frames.*truncated") as info:
            for frame in src:
                frames.append(frame)
    assert 0 < len(frames) < 30 and f"after {len(frames)} of the 30" in str(info.value)
    assert src.closed
    with caplog.at_level(logging.WARNING, logger="edgeclip.sources"):
        assert len(list(open_source(cut, count_tolerance=None))) == len(frames)
    assert "ended after" in caplog.text


@needs_cv2
def test_unopenable_and_missing_specs(tmp_path: Path) -> None:
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(b"not a video" * 100)
    with pytest.raises(SourceError, match=r"junk\.mp4: could not be opened"):
        open_source(junk)
    with pytest.raises(SourceError, match=r"nothere\.mp4: no such file"):
        open_source(tmp_path / "nothere.mp4")
    (tmp_path / "empty").mkdir()
    with pytest.raises(SourceError, match="folder holds no image files"):
        open_source(tmp_path / "empty")
    with pytest.raises(SourceError, match="glob matches no image files"):
        open_source(str(tmp_path / "*.png"))
    with pytest.raises(InputError):
        open_source(-1)
    with pytest.raises(InputError):
        open_source(junk, fps=0)


def test_missing_opencv_names_the_extra(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "clip.mp4").write_bytes(b"\0" * 64)
    Image.new("RGB", (4, 4), RED).save(tmp_path / "a.png")
    monkeypatch.setitem(sys.modules, "cv2", None)  # `import cv2` now raises ImportError
    for spec in (tmp_path / "clip.mp4", 0, "rtsp://camera.local/stream"):
        with pytest.raises(SourceError, match=r"pip install 'edgeclip\[video\]'"):
            open_source(spec)
    with pytest.raises(VideoWriteError, match=r"pip install 'edgeclip\[video\]'"):
        VideoWriter(tmp_path / "out.mp4")
    assert len(list(open_source(tmp_path))) == 1  # folders need no OpenCV


# -- folders, globs, lists ------------------------------------------------------------------------------------
def _save_pngs(folder: Path, n: int) -> list[tuple[int, int, int]]:
    folder.mkdir(parents=True, exist_ok=True)
    colours = [(10 * i, 255 - 10 * i, 7 * i) for i in range(n)]
    for i, c in enumerate(colours):
        Image.new("RGB", (5, 3), c).save(folder / f"f{i:03d}.png")
    return colours


def test_folder_glob_and_list_specs(tmp_path: Path) -> None:
    colours = _save_pngs(tmp_path / "frames", 4)
    (tmp_path / "frames" / "notes.txt").write_text("not an image")
    with open_source(tmp_path / "frames", fps=5.0) as src:
        assert (src.kind, src.frame_count, src.fps, src.is_live, src.capture) == ("folder", 4, 5.0, False, None)
        frames = list(src)
    assert [tuple(f.image[0, 0]) for f in frames] == colours  # sorted by name, exact RGB
    assert [f.timestamp for f in frames] == [0.0, 0.2, 0.4, 0.6]
    assert frames[1].source.endswith("f001.png") and frames[1].image.shape == (3, 5, 3)

    globbed = list(open_source(str(tmp_path / "frames" / "f00[12].png")))
    assert [f.index for f in globbed] == [0, 1] and [f.timestamp for f in globbed] == [0.0, 1.0]
    assert tuple(globbed[0].image[0, 0]) == colours[1]
    assert len(list(open_source(str(tmp_path / "frames" / "*")))) == 4  # the .txt is ignored

    paths = [tmp_path / "frames" / "f003.png", tmp_path / "frames" / "f000.png"]
    assert [tuple(f.image[0, 0]) for f in open_source(paths)] == [colours[3], colours[0]]  # list order kept
    assert len(list(open_source(paths[0]))) == 1  # a single image file


def test_unreadable_image_in_folder(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    _save_pngs(tmp_path, 3)
    (tmp_path / "f001.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    src = open_source(tmp_path)
    assert next(src).index == 0
    with pytest.raises(SourceError, match=r"f001\.png.*skip_unreadable=True"):
        next(src)
    assert next(src, None) is None
    with caplog.at_level(logging.WARNING, logger="edgeclip.sources"):
        frames = list(open_source(tmp_path, skip_unreadable=True))
    assert [f.index for f in frames] == [0, 2] and "f001.png" in caplog.text
    (tmp_path / "f000.png").write_bytes(b"")
    (tmp_path / "f002.png").write_bytes(b"")
    with pytest.raises(SourceError, match="none of its 3 image file"):
        list(open_source(tmp_path, skip_unreadable=True))


# -- cameras and streams (fake capture) -----------------------------------------------------------------------
@pytest.mark.parametrize("spec", [0, "2", "/dev/video0", "rtsp://camera.local:8554/stream"])
def test_live_specs_open_the_right_capture(fake_capture, spec) -> None:
    fake_capture.good, fake_capture.fail = 3, 0  # never fails
    before = time.time()
    with open_source(spec, fps=15.0) as src:
        frames = [next(src) for _ in range(3)]
        cap = fake_capture.instances[-1]
        assert src.is_live and src.frame_count is None and src.fps == 30.0 and src.capture is cap
    after = time.time()
    assert cap.released
    if spec == 0 or spec == "2":
        assert cap.args == (int(spec),) and cap.props[cv2.CAP_PROP_FPS] == 15.0
        assert src.kind == "camera"
    elif spec.startswith("/dev/"):
        assert src.kind == "device" and cap.args[0] == spec
        if sys.platform.startswith("linux"):
            assert cap.args[1] == cv2.CAP_V4L2
    else:
        assert src.kind == "stream" and cap.args[:2] == (spec, cv2.CAP_FFMPEG)
        assert cv2.CAP_PROP_OPEN_TIMEOUT_MSEC in cap.args[2] and cv2.CAP_PROP_READ_TIMEOUT_MSEC in cap.args[2]
    assert tuple(frames[0].image[0, 0]) == (250, 20, 10)  # BGR -> RGB
    times = [f.timestamp for f in frames]
    assert before <= times[0] <= times[1] <= times[2] <= after  # wall-clock time at grab


def test_camera_unplugged_mid_stream_raises(fake_capture) -> None:
    fake_capture.good, fake_capture.fail = 3, None  # read() fails for good after 3 frames
    frames = []
    with pytest.raises(SourceError, match=r"stopped after 3 frame\(s\).*unplugged"):
        for frame in open_source(0, retry_seconds=0.2):
            frames.append(frame)
    cap = fake_capture.instances[-1]
    assert len(frames) == 3 and cap.released
    assert cap.reads - 3 <= 0.2 / 0.05 + 2  # a bounded number of retries, not a spin or a hang


def test_camera_recovers_from_a_short_dropout(fake_capture, caplog: pytest.LogCaptureFixture) -> None:
    fake_capture.good, fake_capture.fail = 2, 2
    with caplog.at_level(logging.WARNING, logger="edgeclip.sources"), open_source("0", retry_seconds=1.0) as src:
        frames = [next(src) for _ in range(4)]
    assert [f.index for f in frames] == [0, 1, 2, 3] and "delivered again" in caplog.text


def test_dropped_stream_reconnects_and_frames_go_on(fake_capture, monkeypatch: pytest.MonkeyPatch,
                                                    caplog: pytest.LogCaptureFixture) -> None:
    fake_capture.good, fake_capture.fail = 2, None  # every capture dies after 2 frames
    opens = {"n": 0}
    real_init = fake_capture.__init__

    def init(self, *args) -> None:  # the 2nd opening fails (the server is still down), the 3rd works, then none
        real_init(self, *args)
        opens["n"] += 1
        self.opened = opens["n"] in (1, 3)

    monkeypatch.setattr(fake_capture, "__init__", init)
    sleeps: list[float] = []
    real_sleep = time.sleep
    monkeypatch.setattr("edgeclip.sources.time.sleep", lambda s: (sleeps.append(s), real_sleep(min(s, 0.01))))
    with caplog.at_level(logging.WARNING, logger="edgeclip.sources"), \
            open_source("rtsp://cam/1", retry_seconds=0.1, reconnect=3, reconnect_wait=0.5) as src:
        frames = [next(src) for _ in range(4)]
        assert [f.index for f in frames] == [0, 1, 2, 3] and src.reconnects == 1
        with pytest.raises(SourceError, match=r"stopped after 4 frame\(s\).*3 reconnection\(s\) failed"):
            next(src)  # the third capture dies too, and no later opening works
    assert "reconnecting in 0.5 s (attempt 1 of 3)" in caplog.text and "reconnected (attempt 2)" in caplog.text
    assert [w for w in sleeps if w >= 0.5][:2] == [0.5, 1.0]  # the wait doubles after a failed attempt
    assert all(c.released for c in fake_capture.instances)
    assert src.closed


def test_reconnect_is_off_by_default_and_never_for_files(fake_capture) -> None:
    fake_capture.good, fake_capture.fail = 1, None
    with pytest.raises(SourceError, match=r"stopped after 1 frame\(s\): "):
        list(open_source("rtsp://cam/1", retry_seconds=0.05))
    assert len(fake_capture.instances) == 1
    for bad in (-1, 1.5, True):
        with pytest.raises(InputError, match="reconnect"):
            open_source("rtsp://cam/1", reconnect=bad)
    with pytest.raises(InputError, match="reconnect_wait"):
        open_source("rtsp://cam/1", reconnect_wait=-1)


def test_camera_that_cannot_be_opened(fake_capture) -> None:
    fake_capture.opened = False
    with pytest.raises(SourceError, match=r"^1: could not be opened: no such camera"):
        open_source(1)
    with pytest.raises(SourceError, match=r"rtsp://x/y: could not be opened: unreachable"):
        open_source("rtsp://x/y")
    assert all(c.released for c in fake_capture.instances)


# -- annotate ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("shape", [(64, 64, 3), (720, 1280, 3), (1, 1, 3), (9, 200, 3)])
def test_annotate_draws_on_a_copy(shape: tuple[int, int, int]) -> None:
    image = np.full(shape, 200, dtype=np.uint8)
    out = annotate(image, ["red circle 0.93", "12.5 fps"])
    assert out.shape == shape and out.dtype == np.uint8 and (image == 200).all()
    if min(shape[:2]) >= 64:
        box = out[: shape[0] // 4, : shape[1] // 2]
        assert box.min() < 100 and box.max() > 220  # dark box with white text
        assert (out[-5:, -5:] == 200).all()  # the rest is untouched


def test_annotate_options() -> None:
    image = np.zeros((64, 48, 3), dtype=np.uint8)
    big = annotate(image, ["label"], min_side=256)
    assert big.shape == (6 * 64, 6 * 48, 3)  # smallest whole factor reaching 256 on the short side
    assert big[-1, -1].tolist() == [0, 0, 0]
    assert np.array_equal(annotate(image, []), image) and annotate(image, "one line").shape == image.shape
    with pytest.raises(InputError):
        annotate(image.astype(np.float32), ["x"])
    with pytest.raises(InputError):
        annotate(image, ["x"], min_side=0)


# -- VideoWriter and write_shift_video ----------------------------------------------------------------------------
@needs_cv2
def test_video_writer_round_trip_is_atomic(tmp_path: Path) -> None:
    target = tmp_path / "out.mp4"
    with VideoWriter(target, fps=12.0) as writer:
        for f in _frames(15):
            writer.write(f)
            assert not target.exists()  # only the temporary file exists while writing
        partial = [p for p in tmp_path.iterdir() if p != target]
        assert len(partial) == 1 and partial[0].name.startswith(".out.mp4.")
    assert writer.frames_written == 15 and writer.size == (64, 48)
    assert list(tmp_path.iterdir()) == [target]
    with open_source(target) as src:
        assert src.frame_count == 15 and src.fps == pytest.approx(12.0) and len(list(src)) == 15


@needs_cv2
def test_video_writer_errors_and_odd_sizes(tmp_path: Path) -> None:
    target = tmp_path / "out.mp4"
    with pytest.raises(RuntimeError), VideoWriter(target, keep_on_error=False) as writer:
        writer.write(_frames(1)[0])
        raise RuntimeError("crash while recording")
    assert list(tmp_path.iterdir()) == []  # neither the target nor a temporary file
    with pytest.raises(RuntimeError), VideoWriter(target) as writer:
        for f in _frames(4):
            writer.write(f)
        raise RuntimeError("camera lost")
    assert len(list(open_source(target))) == 4  # kept by default: a recording cut short stays playable
    with pytest.raises(VideoWriteError, match="does not exist"):
        VideoWriter(tmp_path / "no" / "such" / "dir.mp4")
    with pytest.raises(VideoWriteError, match="could not open a video writer"):
        VideoWriter(tmp_path / "out.unknownsuffix").write(_frames(1)[0])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.mp4"]
    with VideoWriter(tmp_path / "odd.mp4") as writer:
        writer.write(_frames(1, size=(63, 17))[0])
        with pytest.raises(InputError, match="fixed by the first frame"):
            writer.write(_frames(1, size=(64, 48))[0])
    assert writer.size == (64, 18)
    assert next(open_source(tmp_path / "odd.mp4")).image.shape == (18, 64, 3)
    with VideoWriter(tmp_path / "empty.mp4"):
        pass
    assert not (tmp_path / "empty.mp4").exists()


@needs_cv2
def test_video_writer_fit_letterboxes_frames_of_other_sizes(tmp_path: Path) -> None:
    from edgeclip.video_out import letterbox

    tall = np.full((40, 10, 3), 200, dtype=np.uint8)
    boxed = letterbox(tall, (64, 48))
    assert boxed.shape == (48, 64, 3)
    cols = np.nonzero(boxed[24, :, 0])[0]
    assert cols.min() >= 24 and cols.max() <= 39 and boxed[:, :20].max() == 0  # centred, black bars, aspect kept
    with VideoWriter(tmp_path / "mixed.mp4", fit=True) as writer:
        writer.write(_frames(1, size=(64, 48))[0])
        writer.write(tall)
        writer.write(_frames(1, size=(33, 99))[0])
    assert writer.frames_written == 3 and writer.size == (64, 48)
    assert [f.image.shape for f in open_source(tmp_path / "mixed.mp4")] == [(48, 64, 3)] * 3


@needs_cv2
def test_write_shift_video(tmp_path: Path) -> None:
    from edgeclip.data.video import write_shift_video

    video = write_shift_video(tmp_path / "shift.mp4", 21, shifts=("clean", "invert"), fps=8.0, seed=3)
    assert video.shifts == ("clean",) * 10 + ("invert",) * 11
    clean, inverted = ShapesDataset(21, seed=3, shift="clean"), ShapesDataset(21, seed=3, shift="invert")
    assert video.labels.tolist() == [clean[i][1] for i in range(21)] == [inverted[i][1] for i in range(21)]
    with open_source(video.path) as src:
        assert src.frame_count == 21 and src.fps == pytest.approx(8.0)
        frames = list(src)
    assert len(frames) == 21 and frames[0].image.shape == (64, 64, 3)
    for i in (0, 15):  # close to the rendered frame despite MPEG-4 compression
        expected = (clean if i < 10 else inverted)[i][0].astype(float)
        assert np.abs(frames[i].image.astype(float) - expected).mean() < 12
    with pytest.raises(InputError, match="unknown shift"):
        write_shift_video(tmp_path / "x.mp4", 4, shifts=("clean", "fog"))
