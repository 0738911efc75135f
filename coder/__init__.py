"""coder: CODER CLIP classification with a torch-free runtime.

Importing ``coder`` is cheap and never imports torch or open_clip; the export
side (``coder.export``) is the only part that needs them.
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
