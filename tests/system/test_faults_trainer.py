"""coop-train killed with SIGKILL, at a random iteration and in the middle of a checkpoint write: `--resume`
always finds a valid checkpoint, at most one checkpoint interval behind the last finished iteration, and
continues exactly (the iterations it redoes log the same losses as before the kill, and metrics.jsonl holds
each iteration once: the rows past the checkpoint are dropped on resume). While a run trains, a second
coop-train on its directory refuses with one line (RUN_DIR/.lock); the kill releases the lock.

Real subprocesses, real SIGKILL (no cleanup code runs). The mid-write kill patches torch.save in the victim
process so that it writes half of the checkpoint's bytes to the temporary file, fsyncs them, and SIGKILLs
itself: the worst moment for a non-atomic writer.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from coopnets.trainer.checkpoint import load_checkpoint
from support import ROOT

pytestmark = pytest.mark.slow  # coop-train processes killed and resumed

INTERVAL = 2  # --ckpt-every
TINY = [
    "--lr-schedule",  # a resume to another --iterations stretches a cosine curve: constant rates redo
    "constant",  # the lost iterations exactly whatever the target
    "--batch-size",
    "2",
    "--langevin-steps",
    "1",
    "--log-every",
    "1",
    "--sample-every",
    "1000",
    "--ckpt-every",
    str(INTERVAL),
    "--no-export",
    "--seed",
    "3",
]

# coop-train whose KILL_AT-th checkpoint write dies half-way through (SIGKILL, after fsync of the half).
DIES_WHILE_WRITING = """
import io, os, signal, sys
import torch
kill_at, calls, real_save = int(os.environ["KILL_AT"]), [0], torch.save
def save(obj, fh, *a, **kw):
    calls[0] += 1
    if calls[0] == kill_at:
        buf = io.BytesIO()
        real_save(obj, buf)
        fh.write(buf.getvalue()[: len(buf.getvalue()) // 2])
        fh.flush()
        os.fsync(fh.fileno())
        os.kill(os.getpid(), signal.SIGKILL)
    return real_save(obj, fh, *a, **kw)
torch.save = save
from coopnets.trainer.cli import train_main
sys.exit(train_main(sys.argv[1:]))
"""


@pytest.fixture(scope="module")
def npz(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("data") / "tiny.npz"
    np.savez(path, images=np.random.default_rng(0).integers(0, 256, size=(8, 28, 28), dtype=np.uint8))
    return path


def train_cmd(npz: Path, out: Path, iterations: int, *extra: str) -> list[str]:
    return ["--dataset", f"npz:{npz}", "--out", str(out), "--iterations", str(iterations), *TINY, *extra]


def logged(run: Path) -> dict[int, list[dict]]:
    """metrics.jsonl by iteration, every record kept: {it: [first, second, ...]}."""
    records: dict[int, list] = {}
    for line in (run / "metrics.jsonl").read_text().splitlines():
        if line.strip():
            r = json.loads(line)
            records.setdefault(r["iteration"], []).append(r)
    return records


def resume_and_check(npz: Path, run: Path, killed_after: int) -> None:
    """The checkpoint is valid and at most one interval behind `killed_after` (the last logged iteration);
    --resume continues one iteration past it, re-doing the lost ones with identical losses, logged once."""
    before = logged(run)
    state = load_checkpoint(run / "checkpoint.pt")
    saved = state["iteration"]
    assert killed_after - INTERVAL <= saved <= killed_after, (saved, killed_after)
    target = killed_after + 1
    proc = subprocess.run(
        [sys.executable, "-m", "coopnets.trainer.cli", *train_cmd(npz, run, target), "--resume"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert load_checkpoint(run / "checkpoint.pt")["iteration"] == target
    records = logged(run)
    assert sorted(records) == list(range(1, target + 1))
    redone = [it for it in range(saved + 1, killed_after + 1)]
    assert all(len(rows) == 1 for rows in records.values()), "a replayed row was not dropped"
    for it in redone:  # logged before the kill and again after the resume: the same numbers
        first, again = before[it][0], records[it][0]
        assert {k: v for k, v in first.items() if k != "seconds"} == {
            k: v for k, v in again.items() if k != "seconds"
        }


def test_sigkill_during_a_checkpoint_write_keeps_the_previous_one(npz, tmp_path):
    run = tmp_path / "run"
    env = {**os.environ, "KILL_AT": "2"}  # the second checkpoint, at iteration 2 * INTERVAL
    proc = subprocess.run(
        [sys.executable, "-c", DIES_WHILE_WRITING, *train_cmd(npz, run, 20)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    assert [p.name for p in run.glob(".checkpoint.pt.*.tmp")], "the kill did not land inside the write"
    assert load_checkpoint(run / "checkpoint.pt")["iteration"] == INTERVAL
    resume_and_check(npz, run, killed_after=2 * INTERVAL)


def test_sigkill_at_random_points_then_resume(npz, tmp_path):
    rng = random.Random(5)
    for attempt in range(2):  # more attempts: more random points, ~20 s each
        run = tmp_path / f"run{attempt}"
        victim = subprocess.Popen(
            [sys.executable, "-m", "coopnets.trainer.cli", *train_cmd(npz, run, 100)],
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        kill_at = rng.randint(INTERVAL + 1, 4 * INTERVAL)
        deadline = time.monotonic() + 240
        while not ((run / "metrics.jsonl").exists() and max(logged(run), default=0) >= kill_at):
            assert victim.poll() is None and time.monotonic() < deadline, "the run ended before the kill"
            time.sleep(0.02)
        time.sleep(rng.uniform(0.0, 1.0))  # somewhere inside the next iteration or checkpoint write
        victim.send_signal(signal.SIGKILL)
        assert victim.wait(30) == -signal.SIGKILL
        resume_and_check(npz, run, killed_after=max(logged(run)))


def test_a_second_trainer_on_a_running_directory_refuses(npz, tmp_path):
    run = tmp_path / "run"
    first = subprocess.Popen(
        [sys.executable, "-m", "coopnets.trainer.cli", *train_cmd(npz, run, 100)],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 240
    while not ((run / "metrics.jsonl").exists() and max(logged(run), default=0) >= INTERVAL + 1):
        assert first.poll() is None and time.monotonic() < deadline, "the first run ended early"
        time.sleep(0.02)
    for extra in ([], ["--resume"]):  # a fresh start and a resume are both refused while it trains
        second = subprocess.run(
            [sys.executable, "-m", "coopnets.trainer.cli", *train_cmd(npz, run, 200), *extra],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert second.returncode == 2
        assert second.stderr.count("\n") == 1, second.stderr
        assert f"being trained by another process (pid {first.pid} holds" in second.stderr
    assert first.poll() is None  # untouched by the refused ones
    first.send_signal(signal.SIGKILL)
    assert first.wait(30) == -signal.SIGKILL
    resume_and_check(npz, run, killed_after=max(logged(run)))  # SIGKILL released the lock
