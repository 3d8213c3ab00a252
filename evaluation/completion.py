"""Completion quality: recover the missing pixels (mask = 1) of held-out images, for each named occlusion,
with this project's completion, its two ablations and the baselines; PSNR and SSIM on the missing region
and on the whole image, and the paper's per-pixel mean absolute error on the missing region (on the [0, 1]
intensity scale, evaluation.metrics.mae), per image, summarised as mean and 95% interval.

Methods (the model ones run the one sampler, contract.sampling, through the served engine, exactly as a
client gets them):
    coop            latent inference of X on the observed pixels (R restarts: the mean of their g(X), or
                    the lowest-U one's for bundles before 0.4), fill the hole with it (plus the residual
                    with residual fill), then K descriptor Langevin steps on the hole (Engine.complete at
                    the bundle's defaults)
    latent-only     the same run's image before refinement (the hole filled with g(X)): what the generator
                    alone recovers, equal to Engine.complete with refine_steps = 0
    langevin-only   no generator: the hole filled with uniform noise in [-1, 1], then descriptor Langevin
                    on the hole (contract.sampling.langevin_steps: the descriptor alone, `langevin_only_steps`
                    steps at the bundle's step size and noise)
    mean, biharmonic, telea, ns    the baselines of evaluation.baselines
Observed pixels (mask = 0) are the original's in every method, so whole-image numbers differ from the
missing-region ones only by the share of the image that was hidden.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import numpy as np
from coopnets.contract import sampling
from coopnets.contract.occlusions import occluded, occlusion_masks
from coopnets.contract.sampling import Progress
from coopnets.evaluation import metrics
from coopnets.evaluation.baselines import all_baselines
from coopnets.serving.engine import Engine
from tqdm import tqdm

log = logging.getLogger(__name__)

MODEL_METHODS = ("coop", "latent-only", "langevin-only")
BASELINE_METHODS = ("mean", "biharmonic", "telea", "ns")
METHODS = MODEL_METHODS + BASELINE_METHODS

# (images, masks 1 = missing, seeds) -> {method name: completed images}; one runner may give several methods
Runner = Callable[[np.ndarray, np.ndarray, list[int]], dict[str, np.ndarray]]


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
    mae_missing: metrics.Summary  # [0, 1] intensity scale, the paper's measure
    # the per-image values behind psnr_missing and mae_missing, in image order: a margin between two methods
    # on the same images gets a paired interval from them (evaluation.report.completion_margins)
    psnr_missing_values: tuple[float, ...] = field(default=(), repr=False)
    mae_missing_values: tuple[float, ...] = field(default=(), repr=False)

    def to_dict(self) -> dict:
        out = asdict(self)
        del out["psnr_missing_values"], out["mae_missing_values"]
        return out


def model_runners(engine: Engine, langevin_only_steps: int) -> dict[tuple[str, ...], Runner]:
    """The engine-backed methods. Seeds are per image: image i's latent and noise come from
    default_rng(seed_i).

    `coop` and `latent-only` come from ONE completion run (the latent inference, L generator-gradient calls
    per restart, is the expensive part): latent-only is the start of its descriptor phase (the hole filled
    with g(X)), coop its result. tests/evaluation/test_eval_completion.py holds them equal to
    Engine.complete."""

    def latent_then_refine(images, masks, seeds):
        filled = []

        def keep_fill(p: Progress) -> None:
            if p.phase == "langevin" and p.step == 0:
                filled.append(p.value())  # (N, C, H, W)

        out = sampling.run(engine.completion_steps(images, masks, seeds), on_progress=keep_fill)
        return {"latent-only": filled[0], "coop": out.images}

    def langevin_only(images, masks, seeds):
        rngs = sampling.rngs_for(seeds)
        noise = np.stack([r.uniform(-1, 1, engine.image_shape).astype(np.float32) for r in rngs])
        start = np.where(masks > 0.5, noise, images).astype(np.float32)  # (N, C, H, W) hole = noise
        d = engine.completion_defaults
        steps = sampling.langevin_steps(
            engine.backend, start, masks, rngs, langevin_only_steps, d.delta, d.noise
        )
        return {"langevin-only": sampling.run(steps)}

    return {("coop", "latent-only"): latent_then_refine, ("langevin-only",): langevin_only}


def baseline_runners(mean_image: np.ndarray) -> dict[tuple[str, ...], Runner]:
    return {(name,): (lambda images, masks, seeds, f=f, name=name: {name: f(images, masks)})
            for name, f in all_baselines(mean_image).items()}  # fmt: skip


def run_batched(runner: Runner, images: np.ndarray, masks: np.ndarray, seeds: list[int],
                batch: int) -> dict[str, np.ndarray]:  # fmt: skip
    parts = [runner(images[i : i + batch], masks[i : i + batch], seeds[i : i + batch])
             for i in range(0, len(images), batch)]  # fmt: skip
    # clipped to [-1, 1], as a PNG of the result would be
    return {name: np.clip(np.concatenate([p[name] for p in parts]), -1, 1) for name in parts[0]}


def score(occlusion: str, method: str, completed: np.ndarray, originals: np.ndarray,
          masks: np.ndarray) -> MethodScores:  # fmt: skip
    psnr_missing = np.minimum(metrics.psnr(completed, originals, masks), metrics.PSNR_CAP)  # (N,)
    mae_missing = metrics.mae(completed, originals, masks)  # (N,)
    return MethodScores(
        occlusion=occlusion,
        method=method,
        missing_fraction=float(masks.mean()),
        psnr_missing=metrics.summarise(psnr_missing),
        psnr_whole=metrics.summarise(metrics.psnr(completed, originals)),
        ssim_missing=metrics.summarise(metrics.ssim(completed, originals, masks)),
        ssim_whole=metrics.summarise(metrics.ssim(completed, originals)),
        mae_missing=metrics.summarise(mae_missing),
        psnr_missing_values=tuple(float(v) for v in psnr_missing),
        mae_missing_values=tuple(float(v) for v in mae_missing),
    )


@dataclass
class CompletionResult:
    scores: list[MethodScores]
    examples: dict[str, dict[str, np.ndarray]]  # occlusion -> {"original", "occluded", method: (k, C, H, W)}


def evaluate_completion(
    images: np.ndarray,
    occlusions: list[str],
    runners: dict[tuple[str, ...], Runner],
    methods: list[str],
    seed: int,
    batch: int = 250,
    examples: int = 8,
    progress: bool = True,
) -> CompletionResult:
    """Every method in `methods` on every occlusion of `images` (N, C, H, W), image i with seed `seed + i`
    (its mask and, for the model, its latent and noise). Rows are listed in `methods` order."""
    seeds = [seed + i for i in range(len(images))]
    scores, shown = [], {}
    todo = {names: run for names, run in runners.items() if set(names) & set(methods)}
    bar = tqdm(total=len(occlusions) * len(todo), desc="completion", disable=not progress)
    for occlusion in occlusions:
        masks = occlusion_masks(occlusion, images.shape[1:], seeds)  # (N, C, H, W), 1 = missing
        shown[occlusion] = {
            "original": images[:examples],
            "occluded": occluded(images[:examples], masks[:examples]),
        }
        completed = {}
        for names, runner in todo.items():
            bar.set_postfix_str(f"{occlusion} {'+'.join(names)}")
            completed.update(run_batched(runner, images, masks, seeds, batch))
            bar.update()
        for name in methods:
            scores.append(score(occlusion, name, completed[name], images, masks))
            shown[occlusion][name] = completed[name][:examples]
    bar.close()
    return CompletionResult(scores, shown)
