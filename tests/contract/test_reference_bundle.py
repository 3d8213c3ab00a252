"""The reference bundle shipped in models/: verified against its pin, served, scoring and completing held-out
images on a fresh clone before any training (models/README.md says how it was made)."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from coopnets.clients.cli import complete_main
from coopnets.contract import bundle
from coopnets.contract.bundle import REFERENCE, SHIPPED, BundleError, read_bundle
from coopnets.evaluation.data import load_split
from PIL import Image as PILImage
from support import start_server


@pytest.fixture(scope="module")
def heldout() -> np.ndarray:
    """Eight t10k images (N, 1, 28, 28) in [-1, 1]: data the reference model never saw."""
    return load_split("t10k", (1, 28, 28)).images[:8]


def test_the_shipped_bundle_verifies_by_name_and_by_path():
    b = read_bundle(REFERENCE)
    assert b.path == SHIPPED / REFERENCE
    assert (SHIPPED / f"{REFERENCE}.sha256").read_text().split() == [b.digest, "reference/manifest.json"]
    assert read_bundle(SHIPPED / REFERENCE).digest == b.digest
    assert b.weights_storage == "int8" and b.image_shape == (1, 28, 28) and "typicality" in b.graph_files
    assert b.manifest["training"]["dataset"] == "fashion-mnist"
    size = sum(p.stat().st_size for p in (SHIPPED / REFERENCE).iterdir())
    assert size < 6_000_000, size  # a few MB, so that it can live in git


def test_a_changed_or_unpinned_shipped_bundle_is_refused(tmp_path, monkeypatch):
    shutil.copytree(SHIPPED, tmp_path / "models")
    monkeypatch.setattr(bundle, "SHIPPED", tmp_path / "models")
    assert read_bundle(REFERENCE).digest == read_bundle(SHIPPED / REFERENCE).digest  # the copy, as shipped
    manifest_path = tmp_path / "models" / REFERENCE / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["completion"]["restarts"] = 2  # still a valid bundle, but not the pinned one
    manifest_path.write_text(json.dumps(manifest))
    for name in (REFERENCE, tmp_path / "models" / REFERENCE):
        with pytest.raises(BundleError, match="pinned in .*reference.sha256"):
            read_bundle(name)
    shutil.copytree(tmp_path / "models" / REFERENCE, tmp_path / "elsewhere")
    assert read_bundle(tmp_path / "elsewhere").completion.restarts == 2  # anywhere else: just a bundle
    (tmp_path / "models" / "reference.sha256").unlink()
    with pytest.raises(BundleError, match="reference.sha256 is missing"):
        read_bundle(REFERENCE)
    shutil.rmtree(tmp_path / "models")
    with pytest.raises(BundleError, match="the shipped bundle is not installed"):
        read_bundle(REFERENCE)


def test_coop_serve_serves_the_reference_bundle_by_name(tmp_path, heldout):
    server = start_server(REFERENCE, tmp_path / "server", "--warmup-runs", "0")
    try:
        with server.client(timeout=120) as c:
            info = c.info()
            assert info.bundle_sha256 == read_bundle(REFERENCE).digest
            images = c.synthesize(count=4, seed=0).images  # (4, 1, 28, 28), the bundle's 15 steps
            assert images.shape == (4, 1, 28, 28) and np.isfinite(images).all()
            assert images.std(axis=(1, 2, 3)).min() > 0.1  # pictures, not flat fields
            noise = np.random.default_rng(0).uniform(-1, 1, (8, 1, 28, 28)).astype(np.float32)
            scores = c.energies(np.concatenate([heldout, noise]))
            assert scores.ood is not None
            assert (scores.ood[8:] > 1).all()  # uniform noise is flagged
            assert (
                scores.ood[:8] < 1
            ).mean() >= 0.75  # held-out Fashion-MNIST mostly is not (95% calibrated)
    finally:
        server.stop()


def test_coop_complete_recovers_heldout_images_with_the_reference_bundle(tmp_path, heldout):
    """Centre 12x12 holes in held-out images: the shipped model's fill is closer to the truth than the mean
    training image (coop-eval's `mean` baseline), on every image and by a clear margin on average."""
    mean_image = load_split("train", (1, 28, 28)).images.mean(axis=0)[0]  # (28, 28)
    paths = []
    for i, im in enumerate(heldout[:4]):
        paths.append(tmp_path / f"t10k_{i}.png")
        PILImage.fromarray(np.rint((im[0] + 1) * 127.5).astype(np.uint8)).save(paths[-1])
    out = tmp_path / "out"
    argv = [
        *map(str, paths),
        "--occlude",
        "center:12",
        "--bundle",
        REFERENCE,
        "--device",
        "cpu",
        "--out",
        str(out),
    ]
    assert complete_main(argv) == 0
    hole = np.zeros((28, 28), bool)
    hole[8:20, 8:20] = True
    errors = []  # (coop, mean image): mean absolute error on the hole, per image
    for i, im in enumerate(heldout[:4]):
        rec = np.asarray(PILImage.open(out / f"t10k_{i}_recovered.png"), np.float32) / 127.5 - 1
        truth = im[0]
        assert np.abs(rec[~hole] - truth[~hole]).max() < 0.01  # observed pixels kept
        errors.append((np.abs(rec[hole] - truth[hole]).mean(), np.abs(mean_image[hole] - truth[hole]).mean()))
    coop, baseline = np.array(errors).T
    assert (coop < baseline).all() and coop.mean() < 0.75 * baseline.mean(), errors


def test_residual_fill_recovers_random_holes_better_with_the_trained_model(heldout):
    """Random 50% masks on held-out images, the shipped model: filling the hole with g(X) plus the observed
    pixels' interpolated residual (contract.sampling.residual_fill) beats g(X) alone on average, after the
    same refinement (experiments/residual_fill.py measures it at N = 100: docs/results.md)."""
    import dataclasses

    from coopnets.contract.occlusions import occlusion_masks
    from coopnets.serving.engine import Engine

    engine = Engine.open(REFERENCE, device="cpu", threads=1)
    seeds = list(range(len(heldout)))
    masks = occlusion_masks("random:0.5", engine.image_shape, seeds)
    observed = np.where(masks > 0.5, 0.0, heldout).astype(np.float32)
    base = dataclasses.replace(engine.completion_defaults, latent_steps=50, restarts=2)
    err = {}
    for residual in (False, True):
        out = engine.complete(observed, masks, seeds, dataclasses.replace(base, residual_fill=residual))
        err[residual] = np.abs(np.clip(out.images, -1, 1) - heldout)[masks > 0.5].mean()
    assert err[True] < 0.9 * err[False], err


def test_onnx_runtime_folds_the_int8_decoding_at_session_start(tmp_path):
    """trainer/pack.py's promise: the Cast/Mul nodes that decode int8 weights read only initializers, so
    ONNX Runtime's constant folding turns them into float32 constants when it opens the session; the graph it
    runs has none of them left (the arithmetic and the op count of the float32 graph)."""
    import onnx
    import onnxruntime as ort

    for graph in ("generator", "langevin_step", "generator_grad"):
        path = SHIPPED / REFERENCE / f"{graph}.onnx"
        stored = onnx.load(str(path), load_external_data=False)
        decoders = [n for n in stored.graph.node if any(i.endswith("::int8") for i in n.input)]
        assert decoders, graph  # the shipped graph does store int8 weights
        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
        so.optimized_model_filepath = str(tmp_path / f"{graph}.onnx")
        ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
        optimized = onnx.load(str(tmp_path / f"{graph}.onnx"), load_external_data=False)
        stored_as = ("::int8", "::scale", "::float16")  # trainer/pack.py's names of the stored forms
        left = [n.op_type for n in optimized.graph.node if any(i.endswith(stored_as) for i in n.input)]
        assert left == [], (graph, left)


def test_the_shipped_color_bundle_verifies_synthesizes_and_completes_in_color():
    """models/cifar10 (CIFAR-10, 32×32 RGB, int8): pinned like the reference; the engine synthesizes
    three-channel images whose channels differ (color, not grey repeated), the same seed twice gives the same
    image, and completion returns the observed pixels of every channel bit-identical."""
    import dataclasses

    from coopnets.contract.occlusions import occlusion_masks
    from coopnets.serving.engine import Engine

    b = read_bundle("cifar10")
    assert (SHIPPED / "cifar10.sha256").read_text().split() == [b.digest, "cifar10/manifest.json"]
    assert b.weights_storage == "int8" and b.image_shape == (3, 32, 32) and "typicality" in b.graph_files
    assert sum(p.stat().st_size for p in (SHIPPED / "cifar10").iterdir()) < 6_000_000  # lives in git
    engine = Engine.open("cifar10", device="cpu", threads=1)
    first, again = engine.synthesize((3, 4)), engine.synthesize((3, 4))
    assert first.images.shape == (2, 3, 32, 32) and np.array_equal(first.images, again.images)
    assert np.abs(first.images[:, 0] - first.images[:, 1]).mean() > 0.01  # the channels are not one grey
    images = np.clip(first.images, -1, 1).astype(np.float32)
    masks = occlusion_masks("m40", engine.image_shape, [0, 1])
    fast = dataclasses.replace(engine.completion_defaults, latent_steps=5, restarts=1, refine_steps=2)
    out = engine.complete(images, masks, [0, 1], fast)
    assert np.array_equal(out.images[masks < 0.5], images[masks < 0.5])
