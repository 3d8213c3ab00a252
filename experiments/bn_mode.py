"""Are eval-mode generator samples (BatchNorm with running statistics, as exported) not worse than train-mode
ones (batch statistics, as during training and in the paper's code)? Issue 2's question, answered with the
evaluation classifier's Fréchet distance against Fashion-MNIST's held-out split.

Reproduces the table of docs/results.md, "Eval-mode vs train-mode BatchNorm".

    .venv/bin/python experiments/bn_mode.py runs/demo/checkpoint.pt --n 1000
    .venv/bin/python experiments/bn_mode.py CKPT --n 10 --data-dir DIR --cache-dir /tmp/clf    # smoke

Both modes use the same latents X and the same Langevin noise; train mode runs the generator in batches of the
training batch size (batch statistics depend on it). Prints a table and ends with NAME=VALUE lines.
"""

from __future__ import annotations

import copy
import logging
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from coopnets.contract.flags import Parser, add_flags, cli_main, resolve
from coopnets.evaluation.classifier import ClassifierConfig, load_or_train
from coopnets.evaluation.data import load_split
from coopnets.evaluation.metrics import frechet_distance, precision_recall
from coopnets.trainer.checkpoint import load_models
from coopnets.trainer.langevin import revise, torch_noise

HELP = {
    "checkpoint": "a coop-train checkpoint.pt",
    "n": "samples per mode and held-out images",
    "batch": "train-mode batch size (0 = the training one)",
    "data_dir": "folder with the Fashion-MNIST idx files",
    "cache_dir": "feature classifier cache",
}


@dataclass(frozen=True)
class BnModeConfig:
    checkpoint: str = ""
    n: int = 1000
    batch: int = 0  # 0 = the checkpoint's training batch size
    seed: int = 0
    data_dir: str = ""
    cache_dir: str = str(Path.home() / ".cache" / "coopnets")

    def validate(self) -> BnModeConfig:
        if self.n < 10 or self.batch < 0:
            raise ValueError("--n must be at least 10 and --batch not negative")
        return self


def sample(generator, descriptor, x: torch.Tensor, batch: int, train_mode: bool, cfg, seed: int):
    """Drafts g(X) and revised Ỹ (the checkpoint's Langevin settings) for latents x (N, d), in batches."""
    g = copy.deepcopy(generator).train(train_mode)  # train mode would update the running statistics
    drafts, revised = [], []
    noise_rng = torch.Generator().manual_seed(seed)
    for i in range(0, len(x), batch):
        with torch.no_grad():
            y = g(x[i : i + batch])  # (b, C, H, W)
        noise = torch_noise(noise_rng) if cfg.langevin_noise else None
        drafts.append(y.numpy())
        revised.append(revise(descriptor, y, cfg.langevin_steps, cfg.delta, cfg.s, noise).numpy())
    return np.concatenate(drafts), np.concatenate(revised)


def run(config: BnModeConfig) -> dict[str, float]:
    descriptor, generator, train_cfg = load_models(config.checkpoint)
    shape = generator.spec.image_shape
    train, test = load_split("train", shape, config.data_dir), load_split("t10k", shape, config.data_dir)
    clf = load_or_train(
        train.images, train.labels, test.images, test.labels, config.cache_dir, ClassifierConfig()
    )
    rng = np.random.default_rng(config.seed)
    heldout = test.images[rng.choice(len(test.images), config.n, replace=False)]
    floor = train.images[rng.choice(len(train.images), config.n, replace=False)]
    ref, _ = clf.features_and_probs(heldout)
    x = torch.randn(config.n, generator.spec.latent_dim, generator=torch.Generator().manual_seed(config.seed))
    batch = config.batch or train_cfg.batch_size

    def score(images):
        feats, _ = clf.features_and_probs(images)
        return frechet_distance(feats, ref), *precision_recall(ref, feats)

    results = {"floor_fd": score(floor)[0]}
    print(
        f"checkpoint {config.checkpoint}; N = {config.n}, train-mode batch {batch}; classifier test "
        f"accuracy {clf.test_accuracy:.4f}; real-vs-real floor FD {results['floor_fd']:.2f}\n"
    )
    print("| generator BatchNorm | FD drafts ↓ | FD revised ↓ | precision (revised) | recall (revised) |")
    print("|---|---|---|---|---|")
    for mode, train_mode in (("eval (running stats, exported)", False), ("train (batch stats)", True)):
        drafts, revised = sample(generator, descriptor, x, batch, train_mode, train_cfg, config.seed + 1)
        fd_draft = score(drafts)[0]
        fd_rev, precision, recall = score(revised)
        key = "eval" if not train_mode else "train"
        results |= {f"{key}_fd_drafts": fd_draft, f"{key}_fd_revised": fd_rev}
        print(f"| {mode} | {fd_draft:.2f} | {fd_rev:.2f} | {precision:.3f} | {recall:.3f} |")
    print()
    for k, v in results.items():
        print(f"{k.upper()}={v:.3f}")
    return results


def main(argv: list[str] | None = None) -> int:
    parser = Parser(prog="bn_mode.py", description=__doc__.splitlines()[0])
    add_flags(parser, BnModeConfig, HELP, positional=("checkpoint",))
    args = vars(parser.parse_args(argv))
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    def body() -> int:
        run(resolve(BnModeConfig, args))
        return 0

    return cli_main("bn_mode.py", body)


if __name__ == "__main__":
    sys.exit(main())
