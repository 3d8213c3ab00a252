"""Images as arrays, pixels, PNG bytes and messages; sample grids and before/after strips (numpy + Pillow).

Conventions, stated once for the whole project:
- an image is float32 (C, H, W) in [-1, 1] (a batch (N, C, H, W)); uint8 pixels map by p / 127.5 - 1 and back
  by rounding (values outside [-1, 1] are clipped);
- **a mask is 1 = missing (the pixel may move), 0 = observed (clamped)**; as a PNG, white (>= 128) = missing.

Message helpers work on any object shaped like coopnets.v1's `Image` (oneof kind: `png` bytes or `tensor`)
and `Tensor` (`shape`, little-endian float32 `data`), so this module needs no generated code. Decoding checks
what a request could get wrong (a PNG that does not decode, the wrong size, tensor bytes that do not match the
shape, non-finite values, a mask that is not 0/1) and raises FieldError naming the field.
"""

from __future__ import annotations

import io
import math
import os
from pathlib import Path

import numpy as np
from coopnets.contract.files import atomic_write
from PIL import Image as PILImage

GRID_PAD = 2  # white pixels between and around grid tiles
STRIP_GAP = 8  # white pixels between the panels of a strip
MIN_PICTURE_HEIGHT = 112  # strips are for people: small images are enlarged (nearest neighbour) to this
MIN_GRID_SIDE = 256  # saved grids too: a 4x4 grid of 28-pixel images (122 px) is doubled to 244, then more


class FieldError(ValueError):
    """A request field is invalid; `field` is its path in the request (e.g. "image.png")."""

    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}")
        self.field = field
        self.description = message


# ---- pixels ------------------------------------------------------------------------------------------------


def to_uint8(images: np.ndarray) -> np.ndarray:
    """Float in [-1, 1] -> uint8 pixels (values outside are clipped); uint8 input is returned as is."""
    images = np.asarray(images)
    if images.dtype == np.uint8:
        return images
    return np.clip(np.rint((images.astype(np.float32) + 1.0) * 127.5), 0, 255).astype(np.uint8)


def from_uint8(pixels: np.ndarray) -> np.ndarray:
    """uint8 pixels -> float32 in [-1, 1] by p / 127.5 - 1."""
    return np.asarray(pixels, dtype=np.float32) / 127.5 - 1.0


def hwc(image: np.ndarray) -> np.ndarray:
    """(C, H, W) float image -> (H, W, C) uint8 pixels, for Pillow."""
    return to_uint8(image).transpose(1, 2, 0)  # (H, W, C)


# ---- PNG ---------------------------------------------------------------------------------------------------


def _pil(pixels: np.ndarray) -> PILImage.Image:
    """(H, W, C) uint8, C = 1 grey or 3 RGB -> a Pillow image."""
    return PILImage.fromarray(pixels[..., 0] if pixels.shape[2] == 1 else pixels)


def encode_png(image: np.ndarray) -> bytes:
    """(C, H, W) float image (C = 1 grey, 3 RGB) -> PNG bytes."""
    buf = io.BytesIO()
    _pil(hwc(image)).save(buf, format="PNG")
    return buf.getvalue()


def decode_png(data: bytes, shape: tuple[int, int, int], field: str = "png") -> np.ndarray:
    """PNG bytes -> (C, H, W) float32 in [-1, 1]; converts grey/RGB to C channels, but the size must match."""
    c, h, w = shape
    try:
        img = PILImage.open(io.BytesIO(data))  # reads the header only
        if img.size != (w, h):  # checked before decoding: a small PNG may claim a huge size (a bomb)
            raise FieldError(field, f"image is {img.size[0]}x{img.size[1]} pixels, the model needs {w}x{h}")
        img.load()
    except FieldError:
        raise
    except Exception as e:  # Pillow raises several types for bad data
        raise FieldError(field, f"not a decodable PNG/image ({type(e).__name__})") from None
    pixels = np.asarray(img.convert("L" if c == 1 else "RGB"))  # (H, W) or (H, W, 3)
    pixels = pixels[None] if pixels.ndim == 2 else pixels.transpose(2, 0, 1)  # (C, H, W)
    return from_uint8(pixels)


