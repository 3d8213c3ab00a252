"""Completion that keeps the lowest-U latent chain (the default) against one that averages the generator's
fills of all R chains: under uncertainty the PSNR-optimal fill is the posterior mean, and one confident wrong
stroke costs more than a blur (docs/results.md, the MNIST table).

    python scripts/restart_mean.py runs/mnist5k/bundle --heldout npz:runs/mnist5k.npz --heldout-skip 4000
    python scripts/restart_mean.py reference --n 100

Prints, per occlusion, the PSNR of the missing region (mean over N held-out images, seeds 0..N-1) of: the
default completion (R = the bundle's restarts, lowest U kept), the mean of g(X_r) over the same R chains
and over 4R chains, each then residual-filled and refined as the default is, and scikit-image's biharmonic
inpainting.
"""

from __future__ import annotations

import dataclasses
import sys

import numpy as np

from contract import sampling
from contract.occlusions import occlusion_masks
from evaluation import metrics
from evaluation.baselines import biharmonic

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from residual_fill import setup  # noqa: E402  (the scripts folder is not a package)


def mean_fill(engine, y_obs, masks, seeds, params, restarts: int) -> np.ndarray:
    """The latent chains of completion (contract.sampling.latent_chains), R per image, then the mean of
    g(X_r) over them instead of the lowest-U one; residual fill and refinement as completion_steps does."""
    backend, rngs, n = engine.backend, sampling.rngs_for(seeds), len(seeds)
    params = dataclasses.replace(params, restarts=restarts)
    y_rep, m_rep = np.repeat(y_obs, restarts, axis=0), np.repeat(masks, restarts, axis=0)  # (N·R, C, H, W)
    x = sampling.run(sampling.latent_chains(backend, y_rep, m_rep, rngs, params))  # (N·R, d)
    g = backend.generate(x).reshape(n, restarts, *y_obs.shape[1:]).mean(1)  # (N, C, H, W)
    if params.residual_fill:
        g = g + sampling.residual_fill(y_obs - g, masks)
    y = np.where(masks > 0.5, g, y_obs).astype(np.float32)
    steps = sampling.langevin_steps(
        backend, y, masks, rngs, params.refine_steps, params.refine_step_size, params.noise
    )
    return sampling.run(steps)


def main() -> int:
    args, engine, images, seeds = setup(__doc__.splitlines()[0])
    base = engine.completion_defaults
    r = base.restarts
    print(f"{args.bundle}: N = {len(images)}, PSNR (dB) of the missing region")
    print(f"| occlusion | lowest U of {r} (default) | mean of {r} | mean of {4 * r} | biharmonic |")
    print("|---|---|---|---|---|")
    for occlusion in args.occlusions.split(","):
        masks = occlusion_masks(occlusion, engine.image_shape, seeds)  # (N, C, H, W), 1 = missing
        observed = np.where(masks > 0.5, 0.0, images).astype(np.float32)
        cells = [sampling.run(engine.completion_steps(observed, masks, seeds, base)).images]
        cells += [mean_fill(engine, observed, masks, seeds, base, restarts) for restarts in (r, 4 * r)]
        cells.append(biharmonic(observed, masks))
        psnr = [float(np.mean(metrics.psnr(np.clip(x, -1, 1), images, masks))) for x in cells]
        print(f"| {occlusion} | " + " | ".join(f"{v:.2f}" for v in psnr) + " |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
