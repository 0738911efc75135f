"""Labelled image sources for eval/fit: ImageFolder directories and Debian's Fashion-MNIST.

Each yields ``(image, class_name)`` lazily, so a large folder streams in bounded memory.
"""

from __future__ import annotations

import gzip
import os
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from ..errors import ConfigError, InputError
from .inputs import IMAGE_SUFFIXES

FASHION_DIR = Path(os.environ.get("FASHION_MNIST_DIR", "/usr/share/datasets/fashion-mnist"))
FASHION_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                   "Ankle boot"]


@dataclass(frozen=True)
class Dataset:
    """``items`` are (path-or-image, class name); ``classes`` the dataset's own class names."""

    name: str
    classes: tuple[str, ...]
    items: list


def image_folder(root: str | os.PathLike) -> Dataset:
    """``root/<class name>/*.jpg`` (recursive inside each class folder)."""
    root = Path(root)
    if not root.is_dir():
        raise ConfigError(f"{root}: not a directory (ImageFolder layout: ROOT/<class>/<images>)")
    classes = sorted(p.name for p in root.iterdir() if p.is_dir())
    if not classes:
        raise ConfigError(f"{root}: no class sub-directories")
    items = [(p, c) for c in classes for p in sorted((root / c).rglob("*"))
             if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES]
    return Dataset(root.name, tuple(classes), items)


def _read_idx(path: Path) -> np.ndarray:
    try:
        with gzip.open(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError) as e:
        raise InputError(f"{path}: cannot read IDX file ({e})") from None
    magic, = struct.unpack(">I", data[:4])
    ndim = magic & 0xFF
    dims = struct.unpack(">" + "I" * ndim, data[4:4 + 4 * ndim])
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def fashion_mnist(split: str = "test", directory: Path = FASHION_DIR) -> Dataset:
    """Debian ``dataset-fashion-mnist``: 28x28 grey images as ``L`` PIL images, 10 classes."""
    prefix = {"test": "t10k", "train": "train"}.get(split)
    if prefix is None:
        raise ConfigError(f"fashion-mnist split {split!r}: choose test or train")
    img_path, lbl_path = directory / f"{prefix}-images-idx3-ubyte.gz", directory / f"{prefix}-labels-idx1-ubyte.gz"
    if not img_path.is_file():
        raise ConfigError(f"Fashion-MNIST not found in {directory} (apt-get install dataset-fashion-mnist)")
    images, labels = _read_idx(img_path), _read_idx(lbl_path)
    items = [(Image.fromarray(images[i], mode="L"), FASHION_CLASSES[int(labels[i])]) for i in range(len(labels))]
    return Dataset(f"fashion-mnist-{split}", tuple(FASHION_CLASSES), items)


def open_dataset(spec: str) -> Dataset:
    """``fashion-mnist`` / ``fashion-mnist:train`` or an ImageFolder directory."""
    if spec.split(":")[0] == "fashion-mnist" and not Path(spec).exists():
        return fashion_mnist(spec.split(":")[1] if ":" in spec else "test")
    return image_folder(spec)


def match_classes(dataset_classes, bank_classes) -> tuple[dict[str, int], list[str]]:
    """Dataset class name -> bank index, matching case/underscore/space-insensitively; plus the misses."""
    norm = lambda s: " ".join(s.replace("_", " ").lower().split())
    index = {norm(n): i for i, n in enumerate(bank_classes)}
    mapping, missing = {}, []
    for c in dataset_classes:
        if norm(c) in index:
            mapping[c] = index[norm(c)]
        else:
            missing.append(c)
    return mapping, missing


def subset(items: list, limit: int | None, seed: int = 0) -> list:
    """A reproducible random subset of ``limit`` items, in the original order."""
    if limit is None or limit >= len(items):
        return items
    order = np.random.default_rng(seed).permutation(len(items))[:limit]
    return [items[i] for i in sorted(order)]

