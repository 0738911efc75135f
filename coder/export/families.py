"""What differs between open_clip model families at export time, in one place.

* both layouts of the text tower (``CLIP`` / ``CustomTextCLIP``): :func:`embed_dim`;
* the reparameterized image tower exported in place of ``model.visual``
  (MobileOne/FastViT, :mod:`coder.export.reparam`): :class:`ExportModel`;
* the preprocessing the weights were trained with: :func:`preprocess_record`;
* external-data companions in the manifest: :func:`add_external_data`;
* turning anything unexpected into a typed, one-line :class:`ExportError`: :func:`guarded`
  (a full disk or read-only medium into a :class:`StorageError`: :func:`storage_failure`).
"""

from __future__ import annotations

import contextlib
import errno
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from ..errors import CoderError, ExportError, StorageError, one_line
from ..manifest import PreprocessConfig, file_entry
from ..store import storage_error
from .registry import PretrainedSpec

PREPROCESS_KEYS = ("mean", "std", "interpolation", "resize_mode")


@dataclass
class ExportModel:
    """The open_clip model (the validation reference) and the image tower to export (maybe folded)."""

    model: Any
    visual: Any


def torch_model(m):
    return m.model if isinstance(m, ExportModel) else m


def export_visual(m):
    return m.visual if isinstance(m, ExportModel) else m.visual


def embed_dim(model) -> int:
    """Width of the joint embedding, for both text-tower layouts (``model.text`` or ``model`` itself)."""
    import torch

    from .towers import text_module

    proj = getattr(text_module(model), "text_projection", None)
    if isinstance(proj, torch.nn.Linear):
        return int(proj.out_features)
    if isinstance(proj, torch.Tensor) and proj.ndim == 2:
        return int(proj.shape[1])
    with torch.no_grad():  # HF text encoders, projection-less towers: ask the model
        ids = torch.zeros(1, int(model.context_length), dtype=torch.long)
        return int(model.encode_text(ids).shape[-1])


def preprocess_record(model, architecture: str, spec: PretrainedSpec) -> dict[str, Any]:
    """The image transform for these weights, with ``source`` saying where it came from.

    With a pretrained tag, open_clip already merged the tag's values into ``preprocess_cfg``.
    Random init and local checkpoints get open_clip's defaults (OpenAI CLIP's mean/std,
    bicubic, shortest), which are wrong for MobileCLIP (mean 0, std 1, bilinear) or SigLIP
    (0.5/0.5, squash): when every published tag of the architecture agrees, their values are
    used instead, so a checkpoint of those weights is preprocessed the way it was trained.
    """
    from open_clip import pretrained as oc_pretrained

    cfg = dict(model.visual.preprocess_cfg)
    source = f"pretrained tag {spec.value}" if spec.kind == "tag" else "open_clip defaults"
    if spec.kind != "tag":
        tags = oc_pretrained.list_pretrained_tags_by_model(architecture)
        values = [{k: _plain(oc_pretrained.get_pretrained_cfg(architecture, t).get(k)) for k in PREPROCESS_KEYS}
                  for t in tags]
        if values and all(v == values[0] for v in values) and all(x is not None for x in values[0].values()):
            cfg.update(values[0])
            source = f"published tags of {architecture} ({', '.join(tags)})"
    return {**PreprocessConfig.from_dict(cfg).to_dict(), "source": source}


def _plain(v):
    return list(v) if isinstance(v, (tuple, list)) else v


def load_tokenizer(architecture: str):
    """open_clip's tokenizer, loaded BEFORE the model: a hub-only tokenizer fails in seconds, not minutes."""
    import open_clip

    from .tokenizer_info import tokenizer_for

    ctx = ((open_clip.get_model_config(architecture) or {}).get("text_cfg") or {}).get("context_length")
    return tokenizer_for(architecture, ctx)


