"""``coder export``, ``coder embed`` and ``coder doctor``: making and inspecting an artifact."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from .common import ALLOW_FALLBACK, exit_code_for, out, print_json, progress_bar, say
from ..errors import ConfigError, InputError

app = typer.Typer()


def _require_export_extra() -> None:
    """The runtime-only install has no torch: say which extra `coder export` needs, not a traceback."""
    try:
        import open_clip  # noqa: F401
        import torch  # noqa: F401
    except ImportError as e:
        raise ConfigError(f"coder export needs the [export] extra (torch, open_clip): "
                          f"pip install \"coder[cpu,export]\" ({e})") from None


@app.command()
def export(
    backbone: str = typer.Option("ViT-B-32", "--backbone", "-b", help="open_clip architecture, e.g. ViT-B/16."),
    pretrained: str = typer.Option("openai", help="open_clip tag, checkpoint path, or 'none' (random init)."),
    out_dir: Optional[Path] = typer.Option(None, "--out", help="Default ./coder-artifacts/<arch>__<tag>."),
    precision: str = typer.Option("fp32", help="fp32 | fp16 | both."),
    opset: int = typer.Option(17, help="ONNX opset (>= 17 for LayerNormalization)."),
    max_batch: int = typer.Option(64, min=1, help="Largest batch the runtime sends in one call."),
    seed: int = typer.Option(0, help="Seed for --pretrained none."),
    model_config: Optional[Path] = typer.Option(None, help="Extra open_clip model config .json (custom arch)."),
    no_validate: bool = typer.Option(False, "--no-validate", help="Skip the torch parity gates (not advised)."),
    force: bool = typer.Option(False, help="Replace an existing artifact."),
    int8: bool = typer.Option(False, "--int8", help="Also statically calibrated int8 image encoders (QDQ: one file "
                                                    "for ONNX Runtime CPU, one for TensorRT)."),
    calibration: str = typer.Option("synthetic", "--calibration",
                                    help="--int8 calibration images: 'synthetic' scenes, or a directory of your "
                                         "own (frames from your camera)."),
    calibration_images: int = typer.Option(32, "--calibration-images", help="How many calibration images."),
    eval_set: Optional[Path] = typer.Option(None, "--eval-set", help="--int8: also measure top-1 of the CODER "
                                                                     "classifier fp32 vs int8 on this ImageFolder "
                                                                     "(the bank's classes must name its folders)."),
    classes: str = typer.Option("imagenet1k", help="Built-in class list or class file for the bank ('none': skip)."),
    texts: Optional[Path] = typer.Option(None, "--texts", help="Build the bank from this texts file instead."),
    engine: str = typer.Option("none", help="none | tensorrt: also build a validated fp16 TensorRT engine "
                                            "(with the bank's head fused) on this machine's GPU."),
    engine_dir: Optional[Path] = typer.Option(None, help="Where the engine goes (default <out>/engines)."),
    as_json: bool = typer.Option(False, "--json", help="Print the manifest as JSON (one document, with the "
                                                        "engine record under 'tensorrt_engine' for --engine)."),
    list_backbones: bool = typer.Option(False, "--list", help="List open_clip architectures, their pretrained tags "
                                                              "and the families coder verified; export nothing."),
) -> None:
    """Export an open_clip model to validated ONNX encoders + manifest, then build the class bank."""
    _require_export_extra()
    from ..export.pipeline import ExportOptions, default_out_dir, export_artifacts
    from ..export.registry import normalize_backbone, parse_pretrained, register_model_config

    if model_config is not None:
        register_model_config(model_config)
    if list_backbones:
        _print_backbones(as_json)
        return

    precisions = {"fp32": ("fp32",), "fp16": ("fp32", "fp16"), "both": ("fp32", "fp16")}.get(precision)
    if precisions is None or engine not in ("none", "tensorrt"):
        raise ConfigError(f"--precision {precision!r} / --engine {engine!r}: choose fp32|fp16|both, none|tensorrt")
    if engine == "tensorrt":
        from ..engines.trt import require_trt

        require_trt()  # fail now, not after minutes of export
        precisions = ("fp32", "fp16")  # the engine is built from the fp16 graph (strongly typed)
    _check_int8_options(int8, calibration, calibration_images, eval_set, texts is None and classes == "none")
    if opset < 17:
        raise ConfigError(f"--opset {opset}: needs >= 17 (LayerNormalization; decomposed LN overflows in fp16)")
    arch = normalize_backbone(backbone)
    spec = parse_pretrained(pretrained, arch, seed)
    from ..export.int8 import Int8Options

    opts = ExportOptions(arch, spec, out_dir or default_out_dir(arch, spec), precisions, opset, max_batch,
                         force, not no_validate, int8, int8_options=Int8Options(calibration, calibration_images))
    steps = 3 + (2 * len(precisions) + 2 * int8) * (2 if opts.validate else 1)
    with progress_bar() as bar:
        task = bar.add_task(f"export {arch}", total=steps)

        def report(step: str) -> None:
            bar.update(task, description=step, advance=0 if step == "done" else 1)

        result = export_artifacts(opts, report)
        bar.update(task, completed=steps)
    if not as_json:
        _print_export_summary(result)
    if texts is None and classes != "none":
        texts = _default_texts(result.out_dir, classes)
    if texts is not None:
        from .texts import build_bank_with_progress

        build_bank_with_progress(result.out_dir, texts, "fp32", None, False, quiet=as_json)
    if eval_set is not None:
        result = _int8_eval_with_progress(result, eval_set, as_json)
    document = dict(result.manifest)
    if engine == "tensorrt":
        from .predict import build_engine_with_progress
        from ..engines.trt import BuildOptions

        mb = min(32, max_batch)
        document["tensorrt_engine"] = build_engine_with_progress(
            result.out_dir, BuildOptions("fp16", opt_batch=min(8, mb), max_batch=mb), engine_dir,
            None if texts is not None else "none", None, quiet=as_json)
    if as_json:  # one document: the manifest, plus the engine record when one was built
        print_json(document)


def _check_int8_options(int8: bool, calibration: str, images: int, eval_set: Optional[Path], no_bank: bool) -> None:
    """Fail before minutes of export: int8 options without --int8, a missing calibration folder, no bank."""
    if not int8 and (calibration != "synthetic" or images != 32 or eval_set is not None):
        raise ConfigError("--calibration, --calibration-images and --eval-set need --int8")
    if images < 1:
        raise ConfigError(f"--calibration-images {images}: must be at least 1")
    if calibration != "synthetic" and not Path(calibration).is_dir():
        raise ConfigError(f"--calibration {calibration}: not a directory (give a folder of images, or 'synthetic')")
    if eval_set is not None and not eval_set.is_dir():
        raise ConfigError(f"--eval-set {eval_set}: not a directory (ImageFolder layout: ROOT/<class>/<images>)")
    if eval_set is not None and no_bank:
        raise ConfigError("--eval-set needs a bank: drop --classes none (or give --classes/--texts naming its classes)")


def _int8_eval_with_progress(result, eval_set: Path, quiet: bool):
    """Run ``--eval-set`` (fp32 vs int8 top-1) and return the result with the updated manifest."""
    from dataclasses import replace

    from rich.markup import escape

    from ..export.int8_eval import record_eval_set
    from ..manifest import load_artifact

    with progress_bar() as bar:
        task = bar.add_task("eval set: fp32 vs int8", total=None)
        record = record_eval_set(result.out_dir, eval_set, on_batch=lambda n: bar.advance(task, n))
    if not quiet:
        out.print(f"eval set {escape(record['dir'])}: {record['images']} images, CODER top-1 fp32 "
                  f"{100 * record['top1_fp32']:.2f}% vs int8 {100 * record['top1_int8']:.2f}%", soft_wrap=True)
    return replace(result, manifest=load_artifact(result.out_dir).manifest)


def _print_backbones(as_json: bool) -> None:
    from rich.markup import escape
    from rich.table import Table

    from ..export.registry import VERIFIED_FAMILIES, list_backbones

    rows = list_backbones()
    if as_json:
        print_json({"verified_families": VERIFIED_FAMILIES, "architectures": rows})
        return
    t = Table(title=f"{len(rows)} open_clip architectures (verified: families coder's export is tested on)")
    for col in ("architecture", "family", "verified", "pretrained tags"):
        t.add_column(col)
    for r in rows:
        t.add_row(escape(r["name"]), r["family"], "yes" if r["verified"] else "",
                  escape(", ".join(r["pretrained"]) or "- (checkpoint path or none)"))
    out.print(t)
    for family, what in VERIFIED_FAMILIES.items():
        out.print(f"verified {family}: {escape(what)}", soft_wrap=True)


def _default_texts(out_dir: Path, classes: str) -> Path:
    """Names + WordNet synonyms (when WordNet is installed) for a class list, saved in the artifact.

    A texts file already there (carried over by ``--force``, maybe edited) is the user's: kept byte for byte.
    """
    from ..text_bank.text_encoder import TextEncoder
    from ..text_bank.texts import init_texts, save_texts
    from ..text_bank.wordnet import WordNet, add_synonyms

    path = out_dir / f"texts-{Path(classes).stem}.json"
    if path.is_file():
        say("warning", f"kept {path.name} of the previous artifact (delete it to start again from --classes)")
        return path
    texts = init_texts(classes)
    try:
        wordnet = WordNet()
    except ConfigError as e:
        say("warning", f"no synonyms: {e}")
    else:
        texts, _ = add_synonyms(texts, wordnet, TextEncoder.load(out_dir))
    save_texts(path, texts)
    return path


def _print_export_summary(result) -> None:
    from rich.markup import escape
    from rich.table import Table

    t = Table(title=escape(f"exported {result.manifest['architecture']} -> {result.out_dir}"))
    for col in ("file", "MB", "validation"):
        t.add_column(col)
    for name, entry in result.manifest["files"].items():
        v = result.manifest["validation"].get(name)
        t.add_row(escape(name), f"{entry['bytes'] / 1e6:.1f}",
                  escape(_validation_text(v) + (" (resumed)" if name in result.resumed_files else "")))
    out.print(t)
    if result.manifest.get("int8"):
        for line in int8_report_lines(result.manifest["int8"]):
            out.print(escape(line), soft_wrap=True)


def int8_report_lines(rec: dict) -> list[str]:
    """The int8 record of a manifest as the lines `coder export` prints.

    Example: ``["int8 calibration: synthetic, 32 images, method MinMax (...)", "int8 excluded nodes: none", ...]``.
    """
    cal, held = rec["calibration"], rec["held_out"]
    tried = ", ".join(f"{m} {v['min_cosine']:.5f}" for m, v in cal["methods_tried"].items())
    lines = [f"int8 calibration: {cal['source']}, {cal['images']} images, method {cal['method']} "
             f"(min cosine on held-out scenes: {tried})",
             f"int8 excluded nodes (left in float): {', '.join(rec['excluded_nodes']) or 'none'}",
             f"int8 vs fp32 on {held['images']} held-out scenes: cosine min {held['min_cosine']:.5f} / median "
             f"{held['median_cosine']:.5f}" + ("" if held["top1_agreement"] is None else
                                             f", top-1 agreement {100 * held['top1_agreement']:.1f}%")]
    lines += [f"int8 file {name}: {c['runs_on']}; activations {c['activations']}, weights {c['weights']}"
              for name, c in rec["consumers"].items()]
    if "cpu_attention_kernels" in rec:
        kept = f" (kept as QDQ: QAttention {rec['cpu_attention_skipped']})" if rec.get("cpu_attention_skipped") else ""
        lines.append(f"int8 CPU kernels: {rec['cpu_matmul_kernels']} MatMulIntegerToFloat, "
                     f"{rec['cpu_attention_kernels']} QAttention{kept}")
    ov = rec.get("openvino") or {}
    if ov.get("skipped"):
        lines.append(f"int8 OpenVINO IR: not written ({ov['skipped']}); --backend openvino runs the plain QDQ file "
                     "(image_encoder.int8.trt.onnx)")
    elif ov:
        dw = ov.get("depthwise")
        ran = "" if not dw else ", depthwise convolutions {} (OpenVINO runs them {})".format(
            "quantized" if dw["quantized"] else "not quantized", ", ".join(f"{n} {p}" for p, n in dw["runtime_precisions"].items()))
        lines.append(f"int8 OpenVINO IR (NNCF {ov['nncf']}, {ov['model_type'] or 'default'} model type{ran}): cosine "
                     f"min {ov['probe']['min_cosine']:.5f} / median {ov['probe']['median_cosine']:.5f} on the gate scenes")
    ev = rec.get("eval_set")
    if ev:
        lines.append(f"int8 eval set {ev['dir']}: {ev['images']} images, CODER top-1 fp32 "
                     f"{100 * ev['top1_fp32']:.2f}% vs int8 {100 * ev['top1_int8']:.2f}%")
    return lines


def _validation_text(v) -> str:
    if not v:
        return "-"
    if "max_abs_diff" in v:
        return f"max|diff| {v['max_abs_diff']:.2e} (gate {v['gate']:.0e})"
    return f"min cos {v['min_cosine']:.7f}, same top-1 {v['same_top1']}"


@app.command()
def embed(
    images: Optional[List[Path]] = typer.Argument(None, help="Image files, embedded in the order given."),
    artifacts: Path = typer.Option(..., "--artifacts", "-a", help="Artifact directory from `coder export`."),
    text: Optional[List[str]] = typer.Option(None, "--text", help="Embed this text instead of images (repeatable)."),
    texts_file: Optional[Path] = typer.Option(None, "--texts-file",
                                              help="Embed every line of this UTF-8 file (empty lines too)."),
    precision: str = typer.Option("fp32", help="fp32 | fp16 | int8 (must have been exported; texts: fp32 | fp16)."),
    backend: str = typer.Option("cpu", help="cpu | cuda | tensorrt (ONNX Runtime providers) | openvino | "
                                 "openvino:GPU | openvino:NPU (OpenVINO; images only)."),
    allow_fallback: bool = ALLOW_FALLBACK,
    out_file: Optional[Path] = typer.Option(None, "--out", help="Save embeddings as .npy (rows of files that loaded)."),
    batch_size: int = typer.Option(16, min=1, help="Images (or texts) per encoder call."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON with every embedding."),
) -> None:
    """L2-normalised image (or, with --text / --texts-file, text) embeddings computed with ONNX Runtime."""
    if text or texts_file is not None:
        if images:
            raise ConfigError("give image files or --text/--texts-file, not both (their embeddings are not one table)")
        _embed_texts(list(text or []) + (read_text_lines(texts_file) if texts_file is not None else []),
                     artifacts, precision, backend, allow_fallback, out_file, batch_size, as_json)
        return
    if not images:
        raise ConfigError("nothing to embed: give image files, --text TEXT or --texts-file FILE")
    from ..runtime.encoder import ImageEncoder, embed_files

    if precision not in ("fp32", "fp16", "int8"):
        raise ConfigError(f"--precision {precision!r}: choose fp32, fp16 or int8")
    enc = ImageEncoder.load(artifacts, precision, backend, allow_fallback)
    with progress_bar() as bar:
        task = bar.add_task("embedding", total=len(images))
        res = embed_files(enc, [str(p) for p in images], batch_size, lambda n: bar.advance(task, n))
    for path, why in res.failures:
        say("error", why)
    if out_file is not None:
        _save_npy(out_file, res.embeddings)
    if as_json:
        print_json({"backend": res.backend, "precision": res.precision, "dim": int(res.embeddings.shape[1]),
                     "items": [{"file": f, "embedding": [round(float(v), 7) for v in row]}
                               for f, row in zip(res.paths, res.embeddings)],
                     "failures": [{"file": f, "error": why} for f, why in res.failures]})
    else:
        _print_embed_table(res, out_file)
    if res.failures:
        raise typer.Exit(exit_code_for(InputError()))


def read_text_lines(path: Path) -> list[str]:
    """One text per line (``\\n`` or ``\\r\\n``); empty lines are texts; a final newline ends the last one.

    Example: a file holding ``"cat\\n\\ndog\\n"`` -> ``["cat", "", "dog"]``.
    """
    try:
        content = path.read_bytes().decode("utf-8-sig")
    except OSError as e:
        raise ConfigError(f"--texts-file {path}: cannot read ({e.strerror or e})") from None
    except UnicodeDecodeError as e:
        raise ConfigError(f"--texts-file {path}: not UTF-8 (byte {e.start})") from None
    lines = content.split("\n")
    if lines[-1] == "":
        lines.pop()  # the newline that ends the last line does not start another text
    if not lines:
        raise ConfigError(f"--texts-file {path}: holds no line (an empty text is an empty line)")
    return [line[:-1] if line.endswith("\r") else line for line in lines]


def _embed_texts(texts: list[str], artifacts: Path, precision: str, backend: str, allow_fallback: bool,
                 out_file: Optional[Path], batch_size: int, as_json: bool) -> None:
    """Text embeddings through the bank's own torch-free encoder (:class:`TextEncoder`)."""
    from ..text_bank.text_encoder import TextEncoder

    if precision not in ("fp32", "fp16"):
        raise ConfigError(f"--precision {precision!r}: text encoders are fp32 or fp16")
    if batch_size < 1:
        raise ConfigError(f"--batch-size {batch_size}: must be at least 1")
    enc = TextEncoder.load(artifacts, precision, backend, allow_fallback)
    with progress_bar() as bar:
        task = bar.add_task("embedding texts", total=len(texts))
        emb = enc.encode(texts, batch_size, lambda n: bar.advance(task, n))
    if out_file is not None:
        _save_npy(out_file, emb)
    if as_json:
        print_json({"backend": enc.backend, "precision": precision, "dim": int(emb.shape[1]),
                    "items": [{"text": t, "embedding": [round(float(v), 7) for v in row]}
                              for t, row in zip(texts, emb)]})
        return
    from rich.markup import escape
    from rich.table import Table

    t = Table(title=f"{len(texts)} text embeddings, dim {emb.shape[1]}, backend {enc.backend} ({precision})"
                    + (f" -> {escape(str(out_file))}" if out_file else ""))
    for col in ("text", "norm", "first values"):
        t.add_column(col)
    for text_, row in zip(texts, emb):
        shown = text_ if len(text_) <= 60 else text_[:59] + "…"
        t.add_row(escape(repr(shown) if not shown.strip() else shown), f"{float((row ** 2).sum() ** 0.5):.4f}",
                  " ".join(f"{v:+.4f}" for v in row[:4]) + " …")
    out.print(t)


