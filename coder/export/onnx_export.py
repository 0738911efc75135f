"""torch -> ONNX for the two towers, and the fp32 -> fp16 graph conversion.

Exported with the TorchScript-based exporter (``dynamo=False``, recorded in the
manifest): it handles the dynamic batch and sequence axes of these towers in a
few seconds. Dummy batch is 2 so that a silently fixed batch axis shows up when
validating at 1 and 3 (PITFALLS.md).
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path

from ..errors import ExportError
from ..fsutil import atomic_path

EXPORT_BATCH = 2
IMAGE_INPUT, IMAGE_OUTPUT = "pixel_values", "image_embeds"
TEXT_INPUT, TEXT_OUTPUT = "input_ids", "text_embeds"
# Kept in fp32 inside fp16 graphs: their reductions overflow or lose too much in fp16.
FP16_KEEP_FP32 = ["LayerNormalization", "Softmax", "ReduceMean", "Pow", "Sqrt", "ArgMax"]


def _export(module, args: tuple, path: Path, opset: int, input_name: str, output_name: str, axes: dict) -> None:
    import torch

    buf = io.BytesIO()
    # Not under no_grad: that sends nn.MultiheadAttention down its fused fast path, which has no ONNX export.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            torch.onnx.export(
                module, args, buf, dynamo=False, opset_version=opset,
                input_names=[input_name], output_names=[output_name],
                dynamic_axes={input_name: axes, output_name: {0: "batch"}},
                do_constant_folding=True,
            )
        except Exception as e:
            raise ExportError(f"ONNX export of {path.name} failed: {str(e).splitlines()[0][:300]}") from None
    with atomic_path(path) as tmp:
        tmp.write_bytes(buf.getvalue())


def export_image_encoder(model, path: Path, image_size: tuple[int, int], opset: int) -> None:
    """Write ``(B,3,H,W) float32 -> (B,D) float32`` raw image embeddings to ``path``."""
    import torch

    from .towers import ImageTower

    dummy = torch.randn(EXPORT_BATCH, 3, *image_size)
    _export(ImageTower(model).eval(), (dummy,), path, opset, IMAGE_INPUT, IMAGE_OUTPUT, {0: "batch"})


def export_text_encoder(model, path: Path, context_length: int, opset: int, dynamic_seq: bool) -> None:
    """Write ``(B,L) int32 -> (B,D) float32`` raw text embeddings; ``L`` dynamic if ``dynamic_seq``."""
    import torch

    from .towers import FullContextTextTower, TextTower

    tower = TextTower(model) if dynamic_seq else FullContextTextTower(model)
    # A realistic dummy: start token, a few words, end token (the highest id), zero padding.
    vocab = int(model.token_embedding.num_embeddings)
    dummy = torch.zeros(EXPORT_BATCH, context_length, dtype=torch.int32)
    dummy[:, 0] = vocab - 2
    dummy[:, 1:6] = torch.arange(100, 105, dtype=torch.int32)
    dummy[:, 6] = vocab - 1
    axes = {0: "batch", 1: "sequence"} if dynamic_seq else {0: "batch"}
    _export(tower.eval(), (dummy,), path, opset, TEXT_INPUT, TEXT_OUTPUT, axes)


def quantize_int8(src: Path, dst: Path, per_channel: bool = False) -> None:
    """Dynamic int8 quantization for CPUs (QInt8 weights, activations quantized at run time).

    Per-tensor weight scales are the fast default (ViT-B/32 here: 21 ms vs 25 ms per channel at
    batch 1, both cosine 0.9998 on random weights). Real weights have outlier channels, so the
    export validates the result against torch and re-quantizes per channel if the gate fails.
    """
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with atomic_path(dst) as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        quantize_dynamic(str(src), str(tmp), weight_type=QuantType.QInt8, per_channel=per_channel)


def convert_fp16(src: Path, dst: Path) -> None:
    """fp32 ONNX -> fp16 ONNX with fp32 inputs/outputs and sensitive ops kept in fp32.

    ``onnxruntime.transformers.float16`` writes valid graphs where
    ``onnxconverter_common`` 1.16 did not (PITFALLS.md).
    """
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = onnx.load(str(src))
        half = convert_float_to_float16(model, keep_io_types=True, op_block_list=FP16_KEEP_FP32)
    with atomic_path(dst) as tmp:
        onnx.save(half, str(tmp))
