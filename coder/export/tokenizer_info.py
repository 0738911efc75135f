"""Which tokenizer an architecture uses, and copying its vocabulary into the artifact."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from ..errors import ExportError
from ..fsutil import atomic_path


def tokenizer_for(architecture: str, context_length: int):
    import open_clip

    try:
        return open_clip.get_tokenizer(architecture, context_length=context_length)
    except ModuleNotFoundError as e:
        raise ExportError(f"{architecture} needs a Hugging Face tokenizer ({e.name} is not installed); "
                          "coder exports CLIP-BPE towers only") from None


def copy_vocabulary(tokenizer, out_dir: Path) -> dict[str, Any]:
    """Copy the BPE vocabulary next to the encoders; return the manifest's ``tokenizer`` record."""
    from open_clip.tokenizer import SimpleTokenizer, default_bpe

    if type(tokenizer) is not SimpleTokenizer:
        raise ExportError(f"tokenizer {type(tokenizer).__name__} is not CLIP BPE; coder exports CLIP-BPE towers only")
    src = Path(default_bpe())
    dst = out_dir / src.name
    with atomic_path(dst) as tmp:
        shutil.copyfile(src, tmp)
    return {
        "kind": "clip_bpe",
        "file": src.name,
        "clean": "lower",
        "context_length": int(tokenizer.context_length),
        "sot_token_id": int(tokenizer.sot_token_id),
        "eot_token_id": int(tokenizer.eot_token_id),
    }
