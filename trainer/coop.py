"""Cooperative training of the descriptor f(Y; α) and the generator g(X; β) (Xie et al., TPAMI 2018, Alg. 1).

One iteration, as in the paper:
    1. draft      X̂_i ~ N(0, I_d), Ŷ_i = g(X̂_i) for M̃ chains
    2. revise     l steps of descriptor Langevin from Ŷ (fresh chains every iteration): Ỹ
    3. (infer)    optionally, latent Langevin on X̂ to explain Ỹ (off in the paper and by default)
    4. descriptor minimise mean f(Ỹ) − mean f(Y_data)          (Adam, β1 = 0.5; Ỹ is a constant)
    5. generator  minimise mean_i ‖Ỹ_i − g(X̂_i)‖² / (2σ²)      (Adam, β1 = 0.5; "MCMC teaching", same X̂)

`cooperative_iteration` is that paragraph in code; `train` is the loop around it, one sentence per
iteration: take a step (`train_step`: the data batch, the learning rates, the iteration, which also counts
it), guard against divergence (`check_divergence`), log (`RunLog.record`: metrics, TensorBoard, sample grids)
and save (`save_run`). Mixed precision lives in trainer/precision.py. The generator trains with BatchNorm
batch statistics (running statistics tracked) and is exported in eval mode with the running statistics.

Under torchrun (trainer/distributed.py) every rank runs this same loop on its own share of the global batch:
its own data batch (`batch_indices` by rank), its own M̃ chains from its own RNG stream, and the two
gradients averaged over the ranks right before each optimiser step, so both nets take the step of the
global-batch loss and stay identical on every rank. BatchNorm normalises by each rank's own M̃ drafts
(per-rank statistics, see docs/training.md); the running statistics are averaged with the generator's
gradients. Rank 0 alone writes the run directory. One process is the world-size-1 case: no collective runs.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from coopnets.contract.codec import save_side_by_side
from coopnets.contract.files import atomic_write_json
from coopnets.contract.flags import from_dict
from coopnets.contract.sampling import energy
from coopnets.trainer.checkpoint import (
    drop_metrics_after,
    load_checkpoint,
    rng_states,
    save_checkpoint,
    set_rng_states,
)
from coopnets.trainer.config import TrainConfig
from coopnets.trainer.distributed import Dist, rank_seed
from coopnets.trainer.langevin import infer_latent, revise, torch_noise
from coopnets.trainer.nets import Descriptor, Generator, build_nets
from coopnets.trainer.precision import autocast_nets, cast_once
from torch import nn

log = logging.getLogger(__name__)

CHECKPOINT = "checkpoint.pt"
GRID_IMAGES = 64  # chains shown in a sample grid


class DivergenceError(RuntimeError):
    """Training left the stable regime; the message says what was seen and what to change."""


@dataclass
class IterStats:
    """What one iteration measured (all floats; per-image means)."""

    loss_d: float  # mean f(Ỹ) − mean f(Y_data): the energy gap the descriptor closes from below
    loss_g: float  # mean ‖Ỹ − g(X̂)‖² / (2σ²)
    f_data: float  # mean f(Y_data)
    f_revised: float  # mean f(Ỹ)
    energy_data: float  # mean E(Y_data) = ‖Y‖²/(2s²) − f(Y)
    energy_revised: float  # mean E(Ỹ)
    displacement: float  # mean ‖Ỹ − Ŷ‖ per image: how far Langevin moved the drafts
    max_abs: float  # max |Ỹ| over the batch (divergence shows here first)


@dataclass
class Run:
    """Everything the loop mutates."""

    config: TrainConfig
    device: torch.device
    descriptor: Descriptor
    generator: Generator
    opt_d: torch.optim.Adam
    opt_g: torch.optim.Adam
    scaler: torch.amp.GradScaler
    rng: torch.Generator  # latents, Langevin noise: this rank's stream (rank_seed)
    dist: Dist = field(default_factory=Dist)  # this process's rank in the job (world size 1: alone)
    iteration: int = 0  # completed iterations


# ---- set-up --------------------------------------------------------------------------------------
def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda: no CUDA device is available; use --device cpu or auto")
    return torch.device(name)


def cpu_has_bf16() -> bool:
    """Whether oneDNN runs bfloat16 natively here (measured on a Zen 3 without it: autocast took 8 s per
    default iteration against 0.4 s in float32, in PyTorch's slow reference convolutions)."""
    return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())


