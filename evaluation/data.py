"""Labelled splits for evaluation: Fashion-MNIST train (classifier, memorisation check, real-vs-real floor)
and t10k (the held-out split every number is measured on; never used for training).

The files are found as the trainer finds them (trainer.data.find_fashion_mnist: --data-dir, else Debian's
/usr/share/datasets/fashion-mnist/, else ~/.cache/coopnets), but never downloaded here: evaluation needs
no network. Images come back as float32 (N, C, H, W) in [-1, 1], fitted to the model's C×H×W the way the
trainer fits its training data.
"""

from __future__ import annotations

import gzip
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from coopnets.contract.codec import from_uint8
from coopnets.trainer.data import DataError, find_fashion_mnist, fit_pixels, read_idx_images

IDX_LABELS_MAGIC = 0x00000801  # unsigned byte, 1 dimension
SPLIT_FILES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
               "t10k": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}  # fmt: skip
CLASS_NAMES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
               "Ankle boot")  # fmt: skip


@dataclass(frozen=True)
class Split:
    images: np.ndarray  # (N, C, H, W) float32 in [-1, 1]
    labels: np.ndarray  # (N,) int64


def read_idx_labels(path: Path) -> np.ndarray:
    """uint8 labels (N,) from an idx1-ubyte file (optionally gzipped), magic number and size checked."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as fh:
            raw = fh.read()
    except (OSError, EOFError) as e:
        raise DataError(
            f"{path}: cannot read ({e}); re-install dataset-fashion-mnist or fix --data-dir"
        ) from None
    if len(raw) < 8 or int.from_bytes(raw[:4], "big") != IDX_LABELS_MAGIC:
        raise DataError(f"{path}: not an idx label file (magic 0x{IDX_LABELS_MAGIC:08x})")
    n = int.from_bytes(raw[4:8], "big")
    if len(raw) != 8 + n:
        raise DataError(f"{path}: header says {n} labels but the file has {len(raw) - 8} bytes")
    return np.frombuffer(raw, dtype=np.uint8, offset=8)


def _find(folder: Path, stem: str) -> Path:
    for candidate in (folder / f"{stem}.gz", folder / stem):
        if candidate.is_file():
            return candidate
    raise DataError(
        f"--data-dir: no {stem}.gz in {folder}; point --data-dir at the folder holding the "
        "Fashion-MNIST idx files (train-* and t10k-*)"
    )


def load_split(split: str, shape: tuple[int, int, int], data_dir: str = "") -> Split:
    """Images and labels of Fashion-MNIST `split` ("train" or "t10k"), fitted to `shape` = (C, H, W).
    DataError (one line: what is missing and how to fix it) when the files are not there."""
    if split not in SPLIT_FILES:
        raise ValueError(f"unknown split {split!r}: use train or t10k")
    folder = find_fashion_mnist(data_dir, allow_download=False).parent
    images_file, labels_file = (_find(folder, stem) for stem in SPLIT_FILES[split])
    pixels = read_idx_images(images_file)[:, None]  # (N, 1, 28, 28)
    labels = read_idx_labels(labels_file)
    if len(labels) != len(pixels):
        raise DataError(f"{labels_file}: {len(labels)} labels for {len(pixels)} images in {images_file}")
    c, h, w = shape
    if h != w:
        raise DataError(
            f"the model's images are {h}x{w}; only square models can be evaluated on Fashion-MNIST"
        )
    return Split(from_uint8(fit_pixels(pixels, h, c)), labels.astype(np.int64))
