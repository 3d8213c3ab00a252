"""Completion quality: recover the missing pixels (mask = 1) of held-out images, for each named occlusion,
with this project's completion, its two ablations and the baselines; PSNR and SSIM on the missing region
and on the whole image, per image, summarised as mean and 95% interval.

Methods (the model ones run through the served engine, exactly as a client gets them):
    coop            latent inference of X on the observed pixels, fill the hole with g(X), then K descriptor
                    Langevin steps on the hole (Engine.complete at the bundle's defaults)
    latent-only     the same with refine_steps = 0: what the generator alone recovers
    langevin-only   no generator: the hole filled with uniform noise in [-1, 1], then descriptor Langevin
                    on the hole (the descriptor alone, `langevin_only_steps` steps)
    mean, biharmonic, telea, ns    the baselines of evaluation.baselines
Observed pixels (mask = 0) are the original's in every method, so whole-image numbers differ from the
missing-region ones only by the share of the image that was hidden.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np
from tqdm import tqdm

from evaluation import metrics
from evaluation.baselines import all_baselines
from evaluation.occlusions import occlusion_masks
from serving.engine import Engine, rngs_for

log = logging.getLogger(__name__)

MODEL_METHODS = ("coop", "latent-only", "langevin-only")
BASELINE_METHODS = ("mean", "biharmonic", "telea", "ns")
METHODS = MODEL_METHODS + BASELINE_METHODS

Method = Callable[
    [np.ndarray, np.ndarray, list[int]], np.ndarray
]  # (images, masks 1 = missing, seeds) -> images


@dataclass(frozen=True)
class MethodScores:
    """One cell group of the completion table: one method on one occlusion."""

    occlusion: str
    method: str
    missing_fraction: float
    psnr_missing: metrics.Summary
    psnr_whole: metrics.Summary
    ssim_missing: metrics.Summary
    ssim_whole: metrics.Summary

    def to_dict(self) -> dict:
        return asdict(self)


def model_methods(engine: Engine, langevin_only_steps: int) -> dict[str, Method]:
    """The engine-backed methods. Seeds are per image: image i's latent and noise come from
    default_rng(seed_i)."""

    def coop(images, masks, seeds):
        return engine.complete(images, masks, seeds).images

    def latent_only(images, masks, seeds):
        return engine.complete(images, masks, seeds, refine_steps=0).images

    def langevin_only(images, masks, seeds):
        rngs = rngs_for(seeds)
        noise = np.stack(
            [r.uniform(-1, 1, engine.image_shape).astype(np.float32) for r in rngs]
        )  # (N, C, H, W)
        start = np.where(masks > 0.5, noise, images).astype(np.float32)
        return engine.refine(start, masks, rngs, steps=langevin_only_steps)

    return {"coop": coop, "latent-only": latent_only, "langevin-only": langevin_only}


def baseline_methods(mean_image: np.ndarray) -> dict[str, Method]:
    return {
        name: (lambda images, masks, seeds, f=f: f(images, masks))
        for name, f in all_baselines(mean_image).items()
    }


def run_method(
    method: Method, images: np.ndarray, masks: np.ndarray, seeds: list[int], batch: int
) -> np.ndarray:
    out = [method(images[i : i + batch], masks[i : i + batch], seeds[i : i + batch])
           for i in range(0, len(images), batch)]  # fmt: skip
    return np.clip(np.concatenate(out), -1, 1)  # as a PNG of the result would be


def score(
    occlusion: str, method: str, completed: np.ndarray, originals: np.ndarray, masks: np.ndarray
) -> MethodScores:
    return MethodScores(
        occlusion=occlusion,
        method=method,
        missing_fraction=float(masks.mean()),
        psnr_missing=metrics.summarise(metrics.psnr(completed, originals, masks)),
        psnr_whole=metrics.summarise(metrics.psnr(completed, originals)),
        ssim_missing=metrics.summarise(metrics.ssim(completed, originals, masks)),
        ssim_whole=metrics.summarise(metrics.ssim(completed, originals)),
    )


@dataclass
class CompletionResult:
    scores: list[MethodScores]
    examples: dict[
        str, dict[str, np.ndarray]
    ]  # occlusion -> {"original", "occluded", method...} (k, C, H, W)


def evaluate_completion(
    images: np.ndarray,
    occlusions: list[str],
    methods: dict[str, Method],
    seed: int,
    batch: int = 250,
    examples: int = 8,
    progress: bool = True,
) -> CompletionResult:
    """Every method on every occlusion of `images` (N, C, H, W), image i with seed `seed + i` (its mask and,
    for
    the model, its latent and noise)."""
    seeds = [seed + i for i in range(len(images))]
    scores, shown = [], {}
    jobs = [(o, m) for o in occlusions for m in methods]
    bar = tqdm(total=len(jobs), desc="completion", disable=not progress)
    for occlusion in occlusions:
        masks = occlusion_masks(occlusion, images.shape[1:], seeds)  # (N, C, H, W), 1 = missing
        occluded = np.where(masks > 0.5, 0.0, images).astype(
            np.float32
        )  # holes mid-grey, for the strips only
        shown[occlusion] = {"original": images[:examples], "occluded": occluded[:examples]}
        for name, method in methods.items():
            bar.set_postfix_str(f"{occlusion} {name}")
            completed = run_method(method, images, masks, seeds, batch)
            scores.append(score(occlusion, name, completed, images, masks))
            shown[occlusion][name] = completed[:examples]
            bar.update()
    bar.close()
    return CompletionResult(scores, shown)
