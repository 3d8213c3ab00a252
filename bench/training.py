"""Training speed: this trainer's cooperative iteration vs the same math done the straightforward way.

    .venv/bin/python bench/training.py [--repeats 5] [--warmup 2] [--settings tpami,default] [--threads 2]

Settings:
    tpami     the public PyTorch port's TPAMI-like CIFAR setting, same architecture layer for layer: 32×32×3
              nets (cifar32), batch 100, 144 chains, 15 Langevin steps of δ = 0.001, lr_d 0.003
    default   coop-train's defaults (mnist28, batch 32, chains = batch, 15 steps of δ = 0.002)
Cases, interleaved iteration by iteration on separate runs built from the same seed:
    trainer   trainer.coop.cooperative_iteration as coop-train runs it (Langevin asks autograd for the input
              gradient only)
    naive     the same iteration with every Langevin step doing a full backward() (weight gradients too, then
              zeroed), as FANG-Xiaolin/pytorch-CoopNets does: same math, same samples
    + each of --variants (trainer with channels-last tensors; trainer with --amp bf16)
    before    what coop-train runs here (bf16 where the CPU has it), as the trainer ran it before the
              speed-up of docs/training.md ("Speed"): the full-size layers (trainer.nets.WholeConv2d,
              WholeConvTranspose2d) as plain convolutions, the descriptor update as two passes, Langevin
              casting the weights every step
trainer and naive run in float32 (--amp none); bf16 is the trainer as `--amp bf16` runs it (the nets under
autocast, the sum of the descriptor's outputs and the Langevin arithmetic in float32), what `--amp auto` (the
default) picks on a CPU with native bfloat16; that case is always measured, so the last line is what
coop-train runs.
Data are uniform random images in [-1, 1] (speed does not depend on them). Phases: the share of the iteration
spent in descriptor Langevin (trainer.coop.revise, timed by wrapping it) and the rest (draft, both updates).
GFLOP/s: convolution and matmul FLOPs per iteration (torch.utils.flop_counter; the input-only gradient
counted as a backward() through a frozen copy of the descriptor), over the median time, and its fraction of
the fp32 peak (bf16 rows: of the bf16 peak); the same for one Langevin step alone (its FLOPs over the measured
ms per step), the number the 60%-of-peak target is about. Ends with `train_speedup_vs_naive=` (naive / what
coop-train runs by default on this machine, at the tpami setting).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent

from coopnets.trainer import coop, langevin  # noqa: E402
from coopnets.trainer.config import TrainConfig  # noqa: E402
from coopnets.trainer.grads import frozen_copy  # noqa: E402
from coopnets.trainer.nets import WholeConv2d, WholeConvTranspose2d  # noqa: E402
from timing import bf16_peak, fp32_peak, interleave, machine, table  # noqa: E402

SETTINGS = {
    "tpami": TrainConfig(arch="cifar32", channels=3, image_size=32, batch_size=100, chains=144,
                         langevin_steps=15, delta=0.001, lr_descriptor=0.003, device="cpu", amp="none"),
    "default": TrainConfig(device="cpu", amp="none"),
    "cifar10": TrainConfig(preset="cifar10", image_size=32, channels=3, lr_warmup=500, device="cpu",
                           amp="none"),
}  # fmt: skip
SETTINGS["tpami4x"] = dataclasses.replace(SETTINGS["tpami"], chains=4 * 144)  # the GPU check's larger load


def naive_score_and_grad(descriptor, y):
    """f(Y) and ∂f/∂Y by a full backward(): the weights' gradients are computed too, then thrown away."""
    with torch.enable_grad():
        y = y.detach().requires_grad_(True)
        f = descriptor(y)  # (N,)
        f.sum().backward()
    descriptor.zero_grad(set_to_none=True)
    return f.detach(), y.grad


@contextlib.contextmanager
def patched(module, name: str, value):
    old = getattr(module, name)
    setattr(module, name, value)
    try:
        yield
    finally:
        setattr(module, name, old)