def resolve_amp(amp: str, device: torch.device) -> str:
    """`--amp auto`: bf16 on a CPU where oneDNN runs it natively, float32 ("none") elsewhere.

    On such a CPU bf16 autocast trains at 1.4-2.5x the naive baseline against 1.2-1.5x in float32
    (bench/training.py), with samples as good as float32 at equal iterations (docs/training.md, "Mixed
    precision": coop-eval FD of both). On CUDA, auto stays float32 until bench/gpu.sh has measured bf16
    there (docs/gpu.md); `--amp bf16` asks for it."""
    if amp != "auto":
        return amp
    return "bf16" if device.type == "cpu" and cpu_has_bf16() else "none"


def build_run(config: TrainConfig, dist: Dist | None = None) -> Run:
    """Fresh nets (official initialisation), Adam optimisers and RNG for `config`, seeded. The nets are
    initialised from `config.seed` on every rank (identical); the RNG of latents and Langevin noise from
    rank_seed(seed, rank) (rank 0: `seed` itself). No collective runs here. The run's config has `amp`
    resolved (never "auto"), so that config.json and checkpoints record the precision that ran."""
    dist = dist or Dist()
    device = dist.device(resolve_device(config.device))
    config = replace(config, amp=resolve_amp(config.amp, device))
    if config.amp == "fp16" and device.type != "cuda":
        raise ValueError(
            "--amp fp16: float16 autocast is for CUDA (CPUs without AVX512-FP16 run it slower than float32); "
            "use --amp bf16 or --amp none on the CPU"
        )
    if config.amp == "bf16" and device.type == "cpu" and not cpu_has_bf16():
        raise ValueError(
            "--amp bf16: this CPU has no native bfloat16 (AVX512-BF16 or AMX; PyTorch would fall back to "
            "convolutions 20x slower than float32); use --amp none"
        )
    torch.manual_seed(config.seed)
    np.random.seed(config.seed % 2**32)
    descriptor, generator = build_nets(config.net_spec)
    descriptor.to(device)
    generator.to(device).train()
    betas = (config.beta1, 0.999)
    opt_d = torch.optim.Adam(descriptor.parameters(), lr=config.lr_descriptor, betas=betas)
    opt_g = torch.optim.Adam(generator.parameters(), lr=config.lr_generator, betas=betas)
    scaler = torch.amp.GradScaler(device.type, enabled=config.amp == "fp16")
    rng = torch.Generator(device=device)
    rng.manual_seed(rank_seed(config.seed, dist.rank))
    return Run(config, device, descriptor, generator, opt_d, opt_g, scaler, rng, dist)


def restore_run(run: Run, state: dict) -> None:
    """Load a checkpoint dict into a freshly built run (same NetSpec). Each rank restores its own RNG
    states; if the checkpoint was written by another world size, the ranks it has states for restore them and
    the others keep their fresh rank_seed streams (never used before in this run), with a warning."""
    run.descriptor.load_state_dict(state["descriptor"])
    run.generator.load_state_dict(state["generator"])
    run.opt_d.load_state_dict(state["opt_d"])
    run.opt_g.load_state_dict(state["opt_g"])
    if state["scaler"]:
        run.scaler.load_state_dict(state["scaler"])
    run.iteration = int(state["iteration"])
    ranks = state.get("rng_ranks") or [state["rng"]]  # checkpoints from before torchrun hold rank 0's only
    rank, world = run.dist.rank, run.dist.world_size
    if len(ranks) != world and run.dist.is_main:
        log.warning(
            "the checkpoint was written by %d process(es), this run has %d: the data order and the RNG "
            "streams of ranks >= %d differ from a run that kept its world size",
            len(ranks),
            world,
            min(len(ranks), world),
        )
    if rank < len(ranks):
        set_rng_states(ranks[rank], run.rng)


