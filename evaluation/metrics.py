"""Sample-quality and completion metrics over numpy arrays.

Synthesis metrics compare two sets of classifier features (rows = images): the Fréchet distance between
Gaussians fitted to them (FID's formula, here in a small Fashion-MNIST classifier's feature space), the kernel
inception distance (KID, unbiased MMD² with a cubic polynomial kernel, which unlike the Fréchet distance is
unbiased at small N), k-NN precision/recall (Kynkäänniemi et al. 2019: what fraction of one set lies inside
the other's k-NN manifold), the KL divergence of predicted-class histograms (mode collapse shows as a class
that is never drawn), and a nearest-neighbour memorisation check in pixel space.

Every number is only meaningful beside its floor: the same metric between two real sets of the same size,
which the evaluation prints next to it.

Completion metrics compare a completed image with its original: PSNR and SSIM on the missing region (mask = 1)
and on the whole image, per image, summarised by the mean and a 95% confidence interval.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from skimage.metrics import structural_similarity

DATA_RANGE = 2.0  # images live in [-1, 1]


# --- set-to-set distances on features ------------------------------------------------------------


def gaussian_stats(feats: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean (F,) and covariance (F, F) of features (N, F), in float64."""
    x = np.asarray(feats, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] < 2:
        raise ValueError(f"features must be (N, F) with N >= 2, got shape {x.shape}")
    return x.mean(0), np.cov(x, rowvar=False)


def frechet_distance(feats_a: np.ndarray, feats_b: np.ndarray) -> float:
    """‖μa − μb‖² + tr(Σa + Σb − 2 (Σa Σb)^½) between Gaussians fitted to two feature sets (N, F).

    tr((Σa Σb)^½) is the sum of the square roots of the eigenvalues of Σa^½ Σb Σa^½, which is symmetric
    positive semi-definite, so no complex square roots (scipy.linalg.sqrtm's failure at small N) appear."""
    mu_a, cov_a = gaussian_stats(feats_a)
    mu_b, cov_b = gaussian_stats(feats_b)
    w, v = np.linalg.eigh(cov_a)
    sqrt_a = (v * np.sqrt(np.clip(w, 0, None))) @ v.T  # Σa^½ (F, F)
    inner = sqrt_a @ cov_b @ sqrt_a  # (F, F), symmetric PSD
    tr_sqrt = np.sqrt(np.clip(np.linalg.eigvalsh((inner + inner.T) / 2), 0, None)).sum()
    d = float(((mu_a - mu_b) ** 2).sum() + np.trace(cov_a) + np.trace(cov_b) - 2 * tr_sqrt)
    return max(d, 0.0)


def kernel_distance(
    feats_a: np.ndarray, feats_b: np.ndarray, subset_size: int = 1000, subsets: int = 10, seed: int = 0
) -> tuple[float, float]:
    """KID: unbiased MMD² with kernel k(x, y) = (x·y / F + 1)³, averaged over random subsets.

    Returns (mean, standard deviation over subsets). Subsets are drawn without replacement from each set, of
    size min(subset_size, Na, Nb)."""
    a = np.asarray(feats_a, dtype=np.float64)
    b = np.asarray(feats_b, dtype=np.float64)
    m = min(subset_size, len(a), len(b))
    if m < 2:
        raise ValueError(f"KID needs at least 2 samples per set, got {len(a)} and {len(b)}")
    f = a.shape[1]
    rng = np.random.default_rng(seed)
    if m == len(a) == len(b):
        subsets = 1  # every subset would be the whole of both sets
    values = []
    for _ in range(subsets):
        x = a[rng.choice(len(a), m, replace=False)]  # (m, F)
        y = b[rng.choice(len(b), m, replace=False)]  # (m, F)
        kxx = (x @ x.T / f + 1) ** 3  # (m, m)
        kyy = (y @ y.T / f + 1) ** 3
        kxy = (x @ y.T / f + 1) ** 3
        off = m * (m - 1)
        mmd = (kxx.sum() - np.trace(kxx)) / off + (kyy.sum() - np.trace(kyy)) / off - 2 * kxy.mean()
        values.append(mmd)
    return float(np.mean(values)), float(np.std(values))


