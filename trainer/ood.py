"""The out-of-distribution score the bundle ships (typicality.onnx): three tests, each calibrated on training
images, whose excesses over their typical values add up.

    t₁(Y) = |log d(Y) − m|                the first block's typicality, two-sided
    t₂(Y) = log d(Y) − log d(−Y)          the negative test: is Y less typical than its own negative?
    t₃(Y) = −f(Y)                         the descriptor's score
    ood(Y) = Σₖ max(0, (tₖ(Y) − cₖ) / wₖ) / q95

d(Y) = (φ(Y) − μ)ᵀ Σ⁻¹ (φ(Y) − μ) is the squared Mahalanobis distance of the first block's feature statistics
φ(Y) = [mean, std over H×W of h₁(Y)] (2·C₁,) from their calibration mean; h₁ is the descriptor's first block
(conv + leaky ReLU, C₁ = 64 channels on every net here). m is the median of log d on calibration images; cₖ
and wₖ the median and (95th percentile − median) of tₖ on them, so that each test reads 0 at its median and 1
at its 95th percentile (the sum is Fisher's combination of the three tests' p-values where their upper tails
are exponential); q95 the 95th percentile of the sum, so that `ood > 1` flags an image at a 5% false-alarm
rate. μ, Σ come from the even-numbered calibration images, m, cₖ, wₖ and q95 from the odd
ones (a quantile taken on the images the Gaussian was fitted to is biased low).

Why each test (measured with `python experiments/ood_color.py`, docs/results.md "Out-of-distribution"):
d alone, one-sided (the score earlier bundles ship, manifest `ood` without `tests`) flags noise, constant
images and Fashion-MNIST in RGB on the color model, but blends of two test images come out *more* typical than
data (AUROC 0.10): too little contrast, not too much. Two-sided (t₁) flags those, but no descriptor statistic
sees textures (0.4–0.5) or photo negatives (0.5–0.65; the negation of an image keeps any zero-mean Gaussian's
density, and first-block statistics barely move). −f does see textures (0.95) and blends (0.86) and fails
on Fashion-MNIST and constant images, which t₁ covers. Negatives: the first-block Gaussian prefers an image
to its own negative for most real images, so comparing the two (t₂) flags inverted images at 0.88 AUROC
alone — a test chosen for that out set, as the documentation says beside its numbers. The sum rather than
the max of the three (a union test): the max gave the same worst case on color (0.80) but lowered the
Fashion-MNIST reference's on blurred images from 0.968 to 0.933, which the sum keeps (0.966).

Why not the energy: E(Y) = ‖Y‖²/(2s²) − f(Y) ranks uniform noise as *more* typical than held-out images on
the Fashion-MNIST reference, and constant images and Fashion-MNIST as more typical on the color one: the
descriptor is trained only to tell data from the generator's samples, so its score is not calibrated off
that path; −f enters only as one of the three tests.

The graph holds the descriptor's full forward, with its last layer summed over its outputs in advance (f is
the sum of a linear layer's outputs, so one output with the summed weights computes it: 16 K weights instead
of 1.6 M on the 32 px net).
"""

from __future__ import annotations

import copy

import numpy as np
import torch
from torch import nn

CALIBRATION_IMAGES = 2000  # training images drawn at export for μ, Σ and the calibration quantiles
QUANTILE = 0.95
RIDGE = 1e-6  # Σ + RIDGE·(tr Σ / D)·I: a well-conditioned inverse when some features barely vary
TESTS = ("typicality (two-sided)", "negative", "-f")  # in the order of the calibration buffers
TINY = 1e-30  # d is clamped to it before the log (d = 0 only for an image exactly at the mean)


def first_block(descriptor: nn.Module) -> nn.Sequential:
    """The descriptor's layers up to and including its first activation."""
    layers = []
    for m in descriptor.body:
        layers.append(m)
        if isinstance(m, nn.LeakyReLU):
            return nn.Sequential(*layers)
    raise ValueError("the descriptor has no activation: no first block to take features from")


def summed_head(layer: nn.Module) -> nn.Module:
    """`layer` (the descriptor's last: Linear or Conv2d) with one output whose weights and bias are the sums
    of its outputs' (its output summed over channels is f, as Descriptor.head sums it)."""
    if isinstance(layer, nn.Linear):
        out = nn.Linear(layer.in_features, 1, bias=layer.bias is not None)
    elif isinstance(layer, nn.Conv2d) and layer.groups == 1:
        out = copy.deepcopy(layer)
        out.out_channels = 1
    else:
        raise ValueError(f"the descriptor's last layer {layer} is neither a Linear nor an ungrouped Conv2d")
    with torch.no_grad():
        out.weight = nn.Parameter(layer.weight.float().sum(0, keepdim=True))
        if layer.bias is not None:
            out.bias = nn.Parameter(layer.bias.float().sum(0, keepdim=True))
    return out


