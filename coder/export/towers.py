"""torch modules that the ONNX exporter traces: one per tower.

* :class:`ImageTower` — ``(B,3,H,W) float32 -> (B,D)`` raw image embeddings; traced inside
  :func:`plain_attention`, which writes its ``nn.MultiheadAttention`` self-attention as plain matmuls
  with the token count fixed (:class:`PlainSelfAttention`).
* :class:`TextTower` — ``(B,L) int32 -> (B,D)`` with ``L`` dynamic: it slices the
  positional table and the causal mask to ``L`` and writes attention out as
  plain matmuls, because ``nn.MultiheadAttention`` traces the sequence length
  as a constant. A causal tower's end-of-text output does not depend on the
  padding after it, so a batch can stop at its longest text.
* :class:`FullContextTextTower` — any other text tower through ``encode_text``;
  its input must be padded to the full context length.

open_clip has two layouts: ``CLIP`` keeps the text transformer's parts on the
model itself, ``CustomTextCLIP`` (MobileCLIP, EVA02, SigLIP, NLLB-CLIP) keeps a
``TextTransformer`` (or an HF encoder) in ``model.text``. :func:`text_module`
returns whichever holds the parts, so both export the same way.
"""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch
import torch.nn.functional as F
from torch import nn


class ImageTower(nn.Module):
    def __init__(self, visual: nn.Module):
        super().__init__()
        self.visual = visual

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.visual(pixel_values)


def text_module(model: nn.Module) -> nn.Module:
    """The module holding ``token_embedding``/``transformer``/``ln_final``: ``model.text`` or ``model``."""
    text = getattr(model, "text", None)
    return text if isinstance(text, nn.Module) else model


def text_pool_type(model: nn.Module) -> str:
    text = text_module(model)
    if text is model:
        return str(getattr(model, "text_pool_type", "argmax"))
    return str(getattr(text, "pool_type", "hf"))


def supports_dynamic_text(model: nn.Module) -> bool:
    """True for open_clip's causal text transformer with argmax (EOT) pooling, in either layout."""
    from open_clip.transformer import ResidualAttentionBlock

    text = text_module(model)
    blocks = getattr(getattr(text, "transformer", None), "resblocks", None)
    return (
        blocks is not None
        and getattr(text, "attn_mask", None) is not None
        and text_pool_type(model) == "argmax"
        and getattr(text, "cls_emb", None) is None
        and not getattr(text, "use_pad_mask", False)
        and all(type(b) is ResidualAttentionBlock and not hasattr(b, "ln_1_kv") for b in blocks)
        and all(isinstance(b.attn, nn.MultiheadAttention) and b.attn.in_proj_weight is not None for b in blocks)
    )


def _attention(mha: nn.MultiheadAttention, x: torch.Tensor, mask: torch.Tensor | None,
               batch: int | torch.Tensor | None = None, length: int | torch.Tensor | None = None) -> torch.Tensor:
    """Self-attention of ``x`` (B, L, D) with ``mha``'s weights as plain matmuls; ``batch``/``length`` as
    traced (default: read from ``x``; ``-1`` and an int keep the graph free of shape arithmetic)."""
    dim = mha.embed_dim
    batch = x.shape[0] if batch is None else batch
    length = x.shape[1] if length is None else length
    heads = mha.num_heads
    head_dim = dim // heads
    qkv = F.linear(x, mha.in_proj_weight, mha.in_proj_bias)
    qkv = qkv.reshape(batch, length, 3, heads, head_dim).permute(2, 0, 3, 1, 4)
    scores = (qkv[0] * head_dim**-0.5) @ qkv[1].transpose(-1, -2)
    scores = scores if mask is None else scores + mask
    out = (scores.softmax(-1) @ qkv[2]).transpose(1, 2).reshape(batch, length, dim)
    return mha.out_proj(out)


def plain_attention_eligible(mha: nn.Module) -> bool:
    """An ``nn.MultiheadAttention`` :class:`PlainSelfAttention` can stand in for (packed q/k/v, no extras)."""
    return (isinstance(mha, nn.MultiheadAttention) and mha._qkv_same_embed_dim and mha.in_proj_weight is not None
            and mha.bias_k is None and mha.bias_v is None and not mha.add_zero_attn)


