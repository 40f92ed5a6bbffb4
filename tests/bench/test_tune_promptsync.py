"""The PromptSync tuning script's readout stage (D) on a tiny cached validation set."""

from __future__ import annotations

import torch

import edgeclip
from edgeclip.bench import tune_promptsync as tune
from edgeclip.runtime.prototypes import build_prototypes


def test_readout_search_rows() -> None:
    torch.manual_seed(0)
    micro = edgeclip.load(edgeclip.default_bundle(), backend="torch")
    protos = build_prototypes(micro, "shapes:32", progress=False)
    cached = tune.cache_views(micro, 3, ["clean", "blur"], n_views=8)
    assert [c[0] for c in cached] == ["clean", "blur"] and cached[0][1].shape[:2] == (3, 8)
    rows = tune.readout_search(micro, protos, cached, progress=False)
    d = tune.STAGE_D
    assert len(rows) == len(d["proto_weight"]) + len(d["online_proto_weight"]) + 2 * len(d["steps"])
    for r in rows:
        assert r["stage"] == "D" and 0.0 <= r["mean"] <= 100.0
        assert abs(r["mean"] - (r["clean"] + r["blur"]) / 2) < 1e-9
        # accuracies over 3 frames are multiples of 100/3
        assert all(abs(r[s] * 3 / 100 - round(r[s] * 3 / 100)) < 1e-9 for s in ("clean", "blur"))
    online = [r for r in rows if r["mode"] == "online"]
    assert [r["online_proto_weight"] for r in online] == list(d["online_proto_weight"])
