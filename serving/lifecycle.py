"""The served engine's life: loading -> serving -> draining, and reloads in between.

    loading   health NOT_SERVING (live, not ready); RPCs answer UNAVAILABLE, which clients retry
    serving   after `start(engine)` has warmed the engine up: health SERVING
    draining  after `drain()`: health NOT_SERVING for good, new RPCs UNAVAILABLE at once, in-flight RPCs
              finish

Health is grpc.health.v1 for "" and coopnets.v1.CoopNets, so orchestrators see readiness, not only
liveness. `admitted()` wraps every CoopNets RPC: it counts the RPC in flight and refuses it once draining
(grpcio's own stop() would end a late RPC with CANCELLED or UNAVAILABLE depending on timing; clients retry
only UNAVAILABLE).

`reload()` is SIGHUP's: the bundle directory is verified (sha256 of every file), opened and warmed up, then
verified again (a copy still in progress changes the digest), and only then swapped in: batches that start
afterwards use the new engine, those already running finish on the old one. A bundle that does not verify, or
that changes the image shape or latent size (requests already checked against them may be queued), is refused
with one log line and the loaded engine keeps serving.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import threading
import time

import numpy as np
from coopnets.contract.bundle import Bundle, BundleError, read_bundle
from coopnets.contract.sampling import ParamError
from coopnets.serving.engine import Engine
from coopnets.v1 import coopnets_pb2 as pb
from grpc_health.v1 import health, health_pb2

log = logging.getLogger(__name__)

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["CoopNets"].full_name  # "coopnets.v1.CoopNets"


class Unavailable(Exception):
    """The server cannot take an RPC now (still warming up, or draining); the client should retry."""


class HealthServicer(health.HealthServicer):
    """grpc.health.v1 with List, which grpcio-health-checking 1.85 leaves unimplemented (earlier versions have
    no List in their service at all: then this method is never registered)."""

    def List(self, request, context):
        with self._lock:
            statuses = {
                name: health_pb2.HealthCheckResponse(status=status)
                for name, status in self._server_status.items()
            }
        return health_pb2.HealthListResponse(statuses=statuses)


def warm_up(engine: Engine, runs: int, max_batch: int) -> None:
    """Runs every graph at batch 1 and at the largest batch, so that the first requests do not pay for
    ONNX Runtime's lazy initialisation and memory arena growth."""
    c, h, w = engine.image_shape
    synthesis = dataclasses.replace(engine.synthesis_defaults, steps=1)
    completion = dataclasses.replace(engine.completion_defaults, latent_steps=1, refine_steps=1)
    for _ in range(runs):
        for n in sorted({1, max_batch}):
            seeds = list(range(n))
            out = engine.synthesize(seeds, synthesis)
            masks = np.ones((n, c, h, w), dtype=np.float32)  # (N, C, H, W), top half observed
            masks[:, :, : h // 2] = 0
            engine.complete(out.images, masks, seeds, completion)
            engine.energy(out.images)


def check_defaults(bundle: Bundle, max_steps: int) -> None:
    """BundleError when a request that sets nothing would exceed --max-steps (it would be refused)."""
    try:
        bundle.langevin.synthesis.checked(max_steps, prefix="langevin.")
        bundle.completion.params(bundle.langevin).checked(max_steps)
    except ParamError as e:
        raise BundleError(f"{bundle.path}: the default {e}: raise --max-steps or re-export") from None


class Lifecycle:
    """Owns the served engine, the health status and the count of RPCs in flight. `bundle_dir`, `device`,
    `threads` and `shards` are what reload() opens; `max_steps` is the request limit the bundle's defaults
    must fit."""

    def __init__(
        self,
        health_servicer: HealthServicer,
        *,
        bundle_dir: str,
        device: str,
        threads: int,
        warmup_runs: int,
        max_batch: int,
        max_steps: int,
        shards: int = 0,
    ):
        self.health = health_servicer
        self.bundle_dir, self.device, self.threads, self.shards = bundle_dir, device, threads, shards
        self.warmup_runs, self.max_batch, self.max_steps = warmup_runs, max_batch, max_steps
        self._engine: Engine | None = None
        self._draining = False
        self._in_flight = 0
        self._idle = threading.Condition()
        self._set_health(health_pb2.HealthCheckResponse.NOT_SERVING)

    def open(self, bundle: Bundle) -> Engine:
        """The engine of `bundle` on this server's device, threads and shards (not yet served)."""
        return Engine.load(bundle, device=self.device, threads=self.threads, shards=self.shards)

    @property
    def engine(self) -> Engine:
        """The engine new work runs on; Unavailable until start()."""
        engine = self._engine
        if engine is None:
            raise Unavailable("the model is still loading / warming up; retry shortly")
        return engine

    @property
    def ready(self) -> bool:
        """An engine is served and draining has not begun (what health's SERVING says)."""
        return self._engine is not None and not self._draining

    def start(self, engine: Engine) -> None:
        """Warms `engine` up, serves it, and says SERVING (unless draining has begun)."""
        t0 = time.perf_counter()
        check_defaults(engine.bundle, self.max_steps)
        warm_up(engine, self.warmup_runs, self.max_batch)
        log.info(
            "sessions %s on %s, warm-up done in %.2f s",
            engine.sessions.providers,
            engine.sessions.device,
            time.perf_counter() - t0,
        )
        self._engine = engine
        with self._idle:
            if self._draining:
                return
            self._set_health(health_pb2.HealthCheckResponse.SERVING)
        log.info("health SERVING: bundle %s (sha256 %s)", engine.bundle.path, engine.bundle.digest[:12])

    @contextlib.contextmanager
    def admitted(self):
        """Counts an RPC in flight for its duration; Unavailable once draining."""
        with self._idle:
            if self._draining:
                raise Unavailable("the server is shutting down; retry elsewhere")
            self._in_flight += 1
        try:
            yield
        finally:
            with self._idle:
                self._in_flight -= 1
                self._idle.notify_all()

    def drain(self, timeout: float) -> bool:
        """Health NOT_SERVING, new RPCs refused, then waits up to `timeout` seconds for those in flight;
        True when none is left."""
        with self._idle:
            self._draining = True
            in_flight = self._in_flight
        self.health.enter_graceful_shutdown()  # NOT_SERVING for every service, and it stays so
        log.info("shutting down: health NOT_SERVING, %d RPCs in flight get %.1f s", in_flight, timeout)
        with self._idle:
            done = self._idle.wait_for(lambda: self._in_flight == 0, timeout)
        if not done:
            log.warning("grace period over with RPCs still in flight: they end UNAVAILABLE")
        return done

    def reload(self) -> bool:
        """SIGHUP (see the module docstring). Returns whether the bundle now in `bundle_dir` is served."""
        old = self._engine
        try:
            bundle = read_bundle(self.bundle_dir)
            if old is not None and bundle.digest == old.bundle.digest:
                log.info("SIGHUP: bundle %s unchanged (sha256 %s)", bundle.path, bundle.digest[:12])
                return False
            if old is not None and (bundle.image_shape, bundle.latent_dim) != (
                old.image_shape,
                old.latent_dim,
            ):
                raise BundleError(
                    f"image shape {bundle.image_shape} / latent size {bundle.latent_dim} differ from the "
                    f"served {old.image_shape} / {old.latent_dim}: restart coop-serve to change them"
                )
            check_defaults(bundle, self.max_steps)
            engine = self.open(bundle)
            warm_up(engine, self.warmup_runs, self.max_batch)
            if read_bundle(self.bundle_dir).digest != bundle.digest:
                raise BundleError(
                    f"{self.bundle_dir} changed while it was being loaded: send SIGHUP again when the copy "
                    "is complete"
                )
        except BundleError as e:
            served = old.bundle.digest[:12] if old is not None else "-"
            log.error("SIGHUP: reload refused, still serving sha256 %s: %s", served, e)
            return False
        self._engine = engine
        log.info("SIGHUP: reloaded bundle %s (sha256 %s)", bundle.path, bundle.digest[:12])
        return True

    def _set_health(self, status) -> None:
        for name in ("", SERVICE_NAME):
            self.health.set(name, status)
