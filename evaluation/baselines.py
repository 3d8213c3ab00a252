"""Inpainting baselines a user could pick instead of the model: each fills the missing pixels (mask = 1) of
images (N, C, H, W) in [-1, 1] and leaves the observed ones (mask = 0) exactly as they were. Every channel
is filled on its own (color images included). The hole's pixels are set to 0 before a baseline sees them:
OpenCV's inpainting reads a little of what lies under its mask (a few hundredths of a dB on 2-px holes of
Fashion-MNIST), and a baseline must not be scored on pixels it was not given.

- mean:       the training set's mean image
- biharmonic: scikit-image `restoration.inpaint_biharmonic` (smooth interpolation, strong on scattered pixels)
- telea:      OpenCV `inpaint` with INPAINT_TELEA (fast marching), on uint8 pixels
- ns:         OpenCV `inpaint` with INPAINT_NS (Navier–Stokes), on uint8 pixels
"""

from __future__ import annotations

from collections.abc import Callable

import cv2
import numpy as np
from coopnets.contract.codec import from_uint8, to_uint8
from skimage.restoration import inpaint_biharmonic

CV_RADIUS = 3  # OpenCV inpainting neighbourhood in pixels (its documentation's example value)

Baseline = Callable[[np.ndarray, np.ndarray], np.ndarray]  # (images, masks) -> completed images


def _hidden(images: np.ndarray, masks: np.ndarray) -> np.ndarray:
    return np.where(masks > 0.5, np.float32(0.0), images).astype(np.float32)


def _keep_observed(filled: np.ndarray, images: np.ndarray, masks: np.ndarray) -> np.ndarray:
    return np.where(masks > 0.5, filled, images).astype(np.float32)


def mean_fill(mean_image: np.ndarray) -> Baseline:
    """Fill with `mean_image` (C, H, W), the average training image."""

    def run(images: np.ndarray, masks: np.ndarray) -> np.ndarray:
        return _keep_observed(np.broadcast_to(mean_image, images.shape), images, masks)

    return run


def biharmonic(images: np.ndarray, masks: np.ndarray) -> np.ndarray:
    out = np.empty_like(images, dtype=np.float32)
    shown = _hidden(images, masks)
    for i in range(len(images)):
        hole = masks[i, 0] > 0.5  # (H, W): the mask is the same on every channel
        filled = inpaint_biharmonic(shown[i].astype(np.float64), hole, channel_axis=0)  # (C, H, W)
        out[i] = filled
    return _keep_observed(out, images, masks)


def _opencv(flag: int) -> Baseline:
    def run(images: np.ndarray, masks: np.ndarray) -> np.ndarray:
        pixels = to_uint8(_hidden(images, masks))  # (N, C, H, W)
        out = np.empty_like(images, dtype=np.float32)
        for i in range(len(images)):
            hole = (masks[i, 0] > 0.5).astype(np.uint8)  # (H, W), nonzero = inpaint
            src = pixels[i].transpose(1, 2, 0)  # (H, W, C)
            filled = cv2.inpaint(src if src.shape[2] == 3 else src[..., 0], hole, CV_RADIUS, flag)
            filled = filled.reshape(src.shape)  # (H, W, C)
            out[i] = from_uint8(filled.transpose(2, 0, 1))
        return _keep_observed(out, images, masks)

    return run


telea = _opencv(cv2.INPAINT_TELEA)
navier_stokes = _opencv(cv2.INPAINT_NS)


def all_baselines(mean_image: np.ndarray) -> dict[str, Baseline]:
    """Name -> baseline, in the order the report lists them."""
    return {"mean": mean_fill(mean_image), "biharmonic": biharmonic, "telea": telea, "ns": navier_stokes}
