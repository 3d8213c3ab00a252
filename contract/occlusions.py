"""Named occlusions: the masks of the service's `occlusion` field, coop-complete --occlude and coop-eval.

Mask convention, as everywhere in this project: **1 = missing** (the pixel may move), 0 = observed (clamped).
Masks are float32 (N, C, H, W), the same on every channel of a pixel.

Names (the same spelling as the service's named occlusions):
    center:N     an N×N square in the middle of the image
    random:P     a fraction P of the pixels, chosen uniformly (exactly round(P·H·W) of them per image)
    left-half    the left W/2 columns
    rects        1 to 3 random axis-aligned rectangles, each side between H/5 and H/2
    square:K     one K×K square at a uniformly random position (top-left corner uniform over the H−K+1 by
                 W−K+1 places where it fits): the paper's recovery experiment
    m30, m40, m50
                 the paper's M30/M40/M50 (a 30, 40 or 50 px square on 64-px faces) scaled to the image:
                 square:K with K = round(paper side × min(H, W) / 64), halves rounded up: 15/20/25 at
                 32 px, 13/18/22 at 28 px, 30/40/50 at 64 px
    blocks:B:P   block salt-and-pepper: the image cut into a grid of B×B blocks (those at the right and
                 bottom edges cut short when B does not divide the size), exactly round(P·blocks) of them
                 missing, chosen uniformly. `blocks:B` is P = 0.5; `blocks` is P = 0.5 and the block side
                 B = max(2, round(3 × min(H, W) / 64)): 2 px at 28 and 32 px, 3 px at 64 px.
                 The paper says only "block salt-and-pepper masks". The choice: 3-px blocks hiding half of
                 a 64-px image, as recalled from the related alternating back-propagation paper (Han et
                 al., AAAI 2017; not checked against its text here), scaled as the squares are, and never
                 under 2 px, since 1-px blocks are random:P

Random masks are drawn per image from `numpy.random.default_rng(seed_i)`, so image i's mask does not depend on
the batch it is in.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

DEFAULT_OCCLUSIONS = ("center:12", "center:16", "random:0.3", "random:0.4", "random:0.5", "random:0.75",
                      "left-half", "rects")  # fmt: skip
# the paper's recovery protocol (every square size, and block salt-and-pepper), at any image size
PAPER_OCCLUSIONS = ("m30", "m40", "m50", "blocks")
# coop-eval's default for color models: the paper's protocol, plus one large contiguous hole
COLOR_OCCLUSIONS = (*PAPER_OCCLUSIONS, "left-half")
PAPER_SIZE = 64  # the faces of the paper's recovery experiment are 64×64
PAPER_SIDES = {"m30": 30, "m40": 40, "m50": 50}
PAPER_BLOCK = 3  # px at PAPER_SIZE
DEFAULT_BLOCK_FRACTION = 0.5
FORMS = "center:N, random:P (0 < P < 1), left-half, rects, square:K, m30, m40, m50 or blocks[:B[:P]]"


def default_occlusions(shape: Sequence[int]) -> tuple[str, ...]:
    """coop-eval's occlusions for images of `shape` (C, H, W): the Fashion-MNIST list for grey models (its
    published numbers stay comparable), the paper's protocol for color ones."""
    return DEFAULT_OCCLUSIONS if shape[0] == 1 else COLOR_OCCLUSIONS


def scaled(paper_px: float, size: int) -> int:
    """A length of the paper's 64-px images at `size` px: round(paper_px × size / 64), halves up."""
    return int(math.floor(paper_px * size / PAPER_SIZE + 0.5))


def parse_occlusion(name: str, height: int, width: int) -> tuple[str, tuple[float, ...]]:
    """Validate a name for an image of height × width; returns (kind, parameters) with aliases resolved
    (m30 -> ("square", (15.0,)) at 32 px; blocks -> ("blocks", (B, P))). ValueError naming the problem
    and the accepted forms."""
    kind, _, arg = name.partition(":")
    side = min(height, width)
    if name in PAPER_SIDES:
        kind, arg = "square", str(scaled(PAPER_SIDES[name], side))
    if kind in ("center", "square"):
        try:
            n = int(arg)
        except ValueError:
            raise ValueError(f"occlusion {name!r}: {kind} needs an integer size, e.g. {kind}:12") from None
        if not 0 < n <= side:
            raise ValueError(f"occlusion {name!r}: size must be between 1 and {side}")
        return kind, (float(n),)
    if kind == "random":
        return kind, (_fraction(name, arg, "random:0.5"),)
    if kind == "blocks":
        b_arg, _, p_arg = arg.partition(":")
        try:
            b = int(b_arg) if b_arg else max(2, scaled(PAPER_BLOCK, side))
        except ValueError:
            raise ValueError(
                f"occlusion {name!r}: blocks needs an integer block side, e.g. blocks:2:0.5"
            ) from None
        if not 0 < b <= side:
            raise ValueError(f"occlusion {name!r}: the block side must be between 1 and {side}")
        p = _fraction(name, p_arg, "blocks:2:0.5") if p_arg else DEFAULT_BLOCK_FRACTION
        if int(round(p * math.ceil(height / b) * math.ceil(width / b))) == 0:
            raise ValueError(f"occlusion {name!r}: no block would be missing; raise the fraction")
        return kind, (float(b), p)
    if kind in ("left-half", "rects") and not arg:
        return kind, ()
    raise ValueError(f"unknown occlusion {name!r}: use {FORMS}")


def _fraction(name: str, arg: str, example: str) -> float:
    try:
        p = float(arg)
    except ValueError:
        raise ValueError(f"occlusion {name!r}: give a fraction, e.g. {example}") from None
    if not 0 < p < 1:
        raise ValueError(f"occlusion {name!r}: the fraction must be between 0 and 1 (exclusive)")
    return p


def occlusion_mask(name: str, shape: Sequence[int], seed: int) -> np.ndarray:
    """The mask (C, H, W) float32 of one image, 1 = missing."""
    c, h, w = shape
    kind, args = parse_occlusion(name, h, w)
    m = np.zeros((h, w), dtype=np.float32)  # (H, W)
    if kind == "center":
        n = int(args[0])
        top, left = (h - n) // 2, (w - n) // 2
        m[top : top + n, left : left + n] = 1
    elif kind == "square":
        n = int(args[0])
        rng = np.random.default_rng(seed)
        top, left = int(rng.integers(0, h - n + 1)), int(rng.integers(0, w - n + 1))
        m[top : top + n, left : left + n] = 1
    elif kind == "random":
        rng = np.random.default_rng(seed)
        idx = rng.choice(h * w, int(round(args[0] * h * w)), replace=False)
        m.reshape(-1)[idx] = 1
    elif kind == "blocks":
        b, p = int(args[0]), args[1]
        gh, gw = math.ceil(h / b), math.ceil(w / b)  # the grid of blocks
        rng = np.random.default_rng(seed)
        grid = np.zeros(gh * gw, dtype=np.float32)
        grid[rng.choice(gh * gw, int(round(p * gh * gw)), replace=False)] = 1
        m = np.kron(grid.reshape(gh, gw), np.ones((b, b), np.float32))[:h, :w]  # each block b×b pixels
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
