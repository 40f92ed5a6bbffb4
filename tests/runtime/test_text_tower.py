"""Text tower: causal truncation equals full length; prompt context gradients reach only the context."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import edgeclip
from edgeclip.errors import ClassNameError, InputError


@pytest.fixture(scope="module")
def model(tiny_bundle: Path):
    return edgeclip.load(tiny_bundle, backend="torch")


def test_truncation_equals_full_length(model) -> None:
    tower = model.text_tower
    ids, eot = model.tokenizer.ids(["a photo of a cat.", "x", "a robot arm picking a red cube from a table"])
    emb = tower.embed_tokens(ids)
    full = tower(emb, eot, truncate=False)
    cut = tower(emb, eot, truncate=True)
    assert emb.shape[1] == 77
    assert (full - cut).abs().max() <= 1e-5
    # and the gradient with respect to the token embeddings agrees too
    e1 = emb.clone().requires_grad_(True)
    e2 = emb.clone().requires_grad_(True)
    tower(e1, eot, truncate=False).sum().backward()
    tower(e2, eot, truncate=True).sum().backward()
    assert (e1.grad - e2.grad).abs().max() <= 1e-5 * e1.grad.abs().max()  # float32 rounding only


def test_truncated_tower_matches_onnx_text_encoder(tiny_bundle: Path, model) -> None:
    ort_model = edgeclip.load(tiny_bundle, backend="onnxruntime")
    ids, eot = model.tokenizer.ids(["a photo of a dog.", "a bright red circle in the top left corner"])
    emb = model.text_tower.embed_tokens(ids)
    ours = model.text_tower(emb, eot)
    theirs = ort_model.text_encoder(emb, eot)
    assert torch.allclose(ours, theirs, atol=1e-5, rtol=1e-4)


def test_bidirectional_tower_runs_full_length(bundle_factory) -> None:
    m = edgeclip.load(bundle_factory("test-tiny-mobile"), backend="torch")
    tower = m.text_tower
    assert not tower.causal
    ids, eot = m.tokenizer.ids(["a photo of a cat."])
    emb = tower.embed_tokens(ids)
    with pytest.raises(InputError, match="bidirectional"):
        tower(emb[:, :10], eot)
    # a padding token changes a bidirectional result, so no silent truncation may happen
    assert torch.equal(tower(emb, eot), tower(emb, eot, truncate=False))


def test_prompt_context_initial_words_reproduce_plain_prompts(model) -> None:
    ctx = model.prompt_context("a photo of a")
    names = ["cat", "robot arm", "red square"]
    tok, eot = ctx.build(names)
    ours = torch.nn.functional.normalize(model.text_tower(tok, eot), dim=-1)
    ref = model.encode_text([f"a photo of a {n}." for n in names])
    assert (ours - ref).abs().max() <= 1e-5


def test_gradient_reaches_only_the_context(model) -> None:
    ctx = model.prompt_context("a photo of a")
    assert [n for n, p in ctx.named_parameters() if p.requires_grad] == ["ctx"]
    tok, eot = ctx.build(["cat", "dog"])
    model.text_tower(tok, eot).pow(2).sum().backward()
    assert ctx.ctx.grad is not None and ctx.ctx.grad.abs().sum() > 0
    assert all(p.grad is None for p in model.text_tower.parameters())
    with torch.no_grad():
        ctx.ctx.add_(1.0)
    ctx.reset()
    assert torch.equal(ctx.ctx, ctx.ctx_init)


def test_per_class_context(model) -> None:
    ctx = model.prompt_context("a photo of a", per_class=True, n_classes=2)
    tok, _ = ctx.build(["cat", "dog"])
    assert tok.shape[0] == 2
    with pytest.raises(ClassNameError, match="one set of vectors per class"):
        ctx.build(["cat", "dog", "cow"])


def test_class_name_too_long_is_named(model) -> None:
    long_name = " ".join(["robot"] * 80)
    with pytest.raises(ClassNameError, match="robot robot"):
        model.classifier(["cat", long_name])
    with pytest.raises(ClassNameError, match="context"):
        model.prompt_context().build([long_name])


@pytest.mark.parametrize("name", ["test-tiny-vit", "test-tiny-rn", "test-tiny-eos"])
def test_shared_prefix_equals_the_plain_forward(bundle_factory, name: str) -> None:
    m = edgeclip.load(bundle_factory(name), backend="torch")
    tower = m.text_tower
    assert tower.supports_shared_prefix()
    ctx = m.prompt_context("a photo of a")
    with torch.no_grad():
        # a local generator: the result must not depend on which tests ran before
        ctx.ctx.add_(0.05 * torch.randn(ctx.ctx.shape, generator=torch.Generator().manual_seed(0)))
    names = ["cat", "robot arm", "a very long name of a thing", "x"]
    tokens, eot = ctx.build(names)
    plain = tower(tokens, eot)
    (g_plain,) = torch.autograd.grad((plain * torch.linspace(-1, 1, plain.shape[1])).sum(), ctx.ctx)
    prefix, rest, eot2 = ctx.build_split(names)
    assert prefix.shape[1] == 1 + ctx.n_ctx and torch.equal(eot, eot2)
    shared = tower.forward_shared_prefix(prefix, rest, eot2)
    (g_shared,) = torch.autograd.grad((shared * torch.linspace(-1, 1, plain.shape[1])).sum(), ctx.ctx)
    torch.testing.assert_close(shared, plain, rtol=1e-5, atol=1e-5)
    # the shared prefix sums the classes' gradients in another order: fp32 rounding, relative to the gradient's scale
    torch.testing.assert_close(g_shared, g_plain, rtol=1e-4, atol=1e-4 * float(g_plain.abs().max()))


def test_shared_prefix_refuses_what_it_cannot_do(bundle_factory) -> None:
    m = edgeclip.load(bundle_factory("test-tiny-mobile"), backend="torch")
    assert not m.text_tower.supports_shared_prefix()  # bidirectional: the prefix sees the class name
    vit = edgeclip.load(bundle_factory("test-tiny-vit"), backend="torch")
    per_class = vit.prompt_context("a photo of a", per_class=True, n_classes=2)
    with pytest.raises(ClassNameError, match="per-class"):
        per_class.build_split(["a", "b"])
    ctx = vit.prompt_context("a photo of a")
    prefix, rest, eot = ctx.build_split(["a", "b"])
    with pytest.raises(InputError, match="after the shared prefix"):
        vit.text_tower.forward_shared_prefix(prefix, rest, torch.zeros_like(eot))
