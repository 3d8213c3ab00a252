"""coop-train under torchrun: 2 CPU processes (gloo), tiny settings, real processes and real signals.

- the ranks' result equals, bit for bit, each rank's iteration computed here by hand (its share of the global
  batch, the generator's BatchNorm normalising its own block of chains: per-rank statistics, docs/training.md)
  with the gradients averaged: the gradient of the global batch's mean loss; with one BatchNorm over the
  whole batch the generator differs;
- rank 0 alone writes (one metrics row per iteration), and the checkpoint holds every rank's RNG states;
- a rank killed mid-run: torchrun stops the other within seconds, the last checkpoint is intact, --resume
  under torchrun continues and redoes the lost iterations with the same numbers; without torchrun's agent (as
  across machines), the survivor's next collective fails and it exits with one line;
- one rank failing (rank 0 cannot write its grid) stops both ranks with one line.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from coopnets.trainer.checkpoint import load_checkpoint
from coopnets.trainer.config import TrainConfig
from coopnets.trainer.coop import batch_indices, descriptor_scores
from coopnets.trainer.data import load_images, to_tensor
from coopnets.trainer.distributed import rank_seed
from coopnets.trainer.langevin import revise, torch_noise
from coopnets.trainer.nets import build_nets
from support import ROOT

pytestmark = pytest.mark.slow  # torchrun: real processes

WORLD = 2
TINY = [
    "--lr-schedule",  # one_process below steps at constant rates, the paper's
    "constant",
    "--batch-size",
    "2",
    "--langevin-steps",
    "2",
    "--log-every",
    "1",
    "--sample-every",
    "1000",
    "--ckpt-every",
    "2",
    "--no-export",
    "--seed",
    "5",
    "--amp",
    "none",  # float32: compared with a hand computation below (--amp auto picks bf16 on some CPUs)
]


@pytest.fixture(scope="module")
def npz(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("data") / "tiny.npz"
    np.savez(path, images=np.random.default_rng(0).integers(0, 256, size=(12, 28, 28), dtype=np.uint8))
    return path


def torchrun(*args: str) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={WORLD}",
            "--monitor-interval", "0.1", "-m", "coopnets.trainer.cli", *args]  # fmt: skip


def run_cmd(cmd: list[str], timeout: float = 240, env: dict | None = None) -> subprocess.CompletedProcess:
    env = None if env is None else {**os.environ, **env}
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout, env=env)


def rows(run: Path) -> list[dict]:
    return [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines() if x.strip()]


def error_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if "coop-train: error:" in line]


# ---- (a) the same parameters as each rank's iteration by hand, gradients averaged ------------------------
def one_process(cfg: TrainConfig, data: np.ndarray, iterations: int) -> dict:
    """The paper's iteration on the global batch (both ranks' data, both ranks' chains, each rank's latents
    and noise from its own stream) in one process, with one BatchNorm over all chains: not what the ranks
    compute (each normalises its own block of chains, docs/training.md)."""
    torch.manual_seed(cfg.seed)
    f, g = build_nets(cfg.net_spec)
    g.train()
    opt_d = torch.optim.Adam(f.parameters(), lr=cfg.lr_descriptor, betas=(cfg.beta1, 0.999))
    opt_g = torch.optim.Adam(g.parameters(), lr=cfg.lr_generator, betas=(cfg.beta1, 0.999))
    rngs = [torch.Generator().manual_seed(rank_seed(cfg.seed, r)) for r in range(WORLD)]
    m, y_all = cfg.num_chains, to_tensor(data)
    for it in range(iterations):
        y_data = y_all[batch_indices(it, len(y_all), cfg.batch_size * WORLD, cfg.seed)]  # (W·N, C, H, W)
        x = [torch.randn(m, cfg.latent_dim, generator=rng) for rng in rngs]  # W × (M̃, d)
        y_draft = g(torch.cat(x))  # (W·M̃, C, H, W), BatchNorm over all chains
        noise = lambda t, like: torch.cat([torch.randn((m, *like.shape[1:]), generator=r) for r in rngs])  # noqa: E731
        y_rev = revise(f, y_draft.detach(), cfg.langevin_steps, cfg.delta, cfg.s, noise)  # (W·M̃, C, H, W)
        loss_d = f(y_rev).mean() - f(y_data).mean()
        opt_d.zero_grad()
        loss_d.backward()
        opt_d.step()
        loss_g = (y_rev - y_draft).pow(2).flatten(1).sum(1).mean() / (2 * cfg.sigma**2)
        opt_g.zero_grad()
        loss_g.backward()
        opt_g.step()
    return {"generator": g.state_dict()}


def each_rank(cfg: TrainConfig, data: np.ndarray, iterations: int) -> dict:
    """What the ranks compute, by hand in one process on one thread (as torchrun runs each worker): per rank
    its share of the global batch, its latents and noise from its own stream, the generator's BatchNorm over
    its own block of chains, the gradients of its mean losses; then the all-reduce's mean of the gradients
    and of BatchNorm's running statistics (the gradient of the global batch's mean loss), one Adam step."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        torch.manual_seed(cfg.seed)
        f, g = build_nets(cfg.net_spec)
        g.train()
        opt_d = torch.optim.Adam(f.parameters(), lr=cfg.lr_descriptor, betas=(cfg.beta1, 0.999))
        opt_g = torch.optim.Adam(g.parameters(), lr=cfg.lr_generator, betas=(cfg.beta1, 0.999))
        rngs = [torch.Generator().manual_seed(rank_seed(cfg.seed, r)) for r in range(WORLD)]
        y_all = to_tensor(data)
        bns = [mod for mod in g.modules() if isinstance(mod, torch.nn.BatchNorm2d)]
        for it in range(iterations):
            before = [(bn.running_mean, bn.running_var) for bn in bns]
            grads_d, grads_g, stats = [], [], []
            for r, rng in enumerate(rngs):
                for bn, (mean, var) in zip(bns, before, strict=True):  # new tensors: autograd saved the old
                    bn.running_mean, bn.running_var = mean.clone(), var.clone()
                share = batch_indices(it, len(y_all), cfg.batch_size, cfg.seed, rank=r, world_size=WORLD)
                y_data = y_all[share]  # (N, C, H, W)
                x = torch.randn(cfg.num_chains, cfg.latent_dim, generator=rng)  # (M̃, d)
                y_draft = g(x)  # (M̃, C, H, W), BatchNorm over this rank's chains
                y_rev = revise(f, y_draft.detach(), cfg.langevin_steps, cfg.delta, cfg.s, torch_noise(rng))
                f_data, f_rev = descriptor_scores(f, y_data, y_rev)  # (N,), (M̃,): one batch, as the rank
                grads_d.append(torch.autograd.grad(f_rev.mean() - f_data.mean(), list(f.parameters())))
                loss_g = (y_rev - y_draft).pow(2).flatten(1).sum(1).mean() / (2 * cfg.sigma**2)
                grads_g.append(torch.autograd.grad(loss_g, list(g.parameters())))
                stats.append([(bn.running_mean, bn.running_var) for bn in bns])
            for i, bn in enumerate(bns):  # one more batch tracked, as on each rank
                bn.num_batches_tracked -= WORLD - 1
                bn.running_mean = sum(s[i][0] for s in stats) / WORLD
                bn.running_var = sum(s[i][1] for s in stats) / WORLD
            for opt, net, grads in ((opt_d, f, grads_d), (opt_g, g, grads_g)):
                for p, *per_rank in zip(net.parameters(), *grads, strict=True):
                    p.grad = sum(per_rank) / WORLD  # the all-reduce's sum, then its division
                opt.step()
    finally:
        torch.set_num_threads(threads)
    return {"descriptor": f.state_dict(), "generator": g.state_dict(), "opt_d": opt_d.state_dict(),
            "opt_g": opt_g.state_dict(), "rngs": [r.get_state() for r in rngs]}  # fmt: skip


