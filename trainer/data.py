"""Dataset sources -> uint8 (N, C, H, W) arrays -> float tensors in [-1, 1] (p / 127.5 - 1).

Sources (the `--dataset` spec):
    fashion-mnist   the train split's idx(.gz) files, looked up in --data-dir, else Debian's
                    /usr/share/datasets/fashion-mnist/ (package dataset-fashion-mnist), else
                    ~/.cache/coopnets;
                    where none is found the official file is downloaded into the cache with its md5 checked
    digits          scikit-learn's 8x8 digits (bundled with sklearn), resized to the model size
    folder:PATH     every readable image under PATH, centre-cropped to a square and resized;
                    unreadable files are skipped with a warning
    npz:PATH        an array of images in an .npz (key `images`, `x`, or the only array) or .npy:
                    uint8 or float,                    (N, H, W), (N, H, W, C) or (N, C, H, W)
Every source ends as uint8 (N, C, H, W) with the configured channel count (grey <-> RGB converted) and size.
The test split (t10k-*) is never read: it is held out for evaluation.
"""

from __future__ import annotations

import gzip
import hashlib
import logging
import os
import urllib.error
import urllib.request
import zipfile
import zlib
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from contract.codec import from_uint8
from contract.files import atomic_write

log = logging.getLogger(__name__)

DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")
CACHE_DIR = Path.home() / ".cache" / "coopnets" / "fashion-mnist"
FASHION_URL = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
# md5 of the official .gz files, as published in the Fashion-MNIST README (and torchvision)
FASHION_TRAIN = ("train-images-idx3-ubyte.gz", "8d4fb7e6c68d591d4c3dfef9ec88bf0d")
IDX_IMAGES_MAGIC = 0x00000803  # unsigned byte, 3 dimensions
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}


class DataError(ValueError):
    """A dataset problem the user can fix; the message says how."""


# ---- public entry points -------------------------------------------------------------------------
def load_images(
    spec: str, *, size: int, channels: int, data_dir: str | os.PathLike = "", max_images: int = 0
) -> np.ndarray:
    """The images of dataset `spec` as uint8 (N, C, H, W) with C = `channels`, H = W = `size`."""
    kind, _, arg = spec.partition(":")
    if spec == "fashion-mnist":
        pixels = read_idx_images(find_fashion_mnist(data_dir))[:, None]  # (N, 1, 28, 28)
    elif spec == "digits":
        pixels = _digits()
    elif kind == "folder" and arg:
        return fit_pixels(_folder(Path(arg), size, channels, max_images), size, channels)
    elif kind == "npz" and arg:
        pixels = _npz(Path(arg))
    else:
        raise DataError(
            f"--dataset: unknown dataset {spec!r}: use fashion-mnist, digits, folder:PATH or npz:PATH"
        )
    if max_images:
        pixels = pixels[:max_images]
    return fit_pixels(pixels, size, channels)


def to_tensor(pixels: np.ndarray) -> torch.Tensor:
    """uint8 (N, C, H, W) -> float32 tensor in [-1, 1] by p / 127.5 - 1 (contract.codec.from_uint8)."""
    return torch.from_numpy(from_uint8(pixels))  # from_uint8 makes a new array: idx arrays are read-only


