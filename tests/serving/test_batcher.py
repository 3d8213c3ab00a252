"""The batcher's policy on a real Batcher with a stand-in engine (no bundle needed to see it): the window, and
lanes by kind, so that cheap work is not stuck behind heavy work."""

from __future__ import annotations

import threading

import numpy as np
from coopnets.contract.sampling import Samples, SynthesisParams
from coopnets.serving.batcher import Batcher
from coopnets.serving.jobs import CompletionJob, EnergyJob, SynthesisJob
from support import completion_params

WINDOW_S = 30.0  # far longer than any test may take: a job that waited it would time out below
PARAMS = SynthesisParams(steps=1, delta=0.1, noise=False)
COMPLETION = completion_params(latent_step_size=0.1, delta=0.1, noise=False)


def _job(seed: int) -> SynthesisJob:
    return SynthesisJob((seed,), PARAMS)


def _samples(values) -> Samples:
    v = np.asarray(values, dtype=np.float32)
    return Samples(v, v, v)


class Recorder:
    """An engine that answers a batch by echoing its seeds times 10; optionally holds the first synthesis
    batch, or every completion batch, until released."""

    def __init__(self, hold_first: bool = False):
        self.batches: list[list[int]] = []
        self.started = threading.Event()
        self.release = threading.Event()
        if not hold_first:
            self.release.set()

    def synthesize(self, seeds, params, should_stop):
        self.batches.append(list(seeds))
        self.started.set()
        self.release.wait(10)
        return _samples([s * 10 for s in seeds])

    def complete(self, images, masks, seeds, params, should_stop):
        self.started.set()
        self.release.wait(10)
        return _samples(seeds)

    def energy(self, images):
        v = images.reshape(len(images), -1).sum(1)
        return v, v

    def ood(self, images):
        return None


def test_lone_request_does_not_wait_the_window():
    engine = Recorder()
    batcher = Batcher(lambda: engine, max_batch=16, max_delay_s=WINDOW_S, max_queue=8)
    try:
        for seed in range(3):  # a single client, one request after another
            out = batcher.submit(_job(seed), threading.Event()).result(timeout=10)
            assert out.images.tolist() == [seed * 10]
        assert engine.batches == [[0], [1], [2]]
    finally:
        batcher.close()


def test_requests_arriving_while_a_batch_runs_are_merged():
    engine = Recorder(hold_first=True)
    batcher = Batcher(lambda: engine, max_batch=16, max_delay_s=0.2, max_queue=8)
    try:
        first = batcher.submit(_job(0), threading.Event())
        assert engine.started.wait(10)  # the first ran at once, alone
        later = [batcher.submit(_job(s), threading.Event()) for s in (1, 2, 3)]
        engine.release.set()
        assert first.result(timeout=10).images.tolist() == [0]
        assert [f.result(timeout=10).images.tolist() for f in later] == [[10], [20], [30]]
        assert engine.batches == [[0], [1, 2, 3]]
    finally:
        batcher.close()


def test_cheap_work_is_served_while_completions_are_queued():
    """Energy and synthesis answer while a completion batch runs and more completions wait behind it: each
    kind has its own lane (ordering, not timing)."""
    engine = Recorder(hold_first=True)
    batcher = Batcher(lambda: engine, max_batch=1, max_delay_s=0.0, max_queue=8)
    image = np.zeros((1, 1, 2, 2), np.float32)  # (N, C, H, W)
    try:
        completions = [
            batcher.submit(CompletionJob(image, image + 1, (s,), COMPLETION), threading.Event())
            for s in range(4)
        ]
        assert engine.started.wait(10)  # the first completion holds its lane; three wait behind it
        energy = batcher.submit(EnergyJob(image + 2), threading.Event()).result(timeout=10)
        assert energy.energy.tolist() == [8.0] and energy.ood is None
        assert not any(f.done() for f in completions)  # energy went first although it came last
        engine.release.set()
        assert batcher.submit(_job(5), threading.Event()).result(timeout=10).images.tolist() == [50]
        assert [f.result(timeout=10).images.tolist() for f in completions] == [[0], [1], [2], [3]]
    finally:
        engine.release.set()
        batcher.close()
