"""`backend="auto"`: the calibration's cache key and cache file, the winner rule, the dispatching encoders, the
model built from a choice, `edgeclip info` and the encoder bench's auto column.

No assertion here is about speed: timings are faked (an injected clock, or a monkeypatched calibration), so
every choice below is decided by the test. Each test keeps its caches in its own folder (``EDGECLIP_CACHE``).
"""

from __future__ import annotations

import copy
import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

import edgeclip
from edgeclip.errors import BackendError, InputError
from edgeclip.runtime import backend_choice as bc
from edgeclip.runtime.bundle import IMAGE_ONNX, IMAGE_TOWER, Bundle, open_bundle
from edgeclip.runtime.encoders import (
    DispatchImageEncoder,
    DispatchTextEncoder,
    ImageEncoder,
    OrtImageEncoder,
    TextEncoder,
    TorchImageEncoder,
    TorchTextEncoder,
    nearest_bucket,
)
from edgeclip.runtime.ort_session import CPU_EP, available_providers

HAS_ORT = CPU_EP in available_providers()
needs_ort = pytest.mark.skipif(not HAS_ORT, reason="onnxruntime is not installed")


@pytest.fixture(autouse=True)
def _own_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """A cache folder per test, and PyTorch's thread count put back (threads= sets it process-wide)."""
    monkeypatch.setenv("EDGECLIP_CACHE", str(tmp_path / "cache"))
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tiny(tiny_bundle: Path) -> Bundle:
    return open_bundle(tiny_bundle)


def _files() -> list[Path]:
    return sorted(bc.cache_dir().glob("*.json"))


def _fixed_choice(monkeypatch: pytest.MonkeyPatch, image: tuple[str, ...], text: tuple[str, ...]) -> list[str]:
    """Make every calibration return these winners (medians made up to match); returns the encoders timed."""
    timed: list[str] = []

    def fake(encoder: str, encoders: Any, make_inputs: Any, buckets: Any, **kw: Any) -> bc.EncoderChoice:
        timed.append(encoder)
        winners = image if encoder == "image" else text
        medians = {b: tuple(1.0 if w == b else 2.0 for w in winners) for b in encoders}
        return bc.EncoderChoice(encoder, tuple(buckets), winners, tuple(encoders), medians)

    monkeypatch.setattr(bc, "calibrate_encoder", fake)
    return timed


