"""TensorRT engines: profiles, cache keys and invalidation, the build calls and the parity gate, the backend's
binding, all against the recording stand-in in ``tests/fake_tensorrt.py`` (it runs the parsed ONNX through
onnxruntime on the CPU); the real build is the `tensorrt`-marked test at the end."""

from __future__ import annotations

import json
import shutil
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from fake_tensorrt import make_fake_tensorrt

import edgeclip
from edgeclip.errors import BackendError, ExportError, InputError
from edgeclip.export.tensorrt import MIN_COS, build_engines
from edgeclip.runtime import bundle as B
from edgeclip.runtime import engine_cache as EC
from edgeclip.runtime.io_spec import EOT_INDEX, IMAGE_EMBEDS, PIXELS, TOKEN_EMBEDS
from edgeclip.runtime.ort_session import CPU_EP, CUDA_EP, TRT_EP, choose_providers
from edgeclip.runtime.tokenizer import Tokenizer
from edgeclip.runtime.trt_runner import TrtImageEncoder, TrtRunner, TrtTextEncoder

HERE = EC.HostIdentity("10.3.0", "Fake GPU", "8.7")


@pytest.fixture
def bundle_copy(tmp_path: Path) -> B.Bundle:
    dst = tmp_path / "micro"
    shutil.copytree(edgeclip.default_bundle(), dst)
    return B.open_bundle(dst)


@pytest.fixture
def fake() -> object:
    return make_fake_tensorrt("10.3.0")


def _build(bundle: B.Bundle, fake: object, precision: str = "fp32", **kw: object) -> object:
    kw.setdefault("max_batch", 8)
    return build_engines(bundle, precision, device="cpu", here=HERE, trt=fake, **kw)


def _names(fake: object) -> list[str]:
    return [c[0] for c in fake.CALLS]


# -- profiles -------------------------------------------------------------------------------------------------
def test_image_profile_is_batch_1_to_max_with_the_optimum_at_64(bundle_copy: B.Bundle) -> None:
    s = bundle_copy.image_size
    assert EC.profile_for(bundle_copy, "image", 128).shapes == (
        (PIXELS.name, (1, 3, s, s), (64, 3, s, s), (128, 3, s, s)),)
    assert EC.profile_for(bundle_copy, "image", 8).shapes[0][2] == (8, 3, s, s)  # opt never above max
    for bad in (0, -1, True, 10**6, 2.5):
        with pytest.raises(InputError, match="max batch"):
            EC.profile_for(bundle_copy, "image", bad)  # type: ignore[arg-type]


def test_text_profile_runs_the_sequence_from_1_to_context_with_the_optimum_at_the_typical_prompt(
        bundle_copy: B.Bundle) -> None:
    t = bundle_copy.spec.text
    _, eot = Tokenizer(t.tokenizer).ids([f"a photo of a {c}." for c in bundle_copy.spec.classes])
    typical = int(eot.max()) + 1
    assert 3 < typical < t.context_length
    prof = EC.profile_for(bundle_copy, "text", 256)
    assert prof.shapes == (
        (TOKEN_EMBEDS.name, (1, 1, t.width), (64, typical, t.width), (256, t.context_length, t.width)),
        (EOT_INDEX.name, (1,), (64,), (256,)))
    assert prof.max_batch == 256
    assert EC.Profile.from_dict(prof.to_dict()) == prof


def test_onnxruntime_trt_ep_gets_explicit_profile_shapes(bundle_copy: B.Bundle, monkeypatch: pytest.MonkeyPatch,
                                                        tmp_path: Path) -> None:
    opts = EC.ort_trt_profile_options(EC.profile_for(bundle_copy, "image", 256))
    s = bundle_copy.image_size
    assert opts == {"trt_profile_min_shapes": f"pixels:1x3x{s}x{s}", "trt_profile_opt_shapes": f"pixels:64x3x{s}x{s}",
                    "trt_profile_max_shapes": f"pixels:256x3x{s}x{s}"}
    text = EC.ort_trt_profile_options(EC.profile_for(bundle_copy, "text", 4))
    assert text["trt_profile_max_shapes"] == f"token_embeds:4x77x{bundle_copy.spec.text.width},eot_index:4"
    monkeypatch.setattr("edgeclip.runtime.ort_session.available_providers", lambda: [TRT_EP, CUDA_EP, CPU_EP])
    providers = choose_providers("cuda", tmp_path / "cache", opts)
    name, trt_opts = providers[0]
    assert name == TRT_EP and trt_opts["trt_profile_opt_shapes"] == opts["trt_profile_opt_shapes"]
    assert trt_opts["trt_engine_cache_enable"] and providers[-1] == CPU_EP


