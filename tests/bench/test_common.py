"""The benchmarks' shared helpers: the out-of-memory guard and retry, threads, bundle labels and cache names."""

from __future__ import annotations

import pytest
import torch

from edgeclip.bench.common import (
    cache_name,
    guard_oom,
    is_oom,
    model_label,
    resolve_bundle,
    retry_oom,
    smaller_batch,
    torch_threads,
)


def test_is_oom_recognises_host_cuda_and_ort_failures() -> None:
    assert is_oom(MemoryError())
    assert is_oom(RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB"))
    assert is_oom(RuntimeError("[ONNXRuntimeError] : 6 : RUNTIME_EXCEPTION : Failed to allocate memory"))
    assert not is_oom(ValueError("shape mismatch"))


def test_guard_oom_records_out_of_memory_and_passes_other_errors() -> None:
    ok = guard_oom(lambda: 42, "case")
    assert ok.ok and ok.value == 42 and ok.error is None and ok.oom == []

    def oom() -> int:
        raise MemoryError("no room")

    bad = guard_oom(oom, "case")
    assert not bad.ok and bad.value is None and bad.error == "out of memory: no room"
    with pytest.raises(ZeroDivisionError):
        guard_oom(lambda: 1 / 0, "case")


def test_retry_oom_retries_once_at_the_smaller_batch() -> None:
    asked: list[int] = []

    def run(batch: int) -> int:
        asked.append(batch)
        if batch > 8:
            raise MemoryError(f"{batch} does not fit")
        return batch * 10

    res = retry_oom(run, 16, "case")
    assert asked == [16, smaller_batch(16)] == [16, 8]
    assert res.ok and res.value == 80 and res.batch == 8 and res.requested_batch == 16 and res.retried
    assert res.record() == {"requested_batch": 16, "oom_retry": "batch 16: 16 does not fit", "error": None}

    asked.clear()
    fine = retry_oom(run, 4, "case")
    assert asked == [4] and fine.batch == 4 and not fine.retried and fine.record()["oom_retry"] is None

    asked.clear()
    twice = retry_oom(run, 64, "case")  # 64 fails, 32 fails: no third attempt
    assert asked == [64, 32] and not twice.ok and twice.value is None and twice.batch is None
    assert twice.error == "out of memory: batch 64: 64 does not fit; batch 32: 32 does not fit"


def test_retry_oom_at_batch_one_has_nothing_smaller() -> None:
    calls: list[int] = []

    def run(batch: int) -> None:
        calls.append(batch)
        raise MemoryError("no room")

    res = retry_oom(run, 1, "case")
    assert calls == [1] and not res.ok and res.error == "out of memory: batch 1: no room"


def test_torch_threads_restores_the_count() -> None:
    before = torch.get_num_threads()
    with torch_threads(1):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before
    with torch_threads(None):
        assert torch.get_num_threads() == before


def test_bundle_names() -> None:
    assert cache_name("ViT-B-32") == "ViT-B-32-random.bundle"
    assert cache_name("hf-hub:org/model name") == "hf-hub-org-model-name-random.bundle"
    micro = resolve_bundle("micro")
    assert resolve_bundle(micro) is micro
    assert model_label(micro) and "random weights" not in model_label(micro)
