"""Named hyperparameter sets for `coop-train --preset NAME`, each with the source it comes from.

A preset replaces TrainConfig's defaults only: a `--config` file and command-line flags still override it,
and with `--resume` the checkpoint's saved config does too (the preset's name is saved with the rest, so a
resumed run keeps its values). `coop-train --preset list` prints this table.

The paper's two settings come from the TPAMI 2018 official TensorFlow code (jianwen-xie/CoopNets: the
MNIST and the scene configs share every number but the image size); the CIFAR recipe is the README of the
public PyTorch port (FANG-Xiaolin/pytorch-CoopNets), meant for a GPU; `cpu` and `cifar10` are this project's
measured settings for 2 CPU cores (docs/training.md).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Preset:
    source: str
    values: dict[str, Any]


_PAPER = dict(batch_size=100, chains=144, langevin_steps=15, delta=0.002, s=0.016, sigma=0.3,
              langevin_noise=True, lr_descriptor=0.007, lr_generator=1e-4, lr_schedule="constant",
              beta1=0.5)  # fmt: skip

PRESETS: dict[str, Preset] = {
    "paper-mnist": Preset(
        "TPAMI 2018 official code, MNIST net: batch 100, 144 chains, l 15, δ 0.002, s 0.016, σ 0.3, "
        "Adam lr 0.007 / 1e-4, β1 0.5",
        {**_PAPER, "image_size": 28, "channels": 1},
    ),
    "paper-scene": Preset(
        "TPAMI 2018 official code, scene net (64x64 RGB): the MNIST config's numbers at 64x64x3",
        {**_PAPER, "image_size": 64, "channels": 3},
    ),
    "port-cifar": Preset(
        "FANG-Xiaolin/pytorch-CoopNets README, CIFAR-10: batch 300, 900 chains, l 10, δ 0.001, no "
        "Langevin noise, Adam lr 0.003 / 1e-4 (diverged on Fashion-MNIST here: docs/training.md)",
        dict(
            image_size=32,
            channels=3,
            batch_size=300,
            chains=900,
            langevin_steps=10,
            delta=0.001,
            langevin_noise=False,
            lr_descriptor=0.003,
            lr_generator=1e-4,
            lr_schedule="constant",
            beta1=0.5,
        ),  # fmt: skip
    ),
    "cifar10": Preset(
        "this project's color setting for 2 CPU cores (docs/training.md, 'Color'): the defaults at 32x32x3 "
        "with the learning rates warmed up over 500 iterations; without the warm-up the descriptor's first "
        "Adam steps grew f from 0 to 1e8 in 12 iterations and Langevin overshot (energy gap 1800x the "
        "data's reference energy), with it the gap stayed within 2.5x (600-iteration sweep)",
        dict(image_size=32, channels=3, lr_warmup=500, iterations=15000),
    ),
    "cpu": Preset(
        "this project's default, measured on 2 CPU cores (docs/training.md): the paper's numbers at "
        "batch = chains = 32 for 3x more updates per second, on a cosine learning-rate schedule (revised "
        "FD 40.7 where the constant rate ended at 90.0), then l 10 and generator lr 2e-4 for 2800 "
        "iterations in the same wall time (revised FD 33.5 against 39.7)",
        {},  # TrainConfig's own defaults
    ),
}


def preset_values(name: str) -> dict[str, Any]:
    """The TrainConfig fields preset `name` sets; ValueError naming --preset for an unknown name."""
    if name not in PRESETS:
        raise ValueError(f"--preset {name!r}: unknown; use one of {', '.join(PRESETS)} (--preset list)")
    return dict(PRESETS[name].values)


def describe() -> str:
    """The presets, their values and sources, one block each (what `--preset list` prints)."""
    lines = []
    for name, p in PRESETS.items():
        values = " ".join(_flag(k, v) for k, v in p.values.items()) or "(the defaults)"
        lines.append(f"{name}: {values}\n    source: {p.source}")
    return "\n".join(lines)


def _flag(name: str, value: Any) -> str:
    flag = name.replace("_", "-")
    if isinstance(value, bool):
        return f"--{flag}" if value else f"--no-{flag}"
    return f"--{flag} {value}"
