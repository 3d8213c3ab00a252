"""TrainConfig: the one configuration of `coop-train`; its flags and TOML file come from contract.flags.

Precedence, lowest first: the dataclass defaults below, (with --resume) the checkpoint's saved config,
`--config FILE.toml` (top-level keys = field names), then command-line flags. Every field is a flag
(contract.flags.add_flags with HELP): `lr_descriptor` is `--lr-descriptor` (or `--lr_descriptor`), booleans
are `--langevin-noise / --no-langevin-noise`. `validate` names the flag in its one-line error.
The resolved config is saved as RUN_DIR/config.json, in every checkpoint and in the bundle manifest.

Defaults are the paper's (TPAMI 2018, MNIST net) except where docs/training.md records a measured reason.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, NoReturn

from coopnets.contract.bundle import STORAGE
from coopnets.trainer.nets import ARCH_FOR_SIZE, ARCHS, NetSpec, arch_for_size, image_size

LR_SCHEDULES = ("constant", "cosine")
DATASET_KINDS = ("fashion-mnist", "digits", "cifar10:PATH", "folder:PATH", "npz:PATH")
# the numeric fields TrainConfig.validate bounds
MUST_BE_POSITIVE = ("delta", "s", "sigma", "lr_descriptor", "lr_generator", "latent_step_size")
MUST_BE_AT_LEAST_ONE = (
    "iterations", "batch_size", "channels", "latent_dim", "log_every", "sample_every", "ckpt_every",
)  # fmt: skip
MUST_BE_NON_NEGATIVE = (
    "chains", "langevin_steps", "latent_steps", "max_images", "bn_recalibrate", "lr_decay_iters", "lr_warmup",
)  # fmt: skip

HELP = {
    "preset": "named hyperparameters (trainer/presets.py: paper-mnist, paper-scene, port-cifar, cifar10, "
    "cpu; 'list' prints them); --config and flags override it",
    "dataset": "fashion-mnist | digits | cifar10:PATH (cifar-10-python.tar.gz or its extracted folder) | "
    "folder:PATH (decoded once, cached in $COOPNETS_CACHE/folders, default ~/.cache/coopnets) | npz:PATH",
    "data_dir": "folder with the Fashion-MNIST idx(.gz) files (default: Debian's, then ~/.cache/coopnets)",
    "max_images": "use only the first N training images (0 = all)",
    "arch": "auto (from --image-size) | mnist28 | cifar32 | scene64",
    "batch_size": "data images per iteration and per rank (global batch under torchrun: this x world size)",
    "chains": "M̃, Langevin chains (generator drafts) per iteration and per rank; 0 = batch size",
    "langevin_steps": "l, descriptor Langevin steps per iteration",
    "delta": "δ, descriptor Langevin step size",
    "s": "reference distribution standard deviation",
    "sigma": "σ, generator noise standard deviation",
    "lr_schedule": "cosine (the default: a stable end point, docs/training.md) | constant (the paper's): "
    "cosine takes both learning rates on a half cosine down to --lr-floor times their value at "
    "--lr-decay-iters (default --iterations: resuming to more iterations then stretches the curve)",
    "lr_floor": "with --lr-schedule cosine: the final learning rates as a fraction of the initial ones",
    "lr_decay_iters": "with --lr-schedule cosine: the iteration the curve reaches --lr-floor at (nanoGPT's "
    "lr_decay_iters); 0 = --iterations",
    "lr_warmup": "iterations over which both learning rates rise linearly from 0 (nanoGPT's warmup_iters); "
    "0 = none. Color data needs it: without it the descriptor's first Adam steps grow f a hundredfold per "
    "iteration and Langevin overshoots (docs/training.md, 'Color')",
    "infer_latent": "latent Langevin inference of X̂ on the revised images (off in the paper)",
    "latent_step_size": "η of --infer-latent's steps on the per-image U(X) (docs/training.md: measured)",
    "latent_noise": "the η·N(0, I) term of --infer-latent's steps (the official code always adds it)",
    "device": "auto | cpu | cuda",
    "amp": "auto (bf16 on a CPU with native bfloat16, else none) | none | bf16 | fp16 autocast "
    "(fp16 CUDA only; Langevin and the sum of f stay float32, under fp16 the last descriptor layer too)",
    "guard_max_abs": "divergence guard: stop if a revised pixel leaves [-x, x]",
    "guard_energy_gap": "divergence guard, absolute: stop if |mean f(revised) - mean f(data)| exceeds this "
    "(0 = off; --guard-gap-ratio is the default guard)",
    "guard_gap_ratio": "divergence guard: stop if |mean f(revised) - mean f(data)| exceeds this many times "
    "the data's reference energy, mean ||Y||^2/(2 s^2), the scale f must reach to balance N(0, s^2 I) "
    "(about 1e6 on Fashion-MNIST, 1.5e6 on CIFAR-10)",
    "export": "export RUN_DIR/bundle at the end",
    "bn_recalibrate": "at export, recompute the generator's BatchNorm statistics over this many batches of "
    "fresh latents (0 = training's running averages)",
    "weights": "how the bundle stores its weights: float32 (as trained) | float16 (half the size) | int8 "
    "(a quarter, one scale per output channel); the arithmetic stays float32 (trainer/pack.py)",
    "dist_timeout": "under torchrun: seconds a rank waits in a collective for the others before it gives up",
    "out": "run directory (config, checkpoints, logs, samples, bundle)",
}


@dataclass(frozen=True)
class TrainConfig:
    preset: str = ""  # its values sit below --config and flags: see resolve_train_config
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
    iterations: int = 2800
    batch_size: int = 32
    chains: int = 0
    langevin_steps: int = 10
    delta: float = 0.002
    s: float = 0.016
    sigma: float = 0.3
    langevin_noise: bool = True
    lr_descriptor: float = 0.007
    lr_generator: float = 2e-4
    lr_schedule: str = "cosine"
    lr_floor: float = 0.1
    lr_decay_iters: int = 0
    lr_warmup: int = 0
    beta1: float = 0.5
    infer_latent: bool = False
    latent_steps: int = 10
    latent_step_size: float = 0.02
    latent_noise: bool = True
    # run
    seed: int = 0
    device: str = "auto"
    amp: str = "auto"
    log_every: int = 10
    sample_every: int = 250
    ckpt_every: int = 250
    guard_max_abs: float = 10.0
    guard_energy_gap: float = 0.0
    guard_gap_ratio: float = 100.0
    dist_timeout: float = 300.0
    export: bool = True
    bn_recalibrate: int = 0
    weights: str = "float32"
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
    # Checked in a fixed order (numbers, then choices, then the schedule and the guards): the first bad field
    # is the one named, so that one run of a bad command line always says the same thing.
    def validate(self) -> TrainConfig:
        """ValueError naming the field and how to fix it; returns self so it chains."""
        self._validate_numbers()
        self._validate_choices()
        self._validate_schedule_and_guards()
        return self

    def _validate_numbers(self) -> None:
        for name in MUST_BE_POSITIVE:
            if not getattr(self, name) > 0:
                _bad(name, f"must be > 0, got {getattr(self, name)}")
        for name in MUST_BE_AT_LEAST_ONE:
            if getattr(self, name) < 1:
                _bad(name, f"must be >= 1, got {getattr(self, name)}")
        for name in MUST_BE_NON_NEGATIVE:
            if getattr(self, name) < 0:
                _bad(name, f"must be >= 0, got {getattr(self, name)}")
        if not 0 <= self.beta1 < 1:
            _bad("beta1", f"must be in [0, 1), got {self.beta1}")

    def _validate_choices(self) -> None:
        """The fields that name one of a set: storage, image size and architecture, dataset, device, amp."""
        if self.weights not in STORAGE:
            _bad("weights", f"{self.weights!r} is not one of {', '.join(STORAGE)}")
        if self.image_size not in ARCH_FOR_SIZE:
            _bad("image_size", f"{self.image_size} is not supported: use one of {sorted(ARCH_FOR_SIZE)}")
        if self.arch != "auto":
            if self.arch not in ARCHS:
                _bad("arch", f"unknown architecture {self.arch!r}: use auto or one of {', '.join(ARCHS)}")
            if image_size(self.arch) != self.image_size:
                _bad(
                    "arch",
                    f"{self.arch} makes {image_size(self.arch)}px images but --image-size is "
                    f"{self.image_size}: use --arch auto",
                )
        kind, _, path = self.dataset.partition(":")
        if self.dataset not in ("fashion-mnist", "digits") and kind not in ("folder", "npz", "cifar10"):
            _bad("dataset", f"unknown dataset {self.dataset!r}: use one of {', '.join(DATASET_KINDS)}")
        if kind in ("folder", "npz", "cifar10") and not path:
            _bad("dataset", f"{kind}: needs a path, e.g. {kind}:/data/images")
        if self.device not in ("auto", "cpu", "cuda"):
            _bad("device", f"unknown device {self.device!r}: use auto, cpu or cuda")
        if self.amp not in ("auto", "none", "bf16", "fp16"):
            _bad("amp", f"unknown autocast mode {self.amp!r}: use auto, none, bf16 or fp16")

    def _validate_schedule_and_guards(self) -> None:
        if self.lr_schedule not in LR_SCHEDULES:
            _bad("lr_schedule", f"unknown schedule {self.lr_schedule!r}: use {' or '.join(LR_SCHEDULES)}")
        if not 0 < self.lr_floor <= 1:
            _bad("lr_floor", f"must be in (0, 1], got {self.lr_floor}")
        if not self.dist_timeout > 0:
            _bad("dist_timeout", f"must be > 0 seconds, got {self.dist_timeout}")
        if self.preset:
            from coopnets.trainer.presets import preset_values

            preset_values(self.preset)  # ValueError naming --preset for an unknown name
        if self.guard_max_abs <= 1:
            _bad("guard_max_abs", f"must be > 1 (the data's pixels are in [-1, 1]), got {self.guard_max_abs}")
        if self.guard_energy_gap < 0:
            _bad("guard_energy_gap", f"must be >= 0 (0 = off), got {self.guard_energy_gap}")
        if not self.guard_gap_ratio > 0:
            _bad("guard_gap_ratio", f"must be > 0, got {self.guard_gap_ratio}")


def _bad(name: str, why: str) -> NoReturn:
    """The one-line error of a bad field, in its flag's spelling."""
    raise ValueError(f"--{name.replace('_', '-')}: {why}")


# Fields that runs saved before they existed, with the value such a run trained with (not today's default): a
# run from before --lr-schedule had constant rates, and resumes or exports with them.
PREDATED = {"lr_schedule": "constant"}


def saved_config(saved: dict[str, Any]) -> dict[str, Any]:
    """A checkpoint's saved config with the fields it predates set to what that run used (PREDATED)."""
    return {**PREDATED, **saved}


def resolve_train_config(
    flags: dict[str, Any], config_file: str | None = None, saved: dict[str, Any] | None = None
) -> TrainConfig:
    """coop-train's config, lowest first: the defaults, the `--preset`'s values, (with --resume) the
    checkpoint's `saved` config, the TOML `config_file`, then `flags`; validated. The preset is named by the
    flags, the file or the saved config, in that order."""
    from coopnets.contract.flags import load_toml, resolve
    from coopnets.trainer.presets import preset_values

    in_file = load_toml(config_file, TrainConfig) if config_file else {}
    name = flags.get("preset") or in_file.get("preset") or (saved or {}).get("preset") or ""
    base = {**(preset_values(name) if name else {}), **(saved_config(saved) if saved else {}), "preset": name}
    return resolve(TrainConfig, flags, config_file, base=base)