# -- building -------------------------------------------------------------------------------------------------
def test_fp32_build_is_strongly_typed_tf32_off_with_profiles_workspace_and_timing_cache(
        bundle_copy: B.Bundle, fake: object) -> None:
    res = _build(bundle_copy, fake, workspace_gb=1.5)
    assert [(e["encoder"], e["precision"], e["status"]) for e in res.engines] == [
        ("image", "fp32", "built"), ("text", "fp32", "built")]
    flags = [c[1] for c in fake.CALLS if c[0] == "create_network"]
    assert flags == [1 << int(fake.NetworkDefinitionCreationFlag.STRONGLY_TYPED)] * 2
    assert not [c for c in fake.CALLS if c[0] == "set_flag"]  # never the weakly typed FP16 / INT8 flags
    assert [c[1] for c in fake.CALLS if c[0] == "clear_flag"] == [fake.BuilderFlag.TF32] * 2
    assert [c[1:] for c in fake.CALLS if c[0] == "set_memory_pool_limit"] == [
        (fake.MemoryPoolType.WORKSPACE, int(1.5 * (1 << 30)))] * 2
    shapes = {c[1]: c[2:] for c in fake.CALLS if c[0] == "set_shape"}
    assert set(shapes) == {PIXELS.name, TOKEN_EMBEDS.name, EOT_INDEX.name}
    assert shapes[PIXELS.name][2][0] == 8
    # the timing cache: empty for the first engine, the first engine's for the second, kept on disk
    first, second = (c[1] for c in fake.CALLS if c[0] == "create_timing_cache")
    assert first == 0 and second > 0
    assert list((bundle_copy.path / "engines").glob("timing-*.cache"))
    for e in res.engines:
        assert e["parity"]["min_cos"] >= MIN_COS["fp32"] and e["parity"]["n"] > 0
        sidecar = json.loads(Path(e["file"]).with_suffix(".json").read_text())
        assert sidecar["key"]["tensorrt"] == "10.3.0" and sidecar["key"]["gpu"] == "Fake GPU"
        assert sidecar["plan_sha256"] == B.sha256_file(Path(e["file"]))
    # the bundle itself still verifies: engines live beside its files, not in its manifest
    B.open_bundle(bundle_copy.path, verify=True)


def test_a_valid_engine_is_reused_and_force_rebuilds(bundle_copy: B.Bundle, fake: object) -> None:
    _build(bundle_copy, fake)
    builds = _names(fake).count("build_serialized_network")
    again = _build(bundle_copy, fake)
    assert [e["status"] for e in again.engines] == ["cached", "cached"]
    assert _names(fake).count("build_serialized_network") == builds
    forced = _build(bundle_copy, fake, force=True, encoders=("image",))
    assert [e["status"] for e in forced.engines] == ["built"]
    other_profile = _build(bundle_copy, fake, max_batch=4, encoders=("image",))
    assert other_profile.engines[0]["status"] == "built"  # another profile is another key


def test_fp16_builds_parse_an_fp16_graph_made_from_the_fp32_bundle(bundle_copy: B.Bundle, fake: object) -> None:
    res = _build(bundle_copy, fake, "fp16")
    parsed = [c[1] for c in fake.CALLS if c[0] == "parse_from_file"]
    assert all(not p.startswith(str(bundle_copy.path)) for p in parsed)
    for e in res.engines:
        key = json.loads(Path(e["file"]).with_suffix(".json").read_text())["key"]
        assert key["precision"] == "fp16" and key["parsed_sha256"] != key["bundle_file_sha256"]
        assert MIN_COS["fp16"] <= e["parity"]["min_cos"]
    # the FP16 graph is made the same way every time, so its engines are found again
    assert [e["status"] for e in _build(bundle_copy, fake, "fp16").engines] == ["cached", "cached"]


def test_tensorrt_11_without_the_weak_precision_flags_builds_the_same_way(bundle_copy: B.Bundle) -> None:
    fake11 = make_fake_tensorrt("11.0.0")
    assert not hasattr(fake11.BuilderFlag, "FP16")
    res = build_engines(bundle_copy, "fp16", 8, device="cpu", here=EC.HostIdentity("11.0.0", "Fake GPU", "8.7"),
                        trt=fake11)
    assert [e["status"] for e in res.engines] == ["built", "built"]


