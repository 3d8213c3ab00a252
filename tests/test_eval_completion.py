"""The completion benchmark's model methods are the served ones: `coop` equals Engine.complete and
`latent-only` equals Engine.complete with refine_steps = 0, bit for bit, on the tiny bundle of conftest.py."""

from __future__ import annotations

import numpy as np

from evaluation.completion import baseline_runners, evaluate_completion, model_runners
from evaluation.occlusions import occlusion_masks
from serving.engine import Engine


def test_model_methods_match_engine_complete(serving_bundle):
    engine = Engine.open(serving_bundle, device="cpu", threads=1)
    images = np.random.default_rng(0).uniform(-1, 1, (3, 1, 28, 28)).astype(np.float32)
    masks = occlusion_masks("center:12", (1, 28, 28), [5, 6, 7])
    seeds = [5, 6, 7]
    runner = model_runners(engine, langevin_only_steps=2)[("coop", "latent-only")]
    out = runner(images, masks, seeds)
    np.testing.assert_array_equal(out["coop"], engine.complete(images, masks, seeds).images)
    latent_only = engine.complete(images, masks, seeds, refine_steps=0).images
    np.testing.assert_array_equal(out["latent-only"], latent_only)
    noise_start = model_runners(engine, 2)[("langevin-only",)](images, masks, seeds)["langevin-only"]
    np.testing.assert_array_equal(noise_start[masks < 0.5], images[masks < 0.5])  # observed pixels clamped


def test_evaluate_completion_rows_and_examples(serving_bundle):
    engine = Engine.open(serving_bundle, device="cpu", threads=1)
    images = np.random.default_rng(1).uniform(-1, 1, (5, 1, 28, 28)).astype(np.float32)
    runners = {**model_runners(engine, 2), **baseline_runners(images.mean(0))}
    result = evaluate_completion(images, ["left-half"], runners, ["ns", "coop"], seed=0, batch=2, examples=2,
                                 progress=False)  # fmt: skip
    assert [(s.occlusion, s.method) for s in result.scores] == [("left-half", "ns"), ("left-half", "coop")]
    assert result.scores[0].missing_fraction == 0.5 and result.scores[0].psnr_missing.n == 5
    assert list(result.examples["left-half"]) == ["original", "occluded", "ns", "coop"]
    assert result.examples["left-half"]["coop"].shape == (2, 1, 28, 28)
