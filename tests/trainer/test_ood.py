"""The out-of-distribution score: trainer/ood.py's calibration and its three tests (two-sided typicality, the
negative test, -f), its graph in the bundle (typicality.onnx),
the Energy RPC's `ood` field and ModelInfo.ood on a real server, bundles without it, and evaluation/ood.py's
separation metrics. Calibration images are scikit-learn's digits (built in), the nets the tests' tiny ones.
For color models: the out sets (noise, constant colors, inverted, blends, Fashion-MNIST in RGB or a logged
reason for its absence, scikit-image's textures, none from the network) and the table on a tiny color
bundle."""

from __future__ import annotations

import float32_bound
import numpy as np
import pytest
import torch
from coopnets.contract.bundle import read_bundle
from coopnets.contract.codec import from_uint8
from coopnets.evaluation.ood import out_sets, separation
from coopnets.serving.engine import Engine
from coopnets.trainer.data import load_images
from coopnets.trainer.ood import QUANTILE, TESTS, calibrate
from support import COMPLETION, LANGEVIN, local_server


@pytest.fixture(scope="module")
def digits() -> np.ndarray:
    return from_uint8(load_images("digits", size=28, channels=1))  # (1797, 1, 28, 28) in [-1, 1]


@pytest.fixture(scope="module")
def ood_bundle(tiny_nets, digits, tmp_path_factory):
    from coopnets.trainer.export import export_bundle

    descriptor, generator = tiny_nets
    out = tmp_path_factory.mktemp("ood") / "bundle"
    calibration = torch.from_numpy(digits[:1000])
    return export_bundle(
        descriptor, generator, out, langevin=LANGEVIN, completion=COMPLETION, calibration=calibration
    )


def test_calibration_puts_the_threshold_at_the_quantile(tiny_nets, digits):
    module, section = calibrate(tiny_nets[0], torch.from_numpy(digits[:1000]))
    held = torch.from_numpy(digits[1:1000:2])  # the half the medians and quantiles are taken on
    with torch.no_grad():
        ood = module(held).numpy()
        z = ((module.tests(*module.parts(held)) - module.centre) / module.spread).numpy()  # (500, 3)
    # torch.quantile interpolates between neighbours: at most one image of 500 (0.002) either side
    assert np.mean(ood <= 1.0) == pytest.approx(QUANTILE, abs=0.003)
    for k in range(len(TESTS)):  # each test reads 0 at its median and 1 at its 95th percentile
        assert np.mean(z[:, k] <= 0.0) == pytest.approx(0.5, abs=0.003), TESTS[k]
        assert np.mean(z[:, k] <= 1.0) == pytest.approx(QUANTILE, abs=0.003), TESTS[k]
    assert section["calibration_images"] == 1000 and section["features"] == 128
    assert section["tests"] == list(TESTS)


@pytest.mark.parametrize("arch, channels", [("mnist28", 1), ("cifar32", 3)])
def test_the_graphs_f_is_the_descriptors_from_one_summed_output(arch, channels):
    from coopnets.trainer.nets import NetSpec, build_nets

    torch.manual_seed(2)
    descriptor = build_nets(NetSpec(arch, channels, 16))[0].eval()
    size = 28 if arch == "mnist28" else 32
    images = torch.rand(300, channels, size, size, generator=torch.Generator().manual_seed(0)) * 2 - 1
    module, _ = calibrate(descriptor, images[:200])
    with torch.no_grad():
        _, f = module.parts(images[200:])
        want = descriptor(images[200:])
    # the summed layer adds the same products in another order: float32 rounding, 2^-24 × √(4096..16384)
    # terms ≈ 8e-6 of the largest |f| at worst; measured 1e-6
    assert float((f - want).abs().max() / want.abs().max()) < 1e-5
    last = list(descriptor.body)[-1]
    assert module.head.weight.shape[0] == 1  # one output, not the last layer's 100
    kept = sum(p.numel() for p in module.parameters())
    assert kept == sum(p.numel() for p in descriptor.parameters()) - last.weight[1:].numel() - 99