def test_two_ranks_equal_each_ranks_iteration_averaged_bit_for_bit(npz, tmp_path):
    run, iterations = tmp_path / "ddp", 3
    args = ["--dataset", f"npz:{npz}", "--out", str(run), "--iterations", str(iterations), *TINY]
    proc = run_cmd(torchrun(*args), env={"OMP_NUM_THREADS": "1"})  # each_rank's thread count, in any shell
    assert proc.returncode == 0, proc.stderr[-3000:]
    state = load_checkpoint(run / "checkpoint.pt")
    cfg = TrainConfig(**state["config"])
    data = load_images(f"npz:{npz}", size=28, channels=1)
    ref = each_rank(cfg, data, iterations)
    # Bit for bit: each_rank runs each rank's float32 operations on the same inputs, in the same batches, on
    # one thread as the ranks do; the all-reduce of two ranks adds a + b once (the order cannot matter) and
    # divides by 2 (exact). A tolerance could not be set here: one process with the global batch adds the
    # same terms in other orders, off by rounding that changes with the CPU's kernels, and Adam turns a
    # gradient that is rounding noise (a transposed conv's bias before BatchNorm, whose gradient is 0 in
    # exact arithmetic, or any element near 0) into a step of ±lr whatever its size.
    for net in ("descriptor", "generator"):
        for key, value in ref[net].items():
            assert torch.equal(state[net][key], value), f"{net}.{key}"
    for opt in ("opt_d", "opt_g"):  # Adam's moments: the averaged gradients
        for i, moments in ref[opt]["state"].items():
            for k in ("exp_avg", "exp_avg_sq"):
                assert torch.equal(state[opt]["state"][i][k], moments[k]), f"{opt} {i} {k}"
    # each rank drew its latents and noise from its own stream, and the checkpoint holds both states
    assert state["world_size"] == WORLD and len(state["rng_ranks"]) == WORLD
    for r in range(WORLD):
        assert torch.equal(state["rng_ranks"][r]["train"], ref["rngs"][r]), r
    # one BatchNorm over all chains is another algorithm: the generator comes out measurably different. Its
    # statistics over 4 chains instead of 2 change every gradient of the first layer by O(1), and Adam's
    # steps (±lr at the first) with them. Rounding alone (the same algorithm summed in another order) moves a
    # gradient by ~n·u of its terms' size (u = 2⁻²⁴, n <= 1e4 terms: < 1e-3), which changes an Adam step by
    # more than that only where it flips the gradient's sign: a fraction of the elements of order 1e-3 per
    # step, each then moved by at most 6.4·lr over the three steps (a bias-corrected step of β1 = 0.5 is at
    # most 1.13·lr by Cauchy-Schwarz), so a mean |difference| of at most ~2e-2·lr; lr/10 is five times that.
    global_bn = one_process(cfg, data, iterations)["generator"]
    weight = next(k for k in global_bn if k.endswith("weight"))
    moved = (state["generator"][weight] - global_bn[weight]).abs().mean().item()
    assert moved > cfg.lr_generator / 10, (moved, cfg.lr_generator)
    # rank 0 alone wrote the run directory: one row per iteration (not one per rank), logs of the global batch
    assert [r["iteration"] for r in rows(run)] == list(range(1, iterations + 1))
    assert "2 rank(s), global batch 4, 4 chains" in (run / "train.log").read_text()


