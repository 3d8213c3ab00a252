"""The engine over ONNX Runtime: equal to the torch reference (the same sampler on autograd), f(Y) and E(Y)
equal to the descriptor's own f at the scale of f, batch-independent, masks respected, the bundle verified
at load.

E(Y) = ‖Y‖²/(2s²) − f(Y) is ≈ 1e5 for these nets while |f| ≈ 0.1-0.5, so a relative tolerance on E cannot see
f; f is compared itself, and E against the formula to f's bound plus E's rounding to float32, well below |f|.
Where the engine and the torch backend compute the same thing, or the engine the same thing in two batch
compositions, they are held to the float32 rounding bound of tests/float32_bound.py, computed on these nets
and inputs.
"""

from __future__ import annotations

import dataclasses
import json
import shutil

import float32_bound
import numpy as np
import pytest
from coopnets.contract import sampling
from coopnets.contract.bundle import DEFAULT_COMPLETION, BundleError, read_bundle
from coopnets.contract.sampling import CompletionParams, SynthesisParams
from coopnets.serving.sessions import open_sessions
from support import COMPLETION, LANGEVIN, PerImageBackend, completion_params

SEEDS = [3, 4, 5]
DELTA, S, SIGMA = LANGEVIN["delta"], LANGEVIN["s"], LANGEVIN["sigma"]


@pytest.fixture(scope="module")
def engine(serving_engine):
    return serving_engine


@pytest.fixture(scope="module")
def torch_backend(tiny_nets):
    from coopnets.trainer.reference import TorchBackend

    descriptor, generator = tiny_nets
    return TorchBackend(descriptor, generator, s=S, sigma=SIGMA)


def center_masks(n: int) -> np.ndarray:
    m = np.zeros((n, 1, 28, 28), dtype=np.float32)  # (N, C, H, W), 1 = missing
    m[:, :, 7:21, 7:21] = 1
    return m


def assert_energy_is_the_formula(images, energy, score, torch_backend) -> None:
    """f equal to the torch descriptor's f on the same images, E to ‖Y‖²/(2s²) − f at the scale of f."""
    f = torch_backend.score(images)
    assert np.abs(f).min() > 0.1  # far enough from 0 for a sign flip to show
    f_tolerance = float32_bound.tolerance(float32_bound.energy_of(torch_backend.descriptor, images, S).score)
    float32_bound.assert_within(score, f, f_tolerance, "f")
    sq = (images.astype(np.float64) ** 2).reshape(len(images), -1).sum(1)
    formula = sq / (2 * S**2) - f  # float64, f the torch side's: only the engine's E is cast to float32
    e_tolerance = float32_bound.energy_tolerance(f_tolerance, formula, casts=1)
    assert (e_tolerance < 2 * np.abs(f)).all()  # fine enough that a sign flip of f (2|f|) shows in E
    float32_bound.assert_within(energy, formula, e_tolerance, "E")


def test_cpu_device_uses_only_the_cpu_provider(engine):
    assert engine.sessions.device == "cpu"
    assert set(engine.sessions.providers) == {"generator", "descriptor", "langevin_step", "generator_grad"}
    assert all(p == ["CPUExecutionProvider"] for p in engine.sessions.providers.values())


def test_synthesis_matches_the_torch_reference(engine, torch_backend):
    params = SynthesisParams(steps=5, delta=DELTA, noise=True)
    out = engine.synthesize(SEEDS, params)
    ref = sampling.synthesize(torch_backend, SEEDS, params)
    assert out.images.shape == (3, 1, 28, 28) and out.images.dtype == np.float32
    assert out.images.std() > 0.01  # the nets are not trivial
    nets = torch_backend.descriptor, torch_backend.generator
    float32_bound.assert_samples_within(out, ref, float32_bound.synthesis(*nets, SEEDS, params, S))
    assert_energy_is_the_formula(out.images, out.energy, out.score, torch_backend)


