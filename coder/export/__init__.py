"""Export side: open_clip model -> validated ONNX encoders + manifest.

This package imports torch and open_clip (the ``[export]`` extra); nothing in
``coder.runtime`` depends on it.
"""