def test_ranks_take_disjoint_shares_of_the_global_batch():
    for it in range(5):
        shares = [batch_indices(it, 12, 2, 7, rank=r, world_size=3) for r in range(3)]
        assert len(set(torch.cat(shares).tolist())) == 6  # disjoint
        assert torch.equal(torch.cat(shares), batch_indices(it, 12, 6, 7))  # = one process, global batch
    assert torch.equal(batch_indices(4, 12, 4, 7), batch_indices(4, 12, 4, 7, rank=0, world_size=1))


# ---- (b) a rank killed mid-run -------------------------------------------------------------------------
def worker_pids(launcher: int) -> dict[int, int]:
    """{RANK: pid} of torchrun's worker processes (its children with RANK in their environment)."""
    found = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            parent = int(stat.read_text().rsplit(")", 1)[1].split()[1])
            if parent != launcher:
                continue
            env = (stat.parent / "environ").read_bytes().split(b"\0")
        except (OSError, ValueError, IndexError):
            continue
        ranks = [int(e[5:]) for e in env if e.startswith(b"RANK=")]
        if ranks:
            found[ranks[0]] = int(stat.parent.name)
    return found


def wait_for_rows(run: Path, proc: subprocess.Popen, at_least: int, deadline_s: float = 240) -> None:
    deadline = time.monotonic() + deadline_s
    while not ((run / "metrics.jsonl").exists() and len(rows(run)) >= at_least):
        assert proc.poll() is None, "the run ended before the kill"
        assert time.monotonic() < deadline, "no progress"
        time.sleep(0.05)


