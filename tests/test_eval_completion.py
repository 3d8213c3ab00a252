"""The completion benchmark's model methods are the served ones: `coop` equals Engine.complete and
`latent-only` equals Engine.complete with refine_steps = 0, bit for bit, on the tiny bundle of conftest.py;
`langevin-only` starts from each image's own uniform-noise fill."""

from __future__ import annotations

import dataclasses

import numpy as np

from contract.occlusions import occlusion_masks
from evaluation.completion import baseline_runners, evaluate_completion, model_runners
from serving.engine import Engine


def test_model_methods_match_engine_complete(serving_bundle):
    engine = Engine.open(serving_bundle, device="cpu", threads=1)
    images = np.random.default_rng(0).uniform(-1, 1, (3, 1, 28, 28)).astype(np.float32)
    masks = occlusion_masks("center:12", (1, 28, 28), [5, 6, 7])
    seeds = [5, 6, 7]
    runner = model_runners(engine, langevin_only_steps=2)[("coop", "latent-only")]
    out = runner(images, masks, seeds)
    np.testing.assert_array_equal(out["coop"], engine.complete(images, masks, seeds).images)
    no_refinement = dataclasses.replace(engine.completion_defaults, refine_steps=0)
    np.testing.assert_array_equal(
        out["latent-only"], engine.complete(images, masks, seeds, no_refinement).images
    )
    assert not np.array_equal(out["latent-only"], out["coop"])  # the refinement moved the hole

    hole = masks > 0.5
    fill = np.stack([np.random.default_rng(s).uniform(-1, 1, (1, 28, 28)).astype(np.float32) for s in seeds])
    start = model_runners(engine, 0)[("langevin-only",)](images, masks, seeds)["langevin-only"]
    np.testing.assert_array_equal(start, np.where(hole, fill, images))  # 0 steps: the noise fill itself
    moved = model_runners(engine, 2)[("langevin-only",)](images, masks, seeds)["langevin-only"]
    np.testing.assert_array_equal(moved[~hole], images[~hole])  # observed pixels clamped
    assert not np.array_equal(moved[hole], fill[hole])


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
    shown = result.examples["left-half"]["occluded"]  # the holes black (-1), as the service shows them
    assert (shown[..., :14] == -1).all() and np.array_equal(shown[..., 14:], images[:2, ..., 14:])