def test_tensorrt_8_is_refused(bundle_copy: B.Bundle) -> None:
    with pytest.raises(BackendError, match=r"8\.6\.1 is too old.*out of scope"):
        build_engines(bundle_copy, "fp32", 8, device="cpu", here=HERE, trt=make_fake_tensorrt("8.6.1"))


def test_int8_needs_an_int8_bundle_and_bad_arguments_are_refused(bundle_copy: B.Bundle, fake: object) -> None:
    with pytest.raises(InputError, match="edgeclip quantize"):
        _build(bundle_copy, fake, "int8")
    with pytest.raises(InputError, match="precision"):
        _build(bundle_copy, fake, "bf16")
    with pytest.raises(InputError, match="encoders"):
        _build(bundle_copy, fake, encoders=("audio",))
    with pytest.raises(BackendError, match="no CUDA GPU"):
        build_engines(bundle_copy, "fp32", 8, device="cpu", here=EC.HostIdentity("10.3.0", None, None), trt=fake)
    assert not (bundle_copy.path / "engines").exists() or not list((bundle_copy.path / "engines").glob("*.plan"))


def test_an_engine_failing_the_parity_gate_is_refused_with_the_figures_and_not_kept(
        bundle_copy: B.Bundle, fake: object) -> None:
    fake.OUTPUT_NOISE = 0.5
    with pytest.raises(ExportError, match=r"parity gate: min cosine 0\.\d+.*need >= 0.9999"):
        _build(bundle_copy, fake, encoders=("image",))
    assert not list((bundle_copy.path / "engines").glob("*.plan"))
    assert not list((bundle_copy.path / "engines").glob("*.json"))


# -- validity -------------------------------------------------------------------------------------------------
def test_engines_are_valid_only_for_their_tensorrt_gpu_graph_and_bytes(bundle_copy: B.Bundle, fake: object) -> None:
    _build(bundle_copy, fake, encoders=("image",))
    (rec,) = EC.list_engines(bundle_copy, HERE)
    assert rec.valid and EC.find_engine(bundle_copy, "image", "fp32", HERE) == rec
    assert EC.pick_engine(bundle_copy, "image", here=HERE).path == rec.path

    def problems(here: EC.HostIdentity, bundle: B.Bundle = bundle_copy) -> str:
        (r,) = EC.list_engines(bundle, here)
        assert not r.valid
        return "; ".join(r.problems)

    assert "this machine has 10.4.0" in problems(EC.HostIdentity("10.4.0", "Fake GPU", "8.7"))
    assert "this GPU is Jetson Orin" in problems(EC.HostIdentity("10.3.0", "Jetson Orin", "8.7"))
    assert "compute 9.0" in problems(EC.HostIdentity("10.3.0", "Fake GPU", "9.0"))
    assert "TensorRT is not installed" in problems(EC.HostIdentity(None, None, None))
    # the bundle's graph changed since the build
    manifest = json.loads(json.dumps(bundle_copy.manifest))
    manifest["files"][B.IMAGE_ONNX]["sha256"] = "0" * 64
    changed = B.Bundle(bundle_copy.path, manifest)
    assert "changed since the build" in problems(HERE, changed)
    assert EC.find_engine(changed, "image", "fp32", HERE) is None
    # a corrupt plan
    with rec.path.open("ab") as f:
        f.write(b"x")
    assert "does not match its record" in problems(HERE)
    with pytest.raises(BackendError, match="edgeclip engine build"):
        EC.pick_engine(bundle_copy, "image", here=HERE)
    # rebuilding replaces this host's dead engine and keeps the new one
    _build(bundle_copy, fake, encoders=("image",))
    (fresh,) = EC.list_engines(bundle_copy, HERE)
    assert fresh.valid


def test_a_sidecar_that_is_not_an_engine_record_is_ignored(bundle_copy: B.Bundle) -> None:
    folder = bundle_copy.path / "engines"
    folder.mkdir()
    (folder / "junk.json").write_text('{"format": "something else"}')
    (folder / "broken.json").write_text("{not json")
    assert EC.list_engines(bundle_copy, HERE) == []


