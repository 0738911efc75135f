"""Tiny, structurally faithful stand-ins for every open_clip family coder exports.

Each family keeps its real building blocks and only shrinks widths/depths:

=============  =====================================================================
family         tiny stand-in (real one)
=============  =====================================================================
resnet         ModifiedResNet [1,1,1,1] (RN50/RN101)
mobileclip     timm FastViT-MCi blocks, MobileOne/RepMixer/RepCPE, bidirectional
               text (MobileCLIP-S1/S2, MobileCLIP2-S0/S2)
mobileclip_b   timm ViT with MCi conv stem + causal text (MobileCLIP-B, MobileCLIP2-B)
eva02          timm EVA-02 (RoPE, SwiGLU, scale_attn_inner), causal text (EVA02-B-16)
siglip         timm ViT with MAP pooling, text pool "last" + a Unigram HF tokenizer
               trained here from a local directory (ViT-B-16-SigLIP/SigLIP2)
convnext       timm ConvNeXt + linear projection (convnext_base)
=============  =====================================================================

The timm models are registered under ``coder_tiny_*`` names and the open_clip
configs are written to a directory and registered with ``open_clip.add_model_config``.
"""

from __future__ import annotations

import json
import random
from functools import partial
from pathlib import Path

TEXT = {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2}
_REGISTERED: dict[str, str] = {}


def _register_timm() -> None:
    import timm.models as tm
    from timm.layers import LayerNorm2d  # noqa: F401  (timm import check)
    from timm.models import register_model
    from timm.models.fastvit import RepConditionalPosEnc, _create_fastvit
    from timm.models.vision_transformer_hybrid import ConvStem, _create_vision_transformer_hybrid

    if "coder_tiny_fastvit" in tm.list_models("coder_tiny_*"):
        return

    @register_model
    def coder_tiny_fastvit(pretrained=False, **kwargs):
        args = dict(layers=(1, 1, 1, 1), embed_dims=(16, 32, 64, 128), mlp_ratios=(3, 3, 3, 3),
                    se_downsamples=(False, False, True, True),
                    pos_embs=(None, None, None, partial(RepConditionalPosEnc, spatial_shape=(7, 7))),
                    token_mixers=("repmixer", "repmixer", "repmixer", "attention"), lkc_use_act=True)
        return _create_fastvit("fastvit_mci0", pretrained=False, **dict(args, **kwargs))

    @register_model
    def coder_tiny_vit_mci(pretrained=False, **kwargs):
        stem = ConvStem(channels=(16, 16, 64), stride=(4, 2, 2), kernel_size=(4, 2, 2), padding=0,
                        in_chans=kwargs.get("in_chans", 3), act_layer=__import__("torch").nn.GELU)
        args = dict(img_size=64, embed_dim=64, depth=2, num_heads=2, no_embed_class=True)
        return _create_vision_transformer_hybrid("vit_base_mci_224", backbone=stem, embed_args=dict(proj=False),
                                                 pretrained=False, **dict(args, **kwargs))

    @register_model
    def coder_tiny_eva02(pretrained=False, **kwargs):
        from timm.models.eva import _create_eva

        args = dict(img_size=64, patch_size=16, embed_dim=64, depth=2, num_heads=2, qkv_fused=False,
                    mlp_ratio=4 * 2 / 3, swiglu_mlp=True, scale_mlp=True, scale_attn_inner=True,
                    use_rot_pos_emb=True, ref_feat_shape=(4, 4), global_pool=kwargs.pop("global_pool", "token"))
        return _create_eva("eva02_base_patch16_clip_224", pretrained=False, **dict(args, **kwargs))

    @register_model
    def coder_tiny_siglip(pretrained=False, **kwargs):
        from timm.models.vision_transformer import _create_vision_transformer

        args = dict(img_size=64, patch_size=16, embed_dim=64, depth=2, num_heads=2, class_token=False,
                    global_pool="map")
        return _create_vision_transformer("vit_base_patch16_siglip_224", pretrained=False, **dict(args, **kwargs))

    @register_model
    def coder_tiny_convnext(pretrained=False, **kwargs):
        from timm.models.convnext import _create_convnext

        return _create_convnext("convnext_base", pretrained=False, **dict(dict(depths=(1, 1, 1, 1),
                                dims=(16, 32, 64, 128)), **kwargs))


