"""Cooperative training of the descriptor f(Y; α) and the generator g(X; β) (Xie et al., TPAMI 2018, Alg. 1).

One iteration, as in the paper:
    1. draft      X̂_i ~ N(0, I_d), Ŷ_i = g(X̂_i) for M̃ chains
    2. revise     l steps of descriptor Langevin from Ŷ (fresh chains every iteration): Ỹ
    3. (infer)    optionally, latent Langevin on X̂ to explain Ỹ (off in the paper and by default)
    4. descriptor minimise mean f(Ỹ) − mean f(Y_data)          (Adam, β1 = 0.5; Ỹ is a constant)
    5. generator  minimise mean_i ‖Ỹ_i − g(X̂_i)‖² / (2σ²)      (Adam, β1 = 0.5; "MCMC teaching", same X̂)

`cooperative_iteration` is that paragraph in code; `train` is the loop around it (data batches, logging,
sample grids, checkpoints, the divergence guard). The generator trains with BatchNorm batch statistics
(running statistics tracked) and is exported in eval mode with the running statistics.

Under torchrun (trainer/distributed.py) every rank runs this same loop on its own share of the global batch:
its own data batch (`batch_indices` by rank), its own M̃ chains from its own RNG stream, and the two
gradients averaged over the ranks right before each optimiser step, so both nets take the step of the
global-batch loss and stay identical on every rank. BatchNorm normalises by each rank's own M̃ drafts
(per-rank statistics, see docs/training.md); the running statistics are averaged with the generator's
gradients. Rank 0 alone writes the run directory. One process is the world-size-1 case: no collective runs.
"""

from __future__ import annotations

import contextlib
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


class _Autocast(nn.Module):
    """Runs a net under autocast (CUDA: bf16 or fp16; CPU: bf16) and returns float32, so Langevin arithmetic
    stays float32.

    The sum over the descriptor's 100 outputs is float32, and under fp16 its last layer too: that is where f
    grows with training (per-output values of 5.5e4 by iteration 500 and f(data) of 1.25e7 were measured,
    beyond float16's 65504). bfloat16 has float32's range, so under bf16 the last layer stays in bf16: a
    float32 copy of it only costs time (docs/training.md, "Mixed precision")."""

    def __init__(self, net: nn.Module, dtype: torch.dtype, device_type: str):
        super().__init__()
        self.net, self.dtype, self.device_type = net, dtype, device_type

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if isinstance(self.net, Descriptor) and self.dtype == torch.float16:
            *hidden, last = self.net.body
            with torch.autocast(self.device_type, dtype=self.dtype):
                for layer in hidden:
                    x = layer(x)
            with torch.autocast(self.device_type, enabled=False):
                return last(x.float()).flatten(1).sum(1)  # (N, 100) -> (N,), float32
        if isinstance(self.net, Descriptor):
            with torch.autocast(self.device_type, dtype=self.dtype):
                out = self.net.body(x)  # (N, 100, 1, 1) bf16
            return out.float().flatten(1).sum(1)  # (N,), summed in float32
        with torch.autocast(self.device_type, dtype=self.dtype):
            return self.net(x).float()


def _nets(run: Run) -> tuple[nn.Module, nn.Module]:
    if run.config.amp == "none":
        return run.descriptor, run.generator
    dtype, kind = _amp_dtype(run), run.device.type
    return _Autocast(run.descriptor, dtype, kind), _Autocast(run.generator, dtype, kind)


def _amp_dtype(run: Run) -> torch.dtype:
    return torch.bfloat16 if run.config.amp == "bf16" else torch.float16