# ---- Fashion-MNIST -------------------------------------------------------------------------------
def find_fashion_mnist(
    data_dir: str | os.PathLike = "",
    *,
    allow_download: bool = True,
    base_url: str = FASHION_URL,
    cache_dir: Path | None = None,
    system_dir: Path = DEBIAN_DIR,
) -> Path:
    """Path of the train-images idx file. An explicit `data_dir` is the only place looked in."""
    name = FASHION_TRAIN[0]
    cache_dir = cache_dir or CACHE_DIR
    dirs = [Path(data_dir)] if data_dir else [system_dir, cache_dir]
    for d in dirs:
        for candidate in (d / name, d / name.removesuffix(".gz")):
            if candidate.is_file():
                return candidate
    if data_dir:
        if not Path(data_dir).is_dir():
            raise DataError(f"--data-dir: {data_dir} does not exist; point it at the folder holding {name}")
        raise DataError(
            f"--data-dir: no {name} in {data_dir}; point it at the folder holding the Fashion-MNIST idx files"
        )
    if allow_download:
        try:
            return download(base_url + name, cache_dir / name, FASHION_TRAIN[1])
        except (urllib.error.URLError, OSError, TimeoutError) as e:
            log.warning("could not download Fashion-MNIST: %s", e)
    raise DataError(
        "Fashion-MNIST not found and not downloadable: run `sudo apt-get install dataset-fashion-mnist` "
        "or pass --data-dir FOLDER with train-images-idx3-ubyte.gz"
    )


def download(url: str, dest: Path, md5: str, timeout: float = 30.0) -> Path:
    """Fetch `url` to `dest` atomically, keeping it only if its md5 is `md5` (DataError otherwise)."""
    log.info("downloading %s", url)

    def fetch(out) -> None:
        digest = hashlib.md5()
        with urllib.request.urlopen(url, timeout=timeout) as src:
            while chunk := src.read(1 << 20):
                digest.update(chunk)
                out.write(chunk)
        if digest.hexdigest() != md5:  # raised inside the write: the temporary file goes, dest is untouched
            raise DataError(
                f"checksum mismatch for {url}: md5 {digest.hexdigest()}, expected {md5}; "
                f"delete {dest.parent} and retry, or pass --data-dir"
            )

    return atomic_write(dest, fetch)


