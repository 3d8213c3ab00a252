"""The sampling contract, written once: synthesis and completion as step-by-step generators over a backend.

Notation (Xie et al., TPAMI 2018): Y an image (C, H, W) in [-1, 1], f(Y) the descriptor's score,
E(Y) = ‖Y‖²/(2s²) − f(Y) its energy, X a latent (d,) with prior N(0, I), g the generator, σ its noise,
U(X) = ‖(1 − M) ⊙ (Y − g(X))‖²/(2σ²) + ‖X‖²/2 the latent energy given the observed pixels of Y.
**Mask M: 1 = missing (the pixel may move), 0 = observed (clamped, returned bit-identical).**

**One rng per image**: image i draws its latent, then every noise tensor in step order, from its own
`numpy.random.default_rng(seed_i)`, so it is the same whatever batch it runs in.

In code δ is `delta` and η `latent_step_size`, the names of the bundle manifest and of coop-train's flags;
only the request messages, which cannot be renamed, say `step_size` and `refine_step_size` for δ
(serving.requests translates them).

Synthesis of image i, K steps of size δ:
    X ~ N(0, I_d) from rng_i;  Ŷ = g(X);  K times: Y ← Y − (δ²/2)(Y/s² − ∂f/∂Y) + δ·U_t, U_t from rng_i (or 0)
Completion of Y_obs with mask M, R restarts, L latent steps of size η, K refinement steps:
    R starts X_r ~ N(0, I) from rng_i as one (R, d) draw;  L times: X ← X − (η²/2) ∂U/∂X + η·U_t (U_t if
    latent noise);  G = g(X) of the X with the lowest U (the first on ties), or with average_restarts the
    mean of g(X_r) over the R chains;  Y = M ⊙ (G + R) + (1 − M) ⊙ Y_obs, R the interpolation into the
    hole of the residual Y_obs − G on the observed pixels (with residual fill: harmonic, biharmonic, or by
    the hole's shape; R = 0 without, as in the paper);  K descriptor Langevin steps on the missing pixels,
    noise from rng_i as in synthesis.
In a batch, image i's R chains are rows i·R … i·R + R − 1 of one (N·R, d) array.

A backend (the ONNX Runtime engine in serving, the autograd nets in trainer.reference) supplies the nets:
generate, score, a descriptor Langevin chain, and the latent gradient. `synthesis_steps` and
`completion_steps` yield a `Progress` after every Langevin step (so a stream reports snapshots and a server
stops a cancelled request between steps) and return the `Samples`; `run` drives one to the end.
"""

from __future__ import annotations

import functools
import math
import warnings
from collections.abc import Callable, Generator, Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol, TypeVar

import numpy as np
from coopnets.contract.inpainting import RESIDUAL_INTERPOLANTS, interpolate_residual

T = TypeVar("T")
MAX_STEP_SIZE = 1.0  # δ and η above this are not Langevin steps but jumps
MAX_RESTARTS = 16  # latent chains per completed image: a request costs up to steps × this many gradients


class ParamError(ValueError):
    """A sampling parameter is out of range; `field` names it (as in the request)."""

    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}")
        self.field = field
        self.description = message


def _check_interpolant(value: str) -> None:
    if value not in RESIDUAL_INTERPOLANTS:
        forms = ", ".join(RESIDUAL_INTERPOLANTS)
        raise ParamError("residual_interpolant", f"{value!r} is not one of {forms}")


def _check_size(field: str, value: float) -> None:
    if not (math.isfinite(value) and 0 < value <= MAX_STEP_SIZE):
        raise ParamError(field, f"{value} must be a finite number in (0, {MAX_STEP_SIZE}]")


