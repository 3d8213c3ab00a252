"""Does an exponential moving average (EMA) of the weights give better samples at the end of a short run?

Reproduces the table of docs/training.md, "The defaults, and the measurements behind them" (l = 10, EMA).

Runs coop-train's loop (trainer.coop.train_step, the same seed, data order and schedule as
`coop-train` with the same flags, so the raw nets are the run coop-train would make) while keeping EMA copies
of the generator and of the descriptor at several decays (torch.optim.swa_utils.AveragedModel, buffers such as
BatchNorm's running statistics averaged too, with the usual warm-up decay min(d, (1 + n) / (10 + n)) so the
random initialisation washes out). At the end it writes one checkpoint per variant, which coop-eval reads:

    raw.pt        the nets as trained (what coop-train exports)
    g{d}.pt       the generator's EMA at decay d, the descriptor as trained
    gd{d}.pt      both nets' EMAs at decay d

    python experiments/ema_sweep.py --out runs/ema --threads 1             # the defaults: 2500 iterations
    for c in runs/ema/*.pt; do
        coop-eval $c --no-completion --ood-n 0 --threads 1 --out runs/ema/eval-$(basename $c .pt)
    done

Flags other than --out, --decays and --threads are coop-train's (e.g. --seed 1, --iterations 1000).
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
from pathlib import Path

import torch
from torch.optim.swa_utils import AveragedModel


def ema_fn(decay: float):
    """AveragedModel's multi_avg_fn: EMA at `decay`, warmed up over the first updates."""

    def update(averaged: list[torch.Tensor], current: list[torch.Tensor], n: torch.Tensor) -> None:
        d = min(decay, (1 + float(n)) / (10 + float(n)))
        if torch.is_floating_point(averaged[0]):
            torch._foreach_lerp_(averaged, current, 1 - d)
        else:  # BatchNorm's num_batches_tracked: take the model's
            for a, c in zip(averaged, current, strict=True):
                a.copy_(c)

    return update


def train_config(args: argparse.Namespace, rest: list[str]):
    """The TrainConfig that coop-train would resolve from the same flags (export off: the checkpoints are the
    output)."""
    from coopnets.contract.flags import Parser, add_flags
    from coopnets.trainer.config import HELP, TrainConfig, resolve_train_config

    tp = Parser(prog="ema_sweep.py")
    add_flags(tp, TrainConfig, HELP)
    flags = {k: v for k, v in vars(tp.parse_args(rest)).items() if v is not None}
    return resolve_train_config({**flags, "out": args.out, "export": False})


def train_with_emas(config, decays: list[float]):
    """coop-train's loop, every net's EMA at every decay updated after each iteration; returns the run and
    the EMAs keyed by (net, decay)."""
    from coopnets.trainer.coop import build_run, check_divergence, reference_energy, train_step
    from coopnets.trainer.data import to_tensor, training_images

    y_all = to_tensor(training_images(config))  # (N, C, H, W)
    scale = reference_energy(y_all, config.s)  # the divergence guard's unit
    run = build_run(config)
    config = run.config
    emas = {
        (net, d): AveragedModel(getattr(run, net), multi_avg_fn=ema_fn(d), use_buffers=True)
        for net in ("generator", "descriptor")
        for d in decays
    }
    start = time.perf_counter()
    while run.iteration < config.iterations:
        stats, _, _ = train_step(run, y_all)
        check_divergence(stats, config, run.iteration, scale)
        for (net, _), avg in emas.items():
            avg.update_parameters(getattr(run, net))
        if run.iteration % 100 == 0 or run.iteration == config.iterations:
            s = time.perf_counter() - start
            print(
                f"iteration {run.iteration}/{config.iterations}  {s:.0f} s  loss_g {stats.loss_g:.3g}  "
                f"gap {stats.loss_d:.3g}",
                flush=True,
            )
    return run, emas


def write_checkpoints(out: Path, run, emas: dict, decays: list[float]) -> None:
    """raw.pt, and g{d}.pt and gd{d}.pt for every decay (the module docstring's table), each with the run's
    optimizers, config and position, so that coop-eval reads them as it reads coop-train's."""
    from coopnets.trainer.checkpoint import save_checkpoint

    out.mkdir(parents=True, exist_ok=True)
    raw_g, raw_d = run.generator, run.descriptor

    def write(name: str, generator, descriptor) -> None:
        save_checkpoint(
            out / f"{name}.pt",
            descriptor=descriptor,
            generator=generator,
            opt_d=run.opt_d,
            opt_g=run.opt_g,
            config=run.config,
            iteration=run.iteration,
            train_rng=run.rng,
        )
        print(f"wrote {out / name}.pt")

    write("raw", raw_g, raw_d)
    for d in decays:
        g_ema = copy.deepcopy(emas["generator", d].module)
        d_ema = copy.deepcopy(emas["descriptor", d].module)
        write(f"g{d:g}", g_ema, raw_d)
        write(f"gd{d:g}", g_ema, d_ema)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, help="folder for the checkpoints")
    p.add_argument("--decays", default="0.99,0.995,0.999", help="comma-separated EMA decays")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    args, rest = p.parse_known_args(argv)
    decays = [float(d) for d in args.decays.split(",")]
    if args.threads:
        torch.set_num_threads(args.threads)
    run, emas = train_with_emas(train_config(args, rest), decays)
    write_checkpoints(Path(args.out), run, emas, decays)
    return 0


if __name__ == "__main__":
    sys.exit(main())