def descriptor_scores(f: nn.Module, y_data: torch.Tensor, y_rev: torch.Tensor):
    """f(Y_data) (N,) and f(Ỹ) (M̃,) from one pass over both: the descriptor has no batch statistics, so each
    image's score is the same, and one batch of N + M̃ runs faster than two."""
    return f(torch.cat([y_data, y_rev])).split([len(y_data), len(y_rev)])


# ---- the algorithm -------------------------------------------------------------------------------
def lr_factor(config: TrainConfig, iteration: int) -> float:
    """The learning rates' multiplier for the update that makes iteration `iteration` + 1: a linear warm-up
    over the first --lr-warmup updates (none by default), times the schedule: 1 throughout under the paper's
    constant schedule; under `cosine`, a half cosine from 1 at the first update to --lr-floor at the last of
    --lr-decay-iters (default --iterations; as nanoGPT's decay), then the floor. A function of the iteration
    alone, so a resumed run continues the curve."""
    warm = min(1.0, (iteration + 1) / config.lr_warmup) if config.lr_warmup else 1.0
    if config.lr_schedule == "constant":
        return warm
    horizon = config.lr_decay_iters or config.iterations
    t = min(iteration / max(horizon - 1, 1), 1.0)
    return warm * (config.lr_floor + (1 - config.lr_floor) * 0.5 * (1 + math.cos(math.pi * t)))


def set_learning_rates(run: Run) -> None:
    """Both optimisers' learning rates for the coming update, from the config's and lr_factor."""
    k = lr_factor(run.config, run.iteration)
    for opt, lr in ((run.opt_d, run.config.lr_descriptor), (run.opt_g, run.config.lr_generator)):
        for group in opt.param_groups:
            group["lr"] = lr * k


def cooperative_iteration(run: Run, y_data: torch.Tensor) -> tuple[IterStats, torch.Tensor, torch.Tensor]:
    """One iteration of cooperative learning on a data batch `y_data` (N, C, H, W) in [-1, 1].
    Returns the stats, the drafts Ŷ and the revised Ỹ (both (M̃, C, H, W), detached). It does not count
    itself: the loop that calls it advances `run.iteration` (train_step), so that this stays the paragraph
    of the paper and nothing else."""
    cfg = run.config
    f, g = autocast_nets(run.descriptor, run.generator, cfg.amp, run.device.type)
    noise = torch_noise(run.rng) if cfg.langevin_noise else None

    # 1. Draft: X̂ ~ N(0, I), Ŷ = g(X̂); the graph of g(X̂) is kept for the generator update in step 5
    x = torch.randn(cfg.num_chains, cfg.latent_dim, generator=run.rng, device=run.device)  # (M̃, d)
    y_draft = g(x)  # (M̃, C, H, W)

    # 2. Revise: l steps of descriptor Langevin from the drafts, Ỹ
    with cast_once(cfg.amp, run.device.type):
        y_rev = revise(f, y_draft.detach(), cfg.langevin_steps, cfg.delta, cfg.s, noise)  # (M̃, C, H, W)

    # 3. Infer (optional): move X̂ so that g(X̂) explains Ỹ, then re-draw g(X̂) with the new latents
    if cfg.infer_latent:
        latent_noise = torch_noise(run.rng) if cfg.latent_noise else None
        x = infer_latent(g, x, y_rev, None, cfg.latent_steps, cfg.latent_step_size, cfg.sigma, latent_noise)
        y_draft = g(x)  # (M̃, C, H, W)

    # 4. Descriptor: raise f on data relative to revised samples, minimise mean f(Ỹ) − mean f(Y)
    f_data, f_rev = descriptor_scores(f, y_data, y_rev)  # (N,), (M̃,)
    loss_d = f_rev.mean() - f_data.mean()
    run.opt_d.zero_grad(set_to_none=True)
    run.scaler.scale(loss_d).backward()
    run.dist.average_gradients(run.descriptor)  # under torchrun: ∂/∂α of the global batch's loss, every rank
    run.scaler.step(run.opt_d)

    # 5. Generator: regress the revised images on their own latents, minimise mean ‖Ỹ − g(X̂)‖² / (2σ²)
    loss_g = (y_rev - y_draft.float()).pow(2).flatten(1).sum(1).mean() / (2 * cfg.sigma**2)
    run.opt_g.zero_grad(set_to_none=True)
    run.scaler.scale(loss_g).backward()
    run.dist.average_gradients(run.generator, running_stats=True)  # and BatchNorm's running statistics
    run.scaler.step(run.opt_g)
    run.scaler.update()

    with torch.no_grad():
        y_draft = y_draft.detach().float()
        stats = IterStats(
            loss_d=loss_d.item(),
            loss_g=loss_g.item(),
            f_data=f_data.mean().item(),
            f_revised=f_rev.mean().item(),
            energy_data=energy(y_data, f_data.detach(), cfg.s).mean().item(),  # E(Y) = ‖Y‖²/(2s²) − f(Y)
            energy_revised=energy(y_rev, f_rev.detach(), cfg.s).mean().item(),
            displacement=(y_rev - y_draft).flatten(1).norm(dim=1).mean().item(),
            max_abs=y_rev.abs().max().item(),
        )
    return stats, y_draft, y_rev