def test_negative_test_tells_digits_from_their_negatives(tiny_nets, digits):
    module, _ = calibrate(tiny_nets[0], torch.from_numpy(digits[:1000]))
    held = torch.from_numpy(digits[1000:1300])
    with torch.no_grad():
        t = module.tests(*module.parts(held))[:, 1]  # log d(Y) − log d(−Y)
        t_neg = module.tests(*module.parts(-held))[:, 1]
    # the same two distances, swapped: each side within the float32 rounding bound of the exact test
    tol = float32_bound.tolerance(float32_bound.typicality_tests(module, digits[1000:1300]).e[:, 1].numpy())
    float32_bound.assert_within(t_neg.numpy(), -t.numpy(), tol, "log d(-Y) - log d(Y)")
    assert (t < 0).all()  # every digit is more typical than its negative (white strokes on black) ...
    with torch.no_grad():
        assert (module(-held) > 1).all()  # ... and every negative is flagged


def test_typicality_is_two_sided(tiny_nets, digits):
    module, _ = calibrate(tiny_nets[0], torch.from_numpy(digits[:1000]))
    held = torch.from_numpy(digits[1:1000:2])
    with torch.no_grad():
        log_d, f = module.parts(held)
        z1 = (module.tests(log_d, f)[:, 0] - module.centre[0]) / module.spread[0]
    log_d = log_d[: len(f)]
    flagged = z1 > 1  # 5% of the calibration images, by the calibration
    # an image whose statistics sit too close to the training mean is as atypical as one too far from it:
    # both tails of log d are flagged (one-sided, only the upper tail was)
    assert (log_d[flagged] < module.log_median).any() and (log_d[flagged] > module.log_median).any()


def test_bundle_graph_scores_held_out_like_calibration_and_flags_noise(ood_bundle, tiny_nets, digits):
    engine = Engine.open(ood_bundle, device="cpu", threads=1)
    assert engine.has_ood and read_bundle(ood_bundle).ood["calibration_quantile"] == QUANTILE
    held_out = engine.ood(digits[1000:1500])  # (500,) images the calibration never saw
    noise = engine.ood(np.random.default_rng(0).uniform(-1, 1, (200, 1, 28, 28)).astype(np.float32))
    assert 0.85 < np.mean(held_out <= 1.0) <= 1.0  # about the calibration's 95%
    assert np.all(noise > 1.0)  # uniform noise is far from any image's feature statistics
    assert read_bundle(ood_bundle).ood["tests"] == list(TESTS)  # the manifest says which score it is
    # ONNX Runtime computes what the calibrated module does (export checks random noise; these are images
    # near the threshold), within the float32 rounding bound of tests/float32_bound.py on these images,
    # which is far below the threshold's 1 (so it decides as the module does)
    module, _ = calibrate(tiny_nets[0], torch.from_numpy(digits[:1000]))
    with torch.no_grad():
        want = module(torch.from_numpy(digits[1000:1500])).numpy()
    tol = float32_bound.tolerance(float32_bound.typicality(module, digits[1000:1500]))
    assert tol.max() < 0.01, tol.max()
    float32_bound.assert_within(held_out, want, tol, "ood")


