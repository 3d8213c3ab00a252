"""Completion's residual fill (contract.inpainting.interpolate_residual) beside the best classical baseline:
the measurement behind the defaults `residual_fill: true` and `residual_interpolant: auto` (contract/bundle.py
DEFAULT_COMPLETION).

Reproduces the table of docs/results.md, "The residual fill" and "The residual's interpolant".

    python experiments/residual_fill.py reference --n 100
    python experiments/residual_fill.py runs/digits/bundle --heldout digits --heldout-skip 1497 --n 100

Per occlusion: the latent chains run once (the bundle's completion defaults, seeds 0..N-1), and from their
fill G = g(X) every variant gets the same refinement (K descriptor steps, each variant from the same rng
state): G alone (the paper), G plus the observed residual carried harmonically, biharmonically, or by the
hole's shape ("auto"), beside scikit-image's biharmonic inpainting of the image itself. Prints the PSNR (dB)
of the missing region, mean over the N held-out images, and the mean fraction of the hole that touches an
observed pixel (contract.inpainting.scattered_fraction: "auto" goes biharmonic at >= SCATTERED).
"""

from __future__ import annotations

import argparse
import copy
import sys

import numpy as np
from coopnets.contract import inpainting, sampling
from coopnets.contract.occlusions import occlusion_masks
from coopnets.evaluation import metrics
from coopnets.evaluation.baselines import biharmonic
from coopnets.serving.engine import Engine


def heldout_images(args, shape) -> np.ndarray:
    if not args.heldout:
        from coopnets.evaluation.data import load_split

        return load_split("t10k", shape).images[: args.n]
    from coopnets.contract.codec import from_uint8
    from coopnets.trainer.data import load_images

    images = from_uint8(load_images(args.heldout, size=shape[1], channels=shape[0]))
    if args.heldout.startswith("folder:"):
        # a class-folder tree loads sorted by class: the first N would all be one class, so draw N at random
        # (seeded), as coop-eval does
        order = np.random.default_rng(0).permutation(len(images))
        images = images[order]
    return images[args.heldout_skip : args.heldout_skip + args.n]


def setup(description: str, add_arguments=None):
    """The command line the completion scripts share: (args, engine, held-out images (N, C, H, W), seeds).
    `add_arguments(parser)` adds a script's own flags."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("bundle", help="bundle directory, or reference")
    p.add_argument("--n", type=int, default=100)
    p.add_argument(
        "--heldout",
        default="",
        help="coop-train --dataset syntax (a folder: tree is drawn in a seeded random order); default "
        "Fashion-MNIST t10k",
    )
    p.add_argument("--heldout-skip", type=int, default=0)
    p.add_argument("--occlusions", default="center:12,random:0.5,left-half")
    p.add_argument("--threads", type=int, default=0)
    if add_arguments is not None:
        add_arguments(p)
    args = p.parse_args()
    engine = Engine.open(args.bundle, device="cpu", threads=args.threads)
    images = heldout_images(args, engine.image_shape)  # (N, C, H, W)
    return args, engine, images, list(range(len(images)))


def main() -> int:
    args, engine, images, seeds = setup(__doc__.splitlines()[0])
    base = engine.completion_defaults
    backend = engine.backend
    print(f"{args.bundle}: N = {len(images)}, PSNR (dB) of the missing region after refinement")
    print(
        "| occlusion | hole touching observed | g(X) | + harmonic residual | + biharmonic residual "
        "| + auto | biharmonic inpainting | auto − biharmonic inpainting |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for occlusion in args.occlusions.split(","):
        masks = occlusion_masks(occlusion, engine.image_shape, seeds)  # (N, C, H, W), 1 = missing
        observed = np.where(masks > 0.5, 0.0, images).astype(np.float32)  # (N, C, H, W)
        rngs = sampling.rngs_for(seeds)
        g = sampling.run(sampling.latent_fill(backend, observed, masks, rngs, base))  # (N, C, H, W) G
        cells = []
        for interpolant in (None, "harmonic", "biharmonic", "auto"):
            fill = (
                g
                if interpolant is None
                else g + inpainting.interpolate_residual(observed - g, masks, interpolant)
            )
            y = np.where(masks > 0.5, fill, observed).astype(np.float32)
            refine = sampling.langevin_steps(
                backend, y, masks, copy.deepcopy(rngs), base.refine_steps, base.delta, base.noise
            )
            cells.append(sampling.run(refine))  # (N, C, H, W)
        cells.append(biharmonic(observed, masks))
        psnr = [float(np.mean(metrics.psnr(np.clip(x, -1, 1), images, masks))) for x in cells]
        touching = float(np.mean(inpainting.scattered_fraction(masks)))
        print(
            f"| {occlusion} | {touching:.2f} | "
            + " | ".join(f"{v:.2f}" for v in psnr)
            + f" | {psnr[3] - psnr[4]:+.2f} |",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
