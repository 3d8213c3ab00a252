"""The torch backend (trainer.reference.TorchBackend: the nets with autograd) under the one sampler of
contract.sampling, and against the service's engine (serving.engine.Engine: the same sampler over ONNX Runtime
on the exported graphs, whose gradients are the explicit ones of trainer.grads).

The per-image draw order is checked by hand on the torch side; the engine must then give the same images,
energies and scores within the float32 rounding bound of tests/float32_bound.py (computed on these nets and
inputs), for synthesis and for completion with every switch (restarts 1 and
> 1, latent noise and descriptor noise on and off, masks of different shapes per image). f(Y) is compared on
its own scale: E(Y) ≈ 8e5 here while |f| ≈ 0.8, so a tolerance on E alone would not see f change sign.
"""

from __future__ import annotations

import float32_bound
import numpy as np
import pytest
import torch
from coopnets.contract import sampling
from coopnets.contract.sampling import CompletionParams, Samples, SynthesisParams
from coopnets.serving.engine import Engine
from coopnets.trainer.export import export_bundle
from coopnets.trainer.langevin import descriptor_score_and_grad
from coopnets.trainer.nets import NetSpec
from coopnets.trainer.reference import TorchBackend
from support import PerImageBackend, perturbed_nets

SPEC = NetSpec("mnist28", 1, 100)
S, DELTA, SIGMA = 0.016, 0.002, 0.3
LANGEVIN = {"s": S, "delta": DELTA, "steps": 3, "sigma": SIGMA, "noise": True}


def completion(restarts: int = 1, latent_noise: bool = True, noise: bool = True, refine_steps: int = 3):
    return CompletionParams(
        latent_steps=4,
        latent_step_size=0.05,
        latent_noise=latent_noise,
        refine_steps=refine_steps,
        delta=DELTA,
        noise=noise,
        restarts=restarts,
    )


@pytest.fixture(scope="module")
def nets():
    return perturbed_nets(SPEC, seed=1)


@pytest.fixture(scope="module")
def torch_backend(nets):
    return TorchBackend(*nets, s=S, sigma=SIGMA)


@pytest.fixture(scope="module")
def engine(nets, tmp_path_factory):
    bundle = export_bundle(*nets, tmp_path_factory.mktemp("ref") / "bundle", langevin=LANGEVIN)
    return Engine.open(bundle, device="cpu", threads=1)


@pytest.fixture(scope="module")
def images(torch_backend):
    """Three drafts g(X) to complete: (3, C, H, W)."""
    return sampling.synthesize(torch_backend, [1, 2, 3], SynthesisParams(0, DELTA, False)).images


def center_masks(n: int) -> np.ndarray:
    mask = np.zeros((n, *SPEC.image_shape), np.float32)  # (N, C, H, W) 0 = observed
    mask[:, :, 7:21, 7:21] = 1  # 1 = missing
    return mask


def mixed_masks() -> np.ndarray:
    """A different hole per image: centre square, left half, random pixels. (3, C, H, W)"""
    mask = np.zeros((3, *SPEC.image_shape), np.float32)
    mask[0, :, 7:21, 7:21] = 1
    mask[1, :, :, :14] = 1
    mask[2] = np.random.default_rng(0).random(SPEC.image_shape) < 0.5
    return mask


def test_synthesis_draws_z_then_noise_from_each_images_rng(nets, torch_backend):
    """Zero steps give g(z) with z = default_rng(seed).standard_normal(d, float32); one step is the
    contract's update from it with the noise drawn next; energies are ‖Y‖²/(2s²) − f(Y)."""
    descriptor, generator = nets
    draft = sampling.synthesize(torch_backend, [5, 6], SynthesisParams(0, DELTA, noise=False))
    rngs = [np.random.default_rng(s) for s in (5, 6)]
    z = np.stack([r.standard_normal(SPEC.latent_dim, dtype=np.float32) for r in rngs])
    with torch.no_grad():
        assert np.array_equal(draft.images, generator(torch.from_numpy(z)).numpy())
        f = descriptor(torch.from_numpy(draft.images)).numpy()
    np.testing.assert_allclose(draft.score, f, rtol=1e-6)
    np.testing.assert_allclose(draft.energy, (draft.images**2).sum((1, 2, 3)) / (2 * S**2) - f, rtol=1e-6)

    one = sampling.synthesize(torch_backend, [5, 6], SynthesisParams(1, DELTA, noise=True)).images
    _, grad = descriptor_score_and_grad(descriptor, torch.from_numpy(draft.images))
    rng = np.random.default_rng(6)
    rng.standard_normal(SPEC.latent_dim, dtype=np.float32)  # z comes first
    noise = rng.standard_normal(SPEC.image_shape, dtype=np.float32)
    y = draft.images[1]
    want = y - DELTA**2 / 2 * (y / S**2 - grad[1].numpy()) + DELTA * noise
    np.testing.assert_allclose(one[1], want, atol=1e-6)


def test_synthesis_is_batch_independent(torch_backend):
    """Image i of a batch is the image its seed gives alone, bit for bit: the nets run image by image
    (PerImageBackend), so only the sampler's draws could make them differ."""
    backend = PerImageBackend(torch_backend)
    seeds, params = [11, 12, 13, 14, 15, 16, 17], SynthesisParams(3, DELTA, noise=True)
    batch = sampling.synthesize(backend, seeds, params)
    for i in (0, 3, 6):
        alone = sampling.synthesize(backend, [seeds[i]], params)
        assert np.array_equal(batch.images[i], alone.images[0])
        assert np.array_equal(batch.score[i], alone.score[0])
        assert np.array_equal(batch.energy[i], alone.energy[0])
    again = sampling.synthesize(backend, seeds, params)
    assert np.array_equal(batch.images, again.images)
    assert not np.allclose(batch.images[0], batch.images[1])  # different seeds, different images


