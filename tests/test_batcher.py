"""The batcher's window policy on a real Batcher with a plain run function (no engine needed to see it)."""

from __future__ import annotations

import threading

import numpy as np
from coopnets.serving.batcher import Batcher, Job

WINDOW_S = 30.0  # far longer than any test may take: a job that waited it would time out below


def _job(seed: int) -> Job:
    return Job("synthesize", None, {"seeds": np.array([seed])}, threading.Event())


class Recorder:
    """Runs a batch by echoing its seeds; optionally holds the first batch until released."""

    def __init__(self, hold_first: bool = False):
        self.batches: list[list[int]] = []
        self.started = threading.Event()
        self.release = threading.Event()
        if not hold_first:
            self.release.set()

    def __call__(self, kind, params, inputs, should_stop):
        self.batches.append(inputs["seeds"].tolist())
        self.started.set()
        self.release.wait(10)
        return {"seeds": inputs["seeds"] * 10}


def test_lone_request_does_not_wait_the_window():
    run = Recorder()
    batcher = Batcher(run, max_batch=16, max_delay_s=WINDOW_S, max_queue=8)
    try:
        for seed in range(3):  # a single client, one request after another
            out = batcher.submit(_job(seed)).result(timeout=10)
            assert out["seeds"].tolist() == [seed * 10]
        assert run.batches == [[0], [1], [2]]
    finally:
        batcher.close()


def test_requests_arriving_while_a_batch_runs_are_merged():
    run = Recorder(hold_first=True)
    batcher = Batcher(run, max_batch=16, max_delay_s=0.2, max_queue=8)
    try:
        first = batcher.submit(_job(0))
        assert run.started.wait(10)  # the first ran at once, alone
        later = [batcher.submit(_job(s)) for s in (1, 2, 3)]
        run.release.set()
        assert first.result(timeout=10)["seeds"].tolist() == [0]
        assert [f.result(timeout=10)["seeds"].tolist() for f in later] == [[10], [20], [30]]
        assert run.batches == [[0], [1, 2, 3]]
    finally:
        batcher.close()
