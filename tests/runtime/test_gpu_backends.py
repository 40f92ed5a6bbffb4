"""CUDA backends agree with the CPU reference (skipped without a GPU)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import edgeclip
from edgeclip.runtime.ort_session import CUDA_EP, available_providers


@pytest.mark.gpu
def test_torch_cuda_matches_cpu(tiny_bundle: Path) -> None:
    cpu = edgeclip.load(tiny_bundle, backend="torch")
    gpu = edgeclip.load(tiny_bundle, backend="torch", device="cuda")
    x = torch.randn(4, 3, 32, 32)
    assert torch.allclose(cpu.image_encoder(x), gpu.image_encoder(x.cuda()).cpu(), atol=1e-4)
    assert torch.allclose(cpu.encode_text(["a cat"]), gpu.encode_text(["a cat"]).cpu(), atol=1e-4)


@pytest.mark.gpu
def test_onnxruntime_cuda_io_binding_matches_cpu(tiny_bundle: Path) -> None:
    if CUDA_EP not in available_providers():
        pytest.skip("onnxruntime has no CUDA provider here (install edgeclip[gpu])")
    cpu = edgeclip.load(tiny_bundle, backend="onnxruntime")
    gpu = edgeclip.load(tiny_bundle, backend="onnxruntime", device="cuda")
    x = torch.randn(4, 3, 32, 32)
    out = gpu.image_encoder(x.cuda())
    assert out.is_cuda  # IO binding: the result stays on the device
    assert torch.allclose(cpu.image_encoder(x), out.cpu(), atol=1e-4)
    ids, eot = cpu.tokenizer.ids(["a photo of a dog."])
    emb = cpu.text_tower.embed_tokens(ids)
    assert torch.allclose(cpu.text_encoder(emb, eot), gpu.text_encoder(emb.cuda(), eot.cuda()).cpu(), atol=1e-4)


@pytest.mark.gpu
def test_views_are_made_on_the_gpu_from_the_uint8_frame(monkeypatch: pytest.MonkeyPatch) -> None:
    """On a CUDA model only the uint8 frame crosses to the device; the views are made there (Triton)."""
    import edgeclip.runtime.methods.frames as frames

    seen: list[torch.device] = []
    real = frames.augment_views

    def recording(frame, *args, **kwargs):
        seen.append(frame.device)
        return real(frame, *args, **kwargs)

    monkeypatch.setattr(frames, "augment_views", recording)
    model = edgeclip.load(backend="torch", device="cuda")
    names = edgeclip.shapes.class_names()
    batch = edgeclip.shapes.make_batch(2, seed=1, shift="blur")
    gpu = edgeclip.create_method("tpt", model, names, n_views=16).predict(batch.images)
    assert seen and all(d.type == "cuda" for d in seen)
    cpu = edgeclip.create_method("tpt", edgeclip.load(backend="torch"), names, n_views=16).predict(batch.images)
    assert torch.equal(gpu.labels, cpu.labels)