class PlainSelfAttention(nn.Module):
    """Stands in for an ``nn.MultiheadAttention`` while an image tower is traced.

    Self-attention (query, key and value the same tensor, no padding mask, at most an (L, L) attention
    mask, no weights asked for) is
    written as plain matmuls with the token count as a constant and the batch as ``-1``: the exporter
    traced ``nn.MultiheadAttention`` into ~40 nodes of shape arithmetic on the symbolic batch (Shape,
    Gather, Unsqueeze, Concat) and 8 Transposes per block. Any other call goes to the wrapped module.
    The token count of an image tower is fixed by its input size, so the constant is exact.
    """

    def __init__(self, mha: nn.MultiheadAttention):
        super().__init__()
        self.mha = mha

    def forward(self, query, key, value, key_padding_mask=None, need_weights=True, attn_mask=None,
                average_attn_weights=True, is_causal=False):
        per_head_mask = attn_mask is not None and attn_mask.dim() != 2  # (B*heads, L, L): MHA's own layout
        if (key is not query or value is not query or key_padding_mask is not None or need_weights or is_causal
                or per_head_mask):
            return self.mha(query, key, value, key_padding_mask=key_padding_mask, need_weights=need_weights,
                            attn_mask=attn_mask, average_attn_weights=average_attn_weights, is_causal=is_causal)
        x = query if self.mha.batch_first else query.transpose(0, 1)
        mask = None
        if attn_mask is not None:  # a boolean mask marks the positions NOT to attend
            mask = attn_mask if attn_mask.is_floating_point() else torch.zeros_like(
                attn_mask, dtype=x.dtype).masked_fill(attn_mask, float("-inf"))
        out = _attention(self.mha, x, mask, batch=-1, length=int(x.shape[1]))
        return (out if self.mha.batch_first else out.transpose(0, 1)), None


def _eligible(module: nn.Module) -> list[tuple[nn.Module, str, nn.Module]]:
    """``(parent, attribute name, attention module)`` of every module :class:`PlainSelfAttention` can stand in for."""
    return [(parent, name, child) for parent in list(module.modules())
            for name, child in list(parent.named_children()) if plain_attention_eligible(child)]


def plain_attention_record(module: nn.Module) -> dict:
    """The manifest's ``image_attention``: ``{"form": "plain matmuls", "modules": 12}`` (``modules`` 0: none)."""
    n = len(_eligible(module))
    return {"form": "plain matmuls, token count fixed", "modules": n} if n else {"modules": 0}


@contextlib.contextmanager
def plain_attention(module: nn.Module) -> Iterator[int]:
    """Within: every eligible ``nn.MultiheadAttention`` in ``module`` replaced by :class:`PlainSelfAttention`
    (weights shared, nothing copied); restored on exit. Yields how many were replaced.

    >>> with plain_attention(model.visual) as n:      # doctest: +SKIP
    ...     torch.onnx.export(ImageTower(model.visual), ...)
    """
    swapped = _eligible(module)
    for parent, name, child in swapped:
        setattr(parent, name, PlainSelfAttention(child))
    try:
        yield len(swapped)
    finally:
        for parent, name, child in swapped:
            setattr(parent, name, child)


class TextTower(nn.Module):
    def __init__(self, model: nn.Module):
        super().__init__()
        text = text_module(model)
        self.token_embedding = text.token_embedding
        self.positional_embedding = text.positional_embedding
        self.blocks = text.transformer.resblocks
        self.ln_final = text.ln_final
        self.text_projection = text.text_projection
        self.register_buffer("attn_mask", text.attn_mask.clone(), persistent=False)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        length = input_ids.shape[1]
        x = self.token_embedding(input_ids.long()) + self.positional_embedding[:length]
        mask = self.attn_mask[:length, :length]
        for b in self.blocks:
            x = x + b.ls_1(_attention(b.attn, b.ln_1(x), mask))
            x = x + b.ls_2(b.mlp(b.ln_2(x)))
        x = self.ln_final(x)
        # The end-of-text token has the highest id of the vocabulary: pool there.
        x = x[torch.arange(x.shape[0]), input_ids.argmax(dim=-1)]
        if self.text_projection is None:
            return x
        if isinstance(self.text_projection, nn.Linear):
            return self.text_projection(x)
        return x @ self.text_projection


class FullContextTextTower(nn.Module):
    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.model.encode_text(input_ids.long())
