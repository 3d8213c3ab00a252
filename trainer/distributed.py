"""Data-parallel training across processes (torchrun), with the one-process run as its world-size-1 case.

    torchrun --standalone --nproc_per_node=4 -m coopnets.trainer.cli --out runs/ddp ...
    torchrun --nnodes=2 --nproc_per_node=8 --rdzv-backend c10d --rdzv-endpoint host:29400 \
        -m coopnets.trainer.cli ...

(`coop-train` itself can stand in for `-m coopnets.trainer.cli`: torchrun runs any executable.) The process
group is initialised from torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/PORT): backend
gloo for CPU tensors and, where CUDA is available, NCCL for CUDA tensors (one group serves both), each rank on
cuda:LOCAL_RANK. Without those variables `Dist` is world size 1 and every collective below returns at once,
so the plain coop-train runs exactly the same loop, bit for bit as before distributed training existed.

Why an explicit all-reduce instead of DistributedDataParallel: one cooperative iteration calls both nets many
times for input gradients only (l descriptor Langevin steps, optionally latent Langevin on g), evaluates the
descriptor twice (data, revised samples) before one backward, and builds the generator's graph before the
descriptor's update and back-propagates it after. DDP's reducer arms itself on every grad-mode forward and
expects exactly one parameter backward per forward, and it overwrites buffers (BatchNorm's running statistics)
from rank 0 on every forward; fitting the iteration to it takes no_sync()/module juggling around each call.
Averaging each net's gradients in one flat all-reduce right before its optimiser step is the same
mathematics (the gradient of the global-batch mean loss), one collective per net per iteration, visible in
`cooperative_iteration`. What it gives up is DDP's overlap of communication with the backward pass, which
matters little for these nets (a few million parameters).

Failures: `together()` wraps the parts of an iteration that can fail on one rank only (the divergence guard,
rank 0's writes, the set-up's checks) and all-reduces a stop flag at its end, so every rank raises `Stopped`
with the same one line and exit code. A rank that dies (SIGKILL, OOM) is seen by torchrun, which stops the
others; across nodes, the survivors' next collective fails on the closed connection or, at worst, after the
process group's timeout (--dist-timeout).
"""

from __future__ import annotations

import datetime
import os
import re
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.distributed as tdist


class PeerLost(RuntimeError):
    """A collective failed: another rank died, its machine went away, or --dist-timeout passed."""


class Stopped(Exception):
    """Raised on every rank when `together` saw an error on one of them: the same message and exit code."""

    def __init__(self, message: str, code: int):
        super().__init__(message)
        self.code = code


