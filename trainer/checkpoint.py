"""Checkpoints: everything that rebuilds a run, written atomically.

A checkpoint holds both nets, both optimisers (and the fp16 grad scaler), the NetSpec, the resolved
TrainConfig, the iteration count and every RNG state the loop draws from (the training torch.Generator, and
torch's, CUDA's, numpy's and Python's global ones), so that `--resume` continues bit-identically on CPU. It
is written with contract.files.atomic_write (a temporary file in the same folder, fsynced, renamed over the
old one): a crash mid-write leaves the previous checkpoint intact. It loads with
`torch.load(weights_only=True)` (no pickled code).
"""

from __future__ import annotations

import fcntl
import json
import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
from coopnets.contract.files import atomic_write, atomic_write_text
from coopnets.contract.flags import from_dict
from coopnets.trainer.config import TrainConfig, saved_config
from coopnets.trainer.nets import Descriptor, Generator, NetSpec, build_nets

FORMAT = "coopnets.checkpoint"
VERSION = 1


def rng_states(train_rng: torch.Generator) -> dict[str, Any]:
    """Every RNG the training loop may touch, in a form `torch.load(weights_only=True)` accepts."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    return {
        "train": train_rng.get_state(),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached],
        "python": random.getstate(),
    }


def set_rng_states(states: dict[str, Any], train_rng: torch.Generator) -> None:
    train_rng.set_state(states["train"])
    torch.set_rng_state(states["torch"])
    if states["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])
    kind, keys, pos, has_gauss, cached = states["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    version, internal, gauss = states["python"]
    random.setstate((version, tuple(internal), gauss))


def save_checkpoint(
    path: str | os.PathLike,
    *,
    descriptor: Descriptor,
    generator: Generator,
    opt_d: torch.optim.Optimizer,
    opt_g: torch.optim.Optimizer,
    config: TrainConfig,
    iteration: int,
    train_rng: torch.Generator,
    scaler: torch.amp.GradScaler | None = None,
    rank_rngs: list[dict[str, Any]] | None = None,
) -> Path:
    """Atomically write the run's state after `iteration` completed iterations. `rank_rngs`: every rank's
    `rng_states` (rank 0's first) under torchrun; None for one process (= [rng_states(train_rng)])."""
    rank_rngs = rank_rngs if rank_rngs is not None else [rng_states(train_rng)]
    state = {
        "format": FORMAT,
        "version": VERSION,
        "iteration": iteration,
        "spec": {
            "arch": descriptor.spec.arch,
            "channels": descriptor.spec.channels,
            "latent_dim": descriptor.spec.latent_dim,
        },
        "config": config.to_dict(),
        "descriptor": descriptor.state_dict(),
        "generator": generator.state_dict(),
        "opt_d": opt_d.state_dict(),
        "opt_g": opt_g.state_dict(),
        "scaler": scaler.state_dict() if scaler is not None else {},
        "rng": rank_rngs[0],
        "rng_ranks": rank_rngs,
        "world_size": len(rank_rngs),
    }
    return atomic_write(path, lambda fh: torch.save(state, fh))


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """The checkpoint dict; ValueError (one line) if it is missing or not a coopnets checkpoint."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"checkpoint {path} does not exist")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unpickling failure means "not a checkpoint"
        raise ValueError(f"{path} is not a readable coopnets checkpoint ({type(e).__name__}: {e})") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise ValueError(f"{path} is not a coopnets checkpoint")
    if state.get("version") != VERSION:
        raise ValueError(
            f"{path}: checkpoint version {state.get('version')} is not supported (need {VERSION})"
        )
    return state


def load_models(path: str | os.PathLike) -> tuple[Descriptor, Generator, TrainConfig]:
    """(descriptor, generator, config) from a checkpoint, on CPU, the generator in eval mode (running BN
    statistics) as the bundle needs it."""
    return models_from_state(load_checkpoint(path))


def models_from_state(state: dict) -> tuple[Descriptor, Generator, TrainConfig]:
    """load_models for a checkpoint already read with load_checkpoint (whose "iteration" the caller wants
    too)."""
    spec = NetSpec(**state["spec"])
    descriptor, generator = build_nets(spec)
    descriptor.load_state_dict(state["descriptor"])
    generator.load_state_dict(state["generator"])
    descriptor.eval()
    generator.eval()
    return descriptor, generator, from_dict(TrainConfig, saved_config(state["config"]))


def lock_run_dir(run_dir: str | os.PathLike) -> int:
    """Takes RUN_DIR/.lock (creating RUN_DIR) for this process and returns its descriptor (keep it open;
    closing it releases the lock). ValueError, one line, if another process holds it: two trainers never
    write one run directory. The holder's pid is written into the file for that message."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(run_dir / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
        os.close(fd)
        raise ValueError(
            f"--out {run_dir} is being trained by another process (pid {holder} holds {run_dir / '.lock'}); "
            "wait for it to finish or choose another --out"
        ) from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


def drop_metrics_after(path: str | os.PathLike, iteration: int) -> int:
    """Rewrites metrics.jsonl (atomically) without the rows past `iteration`, the checkpoint's: a resumed run
    logs those iterations again. A torn last line (the process died mid-write) goes too. Returns the number
    of rows dropped."""
    path = Path(path)
    if not path.is_file():
        return 0
    kept, dropped = [], 0
    for line in path.read_text().splitlines():
        try:
            keep = int(json.loads(line)["iteration"]) <= iteration
        except (ValueError, KeyError, TypeError):
            keep = False
        if keep:
            kept.append(line)
        else:
            dropped += bool(line.strip())
    if dropped:
        atomic_write_text(path, "".join(f"{line}\n" for line in kept))
    return dropped
