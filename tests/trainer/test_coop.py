"""The cooperative iteration against a hand computation, resume equivalence, the divergence guard.

Tiny runs: the real 28x28 nets, batch 4, 2 Langevin steps, fixed seeds.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from coopnets.trainer.config import TrainConfig
from coopnets.trainer.coop import (
    CHECKPOINT,
    DivergenceError,
    IterStats,
    batch_indices,
    build_run,
    check_divergence,
    cooperative_iteration,
    descriptor_scores,
    lr_factor,
    reference_energy,
    train,
)
from float32_bound import U64, gamma
from float32_bound import U as U32
from torch import nn

TINY = dict(
    batch_size=4,
    langevin_steps=2,
    iterations=3,
    log_every=1,
    sample_every=2,
    ckpt_every=2,
    export=False,
    lr_schedule="constant",  # the hand computations and the resume to another --iterations below need it
    amp="none",  # float32: the hand computations below are exact; --amp auto would pick bf16 on some CPUs
)

# lr_factor's absolute error in float64 (u = 2⁻⁵³): cos's argument fl(π)·t is off by <= (2π + 1.1)·u
# (t's rounding times π, fl(π)'s 1.1u, the product's), which moves cos by as much; cos itself <= 1 ulp (2u),
# 1 + cos 2u, × ½ exact (halving all that), 1 − floor, its product, + floor, × warm-up and the expected
# constant u each: <= 11u in all
SCHEDULE_ATOL = 16 * U64


def tiny_data(n: int = 12, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(n, 1, 28, 28), dtype=np.uint8)  # (N, 1, 28, 28)


def test_one_iteration_matches_hand_computation():
    cfg = TrainConfig(**TINY, lr_descriptor=0.01).validate()
    run = build_run(cfg)
    f0, g0 = copy.deepcopy(run.descriptor), copy.deepcopy(run.generator)
    rng = torch.Generator().manual_seed(0)
    rng.set_state(run.rng.get_state())
    y_data = torch.rand(4, 1, 28, 28, generator=torch.Generator().manual_seed(1)) * 2 - 1  # (N, C, H, W)

    stats, y_draft, y_rev = cooperative_iteration(run, y_data)

    x, y = langevin_by_hand(cfg, f0, g0, rng, y_draft, y_rev)
    grads_d, f_data0, f_rev0 = check_descriptor_gradient(run, f0, y_data, y_rev, stats)
    check_logged_statistics(cfg, stats, (y_data, f_data0), (y_rev, f_rev0), y_draft)
    # ... and the update moved f(data) up relative to f(revised)
    with torch.no_grad():
        gap_before = (f0(y_data).mean() - f0(y).mean()).item()
        gap_after = (run.descriptor(y_data).mean() - run.descriptor(y).mean()).item()
    assert gap_after > gap_before
    check_generator_gradient(cfg, run, g0, x, y, y_rev, stats)

    # Adam's first step is lr · g / (|g| + eps) = lr · sign(g) · (1 − eps / (|g| + eps)) for every weight:
    # within eps / 1e-3 = 1e-5 of lr · sign(g) where |g| > 1e-3, plus float32 rounding: at most 12 roundings
    # of the step (g², its product by 1 − β2 and that constant, the square root, the bias corrections and
    # their casts, + eps, the quotient, lr / (1 − β1) and its product, this difference, lr's cast) and the
    # new weight's own rounding, u·|weight| (u = 2⁻²⁴)
    first = next(run.descriptor.parameters())
    before = next(f0.parameters()).detach()
    step = before - first.detach()
    mask = grads_d[0].abs() > 1e-3
    assert mask.any()
    rtol = run.opt_d.defaults["eps"] / 1e-3 + 12 * U32
    atol = U32 * (before.abs().max().item() + cfg.lr_descriptor)
    torch.testing.assert_close(step[mask], cfg.lr_descriptor * grads_d[0].sign()[mask], rtol=rtol, atol=atol)


def langevin_by_hand(cfg, f0, g0, rng, y_draft, y_rev):
    """The same latents and noise as the iteration, the Langevin update written out: checks the draft and
    the revised images; returns the latents X (M, d) and the revised images by hand (M, C, H, W)."""
    x = torch.randn(4, 100, generator=rng)  # (M, d)
    y = g0(x).detach()
    # bit for bit: the same float32 operations on the same inputs, on as many threads, sum in the same order
    torch.testing.assert_close(y, y_draft, rtol=0, atol=0)
    for _ in range(2):
        y.requires_grad_(True)
        (grad_f,) = torch.autograd.grad(f0(y).sum(), y)
        u = torch.randn(y.shape, generator=rng)
        y = (y - 0.5 * cfg.delta**2 * (y / cfg.s**2 - grad_f) + cfg.delta * u).detach()
    # bit for bit: trainer.langevin's step is this expression, its gradient this autograd call, and the noise
    # the same draws from the same generator, so no rounding differs
    torch.testing.assert_close(y, y_rev, rtol=0, atol=0)
    return x, y


def check_descriptor_gradient(run, f0, y_data, y_rev, stats):
    """The descriptor's gradient is that of mean f(Ỹ) − mean f(Y) with respect to α, at the trainer's Ỹ;
    returns it and the scores f(Y) (N,), f(Ỹ) (M̃,) under the nets before the update.

    A parameter's gradient is a sum over the batch and the layers of float32 products; scored in another
    batching (two batches of 4, not the trainer's one of 8) it is added in another order, off by float32
    rounding that no fraction of the gradient bounds where an element is near 0, and that changes with the
    CPU's kernels. Scored as the trainer scores them (descriptor_scores), both run the same float32
    operations on the same inputs, and equal bits are the bound."""
    f_data0, f_rev0 = descriptor_scores(f0, y_data, y_rev)  # (N,), (M̃,)
    loss_d = f_rev0.mean() - f_data0.mean()
    grads_d = torch.autograd.grad(loss_d, list(f0.parameters()))
    for p, g in zip(run.descriptor.parameters(), grads_d, strict=True):
        torch.testing.assert_close(p.grad, g, rtol=0, atol=0)  # the same operations: equal bits (above)
    assert stats.loss_d == loss_d.item()  # a difference of means, near 0 for the official init
    return grads_d, f_data0, f_rev0


def check_logged_statistics(cfg, stats, data, revised, y_draft) -> None:
    """The logged statistics: E(Y) = ‖Y‖²/(2s²) − f(Y) under the nets before the update (`data` and
    `revised` are (images, f) pairs), and Langevin's mean move ‖Ỹ − Ŷ‖, here in float64 from the same
    float32 Y and f. The trainer's float32 value is, per image, a sum of CHW squares, two scalings and the
    subtraction of f (or a difference and a square root, which halves a relative error), then a mean over
    the batch: at most CHW + 8 roundings touch each term, so |error| ≤ γ_{CHW+8} · Σ|terms| with u = 2^-24
    (Higham, Eq. 3.5), whatever order the CPU sums in."""
    (y_data, _), (y_rev, _) = data, revised
    chw = y_data[0].numel()
    gamma_n = gamma(chw + 8)
    for logged, (y_, f_) in ((stats.energy_data, data), (stats.energy_revised, revised)):
        half_sq = y_.double().pow(2).sum((1, 2, 3)) / (2 * cfg.s**2)  # (N,)
        want = (half_sq - f_.detach().double()).mean().item()
        assert abs(logged - want) <= gamma_n * (half_sq + f_.detach().double().abs()).mean().item()
    moved = (y_rev.double() - y_draft.double()).flatten(1).norm(dim=1).mean().item()
    assert abs(stats.displacement - moved) <= gamma_n * moved


def check_generator_gradient(cfg, run, g0, x, y, y_rev, stats) -> None:
    """The generator's gradient: ∂/∂β of mean ‖Ỹ − g(X̂)‖²/(2σ²), train-mode BN as in the iteration. The
    loss is written as the trainer writes it, so the two backward passes run the same float32 operations
    and agree bit for bit. (The biases before BatchNorm have a zero gradient in exact arithmetic: rounding
    noise, which any other order of the same sums changes.)"""
    g_out = g0(x)  # (M, C, H, W)
    loss_g = (y_rev - g_out).pow(2).flatten(1).sum(1).mean() / (2 * cfg.sigma**2)
    (grad_out, *grads_g) = torch.autograd.grad(loss_g, [g_out, *g0.parameters()])
    for p, g in zip(run.generator.parameters(), grads_g, strict=True):
        torch.testing.assert_close(p.grad, g, rtol=0, atol=0)  # the same operations: equal bits (above)
    assert stats.loss_g == loss_g.item()
    # That loss's derivative is −(Ỹ − g(X̂)) / (M σ²), element by element: each side is the same float32
    # residual times a scale, with at most 3 roundings each (the scale to float32, its reciprocal, the
    # product), so they differ by at most 2·γ_3 of the value, never more, wherever it is near 0.
    resid = (y_rev - g_out).detach()
    by_hand = -resid / cfg.sigma**2 / 4
    gamma3 = gamma(3)
    assert ((grad_out - by_hand).abs() <= 2 * gamma3 / (1 - gamma3) * by_hand.abs()).all()
    # ... and a small step against the trainer's gradient moves g(X̂) toward the revised images
    # (a step sized to lower the loss by ~1% to first order: Adam's sign steps are too coarse to show it)
    probe = copy.deepcopy(g0)
    with torch.no_grad():
        grad_sq = sum(p.grad.pow(2).sum() for p in run.generator.parameters())
        eps = 0.01 * stats.loss_g / grad_sq
        for q, p in zip(probe.parameters(), run.generator.parameters(), strict=True):
            q -= eps * p.grad
        assert (y - probe(x)).pow(2).sum() < 0.995 * resid.pow(2).sum()


def test_batch_indices_are_an_epoch_without_replacement():
    seen = torch.cat([batch_indices(i, 12, 4, seed=3) for i in range(3)])
    assert sorted(seen.tolist()) == list(range(12))
    assert torch.equal(batch_indices(1, 12, 4, seed=3), batch_indices(1, 12, 4, seed=3))
    assert not torch.equal(
        batch_indices(3, 12, 4, seed=3), batch_indices(0, 12, 4, seed=3)
    )  # next epoch reshuffles


def _params(run):
    return {
        **{f"d.{k}": v for k, v in run.descriptor.state_dict().items()},
        **{f"g.{k}": v for k, v in run.generator.state_dict().items()},
    }


def test_the_constant_schedule_is_the_papers_and_cosine_falls_from_one_to_the_floor():
    constant = TrainConfig(iterations=11, lr_schedule="constant")
    assert [lr_factor(constant, i) for i in range(11)] == [1.0] * 11
    cosine = TrainConfig(iterations=11, lr_schedule="cosine", lr_floor=0.1)
    factors = [lr_factor(cosine, i) for i in range(11)]
    # the ends are exact in float64: cos(0) = 1, and cos(fl(π)) rounds to −1 (fl(π) is 1.2e-16 from π), so
    # 1 + cos is 0 and the factor is the floor itself
    assert factors[0] == 1.0 and factors[-1] == 0.1
    assert factors[5] == pytest.approx(0.55, rel=0, abs=SCHEDULE_ATOL)
    assert all(a > b for a, b in zip(factors[:-1], factors[1:], strict=True))
    # --lr-decay-iters: the same curve over 21 iterations, whatever --iterations says; the floor after it.
    # Bit for bit: 2i / 20 and i / 10 are one rational, which IEEE division rounds to the same float64 t,
    # and the rest is the same arithmetic on t
    longer = TrainConfig(iterations=5, lr_schedule="cosine", lr_floor=0.1, lr_decay_iters=21)
    assert [lr_factor(longer, 2 * i) for i in range(11)] == factors
    assert lr_factor(longer, 40) == 0.1  # t = 1: the floor, exactly as above


def test_a_cosine_run_steps_both_optimisers_at_the_scheduled_rates(tmp_path):
    config = TrainConfig(**{**TINY, "lr_schedule": "cosine"}, out=str(tmp_path / "r"), lr_floor=0.2)
    run = train(config, tiny_data(), progress=False)
    last = lr_factor(config, config.iterations - 1)  # the factor of the final update
    assert last == 0.2  # t = 1: 1 + cos(fl(π)) is exactly 0 in float64, the factor exactly the floor
    # the trainer sets lr · factor, this float64 product: equal bits
    assert run.opt_d.param_groups[0]["lr"] == config.lr_descriptor * last
    assert run.opt_g.param_groups[0]["lr"] == config.lr_generator * last


@pytest.mark.parametrize(
    "field, value, flag", [("lr_schedule", "linear", "--lr-schedule"), ("lr_floor", 0.0, "--lr-floor")]
)
def test_bad_schedules_are_refused_naming_the_flag(field, value, flag):
    with pytest.raises(ValueError, match=flag):
        TrainConfig(**{field: value}).validate()


def test_resume_is_bit_identical(tmp_path):
    data = tiny_data()
    straight = train(TrainConfig(**{**TINY, "iterations": 3}, out=str(tmp_path / "a")), data, progress=False)
    stopped = TrainConfig(**{**TINY, "iterations": 2}, out=str(tmp_path / "b"))
    train(stopped, data, progress=False)
    resumed = train(
        TrainConfig(**{**TINY, "iterations": 3}, out=str(tmp_path / "b")), data, resume=True, progress=False
    )
    assert resumed.iteration == straight.iteration == 3
    a, b = _params(straight), _params(resumed)
    for key in a:
        assert torch.equal(a[key], b[key]), key
    for opt_a, opt_b in [(straight.opt_d, resumed.opt_d), (straight.opt_g, resumed.opt_g)]:
        for sa, sb in zip(opt_a.state.values(), opt_b.state.values(), strict=True):
            assert torch.equal(sa["exp_avg"], sb["exp_avg"])
    for name in (
        "config.json",
        CHECKPOINT,
        "metrics.jsonl",
        "samples/iter_000002.png",
        "samples/iter_000003.png",
    ):
        assert (tmp_path / "b" / name).is_file(), name


def test_seeded_runs_are_reproducible(tmp_path):
    data = tiny_data()
    cfg = dict(TINY, iterations=1)
    one = train(TrainConfig(**cfg, out=str(tmp_path / "1")), data, progress=False)
    two = train(TrainConfig(**cfg, out=str(tmp_path / "2")), data, progress=False)
    other = train(TrainConfig(**cfg, seed=1, out=str(tmp_path / "3")), data, progress=False)
    p1, p2, p3 = _params(one), _params(two), _params(other)
    assert all(torch.equal(p1[k], p2[k]) for k in p1)
    assert not all(torch.equal(p1[k], p3[k]) for k in p1)


def _stats(**kw) -> IterStats:
    base = dict(
        loss_d=-10.0,
        loss_g=1.0,
        f_data=5.0,
        f_revised=-5.0,
        energy_data=1.0,
        energy_revised=2.0,
        displacement=0.1,
        max_abs=0.9,
    )
    return IterStats(**{**base, **kw})


FASHION_SCALE = 1.05e6  # reference_energy of Fashion-MNIST's train split at s = 0.016
CIFAR_SCALE = 1.54e6  # of CIFAR-10's


@pytest.mark.parametrize(
    ("field", "value", "words"),
    [
        ("loss_d", float("nan"), "not finite"),
        ("max_abs", float("inf"), "not finite"),
        ("max_abs", 50.0, "revised samples reached"),
        ("loss_d", -3e9, "energy gap"),
    ],
)
def test_divergence_guard_watches_magnitudes(field, value, words):
    cfg = TrainConfig()
    check_divergence(_stats(), cfg, 7, FASHION_SCALE)  # a healthy iteration passes
    with pytest.raises(DivergenceError, match=words):
        check_divergence(_stats(**{field: value}), cfg, 7, FASHION_SCALE)


def test_reference_energy_is_the_mean_of_the_reference_term():
    y = torch.full((2, 3, 4, 4), 0.5)  # ‖Y‖² = 48 · 0.25 = 12 per image
    y[1] = -1.0  # ‖Y‖² = 48
    # exact: squares of ±0.5 and ±1, sums of small multiples of 1/4 and the divisions by 2 and 2s² = 1/2 are
    # all representable in float64, so no operation rounds
    assert reference_energy(y, s=0.5) == (12 + 48) / 2 / (2 * 0.25)


@pytest.mark.parametrize(
    ("gap", "scale", "stops"),
    [
        # gaps at which the absolute guard (1e8) stopped diverging Fashion-MNIST runs still stop them
        (1.2e8, FASHION_SCALE, True),
        (-2e9, FASHION_SCALE, True),
        (
            1.51e9,
            CIFAR_SCALE,
            True,
        ),  # the color defaults before --lr-warmup: iteration 11, Langevin overshooting
        # a healthy color run: f ≈ 1e7 with gaps of a few 1e7 (coop-train --preset cifar10, metrics.jsonl)
        (4e7, CIFAR_SCALE, False),
        (9.9e7, FASHION_SCALE, False),
    ],
)
def test_energy_gap_guard_is_relative_to_the_datas_reference_energy(gap, scale, stops):
    cfg = TrainConfig()
    if stops:
        with pytest.raises(DivergenceError, match="reference energy"):
            check_divergence(_stats(loss_d=gap), cfg, 11, scale)
    else:
        check_divergence(_stats(loss_d=gap), cfg, 11, scale)
    # the same gap is judged by its ratio to the scale: ten times the scale passes what one time stops
    if stops:
        check_divergence(_stats(loss_d=gap), cfg, 11, abs(gap) / cfg.guard_gap_ratio * 1.01)


def test_warmup_rises_linearly_then_follows_the_schedule():
    constant = TrainConfig(iterations=100, lr_schedule="constant", lr_warmup=4)
    assert [lr_factor(constant, i) for i in range(6)] == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]
    cosine = TrainConfig(iterations=11, lr_schedule="cosine", lr_floor=0.1, lr_warmup=2)
    plain = TrainConfig(iterations=11, lr_schedule="cosine", lr_floor=0.1)
    assert lr_factor(cosine, 0) == 0.5 * lr_factor(plain, 0)  # warm-up 1/2 times the same float64: exact
    assert [lr_factor(cosine, i) for i in range(1, 11)] == [lr_factor(plain, i) for i in range(1, 11)]


def test_the_absolute_gap_guard_still_applies_where_a_config_sets_it():
    """Runs saved with the absolute guard (guard_energy_gap 1e8) resume with it."""
    cfg = TrainConfig(guard_energy_gap=1e8, guard_gap_ratio=1e6)
    check_divergence(_stats(loss_d=9e7), cfg, 3, FASHION_SCALE)
    with pytest.raises(DivergenceError, match="--guard-energy-gap"):
        check_divergence(_stats(loss_d=1.1e8), cfg, 3, FASHION_SCALE)


def test_divergence_stops_and_keeps_last_good_checkpoint(tmp_path):
    from coopnets.trainer.checkpoint import load_checkpoint

    data = tiny_data()
    train(TrainConfig(**{**TINY, "iterations": 2}, out=str(tmp_path)), data, progress=False)
    before = (tmp_path / CHECKPOINT).read_bytes()
    with pytest.raises(DivergenceError, match="iteration 3"):
        train(
            TrainConfig(
                **{**TINY, "iterations": 4, "guard_gap_ratio": 1e-12, "ckpt_every": 1}, out=str(tmp_path)
            ),
            data,
            resume=True,
            progress=False,
        )
    assert (tmp_path / CHECKPOINT).read_bytes() == before
    assert load_checkpoint(tmp_path / CHECKPOINT)["iteration"] == 2


# (unit roundoff, the smallest normal number): a value rounds by u relative, or, below the normal range
# (gradual underflow or flushed to zero), by up to the smallest normal number absolute
BF16, FP16, FP32 = (2.0**-8, 2.0**-126), (2.0**-11, 2.0**-14), (U32, 2.0**-126)


def _affine(layer: nn.Module, x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None) -> torch.Tensor:
    if isinstance(layer, nn.Linear):
        return F.linear(x, w, b)
    return F.conv2d(x, w, b, layer.stride, layer.padding)


def score_error(desc, y: torch.Tensor, body: tuple[float, float], head: tuple[float, float]) -> torch.Tensor:
    """A bound (N,) on |f̂ − f| where f̂ runs the descriptor's hidden layers rounding as `body` and its last
    layer as `head` (BF16, FP16 or FP32), and sums the 100 outputs in float32.

    Worst case, in any summation order (Higham, Eq. 3.5): each layer's input (the images; after them the
    previous layer's rounded output), weights and bias are rounded once (u·Σ|w·x| + u·|b|), the products
    are accumulated in float32 (γ_n(2⁻²⁴) of the same, n the fan-in + 1), the output is rounded once (u
    relative); a leaky ReLU passes its input's error on (1-Lipschitz) and rounds its product by the slope.
    The errors are carried through |W| in float64, to first order: the products of two relative rounding
    errors (<= u² = 1.5e-5 of these terms for bfloat16) are left out."""
    x = y.double()
    err = body[0] * x.abs() + body[1]
    for layer in desc.body:
        u, tiny = head if layer is desc.body[-1] else body
        if isinstance(layer, nn.LeakyReLU):
            x = layer(x)
            err = err + u * x.abs() + tiny
            continue
        w, b = layer.weight.detach().double(), layer.bias.detach().double()
        n = w[0].numel() + 1
        mag = _affine(layer, x.abs(), w.abs(), b.abs())  # Σ|w·x| + |b|
        x = _affine(layer, x, w, b)
        err = _affine(layer, err, w.abs(), None) + (u + gamma(n)) * mag + u * x.abs() + tiny
    n = x[0].numel()
    return err.flatten(1).sum(1) + gamma(n) * x.abs().flatten(1).sum(1)  # the float32 sum


def test_autocast_keeps_the_descriptors_large_outputs_finite():
    """f of a trained descriptor lives beyond float16's 65504 (1.25e7 measured at iteration 30): under fp16
    autocast the last layer and the sum stay float32, so f stays finite and close to the float32 value,
    where autocasting the whole net overflows."""
    from coopnets.trainer.nets import Descriptor, NetSpec
    from coopnets.trainer.precision import Autocast

    desc = Descriptor(NetSpec())
    with torch.no_grad():
        desc.body[-1].weight.mul_(100)
        desc.body[-1].bias.fill_(7e4)  # each of the 100 outputs beyond 65504, f about 7e6
    y = torch.rand(4, 1, 28, 28, generator=torch.Generator().manual_seed(0)) * 2 - 1  # (4, 1, 28, 28)
    exact = desc(y)  # (4,) float32
    assert exact.abs().min() > 65504
    with torch.autocast("cpu", dtype=torch.float16):
        whole = desc(y)
    assert not torch.isfinite(whole.float()).all()  # the failure the split prevents
    split = Autocast(desc, torch.float16, "cpu")(y)
    assert split.dtype == torch.float32 and torch.isfinite(split).all()
    # each side within score_error of the exact f; the float16 hidden layers reach f only through the float32
    # last layer, which keeps the biases of 7e4 exact: the bound is ~1e-3 of f
    assert_close_to(split, exact, score_error(desc, y, FP16, FP32) + score_error(desc, y, FP32, FP32))
    # bfloat16 has float32's range: the whole body runs in bf16 (its last layer too), only the sum is float32;
    # the biases and the outputs round to 8 bits, 2u = 2⁻⁷ of f
    bf16 = Autocast(desc, torch.bfloat16, "cpu")(y)
    assert bf16.dtype == torch.float32 and torch.isfinite(bf16).all()
    assert_close_to(bf16, exact, score_error(desc, y, BF16, BF16) + score_error(desc, y, FP32, FP32))


def assert_close_to(got: torch.Tensor, exact: torch.Tensor, bound: torch.Tensor) -> None:
    """|got − exact| <= bound per image, and the bound fine enough to mean close: under 2⁻⁶ of |f|, twice the
    2u = 2⁻⁷ that bfloat16's roundings of the last layer's biases and outputs alone allow."""
    assert (bound < exact.abs() * 2.0**-6).all(), (bound, exact)
    diff = (got.double() - exact.double()).abs()
    assert (diff <= bound).all(), (diff, bound)


def test_amp_auto_resolves_to_what_this_cpu_runs_natively_and_is_recorded(tmp_path):
    import json

    from coopnets.trainer.coop import cpu_has_bf16

    ran = "bf16" if cpu_has_bf16() else "none"
    assert TrainConfig().amp == "auto"
    run = build_run(TrainConfig(**{**TINY, "amp": "auto"}, device="cpu"))
    assert run.config.amp == ran
    config = TrainConfig(**{**TINY, "amp": "auto", "iterations": 1}, device="cpu", out=str(tmp_path / "r"))
    train(config, tiny_data(), progress=False)
    assert json.loads((tmp_path / "r" / "config.json").read_text())["amp"] == ran  # what ran, not "auto"


def test_amp_modes_this_cpu_cannot_run_fast_are_refused_with_one_line():
    from coopnets.trainer.coop import cpu_has_bf16

    with pytest.raises(ValueError, match="--amp fp16: float16 autocast is for CUDA"):
        build_run(TrainConfig(**{**TINY, "amp": "fp16"}, device="cpu"))
    if cpu_has_bf16():
        assert build_run(TrainConfig(**{**TINY, "amp": "bf16"}, device="cpu")).config.amp == "bf16"
    else:
        with pytest.raises(ValueError, match="--amp bf16: this CPU has no native bfloat16"):
            build_run(TrainConfig(**{**TINY, "amp": "bf16"}, device="cpu"))
