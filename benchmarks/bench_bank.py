"""Bank build speed: coder (ONNX, length-grouped) vs open_clip encode_text (full context), same texts, same run.

    python benchmarks/bench_bank.py --artifacts coder-artifacts/ViT-B-32__none [--classes cifar100] [--json]

Also times an incremental rebuild after changing 1 % of the texts (embedding cache).
Needs the [export] extra for the open_clip side.
"""

from __future__ import annotations

import dataclasses
import shutil
import tempfile
import time
from pathlib import Path

from common import script  # also puts the repository on sys.path

from coder.text_bank.text_encoder import TextEncoder  # noqa: E402
from coder.text_bank.bank import build_bank  # noqa: E402
from coder.text_bank.rows import expand  # noqa: E402
from coder.text_bank.texts import init_texts  # noqa: E402


def _time(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def open_clip_encoder(manifest: dict, batch: int = 64):
    """open_clip's own path (model built outside the timing): tokenize + encode_text at full context."""
    import open_clip
    import torch

    from coder.export.weights import rebuild_from_manifest

    model = rebuild_from_manifest(manifest)
    tok = open_clip.get_tokenizer(manifest["architecture"])

    def encode(texts: list[str]) -> None:
        with torch.no_grad():
            for i in range(0, len(texts), batch):
                model.encode_text(tok(texts[i:i + batch]))

    return encode


def run(artifacts: str, classes: str) -> dict:
    texts = init_texts(classes)
    rows = expand(texts)
    unique = sorted(set(rows.texts))
    enc = TextEncoder.load(artifacts)
    t_coder = _time(lambda: enc.encode(unique))
    torch_encode = open_clip_encoder(enc.artifact.manifest)
    t_torch = _time(lambda: torch_encode(unique))
    work = Path(tempfile.mkdtemp())
    try:
        build_bank(artifacts, texts, out=work / "bank")
        changed = list(texts.classes)
        n_change = max(1, len(unique) // 100)
        for i in range(n_change):  # one new attribute text per changed class
            c = changed[i % len(changed)]
            changed[i % len(changed)] = dataclasses.replace(c, att=c.att + (f"new attribute {i}",))
        t_incr = _time(lambda: build_bank(artifacts, texts.with_classes(changed), out=work / "bank"))
        t_full = _time(lambda: build_bank(artifacts, texts, out=work / "fresh" / "bank"))
    finally:
        shutil.rmtree(work)
    return {"texts": len(unique), "coder_texts_per_s": len(unique) / t_coder,
            "open_clip_texts_per_s": len(unique) / t_torch, "speedup": t_torch / t_coder,
            "full_build_s": t_full, "incremental_1pct_s": t_incr, "changed_texts": n_change}


def render(r: dict) -> None:
    print(f"{r['texts']} texts: coder {r['coder_texts_per_s']:.0f} texts/s, open_clip encode_text "
          f"{r['open_clip_texts_per_s']:.0f} texts/s -> {r['speedup']:.1f}x")
    print(f"bank build from scratch {r['full_build_s']:.1f} s; after changing {r['changed_texts']} texts (1 %) "
          f"{r['incremental_1pct_s']:.2f} s")


if __name__ == "__main__":
    script(__doc__, run, render, classes="cifar100")
