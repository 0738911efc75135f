"""coder: CODER CLIP classification with a torch-free runtime.

Importing ``coder`` is cheap and never imports torch or open_clip; the export
side (``coder.export``) is the only part that needs them.
"""

__version__ = "0.1.0"

__all__ = ["Classifier", "Prediction", "__version__"]


def __getattr__(name: str):
    # Lazy: `import coder` stays cheap (no numpy/onnxruntime) for `coder --version`.
    if name in ("Classifier", "Prediction"):
        from .runtime import classifier

        return getattr(classifier, name)
    raise AttributeError(f"module 'coder' has no attribute {name!r}")
