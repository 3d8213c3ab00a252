"""Named occlusions: the masks of the service's `occlusion` field, coop-complete --occlude and coop-eval.

Mask convention, as everywhere in this project: **1 = missing** (the pixel may move), 0 = observed (clamped).
Masks are float32 (N, C, H, W), the same on every channel of a pixel.

Names (the same spelling as the service's named occlusions):
    center:N     an N×N square in the middle of the image
    random:P     a fraction P of the pixels, chosen uniformly (exactly round(P·H·W) of them per image)
    left-half    the left W/2 columns
    rects        1 to 3 random axis-aligned rectangles, each side between H/5 and H/2

Random masks are drawn per image from `numpy.random.default_rng(seed_i)`, so image i's mask does not depend on
the batch it is in.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

DEFAULT_OCCLUSIONS = ("center:12", "center:16", "random:0.3", "random:0.4", "random:0.5", "random:0.75",
                      "left-half", "rects")  # fmt: skip


def parse_occlusion(name: str, height: int, width: int) -> tuple[str, float]:
    """Validate a name; returns (kind, parameter). ValueError naming the problem and the accepted forms."""
    kind, _, arg = name.partition(":")
    forms = "center:N, random:P (0 < P < 1), left-half or rects"
    if kind == "center":
        try:
            n = int(arg)
        except ValueError:
            raise ValueError(f"occlusion {name!r}: center needs an integer size, e.g. center:12") from None
        if not 0 < n <= min(height, width):
            raise ValueError(f"occlusion {name!r}: size must be between 1 and {min(height, width)}")
        return kind, float(n)
    if kind == "random":
        try:
            p = float(arg)
        except ValueError:
            raise ValueError(f"occlusion {name!r}: random needs a fraction, e.g. random:0.5") from None
        if not 0 < p < 1:
            raise ValueError(f"occlusion {name!r}: the fraction must be between 0 and 1 (exclusive)")
        return kind, p
    if kind in ("left-half", "rects") and not arg:
        return kind, 0.0
    raise ValueError(f"unknown occlusion {name!r}: use {forms}")


def occlusion_mask(name: str, shape: Sequence[int], seed: int) -> np.ndarray:
    """The mask (C, H, W) float32 of one image, 1 = missing."""
    c, h, w = shape
    kind, arg = parse_occlusion(name, h, w)
    m = np.zeros((h, w), dtype=np.float32)  # (H, W)
    if kind == "center":
        n = int(arg)
        top, left = (h - n) // 2, (w - n) // 2
        m[top : top + n, left : left + n] = 1
    elif kind == "random":
        rng = np.random.default_rng(seed)
        idx = rng.choice(h * w, int(round(arg * h * w)), replace=False)
        m.reshape(-1)[idx] = 1
    elif kind == "left-half":
        m[:, : w // 2] = 1
    else:  # rects
        rng = np.random.default_rng(seed)
        for _ in range(int(rng.integers(1, 4))):
            rh = int(rng.integers(h // 5, h // 2 + 1))
            rw = int(rng.integers(w // 5, w // 2 + 1))
            top = int(rng.integers(0, h - rh + 1))
            left = int(rng.integers(0, w - rw + 1))
            m[top : top + rh, left : left + rw] = 1
    return np.broadcast_to(m, (c, h, w)).copy()


def occlusion_masks(name: str, shape: Sequence[int], seeds: Sequence[int]) -> np.ndarray:
    """Masks (N, C, H, W) for images with per-image seeds."""
    return np.stack([occlusion_mask(name, shape, int(s)) for s in seeds])


def occluded(images: np.ndarray, masks: np.ndarray) -> np.ndarray:
    """What the model is shown: `images` with the missing pixels (mask = 1) black (-1), for previews and
    strips. Same shape as `images` ((C, H, W) or (N, C, H, W)); masks broadcast against it."""
    return np.where(masks > 0.5, np.float32(-1.0), images).astype(np.float32)