@pytest.mark.parametrize("restarts", [1, 3])
def test_completion_matches_the_torch_reference(engine, torch_backend, restarts):
    """Latent chains, fill and refinement on the graphs against autograd. η = 0.02: these nets' generator
    (weights scaled by 8) carries the float32 error of X into the images strongly enough that at η = 0.05 the
    bound (~3e-3) exceeds δ/2 and a lost refinement step could hide; at 0.02 it is ~6e-4 (assert_fine)."""
    images = engine.draft([7, 8, 9])
    masks = center_masks(3)
    params = completion_params(
        latent_steps=4, latent_step_size=0.02, latent_noise=True, refine_steps=3, restarts=restarts
    )
    out = engine.complete(images, masks, SEEDS, params)
    ref = sampling.complete(torch_backend, images, masks, SEEDS, params)
    nets = torch_backend.descriptor, torch_backend.generator
    bound = float32_bound.completion(*nets, images, masks, SEEDS, params, S, SIGMA)
    float32_bound.assert_fine(bound, ref.score, DELTA)
    float32_bound.assert_samples_within(out, ref, bound)
    assert np.array_equal(out.images[masks == 0], images[masks == 0])  # observed pixels bit-identical
    # the hole was filled with g(X): before any refinement step (which alone moves it too) it left the draft
    filled = engine.complete(images, masks, SEEDS, dataclasses.replace(params, refine_steps=0)).images
    assert not np.array_equal(filled[masks == 1], images[masks == 1])
    assert_energy_is_the_formula(out.images, out.energy, out.score, torch_backend)


def test_energy_is_f_and_the_formula(engine, torch_backend):
    images = engine.synthesize([11, 12], SynthesisParams(steps=2, delta=DELTA, noise=True)).images
    energy, score = engine.energy(images)
    assert_energy_is_the_formula(images, energy, score, torch_backend)


def assert_f_and_e_within(got, want, images, torch_backend) -> None:
    """f and E of the same float32 `images` from two batch compositions of the descriptor graph: f(Y) is one
    conv stack summed, and ONNX Runtime may order (block) the sums differently at another batch size, so each
    f is within the float32 bound and E within f's plus its two casts to float32."""
    bound = float32_bound.energy_of(torch_backend.descriptor, images, S)
    f_tolerance = float32_bound.tolerance(bound.score)
    float32_bound.assert_within(got.score, want.score, f_tolerance, "f")
    float32_bound.assert_within(
        got.energy, want.energy, float32_bound.energy_tolerance(f_tolerance, want.energy, 2), "E"
    )


def test_batched_equals_unbatched(engine, torch_backend):
    batched = engine.synthesize(SEEDS)
    single = [engine.synthesize([s]) for s in SEEDS]
    assert np.array_equal(batched.images, np.concatenate([o.images for o in single]))
    joined = sampling.Samples(
        batched.images, *(np.concatenate([getattr(o, k) for o in single]) for k in ("energy", "score"))
    )
    assert_f_and_e_within(batched, joined, batched.images, torch_backend)
    images, masks = batched.images, center_masks(3)
    together = engine.complete(images, masks, SEEDS).images
    alone = np.concatenate(
        [engine.complete(images[i : i + 1], masks[i : i + 1], [s]).images for i, s in enumerate(SEEDS)]
    )
    assert np.array_equal(together, alone)


