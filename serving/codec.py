"""numpy images <-> PNG bytes <-> coopnets.v1 Image/Tensor messages (numpy + Pillow; no ORT, no torch).

The service and the clients share this module; the trainer has its own copy (trainer/images.py)
because serving never imports the trainer. Images are float32 (C, H, W) in [-1, 1]; uint8 pixels map by
p / 127.5 - 1.
**Masks: 1 = missing, 0 = observed; as a PNG, white (>= 128) = missing.**

Decoding checks what a request could get wrong (PNG that does not decode, wrong size, tensor bytes that do not
match the shape, non-finite values, a mask that is not 0/1) and raises FieldError naming the request field.
"""

from __future__ import annotations

import io
import math

import numpy as np
from coopnets.v1 import coopnets_pb2 as pb
from PIL import Image as PILImage


class FieldError(ValueError):
    """A request field is invalid; `field` is its path in the request (e.g. "image.png")."""

    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}")
        self.field = field
        self.description = message


def to_uint8(image: np.ndarray) -> np.ndarray:
    """Float in [-1, 1] -> uint8 pixels (values outside are clipped)."""
    return np.clip(np.rint((np.asarray(image, np.float32) + 1.0) * 127.5), 0, 255).astype(np.uint8)


def from_uint8(pixels: np.ndarray) -> np.ndarray:
    """uint8 pixels -> float32 in [-1, 1] by p / 127.5 - 1."""
    return np.asarray(pixels, dtype=np.float32) / 127.5 - 1.0


def hwc(image: np.ndarray) -> np.ndarray:
    """(C, H, W) float image -> (H, W, C) uint8 pixels, for Pillow."""
    return to_uint8(image).transpose(1, 2, 0)  # (H, W, C)


def encode_png(image: np.ndarray) -> bytes:
    """(C, H, W) float image (C = 1 grey, 3 RGB) -> PNG bytes."""
    pixels = hwc(image)  # (H, W, C)
    buf = io.BytesIO()
    PILImage.fromarray(pixels[..., 0] if pixels.shape[2] == 1 else pixels).save(buf, format="PNG")
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


def tensor_to_proto(array: np.ndarray) -> pb.Tensor:
    a = np.ascontiguousarray(array, dtype="<f4")
    return pb.Tensor(shape=list(a.shape), data=a.tobytes())


def tensor_from_proto(t: pb.Tensor, field: str = "tensor") -> np.ndarray:
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


def image_to_proto(image: np.ndarray, fmt: int = pb.IMAGE_FORMAT_PNG) -> pb.Image:
    """(C, H, W) float image -> Image: PNG (clipped to [-1, 1]) or raw float32 tensor (not clipped)."""
    if fmt == pb.IMAGE_FORMAT_TENSOR:
        return pb.Image(tensor=tensor_to_proto(image))
    return pb.Image(png=encode_png(image))


def image_from_proto(msg: pb.Image, shape: tuple[int, int, int], field: str = "image") -> np.ndarray:
    """Image message -> (C, H, W) float32; a tensor may be [C, H, W] or [1, C, H, W] and must be finite."""
    kind = msg.WhichOneof("kind")
    if kind is None:
        raise FieldError(field, "no image given: set png or tensor")
    if kind == "png":
        return decode_png(msg.png, shape, f"{field}.png")
    a = tensor_from_proto(msg.tensor, f"{field}.tensor")
    if a.shape not in (tuple(shape), (1, *shape)):
        raise FieldError(f"{field}.tensor.shape", f"shape {list(a.shape)} is not the model's {list(shape)}")
    a = a.reshape(shape)
    if not np.isfinite(a).all():
        raise FieldError(f"{field}.tensor.data", "values must be finite")
    return a


def mask_from_proto(msg: pb.Image, shape: tuple[int, int, int], field: str = "mask") -> np.ndarray:
    """Mask message -> (C, H, W) float32 of 0/1, **1 = missing**. PNG: white (>= 128) = missing (colour PNGs
    are read as grey). Tensor: [H, W], [1, H, W] or [C, H, W] of exactly 0 and 1."""
    c, h, w = shape
    kind = msg.WhichOneof("kind")
    if kind is None:
        raise FieldError(field, "no mask given: set png or tensor, or use occlusion")
    if kind == "png":
        grey = decode_png(msg.png, (1, h, w), f"{field}.png")  # (1, H, W) in [-1, 1]
        m = (grey >= from_uint8(np.uint8(128))).astype(np.float32)
    else:
        m = tensor_from_proto(msg.tensor, f"{field}.tensor")
        if m.shape not in ((h, w), (1, h, w), (c, h, w)):
            raise FieldError(
                f"{field}.tensor.shape",
                f"shape {list(m.shape)} must be [H, W], [1, H, W] or [C, H, W] = {[c, h, w]}",
            )
        if not np.isin(m, (0.0, 1.0)).all():
            raise FieldError(f"{field}.tensor.data", "mask values must be 0 (observed) or 1 (missing)")
        m = m.reshape((-1, h, w))
    m = np.ascontiguousarray(np.broadcast_to(m, shape), dtype=np.float32)  # (C, H, W)
    if not m.any():
        raise FieldError(field, "the mask marks no missing pixel (1 / white = missing): nothing to complete")
    return m
