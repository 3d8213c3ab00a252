"""Which descriptor features make the best typicality score: the measurement behind trainer/ood.py.

Reproduces the table of docs/results.md, "Out-of-distribution" (why the first block's statistics).

    python experiments/ood_features.py runs/reference/ckpt-10000.pt [--n 500] [--calibration 2000]

For each descriptor block (after its activation; the last layer's outputs, the 100 numbers f sums), fits a
Gaussian to the block's per-channel spatial statistics on training images and prints the AUROC of the
Mahalanobis distance on evaluation/ood.py's out sets against held-out t10k images: with spatial means only,
with means and standard deviations (what typicality.onnx uses for block 1), and summed over blocks.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
from coopnets.evaluation.data import load_split
from coopnets.evaluation.ood import out_sets, separation
from coopnets.trainer.checkpoint import load_models
from torch import nn


def block_features(descriptor: nn.Module, x: np.ndarray, with_std: bool) -> dict[int, np.ndarray]:
    """Layer index -> (N, D) pooled activations after each activation and after the last layer."""
    out, h = {}, torch.from_numpy(x)
    layers = list(descriptor.body)
    with torch.no_grad():
        for i, m in enumerate(layers):
            h = m(h)
            if isinstance(m, nn.LeakyReLU) or i == len(layers) - 1:
                spatial = h.dim() == 4 and h.shape[2] * h.shape[3] > 1
                if not spatial:
                    out[i] = h.flatten(1).double().numpy()
                else:
                    parts = [h.mean((2, 3))] + ([h.std((2, 3))] if with_std else [])
                    out[i] = torch.cat(parts, 1).double().numpy()
    return out


def mahalanobis(fit: np.ndarray):
    mu, cov = fit.mean(0), np.cov(fit, rowvar=False)
    precision = np.linalg.pinv(cov + 1e-6 * np.trace(cov) / len(cov) * np.eye(len(cov)))
    scale = np.median(np.einsum("ni,ij,nj->n", fit - mu, precision, fit - mu))
    return lambda f: np.einsum("ni,ij,nj->n", f - mu, precision, f - mu) / scale


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("checkpoint")
    p.add_argument("--n", type=int, default=500, help="held-out images and images per out set")
    p.add_argument("--calibration", type=int, default=2000, help="training images for the Gaussians")
    args = p.parse_args()
    torch.set_num_threads(1)
    descriptor, _, config = load_models(args.checkpoint)
    descriptor.eval()
    shape = (config.channels, config.image_size, config.image_size)
    train, test = load_split("train", shape).images, load_split("t10k", shape).images
    rng = np.random.default_rng(0)
    fit_images = train[rng.choice(len(train), args.calibration, replace=False)]
    perm = rng.permutation(len(test))
    held, spare = test[perm[: args.n]], test[perm[args.n : 2 * args.n]]
    sets = out_sets(held, spare, seed=1)
    print("features", *sets, "worst", sep=" | ")
    for with_std in (False, True):
        fits = block_features(descriptor, fit_images, with_std)
        scorers = {k: mahalanobis(v) for k, v in fits.items()}
        s_in = {k: scorers[k](v) for k, v in block_features(descriptor, held, with_std).items()}
        s_out = {o: {k: scorers[k](v) for k, v in block_features(descriptor, x, with_std).items()}
                 for o, x in sets.items()}  # fmt: skip
        pooling = "mean+std" if with_std else "mean"
        keys = list(fits)
        combos = [(f"layer {k} ({fits[k].shape[1]}, {pooling})", [k]) for k in keys]
        combos += [(f"layers {'+'.join(map(str, keys[:j]))} ({pooling})", keys[:j]) for j in (2, 3)]
        for name, ks in combos:
            row = [separation(name, o, sum(s_in[k] for k in ks), sum(s_out[o][k] for k in ks)).auroc
                   for o in sets]  # fmt: skip
            print(name, *(f"{v:.3f}" for v in row), f"{min(row):.3f}", sep=" | ", flush=True)


if __name__ == "__main__":
    main()
