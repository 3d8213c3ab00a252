"""Labelled splits for evaluation: a dataset's train split (classifier, memorisation check, real-vs-real
floor) and its test split (the held-out split every number is measured on; never used for training).

Datasets with both (`labelled_splits`, by coop-train's --dataset spec):
    fashion-mnist     train-* and t10k-*
    cifar10:PATH      data_batch_1..5 and test_batch (trainer.data.load_cifar10)
    folder:ROOT/train a class-folder tree (class = first directory, trainer.data.load_folder); its test split
                      is the sibling ROOT/test, with the same class folders

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
from coopnets.trainer.data import (
    DataError,
    find_fashion_mnist,
    fit_pixels,
    load_cifar10,
    load_folder,
    read_idx_images,
)

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


def folder_test_root(train_root: str | Path) -> Path | None:
    """The test split beside a class-folder training tree ROOT/train: ROOT/test when it is a folder."""
    root = Path(train_root)
    sibling = root.parent / "test"
    return sibling if root.name == "train" and sibling.is_dir() else None


def labelled_splits(
    spec: str, shape: tuple[int, int, int], data_dir: str = "", heldout: str = ""
) -> tuple[Split, Split, str]:
    """(train, test, a line describing both) of dataset `spec` (coop-train's --dataset syntax) fitted to
    `shape` = (C, H, W), both with labels. `heldout` (cifar10:PATH = its test split, or a class-folder tree)
    replaces the test split. One-line DataError when a split or its labels are missing."""
    c, h, w = shape
    if h != w:
        raise DataError(f"the model's images are {h}x{w}; only square models can be evaluated")
    kind, _, arg = spec.partition(":")
    if spec == "fashion-mnist":
        train = load_split("train", shape, data_dir)
        test = None if heldout else load_split("t10k", shape, data_dir)
        what = "Fashion-MNIST"
    elif kind == "cifar10" and arg:
        train = _fitted(*load_cifar10(arg, "train"), shape)
        test = None if heldout else _fitted(*load_cifar10(arg, "test"), shape)
        what = f"CIFAR-10 ({arg})"
    elif kind == "folder" and arg:
        train, classes = _folder(arg, shape, "--dataset")
        test = None
        if not heldout:
            test_root = folder_test_root(arg)
            if test_root is None:
                raise DataError(
                    f"--dataset {spec}: no test split beside it (a class-folder tree's held-out images are "
                    "the sibling ROOT/test of ROOT/train): give --heldout folder:PATH"
                )
            test = _same_classes(*_folder(str(test_root), shape, "test split"), classes, test_root)
        what = (
            f"class folders {arg} ({len(classes)} classes; a copy whose pixels differ from an original "
            "release compares with published numbers only approximately)"
        )
    else:
        raise DataError(
            f"--dataset {spec}: no labelled test split for the synthesis metrics; use fashion-mnist, "
            "cifar10:PATH or folder:ROOT/train (with ROOT/test), or add --no-synthesis and give --heldout"
        )
    if heldout:
        test, held_classes = labelled_heldout(heldout, shape)
        if kind == "folder" and held_classes is not None:
            test = _same_classes(test, held_classes, classes, Path(heldout.partition(":")[2]))
        if int(test.labels.max()) >= int(train.labels.max()) + 1:
            raise DataError(
                f"--heldout {heldout}: labels up to {int(test.labels.max())}, but the training split has "
                f"{int(train.labels.max()) + 1} classes"
            )
        held = f"--heldout {heldout} ({len(test.labels)} images)"
    else:
        held = f"its test split ({len(test.labels)} images)"
    return (
        train,
        test,
        f"{what}: held out: {held}; the train split ({len(train.labels)} images) for the "
        "classifier, the floor and the memorisation check",
    )


def labelled_heldout(spec: str, shape: tuple[int, int, int]) -> tuple[Split, tuple[str, ...] | None]:
    """--heldout with labels: cifar10:PATH (its test split) or folder:PATH (a class-folder tree, whose class
    names come back too)."""
    kind, _, arg = spec.partition(":")
    if kind == "cifar10" and arg:
        return _fitted(*load_cifar10(arg, "test"), shape), None
    if kind == "folder" and arg:
        return _folder(arg, shape, "--heldout")
    raise DataError(
        f"--heldout {spec}: no labels for the synthesis metrics; give cifar10:PATH or a class-folder "
        "tree folder:PATH, or add --no-synthesis"
    )


def _fitted(pixels: np.ndarray, labels: np.ndarray, shape: tuple[int, int, int]) -> Split:
    c, h, _ = shape
    return Split(from_uint8(fit_pixels(pixels, h, c)), labels.astype(np.int64))


def _folder(root: str, shape: tuple[int, int, int], flag: str) -> tuple[Split, tuple[str, ...]]:
    c, h, _ = shape
    found = load_folder(root, size=h, channels=c)
    if not found.classes or (found.labels < 0).any():
        raise DataError(
            f"{flag} folder:{root}: images outside class folders; the synthesis metrics need every image in "
            "ROOT/<class>/ (or add --no-synthesis)"
        )
    return Split(from_uint8(found.images), found.labels), found.classes


def _same_classes(split: Split, classes: tuple[str, ...], want: tuple[str, ...], where: Path) -> Split:
    if classes == want:
        return split
    raise DataError(
        f"{where}: class folders {', '.join(classes)} differ from the training split's {', '.join(want)}"
    )
