"""Checkpoints: round trip, RNG states, atomic writes, clear errors."""

from __future__ import annotations

import json
import os
import random

import numpy as np
import pytest
import torch
from coopnets.trainer import checkpoint as ckpt
from coopnets.trainer.config import TrainConfig
from coopnets.trainer.coop import build_run


def _save(run, path, iteration=5):
    return ckpt.save_checkpoint(
        path,
        descriptor=run.descriptor,
        generator=run.generator,
        opt_d=run.opt_d,
        opt_g=run.opt_g,
        config=run.config,
        iteration=iteration,
        train_rng=run.rng,
        scaler=run.scaler,
    )


def test_round_trip_and_load_models(tmp_path):
    run = build_run(TrainConfig(batch_size=4, lr_descriptor=0.003))
    with torch.no_grad():
        run.generator(torch.randn(4, 100))  # move the BN running statistics off their initial values
    path = _save(run, tmp_path / "checkpoint.pt")
    state = ckpt.load_checkpoint(path)
    assert state["iteration"] == 5 and state["spec"] == {"arch": "mnist28", "channels": 1, "latent_dim": 100}
    descriptor, generator, config = ckpt.load_models(path)
    assert config.lr_descriptor == 0.003 and not generator.training
    for a, b in zip(generator.state_dict().values(), run.generator.state_dict().values(), strict=True):
        assert torch.equal(a, b)  # includes running_mean / running_var
    y = torch.rand(2, 1, 28, 28)
    assert torch.equal(descriptor(y), run.descriptor(y))


def test_rng_states_restore_every_stream(tmp_path):
    run = build_run(TrainConfig(seed=3))
    path = _save(run, tmp_path / "c.pt")
    expected = (torch.randn(3, generator=run.rng), torch.randn(3), np.random.rand(3), random.random())
    ckpt.set_rng_states(ckpt.load_checkpoint(path)["rng"], run.rng)
    got = (torch.randn(3, generator=run.rng), torch.randn(3), np.random.rand(3), random.random())
    assert torch.equal(expected[0], got[0]) and torch.equal(expected[1], got[1])
    assert np.array_equal(expected[2], got[2]) and expected[3] == got[3]


def test_crash_during_write_leaves_old_checkpoint_intact(tmp_path, monkeypatch):
    run = build_run(TrainConfig())
    path = _save(run, tmp_path / "checkpoint.pt", iteration=1)
    before = path.read_bytes()

    def crash(obj, fh):  # the process dies half-way through writing the new checkpoint
        fh.write(b"partial checkpoint bytes")
        raise OSError("No space left on device")

    monkeypatch.setattr(ckpt.torch, "save", crash)
    with pytest.raises(OSError, match="No space left"):
        _save(run, path, iteration=2)
    assert path.read_bytes() == before
    assert ckpt.load_checkpoint(path)["iteration"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.pt"]  # no temp file left behind


def test_not_a_checkpoint(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        ckpt.load_checkpoint(tmp_path / "missing.pt")
    (tmp_path / "junk.pt").write_bytes(b"junk")
    with pytest.raises(ValueError, match="not a readable coopnets checkpoint"):
        ckpt.load_checkpoint(tmp_path / "junk.pt")
    torch.save({"model": 1}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="not a coopnets checkpoint"):
        ckpt.load_checkpoint(tmp_path / "other.pt")


def test_drop_metrics_after_keeps_rows_up_to_the_checkpoint(tmp_path):
    path = tmp_path / "metrics.jsonl"
    rows = [json.dumps({"iteration": i, "loss_d": -1.0}) for i in range(1, 6)]
    path.write_text("\n".join(rows) + '\n{"iteration": 6, "loss')  # the process died writing row 6
    assert ckpt.drop_metrics_after(path, 3) == 3
    assert path.read_text() == "\n".join(rows[:3]) + "\n"
    assert ckpt.drop_metrics_after(path, 3) == 0 and ckpt.drop_metrics_after(tmp_path / "none", 3) == 0
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.jsonl"]  # written atomically, no temp left


def test_run_dir_lock_is_exclusive_and_released_on_close(tmp_path):
    fd = ckpt.lock_run_dir(tmp_path / "run")
    assert (tmp_path / "run" / ".lock").read_text() == f"{os.getpid()}\n"
    with pytest.raises(ValueError, match=rf"being trained by another process \(pid {os.getpid()} holds"):
        ckpt.lock_run_dir(tmp_path / "run")
    os.close(fd)
    os.close(ckpt.lock_run_dir(tmp_path / "run"))


def test_checkpoint_holds_every_ranks_rng_and_old_ones_still_resume(tmp_path):
    from coopnets.trainer.coop import restore_run

    run = build_run(TrainConfig(seed=3))
    other = ckpt.rng_states(torch.Generator().manual_seed(11))
    path = ckpt.save_checkpoint(
        tmp_path / "c.pt",
        descriptor=run.descriptor,
        generator=run.generator,
        opt_d=run.opt_d,
        opt_g=run.opt_g,
        config=run.config,
        iteration=4,
        train_rng=run.rng,
        rank_rngs=[ckpt.rng_states(run.rng), other],
    )
    state = ckpt.load_checkpoint(path)
    assert state["world_size"] == 2 and torch.equal(state["rng_ranks"][1]["train"], other["train"])
    assert torch.equal(state["rng"]["train"], run.rng.get_state())  # rank 0's, where it always was
    expected = torch.randn(3, generator=run.rng)
    del state["rng_ranks"], state["world_size"]  # a checkpoint written before torchrun support
    fresh = build_run(TrainConfig(seed=3))
    restore_run(fresh, state)
    assert fresh.iteration == 4 and torch.equal(torch.randn(3, generator=fresh.rng), expected)


def test_a_checkpoint_from_before_the_schedule_resumes_and_exports_at_constant_rates(tmp_path):
    """Runs saved before --lr-schedule existed trained at constant rates; today's default is cosine."""
    from coopnets.trainer.config import resolve_train_config

    run = build_run(TrainConfig(batch_size=4, lr_schedule="constant"))
    path = _save(run, tmp_path / "checkpoint.pt")
    state = ckpt.load_checkpoint(path)
    del state["config"]["lr_schedule"]  # what an earlier version wrote
    torch.save(state, path)
    assert ckpt.load_models(path)[2].lr_schedule == "constant"
    saved = ckpt.load_checkpoint(path)["config"]
    assert resolve_train_config({}, saved=saved).lr_schedule == "constant"
    assert resolve_train_config({"lr_schedule": "cosine"}, saved=saved).lr_schedule == "cosine"  # a flag wins
    assert resolve_train_config({}).lr_schedule == "cosine"  # a new run gets the default
