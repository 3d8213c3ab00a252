"""What else could score out-of-distribution color images: the search behind "why `ood` stays as it is".

Reproduces the table of docs/results.md, "Out-of-distribution", "Other scores tried on color".

    python experiments/ood_candidates.py runs/cifar10/checkpoint.pt [--n 500] [--calibration 4000]

Scores each candidate on evaluation/ood.py's out sets against `--n` held-out test images (AUROC; higher =
less typical, so a score below 0.5 ranks the set as *more* typical than data). Each Gaussian (Mahalanobis
distance, log) is fitted on the even-numbered of `--calibration` training images; a two-sided score is
|log d − its median on the odd-numbered ones|, a negative test log d(Y) − log d(−Y) (trainer/ood.py):

    block k       the descriptor's k-th block, per-channel spatial mean and std
    gram 1        block 1's channel Gram matrix (its upper triangle)
    outputs       the 100 numbers f sums
    pixels 8x8    the image average-pooled to 8×8 (3·64 values): no network at all
    -f, |grad f|  the descriptor's score and the log norm of its gradient in Y
    recon         the generator's reconstruction error: latent inference as completion runs it (the bundle
                  defaults' steps and step size, noise off) with no pixel missing, log mean squared error
    |X|²          the inferred latent's squared norm

Then every union Σ max(0, zₖ) of 2 or 3 of the scores (each zₖ 0 at its calibration median and 1 at its 95th
percentile, as trainer/ood.py calibrates): the union is *picked* on the first half of the held-out images and
of each out set and *reported* on the second half, so its number is not selected on the images it is read on.
"""

from __future__ import annotations

import argparse
import itertools

import numpy as np
import torch
from coopnets.contract.bundle import DEFAULT_COMPLETION
from coopnets.contract.sampling import latent_step
from coopnets.evaluation.ood import separation
from coopnets.trainer.checkpoint import load_models
from ood_color import split  # noqa: E402  (python puts the script's folder, experiments/, on sys.path)
from torch import nn


def descriptor_parts(descriptor: nn.Module, x: np.ndarray, batch: int = 250) -> dict[str, np.ndarray]:
    """Per image: block statistics, block 1's Gram matrix, the outputs, f and log ‖∂f/∂Y‖."""
    layers, out = list(descriptor.body), {}
    for i in range(0, len(x), batch):
        y = torch.from_numpy(np.ascontiguousarray(x[i : i + batch], np.float32)).requires_grad_(True)
        h, blocks = y, []
        for m in layers:
            h = m(h)
            if isinstance(m, nn.LeakyReLU):
                blocks.append(h)  # (N, Ck, Hk, Wk)
        (grad,) = torch.autograd.grad(h.sum(), y)
        with torch.no_grad():
            a = blocks[0].flatten(2)  # (N, C1, H1·W1)
            gram = a @ a.transpose(1, 2) / a.shape[2]  # (N, C1, C1)
            iu = torch.triu_indices(gram.shape[1], gram.shape[1])
            stats = [torch.cat([b.mean((2, 3)), b.std((2, 3))], 1) for b in blocks]
            parts = {f"block {k + 1}": v for k, v in enumerate(stats)}
            parts |= {"gram 1": gram[:, iu[0], iu[1]], "outputs": h, "-f": -h.sum(1, keepdim=True),
                      "|grad f|": grad.flatten(1).norm(dim=1, keepdim=True).log(),
                      "pixels 8x8": nn.functional.avg_pool2d(y, 4).flatten(1)}  # fmt: skip
        for k, v in parts.items():
            out.setdefault(k, []).append(v.detach().double().numpy())
    return {k: np.concatenate(v) for k, v in out.items()}


def reconstruction(generator: nn.Module, x: np.ndarray, sigma: float) -> dict[str, np.ndarray]:
    """Latent inference with every pixel observed, as completion runs it at the bundle defaults (noise off):
    log MSE of g(X) and ‖X‖² at the end, per image."""
    y = torch.from_numpy(np.ascontiguousarray(x, np.float32))
    z = torch.randn(len(y), generator.spec.latent_dim, generator=torch.Generator().manual_seed(0))
    for _ in range(DEFAULT_COMPLETION.latent_steps):
        z.requires_grad_(True)
        u = ((y - generator(z)) ** 2).flatten(1).sum(1) / (2 * sigma**2) + (z**2).sum(1) / 2  # (N,)
        (grad,) = torch.autograd.grad(u.sum(), z)
        z = latent_step(z, grad, 0.0, DEFAULT_COMPLETION.latent_step_size).detach()
    with torch.no_grad():
        mse = ((y - generator(z)) ** 2).flatten(1).mean(1)
    return {"recon": mse.log().double().numpy()[:, None], "|X|²": (z**2).sum(1).double().numpy()[:, None]}


