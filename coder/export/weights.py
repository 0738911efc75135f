"""Build the open_clip model for a backbone + pretrained source.

Returns the model in eval mode together with a JSON-ready record of where its
weights came from (a checkpoint's sha256, never only its path).
"""

from __future__ import annotations

import logging
import os
from typing import Any

from ..errors import WeightsError, one_line
from ..store import sha256_file
from .registry import PretrainedSpec


def load_model(architecture: str, spec: PretrainedSpec):
    """``load_model("ViT-B-32", PretrainedSpec("random", "none", 0)) -> (model, record)``."""
    import open_clip
    import torch

    logging.getLogger().setLevel(logging.ERROR)  # open_clip logs a warning for random init
    if spec.kind == "random":
        torch.manual_seed(spec.seed)
        model = open_clip.create_model(architecture, pretrained=None)
        record: dict[str, Any] = {"kind": "random", "seed": spec.seed}
    elif spec.kind == "file":
        model = _from_file(architecture, spec.value)
        record = {"kind": "file", "file": os.path.basename(spec.value), "sha256": sha256_file(spec.value),
                  "path": os.path.abspath(spec.value)}  # for same-run torch references (coder bench)
    else:
        model, record = _from_tag(architecture, spec.value)
    return model.eval(), record


def rebuild_from_manifest(manifest: dict[str, Any]):
    """The torch model an artifact was exported from, for same-run comparisons.

    Random init: rebuilt from the seed. A local checkpoint: reloaded from its recorded path when
    the file there still has the recorded sha256. Raises :class:`WeightsError` otherwise (open_clip
    tags are not downloaded again; a moved or changed checkpoint is named).
    """
    from .registry import ensure_registered

    rec = manifest["pretrained"]
    ensure_registered(manifest["architecture"], manifest.get("open_clip_config"))
    if rec["kind"] == "random":
        spec = PretrainedSpec("random", "none", rec["seed"])
    elif rec["kind"] == "file":
        path = rec.get("path")
        if not path or not os.path.isfile(path):
            raise WeightsError(f"checkpoint {rec.get('file')} is not at its recorded path {path!r}")
        if sha256_file(path) != rec.get("sha256"):
            raise WeightsError(f"checkpoint {path} changed since the export (sha256 differs)")
        spec = PretrainedSpec("file", path)
    else:
        raise WeightsError("needs the original weights; open_clip tags are not downloaded again here")
    return load_model(manifest["architecture"], spec)[0]


def _from_file(architecture: str, path: str):
    import open_clip

    try:
        return open_clip.create_model(architecture, pretrained=path, weights_only=True)
    except Exception as e:  # open_clip raises RuntimeError/KeyError/pickle errors alike
        msg = one_line(e, 200)
        raise WeightsError(f"cannot load checkpoint {path} into {architecture}: {msg}") from None


def _from_tag(architecture: str, tag: str):
    import open_clip
    from open_clip import pretrained as oc_pretrained

    cfg = oc_pretrained.get_pretrained_cfg(architecture, tag)
    offline = os.environ.get("HF_HUB_OFFLINE", "") not in ("", "0")
    try:
        local = oc_pretrained.download_pretrained(cfg)
        model = open_clip.create_model(architecture, pretrained=tag)
    except Exception as e:
        why = "HF_HUB_OFFLINE=1 and the weights are not in the local cache" if offline else one_line(e, 200)
        raise WeightsError(
            f"weights {architecture}/{tag} unavailable: {why}; pass a local checkpoint path or `--pretrained none`"
        ) from None
    record = {"kind": "tag", "tag": tag, "hf_hub": cfg.get("hf_hub", ""), "url": cfg.get("url", "")}
    if local and os.path.isfile(local):
        record["sha256"] = sha256_file(local)
    return model, record
