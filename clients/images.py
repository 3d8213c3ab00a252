"""PNG files for the clients: single images, grids and before/after strips (numpy + Pillow).

Images are float32 (C, H, W) in [-1, 1]; every file is written atomically (temporary file, then os.replace).
The pixel mapping is serving.codec's (p / 127.5 - 1), the one the service uses.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image as PILImage

from serving.codec import hwc

PAD = 2
GAP = 8
STRIP_HEIGHT = 112  # strips are for people: small images are enlarged (nearest neighbour) to this height


def save_png(pixels: np.ndarray, path: str | os.PathLike) -> Path:
    """(H, W, C) uint8 -> PNG at `path`, atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    img = PILImage.fromarray(pixels[..., 0] if pixels.shape[2] == 1 else pixels)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            img.save(f, format="PNG")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def save_image(image: np.ndarray, path: str | os.PathLike) -> Path:
    """One (C, H, W) image as PNG (clipped to [-1, 1])."""
    return save_png(hwc(image), path)


def grid(images: np.ndarray, nrow: int | None = None) -> np.ndarray:
    """(N, C, H, W) -> one (H', W', C) uint8 tile, `nrow` images per row (default: square), white padding."""
    n, c, h, w = images.shape
    nrow = nrow or max(1, int(np.ceil(np.sqrt(n))))
    rows = int(np.ceil(n / nrow))
    out = np.full((PAD + rows * (h + PAD), PAD + nrow * (w + PAD), c), 255, dtype=np.uint8)
    for i in range(n):
        r, k = divmod(i, nrow)
        top, left = PAD + r * (h + PAD), PAD + k * (w + PAD)
        out[top : top + h, left : left + w] = hwc(images[i])  # (H, W, C)
    return out


def save_grid(images: np.ndarray, path: str | os.PathLike, nrow: int | None = None) -> Path:
    return save_png(grid(images, nrow), path)


def strip_scale(height: int) -> int:
    """Integer enlargement of a strip of `height`-pixel images (1 for images STRIP_HEIGHT tall or more)."""
    return max(1, -(-STRIP_HEIGHT // height))


def save_strip(panels: list[np.ndarray], path: str | os.PathLike) -> Path:
    """(C, H, W) images left to right with a white gap (e.g. original | occluded | recovered), each pixel
    repeated strip_scale(H) times so that 28-pixel images are visible; the gap is not enlarged."""
    k = strip_scale(panels[0].shape[1])
    parts = []
    for i, image in enumerate(panels):
        big = hwc(image).repeat(k, axis=0).repeat(k, axis=1)  # (k H, k W, C)
        if i:
            parts.append(np.full((big.shape[0], GAP, big.shape[2]), 255, dtype=np.uint8))
        parts.append(big)
    return save_png(np.concatenate(parts, axis=1), path)  # (k H, k W1 + GAP + k W2 ..., C)
