"""The torch-free runtime: numpy + onnxruntime (or TensorRT) + Pillow.

Nothing under ``coder.runtime`` imports torch or open_clip (a test checks).
"""

from .encoder import EmbedResult, ImageEncoder, embed_files
from .preprocess import preprocess, preprocess_batch

__all__ = ["EmbedResult", "ImageEncoder", "embed_files", "preprocess", "preprocess_batch"]
