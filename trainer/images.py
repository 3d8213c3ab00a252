"""Image arrays <-> uint8 pixels and PNG sample grids (numpy + Pillow only).

The trainer and the evaluation code share these; serving/ and clients/ keep their own PNG code so that they
never import the trainer. Images are float `(N, C, H, W)` in [-1, 1] (uint8 pixels map by p / 127.5 - 1)
or already uint8 `(N, C, H, W)`; C is 1 (grey) or 3 (RGB).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image


def to_uint8(images: np.ndarray) -> np.ndarray:
    """Float images in [-1, 1] -> uint8 pixels (values outside are clipped); uint8 input is returned as is."""
    images = np.asarray(images)
    if images.dtype == np.uint8:
        return images
    return np.clip(np.rint((images.astype(np.float32) + 1.0) * 127.5), 0, 255).astype(np.uint8)


def from_uint8(pixels: np.ndarray) -> np.ndarray:
    """uint8 pixels -> float32 in [-1, 1] by p / 127.5 - 1 (the project's one mapping)."""
    return np.asarray(pixels, dtype=np.float32) / 127.5 - 1.0


def grid(images: np.ndarray, nrow: int | None = None, pad: int = 2, pad_value: int = 255) -> np.ndarray:
    """Tile `(N, C, H, W)` images into one `(H', W', C)` uint8 array, `nrow` per row (default: square)."""
    pixels = to_uint8(images)  # (N, C, H, W)
    if pixels.ndim != 4:
        raise ValueError(f"images must be (N, C, H, W), got shape {pixels.shape}")
    n, c, h, w = pixels.shape
    nrow = nrow or max(1, int(np.ceil(np.sqrt(n))))
    rows = int(np.ceil(n / nrow))
    out = np.full((pad + rows * (h + pad), pad + nrow * (w + pad), c), pad_value, dtype=np.uint8)
    for i in range(n):
        r, k = divmod(i, nrow)
        top, left = pad + r * (h + pad), pad + k * (w + pad)
        out[top : top + h, left : left + w] = pixels[i].transpose(1, 2, 0)  # (H, W, C)
    return out


def side_by_side(panels: list[np.ndarray], gap: int = 8, pad_value: int = 255) -> np.ndarray:
    """Join `(H, W, C)` grids left to right with a `gap`-pixel white band between them (drafts | revised)."""
    height = max(p.shape[0] for p in panels)
    channels = max(p.shape[2] for p in panels)
    parts = []
    for i, p in enumerate(panels):
        if p.shape[2] != channels:
            p = np.repeat(p, channels, axis=2)
        if p.shape[0] < height:
            p = np.pad(p, ((0, height - p.shape[0]), (0, 0), (0, 0)), constant_values=pad_value)
        if i:
            parts.append(np.full((height, gap, channels), pad_value, dtype=np.uint8))
        parts.append(p)
    return np.concatenate(parts, axis=1)  # (H, W1 + gap + W2 + ..., C)


def save_png(array: np.ndarray, path: str | os.PathLike) -> Path:
    """Write an `(H, W, C)` uint8 array as PNG atomically (temp file in the same folder, then os.replace)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    img = Image.fromarray(array[..., 0] if array.shape[2] == 1 else array)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            img.save(fh, format="PNG")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def save_grid(images: np.ndarray, path: str | os.PathLike, nrow: int | None = None) -> Path:
    """One grid of `(N, C, H, W)` images as a PNG."""
    return save_png(grid(images, nrow), path)


def save_side_by_side(panels: list[np.ndarray], path: str | os.PathLike, nrow: int | None = None) -> Path:
    """Several image batches (e.g. drafts Ŷ and revised Ỹ of the same chains) side by side in one PNG."""
    return save_png(side_by_side([grid(p, nrow) for p in panels]), path)