def _save_npy(path: Path, arr) -> None:
    import numpy as np

    from ..store import atomic_path

    if path.suffix != ".npy":
        raise ConfigError(f"--out {path}: must end in .npy")
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.save(f, arr, allow_pickle=False)


def _print_embed_table(res, out_file) -> None:
    from rich.markup import escape
    from rich.table import Table

    t = Table(title=escape(f"{len(res.paths)} embeddings, dim {res.embeddings.shape[1]}, backend {res.backend} "
                           f"({res.precision})" + (f" -> {out_file}" if out_file else "")))
    for col in ("file", "norm", "first values"):
        t.add_column(col)
    for f, row in zip(res.paths, res.embeddings):
        t.add_row(escape(str(f)), f"{float((row ** 2).sum() ** 0.5):.4f}", " ".join(f"{v:+.4f}" for v in row[:4]) + " …")
    out.print(t)


@app.command()
def doctor(as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
           artifacts: Optional[Path] = typer.Option(None, "--artifacts", "-a",
                                                    help="Also show the CPU engine `--backend auto` measured for it.")
           ) -> None:
    """Versions, which backends actually load here, GPU and TensorRT presence."""
    from ..doctor import collect

    report = collect(artifacts)
    if as_json:
        print_json(report)
        return
    from rich.table import Table

    t = Table(title="coder doctor")
    t.add_column("item")
    t.add_column("status")
    from rich.markup import escape

    rows = [*report["versions"].items(), *((f"backend {k}", v) for k, v in report["backends"].items()),
            ("gpu", report["gpu"]), ("tensorrt", report["tensorrt"])]
    jetson = report.get("jetson")
    rows.append(("jetson", "no" if jetson is None else
                 f"{jetson['model']}, L4T {jetson['l4t']}, JetPack {jetson['jetpack']}"))
    for c in report.get("auto_cpu", []):
        where = "this machine" if c["this_machine"] else f"another CPU ({c['cpu']['model']})"
        rows.append((f"auto cpu {c['precision']}", f"{_describe_choice(c['choice'])}, measured {c['measured_at']} "
                                                   f"on {where}"))
    if "auto_cpu" in report and not report["auto_cpu"]:
        rows.append(("auto cpu", "not measured yet (the first `--backend auto` load measures it)"))
    for k, v in rows:
        t.add_row(k, escape(v))
    out.print(t)


def _describe_choice(choice: dict) -> str:
    from ..runtime.cpu_choice import CpuChoice

    return CpuChoice(**choice).describe()
