"""How `--infer-latent`'s step size η behaves on a trained run's own chains: mean U(X) after each step.

Reproduces the table of docs/training.md, "Latent inference step".

    .venv/bin/python experiments/latent_step.py runs/demo/checkpoint.pt \
        --latent-step-sizes 0.1,0.05,0.02,0.01,0.005

What it measures is what step 3 of `cooperative_iteration` does: fresh drafts g(X̂) of M̃ chains (the
generator in training mode, batch statistics, as in training), l descriptor Langevin steps to Ỹ, then
`--latent-steps` latent Langevin steps on X̂ towards Ỹ for each η, from the same X̂, Ỹ and noise seed. U is
the per-image energy ‖Ỹ − g(X)‖²/(2σ²) + ‖X‖²/2 (per-image sums, not the official code's batch means: why
its η = 0.1 is too large here). Prints one table row per η (mean U at steps 0..K) and the η with the lowest
final U that never rose above its start.
"""

from __future__ import annotations

import argparse
import sys

import torch
from coopnets.trainer import coop
from coopnets.trainer.checkpoint import load_checkpoint
from coopnets.trainer.config import TrainConfig
from coopnets.trainer.langevin import infer_latent_chain, latent_energy, revise, torch_noise


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("checkpoint")
    p.add_argument(
        "--latent-step-sizes",
        "--etas",
        default="0.1,0.05,0.02,0.01,0.005",
        help="values of η (--etas: its name before)",
    )
    p.add_argument("--steps", type=int, default=0, help="latent steps (0 = the run's --latent-steps)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)

    state = load_checkpoint(args.checkpoint)
    config = TrainConfig(**{**state["config"], "device": "cpu", "amp": "none"})
    run = coop.build_run(config)
    coop.restore_run(run, state)
    steps = args.steps or config.latent_steps
    g, f = run.generator.train(), run.descriptor
    rng = torch.Generator().manual_seed(args.seed)
    x0 = torch.randn(config.num_chains, config.latent_dim, generator=rng)  # (M̃, d)
    with torch.no_grad():
        y_draft = g(x0)  # (M̃, C, H, W)
    y_rev = revise(f, y_draft, config.langevin_steps, config.delta, config.s, torch_noise(rng))
    print(f"{args.checkpoint}: iteration {state['iteration']}, {config.num_chains} chains, σ {config.sigma}")
    print(f"| η | {' | '.join(f'U step {t}' for t in range(steps + 1))} |")
    print("|---|" + "---:|" * (steps + 1))
    best = None
    for latent_step_size in [float(e) for e in args.latent_step_sizes.split(",")]:
        noise = torch_noise(torch.Generator().manual_seed(args.seed + 1))
        us = [latent_energy(g, x0, y_rev, None, config.sigma).mean().item()]
        with torch.no_grad():
            for x in infer_latent_chain(g, x0, y_rev, None, steps, latent_step_size, config.sigma, noise):
                us.append(latent_energy(g, x, y_rev, None, config.sigma).mean().item())
        print(f"| {latent_step_size:g} | {' | '.join(f'{u:.1f}' for u in us)} |")
        stable = max(us[1:]) <= us[0]  # never above the start (the chain noise makes single steps jitter)
        if stable and (best is None or us[-1] < best[1]):
            best = (latent_step_size, us[-1])
    print(f"latent_step_best={best[0] if best else 'none'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