def reference_energy(y: torch.Tensor, s: float) -> float:
    """Mean ‖Y‖²/(2s²) over images `y` (N, C, H, W): the energy the reference N(0, s²I) gives the data, which
    f must match for p(Y) to put mass there. It sets the scale of f and of the energy gap of a healthy run
    (1.05e6 on Fashion-MNIST, 1.54e6 on CIFAR-10, where f reaches 1e7 while the samples improve)."""
    return float(y.flatten(1).double().pow(2).sum(1).mean() / (2 * s**2))


def check_divergence(stats: IterStats, config: TrainConfig, iteration: int, scale: float) -> None:
    """Stop on NaN/inf and on magnitudes that only a diverging run reaches (the port's failure mode was huge
    but finite losses and saturated samples, not NaN). The energy gap is judged against the data's own
    `scale` (reference_energy), so that one ratio fits grey and color data alike: 100 × 1.05e6 is the 1e8
    that stopped diverging Fashion-MNIST runs when the guard was absolute."""
    advice = "lower --lr-descriptor or --delta, or raise --lr-warmup; the last good checkpoint is kept"
    values = asdict(stats)
    bad = [k for k, v in values.items() if not math.isfinite(v)]
    if bad:
        raise DivergenceError(
            f"iteration {iteration}: {', '.join(bad)} not finite: training diverged; {advice}"
        )
    if stats.max_abs > config.guard_max_abs:
        raise DivergenceError(
            f"iteration {iteration}: revised samples reached |Y| = {stats.max_abs:.3g} "
            f"(> --guard-max-abs {config.guard_max_abs:g}): Langevin diverged; {advice}"
        )
    gap = abs(stats.loss_d)
    if gap > config.guard_gap_ratio * scale:
        raise DivergenceError(
            f"iteration {iteration}: energy gap mean f(revised) − mean f(data) = {stats.loss_d:.3g}, "
            f"{gap / scale:.3g}x the data's reference energy {scale:.3g} (> --guard-gap-ratio "
            f"{config.guard_gap_ratio:g}): the descriptor diverged; {advice}"
        )
    if config.guard_energy_gap and gap > config.guard_energy_gap:
        raise DivergenceError(
            f"iteration {iteration}: energy gap mean f(revised) − mean f(data) = "
            f"{stats.loss_d:.3g} (> --guard-energy-gap {config.guard_energy_gap:g}): the "
            f"descriptor diverged; {advice}"
        )


