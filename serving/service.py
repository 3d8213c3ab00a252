"""The coopnets.v1.CoopNets servicer: validate -> engine (through the batcher) -> response.

Thin on purpose: every handler first turns the request into plain numpy arguments, answering INVALID_ARGUMENT
with a google.rpc.BadRequest detail naming the field when something is wrong (never INTERNAL), then calls the
engine, then encodes. Generated protobuf types stay in this module and serving/codec.py.

Cancellation: each RPC gets a threading.Event set by `context.add_callback` when the RPC ends early (client
cancel, deadline); the batcher drops queued work whose event is set, and the engine checks it between Langevin
steps.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import math
import queue
import threading
import time
from dataclasses import dataclass

import grpc
import numpy as np
from coopnets.v1 import coopnets_pb2 as pb
from coopnets.v1 import coopnets_pb2_grpc as pb_grpc
from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from evaluation.occlusions import occlusion_mask
from serving.batcher import Batcher, Job, QueueFull
from serving.codec import FieldError, image_from_proto, image_to_proto, mask_from_proto
from serving.engine import Cancelled, Engine
from serving.metrics import Metrics

log = logging.getLogger(__name__)

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["CoopNets"].full_name  # "coopnets.v1.CoopNets"
MAX_SEED = 2**63 - 1
MAX_STEP_SIZE = 1.0
MAX_RESTARTS = (
    16  # latent chains per completed image: one request costs up to max_steps × this many gradients
)


@dataclass(frozen=True)
class Limits:
    """Server limits: flags of coop-serve, reported in ModelInfo."""

    max_count: int = 64
    max_steps: int = 1000
    max_batch: int = 64
    max_delay_ms: int = 5
    max_queue: int = 64
    max_receive_message_bytes: int = 16 << 20
    max_send_message_bytes: int = 64 << 20


class RpcError(Exception):
    """Ends an RPC with `code`; `field` set = INVALID_ARGUMENT detail naming it."""

    def __init__(self, code: grpc.StatusCode, message: str, field: str | None = None):
        super().__init__(message)
        self.code, self.message, self.field = code, message, field


def invalid(field: str, message: str) -> RpcError:
    return RpcError(grpc.StatusCode.INVALID_ARGUMENT, f"{field}: {message}", field)


def _status(err: RpcError) -> grpc.Status:
    detail = any_pb2.Any()
    details = []
    if err.field:
        detail.Pack(
            error_details_pb2.BadRequest(
                field_violations=[
                    error_details_pb2.BadRequest.FieldViolation(field=err.field, description=err.message)
                ]
            )
        )
        details.append(detail)
    code = getattr(code_pb2, err.code.name)
    return rpc_status.to_status(status_pb2.Status(code=code, message=err.message, details=details))


def _stop_event(context: grpc.ServicerContext) -> threading.Event:
    """Set when the RPC terminates: cancelled by the client, past its deadline (or finished)."""
    ev = threading.Event()
    if not context.add_callback(ev.set):
        ev.set()
    return ev


def _ended_code(context: grpc.ServicerContext) -> grpc.StatusCode:
    remaining = context.time_remaining()
    return (
        grpc.StatusCode.DEADLINE_EXCEEDED
        if remaining is not None and remaining <= 0
        else grpc.StatusCode.CANCELLED
    )


def _rpc(method):
    """Wraps a unary handler: metrics by RPC and code, RpcError / QueueFull / Cancelled -> status codes."""
    name = method.__name__

    @functools.wraps(method)
    def handler(self: CoopNetsService, request, context):
        start = time.perf_counter()
        code = grpc.StatusCode.OK
        try:
            with self.admitted():
                return method(self, request, context)
        except RpcError as e:
            code = e.code
            context.abort_with_status(_status(e))
        except QueueFull as e:
            code = grpc.StatusCode.RESOURCE_EXHAUSTED
            context.abort_with_status(_status(RpcError(code, f"server busy: {e}; retry later")))
        except Cancelled as e:
            code = _ended_code(context)
            log.info("%s stopped after %d Langevin steps: %s", name, e.steps_done, code.name)
            context.abort(code, f"stopped after {e.steps_done} steps")
        except Exception:
            code = grpc.StatusCode.INTERNAL
            log.exception("%s failed", name)
            context.abort(code, "internal error: see the server log")
        finally:
            self.metrics.observe(name, code.name, time.perf_counter() - start)

    return handler


class CoopNetsService(pb_grpc.CoopNetsServicer):
    """Serves one Engine. Not ready (UNAVAILABLE) until `attach` is called after warm-up."""

    def __init__(self, limits: Limits, metrics: Metrics):
        self.limits = limits
        self.metrics = metrics
        self.engine: Engine | None = None
        self.batcher: Batcher | None = None
        self._draining = False
        self._in_flight = 0
        self._idle = threading.Condition()

    def attach(self, engine: Engine) -> None:
        self.batcher = Batcher(
            self._run_batch,
            self.limits.max_batch,
            self.limits.max_delay_ms / 1000.0,
            self.limits.max_queue,
            self.metrics,
        )
        self.engine = engine

    def close(self) -> None:
        if self.batcher is not None:
            self.batcher.close()

    @contextlib.contextmanager
    def admitted(self):
        """Counts an RPC in flight. Once draining, a new RPC is refused with UNAVAILABLE at once: grpcio's own
        stop() would end a late RPC with CANCELLED or UNAVAILABLE depending on timing, and clients retry only
        on UNAVAILABLE."""
        with self._idle:
            if self._draining:
                raise RpcError(grpc.StatusCode.UNAVAILABLE, "the server is shutting down; retry elsewhere")
            self._in_flight += 1
        try:
            yield
        finally:
            with self._idle:
                self._in_flight -= 1
                self._idle.notify_all()

    def drain(self, timeout: float) -> bool:
        """Refuses new RPCs and waits up to `timeout` seconds for those in flight; True when none is left."""
        with self._idle:
            self._draining = True
            return self._idle.wait_for(lambda: self._in_flight == 0, timeout)

    # ---- the engine side of the batcher ----------------------------------------------------------------

    def _run_batch(self, key: tuple, inputs: dict[str, np.ndarray], should_stop) -> dict[str, np.ndarray]:
        engine = self._engine()
        kind = key[0]
        if kind == "synthesize":
            _, steps, delta, noise = key
            out = engine.synthesize(inputs["seeds"].tolist(), steps, delta, noise, should_stop=should_stop)
            return {"images": out.images, "energy": out.energy}
        if kind == "complete":
            _, latent_steps, eta, refine_steps, delta, noise, restarts = key
            out = engine.complete(
                inputs["images"],
                inputs["masks"],
                inputs["seeds"].tolist(),
                latent_steps,
                eta,
                refine_steps,
                delta,
                noise,
                restarts=restarts,
                should_stop=should_stop,
            )
            return {"images": out.images, "energy": out.energy}
        if kind == "energy":
            energy, score = engine.energy_and_score(inputs["images"])
            return {"energy": energy, "score": score}
        raise ValueError(f"unknown batch kind {kind!r}")

    def _engine(self) -> Engine:
        if self.engine is None:
            raise RpcError(
                grpc.StatusCode.UNAVAILABLE, "the model is still loading / warming up; retry shortly"
            )
        return self.engine

    def _submit(self, rpc: str, key: tuple, inputs: dict[str, np.ndarray], context) -> dict[str, np.ndarray]:
        self._engine()
        job = Job(key=key, inputs=inputs, stop=_stop_event(context), rpc=rpc)
        return self.batcher.submit(job).result()

    # ---- validation ------------------------------------------------------------------------------------

    def _count(self, count: int, field: str = "count") -> int:
        if not 1 <= count <= self.limits.max_count:
            raise invalid(field, f"{count} is not between 1 and max_count = {self.limits.max_count}")
        return count

    @staticmethod
    def _seed(seed: int, count: int = 1, field: str = "seed") -> int:
        if seed < 0 or seed + count - 1 > MAX_SEED:
            raise invalid(field, f"{seed} must be >= 0 and seed + count - 1 <= 2^63 - 1")
        return seed

    def _steps(self, msg, name: str, default: int, field: str) -> int:
        if not msg.HasField(name):
            return default
        value = getattr(msg, name)
        if value > self.limits.max_steps:
            raise invalid(field, f"{value} is more than max_steps = {self.limits.max_steps}")
        return int(value)

    @staticmethod
    def _restarts(value: int, default: int) -> int:
        """0 (unset) = the bundle's default; otherwise 1 … MAX_RESTARTS latent chains per image."""
        if value == 0:
            return default
        if value > MAX_RESTARTS:
            raise invalid("restarts", f"{value} is more than {MAX_RESTARTS} latent chains per image")
        return int(value)

    @staticmethod
    def _step_size(msg, name: str, default: float, field: str) -> float:
        if not msg.HasField(name):
            return default
        value = float(getattr(msg, name))
        if not (math.isfinite(value) and 0 < value <= MAX_STEP_SIZE):
            raise invalid(field, f"{value} must be a finite number in (0, {MAX_STEP_SIZE}]")
        return value

    @staticmethod
    def _format(fmt: int, field: str = "format") -> int:
        if fmt not in (pb.IMAGE_FORMAT_UNSPECIFIED, pb.IMAGE_FORMAT_PNG, pb.IMAGE_FORMAT_TENSOR):
            raise invalid(field, f"unknown image format {fmt}: use IMAGE_FORMAT_PNG or IMAGE_FORMAT_TENSOR")
        return fmt

    def _synthesis_args(self, req: pb.SynthesizeRequest, prefix: str = "") -> tuple[list[int], tuple]:
        d = self._engine().langevin
        count = self._count(req.count, prefix + "count")
        seed = self._seed(req.seed, count, prefix + "seed")
        lv = req.langevin
        steps = self._steps(lv, "steps", d.steps, prefix + "langevin.steps")
        delta = self._step_size(lv, "step_size", d.delta, prefix + "langevin.step_size")
        noise = lv.noise if lv.HasField("noise") else d.noise
        self._format(req.format, prefix + "format")
        return list(range(seed, seed + count)), ("synthesize", steps, delta, bool(noise))

    @staticmethod
    def _field(fn, *args):
        try:
            return fn(*args)
        except FieldError as e:
            raise invalid(e.field, e.description) from None

    # ---- RPCs -----------------------------------------------------------------------------------------

    @_rpc
    def Synthesize(self, request: pb.SynthesizeRequest, context) -> pb.SynthesizeResponse:
        seeds, key = self._synthesis_args(request)
        out = self._submit("Synthesize", key, {"seeds": np.asarray(seeds, dtype=np.int64)}, context)
        return pb.SynthesizeResponse(
            images=[
                pb.GeneratedImage(
                    index=i,
                    seed=s,
                    image=image_to_proto(out["images"][i], request.format),
                    energy=float(out["energy"][i]),
                )
                for i, s in enumerate(seeds)
            ]
        )

    def SynthesizeStream(self, request: pb.SynthesizeStreamRequest, context):
        """Runs outside the batcher (it reports every k steps of its own chains); the engine works in a
        thread and this generator forwards its snapshots and final images as they come."""
        start, code = time.perf_counter(), grpc.StatusCode.OK
        try:
            with self.admitted():
                yield from self._stream(request, context)
        except RpcError as e:
            code = e.code
            context.abort_with_status(_status(e))
        except Cancelled as e:
            code = _ended_code(context)
            context.abort(code, f"stopped after {e.steps_done} steps")
        except GeneratorExit:  # the client went away between messages; the worker stops at its next step
            code = _ended_code(context)
            raise
        finally:
            self.metrics.observe("SynthesizeStream", code.name, time.perf_counter() - start)

    def _stream(self, request: pb.SynthesizeStreamRequest, context):
        """SynthesizeStream's body: yields the events; errors propagate to SynthesizeStream."""
        engine = self._engine()
        seeds, (_, steps, delta, noise) = self._synthesis_args(request.request, "request.")
        k = request.snapshot_every
        if k > steps:
            raise invalid("snapshot_every", f"{k} is more than the {steps} Langevin steps")
        fmt, stop = request.request.format, _stop_event(context)
        events: queue.Queue = queue.Queue()

        def work() -> None:
            try:
                out = engine.synthesize(
                    seeds,
                    steps,
                    delta,
                    noise,
                    snapshot_every=k,
                    on_snapshot=lambda t, y: events.put(("snapshot", t, y)),
                    should_stop=stop.is_set,
                )
                events.put(("final", steps, out))
            except Cancelled as e:  # counted here: the RPC thread may be gone already
                self.metrics.cancelled.labels("SynthesizeStream", "running").inc()
                log.info(
                    "SynthesizeStream stopped after %d Langevin steps: the client cancelled or its "
                    "deadline passed",
                    e.steps_done,
                )
                events.put(("error", 0, e))
            except BaseException as e:  # handed to the RPC thread, which maps it to a status
                events.put(("error", 0, e))

        threading.Thread(target=work, name="stream", daemon=True).start()
        while True:
            kind, t, payload = events.get()
            if kind == "error":
                raise payload
            if kind == "snapshot":
                for i, s in enumerate(seeds):
                    yield pb.SynthesizeEvent(
                        step=t,
                        final=False,
                        image=pb.GeneratedImage(index=i, seed=s, image=image_to_proto(payload[i], fmt)),
                    )
                continue
            for i, s in enumerate(seeds):
                yield pb.SynthesizeEvent(
                    step=t,
                    final=True,
                    image=pb.GeneratedImage(
                        index=i,
                        seed=s,
                        image=image_to_proto(payload.images[i], fmt),
                        energy=float(payload.energy[i]),
                    ),
                )
            return

    @_rpc
    def Complete(self, request: pb.CompleteRequest, context) -> pb.CompleteResponse:
        engine = self._engine()
        shape, d, c = engine.image_shape, engine.langevin, engine.completion
        image = self._field(image_from_proto, request.image, shape, "image")  # (C, H, W)
        seed = self._seed(request.seed)
        source = request.WhichOneof("mask_source")
        if source == "mask":
            mask = self._field(mask_from_proto, request.mask, shape, "mask")  # (C, H, W), 1 = missing
        elif source == "occlusion":
            try:
                mask = occlusion_mask(request.occlusion, shape, seed)
            except ValueError as e:
                raise invalid("occlusion", str(e)) from None
        else:
            raise invalid("mask", "give a mask (1 / white = missing) or an occlusion such as center:14")
        key = (
            "complete",
            self._steps(request, "latent_steps", c.latent_steps, "latent_steps"),
            self._step_size(request, "latent_step_size", c.latent_step_size, "latent_step_size"),
            self._steps(request, "refine_steps", c.refine_steps, "refine_steps"),
            self._step_size(request, "refine_step_size", d.delta, "refine_step_size"),
            bool(request.noise) if request.HasField("noise") else d.noise,
            self._restarts(request.restarts, c.restarts),
        )
        fmt = self._format(request.format)
        out = self._submit(
            "Complete",
            key,
            {"images": image[None], "masks": mask[None], "seeds": np.asarray([seed], dtype=np.int64)},
            context,
        )
        occluded = np.where(mask > 0.5, -1.0, image).astype(np.float32)  # (C, H, W), holes black
        return pb.CompleteResponse(
            recovered=image_to_proto(out["images"][0], fmt),
            occluded=image_to_proto(occluded, fmt),
            mask=image_to_proto(mask * 2 - 1, fmt)
            if fmt != pb.IMAGE_FORMAT_TENSOR
            else image_to_proto(mask, fmt),
            energy=float(out["energy"][0]),
        )

    @_rpc
    def Energy(self, request: pb.EnergyRequest, context) -> pb.EnergyResponse:
        shape = self._engine().image_shape
        self._count(len(request.images), "images")
        images = np.stack(
            [
                self._field(image_from_proto, img, shape, f"images[{i}]")
                for i, img in enumerate(request.images)
            ]
        )  # (N, C, H, W)
        out = self._submit("Energy", ("energy",), {"images": images}, context)
        return pb.EnergyResponse(energy=out["energy"].tolist(), score=out["score"].tolist())

    @_rpc
    def ModelInfo(self, request: pb.ModelInfoRequest, context) -> pb.ModelInfoResponse:
        engine = self._engine()
        b, lv, cp, lim = engine.bundle, engine.langevin, engine.completion, self.limits
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
            ),
            format_version=int(b.manifest["format_version"]),
            bundle_sha256=b.digest,
            file_sha256=b.file_sha256,
            created=str(b.manifest.get("created", "")),
            sessions=[pb.SessionInfo(graph=g, providers=p) for g, p in engine.sessions.providers.items()],
            device=engine.sessions.device,
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
