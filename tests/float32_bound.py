"""Error bounds for tests that compare two float32 implementations of the same computation (ONNX Runtime's
graphs against PyTorch's autograd, through the sampler's Langevin chains): the tolerance is derived from a
rounding-error model on the test's own nets and inputs, not a number that once passed.

The model is Higham and Mary's probabilistic rounding-error analysis ("A New Approach to Probabilistic
Rounding Error Analysis", SIAM J. Sci. Comput. 41(5), 2019): every float32 operation rounds with relative
error at most u = 2⁻²⁴, the errors independent and of mean zero. Then a sum of n products, in any order,
blocking or thread split, is off by at most about λ·√n·u·Σ|w_i·x_i| except with probability at most
2n·exp(−λ²/2) (their Theorems 2.4 and 3.1, from Hoeffding's inequality). That covers direct and im2col +
GEMM convolutions and a BatchNorm folded into the conv before it (EXTRA roundings per term: the bias, the
folded scale, casts of constants); it does not cover Winograd or FFT convolutions, which neither PyTorch's
nor ONNX Runtime's float32 CPU kernels use for these layers. tanh is taken to be within ULPS ulp.

Errors are carried to first order as a scale e per element (the bound is λ·e): through a linear map W as
√(W²·e²), independent errors adding in quadrature as the model says; a 1-Lipschitz activation passes e on;
where a leaky ReLU's input lies within λ·e of 0 the two sides may take different slopes, so the gradient
there carries the difference of the slopes times its size. Values are carried in float64 (relative error
~1e-16, nothing beside u). Each side is within λ·e of the exact result, so two sides differ by at most
λ·√2·e (`tolerance`), with λ = LAMBDA = 8: for sums of up to 10⁴ terms a false alarm has probability
below 3e-10 per sum.

Two variants of the model, set with `assumptions(...)` around the bound's computation: `product` > 0 adds to
every affine layer's output and input gradient an error of relative size `product` per product, independent
per term (PRODUCT·√Σ(w·x)²), for kernels that multiply in a reduced precision (TF32 on CUDA);
`slope_flips=False` lets every leaky ReLU's backward take the slope of its exact input, the bound of two
evaluations that took the same slopes — for cases where a chain's input comes within its bound of a kink, the
full model then lets the gradient jump and no tolerance could hold two evaluations that really took different
slopes (a test using it says so and fails if they did).
"""

from __future__ import annotations

import contextlib
import math
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from coopnets.contract import sampling
from torch import nn

U = 2.0**-24  # float32 unit roundoff
U64 = 2.0**-53  # float64 unit roundoff
LAMBDA = 8.0  # bound = λ·e; the model's tail 2·exp(−λ²/2) = 2.5e-14 per rounding
EXTRA = 4  # roundings per term beyond a dot product's: bias, a folded BatchNorm scale, casts of constants
ULPS = 4  # tanh's accuracy in ulp (1 ulp of y is at most 2u·|y|)


_ASSUMED = {"product": 0.0, "slope_flips": True}  # the model's variant: see the docstring, `assumptions`


@contextlib.contextmanager
def assumptions(product: float = 0.0, slope_flips: bool = True):
    """The bounds computed inside use this variant of the model (the module docstring says what each is)."""
    before = dict(_ASSUMED)
    _ASSUMED.update(product=product, slope_flips=slope_flips)
    try:
        yield
    finally:
        _ASSUMED.update(before)


def gamma(n, u: float = U):
    """Higham's worst-case γ_n = n·u / (1 − n·u) (Accuracy and Stability of Numerical Algorithms, §3.1): the
    relative error of n roundings; n an int or a tensor of counts."""
    return n * u / (1 - n * u)


def rounding(n):
    """The error scale of n successive roundings (an n-term sum), relative to the sum of the magnitudes; n
    an int or a tensor of counts."""
    return (n.sqrt() if isinstance(n, torch.Tensor) else math.sqrt(n)) * U


def _rss(variance: torch.Tensor, *terms) -> torch.Tensor:
    """√(variance + Σ term²): independent error scales combined."""
    total = variance
    for t in terms:
        total = total + t * t
    return total.sqrt() if isinstance(total, torch.Tensor) else math.sqrt(total)


