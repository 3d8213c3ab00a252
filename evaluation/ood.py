"""Out-of-distribution detection: how well each score the model offers separates the held-out split (in)
from images of other kinds (out).

The out sets, each as many images as the in set, built from a seed (so every run scores the same images).
For grey (1-channel) models:
    uniform      pixels U(-1, 1)
    gaussian     pixels N(0, 0.5²), clipped to [-1, 1]
    constant     one random grey level per image
    inverted     -Y of held-out images (the negative)
    blurred      held-out images under a Gaussian blur of 1.5 px
    digits       scikit-learn's 8x8 digits resized to the model's size (a dataset of another kind)
For color (3-channel) models:
    uniform, gaussian    as above, every channel drawn on its own
    constant     one random color per image (each channel U(-1, 1))
    inverted     -Y of held-out images
    blends       (Y_i + Y_j) / 2 of two held-out images: each pixel the average of two real images
    fashion-mnist
                 the first images of Fashion-MNIST's t10k, grey repeated to RGB and resized to the
                 model's size as coop-train fits a dataset; found as coop-eval finds Fashion-MNIST
                 (--data-dir, Debian's /usr/share/datasets/fashion-mnist, ~/.cache/coopnets) and never
                 downloaded: absent, the set is left out with a logged warning
    textures     patches of scikit-image's bundled grey textures (brick, grass, gravel: files inside the
                 installed package, so nothing is fetched), each a random square of side between the model's
                 size and 4× it, resized to the model's size, repeated to RGB
And for either:
    npz:PATH     any array the user gives (--ood npz:PATH, read as coop-train reads npz:PATH)
The in and out images of the "inverted", "blurred" and "blends" sets are disjoint held-out images.

Metrics, out = positive, higher score = more out of distribution: AUROC, AUPR (average precision) and the
FPR at 95% TPR: the fraction of in-distribution images flagged at the threshold that flags 95% of the out
set (lower is better).
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

TEXTURES = ("brick", "grass", "gravel")  # scikit-image's texture images shipped inside its wheel
TEXTURE_MAX_SCALE = 4  # a texture patch spans between 1 and 4 times the model's size before resizing


@dataclass(frozen=True)
class Separation:
    score: str
    out_set: str
    n_in: int
    n_out: int
    auroc: float
    aupr: float
    fpr95: float

    def to_dict(self) -> dict:
        return asdict(self)


def out_sets(
    heldout: np.ndarray,
    spare: np.ndarray,
    seed: int,
    extra: dict[str, np.ndarray] | None = None,
    data_dir: str = "",
):
    """The out sets for in-distribution `heldout` (N, C, H, W) in [-1, 1]; `spare` (N, C, H, W) are other
    held-out images, the sources of the inverted, blurred and blends sets. `extra`: name -> (M, C, H, W)
    images. `data_dir`: where color models' fashion-mnist set is looked for ('' = Debian's, then the
    cache)."""
    from scipy.ndimage import gaussian_filter

    n, (c, h, w) = len(heldout), heldout.shape[1:]
    rng = np.random.default_rng(seed)
    sets = {
        "uniform": rng.uniform(-1, 1, (n, c, h, w)),
        "gaussian": np.clip(rng.normal(0.0, 0.5, (n, c, h, w)), -1, 1),
        # one grey level per grey image, one color per color image
        "constant": np.broadcast_to(rng.uniform(-1, 1, (n, 1 if c == 1 else c, 1, 1)), (n, c, h, w)),
        "inverted": -spare[:n],
    }
    if c == 1:
        sets["blurred"] = gaussian_filter(spare[:n], sigma=(0, 0, 1.5, 1.5))  # blur each plane, not across
        sets["digits"] = digits_like(n, (c, h, w))
    else:
        sets["blends"] = (spare[:n] + np.roll(spare[:n], 1, axis=0)) / 2  # image i with image i - 1
        fashion = fashion_like(n, (c, h, w), data_dir)
        if fashion is not None:
            sets["fashion-mnist"] = fashion
        sets["textures"] = texture_patches(n, (c, h, w), seed)
    sets.update(extra or {})
    return {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in sets.items()}


def digits_like(n: int, shape: tuple[int, int, int]) -> np.ndarray:
    """The first n of scikit-learn's 8x8 digits, fitted to (C, H, W) as coop-train fits --dataset digits."""
    from coopnets.contract.codec import from_uint8
    from coopnets.trainer.data import load_images

    c, h, _ = shape
    return from_uint8(load_images("digits", size=h, channels=c, max_images=n))


