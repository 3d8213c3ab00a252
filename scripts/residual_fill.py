"""Completion with and without residual fill (contract.sampling.residual_fill), beside the best classical
baseline: the measurement behind the default `residual_fill: true` (contract/bundle.py DEFAULT_COMPLETION).

    python scripts/residual_fill.py reference --n 100
    python scripts/residual_fill.py runs/digits/bundle --heldout digits --heldout-skip 1497 --n 100

Prints, per occlusion, the PSNR of the missing region (mean over N held-out images, seeds 0..N-1, the
bundle's other completion defaults) of: the fill before refinement and after it, each without and with
residual fill, the same fill with the residual carried biharmonically instead (scikit-image's
inpaint_biharmonic of Y_obs - g(X): an alternative measured against the harmonic one), and scikit-image's
biharmonic inpainting of the image itself.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys

import numpy as np

from contract import sampling
from contract.occlusions import occlusion_masks
from evaluation import metrics
from evaluation.baselines import biharmonic
from serving.engine import Engine


def heldout_images(args, shape) -> np.ndarray:
    if not args.heldout:
        from evaluation.data import load_split

        return load_split("t10k", shape).images[: args.n]
    from contract.codec import from_uint8
    from trainer.data import load_images

    images = from_uint8(load_images(args.heldout, size=shape[1], channels=shape[0]))
    return images[args.heldout_skip : args.heldout_skip + args.n]


class KeepGenerated:
    """Wraps the engine's generate so that the last g(X) it made can be read back: completion's last
    generate call is g(X) at the latent it inferred, on the whole image (the observed pixels included)."""

    def __init__(self, engine):
        self.generate, self.last = engine.backend.generate, None
        engine.backend.generate = self

    def __call__(self, z):
        self.last = self.generate(z)
        return self.last


def setup(description: str, add_arguments=None):
    """The command line the completion scripts share: (args, engine, held-out images (N, C, H, W), seeds).
    `add_arguments(parser)` adds a script's own flags."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("bundle", help="bundle directory, or reference")
    p.add_argument("--n", type=int, default=100)
    p.add_argument("--heldout", default="", help="coop-train --dataset syntax; default Fashion-MNIST t10k")
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
    generated = KeepGenerated(engine)
    print(f"{args.bundle}: N = {len(images)}, PSNR (dB) of the missing region")
    print(
        "| occlusion | fill g(X) | + refine | fill g(X) + residual | + refine | g(X) + biharmonic residual "
        "| + refine | biharmonic |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for occlusion in args.occlusions.split(","):
        masks = occlusion_masks(occlusion, engine.image_shape, seeds)  # (N, C, H, W), 1 = missing
        observed = np.where(masks > 0.5, 0.0, images).astype(np.float32)
        cells = []
        for residual in (False, True):
            params = dataclasses.replace(base, residual_fill=residual)
            fills = []

            def keep_fill(progress: sampling.Progress, fills=fills) -> None:
                if progress.phase == "langevin" and progress.step == 0:
                    fills.append(progress.value())

            out = sampling.run(engine.completion_steps(observed, masks, seeds, params), on_progress=keep_fill)
            cells += [fills[0], out.images]
        # g(X) at the latent both runs above inferred (the same seeds: the same latent), the whole image
        g = generated.last  # (N, C, H, W), or (N·R, C, H, W) with average_restarts: their mean is the fill
        g = g.reshape(len(images), -1, *g.shape[1:]).mean(axis=1)  # (N, C, H, W)
        resid = biharmonic(np.where(masks > 0.5, 0.0, images - g).astype(np.float32), masks)
        bi_fill = np.where(masks > 0.5, g + resid, images).astype(np.float32)
        rngs = sampling.rngs_for(seeds)
        refine = sampling.langevin_steps(
            engine.backend, bi_fill, masks, rngs, base.refine_steps, base.refine_step_size, base.noise
        )
        cells += [bi_fill, sampling.run(refine)]  # (N, C, H, W)
        cells.append(biharmonic(observed, masks))
        psnr = [float(np.mean(metrics.psnr(np.clip(x, -1, 1), images, masks))) for x in cells]
        print(f"| {occlusion} | " + " | ".join(f"{v:.2f}" for v in psnr) + " |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
