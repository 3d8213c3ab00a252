"""Dynamic batching: concurrent requests of the same kind with equal parameters become one engine call.

A request is a Job: its kind ("synthesize", "complete", "energy"), its parameters (a frozen, hashable
contract.sampling params dataclass, or None), and per-image input arrays (rows along axis 0, e.g. seeds). Jobs
merge only when (kind, params) are equal, since one ONNX Runtime batch runs one step size and step count. One
worker thread takes the oldest job, waits up to `max_delay_s` for more jobs with the same key until
`max_batch` images are gathered, runs them as one batch, and splits the outputs back. Because every image has
its own rng (contract.sampling), a merged image is bit-identical to the same image run alone.

The window is only waited under concurrency. When the last batch held one job and nothing queued behind it (a
lone client, or an idle server), the next job runs at once with whatever is already queued: a single client
never pays the window, and a burst that arrives while a batch runs is merged into the next one anyway. Once a
batch merges jobs or leaves some waiting, the following batches wait up to the window again.

The queue is bounded: `submit` raises QueueFull beyond `max_queue` waiting jobs (the service answers
RESOURCE_EXHAUSTED). A job whose `stop` event is set (client cancelled, deadline passed) is dropped before it
runs; a running batch stops between Langevin steps once every job in it is stopped.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Hashable
from concurrent.futures import Future
from dataclasses import dataclass, field

import numpy as np
from coopnets.contract.sampling import Cancelled
from coopnets.serving.engine import StopFn
from coopnets.serving.metrics import Metrics

log = logging.getLogger(__name__)

Arrays = dict[str, np.ndarray]
RunFn = Callable[[str, Hashable, Arrays, StopFn], Arrays]  # (kind, params, inputs, should_stop) -> outputs


class QueueFull(Exception):
    """More than max_queue requests are waiting."""


@dataclass
class Job:
    kind: str  # "synthesize", "complete", "energy"
    params: Hashable  # SynthesisParams, CompletionParams or None; jobs merge only when (kind, params) match
    inputs: Arrays  # each (rows, ...)
    stop: threading.Event
    rpc: str = ""
    future: Future = field(default_factory=Future)
    enqueued: float = field(default_factory=time.monotonic)

    @property
    def key(self) -> tuple[str, Hashable]:
        return self.kind, self.params

    @property
    def rows(self) -> int:
        return len(next(iter(self.inputs.values())))


class Batcher:
    def __init__(
        self, run: RunFn, max_batch: int, max_delay_s: float, max_queue: int, metrics: Metrics | None = None
    ):
        self.run = run
        self.max_batch = max_batch
        self.max_delay_s = max_delay_s
        self.metrics = metrics
        self._queue: queue.Queue[Job | None] = queue.Queue(maxsize=max_queue)
        self._carry: Job | None = None  # a job taken while filling a batch that did not fit: it goes next
        self._stopping = False  # close() was called and its sentinel has been taken
        self._concurrent = False  # the last batch merged jobs or left jobs waiting: wait the window
        self._thread = threading.Thread(target=self._loop, name="batcher", daemon=True)
        self._thread.start()

    def submit(self, job: Job) -> Future:
        """Queues a job; its future gets the job's slice of the outputs, or Cancelled. Raises QueueFull."""
        try:
            self._queue.put_nowait(job)
        except queue.Full:
            if self.metrics:
                self.metrics.rejected.labels("queue_full").inc()
            raise QueueFull(f"{self._queue.maxsize} requests are already waiting") from None
        return job.future

    def close(self) -> None:
        """Stops the worker after the jobs already queued."""
        self._queue.put(None)
        self._thread.join()

    def _next(self, timeout: float | None) -> Job | None:
        if self._carry is not None:
            job, self._carry = self._carry, None
            return job
        return (
            self._queue.get(timeout=timeout) if timeout is None or timeout > 0 else self._queue.get_nowait()
        )

    def _gather(self, first: Job) -> list[Job]:
        """The first job plus same-key jobs arriving within max_delay_s (or, without concurrency, the ones
        already queued), up to max_batch images."""
        batch, rows = [first], first.rows
        until = time.monotonic() + (self.max_delay_s if self._concurrent else 0.0)
        while rows < self.max_batch:
            try:
                job = self._next(until - time.monotonic())
            except queue.Empty:
                break
            if job is None:
                self._stopping = True
                break
            if job.key != first.key or rows + job.rows > self.max_batch:
                self._carry = job
                break
            batch.append(job)
            rows += job.rows
        return batch

    def _loop(self) -> None:
        while not (self._stopping and self._carry is None):
            first = self._next(None)
            if first is None:
                return
            batch = self._gather(first)
            self._run(batch)
            self._concurrent = len(batch) > 1 or self._carry is not None or not self._queue.empty()

    def _run(self, batch: list[Job]) -> None:
        live = []
        for job in batch:
            if job.stop.is_set():  # cancelled or past its deadline while queued: drop, never run
                if self.metrics:
                    self.metrics.cancelled.labels(job.rpc, "queued").inc()
                job.future.set_exception(Cancelled(0))
            else:
                live.append(job)
        if not live:
            return
        kind, params = live[0].key
        now = time.monotonic()
        if self.metrics:
            for job in live:
                self.metrics.queue_seconds.labels(kind).observe(now - job.enqueued)
            self.metrics.batch_images.labels(kind).observe(sum(j.rows for j in live))
        inputs = {name: np.concatenate([j.inputs[name] for j in live]) for name in live[0].inputs}
        try:
            outputs = self.run(kind, params, inputs, lambda: all(j.stop.is_set() for j in live))
        except Cancelled as e:
            for job in live:
                if self.metrics:
                    self.metrics.cancelled.labels(job.rpc, "running").inc()
                job.future.set_exception(e)
            log.info(
                "%s batch of %d requests stopped after %d steps: every client cancelled or timed out",
                kind,
                len(live),
                e.steps_done,
            )
            return
        except Exception as e:  # a bug or an ORT failure: fail these requests, keep serving the next ones
            log.exception("%s batch failed", kind)
            for job in live:
                job.future.set_exception(e)
            return
        start = 0
        for job in live:
            job.future.set_result({k: v[start : start + job.rows] for k, v in outputs.items()})
            start += job.rows