def test_a_large_batch_cut_into_parts_gives_every_image_the_same_answer(
    engine, serving_bundle, torch_backend
):
    """Two single-threaded parts at once (serving.sessions.ShardedSession) vs the whole batch on one session:
    every image's synthesis and completion are identical, f and E within the float32 bound."""
    from coopnets.serving.engine import Engine
    from coopnets.serving.sessions import MIN_PER_SHARD

    cut = Engine.open(serving_bundle, device="cpu", threads=2, shards=2)
    assert cut.sessions.shards == 2
    small = list(range(2 * MIN_PER_SHARD - 1))  # too few images for two parts: not cut
    assert np.array_equal(cut.synthesize(small).images, engine.synthesize(small).images)
    assert not any(s.parts_open for s in cut.sessions.sessions.values())

    seeds = list(range(20, 20 + 2 * MIN_PER_SHARD + 3))  # cut into parts of 5 and 6
    whole, parts = engine.synthesize(seeds), cut.synthesize(seeds)
    assert cut.sessions["langevin_step"].parts_open == 2 and cut.sessions["generator"].parts_open == 2
    assert np.array_equal(parts.images, whole.images)
    assert_f_and_e_within(parts, whole, whole.images, torch_backend)
    masks = center_masks(len(seeds))
    completed = cut.complete(whole.images, masks, seeds)
    assert cut.sessions["generator_grad"].parts_open == 2
    assert np.array_equal(completed.images, engine.complete(whole.images, masks, seeds).images)
    (cut_e, cut_f), (one_e, one_f) = cut.energy(whole.images), engine.energy(whole.images)
    assert_f_and_e_within(
        sampling.Samples(whole.images, cut_e, cut_f),
        sampling.Samples(whole.images, one_e, one_f),
        whole.images,
        torch_backend,
    )


def test_a_batch_is_cut_into_no_more_parts_than_it_fills(engine, serving_bundle):
    from coopnets.serving.engine import Engine
    from coopnets.serving.sessions import MIN_PER_SHARD

    cut = Engine.open(serving_bundle, device="cpu", threads=2, shards=4)
    seeds = list(range(3 * MIN_PER_SHARD - 1))  # room for two parts of at least MIN_PER_SHARD, not three
    assert np.array_equal(cut.synthesize(seeds).images, engine.synthesize(seeds).images)
    assert cut.sessions["langevin_step"].parts_open == 2


def test_one_thread_means_one_part(serving_bundle):
    from coopnets.serving.engine import Engine

    assert Engine.open(serving_bundle, device="cpu", threads=1).sessions.shards == 1
    assert Engine.open(serving_bundle, device="cpu", threads=2, shards=1).sessions.shards == 1


def test_defaults_come_from_the_manifest(engine, serving_bundle):
    manifest = json.loads((serving_bundle / "manifest.json").read_text())
    assert engine.synthesis_defaults == SynthesisParams(LANGEVIN["steps"], DELTA, LANGEVIN["noise"])
    assert engine.completion_defaults == CompletionParams(
        latent_steps=COMPLETION["latent_steps"],
        latent_step_size=COMPLETION["latent_step_size"],
        latent_noise=COMPLETION["latent_noise"],
        refine_steps=COMPLETION["refine_steps"],
        delta=DELTA,
        noise=LANGEVIN["noise"],
        restarts=manifest["completion"]["restarts"],
        residual_fill=manifest["completion"]["residual_fill"],
        average_restarts=manifest["completion"]["average_restarts"],
        residual_interpolant=manifest["completion"]["residual_interpolant"],
    )
    assert manifest["completion"]["residual_fill"] is True  # written by this version: on
    assert manifest["completion"]["average_restarts"] is True
    assert manifest["completion"]["residual_interpolant"] == "auto"
    assert np.array_equal(
        engine.synthesize([1]).images, engine.synthesize([1], engine.synthesis_defaults).images
    )


def test_zero_steps_is_the_generator_draft(engine):
    out = engine.synthesize([11, 12], SynthesisParams(steps=0, delta=DELTA, noise=True))
    assert np.array_equal(out.images, engine.draft([11, 12]))


