"""Tokenisation of prompts into fixed-context token ids, with errors that name the offending text."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import torch

from edgeclip.errors import BundleError, ClassNameError

SUPPORTED_TOKENIZERS = ("clip_bpe",)


@dataclass(frozen=True)
class TokenizerSpec:
    """What a bundle records about its tokenizer."""

    kind: str = "clip_bpe"
    context_length: int = 77
    sot_id: int = 49406
    eot_id: int = 49407
    pad_id: int = 0

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TokenizerSpec:
        return cls(**{k: d[k] for k in ("kind", "context_length", "sot_id", "eot_id", "pad_id") if k in d})


class Tokenizer:
    """CLIP's byte-pair tokenizer, shipped inside open_clip (no download)."""

    def __init__(self, spec: TokenizerSpec) -> None:
        if spec.kind not in SUPPORTED_TOKENIZERS:
            raise BundleError(
                f"tokenizer {spec.kind!r} is not supported; this version reads {SUPPORTED_TOKENIZERS}"
            )
        self.spec = spec

    @cached_property
    def _bpe(self) -> Any:
        from open_clip.tokenizer import SimpleTokenizer

        return SimpleTokenizer(context_length=self.spec.context_length)

    def encode(self, text: str) -> list[int]:
        """BPE ids of `text`, without start/end tokens."""
        return list(self._bpe.encode(text))

    def ids(self, texts: Sequence[str], reserve: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        """Token ids [N, context] (SOT, `reserve` padding slots, text, EOT, padding) and EOT positions [N].

        The reserved slots after SOT are where learned context vectors go. Raises `ClassNameError`
        naming the text when it does not fit the context.
        """
        ctx = self.spec.context_length
        out = torch.full((len(texts), ctx), self.spec.pad_id, dtype=torch.long)
        eot = torch.empty(len(texts), dtype=torch.long)
        for i, text in enumerate(texts):
            body = self.encode(text)
            seq = [self.spec.sot_id, *([self.spec.pad_id] * reserve), *body, self.spec.eot_id]
            if len(seq) > ctx:
                extra = f" ({reserve} of them prompt context)" if reserve else ""
                raise ClassNameError(
                    f"{text!r} needs {len(seq)} tokens{extra}, more than the text context of {ctx} "
                    "tokens: shorten it"
                )
            out[i, : len(seq)] = torch.tensor(seq)
            eot[i] = len(seq) - 1
        return out, eot