@pytest.mark.parametrize("restarts", [1, 3])
def test_completion_keeps_observed_pixels_and_is_batch_independent(torch_backend, images, restarts):
    backend = PerImageBackend(torch_backend)  # the nets image by image: batch and alone compare exactly
    masks = center_masks(3)
    out = sampling.complete(backend, images, masks, [7, 8, 9], completion(restarts)).images
    observed = masks == 0
    assert np.array_equal(out[observed], images[observed])
    assert np.abs(out - images)[~observed].max() > 1e-3  # the hole was filled and refined
    # alone, with a (1, 1, H, W) mask that broadcasts over channels
    alone = sampling.complete(backend, images[1:2], masks[1:2, :1], [8], completion(restarts)).images
    assert np.array_equal(out[1], alone[0])
    with pytest.raises(ValueError, match="one seed per image"):
        sampling.complete(torch_backend, images, masks, [7], completion(restarts))


def test_completion_keeps_the_restart_with_the_lowest_latent_energy(torch_backend, images):
    """With R chains per image the hole is filled from the chain whose final X has the lowest U(X): seen on
    the last latent state of all N·R chains, with no refinement after the fill."""
    masks, r = center_masks(3), 4
    last = {}

    def keep_latent(progress: sampling.Progress) -> None:
        if progress.phase == "latent":
            last["x"] = progress.value()  # (N·R, d)

    steps = sampling.completion_steps(
        torch_backend, images, masks, [7, 8, 9], completion(r, latent_noise=True, refine_steps=0)
    )
    out = sampling.run(steps, on_progress=keep_latent).images
    x = last["x"]
    _, u = torch_backend.latent_grad(x, np.repeat(images, r, 0), np.repeat(masks, r, 0))  # (N·R,)
    best = u.reshape(3, r).argmin(1)  # (N,)
    assert (best != 0).any()  # some image keeps another chain than its first: the choice is seen
    fill = torch_backend.generate(x.reshape(3, r, -1)[np.arange(3), best])  # (N, C, H, W)
    assert np.array_equal(out, np.where(masks > 0.5, fill, images))


def assert_within_bound(got: Samples, want: Samples, bound: float32_bound.Bound) -> None:
    """The engine's results within the bound of the torch backend's, the bound fine enough to see a step."""
    float32_bound.assert_fine(bound, want.score, DELTA)
    float32_bound.assert_samples_within(got, want, bound)


@pytest.mark.parametrize("noise", [True, False])
def test_engine_synthesis_equals_the_torch_backend(torch_backend, engine, noise):
    seeds, params = [3, 4, 5], SynthesisParams(steps=5, delta=DELTA, noise=noise)
    want = sampling.synthesize(torch_backend, seeds, params)
    got = engine.synthesize(seeds, params)
    bound = float32_bound.synthesis(torch_backend.descriptor, torch_backend.generator, seeds, params, S)
    assert_within_bound(got, want, bound)
    drafts = float32_bound.synthesis(
        torch_backend.descriptor, torch_backend.generator, seeds, SynthesisParams(0, DELTA, noise), S
    )
    float32_bound.assert_within(
        engine.draft(seeds),
        sampling.drafts(torch_backend, sampling.rngs_for(seeds)),
        float32_bound.tolerance(drafts.images),
        "drafts",
    )


@pytest.mark.parametrize(
    "wrong",
    [SynthesisParams(4, DELTA, True), SynthesisParams(5, 1.2 * DELTA, True)],
    ids=["a-step-lost", "delta"],
)
def test_the_bound_sees_a_wrong_chain(torch_backend, engine, wrong):
    """The tolerance is fine enough to fail a chain one step short, or with δ off by 20%."""
    seeds, params = [3, 4, 5], SynthesisParams(steps=5, delta=DELTA, noise=True)
    want = sampling.synthesize(torch_backend, seeds, params)
    bound = float32_bound.synthesis(torch_backend.descriptor, torch_backend.generator, seeds, params, S)
    with pytest.raises(AssertionError, match=r"images: \|difference\|"):
        assert_within_bound(engine.synthesize(seeds, wrong), want, bound)


@pytest.mark.parametrize(
    ("restarts", "latent_noise", "noise"),
    [(1, True, True), (1, False, False), (3, True, True), (3, False, True)],
)
def test_engine_completion_equals_the_torch_backend(
    torch_backend, engine, images, restarts, latent_noise, noise
):
    masks, seeds = mixed_masks(), [7, 8, 9]
    params = completion(restarts, latent_noise=latent_noise, noise=noise)
    want = sampling.complete(torch_backend, images, masks, seeds, params)
    got = engine.complete(images, masks, seeds, params)
    nets = torch_backend.descriptor, torch_backend.generator
    assert_within_bound(got, want, float32_bound.completion(*nets, images, masks, seeds, params, S, SIGMA))
    assert np.array_equal(got.images[masks == 0], images[masks == 0])


def test_engine_energy_equals_the_torch_backend(torch_backend, engine, images):
    energy, score = engine.energy(images)
    want_energy, want_score = sampling.measure(torch_backend, images)
    bound = float32_bound.energy_of(torch_backend.descriptor, images, S)
    assert_within_bound(Samples(images, energy, score), Samples(images, want_energy, want_score), bound)