def test_energy_rpc_returns_ood_and_model_info_describes_it(ood_bundle, tiny_nets, digits, tmp_path):
    server = local_server(ood_bundle, tmp_path, max_count=32)
    try:
        with server.client(timeout=60) as c:
            images = np.concatenate([digits[1500:1504], np.zeros((2, 1, 28, 28), np.float32)])
            out = c.energies(images)
            info = c.info()
        engine = Engine.open(ood_bundle, device="cpu", threads=1)
        # the server's sessions may split the sums over other threads than this one-thread engine: each
        # within the float32 rounding bound of the exact score (the bundle's module is this calibration's)
        module, _ = calibrate(tiny_nets[0], torch.from_numpy(digits[:1000]))
        tol = float32_bound.tolerance(float32_bound.typicality(module, images))
        float32_bound.assert_within(out.ood, engine.ood(images), tol, "ood")
        energy = float32_bound.tolerance(float32_bound.energy_of(tiny_nets[0], images, LANGEVIN["s"]).energy)
        float32_bound.assert_within(out.energy, engine.energy(images)[0], energy, "E")
        assert info.HasField("ood") and info.ood.threshold == 1.0
        # a float32 field: 1 − QUANTILE rounded once, relative error ≤ 2⁻²⁴
        assert info.ood.false_alarm_rate == pytest.approx(1 - QUANTILE, rel=2**-23)
        assert info.ood.calibration_images == 1000
        # the Open Inference Protocol's energy model carries the same score as an `ood` output
        import tritonclient.grpc as triton

        tc = triton.InferenceServerClient(url=server.address)
        try:
            meta = tc.get_model_metadata("coopnets-energy")
            assert [t.name for t in meta.outputs] == ["energy", "score", "ood"]
            request = triton.InferInput("images", list(images.shape), "FP32")
            request.set_data_from_numpy(images)
            got = tc.infer("coopnets-energy", [request], client_timeout=60)
            np.testing.assert_array_equal(got.as_numpy("ood"), out.ood)
        finally:
            tc.close()
    finally:
        assert server.stop(), server.log()


def test_bundle_without_the_graph_loads_and_answers_without_ood(serving_bundle, client):
    engine = Engine.open(serving_bundle, device="cpu", threads=1)
    assert not engine.has_ood and engine.ood(np.zeros((1, 1, 28, 28), np.float32)) is None
    assert read_bundle(serving_bundle).ood == {}
    out = client.energies(np.zeros((2, 1, 28, 28), np.float32))
    assert out.ood is None and len(out.energy) == 2
    assert not client.info().HasField("ood")


def test_separation_metrics():
    rng = np.random.default_rng(0)
    s_in = rng.normal(0, 1, 1000)
    apart = separation("s", "far", s_in, s_in + 100)
    assert apart.auroc == 1.0 and apart.aupr == 1.0 and apart.fpr95 == 0.0
    same = separation("s", "same", s_in, rng.normal(0, 1, 1000))
    assert 0.45 < same.auroc < 0.55 and 0.9 < same.fpr95 <= 1.0
    flipped = separation("s", "below", s_in, s_in - 100)  # higher = more out: an inverted score fails
    assert flipped.auroc == 0.0
    nan = separation("s", "nan", s_in, np.full(10, np.nan))  # a diverged score counts as out
    assert nan.auroc == 1.0


def test_out_sets_shapes_and_ranges(digits):
    held, spare = digits[:50], digits[50:100]
    sets = out_sets(held, spare, seed=0, extra={"mine": digits[100:120]})
    assert list(sets) == ["uniform", "gaussian", "constant", "inverted", "blurred", "digits", "mine"]
    for name, x in sets.items():
        assert x.dtype == np.float32 and x.shape[1:] == (1, 28, 28), name
        assert x.min() >= -1 and x.max() <= 1, name
    np.testing.assert_array_equal(sets["inverted"], -spare)
    c = sets["constant"].reshape(50, -1)
    assert np.all(c == c[:, :1])  # one grey level per image


# ---- color models ------------------------------------------------------------------------------------------

COLOR_SETS = ["uniform", "gaussian", "constant", "inverted", "blends", "fashion-mnist", "textures"]


def smooth_rgb(n: int, seed: int) -> np.ndarray:
    """n smooth color images (n, 3, 32, 32) with |Y| <= 0.25: 4×4 blocks of random colors, bilinearly
    upsampled."""
    from scipy.ndimage import zoom

    coarse = np.random.default_rng(seed).uniform(-0.25, 0.25, (n, 3, 4, 4))
    return np.clip(zoom(coarse, (1, 1, 8, 8), order=1), -0.25, 0.25).astype(np.float32)


@pytest.fixture()
def tiny_fashion_dir(tmp_path):
    """Fashion-MNIST-format idx files (train and t10k, 20 images each) of known pixels."""
    from support import write_idx

    pixels = np.random.default_rng(4).integers(0, 256, (20, 28, 28)).astype(np.uint8)
    for split in ("train", "t10k"):
        write_idx(tmp_path / f"{split}-images-idx3-ubyte.gz", pixels)
    return tmp_path, pixels