def build_hf_tokenizer(directory: Path) -> int:
    """Train a tiny Unigram (SentencePiece-style, like SigLIP's) tokenizer offline; returns its vocab size.

    ``</s>`` is appended to every text (as T5/SigLIP do), ``<pad>`` pads; the
    directory loads with ``transformers.AutoTokenizer`` like a hub tokenizer.
    """
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

    rng = random.Random(0)
    words = ("a photo of the cat dog bird car truck ship plane small large red blue green bright dark picture "
             "image sketch painting tiger tulip castle mountain road forest sea apple bicycle horse frog deer "
             "airplane automobile sunflower café über").split()
    sents = [" ".join(rng.choice(words) for _ in range(rng.randint(3, 12))) for _ in range(400)]
    tok = Tokenizer(models.Unigram())
    tok.normalizer = normalizers.NFKC()
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    tok.train_from_iterator(sents, trainers.UnigramTrainer(vocab_size=200, special_tokens=["<pad>", "</s>", "<unk>"],
                                                           unk_token="<unk>"))
    tok.post_processor = processors.TemplateProcessing(single="$A </s>",
                                                       special_tokens=[("</s>", tok.token_to_id("</s>"))])
    directory.mkdir(parents=True, exist_ok=True)
    tok.save(str(directory / "tokenizer.json"))
    (directory / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "PreTrainedTokenizerFast", "pad_token": "<pad>", "eos_token": "</s>",
        "unk_token": "<unk>", "model_max_length": 16}))
    return tok.get_vocab_size()


def family_configs(tokenizer_dir: Path) -> dict[str, dict]:
    vocab = build_hf_tokenizer(tokenizer_dir)

    def timm(name, pool, proj=None, size=64):
        return {"timm_model_name": name, "timm_model_pretrained": False, "timm_pool": pool, "timm_proj": proj,
                "image_size": size}

    return {
        "coder-tiny-rn": {"embed_dim": 64, "vision_cfg": {"image_size": 64, "layers": [1, 1, 1, 1], "width": 16,
                                                          "head_width": 32}, "text_cfg": TEXT},
        "coder-tiny-mobileclip": {"embed_dim": 64, "custom_text": True, "vision_cfg": timm("coder_tiny_fastvit", "avg"),
                                  "text_cfg": {**TEXT, "no_causal_mask": True}},
        "coder-tiny-mobileclip-b": {"embed_dim": 64, "custom_text": True,
                                    "vision_cfg": timm("coder_tiny_vit_mci", "token"), "text_cfg": TEXT},
        "coder-tiny-eva02": {"embed_dim": 64, "custom_text": True, "vision_cfg": timm("coder_tiny_eva02", "token"),
                             "text_cfg": TEXT},
        "coder-tiny-siglip": {"embed_dim": 64, "custom_text": True, "init_logit_bias": -10,
                              "vision_cfg": timm("coder_tiny_siglip", "map", "none"),
                              "text_cfg": {"context_length": 16, "vocab_size": vocab, "hf_tokenizer_name":
                                           str(tokenizer_dir), "tokenizer_kwargs": {"clean": "canonicalize"},
                                           "width": 64, "heads": 2, "layers": 2, "no_causal_mask": True,
                                           "proj_bias": True, "pool_type": "last", "norm_kwargs": {"eps": 1e-6}}},
        "coder-tiny-convnext": {"embed_dim": 64, "vision_cfg": timm("coder_tiny_convnext", "", "linear"),
                                "text_cfg": TEXT},
    }


def register_families(directory: Path) -> list[str]:
    """Register the tiny timm models and open_clip configs; returns the architecture names."""
    import open_clip

    _register_timm()
    directory.mkdir(parents=True, exist_ok=True)
    names = []
    for name, cfg in family_configs(directory / "hf-tokenizer").items():
        path = directory / f"{name}.json"
        path.write_text(json.dumps(cfg))
        open_clip.add_model_config(path)
        names.append(name)
    return names