def launched_by_torchrun() -> bool:
    return all(k in os.environ for k in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"))


def rank_seed(seed: int, rank: int) -> int:
    """The seed of rank `rank`'s latents and Langevin noise. Rank 0 keeps `seed` itself (a one-process run is
    unchanged); other ranks get an independent stream from numpy's SeedSequence of (seed, rank)."""
    if rank == 0:
        return seed
    return int(np.random.SeedSequence([seed, rank]).generate_state(1, np.uint64)[0] >> 1)


@dataclass
class Dist:
    """This process's place in the job; `world_size == 1` makes every collective a no-op."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    initialised: bool = False  # this object created the process group (and destroys it in close)

    @property
    def is_main(self) -> bool:
        """Rank 0: the only writer of the run directory (logs, metrics, TensorBoard, grids, checkpoints,
        bundle)."""
        return self.rank == 0

    @classmethod
    def from_env(cls, timeout_s: float) -> Dist:
        """The process group from torchrun's environment, or world size 1 when not launched by torchrun."""
        if not launched_by_torchrun():
            return cls()
        rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
        local = int(os.environ.get("LOCAL_RANK", "0"))
        backend = "cpu:gloo,cuda:nccl" if torch.cuda.is_available() else "gloo"
        if torch.cuda.is_available():
            torch.cuda.set_device(local)
        tdist.init_process_group(
            backend, rank=rank, world_size=world, timeout=datetime.timedelta(seconds=timeout_s)
        )
        return cls(rank, world, local, initialised=True)

    def close(self) -> None:
        if self.initialised and tdist.is_initialized():
            tdist.destroy_process_group()
            self.initialised = False

    def device(self, device: torch.device) -> torch.device:
        """cuda:LOCAL_RANK for a CUDA run under torchrun (one GPU per rank), `device` otherwise."""
        return torch.device("cuda", self.local_rank) if device.type == "cuda" and self.initialised else device

    # ---- collectives (every rank must call them at the same point) ------------------------------------
    @contextmanager
    def _collective(self) -> Iterator[None]:
        """A failed collective becomes PeerLost with one readable line (gloo's start with a source path)."""
        try:
            yield
        except RuntimeError as e:  # torch.distributed.DistError and gloo's plain RuntimeErrors
            first = re.sub(r"^\[[^\]]*\]\s*", "", str(e).splitlines()[0] if str(e) else type(e).__name__)
            raise PeerLost(
                f"rank {self.rank}: lost the other ranks ({first[:160]}); the last checkpoint is kept: "
                "continue with --resume"
            ) from e

    def average_(self, tensors: Iterable[torch.Tensor]) -> None:
        """Replaces each tensor by its mean over the ranks, in place, in one all-reduce."""
        tensors = list(tensors)
        if self.world_size == 1 or not tensors:
            return
        flat = torch.cat([t.reshape(-1) for t in tensors])  # (sum of numels,)
        with self._collective():
            tdist.all_reduce(flat, op=tdist.ReduceOp.SUM)
        flat /= self.world_size
        offset = 0
        for t in tensors:
            t.copy_(flat[offset : offset + t.numel()].view_as(t))
            offset += t.numel()

    def average_gradients(self, net: torch.nn.Module, running_stats: bool = False) -> None:
        """Every rank's gradients of `net` become their mean: the gradient of the global-batch mean loss
        (each rank's loss is a mean over an equal share of it). With `running_stats`, BatchNorm's running
        mean and variance are averaged in the same all-reduce, so every rank holds the same buffers."""
        tensors = [p.grad for p in net.parameters() if p.grad is not None]
        if running_stats:
            stats = ("running_mean", "running_var")
            tensors += [b for name, b in net.named_buffers() if name.endswith(stats)]
        self.average_(tensors)

    def reduce_means_and_max(
        self, means: list[float], maxima: list[float]
    ) -> tuple[list[float], list[float]]:
        """(mean over ranks of each of `means`, max over ranks of each of `maxima`): per-rank statistics
        of equal-sized batches turned into those of the global batch. A NaN anywhere is NaN everywhere."""
        if self.world_size == 1:
            return means, maxima
        local = torch.tensor([*means, *maxima], dtype=torch.float64)  # (k + m,)
        gathered = [torch.empty_like(local) for _ in range(self.world_size)]
        with self._collective():
            tdist.all_gather(gathered, local)
        table = torch.stack(gathered)  # (world, k + m)
        k = len(means)
        return table[:, :k].mean(0).tolist(), table[:, k:].max(0).values.tolist()

    def broadcast_parameters(self, *nets: torch.nn.Module) -> None:
        """Rank 0's parameters and buffers on every rank (fresh runs start identical even across machines)."""
        if self.world_size == 1:
            return
        with self._collective():
            for net in nets:
                for t in [*net.parameters(), *net.buffers()]:
                    tdist.broadcast(t.data, src=0)

    def broadcast_object(self, obj: Any) -> Any:
        """Rank 0's `obj` (picklable; e.g. the checkpoint it read) on every rank: no shared filesystem."""
        if self.world_size == 1:
            return obj
        box = [obj]
        with self._collective():
            tdist.broadcast_object_list(box, src=0)
        return box[0]

    def gather_object(self, obj: Any) -> list[Any] | None:
        """[rank 0's obj, rank 1's, ...] on rank 0, None elsewhere."""
        if self.world_size == 1:
            return [obj]
        out = [None] * self.world_size if self.is_main else None
        with self._collective():
            tdist.gather_object(obj, out, dst=0)
        return out

    @contextmanager
    def together(self) -> Iterator[None]:
        """Runs the block on every rank, then agrees: if the block raised on any rank, every rank raises
        `Stopped` with that rank's one line (the lowest failing rank's) and exit code (1 for a failed run,
        2 for bad input, ValueError/OSError). With world size 1 the block's own exception passes through."""
        error: BaseException | None = None
        try:
            yield
        except Exception as e:  # noqa: BLE001 - any failure must reach the other ranks, not leave them hanging
            if self.world_size == 1:
                raise
            error = e
        if self.world_size == 1:
            return
        flag = torch.tensor([0 if error is None else 1])
        with self._collective():
            tdist.all_reduce(flag, op=tdist.ReduceOp.MAX)
        if not flag.item():
            return
        mine = (
            None
            if error is None
            else (
                2 if isinstance(error, (ValueError, OSError)) else 1,
                str(error).splitlines()[0] if str(error) else type(error).__name__,
            )
        )
        reports = [None] * self.world_size
        with self._collective():
            tdist.all_gather_object(reports, mine)
        rank, (code, line) = next((r, m) for r, m in enumerate(reports) if m is not None)
        raise Stopped(f"rank {rank}: {line}", code) from error
