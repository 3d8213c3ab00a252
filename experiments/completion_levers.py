"""Inference-time levers on completion, for a bundle whose fill is barely ahead of the classical ones: PSNR of
the missing region for the bundle's completion, a tempered latent prior and a shrinkage toward biharmonic
inpainting, beside biharmonic inpainting itself.

Reproduces the table of docs/results.md, "Inference-time levers on color".

    python experiments/completion_levers.py cifar10 --heldout folder:DATA/cifar10/test --n 100 \
        --occlusions m30,blocks

- σ × k: the latent chains' U(X) = ‖(1 − M) ⊙ (Y − g(X))‖²/(2σ²) + ‖X‖²/2 with the generator's σ scaled by
  each of --sigma-scales (k > 1 pulls X less toward the visible pixels and more toward its prior, which
  behaves like shrinking the fill toward the generator's average image);
- λ: B + λ·(C − B) on the hole, with C the bundle's fill and B biharmonic inpainting, for each of --lambdas
  (1 is C, 0 is B): linear combinations of two estimators whose errors are correlated; the best cell is an
  upper bound on what mixing the classical fill in could give, since λ is read off the images it is scored on.

Seeds 0..N-1 as coop-eval's; everything else is the bundle's completion defaults. For more refinement steps
on the same fill see refine_steps.py, for more latent chains restart_mean.py.
"""

from __future__ import annotations

import sys

import numpy as np
from coopnets.contract.occlusions import occlusion_masks
from coopnets.evaluation import metrics
from coopnets.evaluation.baselines import biharmonic
from residual_fill import setup  # noqa: E402  (python puts the script's folder, experiments/, on sys.path)


def _floats(text: str) -> list[float]:
    return [float(v) for v in text.split(",")]


def main() -> int:
    def add_arguments(p):
        p.add_argument("--sigma-scales", default="2,3", help="k: the latent chains use σ·k")
        p.add_argument("--lambdas", default="0.25,0.5,0.75", help="λ: B + λ·(C − B) on the hole")

    args, engine, images, seeds = setup(__doc__.splitlines()[0], add_arguments)
    scales, lambdas = _floats(args.sigma_scales), _floats(args.lambdas)
    sigma = engine.backend.sigma
    print(f"{args.bundle}: N = {len(images)}, PSNR (dB) of the missing region; σ = {sigma}")
    print("| occlusion | bundle (C) | " + " | ".join(f"σ × {k:g}" for k in scales) + " | "
          + " | ".join(f"λ = {v:g}" for v in lambdas) + " | biharmonic (B) |")  # fmt: skip
    print("|---|" + "---|" * (2 + len(scales) + len(lambdas)))

    def psnr(x: np.ndarray, masks: np.ndarray) -> float:
        return float(np.mean(metrics.psnr(np.clip(x, -1, 1), images, masks)))

    for occlusion in args.occlusions.split(","):
        masks = occlusion_masks(occlusion, engine.image_shape, seeds)  # (N, C, H, W), 1 = missing
        observed = np.where(masks > 0.5, 0.0, images).astype(np.float32)
        fill = engine.complete(observed, masks, seeds).images  # C (N, C, H, W)
        tempered = []
        for k in scales:
            engine.backend.sigma = sigma * k  # the σ fed to generator_grad.onnx
            tempered.append(psnr(engine.complete(observed, masks, seeds).images, masks))
        engine.backend.sigma = sigma
        classical = biharmonic(observed, masks)  # B
        shrunk = [psnr(classical + v * (fill - classical), masks) for v in lambdas]
        cells = [psnr(fill, masks), *tempered, *shrunk, psnr(classical, masks)]
        print(f"| {occlusion} | " + " | ".join(f"{v:.2f}" for v in cells) + " |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