def _pairwise_sq_dists(a: np.ndarray, b: np.ndarray, chunk: int = 2048) -> np.ndarray:
    """Squared Euclidean distances (Na, Nb), float64, computed in row chunks."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    bb = (b**2).sum(1)  # (Nb,)
    out = np.empty((len(a), len(b)))
    for i in range(0, len(a), chunk):
        x = a[i : i + chunk]
        out[i : i + chunk] = np.clip((x**2).sum(1)[:, None] + bb[None, :] - 2 * x @ b.T, 0, None)
    return out


def _knn_radii(feats: np.ndarray, k: int) -> np.ndarray:
    """Distance from each point to its k-th nearest other point in the same set (N,)."""
    d = _pairwise_sq_dists(feats, feats)
    np.fill_diagonal(d, np.inf)
    return np.sqrt(np.partition(d, k - 1, axis=1)[:, k - 1])


def precision_recall(real: np.ndarray, fake: np.ndarray, k: int = 3) -> tuple[float, float]:
    """k-NN precision and recall (Kynkäänniemi et al. 2019).

    precision: fraction of fake points inside the real manifold (the union of balls around each real point
    with radius its k-th neighbour distance): are the samples realistic. recall: the same with the roles
    swapped: does the model cover the data."""
    if min(len(real), len(fake)) <= k:
        raise ValueError(f"precision/recall with k={k} needs more than {k} samples per set")

    def coverage(ref: np.ndarray, query: np.ndarray) -> float:
        radii = _knn_radii(ref, k)  # (Nref,)
        d = np.sqrt(_pairwise_sq_dists(query, ref))  # (Nq, Nref)
        return float((d <= radii[None, :]).any(1).mean())

    return coverage(real, fake), coverage(fake, real)


def class_histogram(probs: np.ndarray, num_classes: int) -> np.ndarray:
    """Fraction of images whose arg-max class is c, (num_classes,)."""
    counts = np.bincount(np.asarray(probs).argmax(1), minlength=num_classes)
    return counts / counts.sum()


def histogram_kl(p: np.ndarray, q: np.ndarray, eps: float = 1e-6) -> float:
    """KL(p ‖ q) in nats of two class histograms, smoothed by eps (an empty class: large, finite)."""
    p = (np.asarray(p, dtype=np.float64) + eps) / (1 + eps * len(p))
    q = (np.asarray(q, dtype=np.float64) + eps) / (1 + eps * len(q))
    return float((p * np.log(p / q)).sum())


def inception_score(probs: np.ndarray, splits: int = 10) -> tuple[float, float]:
    """The Inception Score of Salimans et al. (2016), exp E_x KL(p(y|x) ‖ p(y)), over `splits` equal parts of
    the class probabilities (N, K) (the remainder N mod splits left out, as their reference code does): the
    parts' mean and standard deviation. 1 for a set whose predictions are all the same, K at most (confident
    and spread evenly over K classes)."""
    p = np.asarray(probs, dtype=np.float64)
    splits = min(splits, len(p))
    size = len(p) // splits
    scores = []
    for i in range(splits):
        part = p[i * size : (i + 1) * size]  # (size, K)
        marginal = part.mean(0, keepdims=True)  # (1, K)
        kl = (part * (np.log(part + 1e-12) - np.log(marginal + 1e-12))).sum(1).mean()
        scores.append(math.exp(kl))
    return float(np.mean(scores)), float(np.std(scores))


@dataclass(frozen=True)
class Memorisation:
    """Nearest-neighbour distances (pixel L2) from a set to the training set, against the held-out set's.

    A model that copies its training images puts samples much closer to the training set than held-out images
    are. `close_fraction` is the share of samples nearer than the 5th percentile of held-out distances (5% for
    a model that behaves like fresh data; much more means copying)."""

    median_nn: float
    reference_median_nn: float
    close_fraction: float
    threshold: float


def nn_distances(queries: np.ndarray, train: np.ndarray, chunk: int = 4096) -> np.ndarray:
    """Pixel-space L2 distance of each query image (N, ...) to its nearest training image (M, ...); (N,).

    ‖a − b‖² is computed as ‖a‖² + ‖b‖² − 2a·b, in float64: in float32 the cancellation leaves an error of
    ~1e-4 on a squared distance of ~0 between 784-pixel images (an image was 0.0135 from itself), which is the
    scale of the near-copies the memorisation check looks for. Both sets are taken in blocks of `chunk` rows
    so that only (chunk, chunk) distances and one float64 block of each set exist at a time."""
    q_all = np.asarray(queries).reshape(len(queries), -1)
    t_all = np.asarray(train).reshape(len(train), -1)
    out = np.empty(len(q_all))
    for i in range(0, len(q_all), chunk):
        q = q_all[i : i + chunk].astype(np.float64)  # (n, P)
        qq, best = (q**2).sum(1), np.full(len(q), np.inf)  # (n,), (n,)
        for j in range(0, len(t_all), chunk):
            t = t_all[j : j + chunk].astype(np.float64)  # (m, P)
            d = qq[:, None] + (t**2).sum(1)[None, :] - 2 * q @ t.T  # (n, m)
            np.minimum(best, d.min(1), out=best)
        out[i : i + chunk] = np.sqrt(np.clip(best, 0, None))
    return out


def memorisation(sample_nn: np.ndarray, heldout_nn: np.ndarray, percentile: float = 5.0) -> Memorisation:
    """Compare nearest-training-neighbour distances of samples with those of held-out real images."""
    threshold = float(np.percentile(heldout_nn, percentile))
    return Memorisation(
        median_nn=float(np.median(sample_nn)),
        reference_median_nn=float(np.median(heldout_nn)),
        close_fraction=float((np.asarray(sample_nn) < threshold).mean()),
        threshold=threshold,
    )


# --- completion: per-image image-quality measures ------------------------------------------------


def psnr(estimate: np.ndarray, target: np.ndarray, region: np.ndarray | None = None) -> np.ndarray:
    """PSNR in dB per image for images (N, C, H, W) in [-1, 1]; `region` (N, C, H, W), 1 = pixels that count
    (the missing region: the mask itself), None = the whole image. Identical images give +inf."""
    err = (np.asarray(estimate, dtype=np.float64) - np.asarray(target, dtype=np.float64)) ** 2  # (N, C, H, W)
    if region is None:
        mse = err.reshape(len(err), -1).mean(1)
    else:
        w = np.asarray(region, dtype=np.float64).reshape(len(err), -1)
        mse = (err.reshape(len(err), -1) * w).sum(1) / np.maximum(w.sum(1), 1)
    with np.errstate(divide="ignore"):
        return 10 * np.log10(DATA_RANGE**2 / mse)


def mae(estimate: np.ndarray, target: np.ndarray, region: np.ndarray) -> np.ndarray:
    """The paper's recovery error (TPAMI 2018, occluded-image experiments): per-pixel mean absolute error over
    the missing region (`region` 1 = missing), per image (N,), on the [0, 1] intensity scale (half the
    [-1, 1] error)."""
    err = np.abs(np.asarray(estimate, dtype=np.float64) - np.asarray(target, dtype=np.float64)) / 2
    w = np.asarray(region, dtype=np.float64).reshape(len(err), -1)
    return (err.reshape(len(err), -1) * w).sum(1) / np.maximum(w.sum(1), 1)


def ssim(estimate: np.ndarray, target: np.ndarray, region: np.ndarray | None = None) -> np.ndarray:
    """SSIM per image (N,) for (N, C, H, W) in [-1, 1] (uniform 7×7 windows, scikit-image defaults); with a
    `region` (1 = counts) the local SSIM map is averaged over that region only."""
    est = np.asarray(estimate, dtype=np.float64)
    tgt = np.asarray(target, dtype=np.float64)
    out = np.empty(len(est))
    for i in range(len(est)):
        _, smap = structural_similarity(tgt[i], est[i], data_range=DATA_RANGE, channel_axis=0, full=True)
        if region is None:
            out[i] = smap.mean()
        else:
            w = np.asarray(region[i], dtype=np.float64)
            out[i] = (smap * w).sum() / max(w.sum(), 1.0)
    return out


@dataclass(frozen=True)
class Summary:
    """Mean of a per-image measure and its 95% confidence interval (normal approximation, ±1.96 standard
    errors). Infinite values (a pixel-exact image) are capped at `cap` dB first so that one perfect image
    cannot make the mean infinite; `n` is the number of images."""

    mean: float
    low: float
    high: float
    n: int


PSNR_CAP = 100.0  # dB: a pixel-exact image's PSNR (infinite) counts as this in a mean


def summarise(values: np.ndarray, cap: float = PSNR_CAP) -> Summary:
    v = np.minimum(np.asarray(values, dtype=np.float64), cap)
    n = len(v)
    mean = float(v.mean())
    half = 1.96 * float(v.std(ddof=1)) / math.sqrt(n) if n > 1 else 0.0
    return Summary(mean, mean - half, mean + half, n)
