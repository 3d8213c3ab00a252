"""Synthesis, completion and energy over numpy arrays, on the bundle's ONNX Runtime sessions.

This is the sampling contract of docs/architecture.md, step for step (trainer/reference.py is its torch
twin and the tests hold the two equal). Images are float32 (N, C, H, W) in [-1, 1].
**Masks: 1 = missing (the pixel may move), 0 = observed (clamped)**; synthesis uses an all-ones mask.
**One rng per image**: image i draws its latent and every noise tensor from its own
`numpy.random.default_rng(seed_i)`, so it is the same in any batch.

    engine = Engine.open("runs/demo/bundle", device="cpu")
    out = engine.synthesize([0, 1, 2])                # out.images (3, C, H, W), out.energy (3,)
    rec = engine.complete(images, masks, seeds=[0] * len(images))

Long loops take `should_stop` (checked before every Langevin step: the server passes "the RPC was cancelled or
ran past its deadline") and raise `Cancelled` when it says so.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import onnxruntime as ort

from serving.bundle import Bundle, Sessions, load_bundle, open_sessions, scalar

StopFn = Callable[[], bool]
SnapshotFn = Callable[[int, np.ndarray], None]  # (steps done, Y (N, C, H, W)) after every k-th step
Rngs = Sequence[np.random.Generator]


class Cancelled(Exception):
    """should_stop() said stop; `steps_done` Langevin steps of the current chain had run."""

    def __init__(self, steps_done: int):
        super().__init__(f"stopped after {steps_done} steps")
        self.steps_done = steps_done


@dataclass(frozen=True)
class Samples:
    images: np.ndarray  # (N, C, H, W) float32, not clipped
    energy: np.ndarray  # (N,) float32, E(Y) = ||Y||² / (2 s²) − f(Y)


def rngs_for(seeds: Sequence[int]) -> list[np.random.Generator]:
    """One generator per image: the whole of "one seed per image"."""
    return [np.random.default_rng(int(s)) for s in seeds]


class Engine:
    """Plain numpy in, numpy out; thread-safe (ONNX Runtime sessions may be run concurrently)."""

    def __init__(self, bundle: Bundle, sessions: Sessions):
        self.bundle = bundle
        self.sessions = sessions
        self.image_shape = bundle.image_shape  # (C, H, W)
        self.latent_dim = bundle.latent_dim
        self.langevin = bundle.langevin
        self.completion = bundle.completion
        self._on_cuda = sessions.device == "cuda"

    @classmethod
    def open(cls, bundle_dir, device: str = "auto", threads: int = 0) -> Engine:
        """Loads and verifies the bundle and opens its sessions (raises serving.bundle.BundleError)."""
        bundle = load_bundle(bundle_dir)
        return cls(bundle, open_sessions(bundle, device=device, threads=threads))

    # ---- building blocks -------------------------------------------------------------------------------

    def latents(self, rngs: Rngs) -> np.ndarray:
        """X_i ~ N(0, I_d) from each image's rng: (N, d)."""
        return np.stack([r.standard_normal(self.latent_dim, dtype=np.float32) for r in rngs])  # (N, d)

    def generate(self, z: np.ndarray) -> np.ndarray:
        """g(X): (N, d) -> (N, C, H, W)."""
        (y,) = self.sessions["generator"].run(["y"], {"z": np.ascontiguousarray(z, dtype=np.float32)})
        return y

    def draft(self, seeds_or_rngs: Sequence[int] | Rngs) -> np.ndarray:
        """Drafts Ŷ = g(X), X drawn from each image's rng (seeds or generators): (N, C, H, W)."""
        return self.generate(self.latents(_as_rngs(seeds_or_rngs)))

    def energy_and_score(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """E(Y) = ||Y||² / (2 s²) − f(Y) and f(Y), each (N,) float32."""
        y = np.ascontiguousarray(images, dtype=np.float32)  # (N, C, H, W)
        (f,) = self.sessions["descriptor"].run(["f"], {"y": y})  # (N,)
        s = self.langevin.s
        sq = np.square(y, dtype=np.float64).reshape(len(y), -1).sum(1)  # (N,)
        return (sq / (2 * s * s) - f).astype(np.float32), f.astype(np.float32)

    def energy(self, images: np.ndarray) -> np.ndarray:
        """E(Y) per image, (N,): lower = more typical of the training data."""
        return self.energy_and_score(images)[0]

    def refine(
        self,
        images: np.ndarray,
        masks: np.ndarray | None,
        rngs: Rngs,
        steps: int | None = None,
        delta: float | None = None,
        noise: bool | None = None,
        snapshot_every: int = 0,
        on_snapshot: SnapshotFn | None = None,
        should_stop: StopFn | None = None,
    ) -> np.ndarray:
        """K descriptor Langevin steps Y ← Y − (δ²/2)(Y/s² − ∂f/∂Y) + δ·U where mask = 1 (missing);
        pixels with mask = 0 (observed) come out bit-identical. masks None = all ones (synthesis). U_t of
        image i is rngs[i].standard_normal((C, H, W)) when noise is on, zeros otherwise.
        Returns Y (N, C, H, W)."""
        steps = self.langevin.steps if steps is None else int(steps)
        delta = self.langevin.delta if delta is None else float(delta)
        noise = self.langevin.noise if noise is None else bool(noise)
        y = np.ascontiguousarray(images, dtype=np.float32)  # (N, C, H, W)
        mask = (
            np.ones_like(y)
            if masks is None
            else np.ascontiguousarray(np.broadcast_to(masks, y.shape), dtype=np.float32)
        )
        zeros = np.zeros_like(y)
        step = _CudaStepper(self, y, mask, delta) if self._on_cuda else _CpuStepper(self, y, mask, delta)
        for t in range(steps):
            if should_stop is not None and should_stop():
                raise Cancelled(t)
            u = (
                np.stack([r.standard_normal(self.image_shape, dtype=np.float32) for r in rngs])
                if noise
                else zeros
            )
            step(u)  # (N, C, H, W)
            if (
                on_snapshot is not None
                and snapshot_every > 0
                and (t + 1) % snapshot_every == 0
                and t + 1 < steps
            ):
                on_snapshot(t + 1, step.value())
        return step.value()

    def infer_latent(
        self,
        images: np.ndarray,
        masks: np.ndarray,
        rngs: Rngs,
        steps: int | None = None,
        step_size: float | None = None,
        noise: bool | None = None,
        restarts: int | None = None,
        should_stop: StopFn | None = None,
    ) -> np.ndarray:
        """Latent Langevin for X given the observed pixels (mask = 0) of `images`:
        X ← X − (η²/2) ∂U/∂X + η·U_t, U(X) = ‖(1 − M) ⊙ (Y − g(X))‖² / (2σ²) + ‖X‖² / 2 per image.
        U is not convex in X, so one chain can settle in a poor basin: image i runs R chains in one batch
        (R = `restarts`), their starts X_r ~ N(0, I) drawn from rngs[i] as one (R, d) array (so R = 1 is the
        single chain), and keeps the final X with the lowest U (the first on ties). Returns X (N, d)."""
        steps = self.completion.latent_steps if steps is None else int(steps)
        eta = self.completion.latent_step_size if step_size is None else float(step_size)
        noise = self.completion.latent_noise if noise is None else bool(noise)
        r = self.completion.restarts if restarts is None else int(restarts)
        if r < 1:
            raise ValueError(f"restarts must be at least 1, got {r}")
        y = np.ascontiguousarray(images, dtype=np.float32)  # (N, C, H, W)
        mask = np.ascontiguousarray(np.broadcast_to(masks, y.shape), dtype=np.float32)  # (N, C, H, W)
        # image i's R chains are rows i·R … i·R + R − 1
        feed = {"y": np.repeat(y, r, axis=0), "mask": np.repeat(mask, r, axis=0)}  # (N·R, C, H, W)
        feed["sigma"] = scalar(self.langevin.sigma)

        def draw() -> np.ndarray:  # (N·R, d): R rows from each image's rng, in image order
            return np.concatenate([g.standard_normal((r, self.latent_dim), dtype=np.float32) for g in rngs])

        x = draw()  # (N·R, d)
        sess = self.sessions["generator_grad"]
        for t in range(steps):
            if should_stop is not None and should_stop():
                raise Cancelled(t)
            (grad,) = sess.run(["grad_z"], {**feed, "z": x})  # (N·R, d)
            x = x - 0.5 * eta**2 * grad
            if noise:
                x = x + eta * draw()
        if r == 1:
            return x
        (u,) = sess.run(["u"], {**feed, "z": x})  # (N·R,) U of each chain's final X
        best = u.reshape(len(rngs), r).argmin(axis=1)  # (N,)
        return x.reshape(len(rngs), r, self.latent_dim)[np.arange(len(rngs)), best]  # (N, d)

    # ---- the two samplers of the contract --------------------------------------------------------------

    def synthesize(
        self,
        seeds: Sequence[int],
        steps: int | None = None,
        delta: float | None = None,
        noise: bool | None = None,
        snapshot_every: int = 0,
        on_snapshot: SnapshotFn | None = None,
        should_stop: StopFn | None = None,
    ) -> Samples:
        """Draft Ŷ = g(X) then K descriptor Langevin steps from it (mask all ones); one rng per seed."""
        rngs = rngs_for(seeds)
        y = self.draft(rngs)  # (N, C, H, W)
        y = self.refine(y, None, rngs, steps, delta, noise, snapshot_every, on_snapshot, should_stop)
        return Samples(images=y, energy=self.energy(y))

    def complete(
        self,
        images: np.ndarray,
        masks: np.ndarray,
        seeds: Sequence[int],
        latent_steps: int | None = None,
        latent_step_size: float | None = None,
        refine_steps: int | None = None,
        refine_step_size: float | None = None,
        noise: bool | None = None,
        latent_noise: bool | None = None,
        restarts: int | None = None,
        should_stop: StopFn | None = None,
    ) -> Samples:
        """Recover the missing pixels (mask = 1) of `images` (N, C, H, W): infer X on the observed
        pixels (the lowest-U of R = `restarts` chains), fill the hole with g(X), then descriptor Langevin on
        the missing pixels with the observed ones clamped. Observed pixels (mask = 0) come back exactly as
        given."""
        y_obs = np.ascontiguousarray(images, dtype=np.float32)  # (N, C, H, W)
        mask = np.ascontiguousarray(np.broadcast_to(masks, y_obs.shape), dtype=np.float32)  # (N, C, H, W)
        rngs = rngs_for(seeds)
        # 1-2. latent inference of X from the visible pixels
        z = self.infer_latent(
            y_obs, mask, rngs, latent_steps, latent_step_size, latent_noise, restarts, should_stop
        )  # (N, d)
        # 3. fill the hole with the generator's guess
        y = np.where(mask > 0.5, self.generate(z), y_obs).astype(np.float32)  # (N, C, H, W)
        # 4. descriptor Langevin on the missing pixels, observed ones clamped
        steps = self.completion.refine_steps if refine_steps is None else refine_steps
        y = self.refine(y, mask, rngs, steps, refine_step_size, noise, should_stop=should_stop)
        return Samples(images=y, energy=self.energy(y))


def _as_rngs(seeds_or_rngs) -> list[np.random.Generator]:
    items = list(seeds_or_rngs)
    return items if items and isinstance(items[0], np.random.Generator) else rngs_for(items)


class _CpuStepper:
    """One langevin_step.onnx call per step, numpy in and out."""

    def __init__(self, engine: Engine, y: np.ndarray, mask: np.ndarray, delta: float):
        self.sess = engine.sessions["langevin_step"]
        self.feed = {"y": y, "mask": mask, "delta": scalar(delta), "s": scalar(engine.langevin.s)}

    def __call__(self, u: np.ndarray) -> None:
        self.feed["noise"] = u
        (self.feed["y"],) = self.sess.run(["y_next"], self.feed)

    def value(self) -> np.ndarray:
        return self.feed["y"]


class _CudaStepper:
    """IO binding on CUDA: Y and the mask stay on the GPU between steps; only the noise goes up each step."""

    def __init__(self, engine: Engine, y: np.ndarray, mask: np.ndarray, delta: float):
        self.sess = engine.sessions["langevin_step"]
        self.binding = self.sess.io_binding()
        self.y = ort.OrtValue.ortvalue_from_numpy(y, "cuda", 0)
        self.binding.bind_ortvalue_input("mask", ort.OrtValue.ortvalue_from_numpy(mask, "cuda", 0))
        self.binding.bind_cpu_input("delta", scalar(delta))
        self.binding.bind_cpu_input("s", scalar(engine.langevin.s))

    def __call__(self, u: np.ndarray) -> None:
        self.binding.bind_ortvalue_input("y", self.y)
        self.binding.bind_cpu_input("noise", u)
        self.binding.bind_output("y_next", "cuda")
        self.binding.bind_output("f", "cuda")
        self.sess.run_with_iobinding(self.binding)
        self.y = self.binding.get_outputs()[0]

    def value(self) -> np.ndarray:
        return self.y.numpy()
