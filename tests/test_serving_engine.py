"""The numpy engine over ONNX Runtime: equal to the torch reference, batch-independent, masks respected,
bundle verified at load."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from support import COMPLETION, LANGEVIN

from serving.bundle import BundleError, load_bundle, open_sessions
from serving.engine import Cancelled, Engine

SEEDS = [3, 4, 5]


@pytest.fixture(scope="module")
def engine(serving_bundle) -> Engine:
    return Engine.open(serving_bundle, device="cpu", threads=1)


def center_masks(n: int) -> np.ndarray:
    m = np.zeros((n, 1, 28, 28), dtype=np.float32)  # (N, C, H, W), 1 = missing
    m[:, :, 7:21, 7:21] = 1
    return m


def test_cpu_device_uses_only_the_cpu_provider(engine):
    assert engine.sessions.device == "cpu"
    assert set(engine.sessions.providers) == {"generator", "descriptor", "langevin_step", "generator_grad"}
    assert all(p == ["CPUExecutionProvider"] for p in engine.sessions.providers.values())


def test_synthesis_matches_the_torch_reference(engine, tiny_nets):
    from trainer.reference import reference_synthesize

    d, g = tiny_nets
    out = engine.synthesize(SEEDS, steps=5, noise=True)
    ref_images, ref_energy = reference_synthesize(d, g, SEEDS, 5, LANGEVIN["delta"], LANGEVIN["s"], True)
    assert out.images.shape == (3, 1, 28, 28) and out.images.dtype == np.float32
    assert out.images.std() > 0.01  # the nets are not trivial
    np.testing.assert_allclose(out.images, ref_images, rtol=0, atol=2e-5)
    np.testing.assert_allclose(out.energy, ref_energy, rtol=1e-4, atol=1e-3)


@pytest.mark.parametrize("restarts", [1, 3])
def test_completion_matches_the_torch_reference(engine, tiny_nets, restarts):
    from trainer.reference import reference_complete

    d, g = tiny_nets
    images = engine.synthesize([7, 8, 9], steps=0).images
    masks = center_masks(3)
    out = engine.complete(
        images,
        masks,
        SEEDS,
        latent_steps=4,
        latent_step_size=0.1,
        refine_steps=3,
        noise=True,
        latent_noise=True,
        restarts=restarts,
    )
    ref = reference_complete(
        d, g, images, masks, SEEDS, 4, 0.1, True, 3,
        LANGEVIN["delta"], LANGEVIN["s"], LANGEVIN["sigma"], True, restarts=restarts,
    )  # fmt: skip
    np.testing.assert_allclose(out.images, ref, rtol=0, atol=2e-5)
    assert np.array_equal(out.images[masks == 0], images[masks == 0])  # observed pixels bit-identical
    assert not np.allclose(out.images[masks == 1], images[masks == 1])  # the hole was filled


def test_batched_equals_unbatched_exactly(engine):
    batched = engine.synthesize(SEEDS)
    single = [engine.synthesize([s]) for s in SEEDS]
    assert np.array_equal(batched.images, np.concatenate([o.images for o in single]))
    assert np.array_equal(batched.energy, np.concatenate([o.energy for o in single]))
    images, masks = batched.images, center_masks(3)
    together = engine.complete(images, masks, SEEDS).images
    alone = np.concatenate(
        [engine.complete(images[i : i + 1], masks[i : i + 1], [s]).images for i, s in enumerate(SEEDS)]
    )
    assert np.array_equal(together, alone)


def test_defaults_come_from_the_manifest(engine):
    assert (
        engine.langevin.steps == LANGEVIN["steps"]
        and engine.completion.latent_steps == COMPLETION["latent_steps"]
    )
    assert np.array_equal(
        engine.synthesize([1]).images, engine.synthesize([1], steps=LANGEVIN["steps"]).images
    )


def test_zero_steps_is_the_generator_draft_and_energy_formula(engine):
    out = engine.synthesize([11, 12], steps=0)
    assert np.array_equal(out.images, engine.draft([11, 12]))
    energy, f = engine.energy_and_score(out.images)
    sq = (out.images.astype(np.float64) ** 2).reshape(2, -1).sum(1)
    np.testing.assert_allclose(energy, sq / (2 * LANGEVIN["s"] ** 2) - f, rtol=1e-6)


def test_snapshots_and_should_stop(engine):
    seen = []
    engine.synthesize([1, 2], steps=6, snapshot_every=2, on_snapshot=lambda t, y: seen.append((t, y.shape)))
    assert seen == [(2, (2, 1, 28, 28)), (4, (2, 1, 28, 28))]
    calls = []

    def stop() -> bool:
        calls.append(1)
        return len(calls) > 3

    with pytest.raises(Cancelled) as err:
        engine.synthesize([1], steps=50, should_stop=stop)
    assert err.value.steps_done == 3


def test_bundle_is_verified_at_load(serving_bundle, tmp_path):
    bad = tmp_path / "bundle"
    shutil.copytree(serving_bundle, bad)
    with open(bad / "descriptor.onnx", "ab") as f:
        f.write(b"\0")
    with pytest.raises(BundleError, match="sha256"):
        load_bundle(bad)
    manifest = json.loads((serving_bundle / "manifest.json").read_text())
    (bad / "manifest.json").write_text(json.dumps({**manifest, "format_version": 99}))
    with pytest.raises(BundleError, match="version"):
        load_bundle(bad)
    with pytest.raises(BundleError, match="no manifest.json"):
        load_bundle(tmp_path)
    with pytest.raises(BundleError, match="--device"):
        open_sessions(load_bundle(serving_bundle), device="tpu")


def test_one_restart_is_the_single_chain_of_the_old_contract(engine):
    """restarts = 1 replays the one-chain contract bit for bit: z = rng.standard_normal(d), L latent steps
    (noise from the same rng), fill with g(z), K refinement steps."""
    images, masks = engine.synthesize([7, 8, 9], steps=0).images, center_masks(3)
    rngs = [np.random.default_rng(s) for s in SEEDS]
    z = np.stack([r.standard_normal(engine.latent_dim, dtype=np.float32) for r in rngs])  # (N, d)
    sigma, eta = np.array(LANGEVIN["sigma"], np.float32), 0.1
    for _ in range(3):
        (grad,) = engine.sessions["generator_grad"].run(
            ["grad_z"], {"z": z, "y": images, "mask": masks, "sigma": sigma}
        )
        z = (
            z
            - 0.5 * eta**2 * grad
            + eta * np.stack([r.standard_normal(engine.latent_dim, dtype=np.float32) for r in rngs])
        )
    filled = np.where(masks > 0.5, engine.generate(z), images).astype(np.float32)
    want = engine.refine(filled, masks, rngs, steps=2, noise=True)
    out = engine.complete(
        images, masks, SEEDS, latent_steps=3, latent_step_size=eta, refine_steps=2, noise=True,
        latent_noise=True, restarts=1,
    )  # fmt: skip
    assert np.array_equal(out.images, want)


def test_more_restarts_never_raise_the_chosen_latent_energy(engine):
    """Without latent noise, chain 0 of R restarts is the single chain (the same first draw), so the kept
    latent's U(z) is at most the single chain's; and it is the lowest of the R chains' U."""
    images, masks = engine.synthesize([7, 8, 9], steps=0).images, center_masks(3)
    sigma = np.array(LANGEVIN["sigma"], np.float32)

    def energy_of(z):  # (N,) U(z) from the bundle's generator_grad graph
        (u,) = engine.sessions["generator_grad"].run(
            ["u"], {"z": z, "y": images, "mask": masks, "sigma": sigma}
        )
        return u

    def infer(r):
        return engine.infer_latent(
            images, masks, [np.random.default_rng(s) for s in SEEDS], 5, 0.05, False, r
        )

    single, best = energy_of(infer(1)), energy_of(infer(4))
    assert np.all(best <= single + 1e-4 * np.abs(single))
    assert np.any(best < single - 1e-3 * np.abs(single))  # some image found a better basin
    with pytest.raises(ValueError, match="restarts"):
        infer(0)


def test_restarts_default_comes_from_the_manifest(serving_bundle, engine, tmp_path):
    manifest = json.loads((serving_bundle / "manifest.json").read_text())
    assert engine.completion.restarts == manifest["completion"]["restarts"]
    bad = tmp_path / "bundle"
    shutil.copytree(serving_bundle, bad)
    (bad / "manifest.json").write_text(json.dumps({**manifest, "completion": {"restarts": 0}}))
    with pytest.raises(BundleError, match="restarts"):
        load_bundle(bad)
    old = {k: v for k, v in manifest["completion"].items() if k != "restarts"}  # a bundle from before R
    (bad / "manifest.json").write_text(json.dumps({**manifest, "completion": old}))
    assert load_bundle(bad).completion.restarts == 1