def test_auto_lists_tensorrt_first_on_cuda_only_with_a_valid_engine(bundle_copy: B.Bundle, fake: object,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    from edgeclip.runtime.backend_choice import candidate_backends

    monkeypatch.setattr(EC, "host_identity", lambda: HERE)
    assert "tensorrt" not in candidate_backends(bundle_copy, "cuda")["image"]
    _build(bundle_copy, fake, encoders=("image",))
    cands = candidate_backends(bundle_copy, "cuda")
    assert cands["image"][0] == "tensorrt" and "tensorrt" not in cands["text"]
    assert "tensorrt" not in candidate_backends(bundle_copy, "cpu")["image"]


# -- running --------------------------------------------------------------------------------------------------
def _runner(bundle: B.Bundle, fake: object, encoder: str) -> TrtRunner:
    rec = EC.pick_engine(bundle, encoder, here=HERE)
    return TrtRunner(rec.path.read_bytes(), "cpu", trt=fake)


def test_image_engine_matches_onnxruntime_and_chunks_batches_over_the_profile(bundle_copy: B.Bundle,
                                                                              fake: object) -> None:
    _build(bundle_copy, fake, encoders=("image",))
    enc = TrtImageEncoder(_runner(bundle_copy, fake, "image"), bundle_copy.image_size)
    ref = edgeclip.load(bundle_copy, backend="onnxruntime").image_encoder
    s = bundle_copy.image_size
    for n in (1, 8, 20):
        del fake.CALLS[:]
        pixels = torch.randn(n, 3, s, s, generator=torch.Generator().manual_seed(n))
        got = enc(pixels)
        assert got.dtype == torch.float32 and got.shape == (n, bundle_copy.embed_dim)
        np.testing.assert_allclose(got.numpy(), ref(pixels).numpy(), rtol=1e-4, atol=1e-5)
        runs = [c for c in fake.CALLS if c[0] == "execute_async_v3"]
        assert len(runs) == -(-n // 8)  # max batch 8: 20 images run as 8 + 8 + 4
        assert [c[2][0] for c in fake.CALLS if c[0] == "set_input_shape"] == [min(8, n - i) for i in range(0, n, 8)]
        addresses = {c[1] for c in fake.CALLS if c[0] == "set_tensor_address"}
        assert addresses == {PIXELS.name, IMAGE_EMBEDS.name}


def test_text_engine_cuts_a_causal_tower_to_the_longest_prompt(bundle_copy: B.Bundle, fake: object) -> None:
    _build(bundle_copy, fake, encoders=("text",), max_text_batch=16)
    t = bundle_copy.spec.text
    model = edgeclip.load(bundle_copy, backend="onnxruntime")
    enc = TrtTextEncoder(_runner(bundle_copy, fake, "text"), t.width, t.context_length, bundle_copy.embed_dim,
                         t.causal)
    ids, eot = model.tokenizer.ids([f"a photo of a {c}." for c in bundle_copy.spec.classes])
    emb = model.text_tower.embed_tokens(ids).detach()
    del fake.CALLS[:]
    got = enc(emb, eot)
    np.testing.assert_allclose(got.numpy(), model.text_encoder(emb, eot).numpy(), rtol=1e-4, atol=1e-5)
    seq = {c[2][1] for c in fake.CALLS if c[0] == "set_input_shape" and c[1] == TOKEN_EMBEDS.name}
    assert seq == {int(eot.max()) + 1}


def test_a_shape_outside_the_profile_is_an_input_error_and_threads_are_serialised(bundle_copy: B.Bundle,
                                                                                 fake: object) -> None:
    _build(bundle_copy, fake, encoders=("image",))
    runner = _runner(bundle_copy, fake, "image")
    with pytest.raises(InputError, match="does not accept pixels of shape"):
        runner({PIXELS.name: torch.zeros(1, 3, 16, 16)})
    s = bundle_copy.image_size
    inputs = [torch.randn(5, 3, s, s, generator=torch.Generator().manual_seed(i)) for i in range(6)]
    expected = [runner({PIXELS.name: x})[IMAGE_EMBEDS.name] for x in inputs]
    results: dict[int, torch.Tensor] = {}

    def work(i: int) -> None:
        results[i] = runner({PIXELS.name: inputs[i]})[IMAGE_EMBEDS.name]

    threads = [threading.Thread(target=work, args=(i,)) for i in range(6)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    for i in range(6):
        torch.testing.assert_close(results[i], expected[i])


def test_a_plan_from_another_tensorrt_version_does_not_deserialise(bundle_copy: B.Bundle, fake: object) -> None:
    _build(bundle_copy, fake, encoders=("image",))
    plan = EC.pick_engine(bundle_copy, "image", here=HERE).path.read_bytes()
    with pytest.raises(BackendError, match="could not deserialise"):
        TrtRunner(plan, "cpu", trt=make_fake_tensorrt("10.4.0"))
    with pytest.raises(BackendError, match="CUDA graph needs a CUDA device"):
        TrtRunner(plan, "cpu", trt=fake, cuda_graph_batch=4)


def test_the_tensorrt_backend_needs_tensorrt_and_cuda(bundle_copy: B.Bundle) -> None:
    pytest.importorskip("onnxruntime")
    import importlib.util

    if importlib.util.find_spec("tensorrt") is None:
        with pytest.raises(BackendError, match="TensorRT is not installed"):
            edgeclip.load(bundle_copy, backend="tensorrt")
    with pytest.raises(InputError, match="engine_precision"):
        edgeclip.load(bundle_copy, backend="onnxruntime", engine_precision="fp8")


def test_cli_engine_list_and_info_show_the_engines(bundle_copy: B.Bundle, fake: object,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    from edgeclip.cli import main

    _build(bundle_copy, fake, encoders=("image",))
    assert main(["engine", "list", "--bundle", str(bundle_copy.path), "--json"]) == 0
    (listed,) = json.loads(capsys.readouterr().out)
    assert listed["encoder"] == "image" and listed["tensorrt"] == "10.3.0" and listed["max_batch"] == 8
    assert listed["valid"] is (EC.host_identity() == HERE)
    assert main(["info", str(bundle_copy.path)]) == 0
    out = capsys.readouterr().out
    assert f"engine        {Path(listed['file']).name} (image fp32, TensorRT 10.3.0, Fake GPU 8.7" in out
    import importlib.util

    if importlib.util.find_spec("tensorrt") is None:
        assert main(["engine", "build", "--bundle", str(bundle_copy.path)]) == 2
        assert "TensorRT is not installed" in capsys.readouterr().err


# -- a real engine ----------------------------------------------------------------------------------------------
@pytest.mark.gpu
@pytest.mark.tensorrt
def test_real_tensorrt_fp16_engine_of_the_micro_bundle(bundle_copy: B.Bundle) -> None:
    # the gpu and tensorrt markers skip it without CUDA or TensorRT (conftest)
    res = build_engines(bundle_copy, "fp16", 64)
    assert all(e["parity"]["min_cos"] >= MIN_COS["fp16"] for e in res.engines)
    model = edgeclip.load(bundle_copy, backend="tensorrt", device="cuda", cuda_graph_batch=64)
    ref = edgeclip.load(bundle_copy, backend="torch", device="cuda")
    s = bundle_copy.image_size
    pixels = torch.randn(64, 3, s, s, device="cuda")
    for _ in range(2):  # the second call replays the CUDA graph
        cos = torch.nn.functional.cosine_similarity(model.image_encoder(pixels), ref.image_encoder(pixels))
        assert float(cos.min()) >= MIN_COS["fp16"]


def test_int8_builds_the_qdq_image_graph_and_keeps_the_text_engine_fp32(tmp_path: Path, fake: object) -> None:
    from edgeclip.export.quantize import quantize_bundle

    res = quantize_bundle(edgeclip.default_bundle(), tmp_path / "micro-int8", calib="shapes:16", method="minmax")
    int8 = B.open_bundle(res.path)
    assert EC.graph_precision(int8, "image") == "int8" and EC.graph_precision(int8, "text") == "fp32"
    built = _build(int8, fake, "int8")
    assert [(e["encoder"], e["precision"]) for e in built.engines] == [("image", "int8"), ("text", "fp32")]
    parsed = [c[1] for c in fake.CALLS if c[0] == "parse_from_file"]
    assert parsed == [str(int8.file(B.IMAGE_ONNX)), str(int8.file(B.TEXT_ONNX))]  # the variant's own graphs
    assert built.engines[0]["parity"]["required"] == MIN_COS["int8"]
    assert EC.pick_engine(int8, "image", here=HERE).key.build == "int8"
    with pytest.raises(InputError, match="int8 image graph; it cannot be built at fp16"):
        _build(int8, fake, "fp16")


def test_onnxruntime_trt_cache_folder_changes_with_tensorrt_and_gpu(bundle_copy: B.Bundle,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    import onnxruntime

    monkeypatch.setattr(EC, "host_identity", lambda: HERE)
    here = EC.ort_trt_cache_dir(bundle_copy)
    assert here.parent == bundle_copy.path / "engines" / "ort_trt"
    assert onnxruntime.__version__ in here.name and "10.3.0" in here.name and "Fake_GPU" in here.name
    monkeypatch.setattr(EC, "host_identity", lambda: EC.HostIdentity("10.4.0", "Fake GPU", "8.7"))
    assert EC.ort_trt_cache_dir(bundle_copy) != here
