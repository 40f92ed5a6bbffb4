"""ZERO: the vote of the confident views, ties to the higher mean probability."""

from __future__ import annotations

import torch

import edgeclip
from edgeclip.data import shapes
from edgeclip.kernels import cosine_logits, select_confident
from edgeclip.runtime.methods import create_method


def test_zero_votes_match_a_direct_count(micro: edgeclip.EdgeClip) -> None:
    model = micro
    names = shapes.class_names()
    batch = shapes.make_batch(5, seed=7, shift="gaussian_noise")
    zero = create_method("zero", model, names, n_views=32, rho=0.25, seed=1)
    pred = zero.predict(batch.images)
    check = create_method("zero", model, names, n_views=32, rho=0.25, seed=1)
    for i, frame in enumerate(batch.images):
        embeds, _ = check.embed_views(torch.from_numpy(frame))
        sel = select_confident(cosine_logits(embeds, check.text, check.scale), 0.25)
        votes = torch.bincount(sel.probs[sel.index].argmax(1), minlength=len(names)).float()
        assert votes.sum() == 8
        torch.testing.assert_close(pred.probs[i], votes / 8)
        top = votes.max()
        tied = (votes == top).nonzero().flatten()
        expected = tied[sel.probs[sel.index].mean(0)[tied].argmax()]
        assert pred.labels[i].item() == expected.item()


def test_zero_breaks_ties_by_mean_probability(micro: edgeclip.EdgeClip) -> None:
    model = micro
    zero = create_method("zero", model, ["a", "b", "c"], n_views=4, rho=0.5)
    zero.text = torch.eye(3, 8)
    zero.scale = 5.0
    # views 0 and 1 are the confident ones (views 2 and 3 are uniform); they vote a and c, and c is
    # the more probable on average (view 0 leans towards b too)
    embeds = torch.zeros(4, 8)
    embeds[0, 0], embeds[0, 1] = 1.0, 0.6
    embeds[1, 2] = 1.0
    embeds[2:, :3] = 1.0
    result = zero.adapt(embeds)
    assert result.label == 2
    torch.testing.assert_close(result.probs, torch.tensor([0.5, 0.0, 0.5]))
