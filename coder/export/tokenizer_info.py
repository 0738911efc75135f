"""Which tokenizer an architecture uses, and saving it into the artifact.

Two kinds reach the torch-free runtime (:mod:`coder.text_bank.tokenizer`):

* ``clip_bpe`` — open_clip's ``SimpleTokenizer``: the BPE merges file is copied, with
  the text cleaning the model config asks for (``text_cfg.tokenizer_kwargs.clean``:
  ``lower`` (default), ``whitespace`` or ``canonicalize``).
* ``hf_tokenizers`` — open_clip's ``HFTokenizer`` (SigLIP/SigLIP2, NLLB, custom
  configs with ``hf_tokenizer_name``): the fast tokenizer's ``tokenizer.json`` is
  written, with the settings open_clip calls it with (cleaning, context length,
  pad id, padding/truncation side, sep stripping).

Export validates the runtime tokenizer id-for-id against open_clip's (both kinds)
before anything else; settings without a torch-free runtime (a reduction mask,
extra special tokens, an unknown cleaning) are refused with an ExportError.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ExportError, one_line
from ..store import atomic_path

HF_FILE = "tokenizer.json"


def tokenizer_probe_texts() -> list[str]:
    """Texts that exercise cleaning, truncation, padding and unknown pieces."""
    words = "a photo of the cat dog Tiger tulip castle mountain road".split()
    long = " ".join(words * 40)
    return ["a photo of a cat.", "", "   ", "A PHOTO OF A DOG!!", "it's a bird_house, isn't it?", "hot_dog, please.",
            "Hot-Dog: \"PLEASE\" (50% off) -- e.g. U.S.A.; __init__", "a\u00a0b\u2003c_d",
            "caf\u00e9 na\u00efve \u00fcber \u65e5\u672c \U0001f431", "&amp;lt;b&amp;gt;bold&amp;lt;/b&amp;gt;",
            "tabs\tand\nnew   lines", long, "x" * 500, "photo " * 63, "photo " * 64, "photo " * 65]


def tokenizer_for(architecture: str, context_length: int):
    """open_clip's tokenizer for ``architecture``; a typed ExportError when it cannot be built."""
    import open_clip

    try:
        return open_clip.get_tokenizer(architecture, context_length=context_length)
    except ModuleNotFoundError as e:
        raise ExportError(f"{architecture}: its Hugging Face tokenizer needs `{e.name}` at export time; "
                          "install it (`pip install transformers`)") from None
    except Exception as e:  # transformers/hub raise OSError, ValueError, HTTP errors alike
        text_cfg = (open_clip.get_model_config(architecture) or {}).get("text_cfg", {})
        name = text_cfg.get("hf_tokenizer_name", "")
        why = one_line(e, 200)
        if not name and "siglip" not in architecture.lower():  # open_clip's own CLIP BPE tokenizer
            raise ExportError(f"{architecture}: open_clip cannot build its tokenizer with text_cfg.tokenizer_kwargs "
                              f"{text_cfg.get('tokenizer_kwargs')} ({why}); fix them in the model config") from None
        raise ExportError(f"{architecture}: tokenizer {name or '?'} could not be loaded ({why}); it comes from the "
                          "Hugging Face hub: export once with network access (it is cached), or point "
                          "hf_tokenizer_name in a --model-config at a local tokenizer directory") from None


def save_tokenizer(tokenizer, out_dir: Path, architecture: str) -> dict[str, Any]:
    """Write the tokenizer file(s) next to the encoders; return the manifest's ``tokenizer`` record."""
    from open_clip.tokenizer import HFTokenizer, SimpleTokenizer

    from ..text_bank.tokenizer import ClipTokenizer, HFTokenizer as RuntimeHF

    if type(tokenizer) is SimpleTokenizer:
        record = _save_clip_bpe(tokenizer, out_dir, architecture)
        runtime = ClipTokenizer(out_dir / record["file"], record["context_length"], record["clean"])
        check_same_ids(tokenizer, runtime, architecture)
        return record
    if isinstance(tokenizer, HFTokenizer):
        record = _save_hf(tokenizer, out_dir, architecture)
        check_same_ids(tokenizer, RuntimeHF.from_record(out_dir / HF_FILE, record), architecture)
        return record
    raise ExportError(f"{architecture}: tokenizer {type(tokenizer).__name__} has no torch-free runtime "
                      "(supported: open_clip SimpleTokenizer, HFTokenizer with a fast tokenizer)")


