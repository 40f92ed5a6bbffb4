"""The frozen, differentiable CLIP text transformer that runs on token *embeddings*.

`TextTower` is the single definition of the text path: the exporter traces its full-length forward
into `text_encoder.onnx`, and the runtime rebuilds it from `text_tower.safetensors` to run prompt
tuning with gradients. Causal towers are cut to `max(eot_index) + 1` tokens before the transformer,
which gives the same pooled feature as the full context at a fraction of the cost.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from edgeclip.errors import BundleError, InputError

POOL_TYPES = ("argmax", "eos")


def build_open_clip_text_transformer(embed_dim: int, text_cfg: dict[str, Any], quick_gelu: bool) -> nn.Module:
    """Build an open_clip `TextTransformer` skeleton (random weights) from a config dict."""
    from open_clip.model import _build_text_tower

    return _build_text_tower(embed_dim, dict(text_cfg), quick_gelu=quick_gelu, cast_dtype=None)


class TextTower(nn.Module):
    """Token embeddings [N, L, W] and EOT positions [N] -> text embeddings [N, D] (not normalised).

    Parameters are frozen (`requires_grad=False`); gradients still flow through the tower to its
    *input*, which is what prompt tuning needs.
    """

    def __init__(
        self,
        token_embedding: nn.Embedding,
        positional_embedding: torch.Tensor,
        transformer: nn.Module,
        ln_final: nn.Module,
        text_projection: torch.Tensor | nn.Linear | None,
        *,
        causal: bool,
    ) -> None:
        super().__init__()
        self.token_embedding = token_embedding
        self.positional_embedding = nn.Parameter(positional_embedding.detach().clone())
        self.transformer = transformer
        self.ln_final = ln_final
        if isinstance(text_projection, nn.Linear) or text_projection is None:
            self.text_projection = text_projection
        else:
            self.text_projection = nn.Parameter(text_projection.detach().clone())
        self.causal = causal
        self.requires_grad_(False)

    # -- construction ---------------------------------------------------------------------------
    @classmethod
    def from_open_clip(cls, model: nn.Module) -> TextTower:
        """Take the text tower of an open_clip `CLIP` or `CustomTextCLIP` (weights are shared, not copied)."""
        text = getattr(model, "text", None)
        src = text if text is not None else model
        if text is not None and not hasattr(text, "transformer"):
            raise InputError(
                f"text tower {type(text).__name__} is not an open_clip TextTransformer "
                "(Hugging Face text towers are not supported by the export)"
            )
        if getattr(src, "cls_emb", None) is not None:
            raise InputError("text towers with a class token (CoCa) are not supported")
        causal = getattr(src, "attn_mask", None) is not None
        proj = src.text_projection
        return cls(
            src.token_embedding,
            src.positional_embedding,
            src.transformer,
            src.ln_final,
            proj,
            causal=causal,
        )

    @classmethod
    def from_config(cls, embed_dim: int, text_cfg: dict[str, Any], quick_gelu: bool) -> TextTower:
        """An empty tower of the right shape; fill it with `load_state_dict`."""
        tt = build_open_clip_text_transformer(embed_dim, text_cfg, quick_gelu)
        return cls(
            tt.token_embedding,
            tt.positional_embedding,
            tt.transformer,
            tt.ln_final,
            tt.text_projection,
            causal=not text_cfg.get("no_causal_mask", False),
        )

    # -- properties -----------------------------------------------------------------------------
    @property
    def width(self) -> int:
        return int(self.positional_embedding.shape[1])

    @property
    def context_length(self) -> int:
        return int(self.positional_embedding.shape[0])

    def embed_tokens(self, token_ids: torch.Tensor) -> torch.Tensor:
        """Rows of the (frozen) token-embedding table for integer ids [..., L] -> [..., L, W]."""
        return self.token_embedding(token_ids)

    # -- forward --------------------------------------------------------------------------------
    def _check(self, token_embeds: torch.Tensor, eot_index: torch.Tensor) -> None:
        if token_embeds.dim() != 3 or token_embeds.shape[2] != self.width:
            raise InputError(
                f"token_embeds must be [N, L, {self.width}], got {list(token_embeds.shape)}"
            )
        n, length, _ = token_embeds.shape
        if length > self.context_length:
            raise InputError(f"sequence length {length} exceeds the context length {self.context_length}")
        if eot_index.dim() != 1 or eot_index.shape[0] != n:
            raise InputError(f"eot_index must be [{n}], got {list(eot_index.shape)}")
        if eot_index.numel() and (int(eot_index.min()) < 0 or int(eot_index.max()) >= length):
            raise InputError(f"eot_index values must lie in [0, {length}), got {eot_index.tolist()}")
        if not self.causal and length != self.context_length:
            raise InputError(
                f"this text tower is bidirectional (not causal): it needs the full context of "
                f"{self.context_length} tokens, got {length}"
            )

    def forward_full(self, token_embeds: torch.Tensor, eot_index: torch.Tensor) -> torch.Tensor:
        """The tower on exactly the given sequence length (what `text_encoder.onnx` computes)."""
        length = token_embeds.shape[1]
        x = token_embeds + self.positional_embedding[:length].to(token_embeds.dtype)
        mask = None
        if self.causal:
            mask = torch.full((length, length), float("-inf"), device=x.device, dtype=x.dtype).triu(1)
        x = self.transformer(x, attn_mask=mask)
        x = self.ln_final(x)
        x = x[torch.arange(x.shape[0], device=x.device), eot_index]
        return self._project(x)

    def _project(self, x: torch.Tensor) -> torch.Tensor:
        """The EOT features through the text projection (a matrix, a Linear, or none)."""
        proj = self.text_projection
        if proj is None:
            return x
        if isinstance(proj, nn.Linear):
            return proj(x)
        return x @ proj.to(x.dtype)

    def forward(self, token_embeds: torch.Tensor, eot_index: torch.Tensor, truncate: bool = True) -> torch.Tensor:
        """Text embeddings; a causal tower runs only the first `max(eot_index) + 1` tokens."""
        self._check(token_embeds, eot_index)
        if truncate and self.causal and token_embeds.shape[0] > 0:
            keep = int(eot_index.max()) + 1
            token_embeds = token_embeds[:, :keep]
        return self.forward_full(token_embeds, eot_index)


    # -- shared prefix -------------------------------------------------------------------------
    def supports_shared_prefix(self) -> bool:
        """Whether `forward_shared_prefix` applies: a causal tower of standard pre-norm attention blocks."""
        from open_clip.transformer import ResidualAttentionBlock

        blocks = getattr(self.transformer, "resblocks", None)
        if not self.causal or blocks is None:
            return False
        for blk in blocks:
            attn = getattr(blk, "attn", None)
            if not isinstance(attn, nn.MultiheadAttention) or not attn.batch_first or hasattr(blk, "ln_1_kv"):
                return False
            if not all(hasattr(blk, name) for name in ("ln_1", "ls_1", "ln_2", "mlp", "ls_2")):
                return False
            if type(blk).forward is not ResidualAttentionBlock.forward:
                return False
        return True

    def forward_shared_prefix(self, prefix: torch.Tensor, rest: torch.Tensor, eot_index: torch.Tensor) -> torch.Tensor:
        """Text embeddings for sequences that all start with the same `prefix` ``[1, P, W]`` (SOT and shared
        prompt context) followed by their own `rest` ``[C, R, W]``; `eot_index` counts from the sequence start.

        Under the causal mask the prefix positions see only the prefix, so their activations are the same for
        every class: they are computed once, and the other positions attend to them as keys and values. The
        result equals `forward` on the concatenated sequences (tested to float tolerance, gradients included).
        """
        if prefix.dim() != 3 or prefix.shape[0] != 1 or rest.dim() != 3 or prefix.shape[2] != rest.shape[2]:
            raise InputError(
                f"prefix must be [1, P, W] and rest [C, R, W], got {list(prefix.shape)}, {list(rest.shape)}"
            )
        n_p, n_r, n = prefix.shape[1], rest.shape[1], rest.shape[0]
        self._check(torch.empty(n, n_p + n_r, self.width, device="meta"), eot_index)
        if int(eot_index.min()) < n_p:
            raise InputError("every EOT position must lie after the shared prefix")
        pos = self.positional_embedding.to(rest.dtype)
        xp = prefix + pos[:n_p]
        xr = rest + pos[n_p : n_p + n_r]
        neg = float("-inf")
        mask_p = torch.full((n_p, n_p), neg, device=xr.device, dtype=xr.dtype).triu(1)
        mask_r = torch.full((n_r, n_p + n_r), neg, device=xr.device, dtype=xr.dtype).triu(n_p + 1)
        for blk in self.transformer.resblocks:
            hp, hr = blk.ln_1(xp), blk.ln_1(xr)
            ap = blk.attn(hp, hp, hp, need_weights=False, attn_mask=mask_p)[0]
            kv = torch.cat([hp.expand(n, -1, -1), hr], dim=1)
            ar = blk.attn(hr, kv, kv, need_weights=False, attn_mask=mask_r)[0]
            xp = xp + blk.ls_1(ap)
            xr = xr + blk.ls_1(ar)
            xp = xp + blk.ls_2(blk.mlp(blk.ln_2(xp)))
            xr = xr + blk.ls_2(blk.mlp(blk.ln_2(xr)))
        x = self.ln_final(xr)
        x = x[torch.arange(n, device=x.device), eot_index.to(x.device) - n_p]
        return self._project(x)


def load_float_state(module: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """Load (possibly fp16-stored) weights into `module` as float32; a mismatch becomes a `BundleError`
    naming the file."""
    state = {k: v.float() if v.is_floating_point() else v for k, v in state.items()}
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise BundleError(f"{source} does not match the tower described in the manifest: {exc}") from exc