def test_killed_rank_stops_the_job_and_resume_continues(npz, tmp_path):
    run = tmp_path / "run"
    launcher = subprocess.Popen(
        torchrun("--dataset", f"npz:{npz}", "--out", str(run), "--iterations", "500", *TINY),
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    wait_for_rows(run, launcher, at_least=5)
    os.kill(worker_pids(launcher.pid)[1], signal.SIGKILL)
    killed = time.monotonic()
    launcher.wait(timeout=60)
    assert launcher.returncode != 0
    assert time.monotonic() - killed < 30, "the job outlived its killed rank by more than 30 s"
    before = {r["iteration"]: r for r in rows(run)}
    state = load_checkpoint(run / "checkpoint.pt")  # intact
    saved, last = state["iteration"], max(before)
    assert saved % 2 == 0 and last - 2 <= saved <= last
    target = last + 2
    proc = run_cmd(torchrun("--out", str(run), "--iterations", str(target), "--resume"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    after = rows(run)
    assert [r["iteration"] for r in after] == list(range(1, target + 1))  # replayed rows not doubled
    for r in after:  # the redone iterations (per-rank RNG states restored) log the same numbers as before
        if r["iteration"] in before:
            assert {k: v for k, v in r.items() if k != "seconds"} == {
                k: v for k, v in before[r["iteration"]].items() if k != "seconds"
            }
    assert load_checkpoint(run / "checkpoint.pt")["iteration"] == target


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_without_the_agent_the_survivor_exits_with_one_line(npz, tmp_path):
    """Two ranks started by hand (as on two machines, where no local agent stops the survivor)."""
    run, port = tmp_path / "run", free_port()
    procs = []
    for rank in range(WORLD):
        env = {**os.environ, "RANK": str(rank), "LOCAL_RANK": "0", "WORLD_SIZE": str(WORLD),
               "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "OMP_NUM_THREADS": "1"}  # fmt: skip
        args = ["--dataset", f"npz:{npz}", "--out", str(run), "--iterations", "500", "--dist-timeout", "30"]
        procs.append(
            subprocess.Popen(
                [sys.executable, "-m", "coopnets.trainer.cli", *args, *TINY],
                cwd=ROOT,
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                text=True,
            )
        )
    wait_for_rows(run, procs[0], at_least=3)
    procs[1].send_signal(signal.SIGKILL)
    killed = time.monotonic()
    _, err = procs[0].communicate(timeout=60)
    assert procs[0].returncode == 1, err[-2000:]
    assert time.monotonic() - killed < 45
    lines = error_lines(err)
    assert len(lines) == 1 and "rank 0: lost the other ranks" in lines[0], err[-2000:]
    assert load_checkpoint(run / "checkpoint.pt")["iteration"] % 2 == 0


# ---- one rank failing stops every rank ---------------------------------------------------------------
def test_one_rank_failing_stops_all_with_one_line(npz, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "samples").write_text("not a folder")  # rank 0's first grid write fails; rank 1 writes nothing
    args = ["--dataset", f"npz:{npz}", "--out", str(run), "--iterations", "50", *TINY, "--sample-every", "3"]
    started = time.monotonic()
    proc = run_cmd(torchrun(*args), timeout=120)
    assert proc.returncode != 0
    assert time.monotonic() - started < 90
    lines = error_lines(proc.stdout + proc.stderr)
    assert len(lines) == 1 and lines[0].startswith("coop-train: error: rank 0: "), lines
    assert [r["iteration"] for r in rows(run)] == [1, 2, 3]  # it stopped at the failing iteration
    assert load_checkpoint(run / "checkpoint.pt")["iteration"] == 2
