"""Model zoo: every backbone family exported, validated and timed on this CPU, in one run.

    nice python benchmarks/bench_backbones.py --artifacts /tmp/zoo [--models RN50,ViT-B-32] [--json]

Per row (random init, seed 0): parameters, GFLOPs per image (image tower), ONNX
sizes (image + text encoders, fp32 / fp16; int8 image encoder), the export's
own parity figures (fp32 max |diff|, fp16 min cosine, int8 min cosine vs torch),
CPU image-encoder ms at batch 1 (fp32 and int8 timed in blocks of ``--repeats``, :mod:`coder.timing`) and
the int8-vs-fp32 cosine on natural-looking scenes. A row that does not export
records why. Results are cached per row in ``<artifacts>/zoo.json`` as soon as a
row finishes: re-running resumes after a crash or timeout (``--redo 1`` starts over);
``--table-only 1`` prints the table of the cached rows without measuring.

SigLIP/SigLIP2 tokenizers come from the Hugging Face hub; offline (``HF_HUB_OFFLINE=1``)
with ``--offline-tokenizer 1`` those rows use a stand-in tokenizer trained here
with the same vocabulary size, so every tower number is the real architecture's
and only the text ids are not SigLIP's (the row says so).
"""

from __future__ import annotations

import gc
import json
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np

from common import script  # also puts the repository on sys.path

from coder.store import atomic_write_json  # noqa: E402
from coder.timing import blocks_ms  # noqa: E402

ZOO = ["RN50", "ViT-B-32", "ViT-B-16", "MobileCLIP-S2", "MobileCLIP2-S0", "EVA02-B-16", "ViT-B-16-SigLIP",
       "ViT-B-16-SigLIP2", "MobileCLIP-S1", "MobileCLIP-B", "MobileCLIP2-S2", "MobileCLIP2-B", "convnext_base",
       "RN101", "ViT-L-14", "ViT-L-14-336"]
HUB_TOKENIZER = ("ViT-B-16-SigLIP", "ViT-B-16-SigLIP2")


def _standin_config(arch: str, root: Path) -> str:
    """Register ``<arch>-offline-tok``: the same model config with a local tokenizer of the same vocab size."""
    import open_clip
    from tokenizers import Tokenizer, models, pre_tokenizers, processors, trainers

    cfg = json.loads(json.dumps(open_clip.get_model_config(arch)))
    vocab = int(cfg["text_cfg"]["vocab_size"])
    tok_dir = root / f"{arch}-tokenizer"
    if not (tok_dir / "tokenizer.json").exists():
        tok_dir.mkdir(parents=True, exist_ok=True)
        words = [f"{w}{i}" for i in range(400) for w in ("photo", "cat", "dog", "tiger", "car", "sea")]
        tok = Tokenizer(models.Unigram())
        tok.pre_tokenizer = pre_tokenizers.Metaspace()
        tok.train_from_iterator([" ".join(words[i:i + 12]) for i in range(0, len(words), 3)],
                                trainers.UnigramTrainer(vocab_size=min(vocab, 2000), unk_token="<unk>",
                                                        special_tokens=["<pad>", "</s>", "<unk>"]))
        tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
        tok.save(str(tok_dir / "tokenizer.json"))
        (tok_dir / "tokenizer_config.json").write_text(json.dumps({
            "tokenizer_class": "PreTrainedTokenizerFast", "pad_token": "<pad>", "eos_token": "</s>",
            "unk_token": "<unk>"}))
    cfg["text_cfg"]["hf_tokenizer_name"] = str(tok_dir)
    name = f"{arch}-offline-tok"
    path = root / f"{name}.json"
    path.write_text(json.dumps(cfg))
    open_clip.add_model_config(path)
    return name


