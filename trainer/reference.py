"""The sampling contract of docs/architecture.md in PyTorch (autograd): what serving/engine.py must reproduce.

Built from trainer.langevin's chains, so that training, this reference and (through the exported graphs, which
are checked against the same functions) the service share one definition of a Langevin step. Nets are used as
CPU float32 eval-mode copies (BatchNorm with running statistics), as in the bundle.

One seed per image: image i draws z, then its noise step by step, from its own
``numpy.random.default_rng(seeds[i])``, so it does not depend on the batch it runs in.
Mask convention: 1 = missing (the pixel may move), 0 = observed (clamped, returned bit-identical).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from trainer.grads import frozen_copy
from trainer.langevin import NoiseFn, infer_latent, latent_energy, revise


def per_image_noise(rngs: list[np.random.Generator]) -> NoiseFn:
    """A trainer.langevin NoiseFn that draws each image's noise from its own rng, in step order."""

    def draw(t: int, like: torch.Tensor) -> torch.Tensor:
        shape = tuple(like.shape[1:])
        return torch.from_numpy(np.stack([rng.standard_normal(shape, dtype=np.float32) for rng in rngs]))

    return draw


def energy(descriptor: nn.Module, y: torch.Tensor, s: float) -> torch.Tensor:
    """E(Y) = ‖Y‖² / (2 s²) − f(Y) per image (N,); lower = more typical."""
    with torch.no_grad():
        return y.pow(2).flatten(1).sum(1) / (2 * s**2) - descriptor(y)


def _initial_latents(rngs: list[np.random.Generator], latent_dim: int) -> torch.Tensor:
    z = np.stack([rng.standard_normal(latent_dim, dtype=np.float32) for rng in rngs])  # (N, d)
    return torch.from_numpy(z)


def per_image_restart_noise(rngs: list[np.random.Generator], restarts: int) -> NoiseFn:
    """Noise for N·R latent chains (image i's R chains in rows i·R … i·R + R − 1): R rows from each image's
    rng as one (R, d) draw, so that R = 1 draws exactly what per_image_noise does."""

    def draw(t: int, like: torch.Tensor) -> torch.Tensor:
        shape = (restarts, *like.shape[1:])
        return torch.from_numpy(
            np.concatenate([rng.standard_normal(shape, dtype=np.float32) for rng in rngs])
        )

    return draw


def reference_synthesize(
    descriptor: nn.Module,
    generator: nn.Module,
    seeds: Sequence[int],
    steps: int,
    delta: float,
    s: float,
    noise: bool,
) -> tuple[np.ndarray, np.ndarray]:
    """Synthesis: z ~ N(0, I) from each image's rng, draft Y = g(z), then `steps` descriptor Langevin steps of
    size δ (noise drawn from the same rng when `noise`). Returns images (N, C, H, W) float32, unclipped, and
    their energies E(Y) (N,) float32."""
    descriptor, generator = frozen_copy(descriptor), frozen_copy(generator)
    rngs = [np.random.default_rng(seed) for seed in seeds]
    z = _initial_latents(rngs, generator.spec.latent_dim)  # (N, d)
    with torch.no_grad():
        y = generator(z)  # (N, C, H, W) the draft Ŷ
    mask = torch.ones_like(y)  # synthesis: every pixel may move
    y = revise(descriptor, y, steps, delta, s, per_image_noise(rngs) if noise else None, mask)  # Ỹ
    return y.numpy(), energy(descriptor, y, s).numpy()


def reference_complete(
    descriptor: nn.Module,
    generator: nn.Module,
    images: np.ndarray,
    masks: np.ndarray,
    seeds: Sequence[int],
    latent_steps: int,
    eta: float,
    latent_noise: bool,
    refine_steps: int,
    delta: float,
    s: float,
    sigma: float,
    noise: bool,
    restarts: int = 1,
) -> np.ndarray:
    """Completion of `images` (N, C, H, W) in [-1, 1] where `masks` (same shape, or (N, 1, H, W)) is 1 =
    missing, 0 = observed: infer z from the observed pixels by `latent_steps` latent Langevin steps of size η
    (noise only if `latent_noise`) on `restarts` chains per image, keeping the one whose final z has the
    lowest U(z) (the first on ties), fill the missing pixels with g(z), then `refine_steps` descriptor
    Langevin steps on the missing pixels only. Returns (N, C, H, W) float32; observed pixels are exactly
    `images`."""
    descriptor, generator = frozen_copy(descriptor), frozen_copy(generator)
    y_obs = torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32))  # (N, C, H, W)
    mask = torch.from_numpy(np.ascontiguousarray(masks, dtype=np.float32)).expand_as(y_obs).contiguous()
    if len(seeds) != y_obs.shape[0]:
        raise ValueError(f"{len(seeds)} seeds for {y_obs.shape[0]} images: give one seed per image")
    rngs = [np.random.default_rng(seed) for seed in seeds]

    # 1-2. Latent Langevin: X given the observed pixels, from R starts X ~ N(0, I) per image, one batch.
    if restarts < 1:
        raise ValueError(f"restarts must be at least 1, got {restarts}")
    n, r = y_obs.shape[0], restarts
    y_rep, mask_rep = y_obs.repeat_interleave(r, 0), mask.repeat_interleave(r, 0)  # (N·R, C, H, W)
    start = per_image_restart_noise(rngs, r)(0, torch.empty(n * r, generator.spec.latent_dim))  # (N·R, d)
    noise_fn = per_image_restart_noise(rngs, r) if latent_noise else None
    z = infer_latent(generator, start, y_rep, mask_rep, latent_steps, eta, sigma, noise_fn)  # (N·R, d)
    with torch.no_grad():
        u = latent_energy(generator, z, y_rep, mask_rep, sigma).view(n, r)  # (N, R)
    z = z.view(n, r, -1)[torch.arange(n), u.argmin(1)]  # (N, d) the lowest-U chain of each image
    # 3. Fill the hole with the generator's image.
    with torch.no_grad():
        y = torch.where(mask > 0.5, generator(z), y_obs)  # (N, C, H, W)
    # 4. Descriptor Langevin on the missing pixels, the observed ones clamped.
    y = revise(descriptor, y, refine_steps, delta, s, per_image_noise(rngs) if noise else None, mask)
    return y.numpy()
