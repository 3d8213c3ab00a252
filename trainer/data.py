"""Dataset sources -> uint8 (N, C, H, W) arrays -> float tensors in [-1, 1] (p / 127.5 - 1).

Sources (the `--dataset` spec):
    fashion-mnist   the train split's idx(.gz) files, looked up in --data-dir, else Debian's
                    /usr/share/datasets/fashion-mnist/ (package dataset-fashion-mnist), else
                    ~/.cache/coopnets;
                    where none is found the official file is downloaded into the cache with its md5 checked
    digits          scikit-learn's 8x8 digits (bundled with sklearn), resized to the model size
    cifar10:PATH    CIFAR-10's python version: PATH is cifar-10-python.tar.gz, its extracted
                    cifar-10-batches-py/ folder, or that folder's parent; the five data_batch_* are read
                    (never downloaded: a missing PATH says where to get the file)
    folder:PATH     every readable image under PATH, centre-cropped to a square and resized;
                    unreadable files are skipped with a warning. The decoded array is cached in
                    $COOPNETS_CACHE/folders (default ~/.cache/coopnets/folders), keyed by a hash of the
                    files' relative paths and bytes with the size, channels and --max-images: decoding
                    tens of thousands of small JPEGs is what is slow, hashing their bytes is not
    npz:PATH        an array of images in an .npz (key `images`, `x`, or the only array) or .npy:
                    uint8 or float,                    (N, H, W), (N, H, W, C) or (N, C, H, W)
Every source ends as uint8 (N, C, H, W) with the configured channel count (grey <-> RGB converted) and size.
The test splits (Fashion-MNIST's t10k-*, CIFAR-10's test_batch) are never read for training: they are held
out for evaluation, which reads them with labels through `load_cifar10(path, "test")`; `load_folder` gives a
class-folder tree's labels (class = first directory under PATH).
"""

from __future__ import annotations

import gzip
import hashlib
import io
import logging
import os
import pickle
import tarfile
import urllib.error
import urllib.request
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import numpy as np
import PIL
import torch
from coopnets.contract.codec import from_uint8
from coopnets.contract.files import atomic_write
from PIL import Image, UnidentifiedImageError

log = logging.getLogger(__name__)

DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")
CACHE_DIR = Path.home() / ".cache" / "coopnets" / "fashion-mnist"
FASHION_URL = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
# md5 of the official .gz files, as published in the Fashion-MNIST README (and torchvision)
FASHION_TRAIN = ("train-images-idx3-ubyte.gz", "8d4fb7e6c68d591d4c3dfef9ec88bf0d")
IDX_IMAGES_MAGIC = 0x00000803  # unsigned byte, 3 dimensions
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}
CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
CIFAR10_TARBALL = "cifar-10-python.tar.gz"
CIFAR10_FOLDER = "cifar-10-batches-py"
CIFAR10_BATCHES = {"train": tuple(f"data_batch_{i}" for i in range(1, 6)), "test": ("test_batch",)}
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
CIFAR10_MAX_MEMBER = 64 << 20  # a real batch is 31 MB: anything far larger is not one, and is not read
# Bump when what a folder cache file holds, or how it is decoded, changes: old files then stop matching.
FOLDER_CACHE_VERSION = 1


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
    elif kind == "cifar10":
        if not arg:
            raise DataError(_cifar10_missing("--dataset cifar10 needs a path"))
        pixels = load_cifar10(arg, "train")[0]  # (N, 3, 32, 32)
    elif kind == "folder" and arg:
        return load_folder(arg, size=size, channels=channels, max_images=max_images).images
    elif kind == "npz" and arg:
        pixels = _npz(Path(arg))
    else:
        raise DataError(
            f"--dataset: unknown dataset {spec!r}: use fashion-mnist, digits, cifar10:PATH, folder:PATH or "
            "npz:PATH"
        )
    if max_images:
        pixels = pixels[:max_images]
    return fit_pixels(pixels, size, channels)


def training_images(config) -> np.ndarray:
    """The images a TrainConfig trains on (its dataset, image size, channels, data folder and max_images),
    uint8 (N, C, H, W): load_images as coop-train calls it."""
    return load_images(
        config.dataset,
        size=config.image_size,
        channels=config.channels,
        data_dir=config.data_dir,
        max_images=config.max_images,
    )


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