def tolerance(e: np.ndarray) -> np.ndarray:
    """How far two float32 implementations may be apart, each within LAMBDA·e of the exact result."""
    return LAMBDA * math.sqrt(2) * e


class Bounded(NamedTuple):
    """An exact value `v` and the error scale `e` >= 0 of a float32 computation of it: under the model,
    |v̂ − v| <= LAMBDA·e."""

    v: torch.Tensor
    e: torch.Tensor

    @staticmethod
    def exact(a) -> Bounded:
        v = torch.as_tensor(np.asarray(a), dtype=torch.float64)
        return Bounded(v, torch.zeros_like(v))

    @property
    def mag(self) -> torch.Tensor:
        """The largest magnitude a computed value may have."""
        return self.v.abs() + self.e


def _weights(layer: nn.Module) -> tuple[torch.Tensor, torch.Tensor | None]:
    w = layer.weight.detach().double()
    b = None if layer.bias is None else layer.bias.detach().double()
    return w, b


def _apply(layer: nn.Module, x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None) -> torch.Tensor:
    """The layer's linear map with weight w and bias b (float64)."""
    if isinstance(layer, nn.ConvTranspose2d):
        return F.conv_transpose2d(
            x, w, b, layer.stride, layer.padding, layer.output_padding, layer.groups, layer.dilation
        )
    if isinstance(layer, nn.Conv2d):
        return F.conv2d(x, w, b, layer.stride, layer.padding, layer.dilation, layer.groups)
    return F.linear(x, w, b)


def _is_affine(layer: nn.Module) -> bool:
    return isinstance(layer, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear))