# -- the key --------------------------------------------------------------------------------------------------
def test_cache_key_changes_with_machine_versions_threads_and_bundle(tiny: Bundle,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    base = bc.cache_key(tiny, "cpu", 1)
    assert base == bc.cache_key(tiny, "cpu", 1)  # deterministic
    assert base["machine"]["cpu"] is not None and "simd" in base["machine"]
    digests = {bc.key_digest(base)}
    paths = {bc.cache_path(tiny, base)}

    def other(key: dict[str, Any]) -> None:
        assert bc.key_digest(key) not in digests
        assert bc.cache_path(tiny, key) not in paths
        digests.add(bc.key_digest(key))
        paths.add(bc.cache_path(tiny, key))

    other(bc.cache_key(tiny, "cpu", 2))  # threads
    other(bc.cache_key(tiny, "cpu", None))  # the libraries' default threads
    with monkeypatch.context() as m:  # another CPU, same everything else
        machine = dict(base["machine"], cpu="Another CPU", simd=["neon", "asimd"])
        m.setattr(bc, "_machine", lambda device: machine)
        other(bc.cache_key(tiny, "cpu", 1))
    with monkeypatch.context() as m:
        m.setattr(torch, "__version__", "0.0.1")
        other(bc.cache_key(tiny, "cpu", 1))
    with monkeypatch.context() as m:
        m.setattr(bc, "_ort_version", lambda: "0.0.2")
        other(bc.cache_key(tiny, "cpu", 1))
    with monkeypatch.context() as m:  # a GPU: the device and its name are in the key
        m.setattr(torch.cuda, "get_device_name", lambda device=None: "Fake GPU 16GB")
        gpu = bc.cache_key(tiny, "cuda", 1)
        assert gpu["machine"]["gpu"]["name"] == "Fake GPU 16GB" and gpu["machine"]["device"] == "cuda"
        other(gpu)
    reexported = copy.deepcopy(tiny.manifest)  # other weights in the image encoder
    reexported["files"][IMAGE_ONNX]["sha256"] = "0" * 64
    other(bc.cache_key(Bundle(tiny.path, reexported), "cpu", 1))


def test_bundle_location_is_not_in_the_key(tiny: Bundle, tmp_path: Path) -> None:
    moved = Bundle(tmp_path / "elsewhere.bundle", tiny.manifest)
    assert bc.key_digest(bc.cache_key(moved, "cpu", 1)) == bc.key_digest(bc.cache_key(tiny, "cpu", 1))


# -- the rule and the timing ----------------------------------------------------------------------------------
def test_nearest_bucket_is_on_a_log_scale() -> None:
    got = {n: nearest_bucket(n, (1, 8, 64)) for n in (0, 1, 2, 3, 8, 22, 23, 64, 1000)}
    assert got == {0: 1, 1: 1, 2: 1, 3: 8, 8: 8, 22: 8, 23: 64, 64: 64, 1000: 64}
    assert nearest_bucket(4, (1, 16, 128)) == 1  # a tie (4 = sqrt(1 * 16)) goes to the smaller bucket
    assert nearest_bucket(5, (16, 1, 128)) == 16  # bucket order does not matter
    with pytest.raises(ValueError):
        nearest_bucket(3, ())


def test_pick_winners_prefers_onnxruntime_within_the_margin() -> None:
    medians = {"torch": (0.97, 0.5, None), "onnxruntime": (1.0, 1.0, None)}
    # bucket 0: torch only 3% faster -> onnxruntime keeps it; bucket 1: torch 2x faster; bucket 2: not timed
    assert bc.pick_winners(medians, 3) == ("onnxruntime", "torch", "torch")
    assert bc.pick_winners({"torch": (2.0,), "onnxruntime": (1.0,)}, 1) == ("onnxruntime",)
    with pytest.raises(ValueError, match="smallest bucket"):
        bc.pick_winners({"torch": (None,)}, 1)


class _FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_calibrate_encoder_with_a_fake_clock() -> None:
    """Backend "a" costs 1 ms + 1 ms per item, "b" 10 ms + 0.1 ms per item: b wins from batch 16 up."""
    clock = _FakeClock()
    calls: dict[str, list[int]] = {"onnxruntime": [], "torch": []}
    syncs: list[int] = []

    def enc(name: str, fixed: float, per_item: float) -> Any:
        def call(x: torch.Tensor) -> torch.Tensor:
            calls[name].append(x.shape[0])
            clock.now += fixed + per_item * x.shape[0]
            return x
        return call

    encoders = {"onnxruntime": enc("onnxruntime", 1e-3, 1e-3), "torch": enc("torch", 10e-3, 0.1e-3)}
    choice = bc.calibrate_encoder("text", encoders, lambda n: (torch.zeros(n, 1),), (1, 16, 128),
                                  sync=lambda: syncs.append(1), clock=clock)
    assert choice.winners == ("onnxruntime", "torch", "torch")
    assert choice.medians_ms["onnxruntime"][0] == pytest.approx(2.0)
    assert choice.medians_ms["torch"][2] == pytest.approx(22.8)
    assert choice.backend_for(3) == "onnxruntime" and choice.backend_for(300) == "torch"
    assert choice.label == "onnxruntime@1/torch@16,128"
    assert len(syncs) == 2 * sum(len(v) for v in calls.values())  # before and after every clock read
    for name in calls:  # a warm-up plus at least one timed call per bucket, and never more than the cap
        for n in (1, 16, 128):
            assert 2 <= calls[name].count(n) <= 2 * bc.REPEATS + 1


def test_calibrate_encoder_skips_a_bucket_past_the_cap() -> None:
    clock = _FakeClock()

    def call(x: torch.Tensor) -> torch.Tensor:
        clock.now += 0.01 * x.shape[0]  # 10 ms per item: bucket 64 would take ~5 s
        return x

    choice = bc.calibrate_encoder("image", {"onnxruntime": call, "torch": call}, lambda n: (torch.zeros(n),),
                                  (1, 8, 64), max_s=2.0, clock=clock)
    assert choice.medians_ms["torch"][2] is None and choice.medians_ms["onnxruntime"][1] is not None
    assert choice.winners[2] == choice.winners[1]


# -- dispatch -------------------------------------------------------------------------------------------------
class _FakeImage(ImageEncoder):
    def __init__(self, name: str, seen: list[tuple[str, int]]) -> None:
        super().__init__(4, "cpu")
        self.name, self.seen = name, seen

    def _run(self, pixels: torch.Tensor) -> torch.Tensor:
        self.seen.append((self.name, pixels.shape[0]))
        return torch.zeros(pixels.shape[0], 2)


class _FakeText(TextEncoder):
    def __init__(self, name: str, seen: list[tuple[str, int]]) -> None:
        super().__init__(3, 7, 2, "cpu")
        self.name, self.seen = name, seen

    def _run(self, token_embeds: torch.Tensor, eot_index: torch.Tensor) -> torch.Tensor:
        self.seen.append((self.name, token_embeds.shape[0]))
        return torch.zeros(token_embeds.shape[0], 2)


def test_dispatch_image_encoder_routes_by_batch_size() -> None:
    seen: list[tuple[str, int]] = []
    enc = DispatchImageEncoder({"onnxruntime": _FakeImage("onnxruntime", seen), "torch": _FakeImage("torch", seen)},
                               (1, 8, 64), ("torch", "onnxruntime", "torch"))
    for n in (1, 2, 3, 22, 23, 100):
        assert enc(torch.zeros(n, 3, 4, 4)).shape == (n, 2)
    assert seen == [("torch", 1), ("torch", 2), ("onnxruntime", 3), ("onnxruntime", 22), ("torch", 23),
                    ("torch", 100)]
    with pytest.raises(InputError):  # inputs are still checked once, before routing
        enc(torch.zeros(2, 3, 5, 5))
    with pytest.raises(ValueError, match="no encoder"):
        DispatchImageEncoder({"torch": _FakeImage("torch", seen)}, (1, 8), ("torch", "onnxruntime"))


def test_dispatch_text_encoder_routes_by_prompt_count() -> None:
    seen: list[tuple[str, int]] = []
    enc = DispatchTextEncoder({"onnxruntime": _FakeText("onnxruntime", seen), "torch": _FakeText("torch", seen)},
                              (1, 16, 128), ("onnxruntime", "onnxruntime", "torch"))
    for n in (1, 10, 45, 46, 1000):
        enc(torch.zeros(n, 5, 3), torch.full((n,), 4))
    assert seen == [("onnxruntime", 1), ("onnxruntime", 10), ("onnxruntime", 45), ("torch", 46), ("torch", 1000)]
    assert enc.route(46) == "torch" and (enc.width, enc.context, enc.embed_dim) == (3, 7, 2)


# -- the model ------------------------------------------------------------------------------------------------
@needs_ort
def test_mixed_choice_builds_dispatchers_with_parity(tiny_bundle: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    timed = _fixed_choice(monkeypatch, image=("onnxruntime", "torch", "torch"),
                          text=("torch", "onnxruntime", "onnxruntime"))
    auto = edgeclip.load(tiny_bundle, backend="auto", threads=1)
    assert timed == ["image", "text"]
    assert isinstance(auto.image_encoder, DispatchImageEncoder) and isinstance(auto.text_encoder, DispatchTextEncoder)
    assert auto.backend == "auto(image=onnxruntime@1/torch@8,64, text=torch@1/onnxruntime@16,128)"
    desc = auto.describe()
    assert desc["backend"] == auto.backend and desc["backend_choice"]["image"]["winners"][0] == "onnxruntime"
    assert desc["backend_choice"]["source"] == "calibrated" and Path(desc["backend_choice"]["path"]).is_file()
    json.dumps(desc)  # JSON-ready

    ref = {b: edgeclip.load(tiny_bundle, backend=b, threads=1) for b in ("torch", "onnxruntime")}
    assert all(m.backend_choice is None for m in ref.values())
    size = auto.preprocess_cfg.image_size
    for n in (1, 2, 9):
        x = torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(n))
        got = auto.encode_images(x)
        for m in ref.values():
            torch.testing.assert_close(got, m.encode_images(x), atol=1e-4, rtol=1e-4)
    names = [f"class {i}" for i in range(20)]
    for texts in (names[:1], names):
        got = auto.encode_text(texts)
        for m in ref.values():
            torch.testing.assert_close(got, m.encode_text(texts), atol=1e-4, rtol=1e-4)
    frames = torch.randn(3, 3, size, size)
    preds = [m.classifier(["cat", "dog"]).predict(frames) for m in (auto, ref["torch"])]
    assert torch.equal(preds[0].labels, preds[1].labels)

    # the second load reads the cache: nothing is timed, the same encoders are built
    again = edgeclip.load(tiny_bundle, backend="auto", threads=1)
    assert timed == ["image", "text"] and again.backend_choice.source == "cache" and again.backend == auto.backend


@needs_ort
def test_one_backend_winning_everywhere_builds_only_that_one(tiny_bundle: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    _fixed_choice(monkeypatch, image=("onnxruntime",) * 3, text=("torch",) * 3)
    model = edgeclip.load(tiny_bundle, backend="auto", threads=1)
    assert isinstance(model.image_encoder, OrtImageEncoder) and isinstance(model.text_encoder, TorchTextEncoder)
    assert model.backend == "auto(image=onnxruntime, text=torch)"
    _fixed_choice(monkeypatch, image=("torch",) * 3, text=("torch",) * 3)
    model = edgeclip.load(tiny_bundle, backend="auto", threads=2)  # another thread count: another calibration
    assert model.backend == "torch" and isinstance(model.image_encoder, TorchImageEncoder)


def test_auto_without_onnxruntime_runs_torch_and_times_nothing(tiny_bundle: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    timed = _fixed_choice(monkeypatch, image=("onnxruntime",) * 3, text=("onnxruntime",) * 3)
    monkeypatch.setattr(bc, "available_providers", lambda: [])
    model = edgeclip.load(tiny_bundle, backend="auto", threads=1)
    assert model.backend == "torch" and timed == [] and model.backend_choice.source == "single"
    assert isinstance(model.image_encoder, TorchImageEncoder) and isinstance(model.text_encoder, TorchTextEncoder)
    assert _files() == []  # nothing measured, nothing cached


@needs_ort
def test_auto_without_image_tower(tiny: Bundle, monkeypatch: pytest.MonkeyPatch) -> None:
    manifest = copy.deepcopy(tiny.manifest)
    del manifest["files"][IMAGE_TOWER]
    no_tower = Bundle(tiny.path, manifest)
    timed = _fixed_choice(monkeypatch, image=("torch",) * 3, text=("torch",) * 3)
    model = edgeclip.EdgeClip(no_tower, backend="auto", threads=1)
    assert timed == ["text"] and isinstance(model.image_encoder, OrtImageEncoder)
    assert model.backend == "auto(image=onnxruntime, text=torch)"
    assert model.backend_choice.image.candidates == ("onnxruntime",)
    monkeypatch.setattr(bc, "available_providers", lambda: [])
    with pytest.raises(BackendError, match="no backend can run the image encoder"):
        edgeclip.EdgeClip(no_tower, backend="auto", threads=1)


def test_explicit_backends_are_not_calibrated(tiny_bundle: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(bc, "choose_backends", lambda *a, **k: pytest.fail("explicit backend was calibrated"))
    model = edgeclip.load(tiny_bundle, backend="torch", threads=1)
    assert model.backend == "torch" and model.backend_choice is None and model.describe()["backend_choice"] is None
    assert _files() == []


# -- the cache file -------------------------------------------------------------------------------------------
@needs_ort
def test_corrupt_or_foreign_cache_is_rewritten(tiny_bundle: Path, monkeypatch: pytest.MonkeyPatch,
                                               caplog: pytest.LogCaptureFixture) -> None:
    timed = _fixed_choice(monkeypatch, image=("onnxruntime",) * 3, text=("torch",) * 3)
    first = edgeclip.load(tiny_bundle, backend="auto", threads=1).backend_choice
    (path,) = _files()
    assert Path(first.path) == path and json.loads(path.read_text())["format"] == bc.FORMAT
    assert not list(path.parent.glob("*.tmp"))  # the atomic write left no temp file

    for bad in ("{ not json", json.dumps({"format": bc.FORMAT, "key": {"machine": "another"}, "choice": {}}),
                json.dumps([1, 2, 3]), ""):
        path.write_text(bad)
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="edgeclip.runtime.backend_choice"):
            again = edgeclip.load(tiny_bundle, backend="auto", threads=1).backend_choice
        assert again.source == "calibrated" and "ignoring backend calibration cache" in caplog.text
        assert json.loads(path.read_text())["key"] == bc.cache_key(open_bundle(tiny_bundle), "cpu", 1)
    assert len(timed) == 2 * 5  # timed once at first, then once per bad file

    # a well-formed file whose winners are not backends that can run is not trusted either
    data = json.loads(path.read_text())
    data["choice"]["image"]["winners"] = ["tensorflow"] * 3
    path.write_text(json.dumps(data))
    assert edgeclip.load(tiny_bundle, backend="auto", threads=1).backend_choice.source == "calibrated"
    assert bc.read_cached(open_bundle(tiny_bundle), "cpu", 1).source == "cache"


def test_unwritable_cache_is_logged_not_raised(tiny_bundle: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                               caplog: pytest.LogCaptureFixture) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    monkeypatch.setenv("EDGECLIP_CACHE", str(blocker))
    _fixed_choice(monkeypatch, image=("torch",) * 3, text=("torch",) * 3)
    with caplog.at_level(logging.WARNING, logger="edgeclip.runtime.backend_choice"):
        model = edgeclip.load(tiny_bundle, backend="auto", threads=1)
    assert model.backend == "torch"
    if HAS_ORT:  # something was timed, so there was something to write
        assert "could not write backend calibration cache" in caplog.text


@needs_ort
def test_real_calibration_on_the_tiny_bundle(tiny_bundle: Path) -> None:
    """The real timing path, end to end; what it picks is the machine's business, not the test's."""
    model = edgeclip.load(tiny_bundle, backend="auto", threads=1)
    choice = model.backend_choice
    assert choice.source == "calibrated" and choice.seconds > 0
    for enc, buckets in (("image", bc.IMAGE_BUCKETS), ("text", bc.TEXT_BUCKETS)):
        c = choice[enc]
        assert c.buckets == buckets and set(c.winners) <= {"torch", "onnxruntime"}
        assert all(v is not None and v > 0 for vals in c.medians_ms.values() for v in vals)
    assert isinstance(model.backend, str) and model.backend
    size = model.preprocess_cfg.image_size
    ref = edgeclip.load(tiny_bundle, backend="torch", threads=1)
    x = torch.randn(8, 3, size, size)
    torch.testing.assert_close(model.encode_images(x), ref.encode_images(x), atol=1e-4, rtol=1e-4)


def test_cache_root_follows_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EDGECLIP_CACHE", str(tmp_path / "x"))
    assert bc.cache_dir() == tmp_path / "x" / "backends"
    monkeypatch.delenv("EDGECLIP_CACHE")
    assert bc.cache_dir() == Path.home() / ".cache" / "edgeclip" / "backends"


# -- edgeclip info --------------------------------------------------------------------------------------------
@needs_ort
def test_info_shows_the_choice(tiny_bundle: Path, monkeypatch: pytest.MonkeyPatch,
                               capsys: pytest.CaptureFixture[str]) -> None:
    from edgeclip.cli import main

    assert main(["info", str(tiny_bundle), "--threads", "1", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["backend_choice"] is None
    assert main(["info", str(tiny_bundle), "--threads", "1"]) == 0
    assert "not calibrated for this bundle here yet" in capsys.readouterr().out

    timed = _fixed_choice(monkeypatch, image=("onnxruntime", "torch", "torch"), text=("torch",) * 3)
    edgeclip.load(tiny_bundle, backend="auto", threads=1)
    assert main(["info", str(tiny_bundle), "--threads", "1"]) == 0
    text = capsys.readouterr().out
    assert "auto -> auto(image=onnxruntime@1/torch@8,64, text=torch)" in text
    assert "auto image    1 image -> onnxruntime (onnxruntime 1 ms, torch 2 ms); 8 images -> torch" in text
    assert "auto text     1 prompt -> torch" in text and "cached in" in text
    assert not any(ch in text for ch in "{}[]'")  # plain text, no Python reprs
    assert main(["info", str(tiny_bundle), "--threads", "1", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["backend_choice"]["source"] == "cache" and info["backend_choice"]["text"]["winners"] == ["torch"] * 3
    assert timed == ["image", "text"]

    assert main(["info", str(tiny_bundle), "--threads", "1", "--calibrate", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["backend_choice"]["source"] == "calibrated"
    assert timed == ["image", "text"] * 2


# -- the bench ------------------------------------------------------------------------------------------------
@needs_ort
def test_bench_encoders_auto_pick_and_auto_row(tiny_bundle: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from edgeclip.bench import bench_encoders

    _fixed_choice(monkeypatch, image=("torch", "onnxruntime", "onnxruntime"), text=("onnxruntime",) * 3)
    res = bench_encoders(tiny_bundle, batches=(1, 8), text_batches=(2,), repeats=2, warmup=0, threads=1,
                         time_budget_s=0.05, progress=False)
    picks = {(r["encoder"], r["batch"]): r["auto_pick"] for r in res["rows"]}
    assert picks == {("image", 1): "torch", ("image", 8): "onnxruntime", ("text", 2): "onnxruntime"}
    assert "auto_pick" in res["columns"] and res["config"]["auto"]["image"]["winners"][0] == "torch"
    assert any(n.startswith("auto_pick:") and "image 1 -> torch" in n for n in res["notes"])
    assert {r["backend"] for r in res["rows"]} == {"torch", "onnxruntime"}  # auto is not timed unless asked

    res = bench_encoders(tiny_bundle, batches=(2,), text_batches=(), backends=["torch", "onnxruntime", "auto"],
                         repeats=2, warmup=0, threads=1, time_budget_s=0.05, progress=False)
    rows = {r["backend"]: r for r in res["rows"]}
    assert set(rows) == {"torch", "onnxruntime", "auto"}
    assert rows["auto"]["median_ms"] > 0 and rows["auto"]["speedup"] > 0 and rows["auto"]["auto_pick"] == "torch"
    assert bench_encoders(tiny_bundle, batches=(1,), text_batches=(), repeats=1, warmup=0, threads=1, auto=False,
                          progress=False)["rows"][0]["auto_pick"] is None


@needs_ort
def test_concurrent_loads_calibrate_once(tiny_bundle: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Loads in several threads share one calibration (the others read its cache), and the model they get can
    be called from several threads at once."""
    from concurrent.futures import ThreadPoolExecutor

    timed = _fixed_choice(monkeypatch, image=("onnxruntime", "torch", "torch"), text=("torch",) * 3)
    b = open_bundle(tiny_bundle)
    with ThreadPoolExecutor(3) as pool:
        models = list(pool.map(lambda _: edgeclip.EdgeClip(b, backend="auto", threads=1), range(3)))
    assert timed == ["image", "text"] and len({m.backend for m in models}) == 1
    assert sorted(m.backend_choice.source for m in models) == ["cache", "cache", "calibrated"]
    size = models[0].preprocess_cfg.image_size
    xs = [torch.randn(n, 3, size, size) for n in (1, 9, 1, 9)]
    with ThreadPoolExecutor(4) as pool:
        outs = list(pool.map(models[0].encode_images, xs))
    for x, out in zip(xs, outs, strict=True):
        torch.testing.assert_close(out, models[1].encode_images(x))