def fashion_like(n: int, shape: tuple[int, int, int], data_dir: str = "") -> np.ndarray | None:
    """The first n of Fashion-MNIST's t10k fitted to (C, H, W) as coop-train fits a dataset, or None (with a
    logged warning saying why) when the files are not there; never downloaded."""
    from coopnets.contract.codec import from_uint8
    from coopnets.evaluation.data import SPLIT_FILES
    from coopnets.trainer.data import DataError, find_fashion_mnist, fit_pixels, read_idx_images

    c, h, _ = shape
    try:
        folder = find_fashion_mnist(data_dir, allow_download=False).parent
        stem = SPLIT_FILES["t10k"][0]
        found = [p for p in (folder / f"{stem}.gz", folder / stem) if p.is_file()]
        if not found:
            raise DataError(f"no {stem}.gz in {folder}")
        pixels = read_idx_images(found[0])[:n, None]  # (n, 1, 28, 28)
    except DataError as e:
        log.warning("out-of-distribution set fashion-mnist left out: %s", e)
        return None
    return from_uint8(fit_pixels(pixels, h, c))


def texture_patches(n: int, shape: tuple[int, int, int], seed: int) -> np.ndarray:
    """n patches (C, H, W) in [-1, 1] of scikit-image's bundled textures, taken in turn: each a square of
    random side in [H, 4H] (at most the texture's size) at a random place, resized to H×W (area averaging)."""
    import cv2
    import skimage.data
    from coopnets.contract.codec import from_uint8
    from PIL import Image

    c, h, w = shape
    folder = Path(skimage.data.__file__).parent
    textures = [np.asarray(Image.open(folder / f"{name}.png").convert("L")) for name in TEXTURES]
    rng = np.random.default_rng([seed, 1])  # its own stream: the other sets' draws stay as they were
    out = np.empty((n, 1, h, w), np.uint8)
    for i in range(n):
        t = textures[i % len(textures)]  # (Ht, Wt) uint8
        side = int(rng.integers(h, min(TEXTURE_MAX_SCALE * h, *t.shape) + 1))
        top, left = int(rng.integers(0, t.shape[0] - side + 1)), int(rng.integers(0, t.shape[1] - side + 1))
        out[i, 0] = cv2.resize(t[top : top + side, left : left + side], (w, h), interpolation=cv2.INTER_AREA)
    return from_uint8(np.repeat(out, c, axis=1))


def separation(score: str, out_set: str, s_in: np.ndarray, s_out: np.ndarray) -> Separation:
    """AUROC, AUPR and FPR at 95% TPR of `score` (higher = more out) between the two sets."""
    from sklearn.metrics import average_precision_score, roc_auc_score

    s_in, s_out = _finite(s_in), _finite(s_out)
    y = np.r_[np.zeros(len(s_in)), np.ones(len(s_out))]
    s = np.r_[s_in, s_out]
    threshold = np.quantile(s_out, 0.05)  # flags 95% of the out set (s >= threshold)
    return Separation(
        score,
        out_set,
        len(s_in),
        len(s_out),
        float(roc_auc_score(y, s)),
        float(average_precision_score(y, s)),
        float(np.mean(s_in >= threshold)),
    )


def _finite(s: np.ndarray) -> np.ndarray:
    """Scores as float64 with ±inf and NaN (a diverged chain) mapped to the largest finite values: an image
    whose score blew up is as out of distribution as any."""
    s = np.asarray(s, dtype=np.float64)
    return np.nan_to_num(s, nan=np.finfo(np.float64).max, posinf=np.finfo(np.float64).max,
                         neginf=np.finfo(np.float64).min)  # fmt: skip


