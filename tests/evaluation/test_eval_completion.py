"""The completion benchmark's model methods are the served ones: `coop` equals Engine.complete and
`latent-only` equals Engine.complete with refine_steps = 0, bit for bit, on the tiny bundle of conftest.py;
`langevin-only` starts from each image's own uniform-noise fill. On a tiny color bundle: observed pixels come
back bit-identical through the engine, and every method gets PSNR and MAE on the paper's occlusions."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from coopnets.contract.occlusions import occlusion_masks
from coopnets.evaluation import metrics
from coopnets.evaluation.completion import (
    BASELINE_METHODS,
    METHODS,
    baseline_runners,
    evaluate_completion,
    model_runners,
)
from coopnets.evaluation.report import completion_margins, completion_tables
from coopnets.serving.engine import Engine
from float32_bound import U64


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


# A paired interval's ends against mean-of-differences ± half, in units of U64 = 2⁻⁵³ times S, the largest
# per-image value (4 images, values in [0, S]): each mean of 4 is within 3·U64·S, so the difference of the
# means within 8·U64·S and the mean of the differences within 4·U64·S; the half-width (≤ 1.2·S), if computed
# in another order, within ~12·U64·S on either side; the ± rounds once more (≤ 2.2·U64·S). In all ≲ 41·U64·S;
# 100·U64·S leaves margin.
PAIRED_ROUNDING = 100 * U64


@pytest.fixture(scope="module")
def rgb_engine(rgb_bundle):
    return Engine.open(rgb_bundle, device="cpu", threads=1)


@pytest.mark.parametrize("occlusion", ["m30", "m50", "blocks"])
def test_rgb_completion_keeps_observed_pixels_bit_identical(rgb_engine, occlusion):
    assert rgb_engine.image_shape == (3, 32, 32)
    images = np.random.default_rng(2).uniform(-1, 1, (3, 3, 32, 32)).astype(np.float32)
    seeds = [0, 1, 2]
    masks = occlusion_masks(occlusion, (3, 32, 32), seeds)
    hole = masks > 0.5
    out = rgb_engine.complete(images, masks, seeds).images
    assert out.shape == images.shape and out.dtype == np.float32
    np.testing.assert_array_equal(out[~hole], images[~hole])  # bit-identical, every channel
    # the hole was filled, not handed back: the fill comes from the observed pixels, and each hidden one is
    # uniform on [-1, 1] on its own, so a fill lands within 0.05 of it with probability ≤ 0.05, and within
    # 0.05 of all ≥ 2025 of them (m30: 15² px × 3 channels × 3 images) with probability ≤ 0.05²⁰²⁵; a hole
    # handed back is within 0 of every one
    assert not np.allclose(out[hole], images[hole], rtol=0, atol=0.05)
    assert np.isfinite(out).all()
    for names, runner in model_runners(rgb_engine, langevin_only_steps=2).items():
        for name, completed in runner(images, masks, seeds).items():
            np.testing.assert_array_equal(completed[~hole], images[~hole], err_msg=f"{names} {name}")


def test_rgb_evaluation_reports_mae_and_psnr_for_every_method(rgb_engine):
    images = np.random.default_rng(3).uniform(-1, 1, (4, 3, 32, 32)).astype(np.float32)
    runners = {**model_runners(rgb_engine, 2), **baseline_runners(images.mean(0))}
    occlusions = ["m30", "blocks"]
    result = evaluate_completion(images, occlusions, runners, list(METHODS), seed=0, batch=3, examples=2,
                                 progress=False)  # fmt: skip
    assert [(s.occlusion, s.method) for s in result.scores] == [(o, m) for o in occlusions for m in METHODS]
    for s in result.scores:
        assert s.psnr_missing.n == s.mae_missing.n == 4
        # images uniform in [-1, 1]: no fill is exact, and no error exceeds the whole range (1 on [0, 1])
        assert 0 < s.mae_missing.mean < 1 and np.isfinite(s.psnr_missing.mean), (s.occlusion, s.method)
    # m30 at 32 px, exactly: a float32 count of 0s and 1s (exact below 2²⁴) over 4·3·1024; the quotient
    # 225/1024 is a float, so the one rounding of the division leaves it as it is
    assert result.scores[0].missing_fraction == 15 * 15 / 32**2
    assert result.scores[len(METHODS)].missing_fraction == 0.5  # blocks: half of the 2×2 blocks
    assert result.examples["m30"]["coop"].shape == (2, 3, 32, 32)

    margins = completion_margins(result.scores)
    assert [m["occlusion"] for m in margins] == occlusions
    for m in margins:
        by = {s.method: s for s in result.scores if s.occlusion == m["occlusion"]}
        lowest = min(BASELINE_METHODS, key=lambda k: by[k].mae_missing.mean)
        assert m["baseline_by_mae"] == lowest
        assert m["mae_margin"] == by[lowest].mae_missing.mean - by["coop"].mae_missing.mean
        # the paired interval: mean ± 1.96 standard errors of the per-image differences, whose mean equals the
        # difference of the means up to float64 rounding: see PAIRED_ROUNDING
        coop, best = by["coop"], by[m["baseline"]]
        assert metrics.summarise(coop.psnr_missing_values) == coop.psnr_missing
        d = np.subtract(coop.psnr_missing_values, best.psnr_missing_values)  # (4,)
        half = 1.96 * d.std(ddof=1) / np.sqrt(len(d))
        tol = PAIRED_ROUNDING * metrics.PSNR_CAP  # PSNR in [0, 100] dB (capped): ≈ 1.1e-12
        assert m["margin_interval"] == pytest.approx([m["margin"] - half, m["margin"] + half], abs=tol)
        d_mae = np.subtract(by[lowest].mae_missing_values, coop.mae_missing_values)
        half = 1.96 * d_mae.std(ddof=1) / np.sqrt(len(d_mae))
        assert m["mae_margin_interval"] == pytest.approx(
            [m["mae_margin"] - half, m["mae_margin"] + half], abs=PAIRED_ROUNDING * 1.0
        )  # MAE in [0, 1]: ≈ 1.1e-14
        assert "psnr_missing_values" not in coop.to_dict()  # report.json keeps the summaries only
    text = completion_tables(result.scores)
    assert "MAE missing" in text and "MAE margin" in text and "| telea |" in text
    lo, hi = margins[0]["margin_interval"]
    assert f"{margins[0]['margin']:+.2f} [{lo:+.2f}, {hi:+.2f}]" in text
