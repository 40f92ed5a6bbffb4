"""The benchmark harness: timing statistics, reports, and the encoder bench on a tiny bundle.

No assertion here is about speed: only shapes of results, fields and invariants. `tiny_bundle` is
the session fixture of tests/conftest.py (test-tiny-vit exported once).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from edgeclip.bench import bench_encoders, write_report
from edgeclip.bench.encoders import class_names, default_backends, parse_backend, prompts
from edgeclip.bench.report import machine_info, markdown_table
from edgeclip.bench.timing import TimingStats, measure, measure_interleaved, ratio_with_spread
from edgeclip.runtime.ort_session import CPU_EP, available_providers

HAS_ORT = CPU_EP in available_providers()


# -- timing -------------------------------------------------------------------------------------
def _work() -> int:
    return sum(i * i for i in range(2000))


def test_measure_counts_and_order() -> None:
    calls = []
    st = measure(lambda: calls.append(_work()), warmup=2, repeats=7)
    assert st.n == 7 == len(st.samples_ms)
    assert len(calls) == 9  # warm-up calls are made but not recorded
    assert 0 < st.min_ms <= st.median_ms <= st.p90_ms <= max(st.samples_ms)
    assert st.min_ms <= st.mean_ms <= max(st.samples_ms)


def test_measure_sync_called_around_every_timed_call() -> None:
    syncs = []
    measure(_work, warmup=1, repeats=4, sync=lambda: syncs.append(1))
    assert len(syncs) == 2 * (1 + 4)


def test_measure_min_time_and_max_time() -> None:
    st = measure(_work, warmup=0, repeats=1, min_time=0.02)
    assert sum(st.samples_ms) >= 20.0
    # a tiny budget stops at min_repeats even though repeats asks for more
    st = measure(_work, warmup=5, repeats=1000, max_time=1e-9, min_repeats=3)
    assert st.n == 3
    with pytest.raises(ValueError, match="repeats"):
        measure(_work, repeats=0)
    with pytest.raises(ValueError, match="max_time"):
        measure(_work, max_time=-1.0)


def test_ratio_with_spread() -> None:
    a = TimingStats.from_samples([1.0, 1.0, 1.0, 1.0])
    b = TimingStats.from_samples([2.0, 2.0, 3.0, 2.0])
    r = ratio_with_spread(a, b)
    assert r["ratio"] == pytest.approx(2.0)
    assert r["ratio_lo"] <= r["ratio"] <= r["ratio_hi"]
    assert r["ratio_p90"] == pytest.approx(b.p90_ms)
    same = ratio_with_spread(a, a)
    assert same == {"ratio": 1.0, "ratio_p90": 1.0, "ratio_lo": 1.0, "ratio_hi": 1.0, "ratio_of_medians": 1.0}
    with pytest.raises(ValueError):
        TimingStats.from_samples([])


# -- report -------------------------------------------------------------------------------------
def test_markdown_table_formatting() -> None:
    rows = [{"name": "a|b", "ms": 1234.5678, "ratio": 0.012345, "n": 3},
            {"name": "c", "ms": 12.345, "ratio": None}]
    text = markdown_table(rows, ["name", "ms", "ratio", "n"])
    lines = text.strip().split("\n")
    assert len(lines) == 4
    assert all(line.startswith("| ") and line.endswith(" |") for line in lines)
    assert len({len(line) for line in lines}) == 1  # columns padded to one width
    assert lines[1].replace(" ", "").startswith("|---")  # text column left-aligned
    assert lines[1].rstrip(" |").endswith(":")  # numeric column right-aligned
    assert "a\\|b" in lines[2] and "1235" in lines[2] and "0.0123" in lines[2]
    assert "12.3" in lines[3] and "–" in lines[3]
    assert lines[3].split("|")[4].strip() == ""  # missing key -> empty cell
    with pytest.raises(ValueError):
        markdown_table(rows, [])


def test_write_report(tmp_path: Path) -> None:
    results = {"title": "T", "columns": ["x", "y"], "rows": [{"x": "a", "y": 1.5, "z": float("nan")}],
               "config": {"threads": 2}, "notes": ["a note"]}
    paths = write_report(results, tmp_path / "out", "rep")
    assert set(paths) == {"json", "md"}
    data = json.loads(paths["json"].read_text())
    assert data["rows"][0]["z"] is None  # strict JSON: NaN written as null
    m = data["machine"]
    for key in ("cpu_count", "torch", "onnxruntime", "platform", "threads", "timestamp"):
        assert key in m
    assert m["threads"] == 2
    md = paths["md"].read_text()
    assert md.startswith("# T\n") and "| x" in md and "1.50" in md and "- a note" in md
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["rep.json", "rep.md"]  # no temp files
    with pytest.raises(ValueError):
        write_report(results, tmp_path, "../escape")


def test_machine_info() -> None:
    m = machine_info(threads=3)
    assert m["threads"] == 3 and m["cpu_count"] >= 1 and m["torch"]


# -- encoder bench ------------------------------------------------------------------------------
def test_prompts_deterministic() -> None:
    names = class_names(40)
    assert names == class_names(40) and len(set(names)) == 40
    assert {len(n.split()) for n in names} == {1, 2, 3, 4}
    assert prompts(3)[0] == f"a photo of a {names[0]}."


def test_backend_specs() -> None:
    assert parse_backend("torch").backend == "torch"
    assert default_backends("cpu")[0] == "torch"
    with pytest.raises(ValueError, match="unknown backend"):
        parse_backend("tensorflow")
    if HAS_ORT:
        assert "onnxruntime:CPUExecutionProvider" in default_backends("cpu")
        assert parse_backend("onnxruntime", "cpu").provider == CPU_EP


@pytest.mark.skipif(not HAS_ORT, reason="onnxruntime is not installed")
def test_bench_encoders_tiny(tiny_bundle: Path, tmp_path: Path) -> None:
    res = bench_encoders(tiny_bundle, batches=(1, 2), repeats=2, warmup=1, threads=1, progress=False)
    rows = res["rows"]
    assert res["config"]["backends"] == ["torch", f"onnxruntime:{CPU_EP}"]
    keys = {(r["encoder"], r["backend"], r["batch"]) for r in rows}
    assert keys == {(e, b, n) for e in ("image", "text") for b in ("torch", "onnxruntime") for n in (1, 2)}
    assert len(rows) == 8
    for r in rows:
        assert r["error"] is None
        assert r["median_ms"] > 0 and r["p90_ms"] >= r["median_ms"] > 0
        assert r["per_item_ms"] == pytest.approx(r["median_ms"] / r["batch"])
        assert r["n"] == 2 == len(r["samples_ms"])
        assert "speedup" in r
        if r["backend"] == "onnxruntime":
            assert r["provider"] == CPU_EP
            assert r["speedup"] > 0 and r["speedup_lo"] <= r["speedup_hi"]
        else:
            assert r["provider"] is None and r["speedup"] is None
        if r["encoder"] == "text":
            assert 3 < r["tokens"] < 77  # prompts are short: the causal tower is truncated
    # the report the CLI will write from it
    paths = write_report(res, tmp_path, "encoders")
    data = json.loads(paths["json"].read_text())
    assert len(data["rows"]) == 8 and data["machine"]["threads"] == 1
    assert "speedup" in paths["md"].read_text()


def test_bench_encoders_rejects_bad_args(tiny_bundle: Path) -> None:
    with pytest.raises(ValueError, match="batch"):
        bench_encoders(tiny_bundle, batches=(0,), progress=False)
    with pytest.raises(ValueError, match="repeat"):
        bench_encoders(tiny_bundle, backends=["torch", "torch"], progress=False)


@pytest.mark.skipif(not HAS_ORT, reason="onnxruntime is not installed")
def test_provider_pinned_model_matches_default(tiny_bundle: Path) -> None:
    """The one-provider sessions (used for e.g. the CUDA EP beside the TensorRT EP) give the same
    embeddings as the sessions `edgeclip.load` makes."""
    import torch

    import edgeclip
    from edgeclip.bench.encoders import _ProviderEdgeClip
    from edgeclip.runtime.bundle import open_bundle

    b = open_bundle(tiny_bundle)
    pinned = _ProviderEdgeClip(b, CPU_EP, "cpu", threads=1)
    ref = edgeclip.load(b, backend="onnxruntime", threads=1)
    x = torch.randn(2, 3, ref.preprocess_cfg.image_size, ref.preprocess_cfg.image_size)
    torch.testing.assert_close(pinned.image_encoder(x), ref.image_encoder(x))
    assert pinned.image_encoder.session.get_providers()[0] == CPU_EP


def test_measure_interleaved_round_robin() -> None:
    order: list[str] = []
    count = {"a": 0, "b": 0}

    def call(name: str) -> None:
        count[name] += 1
        if not order or order[-1] != name:  # record runs, not every settle call
            order.append(name)
        _work()

    fns = {"a": lambda: call("a"), "b": lambda: call("b")}
    st = measure_interleaved(fns, warmup=1, repeats=4)
    assert st["a"].n == st["b"].n == 4
    # warm-ups (a, b), then per round a's settle + timed calls, then b's
    assert order == ["a", "b"] * 5
    assert min(count.values()) > 1 + 4 * 2  # settle calls ran before the timed ones
    r = ratio_with_spread(st["a"], st["b"], paired=True)
    assert r["ratio_lo"] <= r["ratio_hi"]
    with pytest.raises(ValueError, match="paired"):
        ratio_with_spread(TimingStats.from_samples([1.0]), TimingStats.from_samples([1.0, 2.0]), paired=True)
    # one function: no settle calls
    calls: list[int] = []
    measure_interleaved({"x": lambda: calls.append(1)}, warmup=0, repeats=3)
    assert len(calls) == 3


def _case(make_fn: Any, batch: int = 4) -> Any:
    """A two-backend image case whose calls come from `make_fn(batch) -> fn`."""
    from edgeclip.bench.encoders import _Case

    labels = ["torch", f"onnxruntime:{CPU_EP}"]
    return _Case("image", batch, labels, lambda n: (None, {label: make_fn(label, n) for label in labels}))


def _specs() -> dict[str, Any]:
    from edgeclip.bench.encoders import BackendSpec

    return {"torch": BackendSpec("torch", None, "cpu"),
            f"onnxruntime:{CPU_EP}": BackendSpec("onnxruntime", CPU_EP, "cpu")}


def test_out_of_memory_retries_once_at_half_the_batch() -> None:
    from edgeclip.bench.encoders import _time_case

    asked: list[tuple[str, int]] = []

    def make(label: str, n: int) -> Any:
        asked.append((label, n))

        def call() -> None:
            if label != "torch" and n > 2:
                raise MemoryError("no room")
            _work()
        return call

    rows, stats, paired = _time_case(_case(make), _specs(), warmup=0, repeats=2, time_budget_s=1.0)
    assert paired and set(stats) == {"torch", f"onnxruntime:{CPU_EP}"}
    assert sorted({n for _, n in asked}) == [2, 4]  # built at 4, then once more at 2
    for r in rows:
        assert r["batch"] == 2 and r["requested_batch"] == 4 and r["error"] is None and r["median_ms"] > 0
        assert "batch 4" in r["oom_retry"] and "no room" in r["oom_retry"]


def test_out_of_memory_twice_becomes_error_rows() -> None:
    from edgeclip.bench.encoders import _time_case

    def make(label: str, n: int) -> Any:
        def call() -> None:
            if label != "torch":
                raise MemoryError("no room")
        return call

    rows, stats, _ = _time_case(_case(make), _specs(), warmup=0, repeats=2, time_budget_s=1.0)
    assert stats == {}
    for r in rows:
        assert r["median_ms"] is None and r["batch"] == 4 and r["requested_batch"] == 4
        assert r["error"].startswith("out of memory") and "batch 4" in r["error"] and "batch 2" in r["error"]
    with pytest.raises(ZeroDivisionError):  # anything else is a bug, not a measurement
        _time_case(_case(lambda label, n: lambda: 1 / 0), _specs(), warmup=0, repeats=2, time_budget_s=1.0)


@pytest.mark.skipif(not HAS_ORT, reason="onnxruntime is not installed")
def test_bench_encoders_sequential(tiny_bundle: Path) -> None:
    res = bench_encoders(tiny_bundle, batches=(2,), text_batches=(), repeats=2, warmup=0, interleave=False,
                         progress=False)
    assert res["config"]["interleave"] is False
    assert [(r["encoder"], r["backend"]) for r in res["rows"]] == [("image", "torch"), ("image", "onnxruntime")]
    assert res["rows"][1]["speedup"] > 0


def test_class_names_scale_past_the_one_word_pool() -> None:
    names = class_names(2000, seed=3)
    assert len(set(names)) == 2000 and names == class_names(2000, seed=3)
    assert {len(n.split()) for n in names} == {1, 2, 3, 4}


# -- precisions side by side ---------------------------------------------------------------------
def test_parse_precisions() -> None:
    from edgeclip.bench.encoders import parse_precisions
    from edgeclip.errors import InputError

    assert parse_precisions("fp32") == ["fp32"]
    assert parse_precisions("int8") == ["fp32", "int8"]  # the reference is always timed
    assert parse_precisions(" FP16,int8,fp16 ") == ["fp32", "fp16", "int8"]
    assert parse_precisions(["int8", "fp32"]) == ["fp32", "int8"]
    with pytest.raises(InputError, match=r"unknown precision 'int4'.*fp32, int8, fp16"):
        parse_precisions("fp32,int4")
    with pytest.raises(InputError, match="unknown precision"):
        parse_precisions("fp32,,int8")


def test_bench_encoders_rejects_bad_precision_before_work(tmp_path: Path) -> None:
    from edgeclip.errors import InputError

    with pytest.raises(InputError, match="unknown precision 'bf16'"):
        bench_encoders("micro", precision="fp32,bf16", cache_dir=tmp_path, progress=False)
    assert list(tmp_path.iterdir()) == []  # nothing quantised or converted


def test_cli_bad_precision_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    from edgeclip.cli import main

    with pytest.raises(SystemExit) as exc:
        main(["bench", "encoders", "--precision", "fp32,int3"])
    assert exc.value.code == 2
    assert "unknown precision 'int3'" in capsys.readouterr().err


@pytest.mark.skipif(not HAS_ORT, reason="onnxruntime is not installed")
def test_bench_encoders_precisions_side_by_side(tmp_path: Path) -> None:
    """fp32 (torch, and the onnxruntime reference added for it), int8 and fp16 variants of the micro bundle in one
    run: a row per precision and case, each variant through onnxruntime with its ratio to FP32."""
    res = bench_encoders("micro", batches=(1, 2), text_batches=(2,), backends=["torch"], repeats=2, warmup=0,
                         threads=1, time_budget_s=0.2, precision="int8,fp16", cache_dir=tmp_path / "cache",
                         int8_calib="shapes:32", auto=False, progress=False)
    ort = f"onnxruntime:{CPU_EP}"
    assert res["config"]["backends"] == ["torch", ort, f"{ort}@int8", f"{ort}@fp16"]
    assert res["config"]["precisions"] == ["fp32", "int8", "fp16"]
    assert set(res["config"]["variants"]) == {"int8", "fp16"}
    for p in res["config"]["variants"].values():
        assert (Path(p) / "manifest.json").is_file() and Path(p).parent == tmp_path / "cache"
    keys = [(r["encoder"], r["batch"], r["backend"], r["precision"]) for r in res["rows"]]
    want = [(e, n, b, p) for e, ns in (("image", (1, 2)), ("text", (2,))) for n in ns
            for b, p in (("torch", "fp32"), ("onnxruntime", "fp32"), ("onnxruntime", "int8"),
                         ("onnxruntime", "fp16"))]
    assert keys == want
    for r in res["rows"]:
        assert r["error"] is None and r["median_ms"] > 0 and r["n"] >= 2
        assert r["items_per_s"] == pytest.approx(1e3 * r["batch"] / r["median_ms"])
        if r["precision"] == "fp32":
            assert r["vs_fp32"] is None and r["vs_fp32_lo"] is None
        else:
            assert r["provider"] == CPU_EP
            assert 0 < r["vs_fp32_lo"] <= r["vs_fp32"] <= r["vs_fp32_hi"]
            assert r["speedup"] > 0  # against torch, like every onnxruntime row
    for col in ("precision", "items_per_s", "vs_fp32", "vs_fp32_lo", "vs_fp32_hi"):
        assert col in res["columns"]
    notes = " ".join(res["notes"])
    assert "text encoder is FP32 by design" in notes and "not a deployment path" in notes
    assert "INT8" in notes and "goal ≥ 2×" in notes
    md = write_report(res, tmp_path, "encoders-precision")["md"].read_text()
    assert "| int8 " in md and "| fp16 " in md and res["machine"]["cpu_model"] in md


def test_cli_model_precision_passes_through(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    """`--model` with `--precision`: the cache folder goes once (the bundle's and the variants'), the precisions are
    parsed, and the report is named after both."""
    import edgeclip.bench
    from edgeclip.cli import main

    seen: dict[str, Any] = {}

    def fake(model_name: str, cache_dir: Path, **kwargs: Any) -> dict[str, Any]:
        seen.update(model_name=model_name, cache_dir=cache_dir, **kwargs)
        return {"title": "T", "columns": ["encoder"], "rows": [{"encoder": "image"}], "notes": []}

    monkeypatch.setattr(edgeclip.bench, "bench_encoders_for_model", fake)
    assert main(["bench", "encoders", "--model", "ViT-B-32", "--precision", "int8", "--batch", "64",
                 "--cache", str(tmp_path / "c"), "--out", str(tmp_path / "o"), "--json"]) == 0
    assert seen["cache_dir"] == tmp_path / "c"
    assert seen["precision"] == ["fp32", "int8"] and seen["batches"] == (64,)
    assert (tmp_path / "o" / "encoders-ViT-B-32-fp32-int8.json").is_file()
    capsys.readouterr()


def test_tensorrt_backend_is_a_cuda_backend_and_joins_the_defaults_only_with_valid_engines(
        monkeypatch: pytest.MonkeyPatch) -> None:
    import edgeclip
    from edgeclip.runtime import bundle as B
    from edgeclip.runtime import engine_cache

    assert parse_backend("tensorrt", "cuda").backend == "tensorrt"
    with pytest.raises(ValueError, match="runs on the GPU"):
        parse_backend("tensorrt", "cpu")
    with pytest.raises(ValueError, match="takes no provider"):
        parse_backend("tensorrt:x", "cuda")
    bundle = B.open_bundle(edgeclip.default_bundle())
    assert "tensorrt" not in default_backends("cuda", bundle)  # no engines here
    monkeypatch.setattr(engine_cache, "has_valid_engines", lambda b, enc, here=None: True)
    assert "tensorrt" in default_backends("cuda", bundle)
    assert "tensorrt" not in default_backends("cpu", bundle)