@dataclass(frozen=True)
class FolderImages:
    """A folder's images with their classes: the class of `root/<class>/.../x.jpg` is its first directory
    under the root, `labels[i]` its index in `classes` (-1 for a file directly in the root)."""

    images: np.ndarray  # uint8 (N, C, H, W)
    labels: np.ndarray  # int64 (N,)
    classes: tuple[str, ...]  # sorted names of the first-level directories that hold image files


def cache_root() -> Path:
    """Where coopnets keeps what it can recompute: $COOPNETS_CACHE, else ~/.cache/coopnets (the default of
    coop-eval's --cache-dir too)."""
    return Path(os.environ.get("COOPNETS_CACHE") or Path.home() / ".cache" / "coopnets")


def load_folder(
    root: str | os.PathLike,
    *,
    size: int,
    channels: int,
    max_images: int = 0,
    cache_dir: str | os.PathLike | None = None,
) -> FolderImages:
    """Every readable image under `root` (sorted paths; centre-cropped to a square, resized to `size`,
    converted to `channels`) with its class label. Decoded once: the result is cached in `cache_dir`
    (default cache_root()/folders) under a hash of the files' relative paths and bytes, `size`, `channels`,
    `max_images`, Pillow's version and FOLDER_CACHE_VERSION, so any changed, added or removed file decodes
    the folder again."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"--dataset folder:{root}: not a directory")
    rel = _image_files(root)
    files = [os.path.join(root, r) for r in rel]  # str: 50,000 Path objects alone take most of a second
    classes = tuple(sorted({r.split("/", 1)[0] for r in rel if "/" in r}))
    cache = Path(cache_dir) if cache_dir is not None else cache_root() / "folders"
    path = cache / f"{_folder_key(files, rel, size, channels, max_images)}.npz"
    cached = _read_folder_cache(path, size, channels, classes)
    if cached is not None:
        for name in cached[1]:
            log.warning(
                "skipping %s: not a readable image (found when decoding it for %s)", root / name, path
            )
        return cached[0]
    index = {c: i for i, c in enumerate(classes)}
    mode = "L" if channels == 1 else "RGB"
    out, labels, skipped = [], [], []
    for p, r in zip(files, rel, strict=True):
        try:
            with Image.open(p) as img:
                img = img.convert(mode)
                img.load()
        # Pillow raises SyntaxError for a corrupted PNG chunk ("broken PNG file"), beside the usual ones
        except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as e:
            log.warning("skipping %s: not a readable image (%s)", p, e)
            skipped.append(r)
            continue
        out.append(_square_resize(img, size))
        labels.append(index[r.split("/", 1)[0]] if "/" in r else -1)
        if max_images and len(out) >= max_images:
            break
    if not out:
        raise DataError(
            f"--dataset folder:{root}: no readable images (looked for {', '.join(sorted(IMAGE_SUFFIXES))})"
        )
    arr = np.stack(out)  # (N, H, W) or (N, H, W, 3)
    arr = arr[:, None] if arr.ndim == 3 else arr.transpose(0, 3, 1, 2)  # (N, C, H, W)
    result = FolderImages(fit_pixels(arr, size, channels), np.asarray(labels, np.int64), classes)
    _write_folder_cache(path, result, skipped)
    return result


def _image_files(root: Path) -> list[str]:
    """Relative POSIX paths of the image files under `root`, sorted part by part (the order of sorted Paths).
    scandir's entries say whether they are files without the stat per file that Path.rglob plus is_file
    costs, a third of a cached load of 50,000 files. Symlinked folders are not entered (nor does rglob)."""
    found, stack = [], [("", root)]
    while stack:
        prefix, folder = stack.pop()
        try:
            with os.scandir(folder) as entries:
                for e in entries:
                    if e.is_dir(follow_symlinks=False):
                        stack.append((f"{prefix}{e.name}/", Path(e.path)))
                    elif os.path.splitext(e.name)[1].lower() in IMAGE_SUFFIXES and e.is_file():
                        found.append(prefix + e.name)
        except OSError as e:
            log.warning("skipping %s: cannot list it (%s)", folder, e)
    return sorted(found, key=lambda r: r.split("/"))


def _folder_key(files: list[str], rel: list[str], size: int, channels: int, max_images: int) -> str:
    h = hashlib.sha256()
    h.update(
        f"coopnets folder cache v{FOLDER_CACHE_VERSION} size={size} channels={channels} "
        f"max_images={max_images} pillow={PIL.__version__} files={len(files)}\n".encode()
    )
    for p, r in zip(files, rel, strict=True):
        try:
            with open(p, "rb") as fh:
                data = fh.read()
        except OSError as e:  # unreadable now: the decode below skips it the same way, so it keys as such
            data = f"unreadable: {type(e).__name__}".encode()
        name = r.encode("utf-8", "surrogateescape")
        # lengths first: no two different file lists hash the same byte stream
        h.update(len(name).to_bytes(8, "little") + name + len(data).to_bytes(8, "little"))
        h.update(data)
    return h.hexdigest()[:40]


def _read_folder_cache(
    path: Path, size: int, channels: int, classes: tuple[str, ...]
) -> tuple[FolderImages, list[str]] | None:
    """The cached result, or None where there is none or it is not usable (then decoded again)."""
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            images, labels = z["images"], z["labels"]
            cached_classes, skipped = tuple(z["classes"].tolist()), z["skipped"].tolist()
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile, zlib.error) as e:
        log.warning("ignoring the folder cache %s: unreadable (%s)", path, e)
        return None
    n = len(images)
    if (
        images.dtype != np.uint8
        or images.shape[1:] != (channels, size, size)
        or labels.shape != (n,)
        or labels.dtype != np.int64
        or cached_classes != classes
    ):
        log.warning("ignoring the folder cache %s: not what this folder decodes to", path)
        return None
    log.info("read %d decoded images from the folder cache %s", n, path)
    return FolderImages(images, labels, classes), skipped


def _write_folder_cache(path: Path, result: FolderImages, skipped: list[str]) -> None:
    def write(fh) -> None:
        np.savez(
            fh,
            images=result.images,
            labels=result.labels,
            classes=np.array(result.classes, dtype=str),
            skipped=np.array(skipped, dtype=str),
        )

    try:
        atomic_write(path, write)
    except OSError as e:  # a read-only or full cache only costs the next run the decoding
        log.warning(
            "could not write the folder cache %s (%s); set COOPNETS_CACHE to a writable folder", path, e
        )
    else:
        log.info("cached %d decoded images in %s", len(result.images), path)


# ---- CIFAR-10 (python version) ---------------------------------------------------------------------
def load_cifar10(path: str | os.PathLike, split: str = "train") -> tuple[np.ndarray, np.ndarray]:
    """CIFAR-10's `split` ("train": data_batch_1..5, 50,000 images; "test": test_batch, 10,000) as uint8
    (N, 3, 32, 32) RGB and int64 labels (N,) in 0..9 (CIFAR10_CLASSES). `path`: cifar-10-python.tar.gz,
    its extracted cifar-10-batches-py/ folder, or that folder's parent. One-line DataError when missing or
    malformed; nothing is downloaded."""
    if split not in CIFAR10_BATCHES:
        raise ValueError(f"unknown CIFAR-10 split {split!r}: use train or test")
    names = CIFAR10_BATCHES[split]
    source = _find_cifar10(Path(path))
    blobs = _cifar10_tar_members(source, names) if source.is_file() else _cifar10_files(source, names)
    images, labels = zip(*(_cifar10_batch(blobs[n], f"{source}: {n}") for n in names), strict=True)
    return np.concatenate(images), np.concatenate(labels)


def _cifar10_missing(what: str) -> str:
    return (
        f"{what}; download CIFAR-10's python version, {CIFAR10_URL}, and pass its path "
        f"(cifar10:PATH, PATH the .tar.gz or the {CIFAR10_FOLDER} folder extracted from it)"
    )


def _find_cifar10(path: Path) -> Path:
    """The tarball or the folder holding the batches."""
    if path.is_file():
        return path
    if not path.is_dir():
        raise DataError(_cifar10_missing(f"cifar10:{path}: no such file or folder"))
    if any((path / n).is_file() for names in CIFAR10_BATCHES.values() for n in names):
        return path  # the extracted folder itself, whatever it is called
    for candidate in (path / CIFAR10_FOLDER, path / CIFAR10_TARBALL):
        if candidate.exists():
            return candidate
    raise DataError(
        _cifar10_missing(f"cifar10:{path}: neither {CIFAR10_FOLDER}/ nor {CIFAR10_TARBALL} in it")
    )


def _cifar10_files(folder: Path, names: tuple[str, ...]) -> dict[str, bytes]:
    blobs = {}
    for n in names:
        p = folder / n
        try:
            if p.stat().st_size > CIFAR10_MAX_MEMBER:
                raise DataError(f"cifar10:{p}: {p.stat().st_size} bytes, too large for a CIFAR-10 batch")
            blobs[n] = p.read_bytes()
        except OSError as e:
            raise DataError(
                _cifar10_missing(f"cifar10:{folder}: cannot read {n} ({e.strerror or e})")
            ) from None
    return blobs


def _cifar10_tar_members(tarball: Path, names: tuple[str, ...]) -> dict[str, bytes]:
    """The named batches' bytes, read in one pass over the (gzipped) stream: seeking back in a .gz means
    decompressing it again from the start. A member counts at the top or in cifar-10-batches-py/."""
    wanted, blobs = set(names), {}
    try:
        with tarfile.open(tarball, "r:*") as tar:
            for member in tar:
                name = PurePosixPath(member.name)
                if (
                    name.name not in wanted
                    or name.parent.name not in ("", CIFAR10_FOLDER)
                    or not member.isfile()
                ):
                    continue
                if member.size > CIFAR10_MAX_MEMBER:
                    raise DataError(
                        f"cifar10:{tarball}: {member.name} is {member.size} bytes, not a CIFAR-10 batch"
                    )
                fh = tar.extractfile(member)
                blobs[name.name] = fh.read() if fh is not None else b""
                if len(blobs) == len(wanted):
                    break
    except (tarfile.TarError, OSError, EOFError, zlib.error) as e:  # gzip.BadGzipFile is an OSError
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise DataError(_cifar10_missing(f"cifar10:{tarball}: not a readable tar.gz ({reason})")) from None
    missing = [n for n in names if n not in blobs]
    if missing:
        raise DataError(
            _cifar10_missing(
                f"cifar10:{tarball}: no {CIFAR10_FOLDER}/{missing[0]} in the tarball (not the python version)"
            )
        )
    return blobs


class _BatchUnpickler(pickle.Unpickler):
    """Builds only what a CIFAR-10 batch holds (a dict of bytes, ints, lists and numpy arrays): any other
    global a pickle names is refused, so a crafted file cannot call into arbitrary code."""

    # numpy's array-rebuilding function, from whichever module this numpy keeps it in (the batches, pickled
    # by numpy 1, name numpy.core.multiarray; numpy 2 moved it to numpy._core.multiarray)
    _RECONSTRUCT = np.zeros(0).__reduce__()[0]
    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"): _RECONSTRUCT,
        ("numpy._core.multiarray", "_reconstruct"): _RECONSTRUCT,
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
    }

    def find_class(self, module: str, name: str):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}")
        return self.ALLOWED[module, name]


def _cifar10_batch(blob: bytes, where: str) -> tuple[np.ndarray, np.ndarray]:
    """uint8 (N, 3, 32, 32) and int64 (N,) from one pickled batch: rows of 3072 bytes, the 1024 R values
    row-major, then G, then B."""
    try:
        # encoding="bytes": the batches were pickled on Python 2, whose str must not be decoded as text
        batch = _BatchUnpickler(io.BytesIO(blob), encoding="bytes").load()
    except Exception as e:  # a malformed pickle can raise nearly anything; each is the same user error
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise DataError(f"cifar10:{where}: not a CIFAR-10 batch ({reason})") from None
    if not isinstance(batch, dict):
        raise DataError(f"cifar10:{where}: not a CIFAR-10 batch (a {type(batch).__name__}, not a dict)")
    data = batch.get(b"data", batch.get("data"))
    labels = batch.get(b"labels", batch.get("labels"))
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        got = f"{data.dtype} {data.shape}" if isinstance(data, np.ndarray) else type(data).__name__
        raise DataError(f"cifar10:{where}: 'data' is {got}, not uint8 (N, 3072)")
    try:
        labels = np.asarray(labels)
    except (ValueError, TypeError):
        labels = np.asarray(None)
    if labels.shape != (len(data),) or labels.dtype.kind not in "iu" or ((labels < 0) | (labels > 9)).any():
        raise DataError(f"cifar10:{where}: 'labels' is not {len(data)} integers in 0..9")
    return np.ascontiguousarray(data.reshape(-1, 3, 32, 32)), labels.astype(np.int64)


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