def _bn_scale(layer: nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
    """(a, c) of the eval-mode BatchNorm y = a·x + c, shaped (1, C, 1, 1)."""
    a = layer.weight.detach().double() / torch.sqrt(layer.running_var.double() + layer.eps)
    c = layer.bias.detach().double() - layer.running_mean.double() * a
    return a.reshape(1, -1, 1, 1), c.reshape(1, -1, 1, 1)


def forward_layer(layer: nn.Module, x: Bounded) -> Bounded:
    """`layer` on x: its exact output and that output's error scale."""
    if _is_affine(layer):
        w, b = _weights(layer)
        n = _apply(layer, torch.ones_like(x.v), torch.ones_like(w), None)  # terms summed per output
        mag = _apply(layer, x.mag, w.abs(), None if b is None else b.abs())
        carried = _apply(layer, x.e**2, w**2, None)
        products = _ASSUMED["product"] and _ASSUMED["product"] * _apply(layer, x.mag**2, w**2, None).sqrt()
        return Bounded(_apply(layer, x.v, w, b), _rss(carried, rounding(n + EXTRA) * mag, products))
    if isinstance(layer, nn.BatchNorm2d):
        a, c = _bn_scale(layer)
        return Bounded(a * x.v + c, _rss(a * a * x.e**2, rounding(EXTRA) * (a.abs() * x.mag + c.abs())))
    if isinstance(layer, nn.LeakyReLU):  # 1-Lipschitz; the slope's product rounds once
        v = F.leaky_relu(x.v, layer.negative_slope)
        return Bounded(v, _rss(x.e**2, U * v.abs()))
    if isinstance(layer, nn.Tanh):  # 1-Lipschitz, within ULPS ulp
        v = torch.tanh(x.v)
        return Bounded(v, _rss(x.e**2, 2 * ULPS * U * v.abs()))
    if isinstance(layer, (nn.Flatten, nn.Unflatten)):
        return Bounded(layer(x.v), layer(x.e))
    raise TypeError(f"no float32 bound for {type(layer).__name__}")


def forward(body: nn.Sequential, x: Bounded) -> list[Bounded]:
    """`body` run on x, keeping every layer's input and the output: [x, a_1, ..., out]."""
    acts = [x]
    for layer in body:
        acts.append(forward_layer(layer, acts[-1]))
    return acts


def _vjp(layer: nn.Module, x: torch.Tensor, w: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """gᵀ·∂(layer's linear map with weight w)/∂x, for x of x's shape (float64)."""
    x = torch.zeros_like(x, requires_grad=True)
    with torch.enable_grad():
        (out,) = torch.autograd.grad(_apply(layer, x, w, None), x, g)
    return out


def backward_layer(layer: nn.Module, x: Bounded, y: Bounded, g: Bounded) -> Bounded:
    """The input gradient of `layer` from g = ∂L/∂y, given its input x and output y."""
    if _is_affine(layer):
        w, _ = _weights(layer)
        m = _vjp(layer, x.v, torch.ones_like(w), torch.ones_like(g.v))  # terms summed per input
        carried = _vjp(layer, x.v, w**2, g.e**2)
        mag = _vjp(layer, x.v, w.abs(), g.mag)
        products = _ASSUMED["product"] and _ASSUMED["product"] * _vjp(layer, x.v, w**2, g.mag**2).sqrt()
        return Bounded(_vjp(layer, x.v, w, g.v), _rss(carried, rounding(m + EXTRA) * mag, products))
    if isinstance(layer, nn.BatchNorm2d):
        a, _ = _bn_scale(layer)
        return Bounded(g.v * a, _rss(a * a * g.e**2, rounding(EXTRA) * a.abs() * g.mag))
    if isinstance(layer, nn.LeakyReLU):
        leak = layer.negative_slope
        slope = torch.where(x.v > 0, 1.0, leak).double()
        v = g.v * slope
        # the computed input may have the other sign: either slope (unless assumed not to)
        either_side = (LAMBDA * x.e >= x.v.abs()) & _ASSUMED["slope_flips"]
        flip = torch.where(either_side, (1 - leak) * g.v.abs(), 0.0)
        return Bounded(v, _rss(slope * slope * g.e**2, flip, U * g.mag))
    if isinstance(layer, nn.Tanh):  # g·(1 − y²), with y known to ±e_y
        d = 1 - y.v * y.v
        d_err = _rss(4 * y.v**2 * y.e**2, rounding(3) * (1 + y.mag * y.mag))
        return Bounded(g.v * d, _rss(d * d * g.e**2, g.mag * d_err, U * g.mag * (d.abs() + d_err)))
    if isinstance(layer, (nn.Flatten, nn.Unflatten)):
        return Bounded(g.v.reshape(x.v.shape), g.e.reshape(x.v.shape))
    raise TypeError(f"no float32 bound for {type(layer).__name__}")


def input_vjp(body: nn.Sequential, acts: list[Bounded], g: Bounded) -> Bounded:
    for i in range(len(body) - 1, -1, -1):
        g = backward_layer(body[i], acts[i], acts[i + 1], g)
    return g


def _sum(x: Bounded, dims: tuple[int, ...]) -> Bounded:
    """Σ over `dims`: the terms' errors add in quadrature, and the sum of n terms rounds by √n·u of the
    magnitudes."""
    n = math.prod(x.v.shape[d] for d in dims)
    return Bounded(x.v.sum(dims), _rss(x.e.pow(2).sum(dims), rounding(n) * x.mag.sum(dims)))


def score_and_grad(descriptor: nn.Module, y: Bounded) -> tuple[Bounded, Bounded]:
    """f(Y) (N,) = the sum of the last layer's outputs, and ∂f/∂Y (N, C, H, W)."""
    acts = forward(descriptor.body, y)
    out = Bounded(acts[-1].v.flatten(1), acts[-1].e.flatten(1))  # (N, 100)
    ones = Bounded.exact(np.ones(tuple(acts[-1].v.shape)))
    return _sum(out, (1,)), input_vjp(descriptor.body, acts, ones)


def generate(generator: nn.Module, z: Bounded) -> Bounded:
    return forward(generator.body, z)[-1]


def energy(y: Bounded, f: Bounded, s: float) -> Bounded:
    """E = ‖Y‖²/(2s²) − f, summed in float64 from float32 Y (sampling.measure) and cast to float32."""
    sq = (y.v * y.v).flatten(1).sum(1)
    sq_err = (4 * y.v**2 * y.e**2).flatten(1).sum(1).sqrt()  # float64 sums: only Y's errors count
    v = sq / (2 * s * s) - f.v
    return Bounded(v, _rss((sq_err / (2 * s * s)) ** 2, f.e, U * (v.abs() + sq_err / (2 * s * s) + f.e)))


def langevin_step(y: Bounded, grad: Bounded, noise: np.ndarray, mask: torch.Tensor, delta: float, s: float):
    """Y − (δ²/2)(Y/s² − ∂f/∂Y) + δ·noise where mask = 1 (trainer.langevin.descriptor_step): eight
    roundings per pixel at most (y/s², the difference, the products by δ²/2 and δ, two sums, the constants δ²
    and s²)."""
    c, u = 0.5 * delta * delta, torch.as_tensor(noise, dtype=torch.float64)
    v = y.v - c * (y.v / s**2 - grad.v) + delta * u
    mag = y.mag + c * (y.mag / s**2 + grad.mag) + delta * u.abs()
    e = _rss((1 - c / s**2) ** 2 * y.e**2, c * grad.e, rounding(8) * mag)
    moved = mask > 0.5
    return Bounded(torch.where(moved, v, y.v), torch.where(moved, e, y.e))


def latent_grad(generator: nn.Module, z: Bounded, y: torch.Tensor, mask: torch.Tensor, sigma: float):
    """(∂U/∂X (N, d), U (N,)) with U = ‖(1 − mask) ⊙ (y − g(X))‖²/(2σ²) + ‖X‖²/2 (trainer.grads)."""
    keep = 1 - mask
    acts = forward(generator.body, z)
    g = acts[-1]
    r = Bounded(keep * (y - g.v), keep * _rss(g.e**2, U * (y.abs() + g.mag)))  # (N, C, H, W) the residual
    # ∂U/∂g = −keep·r/σ²: a product and a quotient (and σ² rounded) on each side
    dg = Bounded(-keep * r.v / sigma**2, keep * _rss(r.e**2, rounding(4) * r.mag) / sigma**2)
    back = input_vjp(generator.body, acts, dg)
    grad = Bounded(back.v + z.v, _rss(back.e**2 + z.e**2, U * (back.mag + z.mag)))
    half = Bounded(r.v * r.v / (2 * sigma**2), _rss(4 * r.v**2 * r.e**2, U * r.mag**2) / (2 * sigma**2))
    prior = Bounded(z.v * z.v / 2, _rss(z.v**2 * z.e**2, U * z.mag**2))
    a, b = _sum(half, (1, 2, 3)), _sum(prior, (1,))
    return grad, Bounded(a.v + b.v, _rss(a.e**2 + b.e**2, rounding(4) * (a.mag + b.mag)))


class Bound(NamedTuple):
    """Per-element error scales of a sampler's results (numpy): images (N, C, H, W), score (N,), energy
    (N,); `tolerance` turns each into the tolerance between two implementations."""

    images: np.ndarray
    score: np.ndarray
    energy: np.ndarray


def _normal(rngs, shape: tuple[int, ...]) -> np.ndarray:
    """(N, *shape) standard normal float32, one row from each image's rng: the sampler's draw."""
    return np.stack([r.standard_normal(shape, dtype=np.float32) for r in rngs])


def _langevin(descriptor, y: Bounded, mask, rngs, steps: int, delta: float, noise: bool, s: float) -> Bounded:
    for _ in range(steps):
        u = _normal(rngs, tuple(y.v.shape[1:])) if noise else np.zeros(tuple(y.v.shape), np.float32)
        _, grad = score_and_grad(descriptor, y)
        y = langevin_step(y, grad, u, mask, delta, s)
    return y


def _measured(descriptor, y: Bounded, s: float) -> Bound:
    f, _ = score_and_grad(descriptor, y)
    return Bound(y.e.numpy(), f.e.numpy(), energy(y, f, s).e.numpy())


def synthesis(descriptor, generator, seeds, params: sampling.SynthesisParams, s: float) -> Bound:
    """The error scale of each of contract.sampling.synthesize's results, replaying its draws."""
    rngs = sampling.rngs_for(seeds)
    y = generate(generator, Bounded.exact(_normal(rngs, (generator.spec.latent_dim,))))
    ones = torch.ones_like(y.v)
    y = _langevin(descriptor, y, ones, rngs, params.steps, params.delta, params.noise, s)
    return _measured(descriptor, y, s)


def completion(
    descriptor, generator, images, masks, seeds, params: sampling.CompletionParams, s: float, sigma: float
) -> Bound:
    """The error scale of each of contract.sampling.complete's results, replaying its draws, for the lowest-U
    choice without residual fill. Raises AssertionError where two chains' U are within their bounds of each
    other, since the two sides could then keep different chains and no tolerance would mean anything."""
    assert not params.residual_fill and not params.average_restarts, "bounded: lowest-U choice, no residual"
    rngs, r, d = sampling.rngs_for(seeds), params.restarts, generator.spec.latent_dim
    y_obs = torch.as_tensor(np.asarray(images), dtype=torch.float64)
    mask = torch.as_tensor(np.broadcast_to(masks, images.shape).copy(), dtype=torch.float64)
    y_rep, mask_rep = y_obs.repeat_interleave(r, 0), mask.repeat_interleave(r, 0)  # (N·R, C, H, W)

    def draw() -> np.ndarray:  # as sampling.latent_chains: R rows from each image's rng
        return np.concatenate([g.standard_normal((r, d), dtype=np.float32) for g in rngs])

    x, eta = Bounded.exact(draw()), params.latent_step_size
    for _ in range(params.latent_steps):
        grad, _ = latent_grad(generator, x, y_rep, mask_rep, sigma)
        u = torch.as_tensor(draw() if params.latent_noise else np.zeros((len(y_rep), d), np.float32)).double()
        c = 0.5 * eta * eta
        mag = x.mag + c * grad.mag + eta * u.abs()
        x = Bounded(x.v - c * grad.v + eta * u, _rss(x.e**2, c * grad.e, rounding(6) * mag))
    if r > 1:
        _, u_final = latent_grad(generator, x, y_rep, mask_rep, sigma)
        width = LAMBDA * u_final.e
        lo, hi = (u_final.v - width).reshape(-1, r), (u_final.v + width).reshape(-1, r)
        best = u_final.v.reshape(-1, r).argmin(1)  # (N,)
        rows = torch.arange(len(best))
        others = lo.clone()
        others[rows, best] = math.inf
        assert (hi[rows, best] < others.min(1).values).all(), "chains' U tie within the float32 bound"
        pick = rows * r + best
        x = Bounded(x.v[pick], x.e[pick])
    g = generate(generator, x)
    hole = mask > 0.5
    y = Bounded(torch.where(hole, g.v, y_obs), torch.where(hole, g.e, 0.0))
    y = _langevin(descriptor, y, mask, rngs, params.refine_steps, params.delta, params.noise, s)
    return _measured(descriptor, y, s)


def energy_of(descriptor, images: np.ndarray, s: float) -> Bound:
    """The error scale of contract.sampling.measure of exact float32 `images`."""
    return _measured(descriptor, Bounded.exact(images), s)


def _features(h: Bounded) -> Bounded:
    """[mean, std] over H×W of h (2N, C, H, W) -> (2N, 2C) (trainer.ood.Typicality.features; std with
    Bessel's n − 1, two passes). The std's error is the variance's over 2·std."""
    n = h.v.shape[2] * h.v.shape[3]
    total = _sum(h, (2, 3))
    mean = Bounded(total.v / n, _rss(total.e**2 / n**2, U * total.mag / n))
    dev = Bounded(h.v - mean.v[..., None, None], _rss(h.e**2 + mean.e[..., None, None] ** 2, U * h.mag))
    square = Bounded(dev.v**2, _rss(4 * dev.v**2 * dev.e**2, U * dev.mag**2))
    sq = _sum(square, (2, 3))
    var = Bounded(sq.v / (n - 1), _rss(sq.e**2 / (n - 1) ** 2, U * sq.mag / (n - 1)))
    std = var.v.sqrt()
    std_e = _rss(var.e**2 / (4 * var.v.clamp_min(1e-300)), U * std)
    return Bounded(torch.cat([mean.v, std], 1), torch.cat([mean.e, std_e], 1))


def typicality_tests(module: nn.Module, images: np.ndarray) -> Bounded:
    """trainer.ood.Typicality's tests (N, 3) of exact float32 `images` with their error scales: the first
    block on the images and their negatives, the features' Mahalanobis distance as ‖(φ − μ)·W‖², its log
    (relative error e_d/d), then |log d − median|, log d(Y) − log d(−Y) and −f. The calibration's buffers are
    float32 constants both sides share."""
    n = len(images)
    y = Bounded.exact(images)
    h = forward(module.block, Bounded(torch.cat([y.v, -y.v]), torch.cat([y.e, y.e])))[-1]  # (2N, C1, H1, W1)
    phi = _features(h)  # (2N, D)
    mu, w = module.mean.double(), module.whiten.double()  # (D,), (D, D)
    c = Bounded(phi.v - mu, _rss(phi.e**2, U * (phi.v.abs() + mu.abs())))
    z = Bounded(c.v @ w, _rss(c.e**2 @ w**2, rounding(len(mu)) * (c.mag @ w.abs())))  # (2N, D)
    d = _sum(Bounded(z.v**2, _rss(4 * z.v**2 * z.e**2, U * z.mag**2)), (1,))  # (2N,)
    log_d = Bounded(d.v.log(), _rss((d.e / d.v) ** 2, 2 * ULPS * U * d.v.log().abs()))
    out = forward(module.middle, Bounded(h.v[:n], h.e[:n]))[-1]
    f = _sum(forward_layer(module.head, out), tuple(range(1, out.v.dim())))  # (N,) one output summed
    m = module.log_median.double()
    t1 = Bounded((log_d.v[:n] - m).abs(), _rss(log_d.e[:n] ** 2, U * (log_d.v[:n].abs() + m.abs())))
    t2 = Bounded(log_d.v[:n] - log_d.v[n:], _rss(log_d.e[:n] ** 2 + log_d.e[n:] ** 2, U * log_d.mag[:n]))
    return Bounded(torch.stack([t1.v, t2.v, -f.v], 1), torch.stack([t1.e, t2.e, f.e], 1))  # (N, 3)


def typicality(module: nn.Module, images: np.ndarray) -> np.ndarray:
    """The error scale (N,) of trainer.ood.Typicality's ood of exact float32 `images`: the tests'
    (typicality_tests) excesses over the calibration's centres in units of its spreads, summed and scaled."""
    t = typicality_tests(module, images)
    centre, spread = module.centre.double(), module.spread.double()
    excess = Bounded(((t.v - centre) / spread).clamp_min(0), _rss(t.e**2, U * t.mag) / spread)  # 1-Lipschitz
    total = _sum(excess, (1,))
    scale = module.scale.double()
    return (_rss(total.e**2, U * total.mag) / scale).numpy()


# float64 sums of ‖Y‖²: squares of float32 values are exact in float64, then one rounding of 2⁻⁵³ per term
# (784 to 12,288 of them) and the quotient and the difference: under 1e-12 of |E| in all
FLOAT64_SUMS = 1e-12
# an 8-bit PNG pixel against its float32 value: half a grey level (rint), plus float32 rounding in
# contract.codec's (y + 1)·127.5 and p / 127.5 − 1, each done twice on the way (4u and 3u)
PNG_ERROR = 0.5 / 127.5 + 7 * U


def energy_tolerance(f_tolerance: np.ndarray, energy: np.ndarray, casts: int) -> np.ndarray:
    """How far two E = ‖Y‖²/(2s²) − f of the same float32 Y may be apart when their f are within
    `f_tolerance`: that, plus E's rounding to float32 (u·|E| on each of the `casts` sides that cast) and the
    float64 sums."""
    return f_tolerance + (casts * U + FLOAT64_SUMS) * np.abs(energy)


def assert_samples_within(got, want, bound: Bound) -> None:
    """Two samplers' Samples (images, f and E) within `tolerance` of each other."""
    for name in ("images", "score", "energy"):
        assert_within(getattr(got, name), getattr(want, name), tolerance(getattr(bound, name)), name)


def assert_fine(bound: Bound, score: np.ndarray, delta: float) -> None:
    """The tolerance is fine enough to mean something: below half a Langevin step's noise δ·|U| on the
    images (a lost or doubled step shows) and a tenth of |f| (its sign and size show)."""
    images, f = tolerance(bound.images).max(), tolerance(bound.score)
    assert images < delta / 2, f"image tolerance {images:.3g} >= δ/2"
    assert (f < np.abs(score) / 10).all(), f"f tolerance {f} against |f| {score}"


def assert_within(got, want, bound, what: str) -> None:
    """|got − want| <= bound elementwise, saying where the worst excess is."""
    diff = np.abs(np.asarray(got, np.float64) - np.asarray(want, np.float64))
    ratio = diff / np.maximum(bound, 1e-300)
    worst = np.unravel_index(np.argmax(ratio), ratio.shape)
    where = tuple(int(i) for i in worst)
    excess = f"{what}: |difference| {diff[worst]:.3g} > bound {bound[worst]:.3g} at {where}"
    assert (diff <= bound).all(), excess
