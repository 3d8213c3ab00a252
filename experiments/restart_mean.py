"""Completion that keeps the lowest-U latent chain against one that averages the generator's fills of all R
chains (CompletionParams.average_restarts): under uncertainty the PSNR-optimal fill is the posterior mean,
and one confident wrong stroke costs more than a blur (docs/results.md, the MNIST table).

Reproduces the table of docs/results.md, "Averaged chains (`average_restarts`)".

    python experiments/restart_mean.py runs/mnist5k/bundle --heldout npz:runs/mnist5k.npz --heldout-skip 4000
    python experiments/restart_mean.py reference --n 100

Prints, per occlusion, the PSNR of the missing region (mean over N held-out images, seeds 0..N-1) of
completion at the bundle's defaults but for the two choices, with R = the bundle's restarts and 4R chains
(or the counts --chains names; the lowest U kept, or the mean of g(X_r)), each then residual-filled and
refined as the bundle says, and scikit-image's biharmonic inpainting.
"""

from __future__ import annotations

import dataclasses
import sys

import numpy as np
from coopnets.contract import sampling
from coopnets.contract.occlusions import occlusion_masks
from coopnets.evaluation import metrics
from coopnets.evaluation.baselines import biharmonic
from residual_fill import setup  # noqa: E402  (python puts the script's folder, experiments/, on sys.path)


def main() -> int:
    def add_arguments(p):
        p.add_argument("--chains", default="", help="chain counts, e.g. 4,16 (default: R and 4R)")

    args, engine, images, seeds = setup(__doc__.splitlines()[0], add_arguments)
    base = engine.completion_defaults
    counts = [int(k) for k in args.chains.split(",")] if args.chains else [base.restarts, 4 * base.restarts]
    cases = [(k, mean) for k in counts for mean in (False, True)]
    print(f"{args.bundle}: N = {len(images)}, PSNR (dB) of the missing region")
    print("| occlusion | " + " | ".join(f"{'mean' if m else 'lowest U'} of {k}" for k, m in cases)
          + " | biharmonic |")  # fmt: skip
    print("|---|" + "---|" * (len(cases) + 1))
    for occlusion in args.occlusions.split(","):
        masks = occlusion_masks(occlusion, engine.image_shape, seeds)  # (N, C, H, W), 1 = missing
        observed = np.where(masks > 0.5, 0.0, images).astype(np.float32)
        cells = []
        for restarts, mean in cases:
            params = dataclasses.replace(base, restarts=restarts, average_restarts=mean)
            cells.append(sampling.run(engine.completion_steps(observed, masks, seeds, params)).images)
        cells.append(biharmonic(observed, masks))
        psnr = [float(np.mean(metrics.psnr(np.clip(x, -1, 1), images, masks))) for x in cells]
        print(f"| {occlusion} | " + " | ".join(f"{v:.2f}" for v in psnr) + " |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