def batch_indices(
    iteration: int, n_data: int, batch_size: int, seed: int, rank: int = 0, world_size: int = 1
) -> torch.Tensor:
    """Data indices of iteration `iteration` for rank `rank` of `world_size`: epoch e uses a permutation
    seeded by (seed, e), global batches of world_size·batch_size without replacement, the ragged tail
    dropped, and rank r takes the r-th batch_size slice of the global batch. So ranks see disjoint images, and
    together exactly the batch one process with batch_size·world_size takes. Stateless: resuming needs no
    data-loader state."""
    global_batch = batch_size * world_size
    per_epoch = max(1, n_data // global_batch)
    epoch, k = divmod(iteration, per_epoch)
    perm = torch.randperm(n_data, generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch))
    if n_data < global_batch:  # one process only: train() refuses this under torchrun
        return perm
    start = k * global_batch + rank * batch_size
    return perm[start : start + batch_size]


def global_stats(dist: Dist, stats: IterStats) -> IterStats:
    """The global batch's statistics from every rank's (means of the equal-sized shares; the max of
    max_abs), identical on every rank, so the divergence guard decides the same everywhere and rank 0 logs
    the whole batch. World size 1: `stats` itself."""
    values = asdict(stats)
    max_abs = values.pop("max_abs")
    means, (max_all,) = dist.reduce_means_and_max(list(values.values()), [max_abs])
    return IterStats(**dict(zip(values, means, strict=True)), max_abs=max_all)


# ---- the loop ------------------------------------------------------------------------------------
def train(
    config: TrainConfig,
    data: np.ndarray,
    *,
    resume: bool = False,
    progress: bool = True,
    dist: Dist | None = None,
) -> Run:
    """Train on uint8 `data` (N, C, H, W) into RUN_DIR = config.out; returns the finished run.

    Writes RUN_DIR/config.json, checkpoint.pt (every ckpt_every iterations and at the end), metrics.jsonl,
    tb/ (TensorBoard scalars) and samples/iter_XXXXXX.png (drafts | revised). With `resume`, continues from
    RUN_DIR/checkpoint.pt up to config.iterations in total, first dropping the metric rows (and TensorBoard
    events) past the checkpoint's iteration, which it logs again. Under torchrun (`dist`), every rank calls
    this with the same arguments; rank 0 alone reads the checkpoint (the others get it broadcast) and writes.
    """
    from coopnets.trainer.data import to_tensor

    dist = dist or Dist()
    y_all = to_tensor(data)  # (N_data, C, H, W), kept on CPU; batches move to the device
    scale = reference_energy(y_all, config.s)  # the divergence guard's unit, the same on every rank
    run = start_run(config, y_all, resume=resume, dist=dist)
    config = run.config  # --amp resolved
    with RunLog(run, progress=progress, resume=resume) as run_log:
        while run.iteration < config.iterations:
            stats, y_draft, y_rev = train_step(run, y_all)
            rank_rngs = dist.gather_object(rng_states(run.rng)) if checkpoint_due(run) else None  # on rank 0
            with dist.together():  # the guard or a failed write on any rank stops every rank, one line
                check_divergence(stats, config, run.iteration, scale)
                run_log.record(stats, y_draft, y_rev)
                if checkpoint_due(run) and dist.is_main:
                    save_run(run, rank_rngs)
    return run


def start_run(config: TrainConfig, y_all: torch.Tensor, *, resume: bool, dist: Dist) -> Run:
    """The run every rank trains: built fresh (and broadcast from rank 0, so every rank starts from the same
    weights even across machines) or restored from RUN_DIR/checkpoint.pt, which rank 0 alone reads. Rank 0
    also writes RUN_DIR/config.json with `--amp` resolved. An error on any rank (data, checkpoint, run
    directory) stops every rank."""
    out = Path(config.out)
    state = None
    with dist.together():
        check_data(config, y_all, dist)
        run = build_run(config, dist)
        if dist.is_main and config.amp == "auto":
            log.info("--amp auto: %s on %s", run.config.amp, run.device)
        if resume and dist.is_main:
            state = _read_checkpoint(out / CHECKPOINT, run.config)
        if dist.is_main:
            _prepare_run_dir(out, run.config, state)
    if resume:
        restore_run(run, dist.broadcast_object(state))
        if dist.is_main:
            log.info("resumed %s at iteration %d", out / CHECKPOINT, run.iteration)
    else:
        dist.broadcast_parameters(run.descriptor, run.generator)  # identical starts, even across machines
    return run


