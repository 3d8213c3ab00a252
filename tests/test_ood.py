"""The out-of-distribution score: trainer/ood.py's calibration, its graph in the bundle (typicality.onnx),
the Energy RPC's `ood` field and ModelInfo.ood on a real server, bundles without it, and evaluation/ood.py's
separation metrics. Calibration images are scikit-learn's digits (built in), the nets the tests' tiny ones."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from support import COMPLETION, LANGEVIN, local_server

from contract.bundle import read_bundle
from contract.codec import from_uint8
from evaluation.ood import out_sets, separation
from serving.engine import Engine
from trainer.data import load_images
from trainer.ood import QUANTILE, calibrate


@pytest.fixture(scope="module")
def digits() -> np.ndarray:
    return from_uint8(load_images("digits", size=28, channels=1))  # (1797, 1, 28, 28) in [-1, 1]


@pytest.fixture(scope="module")
def ood_bundle(tiny_nets, digits, tmp_path_factory):
    from trainer.export import export_bundle

    descriptor, generator = tiny_nets
    out = tmp_path_factory.mktemp("ood") / "bundle"
    calibration = torch.from_numpy(digits[:1000])
    return export_bundle(
        descriptor, generator, out, langevin=LANGEVIN, completion=COMPLETION, calibration=calibration
    )


def test_calibration_puts_the_threshold_at_the_quantile(tiny_nets, digits):
    module, section = calibrate(tiny_nets[0], torch.from_numpy(digits[:1000]))
    with torch.no_grad():
        ood = module(torch.from_numpy(digits[1:1000:2])).numpy()  # the half the quantile is taken on
    assert np.mean(ood <= 1.0) == pytest.approx(QUANTILE, abs=0.003)
    assert section["calibration_images"] == 1000 and section["features"] == 128


def test_bundle_graph_scores_held_out_like_calibration_and_flags_noise(ood_bundle, digits):
    engine = Engine.open(ood_bundle, device="cpu", threads=1)
    assert engine.has_ood and read_bundle(ood_bundle).ood["calibration_quantile"] == QUANTILE
    held_out = engine.ood(digits[1000:1500])  # (500,) images the calibration never saw
    noise = engine.ood(np.random.default_rng(0).uniform(-1, 1, (200, 1, 28, 28)).astype(np.float32))
    assert 0.85 < np.mean(held_out <= 1.0) <= 1.0  # about the calibration's 95%
    assert np.all(noise > 1.0)  # uniform noise is far from any image's feature statistics


def test_energy_rpc_returns_ood_and_model_info_describes_it(ood_bundle, digits, tmp_path):
    server = local_server(ood_bundle, tmp_path, max_count=32)
    try:
        with server.client(timeout=60) as c:
            images = np.concatenate([digits[1500:1504], np.zeros((2, 1, 28, 28), np.float32)])
            out = c.energies(images)
            info = c.info()
        engine = Engine.open(ood_bundle, device="cpu", threads=1)
        np.testing.assert_allclose(out.ood, engine.ood(images), rtol=1e-5)
        np.testing.assert_allclose(out.energy, engine.energy(images)[0], rtol=1e-6)
        assert info.HasField("ood") and info.ood.threshold == 1.0
        assert info.ood.false_alarm_rate == pytest.approx(1 - QUANTILE)
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