def decode_mask_png(data: bytes, shape: tuple[int, int, int], field: str = "mask") -> np.ndarray:
    """PNG mask -> (C, H, W) float32 of 0/1, white (>= 128) = missing; colour PNGs are read as grey."""
    c, h, w = shape
    grey = decode_png(data, (1, h, w), field)  # (1, H, W) in [-1, 1]
    m = (grey >= from_uint8(np.uint8(128))).astype(np.float32)
    return np.ascontiguousarray(np.broadcast_to(m, shape), dtype=np.float32)


def save_png(pixels: np.ndarray, path: str | os.PathLike) -> Path:
    """(H, W, C) uint8 -> PNG at `path`, atomically."""
    img = _pil(pixels)
    return atomic_write(path, lambda fh: img.save(fh, format="PNG"))


def save_image(image: np.ndarray, path: str | os.PathLike) -> Path:
    """One (C, H, W) float image as PNG (clipped to [-1, 1]), at its own size."""
    return save_png(hwc(image), path)


# ---- pictures for people -----------------------------------------------------------------------------------


def enlargement(height: int) -> int:
    """Integer nearest-neighbour factor that makes `height`-pixel images at least MIN_PICTURE_HEIGHT tall."""
    return max(1, -(-MIN_PICTURE_HEIGHT // height))


def grid(
    images: np.ndarray, nrow: int | None = None, pad: int = GRID_PAD, pad_value: int = 255
) -> np.ndarray:
    """Tile (N, C, H, W) images (float in [-1, 1] or uint8) into one (H', W', C) uint8 array, `nrow` per row
    (default: square), `pad` pixels of `pad_value` between them."""
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


def side_by_side(panels: list[np.ndarray], gap: int = STRIP_GAP, pad_value: int = 255) -> np.ndarray:
    """Join (H, W, C) uint8 pictures left to right with a `gap`-pixel white band between them."""
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


def enlarged(picture: np.ndarray, min_side: int = MIN_GRID_SIDE) -> np.ndarray:
    """(H, W, C) uint8 with every pixel repeated the smallest integer number of times that makes its shorter
    side at least `min_side` (nearest neighbour: no pixel is invented)."""
    k = max(1, -(-min_side // min(picture.shape[:2])))
    return picture.repeat(k, axis=0).repeat(k, axis=1)  # (k H, k W, C)


def save_grid(images: np.ndarray, path: str | os.PathLike, nrow: int | None = None) -> Path:
    """One grid of (N, C, H, W) images as a PNG, enlarged to at least MIN_GRID_SIDE pixels a side."""
    return save_png(enlarged(grid(images, nrow)), path)


def save_side_by_side(panels: list[np.ndarray], path: str | os.PathLike, nrow: int | None = None) -> Path:
    """Several image batches (e.g. drafts Ŷ and revised Ỹ of the same chains) as grids side by side, each
    enlarged to at least MIN_GRID_SIDE pixels a side (the gap between them is not)."""
    grids = [grid(p, nrow) for p in panels]
    k = max(1, -(-MIN_GRID_SIDE // min(min(g.shape[:2]) for g in grids)))  # one factor for every panel
    return save_png(side_by_side([g.repeat(k, axis=0).repeat(k, axis=1) for g in grids]), path)


def save_strip(panels: list[np.ndarray], path: str | os.PathLike) -> Path:
    """(C, H, W) images left to right with a white gap (e.g. original | occluded | recovered), each pixel
    repeated enlargement(H) times so that 28-pixel images are visible; the gap is not enlarged."""
    k = enlargement(panels[0].shape[1])
    big = [hwc(image).repeat(k, axis=0).repeat(k, axis=1) for image in panels]  # (k H, k W, C) each
    return save_png(side_by_side(big), path)


# ---- messages (coopnets.v1 Image / Tensor, duck-typed) -----------------------------------------------------


def set_tensor(msg, array: np.ndarray):
    """Fills a Tensor message with `array` as little-endian float32; returns the message."""
    a = np.ascontiguousarray(array, dtype="<f4")
    msg.shape[:] = list(a.shape)
    msg.data = a.tobytes()
    return msg


def set_image(msg, image: np.ndarray, png: bool):
    """Fills an Image message: 8-bit PNG (clipped to [-1, 1]) or the exact float32 tensor; returns it."""
    if png:
        msg.png = encode_png(image)
    else:
        set_tensor(msg.tensor, image)
    return msg


def tensor_from_message(t, field: str = "tensor") -> np.ndarray:
    """Tensor message -> float32 array of its shape; checks that the bytes match the shape."""
    shape = tuple(int(v) for v in t.shape)
    if any(v <= 0 for v in shape) or not shape:
        raise FieldError(f"{field}.shape", f"shape {list(shape)} must be non-empty with positive sizes")
    n = math.prod(shape)  # Python ints: a huge shape must not wrap around as int64 would
    if len(t.data) != 4 * n:
        raise FieldError(
            f"{field}.data", f"{len(t.data)} bytes do not hold float32 shape {list(shape)} ({4 * n} bytes)"
        )
    return np.frombuffer(t.data, dtype="<f4").reshape(shape).astype(np.float32)


def checked_image(a: np.ndarray, shape: tuple[int, int, int], field: str = "tensor") -> np.ndarray:
    """A float image array -> (C, H, W) float32: [C, H, W] or [1, C, H, W], finite. Every protocol's
    images meet this one check (coopnets.v1 tensors through image_from_message, OIP inputs directly)."""
    if a.shape not in (tuple(shape), (1, *shape)):
        raise FieldError(f"{field}.shape", f"shape {list(a.shape)} is not the model's {list(shape)}")
    a = a.reshape(shape).astype(np.float32, copy=False)
    if not np.isfinite(a).all():
        raise FieldError(f"{field}.data", "values must be finite")
    return a


def checked_mask(m: np.ndarray, shape: tuple[int, int, int], field: str = "tensor") -> np.ndarray:
    """A mask array -> (C, H, W) float32, **1 = missing**: [H, W], [1, H, W] or [C, H, W] of exactly 0 and
    1. (That at least one pixel is missing is `checked_missing`'s, which PNG masks meet too.)"""
    c, h, w = shape
    if m.shape not in ((h, w), (1, h, w), (c, h, w)):
        raise FieldError(
            f"{field}.shape",
            f"shape {list(m.shape)} must be [H, W], [1, H, W] or [C, H, W] = {[c, h, w]}",
        )
    if not np.isin(m, (0.0, 1.0)).all():
        raise FieldError(f"{field}.data", "mask values must be 0 (observed) or 1 (missing)")
    return np.ascontiguousarray(np.broadcast_to(m.reshape((-1, h, w)), shape), dtype=np.float32)  # (C, H, W)


def checked_missing(m: np.ndarray, field: str = "mask") -> np.ndarray:
    """The mask (C, H, W) itself, once it marks at least one missing pixel (else there is nothing to do)."""
    if not m.any():
        raise FieldError(field, "the mask marks no missing pixel (1 / white = missing): nothing to complete")
    return m


def image_from_message(msg, shape: tuple[int, int, int], field: str = "image") -> np.ndarray:
    """Image message -> (C, H, W) float32; a tensor may be [C, H, W] or [1, C, H, W] and must be finite."""
    kind = msg.WhichOneof("kind")
    if kind is None:
        raise FieldError(field, "no image given: set png or tensor")
    if kind == "png":
        return decode_png(msg.png, shape, f"{field}.png")
    return checked_image(tensor_from_message(msg.tensor, f"{field}.tensor"), shape, f"{field}.tensor")


def mask_from_message(msg, shape: tuple[int, int, int], field: str = "mask") -> np.ndarray:
    """Mask message -> (C, H, W) float32 of 0/1, **1 = missing**. PNG: white (>= 128) = missing (colour PNGs
    are read as grey). Tensor: as `checked_mask`. At least one must be 1."""
    kind = msg.WhichOneof("kind")
    if kind is None:
        raise FieldError(field, "no mask given: set png or tensor, or use occlusion")
    if kind == "png":
        m = decode_mask_png(msg.png, shape, f"{field}.png")
    else:
        m = checked_mask(tensor_from_message(msg.tensor, f"{field}.tensor"), shape, f"{field}.tensor")
    return checked_missing(m, field)