def check_data(config: TrainConfig, y_all: torch.Tensor, dist: Dist) -> None:
    """Refuse data the nets cannot take, and a global batch larger than the data set (which ranks could not
    split into disjoint shares)."""
    if tuple(y_all.shape[1:]) != config.net_spec.image_shape:
        raise ValueError(
            f"data images are {tuple(y_all.shape[1:])} but the model needs {config.net_spec.image_shape}"
        )
    if dist.world_size > 1 and len(y_all) < config.batch_size * dist.world_size:
        raise ValueError(
            f"--batch-size {config.batch_size} on {dist.world_size} ranks is a global batch of "
            f"{config.batch_size * dist.world_size} images, more than the {len(y_all)} there are"
        )


def _read_checkpoint(path: Path, config: TrainConfig) -> dict:
    """The checkpoint to resume, refused if it holds another model than `config` builds."""
    state = load_checkpoint(path)
    if from_dict(TrainConfig, state["config"]).net_spec != config.net_spec:
        raise ValueError(f"--resume: {path} holds a {state['spec']} model, not {config.net_spec}")
    return state


def _prepare_run_dir(out: Path, config: TrainConfig, state: dict | None) -> None:
    """RUN_DIR with config.json; on resume (`state`), without the metric rows past the checkpoint, which
    the resumed run logs again."""
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "config.json", config.to_dict())
    if state is not None:
        dropped = drop_metrics_after(out / "metrics.jsonl", int(state["iteration"]))
        if dropped:
            log.info("dropped %d metric rows past iteration %d", dropped, state["iteration"])


def train_step(run: Run, y_all: torch.Tensor) -> tuple[IterStats, torch.Tensor, torch.Tensor]:
    """The next iteration on this rank's share of the global batch; advances `run.iteration`. Returns the
    global batch's stats (the same on every rank) and this rank's drafts and revised images."""
    cfg, dist = run.config, run.dist
    idx = batch_indices(run.iteration, len(y_all), cfg.batch_size, cfg.seed, dist.rank, dist.world_size)
    y_data = y_all[idx].to(run.device)  # (N, C, H, W), this rank's share of the global batch
    set_learning_rates(run)
    stats, y_draft, y_rev = cooperative_iteration(run, y_data)
    run.iteration += 1
    return global_stats(dist, stats), y_draft, y_rev


def _due(run: Run, every: int) -> bool:
    """Whether the iteration just completed is one of every `every`, or the last: the last is always kept."""
    return run.iteration % every == 0 or run.iteration == run.config.iterations


def checkpoint_due(run: Run) -> bool:
    return _due(run, run.config.ckpt_every)


def save_run(run: Run, rank_rngs: list | None) -> Path:
    """RUN_DIR/checkpoint.pt of the run as it stands; `rank_rngs`: every rank's RNG states (rank 0's
    gather), None for one process."""
    return save_checkpoint(
        Path(run.config.out) / CHECKPOINT,
        descriptor=run.descriptor,
        generator=run.generator,
        opt_d=run.opt_d,
        opt_g=run.opt_g,
        config=run.config,
        iteration=run.iteration,
        train_rng=run.rng,
        scaler=run.scaler,
        rank_rngs=rank_rngs,
    )