def test_color_out_sets(tiny_fashion_dir, monkeypatch):
    import socket

    from coopnets.trainer.data import fit_pixels

    def no_network(*args, **kwargs):
        raise AssertionError("an out set tried to reach the network")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    folder, pixels = tiny_fashion_dir
    held, spare = smooth_rgb(12, 0), smooth_rgb(12, 1)
    sets = out_sets(held, spare, seed=0, extra={"mine": smooth_rgb(5, 2)}, data_dir=str(folder))
    assert list(sets) == [*COLOR_SETS, "mine"]
    for name, x in sets.items():
        assert x.dtype == np.float32 and x.shape[1:] == (3, 32, 32), name
        assert x.min() >= -1 and x.max() <= 1, name
        assert len(x) == (5 if name == "mine" else 12), name
    np.testing.assert_array_equal(sets["inverted"], -spare)
    np.testing.assert_array_equal(sets["blends"], (spare + spare[[11, *range(11)]]) / 2)  # same float32 ops
    c = sets["constant"].reshape(12, 3, -1)
    assert np.all(c == c[..., :1])  # one color per image ...
    assert np.abs(c[:, 0, 0] - c[:, 1, 0]).max() > 0.1  # ... not a grey level
    # Fashion-MNIST's first t10k images, grey repeated to RGB and resized as coop-train fits a dataset
    np.testing.assert_array_equal(sets["fashion-mnist"], from_uint8(fit_pixels(pixels[:12, None], 32, 3)))
    tex = sets["textures"]
    assert (tex == tex[:, :1]).all()  # grey textures, the same on every channel
    assert tex.reshape(12, -1).std(1).min() > 0.02  # a texture patch, not a flat one
    assert len({t.tobytes() for t in tex}) == 12  # every patch its own
    np.testing.assert_array_equal(tex, out_sets(held, spare, 0, data_dir=str(folder))["textures"])  # seeded
    assert not np.array_equal(tex, out_sets(held, spare, 1, data_dir=str(folder))["textures"])


def test_color_fashion_set_is_left_out_with_a_reason_when_absent(tmp_path, caplog):
    with caplog.at_level("WARNING", logger="coopnets.evaluation.ood"):
        sets = out_sets(smooth_rgb(4, 0), smooth_rgb(4, 1), seed=0, data_dir=str(tmp_path))
    assert list(sets) == [s for s in COLOR_SETS if s != "fashion-mnist"]
    assert "fashion-mnist left out" in caplog.text and str(tmp_path) in caplog.text


def test_evaluate_ood_on_a_color_bundle(rgb_bundle, tiny_fashion_dir):
    from coopnets.evaluation.ood import evaluate_ood

    engine = Engine.open(rgb_bundle, device="cpu", threads=1)
    rows = evaluate_ood(engine, smooth_rgb(6, 0), smooth_rgb(6, 1), seed=0, batch=4, progress=False,
                        data_dir=str(tiny_fashion_dir[0]))  # fmt: skip
    assert [(r.score, r.out_set) for r in rows] == [
        (s, o) for o in COLOR_SETS for s in ("E(Y)", "-f(Y)", "latent U", "displacement")
    ]
    for r in rows:
        assert r.n_in == r.n_out == 6 and 0 <= r.auroc <= 1 and 0 <= r.aupr <= 1 and 0 <= r.fpr95 <= 1
    by = {(r.score, r.out_set): r for r in rows}
    # E(Y) = ‖Y‖²/(2s²) − f(Y) with s = 0.016 weighs ‖Y‖² by ~2000: uniform noise (mean Y² = 1/3 over 3072
    # values) against images with |Y| <= 0.25 differs by ~1e6, far beyond these nets' f
    assert by["E(Y)", "uniform"].auroc == 1.0 and by["E(Y)", "uniform"].fpr95 == 0.0
