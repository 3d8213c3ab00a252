"""How large and how many latent gradient steps completion needs on the 28×28 net: λ_max of U's Hessian and a
(η, L) sweep. Reproduces docs/results.md, "The latent steps" (the measurement behind
`latent_step_size` 0.05 and `latent_steps` 100 in contract/bundle.py's completion defaults).

    .venv/bin/python experiments/latent_completion.py runs/demo/checkpoint.pt
    .venv/bin/python experiments/latent_completion.py CKPT --images 8 --data-dir DIR     # smoke

Completes held-out Fashion-MNIST test images (t10k, evaluation only) with a centre 14×14 hole by latent
gradient steps (no noise, as the default) on U(X) = ‖(1 − M) ⊙ (Y − g(X))‖²/(2σ²) + ‖X‖²/2; prints the top
eigenvalue of U's Gauss-Newton Hessian (stable gradient steps need η < 2/sqrt(λ_max)) and the PSNR on the
observed and on the hidden pixels after L steps of size η.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from coopnets.contract.codec import from_uint8
from coopnets.contract.flags import Parser, add_flags, cli_main, resolve
from coopnets.contract.sampling import latent_step
from coopnets.trainer.data import DEBIAN_DIR
from coopnets.trainer.langevin import latent_energy_grad

TEST_IMAGES = "t10k-images-idx3-ubyte.gz"  # Fashion-MNIST's held-out split: evaluation only

HELP = {
    "checkpoint": "a coop-train checkpoint.pt (28×28, one channel)",
    "images": "held-out test images to complete",
    "sigma": "σ of U",
    "data_dir": f"folder with {TEST_IMAGES}",
}


@dataclass(frozen=True)
class LatentCompletionConfig:
    checkpoint: str = ""
    images: int = 64
    sigma: float = 0.3
    data_dir: str = str(DEBIAN_DIR)

    def validate(self) -> LatentCompletionConfig:
        if not self.checkpoint:
            raise ValueError("give a checkpoint")
        if self.images < 1 or not self.sigma > 0:
            raise ValueError("--images must be >= 1 and --sigma > 0")
        return self


def psnr(a: torch.Tensor, b: torch.Tensor, where: torch.Tensor) -> float:
    """Mean PSNR (dB) over images on the pixels where `where` = 1; [-1, 1] images, peak-to-peak 2."""
    mse = ((a - b) ** 2 * where).flatten(1).sum(1) / where.flatten(1).sum(1)
    return (10 * torch.log10(4 / mse)).mean().item()


def completion_table(checkpoint: str, n_images: int, sigma: float, data_dir: str) -> None:
    from coopnets.trainer.checkpoint import load_models
    from coopnets.trainer.data import read_idx_images

    _, generator, _ = load_models(checkpoint)
    generator.requires_grad_(False)
    pixels = read_idx_images(Path(data_dir) / TEST_IMAGES)[:n_images]  # (N, 28, 28)
    y = torch.from_numpy(from_uint8(pixels[:, None]))  # (N, 1, 28, 28)
    mask = torch.zeros_like(y)
    mask[:, :, 7:21, 7:21] = 1  # 1 = missing
    keep = 1 - mask
    z0 = torch.from_numpy(
        np.random.default_rng(0).standard_normal((n_images, generator.spec.latent_dim), dtype=np.float32)
    )

    # Top eigenvalue of the Gauss-Newton Hessian of U at z ~ N(0, I): JᵀMJ/σ² + I, by power iteration.
    def hessian_vector(v: torch.Tensor) -> torch.Tensor:
        _, jv = torch.func.jvp(generator, (z0,), (v,))  # (N, C, H, W)
        _, vjp = torch.func.vjp(generator, z0)
        return vjp(keep * jv)[0] / sigma**2 + v  # (N, d)

    v = torch.randn_like(z0)
    for _ in range(30):
        w = hessian_vector(v)
        lam = (w * v).sum(1) / (v * v).sum(1)
        v = w / w.norm(dim=1, keepdim=True)
    print(
        f"λ_max(Hessian of U) over {n_images} images: median {lam.median():.0f}, max {lam.max():.0f}; "
        f"stable gradient steps need η < 2/sqrt(λ) = {2 / lam.max().sqrt():.3f} (max)"
    )

    lengths = (25, 50, 100, 200)
    print("| η | " + " | ".join(f"L={n} obs / hole (dB)" for n in lengths) + " |")
    print("|---|" + "---:|" * len(lengths))
    for latent_step_size in (0.02, 0.05, 0.1, 0.2):  # η
        z, cells = z0.clone(), []
        for step in range(1, max(lengths) + 1):
            grad = latent_energy_grad(generator, z, y, mask, sigma)  # (N, d)
            z = latent_step(z, grad, 0.0, latent_step_size)  # (N, d), no noise
            if step in lengths:
                with torch.no_grad():
                    y_gen = generator(z)
                cells.append(f"{psnr(y_gen, y, keep):.2f} / {psnr(y_gen, y, mask):.2f}")
        print(f"| {latent_step_size} | " + " | ".join(cells) + " |", flush=True)
    mean_fill = psnr(y.mean(0, keepdim=True).expand_as(y), y, mask)
    print(f"baseline, hole filled with the mean test image: {mean_fill:.2f} dB")


def main(argv: list[str] | None = None) -> int:
    parser = Parser(prog="latent_completion.py", description=__doc__.splitlines()[0])
    add_flags(parser, LatentCompletionConfig, HELP, positional=("checkpoint",))
    args = vars(parser.parse_args(argv))

    def body() -> int:
        cfg = resolve(LatentCompletionConfig, args)
        torch.manual_seed(0)
        completion_table(cfg.checkpoint, cfg.images, cfg.sigma, cfg.data_dir)
        return 0

    return cli_main("latent_completion.py", body)


if __name__ == "__main__":
    sys.exit(main())