def _cast_once(run: Run):
    """An autocast region around work that does not change the weights (the Langevin chain): autocast keeps
    its low-precision copies of the weights until the outermost region exits, so the l steps cast them once,
    not l times (same numbers; `bench/training.py`'s iteration ~1-2% faster). A no-op without --amp."""
    if run.config.amp == "none":
        return contextlib.nullcontext()
    return torch.autocast(run.device.type, dtype=_amp_dtype(run))


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
    Returns the stats, the drafts Ŷ and the revised Ỹ (both (M̃, C, H, W), detached)."""
    cfg = run.config
    f, g = _nets(run)
    noise = torch_noise(run.rng) if cfg.langevin_noise else None

    # 1. Draft: X̂ ~ N(0, I), Ŷ = g(X̂); the graph of g(X̂) is kept for the generator update in step 5
    x = torch.randn(cfg.num_chains, cfg.latent_dim, generator=run.rng, device=run.device)  # (M̃, d)
    y_draft = g(x)  # (M̃, C, H, W)

    # 2. Revise: l steps of descriptor Langevin from the drafts, Ỹ
    with _cast_once(run):
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
    run.iteration += 1

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
    out = Path(config.out)
    y_all = to_tensor(data)  # (N_data, C, H, W), kept on CPU; batches move to the device
    scale = reference_energy(y_all, config.s)  # the divergence guard's unit, the same on every rank
    state = None
    with dist.together():  # an error on any rank (data, checkpoint, run directory) stops every rank
        if tuple(y_all.shape[1:]) != config.net_spec.image_shape:
            raise ValueError(
                f"data images are {tuple(y_all.shape[1:])} but the model needs {config.net_spec.image_shape}"
            )
        if dist.world_size > 1 and len(y_all) < config.batch_size * dist.world_size:
            raise ValueError(
                f"--batch-size {config.batch_size} on {dist.world_size} ranks is a global batch of "
                f"{config.batch_size * dist.world_size} images, more than the {len(y_all)} there are"
            )
        run = build_run(config, dist)
        if dist.is_main and config.amp == "auto":
            log.info("--amp auto: %s on %s", run.config.amp, run.device)
        config = run.config  # --amp resolved
        if resume and dist.is_main:
            state = load_checkpoint(out / CHECKPOINT)
            if from_dict(TrainConfig, state["config"]).net_spec != config.net_spec:
                raise ValueError(
                    f"--resume: {out / CHECKPOINT} holds a {state['spec']} model, not {config.net_spec}"
                )
        if dist.is_main:
            out.mkdir(parents=True, exist_ok=True)
            atomic_write_json(out / "config.json", config.to_dict())
            if state is not None:
                dropped = drop_metrics_after(out / "metrics.jsonl", int(state["iteration"]))
                if dropped:
                    log.info("dropped %d metric rows past iteration %d", dropped, state["iteration"])
    if resume:
        restore_run(run, dist.broadcast_object(state))
        if dist.is_main:
            log.info("resumed %s at iteration %d", out / CHECKPOINT, run.iteration)
    else:
        dist.broadcast_parameters(run.descriptor, run.generator)  # identical starts, even across machines
    main = dist.is_main
    writer = _summary_writer(out / "tb", purge_step=run.iteration + 1 if resume else None) if main else None

    def checkpoint(rank_rngs: list) -> None:
        save_checkpoint(
            out / CHECKPOINT,
            descriptor=run.descriptor,
            generator=run.generator,
            opt_d=run.opt_d,
            opt_g=run.opt_g,
            config=config,
            iteration=run.iteration,
            train_rng=run.rng,
            scaler=run.scaler,
            rank_rngs=rank_rngs,
        )

    bar = _progress(run.iteration, config.iterations, progress and main)
    start = time.perf_counter()
    metrics = (out / "metrics.jsonl").open("a") if main else None
    try:
        while run.iteration < config.iterations:
            idx = batch_indices(
                run.iteration, len(y_all), config.batch_size, config.seed, dist.rank, dist.world_size
            )
            y_data = y_all[idx].to(run.device)  # (N, C, H, W), this rank's share of the global batch
            set_learning_rates(run)
            stats, y_draft, y_rev = cooperative_iteration(run, y_data)
            stats = global_stats(dist, stats)  # the global batch's, the same on every rank
            it = run.iteration
            last = it == config.iterations
            due_ckpt = it % config.ckpt_every == 0 or last
            rank_rngs = dist.gather_object(rng_states(run.rng)) if due_ckpt else None  # on rank 0
            with dist.together():  # the guard or a failed write on any rank stops every rank, one line
                check_divergence(stats, config, it, scale)
                if main:
                    bar.update(1)
                    if it % config.log_every == 0 or last:
                        bar.set_postfix(loss_d=f"{stats.loss_d:.3g}", loss_g=f"{stats.loss_g:.3g}")
                        record = {"iteration": it, "seconds": round(time.perf_counter() - start, 2)}
                        metrics.write(json.dumps({**record, **asdict(stats)}) + "\n")
                        metrics.flush()
                        if writer is not None:
                            for key, value in asdict(stats).items():
                                writer.add_scalar(f"train/{key}", value, it)
                    if it % config.sample_every == 0 or last:
                        n = min(GRID_IMAGES, len(y_rev))  # rank 0's chains
                        save_side_by_side(
                            [y_draft[:n].cpu().numpy(), y_rev[:n].cpu().numpy()],
                            out / "samples" / f"iter_{it:06d}.png",
                        )
                    if due_ckpt:
                        checkpoint(rank_rngs)
    finally:
        bar.close()
        if metrics is not None:
            metrics.close()
        if writer is not None:
            writer.close()
    return run


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
