"""TrainConfig: the one configuration of `coop-train`, its command-line flags and its TOML file.

Precedence, lowest first: the dataclass defaults below, `--config FILE.toml` (top-level keys = field
names), then command-line flags. Flags are generated from the fields (improved-diffusion's
`add_dict_to_argparser` style): `lr_descriptor` is `--lr-descriptor` (or `--lr_descriptor`), booleans are
`--langevin-noise / --no-langevin-noise`.
The resolved config is saved as RUN_DIR/config.json, in every checkpoint and in the bundle manifest.

Defaults are the paper's (TPAMI 2018, MNIST net) except where docs/training.md records a measured reason.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from trainer.nets import ARCH_FOR_SIZE, ARCHS, NetSpec, arch_for_size, image_size

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

DATASET_KINDS = ("fashion-mnist", "digits", "folder:PATH", "npz:PATH")

HELP = {
    "dataset": "fashion-mnist | digits | folder:PATH | npz:PATH",
    "data_dir": "folder with the Fashion-MNIST idx(.gz) files (default: Debian's, then ~/.cache/coopnets)",
    "max_images": "use only the first N training images (0 = all)",
    "arch": "auto (from --image-size) | mnist28 | cifar32 | scene64",
    "chains": "M̃, Langevin chains (generator drafts) per iteration; 0 = batch size",
    "langevin_steps": "l, descriptor Langevin steps per iteration",
    "delta": "δ, descriptor Langevin step size",
    "s": "reference distribution standard deviation",
    "sigma": "σ, generator noise standard deviation",
    "infer_latent": "latent Langevin inference of X̂ on the revised images (off in the paper)",
    "device": "auto | cpu | cuda",
    "amp": "none | bf16 | fp16 autocast for the nets (CUDA only; Langevin arithmetic stays float32)",
    "guard_max_abs": "divergence guard: stop if a revised pixel leaves [-x, x]",
    "guard_energy_gap": "divergence guard: stop if |mean f(revised) - mean f(data)| exceeds this",
    "export": "export RUN_DIR/bundle at the end",
    "out": "run directory (config, checkpoints, logs, samples, bundle)",
}


@dataclass(frozen=True)
class TrainConfig:
    # data
    dataset: str = "fashion-mnist"
    data_dir: str = ""
    max_images: int = 0
    # nets
    arch: str = "auto"
    channels: int = 1
    image_size: int = 28
    latent_dim: int = 100
    # cooperative learning
    iterations: int = 1000
    batch_size: int = 32
    chains: int = 0
    langevin_steps: int = 15
    delta: float = 0.002
    s: float = 0.016
    sigma: float = 0.3
    langevin_noise: bool = True
    lr_descriptor: float = 0.007
    lr_generator: float = 1e-4
    beta1: float = 0.5
    infer_latent: bool = False
    latent_steps: int = 10
    latent_step_size: float = 0.1
    # run
    seed: int = 0
    device: str = "auto"
    amp: str = "none"
    log_every: int = 10
    sample_every: int = 250
    ckpt_every: int = 250
    guard_max_abs: float = 10.0
    guard_energy_gap: float = 1e8
    export: bool = True
    out: str = "runs/coop"

    # ---- derived -------------------------------------------------------------------------------------------
    @property
    def num_chains(self) -> int:
        return self.chains or self.batch_size

    @property
    def resolved_arch(self) -> str:
        return arch_for_size(self.image_size) if self.arch == "auto" else self.arch

    @property
    def net_spec(self) -> NetSpec:
        return NetSpec(arch=self.resolved_arch, channels=self.channels, latent_dim=self.latent_dim)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    # ---- validation ----------------------------------------------------------------------------------------
    def validate(self) -> TrainConfig:
        """ValueError naming the field and how to fix it; returns self so it chains."""

        def bad(name: str, why: str) -> None:
            raise ValueError(f"--{name.replace('_', '-')}: {why}")

        for name in ("delta", "s", "sigma", "lr_descriptor", "lr_generator", "latent_step_size"):
            if not getattr(self, name) > 0:
                bad(name, f"must be > 0, got {getattr(self, name)}")
        for name in (
            "iterations",
            "batch_size",
            "channels",
            "latent_dim",
            "log_every",
            "sample_every",
            "ckpt_every",
        ):
            if getattr(self, name) < 1:
                bad(name, f"must be >= 1, got {getattr(self, name)}")
        for name in ("chains", "langevin_steps", "latent_steps", "max_images"):
            if getattr(self, name) < 0:
                bad(name, f"must be >= 0, got {getattr(self, name)}")
        if not 0 <= self.beta1 < 1:
            bad("beta1", f"must be in [0, 1), got {self.beta1}")
        if self.image_size not in ARCH_FOR_SIZE:
            bad("image_size", f"{self.image_size} is not supported: use one of {sorted(ARCH_FOR_SIZE)}")
        if self.arch != "auto":
            if self.arch not in ARCHS:
                bad("arch", f"unknown architecture {self.arch!r}: use auto or one of {', '.join(ARCHS)}")
            if image_size(self.arch) != self.image_size:
                bad(
                    "arch",
                    f"{self.arch} makes {image_size(self.arch)}px images but --image-size is "
                    f"{self.image_size}: use --arch auto",
                )
        kind = self.dataset.split(":", 1)[0]
        if self.dataset not in ("fashion-mnist", "digits") and kind not in ("folder", "npz"):
            bad("dataset", f"unknown dataset {self.dataset!r}: use one of {', '.join(DATASET_KINDS)}")
        if kind in ("folder", "npz") and not self.dataset.split(":", 1)[1]:
            bad("dataset", f"{kind}: needs a path, e.g. {kind}:/data/images")
        if self.device not in ("auto", "cpu", "cuda"):
            bad("device", f"unknown device {self.device!r}: use auto, cpu or cuda")
        if self.amp not in ("none", "bf16", "fp16"):
            bad("amp", f"unknown autocast mode {self.amp!r}: use none, bf16 or fp16")
        if self.guard_max_abs <= 1 or self.guard_energy_gap <= 0:
            bad("guard_max_abs", "divergence guard limits must be > 1 (pixels) and > 0 (energy gap)")
        return self


# ---- flags and files -----------------------------------------------------------------------------
def _flag_type(field: dataclasses.Field) -> type:
    return {"int": int, "float": float, "str": str, "bool": bool}[str(field.type)]


def add_config_flags(parser: argparse.ArgumentParser) -> None:
    """One flag per TrainConfig field; defaults are SUPPRESSed so that only flags given on the command line
    override the config file."""
    defaults = TrainConfig()
    for f in fields(TrainConfig):
        names = [f"--{f.name.replace('_', '-')}"] + ([f"--{f.name}"] if "_" in f.name else [])
        default = getattr(defaults, f.name)
        help_text = f"{HELP.get(f.name, f.name.replace('_', ' '))} (default: {default!r})"
        kind = _flag_type(f)
        if kind is bool:
            parser.add_argument(
                names[0],
                dest=f.name,
                action=argparse.BooleanOptionalAction,
                default=argparse.SUPPRESS,
                help=help_text,
            )
        else:
            parser.add_argument(*names, dest=f.name, type=kind, default=argparse.SUPPRESS, help=help_text)


def load_toml(path: str | Path) -> dict[str, Any]:
    """Top-level keys of a TOML file as TrainConfig overrides; ValueError if unreadable or unknown keys."""
    path = Path(path)
    try:
        with path.open("rb") as fh:
            data = tomllib.load(fh)
    except FileNotFoundError:
        raise ValueError(f"--config: {path} does not exist") from None
    except (OSError, tomllib.TOMLDecodeError) as e:
        raise ValueError(f"--config: {path} is not a readable TOML file ({e})") from None
    return _checked_overrides(data, f"--config {path}")


def _checked_overrides(data: dict[str, Any], where: str) -> dict[str, Any]:
    known = {f.name: f for f in fields(TrainConfig)}
    out = {}
    for key, value in data.items():
        name = key.replace("-", "_")
        if name not in known:
            raise ValueError(f"{where}: unknown key {key!r} (see coop-train --help for the fields)")
        kind = _flag_type(known[name])
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise ValueError(f"{where}: {key} must be {kind.__name__}, got {value!r}")
        out[name] = value
    return out


def resolve(cli: dict[str, Any], config_file: str | None = None) -> TrainConfig:
    """Defaults < config file < CLI flags, validated."""
    merged: dict[str, Any] = {}
    if config_file:
        merged.update(load_toml(config_file))
    merged.update({k: v for k, v in cli.items() if k in {f.name for f in fields(TrainConfig)}})
    return TrainConfig(**merged).validate()


def from_dict(data: dict[str, Any]) -> TrainConfig:
    """Rebuild a saved config (config.json, checkpoint); keys this version does not know are ignored."""
    known = {f.name for f in fields(TrainConfig)}
    return TrainConfig(**{k: v for k, v in data.items() if k in known})


def save_json(config: TrainConfig, path: str | Path) -> None:
    from trainer.checkpoint import atomic_write_bytes

    atomic_write_bytes(Path(path), (json.dumps(config.to_dict(), indent=2) + "\n").encode())
