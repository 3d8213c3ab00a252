"""The out-of-distribution score the bundle ships (typicality.onnx): how far an image's low-level descriptor
features are from those of the training images.

    ood(Y) = (φ(Y) − μ)ᵀ Σ⁻¹ (φ(Y) − μ) / q95,   φ(Y) = [mean, std over H×W of h₁(Y)]   (2·C₁,)

h₁ is the descriptor's first block (conv + leaky ReLU, C₁ = 64 channels on every net here), μ and Σ the
mean and covariance of φ over calibration images (training images drawn at export), q95 the 95th percentile
of the calibration images' distance, so that `ood > 1` flags an image at a 5% false-alarm rate.

Why not the energy: measured with `coop-eval` (docs/results.md, "Out-of-distribution"), E(Y) and f(Y) rank
uniform noise as *more* typical than held-out images (AUROC 0.29 and 0.58 on the 10 000-iteration
reference), and separate inverted images barely better than chance (0.59, 0.56): the descriptor is trained
only to tell data from the generator's samples, so its score is not calibrated off that path. Its features
are: the typicality of the first block's statistics gave the best worst case of every candidate measured
(later blocks and the 100 outputs f sums were worse on blurred images and digits:
`python experiments/ood_features.py CKPT`).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

CALIBRATION_IMAGES = 2000  # training images drawn at export for μ, Σ and q95
QUANTILE = 0.95
RIDGE = 1e-6  # Σ + RIDGE·(tr Σ / D)·I: a well-conditioned inverse when some features barely vary


def first_block(descriptor: nn.Module) -> nn.Sequential:
    """The descriptor's layers up to and including its first activation."""
    layers = []
    for m in descriptor.body:
        layers.append(m)
        if isinstance(m, nn.LeakyReLU):
            return nn.Sequential(*layers)
    raise ValueError("the descriptor has no activation: no first block to take features from")


class Typicality(nn.Module):
    """y (N, C, H, W) -> ood (N,): the squared Mahalanobis distance of φ(y) from the calibration mean, in
    units of the calibration images' 95th percentile."""

    def __init__(self, block: nn.Module, mean: torch.Tensor, whiten: torch.Tensor, scale: float):
        super().__init__()
        self.block = block
        self.register_buffer("mean", mean)  # (D,)
        self.register_buffer("whiten", whiten)  # (D, D): Σ⁻¹ = W Wᵀ
        self.register_buffer("scale", torch.tensor(float(scale)))

    @staticmethod
    def features(block: nn.Module, y: torch.Tensor) -> torch.Tensor:
        h = block(y)  # (N, C1, H1, W1)
        return torch.cat([h.mean((2, 3)), h.std((2, 3))], 1)  # (N, 2·C1)

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        # dᵀΣ⁻¹d as ‖dW‖², a sum of squares: the quadratic form (dΣ⁻¹)·d cancels in float32 (Σ's condition
        # number reaches 1e8 early in training; ONNX Runtime and PyTorch then differed by 3e-3 relative)
        z = (self.features(self.block, y) - self.mean) @ self.whiten  # (N, D)
        return (z * z).sum(1) / self.scale  # (N,)


@torch.no_grad()
def calibrate(descriptor: nn.Module, images: torch.Tensor, batch: int = 500) -> tuple[Typicality, dict]:
    """The Typicality of `descriptor` fitted on `images` (N, C, H, W) in [-1, 1], and the manifest's `ood`
    section describing it. μ and Σ come from the even-numbered images, q95 from the odd ones: a quantile
    taken on the images the Gaussian was fitted to is biased low: with 128 features, unseen images exceed it
    far more often than 5% (tests/test_ood.py checks the split version on unseen digits)."""
    block = first_block(descriptor).float().eval()
    feats = torch.cat(
        [Typicality.features(block, images[i : i + batch]) for i in range(0, len(images), batch)]
    )
    x = feats.double()  # (N, D), statistics in float64
    fit, held = x[0::2], x[1::2]
    mean = fit.mean(0)
    cov = torch.cov(fit.T)
    dim = cov.shape[0]
    cov = cov + RIDGE * torch.trace(cov) / dim * torch.eye(dim, dtype=cov.dtype)
    chol = torch.linalg.cholesky(cov)  # Σ = C Cᵀ, so Σ⁻¹ = W Wᵀ with W = C⁻ᵀ
    whiten = torch.linalg.solve_triangular(chol, torch.eye(dim, dtype=cov.dtype), upper=False).T  # (D, D)
    dist = (((held - mean) @ whiten) ** 2).sum(1)  # (N/2,)
    scale = float(torch.quantile(dist, QUANTILE))
    module = Typicality(block, mean.float(), whiten.float(), scale).eval()
    section = {
        "score": "typicality of the descriptor's first-block feature statistics (trainer/ood.py)",
        "higher": "less typical of the training data; > 1 flags at a 5% false-alarm rate on calibration",
        "calibration_images": int(len(images)),
        "calibration_quantile": QUANTILE,
        "features": dim,
    }
    return module, section


def calibration_images(config, pixels: np.ndarray | None = None, n: int = CALIBRATION_IMAGES):
    """n training images of the run (drawn with its seed) as a float tensor, from `pixels` (uint8
    (N, C, H, W): the training job passes the images it already holds) or else read from its --dataset;
    None when they cannot be read here (the bundle is then exported without typicality.onnx, with a
    warning)."""
    import logging

    from coopnets.trainer.data import DataError, load_images, to_tensor

    if pixels is None:
        try:
            pixels = load_images(config.dataset, size=config.image_size, channels=config.channels,
                                 data_dir=config.data_dir, max_images=config.max_images)  # fmt: skip
        except (DataError, OSError) as e:
            logging.getLogger(__name__).warning("no out-of-distribution score in the bundle: %s", e)
            return None
    pick = np.random.default_rng(config.seed).permutation(len(pixels))[:n]
    return to_tensor(pixels[np.sort(pick)])