def read_idx_images(path: Path) -> np.ndarray:
    """uint8 (N, H, W) from an idx3-ubyte file (optionally gzipped), magic number and size checked."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as fh:
            raw = fh.read()
    except (OSError, EOFError, zlib.error) as e:  # zlib.error: a corrupt .gz
        raise DataError(
            f"{path}: cannot read ({e}); re-install dataset-fashion-mnist or fix --data-dir"
        ) from None
    if len(raw) < 16:
        raise DataError(f"{path}: too short for an idx image file")
    magic, n, h, w = (int.from_bytes(raw[i : i + 4], "big") for i in range(0, 16, 4))
    if magic != IDX_IMAGES_MAGIC:
        raise DataError(
            f"{path}: idx magic number 0x{magic:08x} is not 0x{IDX_IMAGES_MAGIC:08x} "
            "(uint8 images): not an idx image file"
        )
    if len(raw) != 16 + n * h * w:
        raise DataError(
            f"{path}: header says {n}x{h}x{w} images but the file has {len(raw) - 16} pixel bytes"
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=16).reshape(n, h, w)


# ---- other sources -------------------------------------------------------------------------------
def _digits() -> np.ndarray:
    from sklearn.datasets import load_digits

    images = load_digits().images  # (1797, 8, 8), values 0..16
    return np.rint(images * (255.0 / 16.0)).astype(np.uint8)[:, None]  # (N, 1, 8, 8)


def _folder(root: Path, size: int, channels: int, max_images: int) -> np.ndarray:
    if not root.is_dir():
        raise DataError(f"--dataset folder:{root}: not a directory")
    files = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    mode = "L" if channels == 1 else "RGB"
    out = []
    for p in files:
        try:
            with Image.open(p) as img:
                img = img.convert(mode)
                img.load()
        # Pillow raises SyntaxError for a corrupted PNG chunk ("broken PNG file"), beside the usual ones
        except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as e:
            log.warning("skipping %s: not a readable image (%s)", p, e)
            continue
        out.append(_square_resize(img, size))
        if max_images and len(out) >= max_images:
            break
    if not out:
        raise DataError(
            f"--dataset folder:{root}: no readable images (looked for {', '.join(sorted(IMAGE_SUFFIXES))})"
        )
    arr = np.stack(out)  # (N, H, W) or (N, H, W, 3)
    return arr[:, None] if arr.ndim == 3 else arr.transpose(0, 3, 1, 2)  # (N, C, H, W)


def _npz(path: Path) -> np.ndarray:
    keys: list[str] = []
    try:  # EOFError: empty file; BadZipFile: a damaged .npz; ValueError: pickled objects, bad headers
        data = np.load(path, allow_pickle=False)
        if isinstance(data, np.lib.npyio.NpzFile):
            keys = list(data.keys())
            key = next((k for k in ("images", "x", "X") if k in keys), keys[0] if len(keys) == 1 else None)
            data = None if key is None else data[key]
        arr = None if data is None else np.asarray(data)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error) as e:
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise DataError(f"--dataset npz:{path}: cannot read ({reason})") from None
    if arr is None:
        raise DataError(f"--dataset npz:{path}: arrays {keys}; name the images array 'images'")
    if arr.ndim == 3:
        arr = arr[:, None]  # (N, 1, H, W)
    elif arr.ndim == 4 and arr.shape[-1] in (1, 3, 4) and arr.shape[1] not in (1, 3, 4):
        arr = arr.transpose(0, 3, 1, 2)  # NHWC -> (N, C, H, W)
    elif not (arr.ndim == 4 and arr.shape[1] in (1, 3, 4)):
        raise DataError(
            f"--dataset npz:{path}: array of shape {arr.shape} is not (N, H, W), (N, H, W, C) or "
            "(N, C, H, W) with C in 1, 3, 4"
        )
    if arr.shape[1] == 4:
        arr = arr[:, :3]  # drop alpha
    if arr.dtype == np.uint8:
        return arr
    real = np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating)  # not complex
    if not real or not np.isfinite(arr).all():
        raise DataError(f"--dataset npz:{path}: images must be finite numbers (uint8 or float)")
    arr = arr.astype(np.float64)
    lo, hi = arr.min(), arr.max()
    if lo >= -1.0 and hi <= 1.0 and lo < 0:
        arr = (arr + 1.0) * 127.5  # [-1, 1]
    elif lo >= 0 and hi <= 1.0:
        arr = arr * 255.0  # [0, 1]
    return np.clip(np.rint(arr), 0, 255).astype(np.uint8)  # else taken as 0..255


def _square_resize(img: Image.Image, size: int) -> np.ndarray:
    w, h = img.size
    side = min(w, h)
    if (w, h) != (side, side):
        left, top = (w - side) // 2, (h - side) // 2
        img = img.crop((left, top, left + side, top + side))
    if side != size:
        img = img.resize((size, size), Image.Resampling.LANCZOS if side > size else Image.Resampling.BILINEAR)
    return np.asarray(img, dtype=np.uint8)


def fit_pixels(pixels: np.ndarray, size: int, channels: int) -> np.ndarray:
    """uint8 (N, C0, H0, W0) -> (N, channels, size, size): grey <-> RGB, centre crop and resize. Public:
    evaluation fits its held-out split to the model exactly as training fitted the training images."""
    n, c, h, w = pixels.shape
    if c != channels:
        if c == 1:
            pixels = np.repeat(pixels, channels, axis=1)  # grey -> RGB
        elif channels == 1:
            lum = (
                pixels[:, 0] * 0.299 + pixels[:, 1] * 0.587 + pixels[:, 2] * 0.114
            )  # ITU-R 601, as Pillow's "L"
            pixels = np.rint(lum).astype(np.uint8)[:, None]
        else:
            raise DataError(
                f"cannot convert {c}-channel images to {channels} channels; use --channels 1 or 3"
            )
    if (h, w) != (size, size):  # each channel plane on its own, so any channel count works
        planes = [_square_resize(Image.fromarray(plane), size) for plane in pixels.reshape(-1, h, w)]
        pixels = np.stack(planes).reshape(n, channels, size, size)  # (N, C, H, W)
    return np.ascontiguousarray(pixels)