def test_one_restart_is_the_single_chain_replayed_on_the_graphs(engine):
    """restarts = 1, replayed by hand on the four graphs: z = rng.standard_normal(d), L latent steps (noise
    from the same rng), fill the hole with g(z), K refinement steps through langevin_step.onnx."""
    images, masks = engine.draft([7, 8, 9]), center_masks(3)
    rngs = [np.random.default_rng(s) for s in SEEDS]
    run = {name: engine.sessions[name].run for name in engine.sessions.sessions}

    def draw(shape):
        return np.stack([r.standard_normal(shape, dtype=np.float32) for r in rngs])

    latent_step_size = 0.1  # η

    def f32(x):  # a float32 scalar input (shape [])
        return np.asarray(x, dtype=np.float32)

    z = draw(engine.latent_dim)  # (N, d)
    for _ in range(3):
        (grad,) = run["generator_grad"](["grad_z"], {"z": z, "y": images, "mask": masks, "sigma": f32(SIGMA)})
        z = z - 0.5 * latent_step_size**2 * grad + latent_step_size * draw(engine.latent_dim)
    (generated,) = run["generator"](["y"], {"z": z})
    y = np.where(masks > 0.5, generated, images).astype(np.float32)
    for _ in range(2):
        feed = {"y": y, "noise": draw((1, 28, 28)), "mask": masks, "delta": f32(DELTA), "s": f32(S)}
        (y,) = run["langevin_step"](["y_next"], feed)
    out = engine.complete(
        images,
        masks,
        SEEDS,
        completion_params(
            latent_steps=3, latent_step_size=latent_step_size, latent_noise=True, refine_steps=2
        ),
    )
    assert np.array_equal(out.images, y)


def test_more_restarts_never_raise_the_chosen_latent_energy(engine):
    """Without latent noise, chain 0 of R restarts is the single chain (the same first draw), so the kept
    latent's U(z) is at most the single chain's, and below it where another chain ends lower. The graphs run
    image by image (PerImageBackend): chain 0 then meets the very sums of the single chain, and a U the same
    graph gives on the same input of the same shape, so U compares exactly, with no rounding to allow for."""
    images, masks = engine.draft([7, 8, 9]), center_masks(3)
    backend = PerImageBackend(engine.backend)

    def energy_of(z):  # (N,) U(z) from the bundle's generator_grad graph
        return backend.latent_grad(z, images, masks)[1]

    def infer(r):
        params = completion_params(latent_steps=5, refine_steps=0, noise=False, restarts=r)
        rngs = sampling.rngs_for(SEEDS)
        return sampling.run(sampling.latent_steps(backend, images, masks, rngs, params))

    single, best = energy_of(infer(1)), energy_of(infer(4))
    assert np.all(best <= single)
    # some image found a better basin: lower by far more than a tie (0.1% of U, a visible gain)
    assert np.any(best < single - 1e-3 * np.abs(single))


def test_the_bundle_is_verified_at_load(serving_bundle, tmp_path):
    bad = tmp_path / "bundle"
    shutil.copytree(serving_bundle, bad)
    with open(bad / "descriptor.onnx", "ab") as f:
        f.write(b"\0")
    with pytest.raises(BundleError, match="sha256"):
        read_bundle(bad)
    manifest = json.loads((serving_bundle / "manifest.json").read_text())
    (bad / "manifest.json").write_text(json.dumps({**manifest, "format_version": 99}))
    with pytest.raises(BundleError, match="version"):
        read_bundle(bad)
    with pytest.raises(BundleError, match="no manifest.json"):
        read_bundle(tmp_path)
    with pytest.raises(BundleError, match="--device"):
        open_sessions(read_bundle(serving_bundle), device="tpu")


def test_restarts_default_comes_from_the_manifest(serving_bundle, tmp_path):
    manifest = json.loads((serving_bundle / "manifest.json").read_text())
    bad = tmp_path / "bundle"
    shutil.copytree(serving_bundle, bad)
    (bad / "manifest.json").write_text(json.dumps({**manifest, "completion": {"restarts": 0}}))
    with pytest.raises(BundleError, match="restarts"):
        read_bundle(bad)
    old = {k: v for k, v in manifest["completion"].items() if k != "restarts"}  # a bundle from before R
    (bad / "manifest.json").write_text(json.dumps({**manifest, "completion": old}))
    assert read_bundle(bad).completion.restarts == DEFAULT_COMPLETION.restarts
