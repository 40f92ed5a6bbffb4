"""Learnable prompt context vectors and the token embeddings they build for a list of classes."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from edgeclip.errors import ClassNameError
from edgeclip.runtime.classnames import validate_class_names
from edgeclip.runtime.text_tower import TextTower
from edgeclip.runtime.tokenizer import Tokenizer


class PromptContext(nn.Module):
    """`n` learnable context vectors that replace the words of `init` in "{init} {class}.".

    The vectors start as the token embeddings of `init` (e.g. "a photo of a"), or as the given tensor
    ``[n, W]`` (e.g. CoOp's random N(0, 0.02) start), shared by all classes or, with `per_class=True`, one
    set per class. `build(class_names)` returns the token embeddings [C, L, W] and EOT positions [C] for the
    text tower; gradient reaches only `ctx`.
    """

    def __init__(
        self,
        tower: TextTower,
        tokenizer: Tokenizer,
        init: str | torch.Tensor = "a photo of a",
        *,
        n_classes: int | None = None,
        per_class: bool = False,
        suffix: str = ".",
    ) -> None:
        super().__init__()
        self.tower = [tower]  # a list keeps the frozen tower out of this module's parameters
        self.tokenizer = tokenizer
        self.suffix = suffix
        if isinstance(init, torch.Tensor):
            if init.dim() != 2 or init.shape[0] < 1 or init.shape[1] != tower.width or not init.is_floating_point():
                raise ClassNameError(f"a prompt context tensor must be float [n, {tower.width}], got "
                                     f"{init.dtype} {list(init.shape)}")
            if not bool(torch.isfinite(init).all()):
                raise ClassNameError("a prompt context tensor must be finite")
            self.init_words = f"<{init.shape[0]} vectors>"
            init_vec = init.detach().to(torch.float32).clone()
        else:
            self.init_words = init
            init_ids = tokenizer.encode(init)
            if not init_ids:
                raise ClassNameError(f"prompt context initialisation {init!r} has no tokens")
            with torch.no_grad():
                init_vec = tower.embed_tokens(torch.tensor(init_ids)).detach().clone()
        if per_class:
            if not n_classes:
                raise ValueError("per_class=True needs n_classes")
            init_vec = init_vec.unsqueeze(0).repeat(n_classes, 1, 1)
        self.per_class = per_class
        self.ctx = nn.Parameter(init_vec)
        self.register_buffer("ctx_init", init_vec.clone(), persistent=False)
        self._cache: dict[tuple[str, ...], tuple[torch.Tensor, torch.Tensor]] = {}

    @property
    def n_ctx(self) -> int:
        return int(self.ctx.shape[-2])

    def reset(self) -> None:
        """Put the context back to its initial words."""
        with torch.no_grad():
            self.ctx.copy_(self.ctx_init)

    def _frozen_parts(self, names: tuple[str, ...]) -> tuple[torch.Tensor, torch.Tensor]:
        """Frozen token embeddings (placeholder rows where the context goes) and EOT positions."""
        if names in self._cache:
            return self._cache[names]
        ids, eot = self.tokenizer.ids([f"{name}{self.suffix}" for name in names], reserve=self.n_ctx)
        tower = self.tower[0]
        with torch.no_grad():
            frozen = tower.embed_tokens(ids.to(self.ctx.device)).detach()
        self._cache = {names: (frozen, eot.to(frozen.device))}
        return self._cache[names]

    def build_split(self, class_names: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The shared prefix ``[1, 1 + n, W]`` (SOT and the context), each class's remaining tokens ``[C, L', W]``
        truncated after the last EOT, and EOT positions ``[C]`` counted from the sequence start. Only for a
        context shared by all classes (see `TextTower.forward_shared_prefix`)."""
        if self.per_class:
            raise ClassNameError("a per-class context has no prefix shared by all classes")
        names = tuple(validate_class_names(class_names))
        frozen, eot = self._frozen_parts(names)
        keep = int(eot.max()) + 1
        prefix = torch.cat([frozen[:1, :1], self.ctx.unsqueeze(0).to(frozen.dtype)], dim=1)
        return prefix, frozen[:, 1 + self.n_ctx : keep], eot

    def build(self, class_names: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Token embeddings [C, L, W] (context at positions 1..n) and EOT positions [C]."""
        names = tuple(validate_class_names(class_names))
        if self.per_class and self.ctx.shape[0] != len(names):
            raise ClassNameError(
                f"this context has one set of vectors per class for {self.ctx.shape[0]} classes, "
                f"got {len(names)} class names"
            )
        frozen, eot = self._frozen_parts(names)
        ctx = self.ctx if self.per_class else self.ctx.unsqueeze(0).expand(len(names), -1, -1)
        prefix = frozen[:, :1]
        rest = frozen[:, 1 + self.n_ctx :]
        return torch.cat([prefix, ctx.to(frozen.dtype), rest], dim=1), eot
