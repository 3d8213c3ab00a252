"""Writes the held-out example images the page at `/` offers (serving/page, docs/serving.md): six test-split
images per shipped bundle, as PNGs at the bundle's size, in models/examples/<bundle>/ (package data beside
the bundles, outside their pinned folders, so the manifests' sha256 pins stay as they are).

    .venv/bin/python scripts/page_examples.py [--fashion DIR] [--cifar DIR]

reference: the first t10k image of six Fashion-MNIST classes (never trained on), from Debian's
dataset-fashion-mnist. cifar10 (only with --cifar): the first image of six classes of a CIFAR-10 test split
laid out as DIR/<class>/*.jpg (JPEG-decoded, so close to but not exactly the original pixels). Same inputs,
same files.
"""

from __future__ import annotations

import argparse
import gzip
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "models" / "examples"
FASHION = (
    "t-shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "ankle-boot"
)  # fmt: skip
FASHION_PICKS = (9, 1, 2, 3, 7, 8)  # classes, by label
CIFAR_PICKS = ("airplane", "automobile", "bird", "cat", "horse", "ship")


def idx(path: Path, offset: int) -> np.ndarray:
    return np.frombuffer(gzip.open(path).read(), np.uint8, offset=offset)


def fashion(root: Path) -> None:
    """The first t10k image of each picked class, 28x28 grey."""
    images = idx(root / "t10k-images-idx3-ubyte.gz", 16).reshape(-1, 28, 28)
    labels = idx(root / "t10k-labels-idx1-ubyte.gz", 8)
    out = OUT / "reference"
    out.mkdir(parents=True, exist_ok=True)
    for label in FASHION_PICKS:
        i = int(np.flatnonzero(labels == label)[0])
        Image.fromarray(images[i]).save(out / f"t10k-{i:04d}-{FASHION[label]}.png")


def cifar(root: Path) -> None:
    """The first file (by name) of each picked class folder, 32x32 RGB."""
    out = OUT / "cifar10"
    out.mkdir(parents=True, exist_ok=True)
    for name in CIFAR_PICKS:
        first = sorted((root / name).glob("*.jpg"))[0]
        image = Image.open(first).convert("RGB")
        if image.size != (32, 32):
            raise SystemExit(f"{first} is {image.size[0]}x{image.size[1]}, not CIFAR-10's 32x32")
        image.save(out / f"test-{name}-{first.stem}.png")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--fashion", type=Path, default=Path("/usr/share/datasets/fashion-mnist"))
    p.add_argument("--cifar", type=Path, help="a CIFAR-10 test split as DIR/<class>/*.jpg (else skipped)")
    args = p.parse_args()
    fashion(args.fashion)
    if args.cifar is not None:
        cifar(args.cifar)
    print(f"wrote {sorted(str(f.relative_to(ROOT)) for f in OUT.glob('*/*.png'))}")


if __name__ == "__main__":
    main()