class Typicality(nn.Module):
    """y (N, C, H, W) -> ood (N,): TESTS' summed excesses, in units of the calibration images' 95th
    percentile."""

    def __init__(self, descriptor: nn.Module, mean: torch.Tensor, whiten: torch.Tensor):
        super().__init__()
        layers = list(descriptor.body)
        self.block = first_block(descriptor)
        self.middle = nn.Sequential(*layers[len(self.block) : -1])
        self.head = summed_head(layers[-1])
        self.register_buffer("mean", mean)  # (D,)
        self.register_buffer("whiten", whiten)  # (D, D): Σ⁻¹ = W Wᵀ
        # set by calibrate from the odd-numbered images: the median of log d, each test's median cₖ and
        # spread wₖ (95th percentile − median), and q95 of the sum
        self.register_buffer("log_median", torch.tensor(0.0))
        self.register_buffer("centre", torch.zeros(len(TESTS)))
        self.register_buffer("spread", torch.ones(len(TESTS)))
        self.register_buffer("scale", torch.tensor(1.0))

    @staticmethod
    def features(h: torch.Tensor) -> torch.Tensor:
        return torch.cat([h.mean((2, 3)), h.std((2, 3))], 1)  # (N, C1, H1, W1) -> (N, 2·C1)

    def parts(self, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(N, C, H, W) -> log d of the images and of their negatives (2N,), and f (N,)."""
        n = y.shape[0]
        h = self.block(torch.cat([y, -y]))  # (2N, C1, H1, W1): the images, then their negatives
        # dᵀΣ⁻¹d as ‖dW‖², a sum of squares: the quadratic form (dΣ⁻¹)·d cancels in float32 (Σ's condition
        # number reaches 1e8 early in training; ONNX Runtime and PyTorch then differed by 3e-3 relative)
        z = (self.features(h) - self.mean) @ self.whiten  # (2N, D)
        log_d = torch.log((z * z).sum(1).clamp_min(TINY))  # (2N,)
        return log_d, self.head(self.middle(h[:n])).flatten(1).sum(1)  # f: the descriptor's score

    def tests(self, log_d: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
        """TESTS' statistics (N, 3) from parts(y), higher = less typical."""
        n = f.shape[0]
        return torch.stack([(log_d[:n] - self.log_median).abs(), log_d[:n] - log_d[n:], -f], 1)

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        z = (self.tests(*self.parts(y)) - self.centre) / self.spread  # (N, 3): 0 at the median, 1 at q95
        return z.clamp_min(0).sum(1) / self.scale  # (N,)


@torch.no_grad()
def calibrate(descriptor: nn.Module, images: torch.Tensor, batch: int = 500) -> tuple[Typicality, dict]:
    """The Typicality of `descriptor` fitted on `images` (N, C, H, W) in [-1, 1], and the manifest's `ood`
    section describing it. μ and Σ come from the even-numbered images, the tests' medians and quantiles from
    the odd ones: a quantile taken on the images the Gaussian was fitted to is biased low: with 128
    features, unseen images exceed it far more often than 5% (tests/trainer/test_ood.py checks the split
    version on unseen digits)."""
    descriptor = copy.deepcopy(descriptor).float().eval()
    block = first_block(descriptor)
    fit_images, held = images[0::2], images[1::2]
    fit = torch.cat(
        [Typicality.features(block(fit_images[i : i + batch])) for i in range(0, len(fit_images), batch)]
    ).double()  # (N/2, D), statistics in float64
    mean = fit.mean(0)
    cov = torch.cov(fit.T)
    dim = cov.shape[0]
    cov = cov + RIDGE * torch.trace(cov) / dim * torch.eye(dim, dtype=cov.dtype)
    chol = torch.linalg.cholesky(cov)  # Σ = C Cᵀ, so Σ⁻¹ = W Wᵀ with W = C⁻ᵀ
    whiten = torch.linalg.solve_triangular(chol, torch.eye(dim, dtype=cov.dtype), upper=False).T  # (D, D)
    module = Typicality(descriptor, mean.float(), whiten.float()).eval()
    parts = [module.parts(held[i : i + batch]) for i in range(0, len(held), batch)]
    log_d = torch.cat([ld.view(2, -1) for ld, _ in parts], 1).view(-1)  # (N/2 images, then N/2 negatives)
    f = torch.cat([f for _, f in parts])  # (N/2,)
    module.log_median.fill_(float(log_d[: len(f)].median()))
    t = module.tests(log_d, f).double()  # (N/2, 3)
    centre = t.median(0).values
    spread = (torch.quantile(t, QUANTILE, dim=0) - centre).clamp_min(1e-12)
    module.centre.copy_(centre.float())
    module.spread.copy_(spread.float())
    total = ((t - centre) / spread).clamp_min(0).sum(1)  # (N/2,)
    module.scale.fill_(float(torch.quantile(total, QUANTILE)))
    section = {
        "score": "three calibrated tests summed: the two-sided typicality of the descriptor's first-block "
        "feature statistics, the negative test and -f (trainer/ood.py)",
        "tests": list(TESTS),
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