@dataclass(frozen=True)
class SynthesisParams:
    """K descriptor Langevin steps of size δ from the drafts, with or without noise. Frozen and hashable: the
    batcher merges requests whose parameters are equal."""

    steps: int
    delta: float
    noise: bool

    def checked(self, max_steps: int | None = None, prefix: str = "") -> SynthesisParams:
        if self.steps < 0 or (max_steps is not None and self.steps > max_steps):
            raise ParamError(f"{prefix}steps", f"{self.steps} is not between 0 and max_steps = {max_steps}")
        _check_size(f"{prefix}step_size", self.delta)
        return self


@dataclass(frozen=True, kw_only=True)
class CompletionParams:
    """R latent chains of L steps of size η (noise on/off), the lowest U kept (or the mean of their fills),
    then K descriptor refinement steps of size δ on the missing pixels. Keyword-only: ten fields, several of
    one type, are read by name, never by position. `refine_step_size`, the name of `delta` before, is still
    taken and read, with a DeprecationWarning."""

    latent_steps: int
    latent_step_size: float  # η
    latent_noise: bool
    refine_steps: int
    delta: float  # δ
    noise: bool
    restarts: int
    residual_fill: bool = False  # the hole gets g(X) plus the observed pixels' residual, interpolated
    average_restarts: bool = False  # the hole gets the mean of the R chains' g(X), not the lowest-U one's
    residual_interpolant: str = "harmonic"  # how the residual is carried in: RESIDUAL_INTERPOLANTS

    def checked(self, max_steps: int | None = None) -> CompletionParams:
        for name in ("latent_steps", "refine_steps"):
            v = getattr(self, name)
            if v < 0 or (max_steps is not None and v > max_steps):
                raise ParamError(name, f"{v} is not between 0 and max_steps = {max_steps}")
        _check_size("latent_step_size", self.latent_step_size)
        _check_size("refine_step_size", self.delta)  # the request's name for it
        _check_interpolant(self.residual_interpolant)
        if not 1 <= self.restarts <= MAX_RESTARTS:
            raise ParamError(
                "restarts", f"{self.restarts} is not between 1 and {MAX_RESTARTS} chains per image"
            )
        return self


# The deprecated spelling of CompletionParams.delta, taken and read. Wrapped around the dataclass rather than
# a field of it, so that fields() and dataclasses.replace know only `delta`.
_RENAMED = "CompletionParams.refine_step_size is deprecated: use delta"
_completion_params_init = CompletionParams.__init__


@functools.wraps(_completion_params_init)
def _init_with_old_name(self, *args, refine_step_size: float | None = None, **kwargs) -> None:
    if refine_step_size is not None:
        if "delta" in kwargs:
            raise TypeError("CompletionParams: give delta only (refine_step_size is its old name)")
        warnings.warn(_RENAMED, DeprecationWarning, stacklevel=2)
        kwargs["delta"] = refine_step_size
    _completion_params_init(self, *args, **kwargs)


def _refine_step_size(self: CompletionParams) -> float:
    warnings.warn(_RENAMED, DeprecationWarning, stacklevel=2)
    return self.delta


CompletionParams.__init__ = _init_with_old_name  # type: ignore[method-assign]
CompletionParams.refine_step_size = property(_refine_step_size)  # type: ignore[attr-defined]


@dataclass(frozen=True)
class Samples:
    images: np.ndarray  # (N, C, H, W) float32, not clipped
    energy: np.ndarray  # (N,) float32, E(Y)
    score: np.ndarray  # (N,) float32, f(Y)


@dataclass(frozen=True)
class Progress:
    """Yielded after every Langevin step: `phase` "latent" or "langevin", `step` steps of `steps` done; the
    descriptor phase also yields its start (step 0)."""

    phase: str
    step: int
    steps: int
    value: Callable[[], np.ndarray]  # the current state: X (N, d) when latent, Y (N, C, H, W) otherwise


class Cancelled(Exception):
    """The caller said stop; `steps_done` Langevin steps had run."""

    def __init__(self, steps_done: int):
        super().__init__(f"stopped after {steps_done} steps")
        self.steps_done = steps_done


