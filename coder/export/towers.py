"""torch modules that the ONNX exporter traces: one per tower.

* :class:`ImageTower` — ``(B,3,H,W) float32 -> (B,D)`` raw image embeddings.
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


def _attention(mha: nn.MultiheadAttention, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    batch, length, dim = x.shape
    heads = mha.num_heads
    head_dim = dim // heads
    qkv = F.linear(x, mha.in_proj_weight, mha.in_proj_bias)
    qkv = qkv.reshape(batch, length, 3, heads, head_dim).permute(2, 0, 3, 1, 4)
    scores = (qkv[0] * head_dim**-0.5) @ qkv[1].transpose(-1, -2) + mask
    out = (scores.softmax(-1) @ qkv[2]).transpose(1, 2).reshape(batch, length, dim)
    return mha.out_proj(out)


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