def prepare_model(model, tokenizer, opts, report) -> tuple[ExportModel, dict[str, Any]]:
    """Tokenizer saved + checked, manifest info, and the (reparameterized) image tower to export."""
    from .pipeline import model_info
    from .reparam import reparameterize
    from .tokenizer_info import save_tokenizer
    from .towers import plain_attention_record

    if int(tokenizer.context_length) != int(model.context_length):
        raise ExportError(f"{opts.architecture}: tokenizer context {tokenizer.context_length} != text tower "
                          f"context {model.context_length}; fix text_cfg.context_length in the model config")
    record = save_tokenizer(tokenizer, opts.out_dir, opts.architecture)
    info = model_info(model, opts.architecture, record, preprocess_record(model, opts.architecture, opts.pretrained))
    visual, info["reparameterization"] = reparameterize(model.visual)
    info["image_attention"] = plain_attention_record(visual)
    if info["reparameterization"]["applied"]:
        report(f"reparameterized {info['reparameterization']['modules']} train-time branch modules")
    return ExportModel(model, visual), info


def add_external_data(out: Path, files: dict[str, dict[str, Any]]) -> None:
    """List each model's companions in the manifest (ONNX external data, an OpenVINO IR's ``.bin``)."""
    from .int8_openvino import weights_name
    from .onnx_files import companions

    for name in [n for n in files if n.endswith((".onnx", ".xml"))]:
        extra = companions(out / name) if name.endswith(".onnx") else [weights_name(name)]
        if extra:
            files[name]["external_data"] = extra
            for comp in extra:
                files[comp] = file_entry(out / comp)


HINTS = (
    ("validation failed", "the ONNX graph does not match torch: try another --opset, `--precision fp32` "
                          "(fp16 gate), no --int8 (int8 gate), or report the numbers above"),
    ("Unsupported", "an operator has no ONNX symbolic at this opset: try --opset 18 or a newer torch"),
    ("Exporting the operator", "an operator has no ONNX symbolic at this opset: try --opset 18 or a newer torch"),
    ("hf_hub", "it needs files from the Hugging Face hub: run once with network access (they are cached)"),
    ("huggingface", "it needs files from the Hugging Face hub: run once with network access (they are cached)"),
    ("out of memory", "not enough memory: close other jobs or export on a bigger machine"),
)


def _hint(message: str) -> str:
    low = message.lower()
    return next((h for key, h in HINTS if key.lower() in low),
                "this model family is not supported by this coder yet; report it with the message above")


def storage_failure(e: BaseException, where: str | os.PathLike | None = None) -> StorageError | None:
    """The StorageError (exit 3) for a full disk / read-only medium anywhere in ``e``'s chain, else None.

    Libraries wrap the OSError of a failed write (``raise ... from e``) or only keep its text (torch's C++
    writers): both count. ``where`` names the directory (default: the failed file's directory).
    Example: ``storage_failure(RuntimeError("write: No space left on device"), "art")`` -> "no space left on art…".
    """
    seen, implicit = set(), False
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        code = getattr(e, "errno", None) or next((n for n, text in _STORAGE_TEXTS if text in str(e)), None)
        name = getattr(e, "filename", None) if isinstance(e, OSError) else None
        place = where or (Path(os.fsdecode(name)).parent if name else "the output directory")
        # An error only raised while handling another (not ``from`` it) counts for a full disk alone.
        if code is not None and (not implicit or code in (errno.ENOSPC, errno.EDQUOT)):
            mapped = storage_error(OSError(code, str(e)), place)
            if mapped is not None:
                return mapped
        implicit = implicit or e.__cause__ is None
        e = e.__cause__ or e.__context__
    return None


_STORAGE_TEXTS = ((errno.ENOSPC, "No space left on device"), (errno.EDQUOT, "Disk quota exceeded"),
                  (errno.EROFS, "Read-only file system"))


@contextlib.contextmanager
def guarded(architecture: str, stage: str, where: str | os.PathLike | None = None) -> Iterator[None]:
    """Re-raise anything that is not a CoderError as ExportError naming the model, reason and a fix.

    A full disk or read-only medium (``where``: the artifact directory) is a StorageError (exit 3) instead.
    """
    try:
        yield
    except ExportError as e:
        if str(e).startswith(f"{architecture}:"):
            raise
        raise ExportError(f"{architecture}: {e}; {_hint(str(e))}") from None
    except (CoderError, KeyboardInterrupt, MemoryError):
        raise
    except Exception as e:  # torch/onnx/timm/transformers raise every type there is
        mapped = storage_failure(e, where)
        if mapped is not None:
            raise mapped from None
        why = f"{type(e).__name__}: {one_line(e)}" if str(e).strip() else type(e).__name__
        raise ExportError(f"{architecture}: {stage} failed ({why}); {_hint(why)}") from None