def _save_clip_bpe(tokenizer, out_dir: Path, architecture: str) -> dict[str, Any]:
    from open_clip.tokenizer import default_bpe

    if getattr(tokenizer, "reduction_fn", None) is not None:
        raise ExportError(f"{architecture}: tokenizer_kwargs.reduction_mask (a training-time truncation) has no "
                          "torch-free runtime; remove it from the model config for export")
    if len(tokenizer.all_special_ids) != 2:
        raise ExportError(f"{architecture}: tokenizer_kwargs.additional_special_tokens have no torch-free runtime; "
                          "remove them from the model config for export")
    clean = _clean_name(tokenizer)
    src = Path(default_bpe())
    with atomic_path(out_dir / src.name) as tmp:
        shutil.copyfile(src, tmp)
    return {
        "kind": "clip_bpe",
        "file": src.name,
        "clean": clean,
        "context_length": int(tokenizer.context_length),
        "sot_token_id": int(tokenizer.sot_token_id),
        "eot_token_id": int(tokenizer.eot_token_id),
        "eos_id": int(tokenizer.eot_token_id),
    }


def _clean_name(tokenizer) -> str:
    from open_clip.tokenizer import get_clean_fn

    for name in ("canonicalize", "whitespace", "lower"):
        if tokenizer.clean_fn is get_clean_fn(name):
            return name
    raise ExportError(f"open_clip tokenizer cleaning {tokenizer.clean_fn!r} is unknown to coder")


def _save_hf(tokenizer, out_dir: Path, architecture: str) -> dict[str, Any]:
    hf = tokenizer.tokenizer
    if tokenizer.tokenizer_mode:
        raise ExportError(f"{architecture}: HF tokenizer mode {tokenizer.tokenizer_mode!r} has no torch-free "
                          "runtime yet (supported: the standard mode)")
    backend = getattr(hf, "backend_tokenizer", None)
    if backend is None:
        raise ExportError(f"{architecture}: {type(hf).__name__} is a slow (Python) tokenizer; coder needs a fast "
                          "one (a tokenizer.json); install `sentencepiece` and `protobuf` so transformers converts it")
    from tokenizers import Tokenizer

    plain = Tokenizer.from_str(backend.to_str())
    plain.no_truncation()  # the runtime sets both from the record, exactly as open_clip calls it
    plain.no_padding()
    with atomic_path(out_dir / HF_FILE) as tmp:
        tmp.write_text(plain.to_str(), encoding="utf-8")
    if hf.pad_token_id is None:
        raise ExportError(f"{architecture}: tokenizer has no pad token; open_clip pads to the context length")
    return {
        "kind": "hf_tokenizers",
        "file": HF_FILE,
        "source": str(getattr(hf, "name_or_path", "")),
        "clean": _clean_name(tokenizer),
        "context_length": int(tokenizer.context_length),
        "pad_id": int(hf.pad_token_id),
        "pad_token": str(hf.pad_token),
        "eos_id": None if hf.eos_token_id is None else int(hf.eos_token_id),
        "sep_id": None if getattr(hf, "sep_token_id", None) is None else int(hf.sep_token_id),
        "strip_sep_token": bool(tokenizer.strip_sep_token),
        "padding_side": str(hf.padding_side),
        "truncation_side": str(hf.truncation_side),
    }


def check_same_ids(tokenizer, runtime, architecture: str) -> None:
    """Runtime ids == open_clip ids on probe texts (long, empty, unicode, punctuation); else ExportError.

    ``runtime`` is the torch-free tokenizer built from the saved file and record.
    """
    texts = tokenizer_probe_texts()
    want = tokenizer(texts).numpy()
    got = runtime(texts)
    bad = [t for t, a, b in zip(texts, want, got) if not np.array_equal(a, b)]
    if bad:
        raise ExportError(f"{architecture}: the torch-free tokenizer differs from open_clip's on {len(bad)} of "
                          f"{len(texts)} probe texts (first: {bad[0][:60]!r}); please report this model")