def _sizes(art: Path, manifest: dict) -> dict:
    def mb(tower: str, precision: str) -> float | None:
        name = f"{tower}_encoder.{precision}.onnx"
        if name not in manifest["files"]:
            return None
        names = [name, *manifest["files"][name].get("external_data", [])]
        return sum(manifest["files"][n]["bytes"] for n in names) / 1e6

    return {f"{t}_{p}_mb": mb(t, p) for t in ("image", "text") for p in ("fp32", "fp16", "int8")
            if not (t == "text" and p == "int8")}


def _parity(manifest: dict) -> dict:
    v = manifest["validation"]
    get = lambda name, key: (v.get(name) or {}).get(key)  # noqa: E731
    return {"image_fp32_max_abs": get("image_encoder.fp32.onnx", "max_abs_diff"),
            "text_fp32_max_abs": get("text_encoder.fp32.onnx", "max_abs_diff"),
            "image_fp16_min_cos": get("image_encoder.fp16.onnx", "min_cosine"),
            "text_fp16_min_cos": get("text_encoder.fp16.onnx", "min_cosine"),
            "image_int8_min_cos_vs_torch": get("image_encoder.int8.onnx", "min_cosine")}


def _export(arch: str, out: Path, log) -> tuple[dict, bool]:
    """Export fp32+fp16 (+int8 when its gate passes); returns (manifest, int8 exported)."""
    from coder.errors import ExportError
    from coder.export.pipeline import ExportOptions, export_artifacts
    from coder.export.registry import PretrainedSpec

    spec = PretrainedSpec("random", "none", 0)
    try:
        return export_artifacts(ExportOptions(arch, spec, out, ("fp32", "fp16"), int8=True), log).manifest, True
    except ExportError as e:
        if "int8" not in str(e):
            raise
        log(f"int8 gate failed, exporting without int8: {e}")
        return export_artifacts(ExportOptions(arch, spec, out, ("fp32", "fp16"), force=True), log).manifest, False


def _params(arch: str) -> dict:
    import open_clip
    import torch

    torch.manual_seed(0)
    model = open_clip.create_model(arch, pretrained=None)
    count = lambda m: sum(p.numel() for p in m.parameters()) / 1e6  # noqa: E731
    res = {"params_total_m": count(model), "params_image_m": count(model.visual)}
    del model
    gc.collect()
    return res


def _timing(art: Path, int8: bool, repeats: int) -> dict:
    """Batch-1 ms of fp32 and int8 on ONNX Runtime, each timed in blocks (:func:`coder.timing.blocks_ms`:
    alternating two sessions measures their spinning threads contending)."""
    from coder.runtime.encoder import ImageEncoder
    from coder.runtime.preprocess import preprocess_batch
    from coder.samples import synthetic_batch

    engines = {"fp32": ImageEncoder.load(art, "fp32")}
    if int8:
        engines["int8"] = ImageEncoder.load(art, "int8")
    x = preprocess_batch(synthetic_batch(4, seed=11), engines["fp32"].preprocess_config)
    best = blocks_ms({p: (lambda e=enc: e.engine.run(x[:1])) for p, enc in engines.items()}, repeats)
    res = {f"cpu_{p}_b1_ms": v for p, v in best.items()}
    if int8:
        unit = lambda a: a / np.linalg.norm(a, axis=1, keepdims=True)  # noqa: E731
        ref, got = engines["fp32"].engine.run(x), engines["int8"].engine.run(x)
        res["int8_cos_to_fp32_min"] = float(np.min(np.sum(unit(ref) * unit(got), axis=1)))
    return res