class LangevinClock:
    """Wraps trainer.coop.revise to add up the seconds spent in descriptor Langevin."""

    def __init__(self):
        self.seconds = 0.0
        self._revise = coop.revise

    def __call__(self, *args, **kwargs):
        t0 = time.perf_counter()
        try:
            return self._revise(*args, **kwargs)
        finally:
            self.seconds += time.perf_counter() - t0


def two_passes(f, y_data, y_rev):
    return f(y_data), f(y_rev)


def as_before(run) -> None:
    """The full-size layers back to the plain convolutions they subclass (same parameters, same function)."""
    for net in (run.descriptor, run.generator):
        for m in net.body:
            if isinstance(m, WholeConv2d):
                m.__class__ = torch.nn.Conv2d
            elif isinstance(m, WholeConvTranspose2d):
                m.__class__ = torch.nn.ConvTranspose2d


def make_case(config: TrainConfig, variant: str, default: str = "trainer"):
    """(run, one-iteration function) for a case; every case draws the same data batch."""
    bf16 = variant == "bf16" or (variant == "before" and default == "bf16")
    run = coop.build_run(dataclasses.replace(config, amp="bf16") if bf16 else config)
    if variant == "before":
        as_before(run)
    g = torch.Generator().manual_seed(1)
    y = torch.rand(config.batch_size, *config.net_spec.image_shape, generator=g) * 2 - 1  # (N, C, H, W)
    y = y.to(run.device)
    if variant == "channels-last":
        run.descriptor.to(memory_format=torch.channels_last)
        run.generator.to(memory_format=torch.channels_last)
        y = y.contiguous(memory_format=torch.channels_last)

    def step():
        with contextlib.ExitStack() as stack:
            if variant == "naive":
                stack.enter_context(patched(langevin, "descriptor_score_and_grad", naive_score_and_grad))
            if variant == "before":
                stack.enter_context(patched(coop, "descriptor_scores", two_passes))
                stack.enter_context(patched(coop, "cast_once", lambda amp, device: contextlib.nullcontext()))
            return coop.cooperative_iteration(run, y)

    return run, step


def flops(config: TrainConfig) -> dict[str, float]:
    """Convolution/matmul FLOPs of one iteration: trainer (input-only gradients) and naive (full backward)."""
    from torch.utils.flop_counter import FlopCounterMode

    def count(fn) -> float:
        counter = FlopCounterMode(display=False)
        with counter:
            fn()
        return float(counter.get_total_flops())

    run = coop.build_run(config)
    m, k = config.num_chains, config.langevin_steps
    y = torch.zeros(m, *config.net_spec.image_shape, device=run.device)
    # autograd on a frozen copy computes only the input gradient: what the trainer's autograd.grad asks for
    step_trainer = count(lambda: naive_score_and_grad(frozen_copy(run.descriptor).to(run.device), y))
    step_naive = count(lambda: naive_score_and_grad(run.descriptor, y))
    no_langevin = dataclasses.replace(config, langevin_steps=0)
    run0 = coop.build_run(no_langevin)
    data = torch.zeros(config.batch_size, *config.net_spec.image_shape, device=run0.device)
    rest = count(lambda: coop.cooperative_iteration(run0, data))
    return {"trainer": rest + k * step_trainer, "naive": rest + k * step_naive, "step": step_trainer,
            "step_naive": step_naive}  # fmt: skip


def measure(name: str, config: TrainConfig, variants: list[str], repeats: int, warmup: int, default: str):
    """timing.interleave over the cases; each iteration also records its seconds in trainer.coop.revise."""
    langevin_s: dict[str, list[float]] = {}

    def timed(variant: str, step):
        clock = LangevinClock()
        langevin_s[variant] = []

        def run():
            clock.seconds = 0.0
            with patched(coop, "revise", clock):
                step()
            langevin_s[variant].append(clock.seconds)

        return run

    cases = {v: timed(v, make_case(config, v, default)[1]) for v in ["trainer", "naive", *variants]}
    stats = interleave(cases, repeats, warmup)
    share = {v: statistics.median(langevin_s[v][warmup:]) / st.median for v, st in stats.items()}
    return stats, share


