"""The torch reference sampler: one rng per image, the contract's draw order, observed pixels kept, and the
contract replayed on the exported ONNX graphs giving the same images."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
import torch
from test_export import LANGEVIN, perturbed_nets

from trainer.export import export_bundle
from trainer.langevin import descriptor_score_and_grad
from trainer.nets import NetSpec
from trainer.reference import reference_complete, reference_synthesize

SPEC = NetSpec("mnist28", 1, 100)
S, DELTA, SIGMA = LANGEVIN["s"], LANGEVIN["delta"], LANGEVIN["sigma"]
# Batched torch convolutions are not bit-stable across batch sizes on CPU (measured: up to 9.3e-10 at batch 3
# vs batch 1 after 5 steps); a wrong draw order or a shared rng would differ by O(1).
BATCH_ATOL = 1e-6


@pytest.fixture(scope="module")
def nets():
    return perturbed_nets(SPEC, seed=1)


def center_masks(n: int) -> np.ndarray:
    mask = np.zeros((n, *SPEC.image_shape), np.float32)  # (N, C, H, W) 0 = observed
    mask[:, :, 7:21, 7:21] = 1  # 1 = missing
    return mask


def test_synthesis_draws_z_then_noise_from_each_images_rng(nets):
    """Zero steps give g(z) with z = default_rng(seed).standard_normal(d, float32); one noise-free step is the
    contract's update from it; energies are ‖Y‖²/(2s²) − f(Y)."""
    descriptor, generator = nets
    draft, energies = reference_synthesize(descriptor, generator, [5, 6], 0, DELTA, S, noise=False)
    rngs = [np.random.default_rng(s) for s in (5, 6)]
    z = np.stack([r.standard_normal(SPEC.latent_dim, dtype=np.float32) for r in rngs])
    with torch.no_grad():
        assert np.array_equal(draft, generator(torch.from_numpy(z)).numpy())
        f = descriptor(torch.from_numpy(draft)).numpy()
    np.testing.assert_allclose(energies, (draft**2).sum((1, 2, 3)) / (2 * S**2) - f, rtol=1e-6)

    one, _ = reference_synthesize(descriptor, generator, [5, 6], 1, DELTA, S, noise=True)
    _, grad = descriptor_score_and_grad(descriptor, torch.from_numpy(draft))
    rng = np.random.default_rng(6)
    rng.standard_normal(SPEC.latent_dim, dtype=np.float32)  # z comes first
    noise = rng.standard_normal(SPEC.image_shape, dtype=np.float32)
    want = draft[1] - DELTA**2 / 2 * (draft[1] / S**2 - grad[1].numpy()) + DELTA * noise
    np.testing.assert_allclose(one[1], want, atol=1e-6)


def test_synthesis_is_batch_independent(nets):
    descriptor, generator = nets
    seeds = [11, 12, 13, 14, 15, 16, 17]
    batch, energies = reference_synthesize(descriptor, generator, seeds, 3, DELTA, S, noise=True)
    for i in (0, 3, 6):
        alone, e = reference_synthesize(descriptor, generator, [seeds[i]], 3, DELTA, S, noise=True)
        np.testing.assert_allclose(batch[i], alone[0], rtol=0, atol=BATCH_ATOL)
        np.testing.assert_allclose(energies[i], e[0], rtol=1e-6)
    again, _ = reference_synthesize(descriptor, generator, seeds, 3, DELTA, S, noise=True)
    assert np.array_equal(batch, again)
    assert not np.allclose(batch[0], batch[1])  # different seeds, different images


def test_completion_keeps_observed_pixels_and_is_batch_independent(nets):
    descriptor, generator = nets
    images, _ = reference_synthesize(descriptor, generator, [1, 2, 3], 0, DELTA, S, noise=False)
    masks = center_masks(3)
    args = dict(
        latent_steps=4, eta=0.05, latent_noise=True, refine_steps=3, delta=DELTA, s=S, sigma=SIGMA, noise=True
    )
    out = reference_complete(descriptor, generator, images, masks, [7, 8, 9], **args)
    observed = masks == 0
    assert np.array_equal(out[observed], images[observed])
    assert np.abs(out - images)[~observed].max() > 1e-3  # the hole was filled and refined
    # alone, with a (1, 1, H, W) mask that broadcasts over channels
    alone = reference_complete(descriptor, generator, images[1:2], masks[1:2, :1], [8], **args)
    np.testing.assert_allclose(out[1], alone[0], rtol=0, atol=BATCH_ATOL)
    with pytest.raises(ValueError, match="one seed per image"):
        reference_complete(descriptor, generator, images, masks, [7], **args)


