"""Backbone names and pretrained sources: the one place names are normalised.

``normalize_backbone("ViT-B/16") == "ViT-B-16"``; an unknown name raises
:class:`~coder.errors.ConfigError` listing the closest open_clip architectures.
"""

from __future__ import annotations

import difflib
import os
from dataclasses import dataclass
from pathlib import Path

from ..errors import ConfigError

CHECKPOINT_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors")


def _canonical(name: str) -> str:
    # OpenAI writes "ViT-B/16", open_clip "ViT-B-16"; compare case-insensitively.
    return name.strip().replace("/", "-").lower()


def available_backbones() -> list[str]:
    import open_clip

    return list(open_clip.list_models())


# Families coder's export is checked on (parity tests vs open_clip in the test suite), as data: a family is
# "<image tower>/<text tower>" from the architecture's open_clip config (see :func:`family_of`).
VERIFIED_FAMILIES: dict[str, str] = {
    "vit/clip-text": "ViT image tower + CLIP text transformer (ViT-B-32 and custom ViT configs: fp32/fp16/int8 "
                     "parity, dynamic text length)",
}


def family_of(config: dict | None) -> str:
    """``"<image tower>/<text tower>"`` of an open_clip model config, e.g. ``"vit/clip-text"`` for ViT-B-32.

    Image tower: ``vit``, ``modified-resnet`` (the OpenAI ResNets) or ``timm``. Text tower: ``clip-text``
    (open_clip's causal transformer, CLIP BPE, pooled at end-of-text), ``clip-text-variant`` (the same
    transformer with another tokenizer, pooling or mask, e.g. CLIPA) or ``hf-text`` (a Hugging Face model).
    Captioning models (CoCa) are ``coca``.
    """
    config = config or {}
    if config.get("multimodal_cfg"):
        return "coca"
    vision, text = config.get("vision_cfg", {}), config.get("text_cfg", {})
    if vision.get("timm_model_name"):
        image = "timm"
    elif isinstance(vision.get("layers"), (list, tuple)):
        image = "modified-resnet"
    else:
        image = "vit"
    if text.get("hf_model_name"):
        tower = "hf-text"
    elif text.get("hf_tokenizer_name") or text.get("no_causal_mask") or text.get("pool_type", "argmax") != "argmax":
        tower = "clip-text-variant"
    else:
        tower = "clip-text"
    return f"{image}/{tower}"


def list_backbones() -> list[dict]:
    """Every open_clip architecture with its family, whether coder verified that family, and its pretrained tags.

    Example row: ``{"name": "ViT-B-32", "family": "vit/clip-text", "verified": True,
    "pretrained": ["openai", "laion2b_s34b_b79k", …]}``.
    """
    import open_clip

    rows = []
    for name in available_backbones():
        family = family_of(open_clip.get_model_config(name))
        rows.append({"name": name, "family": family, "verified": family in VERIFIED_FAMILIES,
                     "pretrained": list(open_clip.list_pretrained_tags_by_model(name))})
    return rows


def normalize_backbone(name: str, known: list[str] | None = None) -> str:
    """Map a user's spelling to an open_clip architecture name, or fail listing close ones."""
    known = available_backbones() if known is None else known
    by_canon = {_canonical(k): k for k in known}
    hit = by_canon.get(_canonical(name))
    if hit is not None:
        return hit
    close = difflib.get_close_matches(_canonical(name), list(by_canon), n=5, cutoff=0.5)
    hint = ", ".join(by_canon[c] for c in close) or ", ".join(sorted(known)[:8]) + ", …"
    raise ConfigError(f"unknown backbone {name!r}; close valid names: {hint} (`coder export --list` shows all)")


def register_model_config(path: str | os.PathLike) -> str:
    """Add a custom open_clip model config (JSON); returns its architecture name (the file stem)."""
    import open_clip

    path = Path(path)
    if not path.is_file() or path.suffix != ".json":
        raise ConfigError(f"--model-config {path}: expected an open_clip model config .json file")
    open_clip.add_model_config(path)
    return path.stem


def ensure_registered(architecture: str, config: dict | None) -> None:
    """Make a custom architecture recorded in a manifest known to open_clip again (torch-side rebuilds)."""
    import json
    import tempfile

    import open_clip

    if architecture in open_clip.list_models() or not config:
        return
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / f"{architecture}.json"
        path.write_text(json.dumps(config))
        open_clip.add_model_config(path)


@dataclass(frozen=True)
class PretrainedSpec:
    """Where the weights come from.

    ``kind`` is ``"random"`` (``--pretrained none``: random init with ``seed``),
    ``"file"`` (a local checkpoint; ``value`` is its path) or ``"tag"`` (an open_clip
    pretrained tag such as ``"openai"``, downloaded by open_clip's own loader).
    """

    kind: str
    value: str
    seed: int = 0

    @property
    def slug(self) -> str:
        """Short name used in the default artifact directory ``<arch>__<slug>``."""
        if self.kind == "random":
            return "none"
        if self.kind == "file":
            return Path(self.value).stem
        return self.value


def parse_pretrained(spec: str, architecture: str, seed: int = 0) -> PretrainedSpec:
    """``none`` | a checkpoint path | an open_clip tag valid for ``architecture``."""
    spec = spec.strip()
    if spec.lower() in ("none", "random", ""):
        return PretrainedSpec("random", "none", seed)
    if os.path.exists(spec) or spec.endswith(CHECKPOINT_SUFFIXES):
        if not os.path.isfile(spec):
            raise ConfigError(f"--pretrained {spec}: checkpoint file not found")
        return PretrainedSpec("file", str(Path(spec).resolve()), seed)
    import open_clip

    tags = open_clip.list_pretrained_tags_by_model(architecture)
    if spec not in tags:
        valid = ", ".join(tags) if tags else "none published (use a checkpoint path or `none`)"
        raise ConfigError(f"--pretrained {spec!r} is not a tag of {architecture}; valid: {valid}")
    return PretrainedSpec("tag", spec, seed)
