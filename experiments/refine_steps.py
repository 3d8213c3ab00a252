"""How many descriptor Langevin refinement steps completion should take, and of what size: PSNR of the
missing region after K = 0, 5, 10, 20, 40, 80 refinement steps at step sizes scale × δ, from one fill.

Reproduces the table of docs/results.md, "Refinement steps (`refine_steps`)".

    python experiments/refine_steps.py reference --n 100 --occlusions center:12,random:0.5
    python experiments/refine_steps.py runs/mnist5k/bundle --heldout npz:runs/mnist5k.npz --heldout-skip 4000

The fill is completion at the bundle's defaults with no refinement (latent chains, their fill and the
residual); each column then runs contract.sampling.langevin_steps on the hole from that same fill, with the
bundle's noise setting, so the columns differ only in K and the step size. The cell at the bundle's
(K, δ), printed in the header, is what completion returns up to the refinement's noise draw.
"""

from __future__ import annotations

import dataclasses
import sys

import numpy as np
from coopnets.contract import sampling
from coopnets.contract.occlusions import occlusion_masks
from coopnets.evaluation import metrics
from residual_fill import setup  # noqa: E402  (python puts the script's folder, experiments/, on sys.path)

CHECKPOINTS = (0, 5, 10, 20, 40, 80)


def main() -> int:
    def add_arguments(p):
        p.add_argument("--scales", default="0.5,1,2", help="refinement step sizes, multiples of δ")

    args, engine, images, seeds = setup(__doc__.splitlines()[0], add_arguments)
    base = engine.completion_defaults
    scales = [float(s) for s in args.scales.split(",")]
    print(f"{args.bundle}: N = {len(images)}, PSNR (dB) of the missing region; bundle default "
          f"K = {base.refine_steps}, δ = {base.delta}")  # fmt: skip
    print("| occlusion | step size | " + " | ".join(f"K = {k}" for k in CHECKPOINTS) + " |")
    print("|---|---|" + "---|" * len(CHECKPOINTS))
    for occlusion in args.occlusions.split(","):
        masks = occlusion_masks(occlusion, engine.image_shape, seeds)  # (N, C, H, W), 1 = missing
        observed = np.where(masks > 0.5, 0.0, images).astype(np.float32)
        no_refine = dataclasses.replace(base, refine_steps=0)
        fill = sampling.run(engine.completion_steps(observed, masks, seeds, no_refine)).images  # (N, C, H, W)
        for scale in scales:
            psnr = {}
            refine = sampling.langevin_steps(
                engine.backend, fill, masks, sampling.rngs_for(seeds), max(CHECKPOINTS),
                scale * base.delta, base.noise,
            )  # fmt: skip
            for progress in refine:
                if progress.step in CHECKPOINTS:
                    y = np.clip(progress.value(), -1, 1)
                    psnr[progress.step] = float(np.mean(metrics.psnr(y, images, masks)))
            cells = " | ".join(f"{psnr[k]:.2f}" for k in CHECKPOINTS)
            print(f"| {occlusion} | {scale:g}δ | {cells} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
