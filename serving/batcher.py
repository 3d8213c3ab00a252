"""Dynamic batching by kind: concurrent jobs of one kind with equal parameters become one engine call.

A job (serving.jobs) is typed work that runs itself on the engine. Each kind ("synthesize", "complete",
"energy") has its own lane: a queue and a worker thread, as Triton gives each model its own queue and
instance. So cheap work is never stuck behind heavy work: an Energy request (one forward pass) or a one-image
synthesis runs while a completion batch of hundreds of latent steps is still going, and no kind starves
another, since each lane moves on its own. The engine's ONNX Runtime sessions may be run concurrently; the
cores are shared by the operating system's scheduler.

Within a lane, jobs merge only when their `key` (their params) is equal, since one ONNX Runtime batch runs
one step size and step count. The worker takes the oldest job, waits up to `max_delay_s` for more jobs with
the same key until `max_batch` images are gathered, runs them as one batch, and cuts the result back into each
job's rows. Because every image has its own rng (contract.sampling), a merged image is bit-identical to the
same image run alone.

The window is only waited under concurrency. When the last batch held one job and nothing queued behind it (a
lone client, or an idle server), the next job runs at once with whatever is already queued: a single client
never pays the window, and a burst that arrives while a batch runs is merged into the next one anyway. Once a
batch merges jobs or leaves some waiting, the following batches wait up to the window again.

The queues are bounded together: `submit` raises QueueFull beyond `max_queue` jobs waiting in all lanes (the
service answers RESOURCE_EXHAUSTED), so --workers > --max-queue still leaves threads for the RPCs that do not
queue. A job whose `stop` event is set (client cancelled, deadline passed) is dropped before it runs; a
running batch stops between Langevin steps once every job in it is stopped.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field

from coopnets.contract.sampling import Cancelled
from coopnets.serving.engine import Engine
from coopnets.serving.jobs import CompletionJob, EnergyJob, Job, SynthesisJob, take
from coopnets.serving.metrics import Metrics

log = logging.getLogger(__name__)

KINDS = (SynthesisJob, CompletionJob, EnergyJob)  # one lane each


class QueueFull(Exception):
    """More than max_queue requests are waiting."""


@dataclass
class _Entry:
    """A queued job with what the batcher tracks about it."""

    job: Job
    stop: threading.Event  # set when its RPC ended early: drop it, or stop its batch once all are stopped
    rpc: str
    future: Future = field(default_factory=Future)
    enqueued: float = field(default_factory=time.monotonic)


class Batcher:
    """`engine` gives the engine served now, asked at the start of every batch: after a reload, batches
    that start run on the new one and those already running finish on the old one."""

    def __init__(
        self,
        engine: Callable[[], Engine],
        max_batch: int,
        max_delay_s: float,
        max_queue: int,
        metrics: Metrics | None = None,
    ):
        self.engine = engine
        self.max_batch = max_batch
        self.max_delay_s = max_delay_s
        self.max_queue = max_queue
        self.metrics = metrics
        self._waiting = 0  # jobs in all lanes' queues
        self._lock = threading.Lock()
        self._lanes = {kind.kind: _Lane(self, kind.kind) for kind in KINDS}

    def submit(self, job: Job, stop: threading.Event, rpc: str = "") -> Future:
        """Queues a job in its kind's lane; the future gets its rows of the result (a Samples or a
        Measures), or Cancelled. Raises QueueFull."""
        with self._lock:
            if self._waiting >= self.max_queue:
                if self.metrics:
                    self.metrics.rejected.labels("queue_full").inc()
                raise QueueFull(f"{self.max_queue} requests are already waiting") from None
            self._waiting += 1
        entry = _Entry(job, stop, rpc)
        self._lanes[job.kind].queue.put(entry)
        return entry.future

    def close(self) -> None:
        """Stops every lane after the jobs already queued."""
        for lane in self._lanes.values():
            lane.queue.put(None)
        for lane in self._lanes.values():
            lane.thread.join()

    def _taken(self) -> None:
        with self._lock:
            self._waiting -= 1


class _Lane:
    """One kind's queue and the worker thread that batches it."""

    def __init__(self, batcher: Batcher, kind: str):
        self.batcher = batcher
        self.kind = kind
        self.queue: queue.Queue[_Entry | None] = queue.Queue()
        self._carry: _Entry | None = None  # taken while filling a batch that it did not fit: it goes next
        self._stopping = False  # close() was called and its sentinel has been taken
        self._concurrent = False  # the last batch merged jobs or left jobs waiting: wait the window
        self.thread = threading.Thread(target=self._loop, name=f"batcher-{kind}", daemon=True)
        self.thread.start()

    def _next(self, timeout: float | None) -> _Entry | None:
        if self._carry is not None:
            entry, self._carry = self._carry, None
            return entry
        entry = self.queue.get(timeout=timeout) if timeout is None or timeout > 0 else self.queue.get_nowait()
        if entry is not None:
            self.batcher._taken()
        return entry

    def _gather(self, first: _Entry) -> list[_Entry]:
        """The first job plus same-key jobs arriving within max_delay_s (or, without concurrency, the ones
        already queued), up to max_batch images."""
        b = self.batcher
        batch, rows = [first], first.job.rows
        until = time.monotonic() + (b.max_delay_s if self._concurrent else 0.0)
        while rows < b.max_batch:
            try:
                entry = self._next(until - time.monotonic())
            except queue.Empty:
                break
            if entry is None:
                self._stopping = True
                break
            if entry.job.key != first.job.key or rows + entry.job.rows > b.max_batch:
                self._carry = entry
                break
            batch.append(entry)
            rows += entry.job.rows
        return batch

    def _loop(self) -> None:
        while not (self._stopping and self._carry is None):
            first = self._next(None)
            if first is None:
                return
            batch = self._gather(first)
            self._run(batch)
            self._concurrent = len(batch) > 1 or self._carry is not None or not self.queue.empty()

    def _live(self, batch: list[_Entry]) -> list[_Entry]:
        """The entries still wanted; those cancelled or past their deadline while queued are dropped."""
        metrics, live = self.batcher.metrics, []
        for entry in batch:
            if entry.stop.is_set():
                if metrics:
                    metrics.cancelled.labels(entry.rpc, "queued").inc()
                entry.future.set_exception(Cancelled(0))
            else:
                live.append(entry)
        return live

    def _run(self, batch: list[_Entry]) -> None:
        live = self._live(batch)
        if not live:
            return
        metrics, now = self.batcher.metrics, time.monotonic()
        if metrics:
            for entry in live:
                metrics.queue_seconds.labels(self.kind).observe(now - entry.enqueued)
            metrics.batch_images.labels(self.kind).observe(sum(e.job.rows for e in live))
        job = type(live[0].job).merged([e.job for e in live])
        try:
            result = job.run(self.batcher.engine(), lambda: all(e.stop.is_set() for e in live))
        except Cancelled as e:
            for entry in live:
                if metrics:
                    metrics.cancelled.labels(entry.rpc, "running").inc()
                entry.future.set_exception(e)
            log.info(
                "%s batch of %d requests stopped after %d steps: every client cancelled or timed out",
                self.kind,
                len(live),
                e.steps_done,
            )
            return
        except Exception as e:  # a bug or an ORT failure: fail these requests, keep serving the next ones
            log.exception("%s batch failed", self.kind)
            for entry in live:
                entry.future.set_exception(e)
            return
        start = 0
        for entry in live:
            entry.future.set_result(take(result, start, start + entry.job.rows))
            start += entry.job.rows