def gaussian(fit: np.ndarray, ridge: float = 1e-6):
    """log Mahalanobis distance to a Gaussian fitted on `fit` (N, D), as a function of (M, D) features."""
    mu, cov = fit.mean(0), np.cov(fit, rowvar=False)
    cov = cov + ridge * np.trace(cov) / len(cov) * np.eye(len(cov))
    whiten = np.linalg.inv(np.linalg.cholesky(cov)).T  # Σ⁻¹ = W Wᵀ
    return lambda f: np.log((((f - mu) @ whiten) ** 2).sum(1))


def scores(models, calibration: np.ndarray, sets: dict[str, np.ndarray]) -> dict[str, dict[str, np.ndarray]]:
    """Candidate -> set ("cal" = the odd-numbered calibration images, "in", the out sets) -> (N,) scores."""
    descriptor, generator, sigma = models
    sets = {"cal": calibration[1::2], **sets}
    parts = {
        n: descriptor_parts(descriptor, x) | reconstruction(generator, x, sigma) for n, x in sets.items()
    }
    negatives = {n: descriptor_parts(descriptor, -x) for n, x in sets.items()}
    fit = descriptor_parts(descriptor, calibration[0::2])
    out = {}
    for k, v in fit.items():
        if v.shape[1] == 1:  # a scalar: itself, and two-sided
            out[k] = {n: p[k][:, 0] for n, p in parts.items()}
            continue
        d = gaussian(v)
        out[f"{k}: log d"] = {n: d(p[k]) for n, p in parts.items()}
        out[f"{k}: negative test"] = {n: d(p[k]) - d(negatives[n][k]) for n, p in parts.items()}
    for k in ("recon", "|X|²"):
        out[k] = {n: p[k][:, 0] for n, p in parts.items()}
    for k in [k for k in out if not k.endswith("negative test")]:
        m = np.median(out[k]["cal"])
        out[f"{k}, two-sided"] = {n: np.abs(v - m) for n, v in out[k].items()}
    return out


def auroc(s: dict[str, np.ndarray], names: list[str], part: slice = slice(None)) -> list[float]:
    return [separation("", o, s["in"][part], s[o][part]).auroc for o in names]


def best_unions(out: dict, names: list[str], top: int = 5) -> list[tuple[str, list[float]]]:
    """The `top` unions of 2 or 3 candidates by worst AUROC on the first halves, with their AUROCs on the
    second halves."""
    z = {}
    for k, s in out.items():
        c = np.median(s["cal"])
        w = max(np.quantile(s["cal"], 0.95) - c, 1e-12)
        z[k] = {n: np.maximum(0, (v - c) / w) for n, v in s.items()}
    keys = [k for k in z if min(auroc(out[k], names)) > 0.2]  # a score blind everywhere adds only noise
    first, second = slice(0, None, 2), slice(1, None, 2)
    ranked = []
    for r in (2, 3):
        for combo in itertools.combinations(keys, r):
            total = {n: sum(z[k][n] for k in combo) for n in ("in", *names)}
            ranked.append((min(auroc(total, names, first)), " + ".join(combo), total))
    ranked.sort(key=lambda t: -t[0])
    return [(name, auroc(total, names, second)) for _, name, total in ranked[:top]]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("checkpoint", help="a coop-train checkpoint of a color run")
    p.add_argument("--n", type=int, default=500, help="held-out images and images per out set")
    p.add_argument("--calibration", type=int, default=4000, help="training images for the Gaussians")
    args = p.parse_args()
    torch.set_num_threads(1)
    descriptor, generator, config = load_models(args.checkpoint)
    shape = (config.channels, config.image_size, config.image_size)
    calibration, held, sets = split(config.dataset, shape, config.data_dir, config.seed, args)
    sets = {"in": held, **sets}
    models = descriptor.float().eval(), generator.float().eval(), config.sigma
    for m in models[:2]:
        m.requires_grad_(False)
    out = scores(models, calibration, sets)
    names = [n for n in sets if n != "in"]
    print(f"{args.checkpoint}: in = {args.n} test images, {args.n} per out set; AUROC")
    print("| score | " + " | ".join(names) + " | worst |\n" + "|---" * (len(names) + 2) + "|")
    for k, s in out.items():
        a = auroc(s, names)
        print(f"| {k} | " + " | ".join(f"{v:.3f}" for v in a) + f" | {min(a):.3f} |")
    print("\nunions picked on the first half of each set, AUROC on the second half:")
    for name, a in best_unions(out, names):
        print(f"| {name} | " + " | ".join(f"{v:.3f}" for v in a) + f" | {min(a):.3f} |")


if __name__ == "__main__":
    main()