class Chain(Protocol):
    """A descriptor Langevin chain held by the backend (on its device): `step(noise)` moves Y by one step
    where mask = 1; `value()` is Y (N, C, H, W) as numpy."""

    def step(self, noise: np.ndarray) -> None: ...
    def value(self) -> np.ndarray: ...


class Backend(Protocol):
    """The nets, numpy in and out."""

    image_shape: tuple[int, int, int]
    latent_dim: int
    s: float  # reference std of the descriptor model
    sigma: float  # generator noise std

    def generate(self, z: np.ndarray) -> np.ndarray: ...  # g(X): (N, d) -> (N, C, H, W)
    def score(self, y: np.ndarray) -> np.ndarray: ...  # f(Y): (N, C, H, W) -> (N,)
    def chain(self, y: np.ndarray, mask: np.ndarray, delta: float) -> Chain: ...
    def latent_grad(self, z: np.ndarray, y: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """∂U/∂X (N, d) and U(X) (N,) at X = z against y, mask (N, C, H, W)."""
        ...


# ---- the formulas ------------------------------------------------------------------------------------------


def energy(y, f, s: float):
    """E(Y) = ‖Y‖² / (2 s²) − f(Y) per image (N,): lower = more typical. Works on numpy arrays and torch
    tensors alike (the trainer logs it too); pass float64 Y for an exactly summed ‖Y‖²."""
    return (y**2).reshape(y.shape[0], -1).sum(1) / (2 * s * s) - f


def latent_step(x, grad_u, noise, latent_step_size: float):
    """One latent Langevin step X − (η²/2) ∂U/∂X + η·noise, η = latent_step_size (numpy arrays or torch
    tensors)."""
    return x - 0.5 * latent_step_size**2 * grad_u + latent_step_size * noise


def rngs_for(seeds: Sequence[int]) -> list[np.random.Generator]:
    """One generator per image: the whole of "one seed per image"."""
    return [np.random.default_rng(int(s)) for s in seeds]


def _draw(rngs: Sequence[np.random.Generator], shape: tuple[int, ...]) -> np.ndarray:
    """A standard normal array of `shape` from each image's rng, stacked: (N, *shape)."""
    return np.stack([r.standard_normal(shape, dtype=np.float32) for r in rngs])


def synthesis_draws(
    seeds: Sequence[int], latent_dim: int, image_shape: tuple[int, int, int], steps: int, noise: bool = True
) -> tuple[np.ndarray, np.ndarray]:
    """The random numbers synthesis of `seeds` consumes, in its order: X (N, d) and the Langevin noise
    (K, N, C, H, W) (zeros without noise). For graphs that run the whole chain outside this sampler (the
    Triton model of trainer/triton.py): fed these, they make the images this sampler makes for the seeds."""
    rngs = rngs_for(seeds)
    z = _draw(rngs, (latent_dim,))
    shape = (steps, len(rngs), *image_shape)
    if not noise:
        return z, np.zeros(shape, np.float32)
    return z, np.stack([_draw(rngs, image_shape) for _ in range(steps)]).reshape(shape)


def drafts(backend: Backend, rngs: Sequence[np.random.Generator]) -> np.ndarray:
    """Ŷ = g(X), X ~ N(0, I_d) the first draw of each image's rng: (N, C, H, W)."""
    return backend.generate(_draw(rngs, (backend.latent_dim,)))


def measure(backend: Backend, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """E(Y) and f(Y) of `images` (N, C, H, W), each (N,) float32."""
    y = np.ascontiguousarray(images, dtype=np.float32)
    f = backend.score(y)  # (N,)
    return energy(y.astype(np.float64), f, backend.s).astype(np.float32), f.astype(np.float32)


# ---- the samplers ------------------------------------------------------------------------------------------

Steps = Generator[Progress, None, Samples]


def langevin_steps(
    backend: Backend,
    y: np.ndarray,
    mask: np.ndarray | None,
    rngs: Sequence[np.random.Generator],
    steps: int,
    delta: float,
    noise: bool,
) -> Generator[Progress, None, np.ndarray]:
    """K descriptor Langevin steps from `y` (N, C, H, W) where mask = 1 (None = everywhere); U_t of image i
    is rngs[i].standard_normal((C, H, W)) when `noise`, zeros otherwise. Returns Y."""
    y = np.ascontiguousarray(y, dtype=np.float32)
    mask = (
        np.ones_like(y) if mask is None else np.ascontiguousarray(np.broadcast_to(mask, y.shape), np.float32)
    )
    chain = backend.chain(y, mask, delta)
    zeros = np.zeros_like(y)
    yield Progress("langevin", 0, steps, lambda: y)  # the start: drafts, or the filled image of completion
    for t in range(steps):
        chain.step(_draw(rngs, backend.image_shape) if noise else zeros)
        yield Progress("langevin", t + 1, steps, chain.value)
    return chain.value() if steps else y


def latent_chains(
    backend: Backend,
    y_rep: np.ndarray,
    mask_rep: np.ndarray,
    rngs: Sequence[np.random.Generator],
    params: CompletionParams,
) -> Generator[Progress, None, np.ndarray]:
    """The R = params.restarts latent chains of each image, all of them: `y_rep`, `mask_rep` (N·R, C, H, W)
    hold each image R times in a row. Returns every chain's final X (N·R, d); latent_steps picks from them."""
    r, d = params.restarts, backend.latent_dim

    def draw() -> np.ndarray:  # (N·R, d): R rows from each image's rng, in image order
        return np.concatenate([g.standard_normal((r, d), dtype=np.float32) for g in rngs])

    x = draw()  # (N·R, d)
    for t in range(params.latent_steps):
        grad, _ = backend.latent_grad(x, y_rep, mask_rep)  # (N·R, d)
        x = latent_step(x, grad, draw() if params.latent_noise else 0.0, params.latent_step_size)
        yield Progress("latent", t + 1, params.latent_steps, lambda x=x: x)
    return x


def latent_steps(
    backend: Backend,
    y_obs: np.ndarray,
    mask: np.ndarray,
    rngs: Sequence[np.random.Generator],
    params: CompletionParams,
) -> Generator[Progress, None, np.ndarray]:
    """Latent Langevin for X given the observed pixels (mask = 0) of `y_obs` (N, C, H, W), R chains per
    image, the lowest final U kept. Returns X (N, d)."""
    n, r, d = len(rngs), params.restarts, backend.latent_dim
    y_rep, mask_rep = np.repeat(y_obs, r, axis=0), np.repeat(mask, r, axis=0)  # (N·R, C, H, W)
    x = yield from latent_chains(backend, y_rep, mask_rep, rngs, params)  # (N·R, d)
    if r == 1:
        return x
    _, u = backend.latent_grad(x, y_rep, mask_rep)  # (N·R,) U of each chain's final X
    best = u.reshape(n, r).argmin(axis=1)  # (N,)
    return x.reshape(n, r, d)[np.arange(n), best]  # (N, d)


def latent_fill(
    backend: Backend,
    y_obs: np.ndarray,
    mask: np.ndarray,
    rngs: Sequence[np.random.Generator],
    params: CompletionParams,
) -> Generator[Progress, None, np.ndarray]:
    """The generator's guess G of each image (N, C, H, W) from its observed pixels: g(X) of the lowest-U
    chain, or with `average_restarts` the mean of g(X_r) over the R chains.

    Why the mean: under uncertainty the fill with the least squared error is the posterior mean, and a
    confident stroke of the wrong digit costs more PSNR than a blur between the candidates
    (docs/results.md, the MNIST table; experiments/restart_mean.py measures it)."""
    if not params.average_restarts:
        x = yield from latent_steps(backend, y_obs, mask, rngs, params)  # (N, d)
        return backend.generate(x)
    n, r = len(rngs), params.restarts
    y_rep, mask_rep = np.repeat(y_obs, r, axis=0), np.repeat(mask, r, axis=0)  # (N·R, C, H, W)
    x = yield from latent_chains(backend, y_rep, mask_rep, rngs, params)  # (N·R, d)
    return backend.generate(x).reshape(n, r, *y_obs.shape[1:]).mean(axis=1)  # (N, C, H, W)


def synthesis_steps(backend: Backend, seeds: Sequence[int], params: SynthesisParams) -> Steps:
    """Drafts Ŷ = g(X) then K descriptor Langevin steps (mask all ones), image i from seeds[i]."""
    rngs = rngs_for(seeds)
    y = drafts(backend, rngs)  # (N, C, H, W) Ŷ
    y = yield from langevin_steps(backend, y, None, rngs, params.steps, params.delta, params.noise)  # Ỹ
    return Samples(y, *measure(backend, y))


def completion_steps(
    backend: Backend, images: np.ndarray, masks: np.ndarray, seeds: Sequence[int], params: CompletionParams
) -> Steps:
    """Recovers the missing pixels (mask = 1) of `images` (N, C, H, W); observed pixels come back exactly."""
    y_obs = np.ascontiguousarray(images, dtype=np.float32)  # (N, C, H, W)
    mask = np.ascontiguousarray(np.broadcast_to(masks, y_obs.shape), dtype=np.float32)  # (N, C, H, W)
    if len(seeds) != len(y_obs):
        raise ValueError(f"{len(seeds)} seeds for {len(y_obs)} images: give one seed per image")
    rngs = rngs_for(seeds)
    # 1. latent inference of X from the visible pixels (R chains) and the generator's guess G
    g = yield from latent_fill(backend, y_obs, mask, rngs, params)  # (N, C, H, W)
    # 2. fill the hole with G, corrected by what it got wrong around the hole
    if params.residual_fill:
        g = g + interpolate_residual(y_obs - g, mask, params.residual_interpolant)
    y = np.where(mask > 0.5, g, y_obs).astype(np.float32)  # (N, C, H, W)
    # 3. descriptor Langevin on the missing pixels, the observed ones clamped
    y = yield from langevin_steps(backend, y, mask, rngs, params.refine_steps, params.delta, params.noise)
    return Samples(y, *measure(backend, y))


def stepped(
    steps: Generator[Progress, None, Samples],
    should_stop: Callable[[], bool] | None = None,
    each: Callable[[Progress], Iterable[T]] | None = None,
) -> Generator[T, None, Samples]:
    """The one loop that drives a sampler: `should_stop` is checked before every step and raises Cancelled
    once it says so; this generator yields whatever `each(progress)` yields for every Progress (a stream's
    snapshots) and returns the sampler's result. Closing it closes the sampler."""
    done = 0
    try:
        while True:
            if should_stop is not None and should_stop():
                raise Cancelled(done)
            try:
                progress = next(steps)
            except StopIteration as end:
                return end.value
            done += progress.step > 0
            if each is not None:
                yield from each(progress)
    finally:
        steps.close()


def run(
    steps: Generator[Progress, None, Samples],
    should_stop: Callable[[], bool] | None = None,
    on_progress: Callable[[Progress], None] | None = None,
):
    """Drives a sampler to the end and returns its result (`stepped`, nothing yielded); `on_progress` sees
    every Progress."""

    def each(progress: Progress) -> tuple[()]:
        if on_progress is not None:
            on_progress(progress)
        return ()

    driven = stepped(steps, should_stop, each)
    try:
        next(driven)  # `each` yields nothing, so the first next() runs the sampler to its end
    except StopIteration as end:
        return end.value
    raise AssertionError("stepped yielded with an `each` that yields nothing")


def synthesize(backend: Backend, seeds: Sequence[int], params: SynthesisParams) -> Samples:
    return run(synthesis_steps(backend, seeds, params))


def complete(
    backend: Backend, images: np.ndarray, masks: np.ndarray, seeds: Sequence[int], params: CompletionParams
) -> Samples:
    return run(completion_steps(backend, images, masks, seeds, params))