def test_the_contract_on_the_onnx_bundle_reproduces_the_reference(nets, tmp_path):
    """The sampling contract of docs/architecture.md, replayed with ONNX Runtime on the exported graphs (as
    the service does), gives the reference's images."""
    descriptor, generator = nets
    bundle = export_bundle(descriptor, generator, tmp_path / "bundle", langevin=LANGEVIN)
    sess = {
        g: ort.InferenceSession(str(bundle / f"{g}.onnx"), providers=["CPUExecutionProvider"])
        for g in ("generator", "langevin_step", "generator_grad")
    }
    scalar = lambda v: np.array(v, np.float32)  # noqa: E731
    seeds, steps, eta, latent_steps = [3, 4], 3, 0.05, 4

    def refine(y, mask, rngs, k):
        for _ in range(k):
            noise = np.stack([r.standard_normal(SPEC.image_shape, dtype=np.float32) for r in rngs])
            feed = {"y": y, "noise": noise, "mask": mask, "delta": scalar(DELTA), "s": scalar(S)}
            y, _ = sess["langevin_step"].run(None, feed)
        return y

    rngs = [np.random.default_rng(s) for s in seeds]
    z = np.stack([r.standard_normal(SPEC.latent_dim, dtype=np.float32) for r in rngs])
    (y,) = sess["generator"].run(None, {"z": z})
    y = refine(y, np.ones_like(y), rngs, steps)
    want, _ = reference_synthesize(descriptor, generator, seeds, steps, DELTA, S, noise=True)
    np.testing.assert_allclose(y, want, rtol=0, atol=1e-5)

    images, masks = want, center_masks(2)
    rngs = [np.random.default_rng(s) for s in seeds]
    z = np.stack([r.standard_normal(SPEC.latent_dim, dtype=np.float32) for r in rngs])
    for _ in range(latent_steps):
        grad_z, _, _ = sess["generator_grad"].run(
            None, {"z": z, "y": images, "mask": masks, "sigma": scalar(SIGMA)}
        )
        z = (
            z
            - eta**2 / 2 * grad_z
            + eta * np.stack([r.standard_normal(SPEC.latent_dim, dtype=np.float32) for r in rngs])
        )
    (y_gen,) = sess["generator"].run(None, {"z": z.astype(np.float32)})
    y = refine(np.where(masks == 1, y_gen, images), masks, rngs, steps)
    want = reference_complete(
        descriptor,
        generator,
        images,
        masks,
        seeds,
        latent_steps=latent_steps,
        eta=eta,
        latent_noise=True,
        refine_steps=steps,
        delta=DELTA,
        s=S,
        sigma=SIGMA,
        noise=True,
    )
    np.testing.assert_allclose(y, want, rtol=0, atol=1e-5)
    assert np.array_equal(y[masks == 0], images[masks == 0])


def test_completion_restarts_are_batch_independent_and_validated(nets):
    descriptor, generator = nets
    images, _ = reference_synthesize(descriptor, generator, [1, 2, 3], 0, DELTA, S, noise=False)
    masks = center_masks(3)
    args = dict(
        latent_steps=3, eta=0.05, latent_noise=True, refine_steps=2, delta=DELTA, s=S, sigma=SIGMA, noise=True
    )
    out = reference_complete(descriptor, generator, images, masks, [7, 8, 9], restarts=3, **args)
    alone = reference_complete(descriptor, generator, images[2:], masks[2:], [9], restarts=3, **args)
    np.testing.assert_allclose(out[2], alone[0], rtol=0, atol=BATCH_ATOL)
    assert np.array_equal(out[masks == 0], images[masks == 0])
    with pytest.raises(ValueError, match="restarts"):
        reference_complete(descriptor, generator, images, masks, [7, 8, 9], restarts=0, **args)