def measure(arch: str, root: Path, repeats: int, offline_tokenizer: int, keep: int, log) -> dict:
    from coder.errors import CoderError

    row: dict = {"model": arch}
    name = arch
    offline = os.environ.get("HF_HUB_OFFLINE", "") not in ("", "0")
    if arch in HUB_TOKENIZER and offline and offline_tokenizer:
        name = _standin_config(arch, root)
        row["note"] = "tokenizer: offline stand-in (hub unreachable); towers are the real architecture"
    out = root / name
    t0 = time.time()
    try:
        manifest, int8 = _export(name, out, log)
    except CoderError as e:
        return {**row, "error": str(e), "export_s": time.time() - t0}
    row.update(export_s=time.time() - t0, image_gflop=manifest["image_gflop"], embed_dim=manifest["embed_dim"],
               image_size=manifest["preprocess"]["size"], text_dynamic_seq=manifest["text"]["dynamic_seq"],
               reparameterized=manifest.get("reparameterization", {}).get("applied", False), int8=int8,
               **_sizes(out, manifest), **_parity(manifest))
    row.update(_timing(out, int8, repeats))
    row.update(_params(name))
    if not keep:
        shutil.rmtree(out, ignore_errors=True)
    return row


def run(artifacts: str, models: str, repeats: int, redo: int, offline_tokenizer: int, keep: int,
        table_only: int) -> dict:
    import onnxruntime
    import torch

    root = Path(artifacts)
    root.mkdir(parents=True, exist_ok=True)
    cache_path = root / "zoo.json"
    cache = json.loads(cache_path.read_text()) if cache_path.exists() and not redo else {}
    rows = cache.setdefault("rows", {})
    cache.setdefault("started", time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
    cache["env"] = {"onnxruntime": onnxruntime.__version__, "torch": torch.__version__, "cpus": os.cpu_count(),
                    "note": "random init; one run on a shared machine: compare rows, not absolute ms"}
    names = [m.strip() for m in models.split(",") if m.strip()] if models else ZOO
    for arch in [] if table_only else names:
        if arch in rows and "error" not in rows[arch]:  # failed rows are tried again
            continue
        log = lambda s, a=arch: print(f"[{time.strftime('%H:%M:%S')}] {a}: {s}", file=sys.stderr, flush=True)  # noqa: E731
        log("start")
        rows[arch] = measure(arch, root, repeats, offline_tokenizer, keep, log)
        atomic_write_json(cache_path, cache)  # each finished row survives a later crash
        log("done" if "error" not in rows[arch] else f"failed: {rows[arch]['error']}")
        gc.collect()
    return {**cache, "order": names}


def _f(v, fmt: str) -> str:
    return "–" if v is None else format(v, fmt)


def render(res: dict) -> None:
    print("| model | params M (image) | GFLOPs/img | ONNX MB fp32 / fp16 / int8 (image+text; int8 image) | "
          "fp32 max abs diff (img / txt) | fp16 min cos (img) | CPU b1 ms fp32 / int8 | int8 cos vs fp32 |")
    print("|---|---|---|---|---|---|---|---|")
    for arch in res["order"]:
        r = res["rows"].get(arch)
        if r is None:
            print(f"| {arch} | not measured in this run | | | | | | |")
            continue
        if "error" in r:
            print(f"| {arch} | does not export: {r['error']} | | | | | | |")
            continue
        mb = lambda p: (r.get(f"image_{p}_mb") or 0) + (r.get(f"text_{p}_mb") or 0)  # noqa: E731
        name = arch + (" ¹" if r.get("note") else "") + (" ²" if r.get("reparameterized") else "")
        print(f"| {name} | {r['params_total_m']:.1f} ({r['params_image_m']:.1f}) | {r['image_gflop']:.2f} | "
              f"{mb('fp32'):.0f} / {mb('fp16'):.0f} / {_f(r.get('image_int8_mb'), '.0f')} | "
              f"{_f(r['image_fp32_max_abs'], '.1e')} / {_f(r['text_fp32_max_abs'], '.1e')} | "
              f"{_f(r['image_fp16_min_cos'], '.5f')} | {r['cpu_fp32_b1_ms']:.1f} / {_f(r.get('cpu_int8_b1_ms'), '.1f')} | "
              f"{_f(r.get('int8_cos_to_fp32_min'), '.4f')} |")


if __name__ == "__main__":
    script(__doc__, run, render, models="", repeats=10, redo=0, offline_tokenizer=1, keep=0, table_only=0)
