"""The coopnets.v1.CoopNets servicer: typed request -> engine (through the batcher) -> response.

Thin on purpose: a handler reads its request with serving.requests (which raises FieldError or ParamError
naming the field), runs the engine (unary RPCs through the batcher, SynthesizeStream by iterating the
sampler's steps itself) and encodes with contract.codec. Every RPC, unary or streaming, runs inside
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
from collections.abc import Hashable, Iterator

import grpc
import numpy as np
from coopnets.contract.codec import FieldError, set_image
from coopnets.contract.occlusions import occluded
from coopnets.contract.sampling import Cancelled, ParamError
from coopnets.serving import requests
from coopnets.serving.batcher import Arrays, Batcher, Job, QueueFull
from coopnets.serving.engine import Engine, StopFn
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
            self._run_batch, limits.max_batch, limits.max_delay_ms / 1000.0, limits.max_queue, metrics
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

    # ---- the engine side of the batcher ----------------------------------------------------------------

    def _run_batch(self, kind: str, params: Hashable, inputs: Arrays, should_stop: StopFn) -> Arrays:
        """One merged batch on the engine served now (after a reload, the new one)."""
        engine = self.lifecycle.engine
        if kind == "energy":
            energy, score = engine.energy(inputs["images"])
            ood = engine.ood(inputs["images"])
            return {"energy": energy, "score": score, **({} if ood is None else {"ood": ood})}
        seeds = inputs["seeds"].tolist()
        if kind == "synthesize":
            out = engine.synthesize(seeds, params=params, should_stop=should_stop)
        else:
            out = engine.complete(
                inputs["images"], inputs["masks"], seeds, params=params, should_stop=should_stop
            )
        return {"images": out.images, "energy": out.energy}

    def submit(self, rpc: str, kind: str, params: Hashable, inputs: Arrays, context) -> Arrays:
        job = Job(kind=kind, params=params, inputs=inputs, stop=_stop_event(context), rpc=rpc)
        return self.batcher.submit(job).result()

    # ---- RPCs -----------------------------------------------------------------------------------------

    def Synthesize(self, request: pb.SynthesizeRequest, context) -> pb.SynthesizeResponse:
        with self.handling("Synthesize", context):
            ask = requests.synthesis(request, self.lifecycle.engine, self.limits)
            seeds = np.asarray(ask.seeds, dtype=np.int64)
            out = self.submit("Synthesize", "synthesize", ask.params, {"seeds": seeds}, context)
            images = [
                _generated(i, s, out["images"][i], ask.png, out["energy"][i]) for i, s in enumerate(ask.seeds)
            ]
            return pb.SynthesizeResponse(images=images)

    def SynthesizeStream(self, request: pb.SynthesizeStreamRequest, context) -> Iterator[pb.SynthesizeEvent]:
        """Runs outside the batcher: it iterates the sampler's steps in this RPC's thread, so that it can send
        snapshots as they happen and stop between any two steps."""
        with self.handling("SynthesizeStream", context):
            engine = self.lifecycle.engine
            ask = requests.stream(request, engine, self.limits)
            yield from self._stream(engine, ask, _stop_event(context))

    def _stream(
        self, engine: Engine, ask: requests.Stream, stop: threading.Event
    ) -> Iterator[pb.SynthesizeEvent]:
        """Snapshots after Langevin steps k, 2k, ... < K (k = snapshot_every), then the final images."""
        s, k = ask.synthesis, ask.snapshot_every
        steps = engine.synthesis_steps(list(s.seeds), s.params)
        done = 0
        try:
            while True:
                if stop.is_set():
                    raise Cancelled(done)
                try:
                    progress = next(steps)
                except StopIteration as end:
                    out = end.value
                    break
                done = progress.step
                if k and 0 < progress.step < progress.steps and progress.step % k == 0:
                    y = progress.value()  # (N, C, H, W)
                    for i, seed in enumerate(s.seeds):
                        image = _generated(i, seed, y[i], s.png)
                        yield pb.SynthesizeEvent(step=progress.step, final=False, image=image)
        except Cancelled:
            self.metrics.cancelled.labels("SynthesizeStream", "running").inc()
            raise
        except GeneratorExit:
            self.metrics.cancelled.labels("SynthesizeStream", "running").inc()
            log.info("SynthesizeStream stopped after %d Langevin steps: the client went away", done)
            raise
        finally:
            steps.close()
        for i, seed in enumerate(s.seeds):
            image = _generated(i, seed, out.images[i], s.png, out.energy[i])
            yield pb.SynthesizeEvent(step=s.params.steps, final=True, image=image)

    def Complete(self, request: pb.CompleteRequest, context) -> pb.CompleteResponse:
        with self.handling("Complete", context):
            ask = requests.completion(request, self.lifecycle.engine, self.limits)
            inputs = {
                "images": ask.image[None],
                "masks": ask.mask[None],
                "seeds": np.asarray([ask.seed], dtype=np.int64),
            }
            out = self.submit("Complete", "complete", ask.params, inputs, context)
            shown_mask = ask.mask * 2 - 1 if ask.png else ask.mask  # as a picture, white = missing
            return pb.CompleteResponse(
                recovered=_image(out["images"][0], ask.png),
                occluded=_image(occluded(ask.image, ask.mask), ask.png),
                mask=_image(shown_mask, ask.png),
                energy=float(out["energy"][0]),
            )

    def Energy(self, request: pb.EnergyRequest, context) -> pb.EnergyResponse:
        with self.handling("Energy", context):
            images = requests.energy(request, self.lifecycle.engine, self.limits)  # (N, C, H, W)
            out = self.submit("Energy", "energy", None, {"images": images}, context)
            return pb.EnergyResponse(
                energy=out["energy"].tolist(),
                score=out["score"].tolist(),
                ood=out["ood"].tolist() if "ood" in out else [],
            )

    def ModelInfo(self, request: pb.ModelInfoRequest, context) -> pb.ModelInfoResponse:
        with self.handling("ModelInfo", context):
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
                format_version=int(b.manifest["format_version"]),
                bundle_sha256=b.digest,
                file_sha256=b.file_sha256,
                created=str(b.manifest.get("created", "")),
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
