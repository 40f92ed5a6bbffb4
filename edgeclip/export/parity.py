"""Parity of the exported graphs against the PyTorch model they came from."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from edgeclip.runtime.io_spec import EOT_INDEX, PIXELS, TOKEN_EMBEDS
from edgeclip.runtime.text_tower import TextTower
from edgeclip.runtime.tokenizer import Tokenizer

PARITY_PROMPTS = (
    "a photo of a cat.",
    "a photo of a robot arm picking up a red cube.",
    "x",
    "a blurry photo of the small blue triangle on a striped background at the top left of the frame.",
)


@dataclass
class ParityReport:
    image_min_cos: float
    image_max_abs: float
    text_min_cos: float
    text_max_abs: float
    truncation_max_abs: float

    def to_dict(self) -> dict[str, float]:
        return {k: float(v) for k, v in self.__dict__.items()}


def min_cosine(a: np.ndarray, b: np.ndarray) -> float:
    a = a.astype(np.float64)
    b = b.astype(np.float64)
    num = (a * b).sum(-1)
    den = np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1)
    return float((num / np.maximum(den, 1e-30)).min())


def _session(path: Path):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def parity_inputs(tower: TextTower, tokenizer: Tokenizer, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Real prompts (embedded tokens) plus random embeddings, at full context length."""
    ids, eot = tokenizer.ids(list(PARITY_PROMPTS))
    with torch.no_grad():
        emb = tower.embed_tokens(ids)
    g = torch.Generator().manual_seed(seed)
    rnd = torch.randn(2, emb.shape[1], emb.shape[2], generator=g) * emb.std()
    rnd_eot = torch.tensor([5, emb.shape[1] - 1]) if tower.causal else eot[:2]
    return torch.cat([emb, rnd]), torch.cat([eot, rnd_eot])


def _text_feeds(token_embeds: torch.Tensor, eot_index: torch.Tensor) -> dict[str, np.ndarray]:
    """The text graph's inputs, by name and dtype (`TOKEN_EMBEDS`, `EOT_INDEX`)."""
    return {TOKEN_EMBEDS.name: token_embeds.numpy().astype(TOKEN_EMBEDS.np_dtype, copy=False),
            EOT_INDEX.name: eot_index.numpy().astype(EOT_INDEX.np_dtype, copy=False)}


@torch.no_grad()
def check_parity(
    visual: nn.Module,
    tower: TextTower,
    tokenizer: Tokenizer,
    image_size: int,
    image_onnx: Path,
    text_onnx: Path,
    seed: int = 0,
) -> ParityReport:
    """Run both graphs in onnxruntime (CPU) and in PyTorch on the same inputs and compare."""
    g = torch.Generator().manual_seed(seed)
    pixels = torch.randn(3, 3, image_size, image_size, generator=g)
    ref_img = visual(pixels).numpy()
    out_img = _session(image_onnx).run(None, {PIXELS.name: pixels.numpy()})[0]

    tok, eot = parity_inputs(tower, tokenizer, seed)
    ref_txt = tower.forward_full(tok, eot).numpy()
    sess = _session(text_onnx)
    out_txt = sess.run(None, _text_feeds(tok, eot))[0]
    trunc_err = 0.0
    if tower.causal:
        # the graph must also accept a shorter sequence; check it against PyTorch there
        keep = int(eot[: len(PARITY_PROMPTS)].max()) + 1
        short_tok, short_eot = tok[: len(PARITY_PROMPTS), :keep], eot[: len(PARITY_PROMPTS)]
        out_short = sess.run(None, _text_feeds(short_tok, short_eot))[0]
        ref_short = tower.forward_full(short_tok, short_eot).numpy()
        out_txt = np.concatenate([out_txt, out_short])
        ref_txt = np.concatenate([ref_txt, ref_short])
        trunc_err = float(np.abs(ref_short - ref_txt[: len(PARITY_PROMPTS)]).max())
    return ParityReport(
        image_min_cos=min_cosine(ref_img, out_img),
        image_max_abs=float(np.abs(ref_img - out_img).max()),
        text_min_cos=min_cosine(ref_txt, out_txt),
        text_max_abs=float(np.abs(ref_txt - out_txt).max()),
        truncation_max_abs=trunc_err,
    )