HEADERS = [
    "setting", "case", "s/iteration (p10–p90)", "iterations/s", "vs naive", "Langevin share",
    "ms per Langevin step", "step GFLOP/s (of peak)", "iteration GFLOP/s (of peak)", "cpu/wall",
]  # fmt: skip


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--settings", default="tpami,default")
    p.add_argument("--variants", default="channels-last,before,bf16", help="extra variants ('' = none)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    return p.parse_args(argv)


def cases(args: argparse.Namespace) -> tuple[list[str], str]:
    """The variants to measure beside trainer and naive, and the case coop-train runs here by default (with
    --amp auto: bf16 on a CPU with native bfloat16), which is always among them so the last line is it."""
    variants = [v for v in args.variants.split(",") if v]
    if "bf16" in variants and args.device == "cpu" and not coop.cpu_has_bf16():
        variants.remove("bf16")
        print("bf16 case skipped: this CPU has no native bfloat16 (coop-train refuses --amp bf16 here)")
    default = "bf16" if coop.resolve_amp("auto", torch.device(args.device)) == "bf16" else "trainer"
    if default not in ["trainer", *variants]:
        variants.append(default)  # the last line is always what coop-train runs here
    return variants, default


def setting_rows(name: str, config: TrainConfig, stats: dict, share: dict, fl: dict, peaks: dict) -> list:
    """The table's rows of one setting: per case its time, speed-up over naive, Langevin share, and GFLOP/s
    of one Langevin step and of the iteration against the peak of its precision (`peaks` by case)."""
    rows, base = [], stats["naive"].median
    for v, st in stats.items():
        f = fl["naive" if v == "naive" else "trainer"]
        step_ms = share[v] * st.median / config.langevin_steps * 1e3
        step_f = fl["step_naive" if v == "naive" else "step"] / step_ms * 1e3
        of = peaks[v]
        rows.append([
            name, v, f"{st.median:.3f} ({st.p10:.3f}–{st.p90:.3f})", f"{1 / st.median:.2f}",
            f"{base / st.median:.2f}", f"{share[v]:.0%}",
            f"{step_ms:.1f}", f"{step_f / 1e9:.0f} ({step_f / of:.0%})",
            f"{f / st.median / 1e9:.0f} ({f / st.median / of:.0%})",
            f"{st.cpu_per_wall:.2f}",
        ])  # fmt: skip
        print(f"  {name} {v}: {st.median:.3f} s/iteration", flush=True)
    return rows


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    variants, default = cases(args)
    peak, how = fp32_peak()
    peak16, how16 = bf16_peak() or (0.0, "none (no native bfloat16)")
    print(f"machine: {machine()}")
    print(f"threads: torch {torch.get_num_threads()} (intra-op), torch {torch.__version__}")
    print(f"fp32 peak: {how}")
    print(f"bf16 peak: {how16}")
    print(f"coop-train's default here (--amp auto): the {default} case")
    print(f"{args.repeats} iterations per case after {args.warmup} warm-up, interleaved")
    # bf16 rows against the bf16 peak, and before too where it runs in bf16 (coop-train's default here)
    peaks = {v: peak16 if v == "bf16" or (v == "before" and default == "bf16") else peak
             for v in ["trainer", "naive", *variants]}  # fmt: skip
    rows, speedup = [], None
    for name in args.settings.split(","):
        config = dataclasses.replace(SETTINGS[name], device=args.device)
        fl = flops(config)
        stats, share = measure(name, config, variants, args.repeats, args.warmup, default)
        rows += setting_rows(name, config, stats, share, fl, peaks)
        if name == "tpami":
            speedup = stats["naive"].median / stats[default].median
    print()
    print(table(HEADERS, rows))
    if speedup is not None:
        print(f"train_speedup_vs_naive={speedup:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