class RunLog:
    """Rank 0's record of a run: the progress bar, metrics.jsonl, TensorBoard scalars and sample grids. On
    the other ranks it records nothing (rank 0 speaks for the job). A context manager, so that the files
    close however the loop ends (a divergence, Ctrl-C)."""

    def __init__(self, run: Run, *, progress: bool, resume: bool):
        self.run, self.main = run, run.dist.is_main
        out = Path(run.config.out)
        self.out = out
        purge = run.iteration + 1 if resume else None  # TensorBoard events a killed run logged past it
        self.writer = _summary_writer(out / "tb", purge_step=purge) if self.main else None
        self.bar = _progress(run.iteration, run.config.iterations, progress and self.main)
        self.start = time.perf_counter()
        self.metrics = (out / "metrics.jsonl").open("a") if self.main else None

    def __enter__(self) -> RunLog:
        return self

    def __exit__(self, *exc) -> None:
        self.bar.close()
        if self.metrics is not None:
            self.metrics.close()
        if self.writer is not None:
            self.writer.close()

    def record(self, stats: IterStats, y_draft: torch.Tensor, y_rev: torch.Tensor) -> None:
        """The iteration just completed: a bar tick; its stats every --log-every iterations and its drafts
        and revised images (M̃, C, H, W) every --sample-every, both at the last iteration too."""
        if not self.main:
            return
        it = self.run.iteration
        self.bar.update(1)
        if _due(self.run, self.run.config.log_every):
            self.bar.set_postfix(loss_d=f"{stats.loss_d:.3g}", loss_g=f"{stats.loss_g:.3g}")
            self._scalars(it, stats)
        if _due(self.run, self.run.config.sample_every):
            n = min(GRID_IMAGES, len(y_rev))  # rank 0's chains
            save_side_by_side(
                [y_draft[:n].cpu().numpy(), y_rev[:n].cpu().numpy()],
                self.out / "samples" / f"iter_{it:06d}.png",
            )

    def _scalars(self, it: int, stats: IterStats) -> None:
        record = {"iteration": it, "seconds": round(time.perf_counter() - self.start, 2)}
        self.metrics.write(json.dumps({**record, **asdict(stats)}) + "\n")
        self.metrics.flush()
        if self.writer is not None:
            for key, value in asdict(stats).items():
                self.writer.add_scalar(f"train/{key}", value, it)


def final_samples(run: Run, out_dir: Path, n: int = GRID_IMAGES) -> dict[str, float]:
    """Synthesis with the generator in eval mode (running BN statistics, as exported) and, for comparison, in
    train mode (batch statistics, as during training), from the same latents and the same Langevin noise.
    Writes samples/final_eval.png and samples/final_train_bn.png (drafts | revised) and returns mean f of the
    revised images and the mean per-image distance between the two modes' drafts."""
    cfg = run.config
    gen = torch.Generator(device=run.device).manual_seed(cfg.seed + 1)
    x = torch.randn(n, cfg.latent_dim, generator=gen, device=run.device)  # (n, d)
    noise_state = gen.get_state()
    result: dict[str, float] = {}
    drafts = {}
    for mode in ("eval", "train_bn"):
        g = copy.deepcopy(run.generator)  # train-mode BN would update the running statistics
        g.train(mode == "train_bn")
        with torch.no_grad():
            y_draft = g(x)  # (n, C, H, W)
        gen.set_state(noise_state)
        noise = torch_noise(gen) if cfg.langevin_noise else None
        y_rev = revise(run.descriptor, y_draft, cfg.langevin_steps, cfg.delta, cfg.s, noise)
        with torch.no_grad():
            result[f"f_revised_{mode}"] = run.descriptor(y_rev).mean().item()
        drafts[mode] = y_draft
        save_side_by_side([y_draft.cpu().numpy(), y_rev.cpu().numpy()], out_dir / f"final_{mode}.png")
    result["draft_distance_eval_vs_train_bn"] = (
        (drafts["eval"] - drafts["train_bn"]).flatten(1).norm(dim=1).mean().item()
    )
    return result


def _summary_writer(path: Path, purge_step: int | None = None):
    """TensorBoard's writer; `purge_step` (on resume) discards the events at and after it that a killed run
    logged past its checkpoint."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # pragma: no cover - tensorboard is a dependency
        log.warning("tensorboard is not installed: no TensorBoard scalars")
        return None
    return SummaryWriter(str(path), purge_step=purge_step)


def _progress(done: int, total: int, enabled: bool):
    from tqdm import tqdm

    return tqdm(
        total=total, initial=done, desc="coop-train", unit="it", disable=not enabled, dynamic_ncols=True
    )
