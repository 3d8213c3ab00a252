"""The coopnets.v1.CoopNets servicer: typed request -> engine (through the batcher) -> response.

Thin on purpose: a handler reads its request with serving.requests into a typed job (raising FieldError or
ParamError naming the field), hands the job to the batcher, which runs it on the engine (SynthesizeStream
drives the sampler itself, through contract.sampling.stepped, to send snapshots), and encodes with
contract.codec. Every RPC, unary or streaming, runs inside
`handling`, the one mapping from how it ended to a status code, counted in
coopnets_requests_total{rpc, code}:

    FieldError, ParamError   INVALID_ARGUMENT, with a google.rpc.BadRequest detail naming the field
    QueueFull                RESOURCE_EXHAUSTED: retry later
    Unavailable              UNAVAILABLE: still warming up, or draining (clients retry)
    Cancelled                CANCELLED, or DEADLINE_EXCEEDED when the deadline has passed
    anything else            INTERNAL, logged with its traceback: a bug or an ONNX Runtime failure, never
                             bad input (which the requests module refuses first)

Cancellation: each RPC gets a threading.Event that `context.add_callback` sets when the RPC ends early
(client cancel, deadline, lost connection); the batcher drops queued work whose event is set, and the engine
and the stream check it between Langevin steps.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Iterator

import grpc
import numpy as np
from coopnets.contract.codec import FieldError, set_image
from coopnets.contract.occlusions import occluded
from coopnets.contract.sampling import Cancelled, ParamError, Progress, Samples, stepped
from coopnets.serving import requests
from coopnets.serving.batcher import Batcher, QueueFull
from coopnets.serving.engine import Engine
from coopnets.serving.jobs import Job, Measures
from coopnets.serving.lifecycle import Lifecycle, Unavailable
from coopnets.serving.metrics import Metrics
from coopnets.serving.requests import Limits
from coopnets.v1 import coopnets_pb2 as pb
from coopnets.v1 import coopnets_pb2_grpc as pb_grpc
from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

log = logging.getLogger(__name__)


def _stop_event(context: grpc.ServicerContext) -> threading.Event:
    """Set when the RPC terminates: cancelled by the client, past its deadline (or finished)."""
    ev = threading.Event()
    if not context.add_callback(ev.set):
        ev.set()
    return ev


def _ended_code(context: grpc.ServicerContext) -> grpc.StatusCode:
    remaining = context.time_remaining()
    past_deadline = remaining is not None and remaining <= 0
    return grpc.StatusCode.DEADLINE_EXCEEDED if past_deadline else grpc.StatusCode.CANCELLED


def _status(code: grpc.StatusCode, message: str, field: str | None = None) -> grpc.Status:
    details = []
    if field is not None:
        violation = error_details_pb2.BadRequest.FieldViolation(field=field, description=message)
        detail = any_pb2.Any()
        detail.Pack(error_details_pb2.BadRequest(field_violations=[violation]))
        details.append(detail)
    code_value = getattr(code_pb2, code.name)
    return rpc_status.to_status(status_pb2.Status(code=code_value, message=message, details=details))


def _failure(
    rpc: str, error: Exception, context: grpc.ServicerContext
) -> tuple[grpc.StatusCode, grpc.Status]:
    """The one mapping of the module docstring."""
    if isinstance(error, (FieldError, ParamError)):
        code = grpc.StatusCode.INVALID_ARGUMENT
        return code, _status(code, str(error), error.field)
    if isinstance(error, QueueFull):
        code = grpc.StatusCode.RESOURCE_EXHAUSTED
        return code, _status(code, f"server busy: {error}; retry later")
    if isinstance(error, Unavailable):
        code = grpc.StatusCode.UNAVAILABLE
        return code, _status(code, str(error))
    if isinstance(error, Cancelled):
        code = _ended_code(context)
        log.info("%s stopped after %d Langevin steps: %s", rpc, error.steps_done, code.name)
        return code, _status(code, str(error))
    log.error("%s failed", rpc, exc_info=error)
    code = grpc.StatusCode.INTERNAL
    return code, _status(code, "internal error: see the server log")


def _image(image: np.ndarray, png: bool) -> pb.Image:
    return set_image(pb.Image(), image, png)


def _ood_info(b) -> dict:
    """ModelInfo's `ood` field from the manifest's `ood` section; nothing (unset) without the graph."""
    if not b.ood:
        return {}
    return {
        "ood": pb.OodInfo(
            score=str(b.ood.get("score", "")),
            threshold=1.0,
            false_alarm_rate=1.0 - float(b.ood.get("calibration_quantile", 0.95)),
            calibration_images=int(b.ood.get("calibration_images", 0)),
        )
    }


def _generated(index: int, seed: int, image: np.ndarray, png: bool, energy: float = 0.0) -> pb.GeneratedImage:
    return pb.GeneratedImage(index=index, seed=seed, image=_image(image, png), energy=float(energy))


class CoopNetsService(pb_grpc.CoopNetsServicer):
    """Serves the lifecycle's engine within `limits`; close() stops the batcher."""

    def __init__(self, lifecycle: Lifecycle, limits: Limits, metrics: Metrics):
        self.lifecycle = lifecycle
        self.limits = limits
        self.metrics = metrics
        self.batcher = Batcher(
            lambda: lifecycle.engine,
            limits.max_batch,
            limits.max_delay_ms / 1000.0,
            limits.max_queue,
            metrics,
        )

    def close(self) -> None:
        self.batcher.close()

    @contextlib.contextmanager
    def handling(self, rpc: str, context: grpc.ServicerContext):
        """Admits the RPC, maps how it ended to a status (aborting the RPC unless OK) and counts it."""
        start, code = time.perf_counter(), grpc.StatusCode.OK
        try:
            with self.lifecycle.admitted():
                yield
        except GeneratorExit:  # a stream whose client went away between two messages
            code = _ended_code(context)
            raise
        except Exception as e:
            code, status = _failure(rpc, e, context)
            context.abort_with_status(status)
        finally:
            self.metrics.observe(rpc, code.name, time.perf_counter() - start)

    def submit(self, rpc: str, job: Job, context) -> Samples | Measures:
        """Runs `job` through the batcher (queued in its kind's lane, merged with equal ones) and returns
        its rows of the result."""
        return self.batcher.submit(job, _stop_event(context), rpc).result()

    # ---- RPCs (`rpc`: the name in metrics and logs; the REST binding's page passes "http/...") ----------

    def Synthesize(self, request: pb.SynthesizeRequest, context, rpc="Synthesize") -> pb.SynthesizeResponse:
        with self.handling(rpc, context):
            ask = requests.synthesis(request, self.lifecycle.engine, self.limits)
            out = self.submit(rpc, ask.job, context)
            images = [
                _generated(i, s, out.images[i], ask.png, out.energy[i]) for i, s in enumerate(ask.job.seeds)
            ]
            return pb.SynthesizeResponse(images=images)

    def SynthesizeStream(
        self, request: pb.SynthesizeStreamRequest, context, rpc="SynthesizeStream"
    ) -> Iterator[pb.SynthesizeEvent]:
        """Runs outside the batcher: it drives the sampler in this RPC's thread, so that it can send
        snapshots as they happen and stop between any two steps."""
        with self.handling(rpc, context):
            engine = self.lifecycle.engine
            ask = requests.stream(request, engine, self.limits)
            yield from self._stream(engine, ask, _stop_event(context), rpc)

    def _stream(
        self, engine: Engine, ask: requests.Stream, stop: threading.Event, rpc: str
    ) -> Iterator[pb.SynthesizeEvent]:
        """Snapshots after Langevin steps k, 2k, ... < K (k = snapshot_every), then the final images."""
        s, k = ask.synthesis, ask.snapshot_every
        job, done = s.job, 0

        def snapshots(progress: Progress) -> Iterator[pb.SynthesizeEvent]:
            nonlocal done
            done = progress.step
            if k and 0 < progress.step < progress.steps and progress.step % k == 0:
                y = progress.value()  # (N, C, H, W)
                for i, seed in enumerate(job.seeds):
                    yield pb.SynthesizeEvent(
                        step=progress.step, final=False, image=_generated(i, seed, y[i], s.png)
                    )

        try:
            out = yield from stepped(engine.synthesis_steps(job.seeds, job.params), stop.is_set, snapshots)
        except Cancelled:
            self.metrics.cancelled.labels(rpc, "running").inc()
            raise
        except GeneratorExit:
            self.metrics.cancelled.labels(rpc, "running").inc()
            log.info("%s stopped after %d Langevin steps: the client went away", rpc, done)
            raise
        for i, seed in enumerate(job.seeds):
            image = _generated(i, seed, out.images[i], s.png, out.energy[i])
            yield pb.SynthesizeEvent(step=job.params.steps, final=True, image=image)

    def Complete(self, request: pb.CompleteRequest, context, rpc="Complete") -> pb.CompleteResponse:
        with self.handling(rpc, context):
            ask = requests.completion(request, self.lifecycle.engine, self.limits)
            out = self.submit(rpc, ask.job, context)
            image, mask = ask.job.images[0], ask.job.masks[0]  # (C, H, W) each
            shown_mask = mask * 2 - 1 if ask.png else mask  # as a picture, white = missing
            return pb.CompleteResponse(
                recovered=_image(out.images[0], ask.png),
                occluded=_image(occluded(image, mask), ask.png),
                mask=_image(shown_mask, ask.png),
                energy=float(out.energy[0]),
            )

    def Energy(self, request: pb.EnergyRequest, context, rpc="Energy") -> pb.EnergyResponse:
        with self.handling(rpc, context):
            job = requests.energy(request, self.lifecycle.engine, self.limits)
            out = self.submit(rpc, job, context)
            return pb.EnergyResponse(
                energy=out.energy.tolist(),
                score=out.score.tolist(),
                ood=[] if out.ood is None else out.ood.tolist(),
            )

    def ModelInfo(self, request: pb.ModelInfoRequest, context, rpc="ModelInfo") -> pb.ModelInfoResponse:
        with self.handling(rpc, context):
            engine = self.lifecycle.engine
            b, lim = engine.bundle, self.limits
            lv, cp = b.langevin, b.completion
            return pb.ModelInfoResponse(
                image_shape=list(b.image_shape),
                latent_dim=b.latent_dim,
                arch=b.arch,
                langevin=pb.LangevinDefaults(
                    s=lv.s, step_size=lv.delta, steps=lv.steps, sigma=lv.sigma, noise=lv.noise
                ),
                completion=pb.CompletionDefaults(
                    latent_steps=cp.latent_steps,
                    latent_step_size=cp.latent_step_size,
                    latent_noise=cp.latent_noise,
                    refine_steps=cp.refine_steps,
                    restarts=cp.restarts,
                    residual_fill=cp.residual_fill,
                    average_restarts=cp.average_restarts,
                    residual_interpolant=cp.residual_interpolant,
                ),
                format_version=b.format_version,
                bundle_sha256=b.digest,
                file_sha256=b.file_sha256,
                created=b.created,
                sessions=[pb.SessionInfo(graph=g, providers=p) for g, p in engine.sessions.providers.items()],
                device=engine.sessions.device,
                **_ood_info(b),
                limits=pb.Limits(
                    max_count=lim.max_count,
                    max_steps=lim.max_steps,
                    max_batch=lim.max_batch,
                    max_delay_ms=lim.max_delay_ms,
                    max_queue=lim.max_queue,
                    max_receive_message_bytes=lim.max_receive_message_bytes,
                    max_send_message_bytes=lim.max_send_message_bytes,
                ),
            )
