"""The official TPT loop (`ReferenceTPT`) against edgeclip's `TPT` on the same views of the same frames.

Both run on the embedded micro bundle with fp32 PyTorch encoders. edgeclip's fast path (image embeddings
computed once, text tower cut to the longest prompt, `edgeclip.kernels` for similarity and selection) must
give the tuned logits of view 0 that the official structure gives (image features recomputed per call, full
77-token text path, plain torch ops), to 1e-4 relative (max |difference| / max |reference logit|).

One known difference is pinned here rather than hidden: the official code selects the confident views at
the first step and reuses that selection at the later steps; edgeclip's `TPT` selects again at every step.
Beyond one step the two agree only where the selection does not change.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import edgeclip
from edgeclip.bench.peers.tpt_reference import ReferenceTPT, avg_entropy, select_confident_samples
from edgeclip.data import shapes
from edgeclip.kernels import augment_views, cosine_logits
from edgeclip.runtime.methods import TPT, create_method
from edgeclip.runtime.methods.frames import ViewFn

N_VIEWS = 64
REL_TOL = 1e-4


@pytest.fixture(scope="module")
def names() -> list[str]:
    return shapes.class_names()


def _frame_and_views(micro: edgeclip.EdgeClip, shift: str, index: int) -> tuple[torch.Tensor, torch.Tensor]:
    frame = torch.from_numpy(shapes.make_batch(index + 1, seed=7, shift=shift).images[index])
    cfg = micro.preprocess_cfg
    views, _ = augment_views(frame, N_VIEWS, cfg.image_size, mean=cfg.mean, std=cfg.std,
                             generator=torch.Generator().manual_seed(100 + index))
    return frame, views


def _edgeclip_logits(tpt: TPT, frame: torch.Tensor) -> torch.Tensor:
    """edgeclip's TPT on one frame through its own embedding and step code; the tuned logits of view 0."""
    tpt.reset()
    embeds, _ = tpt.embed_views(frame)
    for _ in range(tpt.steps):
        tpt.step(embeds)
    with torch.no_grad():
        logits = cosine_logits(embeds[:1], tpt.text_embeds(), tpt.scale)[0]
    tpt.reset()
    return logits


def _rel(a: torch.Tensor, ref: torch.Tensor) -> float:
    return float((a - ref).abs().max() / ref.abs().max())


def _fixed(views: torch.Tensor) -> ViewFn:
    """A view function that hands out the same views whatever it is asked."""
    return lambda frame, n_views, generator: views


@pytest.mark.parametrize(("shift", "index"), [("clean", 0), ("clean", 1), ("blur", 1), ("invert", 0), ("sketch", 0),
                                             ("gaussian_noise", 1)])
def test_one_step_matches_the_official_loop(micro: edgeclip.EdgeClip, names: list[str], shift: str,
                                            index: int) -> None:
    frame, views = _frame_and_views(micro, shift, index)
    ref = ReferenceTPT(micro, names, n_views=N_VIEWS, steps=1)
    ref_logits, info = ref.adapt_views_logits(views)
    assert len(info["selected"][0]) == int(N_VIEWS * 0.1)
    tpt = create_method("tpt", micro, names, n_views=N_VIEWS, steps=1, view_fn=_fixed(views))
    assert _rel(_edgeclip_logits(tpt, frame), ref_logits) <= REL_TOL
    # the public path (predict, with its reset) gives the same probabilities
    probs = tpt.predict(frame).probs[0]
    torch.testing.assert_close(probs, ref_logits.softmax(-1), rtol=0, atol=1e-5)


# clean 0 and 1: the selection changes after the first step; blur 0, invert 1: it does not
@pytest.mark.parametrize(("shift", "index"), [("clean", 0), ("clean", 1), ("blur", 0), ("invert", 1)])
def test_three_steps_keep_the_first_selection_like_the_official_loop(micro: edgeclip.EdgeClip, names: list[str],
                                                                     shift: str, index: int) -> None:
    frame, views = _frame_and_views(micro, shift, index)
    official, info_o = ReferenceTPT(micro, names, steps=3).adapt_views_logits(views)
    per_step, info_p = ReferenceTPT(micro, names, steps=3, reselect_each_step=True).adapt_views_logits(views)
    # the official loop keeps the first step's views, and so does edgeclip's TPT
    assert all(sel == info_o["selected"][0] for sel in info_o["selected"])
    edge = _edgeclip_logits(create_method("tpt", micro, names, n_views=N_VIEWS, steps=3, view_fn=_fixed(views)), frame)
    assert _rel(edge, official) <= REL_TOL
    # choosing again at every step is an option on both sides, and they agree on it too
    edge_p = _edgeclip_logits(create_method("tpt", micro, names, n_views=N_VIEWS, steps=3, reselect_each_step=True,
                                  view_fn=_fixed(views)), frame)
    assert _rel(edge_p, per_step) <= REL_TOL
    stable = all(set(sel) == set(info_p["selected"][0]) for sel in info_p["selected"])
    assert (_rel(edge_p, official) <= REL_TOL) == stable


def test_zero_steps_is_zero_shot_through_the_full_length_text_path(micro: edgeclip.EdgeClip,
                                                                   names: list[str]) -> None:
    _, views = _frame_and_views(micro, "clean", 0)
    ref = ReferenceTPT(micro, names, steps=0)
    assert ref.prompts().shape[1] == micro.text_tower.context_length == 77
    logits, _ = ref.adapt_views_logits(views)
    text = micro.encode_text([f"a photo of a {c}." for c in names])  # the runtime's own path, truncated
    with torch.no_grad():
        img = torch.nn.functional.normalize(micro.image_encoder(views[:1]), dim=-1)
    expected = micro.logit_scale * img[0] @ text.T
    assert _rel(logits, expected) <= 1e-5


def test_selection_and_loss_follow_the_official_definitions() -> None:
    g = torch.Generator().manual_seed(0)
    logits = 5 * torch.randn(20, 7, generator=g, dtype=torch.float64)
    chosen, idx = select_confident_samples(logits, 0.1)
    entropy = -(logits.softmax(1) * logits.log_softmax(1)).sum(1)
    assert idx.tolist() == entropy.sort().indices[:2].tolist()
    mean_p = chosen.softmax(1).mean(0)
    torch.testing.assert_close(avg_entropy(chosen), -(mean_p * mean_p.log()).sum())


def test_predict_end_to_end_with_pil_views(names: list[str]) -> None:
    batch = shapes.make_batch(2, seed=3, shift="blur")
    ref = ReferenceTPT(edgeclip.default_bundle(), names, n_views=16, steps=1, seed=1)
    pred = ref.predict(batch.images)
    assert pred.probs.shape == (2, len(names))
    assert np.allclose(pred.probs.sum(1).numpy(), 1.0, atol=1e-5) and bool((pred.probs >= 0).all())
    assert torch.equal(pred.labels, pred.probs.argmax(1))
    assert pred.info["method"] == "tpt-reference" and len(pred.info["frames"]) == 2
    assert all(len(f["selected"][0]) == 1 and np.isfinite(f["loss"][0]) for f in pred.info["frames"])
    assert {"views", "adapt"} <= set(pred.timings)
    again = ReferenceTPT(ref.model, names, n_views=16, steps=1, seed=1).predict(list(batch.images))
    torch.testing.assert_close(again.probs, pred.probs)
