"""torch -> ONNX for the two towers, and the fp32 -> fp16 / int8 graph conversions.

Exported with the TorchScript-based exporter (``dynamo=False``, recorded in the
manifest): it handles the dynamic batch and sequence axes of these towers in a
few seconds. Dummy batch is 2 so that a silently fixed batch axis shows up when
validating at 1 and 3 (PITFALLS.md). Every file goes through
:mod:`coder.export.onnx_files`: atomic, and in the external-data format when the
weights pass 2 GB (or ``external`` forces it).
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import warnings
from pathlib import Path

from ..errors import ExportError, one_line
from .onnx_files import needs_external, save_model, staged

EXPORT_BATCH = 2
IMAGE_INPUT, IMAGE_OUTPUT = "pixel_values", "image_embeds"
TEXT_INPUT, TEXT_OUTPUT = "input_ids", "text_embeds"
# Kept in fp32 inside fp16 graphs: their reductions overflow or lose too much in fp16.
# Dynamic int8 (the benchmark's reference) only where ONNX Runtime's CPU kernels are fast (see quantize_int8).
INT8_OPS = ["MatMul", "Gemm"]
FP16_KEEP_FP32 = ["LayerNormalization", "Softmax", "ReduceMean", "Pow", "Sqrt", "ArgMax"]


@contextlib.contextmanager
def _no_mha_fastpath():
    """``aten::_native_multi_head_attention`` has no ONNX symbolic: keep MHA on its plain path."""
    import torch

    mha = getattr(torch.backends, "mha", None)
    before = mha.get_fastpath_enabled() if mha else None
    if mha:
        mha.set_fastpath_enabled(False)
    try:
        yield
    finally:
        if mha:
            mha.set_fastpath_enabled(before)


def _export(module, args: tuple, path: Path, opset: int, input_name: str, output_name: str, axes: dict,
            external: bool = False) -> None:
    import onnx
    import torch

    # Not under no_grad: that sends nn.MultiheadAttention down its fused fast path, which has no ONNX export.
    with tempfile.TemporaryDirectory(prefix=".tmp-raw-", dir=path.parent) as raw_dir, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        raw = Path(raw_dir) / "model.onnx"  # a path, not a buffer: > 2 GB models need external data
        try:
            with _no_mha_fastpath():
                torch.onnx.export(
                    module, args, str(raw), dynamo=False, opset_version=opset,
                    input_names=[input_name], output_names=[output_name],
                    dynamic_axes={input_name: axes, output_name: {0: "batch"}},
                    do_constant_folding=True,
                )
        except Exception as e:
            _raise_storage_failure(e, path.parent)
            raise ExportError(f"ONNX export of {path.name} failed: {one_line(e, 300)}") from None
        if not external and not [p for p in Path(raw_dir).iterdir() if p != raw]:
            with staged(path) as tmp:  # inline and small: move it, no second copy of the weights in memory
                os.replace(raw, tmp)
            return
        model = onnx.load(str(raw))  # torch wrote external data (> 2 GB) or it is forced: one named .data file
        with staged(path) as tmp:
            save_model(model, tmp, True)


def _raise_storage_failure(e: Exception, where: Path) -> None:
    """A full disk / read-only medium is not an export failure: StorageError (exit 3) naming ``where``."""
    from .families import storage_failure

    mapped = storage_failure(e, where)
    if mapped is not None:
        raise mapped from None



def export_image_encoder(visual, path: Path, image_size: tuple[int, int], opset: int, external: bool = False) -> None:
    """Write ``(B,3,H,W) float32 -> (B,D) float32`` raw image embeddings to ``path``.

    ``visual`` is ``model.visual``, or its reparameterized copy (:mod:`coder.export.reparam`).
    """
    import torch

    from .towers import ImageTower, plain_attention

    dummy = torch.randn(EXPORT_BATCH, 3, *image_size)
    with plain_attention(visual):  # restored before validation compares the file with the untouched tower
        _export(ImageTower(visual).eval(), (dummy,), path, opset, IMAGE_INPUT, IMAGE_OUTPUT, {0: "batch"}, external)


def export_text_encoder(model, path: Path, context_length: int, opset: int, dynamic_seq: bool,
                        external: bool = False) -> None:
    """Write ``(B,L) int32 -> (B,D) float32`` raw text embeddings; ``L`` dynamic if ``dynamic_seq``."""
    import torch

    from .towers import FullContextTextTower, TextTower, text_module

    tower = TextTower(model) if dynamic_seq else FullContextTextTower(model)
    # A realistic dummy: start token, a few words, end token (the highest id), zero padding.
    vocab = int(getattr(model, "vocab_size", 0) or text_module(model).token_embedding.num_embeddings)
    dummy = torch.zeros(EXPORT_BATCH, context_length, dtype=torch.int32)
    dummy[:, 0] = vocab - 2
    dummy[:, 1:6] = torch.arange(3, 8, dtype=torch.int32)
    dummy[:, 6] = vocab - 1
    axes = {0: "batch", 1: "sequence"} if dynamic_seq else {0: "batch"}
    _export(tower.eval(), (dummy,), path, opset, TEXT_INPUT, TEXT_OUTPUT, axes, external)


def quantize_int8(src: Path, dst: Path, per_channel: bool = False, external: bool = False) -> None:
    """Dynamic int8 quantization for CPUs (QInt8 weights, activations quantized at run time).

    No longer what ``coder export --int8`` writes (that is the static QDQ of :mod:`.int8`: dynamic
    scales come from each batch, so an image's embedding depends on its batch); kept as the
    reference ``benchmarks/bench_int8.py`` compares the static files with.

    Per-tensor weight scales are the fast default (ViT-B/32 here: 21 ms vs 25 ms per channel at
    batch 1, both cosine 0.9998 on random weights). Real weights have outlier channels, so the
    export validates the result against torch and re-quantizes per channel if the gate fails.

    Only MatMul/Gemm are quantized: ONNX Runtime's CPU ``ConvInteger`` has no fast kernel, and
    quantized convs made conv towers several times SLOWER than fp32 (zoo run here, batch 1:
    RN50 1145 vs 295 ms, MobileCLIP-S2 5633 vs 1001 ms). Conv towers keep fp32 convs.
    """
    from onnxruntime.quantization import QuantType, quantize_dynamic

    from .onnx_files import EXTERNAL_THRESHOLD_BYTES

    # int8 weights are a quarter of fp32: external only when forced or the int8 file itself passes the limit.
    external = external or (src.stat().st_size + _data_size(src)) // 4 > EXTERNAL_THRESHOLD_BYTES
    with staged(dst) as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            quantize_dynamic(str(src), str(tmp), weight_type=QuantType.QInt8, per_channel=per_channel,
                             op_types_to_quantize=INT8_OPS, use_external_data_format=external)
        except Exception as e:  # onnx/onnxruntime.quantization raise ValueError/AssertionError/KeyError/DecodeError
            _raise_storage_failure(e, dst.parent)
            raise ExportError(f"int8 quantization of {src.name} failed: {one_line(e, 300)}; "
                              "export without --int8") from None


def _data_size(path: Path) -> int:
    from .onnx_files import data_name

    data = path.parent / data_name(path.name)
    return data.stat().st_size if data.exists() else 0


def convert_fp16(src: Path, dst: Path, external: bool = False) -> None:
    """fp32 ONNX -> fp16 ONNX with fp32 inputs/outputs and sensitive ops kept in fp32.

    ``onnxruntime.transformers.float16`` writes valid graphs where
    ``onnxconverter_common`` 1.16 did not (PITFALLS.md). Shape inference runs on the
    file (``infer_shapes_path``), never on the loaded model: a model over 2 GB cannot be
    serialized in one protobuf message, which in-memory inference does (ViT-H, bigG).
    The result is written in the external-data format when its weights pass the limit.
    """
    import onnx
    from onnx.shape_inference import infer_shapes_path
    from onnxruntime.transformers.float16 import convert_float_to_float16

    # Beside src (its external data is found relative to the file), under a name stale-temp clean-up removes.
    fd, inferred = tempfile.mkstemp(prefix=f".tmp-{src.name}-shapes-", suffix=".onnx", dir=src.parent)
    os.close(fd)
    try:
        infer_shapes_path(str(src), inferred)
        model = onnx.load(inferred)
    finally:
        os.unlink(inferred)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        half = convert_float_to_float16(model, keep_io_types=True, op_block_list=FP16_KEEP_FP32,
                                        disable_shape_infer=True)
    with staged(dst) as tmp:
        save_model(half, tmp, needs_external(half, external))