# ---- the candidate scores ----------------------------------------------------------------------------------

# the latent candidate: noise-free latent Langevin with every pixel seen
LATENT_STEPS, LATENT_STEP_SIZE = 20, 0.02
DISPLACEMENT_STEPS = 5  # the displacement candidate: noise-free descriptor Langevin steps at the bundle's δ


def candidate_scores(engine, images: np.ndarray, seed: int) -> dict[str, np.ndarray]:
    """Every score the model offers for `images` (N, C, H, W), higher = more out of distribution, each (N,):

    ood           the bundle's typicality score (Energy's `ood`; absent for bundles without it)
    E(Y)          ‖Y‖²/(2s²) − f(Y)
    -f(Y)         the descriptor alone
    latent U      min over X of U(X) after latent inference on all pixels (the generator's opinion)
    displacement  ‖Y_K − Y‖ after K noise-free descriptor Langevin steps (how hard the descriptor pulls)
    """
    from coopnets.contract import sampling
    from coopnets.contract.sampling import CompletionParams

    energy, f = engine.energy(images)
    out = {}
    ood = engine.ood(images)
    if ood is not None:
        out["ood (typicality)"] = ood
    out["E(Y)"], out["-f(Y)"] = energy, -f
    mask = np.zeros_like(images)  # nothing missing: X explains the whole image
    params = CompletionParams(
        latent_steps=LATENT_STEPS,
        latent_step_size=LATENT_STEP_SIZE,
        latent_noise=False,
        refine_steps=0,
        delta=engine.bundle.langevin.delta,
        noise=False,
        restarts=1,
    )
    rngs = sampling.rngs_for(range(seed, seed + len(images)))
    z = sampling.run(sampling.latent_steps(engine.backend, images, mask, rngs, params))  # (N, d)
    out["latent U"] = engine.backend.latent_grad(z, images, mask)[1]
    y = sampling.run(
        sampling.langevin_steps(
            engine.backend, images, None, rngs, DISPLACEMENT_STEPS, engine.bundle.langevin.delta, False
        )
    )
    out["displacement"] = np.sqrt(((y - images) ** 2).reshape(len(images), -1).sum(1))
    return out


def evaluate_ood(
    engine, heldout, spare, seed: int, extra=None, batch: int = 250, progress: bool = True, data_dir: str = ""
):
    """Separation of every candidate score on every out set: a list of Separation, scores in the order of
    candidate_scores, out sets in the order of out_sets."""
    from tqdm import tqdm

    sets = out_sets(heldout, spare, seed, extra, data_dir)

    def score(x: np.ndarray) -> dict[str, np.ndarray]:
        parts = [candidate_scores(engine, x[i : i + batch], seed + i) for i in range(0, len(x), batch)]
        return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}

    bar = tqdm(total=len(sets) + 1, desc="ood sets", disable=not progress)
    s_in = score(heldout)
    bar.update()
    rows = []
    for name, images in sets.items():
        s_out = score(images)
        bar.update()
        rows += [separation(k, name, s_in[k], s_out[k]) for k in s_in]
    bar.close()
    return rows


def table(rows: list[Separation]) -> str:
    """Markdown: one row per score, AUROC / AUPR / FPR95 per out set, and the worst AUROC."""
    sets = list(dict.fromkeys(r.out_set for r in rows))
    scores = list(dict.fromkeys(r.score for r in rows))
    by = {(r.score, r.out_set): r for r in rows}
    head = ["score", *sets, "worst AUROC"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for s in scores:
        cells = [f"{by[s, o].auroc:.3f} / {by[s, o].aupr:.3f} / {by[s, o].fpr95:.2f}" for o in sets]
        worst = min(by[s, o].auroc for o in sets)
        lines.append(f"| {s} | " + " | ".join(cells) + f" | {worst:.3f} |")
    return "\n".join(lines)
