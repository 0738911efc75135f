"""Vector helpers shared by every layer (no imports from coder)."""

from __future__ import annotations

import numpy as np


def l2_normalize(x: np.ndarray) -> np.ndarray:
    """Row-wise L2 normalisation in float32 (a zero row stays zero).

    >>> l2_normalize(np.array([[3.0, 4.0], [0.0, 0.0]]))   # [[0.6, 0.8], [0, 0]] float32
    """
    norm = np.linalg.norm(x, axis=-1, keepdims=True)
    return (x / np.maximum(norm, np.float32(1e-12))).astype(np.float32)
