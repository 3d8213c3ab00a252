"""coop-serve: the gRPC service of a model bundle, on ONNX Runtime.

    coop-serve --bundle runs/demo/bundle                       # 127.0.0.1:50051, CUDA if it loads, else CPU
    coop-serve --bundle B --port 0 --port-file /tmp/port.json --metrics-port 9090 --device cpu
    coop-serve --bundle B --tls-cert server.pem --tls-key server.key [--tls-client-ca ca.pem] --token-file tok

Start-up order, so that orchestrators can trust the health service:
1. verify the bundle (sha256 of every file) and the TLS/token files: any problem exits 2 with one line;
2. bind and start gRPC at once: grpc.health.v1 answers NOT_SERVING (live, not ready);
3. open the ONNX Runtime sessions and warm them up, then health says SERVING;
4. SIGTERM/SIGINT: health NOT_SERVING, no new RPCs, in-flight RPCs get --grace-s seconds, exit 0.
SIGHUP reloads --bundle: the new files are verified, opened and warmed up first; until then, and for good when
they do not verify, the loaded bundle keeps serving (editing the files on disk changes nothing by itself).
The bound port (and the metrics port) are printed on stdout and written to --port-file as JSON.
Never imports torch or the trainer.
"""

from __future__ import annotations

import argparse
import hmac
import json
import logging
import os
import signal
import sys
import tempfile
import threading
import time
from concurrent import futures
from dataclasses import dataclass, fields
from pathlib import Path

import grpc
import numpy as np
from coopnets.v1 import coopnets_pb2_grpc as pb_grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from serving.bundle import DEVICES, BundleError, load_bundle, open_sessions
from serving.engine import Engine
from serving.metrics import Metrics
from serving.service import SERVICE_NAME, CoopNetsService, Limits

log = logging.getLogger("coop-serve")

HELP = {
    "bundle": "model bundle directory written by coop-export (required)",
    "host": "address to bind; 127.0.0.1 keeps it local, 0.0.0.0 exposes it (then use TLS and a token)",
    "port": "gRPC port; 0 = any free port (see --port-file)",
    "port_file": 'write {"port": P, "metrics_port": M} here once bound (atomic)',
    "device": "auto (CUDA if it loads, else CPU) | cuda (fail if CUDA cannot load) | cpu (never tries CUDA)",
    "threads": "ONNX Runtime intra-op threads per session (0 = one per core)",
    "max_batch": "most images merged into one ONNX Runtime batch",
    "max_delay_ms": "how long the first request of a batch waits for others to join",
    "max_queue": "requests waiting beyond this are refused with RESOURCE_EXHAUSTED",
    "max_count": "most images in one request",
    "max_steps": "most Langevin steps (steps, latent_steps, refine_steps) in one request",
    "max_receive_mb": "largest request message in MiB",
    "max_send_mb": "largest response message in MiB",
    "workers": "gRPC handler threads = most concurrent RPCs, beyond which RESOURCE_EXHAUSTED at once; every "
    "request waiting in the batch queue holds one, so it must exceed --max-queue",
    "metrics_port": "Prometheus /metrics port; -1 = off, 0 = any free port",
    "tls_cert": "PEM server certificate (with --tls-key): serve TLS",
    "tls_key": "PEM private key of --tls-cert",
    "tls_client_ca": "PEM CA: require client certificates signed by it (mTLS)",
    "token_file": "file holding a bearer token every RPC except health must send (authorization: Bearer T)",
    "grace_s": "seconds in-flight RPCs get to finish after SIGTERM",
    "warmup_runs": "warm-up passes over every graph before health says SERVING",
    "reflection": "gRPC server reflection (grpcurl works without the .proto)",
    "log_level": "debug | info | warning | error",
}


@dataclass(frozen=True)
class ServeConfig:
    bundle: str = ""
    host: str = "127.0.0.1"
    port: int = 50051
    port_file: str = ""
    device: str = "auto"
    threads: int = 0
    max_batch: int = 64
    max_delay_ms: int = 5
    max_queue: int = 64
    max_count: int = 64
    max_steps: int = 1000
    max_receive_mb: int = 16
    max_send_mb: int = 64
    workers: int = 160  # max_queue + max_batch + 32 for health, ModelInfo and streams
    metrics_port: int = -1
    tls_cert: str = ""
    tls_key: str = ""
    tls_client_ca: str = ""
    token_file: str = ""
    grace_s: float = 10.0
    warmup_runs: int = 1
    reflection: bool = True
    log_level: str = "info"

    @property
    def limits(self) -> Limits:
        return Limits(
            max_count=self.max_count,
            max_steps=self.max_steps,
            max_batch=self.max_batch,
            max_delay_ms=self.max_delay_ms,
            max_queue=self.max_queue,
            max_receive_message_bytes=self.max_receive_mb << 20,
            max_send_message_bytes=self.max_send_mb << 20,
        )


class ConfigError(Exception):
    """A flag or a file it names is wrong; the message says how to fix it."""


def parse_args(argv: list[str] | None = None) -> ServeConfig:
    """One flag per ServeConfig field."""
    parser = argparse.ArgumentParser(
        prog="coop-serve",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    defaults = ServeConfig()
    for f in fields(ServeConfig):
        flag, default = f"--{f.name.replace('_', '-')}", getattr(defaults, f.name)
        help_text = f"{HELP[f.name]} (default: {default!r})"
        if isinstance(default, bool):
            parser.add_argument(
                flag, dest=f.name, action=argparse.BooleanOptionalAction, default=default, help=help_text
            )
        else:
            parser.add_argument(
                flag,
                dest=f.name,
                type=type(default),
                default=default,
                help=help_text,
                choices=DEVICES if f.name == "device" else None,
            )
    return ServeConfig(**vars(parser.parse_args(argv)))


def _read(path: str, what: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as e:
        raise ConfigError(f"cannot read {what} {path!r} ({e.strerror}): check the path") from None


def validate(cfg: ServeConfig) -> None:
    if not cfg.bundle:
        raise ConfigError("--bundle DIR is required: the directory coop-export wrote (e.g. runs/demo/bundle)")
    positive = (
        "max_batch",
        "max_queue",
        "max_count",
        "max_steps",
        "max_receive_mb",
        "max_send_mb",
        "workers",
    )
    for name in positive:
        if getattr(cfg, name) < 1:
            raise ConfigError(f"--{name.replace('_', '-')} must be >= 1")
    if cfg.max_delay_ms < 0 or cfg.grace_s < 0 or cfg.threads < 0 or cfg.warmup_runs < 0:
        raise ConfigError("--max-delay-ms, --grace-s, --threads and --warmup-runs must be >= 0")
    if cfg.workers <= cfg.max_queue:
        raise ConfigError(
            f"--workers {cfg.workers} must exceed --max-queue {cfg.max_queue}: each queued request "
            "holds a handler thread, so the queue bound could never be reached"
        )
    if bool(cfg.tls_cert) != bool(cfg.tls_key):
        raise ConfigError("--tls-cert and --tls-key go together: give both or neither")
    if cfg.tls_client_ca and not cfg.tls_cert:
        raise ConfigError("--tls-client-ca (mTLS) needs --tls-cert and --tls-key")


def load_token(path: str) -> str:
    token = _read(path, "--token-file").decode("utf-8", "replace").strip()
    if not token:
        raise ConfigError(f"--token-file {path!r} is empty: put the bearer token in it")
    return token


class HealthServicer(health.HealthServicer):
    """grpc.health.v1 with List, which grpcio-health-checking 1.85 leaves unimplemented."""

    def List(self, request, context):
        with self._lock:
            statuses = {
                name: health_pb2.HealthCheckResponse(status=status)
                for name, status in self._server_status.items()
            }
        return health_pb2.HealthListResponse(statuses=statuses)


class TokenInterceptor(grpc.ServerInterceptor):
    """Every RPC except grpc.health.v1 must carry `authorization: Bearer <token>`, else UNAUTHENTICATED."""

    def __init__(self, token: str, metrics: Metrics):
        self._expected = f"Bearer {token}".encode()
        self._metrics = metrics

    def intercept_service(self, continuation, details):
        if details.method.startswith("/grpc.health.v1.Health/"):
            return continuation(details)
        sent = dict(details.invocation_metadata).get("authorization", "")
        if hmac.compare_digest(sent.encode(), self._expected):
            return continuation(details)
        handler = continuation(details)
        rpc = details.method.rsplit("/", 1)[-1]
        self._metrics.observe(rpc, "UNAUTHENTICATED", 0.0)

        def deny(request, context):
            context.abort(
                grpc.StatusCode.UNAUTHENTICATED,
                "missing or wrong bearer token: send metadata 'authorization: Bearer <token>'",
            )

        if handler is None:
            return None
        if handler.unary_unary:
            return grpc.unary_unary_rpc_method_handler(
                deny, handler.request_deserializer, handler.response_serializer
            )
        if handler.unary_stream:
            return grpc.unary_stream_rpc_method_handler(
                deny, handler.request_deserializer, handler.response_serializer
            )
        if handler.stream_unary:
            return grpc.stream_unary_rpc_method_handler(
                deny, handler.request_deserializer, handler.response_serializer
            )
        return grpc.stream_stream_rpc_method_handler(
            deny, handler.request_deserializer, handler.response_serializer
        )


class _Undecodable:
    """Stands in for a request whose bytes do not parse as its protobuf message."""

    def __init__(self, error: Exception):
        self.error = error


class DecodeErrorInterceptor(grpc.ServerInterceptor):
    """A request body that is not a valid protobuf message answers INVALID_ARGUMENT: grpcio's own deserializer
    would answer INTERNAL (and log a traceback) for what is only bad client input."""

    def __init__(self, metrics: Metrics):
        self._metrics = metrics

    def intercept_service(self, continuation, details):
        handler = continuation(details)
        if handler is None or not details.method.startswith(f"/{SERVICE_NAME}/"):
            return handler
        rpc = details.method.rsplit("/", 1)[-1]

        def parse(deserialize):
            def safe(data: bytes):
                try:
                    return deserialize(data)
                except Exception as e:  # protobuf's DecodeError, or anything else a parser raises
                    return _Undecodable(e)

            return safe

        def guard(behavior):
            def run(request, context):
                if isinstance(request, _Undecodable):
                    self._metrics.observe(rpc, "INVALID_ARGUMENT", 0.0)
                    context.abort(
                        grpc.StatusCode.INVALID_ARGUMENT,
                        f"the request is not a valid protobuf message for {rpc} "
                        f"({type(request.error).__name__}): check the client's coopnets.proto",
                    )
                return behavior(request, context)

            return run

        if handler.unary_unary:
            return grpc.unary_unary_rpc_method_handler(
                guard(handler.unary_unary), parse(handler.request_deserializer), handler.response_serializer
            )
        if handler.unary_stream:
            return grpc.unary_stream_rpc_method_handler(
                guard(handler.unary_stream), parse(handler.request_deserializer), handler.response_serializer
            )
        return handler  # the service has no client-streaming methods


def write_json_atomic(path: str, data: dict) -> None:
    target = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
    with os.fdopen(fd, "w") as f:
        json.dump(data, f)
    os.replace(tmp, target)


def warm_up(engine: Engine, runs: int, max_batch: int) -> None:
    """Runs every graph at batch 1 and at the largest batch, so that the first requests do not pay for
    ONNX Runtime's lazy initialisation and memory arena growth."""
    c, h, w = engine.image_shape
    for _ in range(runs):
        for n in sorted({1, max_batch}):
            out = engine.synthesize(list(range(n)), steps=1)
            masks = np.ones((n, c, h, w), dtype=np.float32)  # (N, C, H, W), top half observed
            masks[:, :, : h // 2] = 0
            engine.complete(out.images, masks, list(range(n)), latent_steps=1, refine_steps=1)
            engine.energy(out.images)


def reload_bundle(cfg: ServeConfig, service: CoopNetsService) -> bool:
    """SIGHUP: swap in the bundle now in --bundle, only once it verifies. Verify (sha256 of every file), open
    and warm up its sessions, verify again (a copy still in progress changes the digest), then new batches use
    it; batches already running finish on the old engine. A bundle that does not verify, or that changes the
    image shape or latent size (requests validated against them may be queued), is refused with one log line
    and the old one keeps serving. Returns whether the new bundle is now served."""
    old = service.engine
    try:
        bundle = load_bundle(cfg.bundle)
        if old is not None and bundle.digest == old.bundle.digest:
            log.info("SIGHUP: bundle %s unchanged (sha256 %s)", bundle.path, bundle.digest[:12])
            return False
        if old is not None and (bundle.image_shape, bundle.latent_dim) != (old.image_shape, old.latent_dim):
            raise BundleError(
                f"image shape {bundle.image_shape} / latent size {bundle.latent_dim} differ from the served "
                f"{old.image_shape} / {old.latent_dim}: restart coop-serve to change them"
            )
        engine = Engine(bundle, open_sessions(bundle, device=cfg.device, threads=cfg.threads))
        warm_up(engine, cfg.warmup_runs, cfg.max_batch)
        if load_bundle(cfg.bundle).digest != bundle.digest:
            raise BundleError(
                f"{cfg.bundle} changed while it was being loaded: send SIGHUP again when the copy is complete"
            )
    except BundleError as e:
        log.error(
            "SIGHUP: reload refused, still serving sha256 %s: %s",
            old.bundle.digest[:12] if old is not None else "-",
            e,
        )
        return False
    service.engine = engine
    log.info("SIGHUP: reloaded bundle %s (sha256 %s)", bundle.path, bundle.digest[:12])
    return True


def serve(cfg: ServeConfig) -> int:
    """Runs the server until SIGTERM/SIGINT; returns the exit code."""
    validate(cfg)
    bundle = load_bundle(cfg.bundle)  # verified before anything listens
    metrics = Metrics()
    interceptors = [TokenInterceptor(load_token(cfg.token_file), metrics)] if cfg.token_file else []
    interceptors.append(DecodeErrorInterceptor(metrics))  # inside the token check: its refusal decodes too
    creds = None
    if cfg.tls_cert:
        client_ca = _read(cfg.tls_client_ca, "--tls-client-ca") if cfg.tls_client_ca else None
        creds = grpc.ssl_server_credentials(
            [(_read(cfg.tls_key, "--tls-key"), _read(cfg.tls_cert, "--tls-cert"))],
            root_certificates=client_ca,
            require_client_auth=client_ca is not None,
        )

    limits = cfg.limits
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=cfg.workers, thread_name_prefix="rpc"),
        interceptors=interceptors,
        maximum_concurrent_rpcs=cfg.workers,  # no unbounded wait for a thread: overload is refused at once
        options=[
            ("grpc.max_receive_message_length", limits.max_receive_message_bytes),
            ("grpc.max_send_message_length", limits.max_send_message_bytes),
            ("grpc.so_reuseport", 0),
        ],
    )
    service = CoopNetsService(limits, metrics)
    pb_grpc.add_CoopNetsServicer_to_server(service, server)
    health_servicer = HealthServicer(experimental_non_blocking=True)
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    for name in ("", SERVICE_NAME):
        health_servicer.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
    if cfg.reflection:
        reflection.enable_server_reflection(
            (SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME), server
        )
    address = f"{cfg.host}:{cfg.port}"
    try:
        port = server.add_secure_port(address, creds) if creds else server.add_insecure_port(address)
    except RuntimeError as e:
        raise ConfigError(f"cannot bind {address} ({e}): choose another --port or --host") from None
    if port == 0:
        raise ConfigError(f"cannot bind {address}: choose another --port or --host")

    stop, reload = threading.Event(), threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda signum, frame: stop.set())
    signal.signal(signal.SIGHUP, lambda signum, frame: reload.set())
    server.start()
    metrics_port = metrics.serve(cfg.metrics_port, cfg.host) if cfg.metrics_port >= 0 else None
    print(
        f"coop-serve: listening on {cfg.host}:{port} ({'TLS' if creds else 'plaintext'}"
        f"{', token' if cfg.token_file else ''}); metrics port {metrics_port}",
        flush=True,
    )
    if cfg.port_file:
        write_json_atomic(cfg.port_file, {"port": port, "metrics_port": metrics_port})
    log.info("live on %s:%d, health NOT_SERVING until warm-up is done", cfg.host, port)

    # not ready until the sessions exist and have run once
    t0 = time.perf_counter()
    engine = Engine(bundle, open_sessions(bundle, device=cfg.device, threads=cfg.threads))
    warm_up(engine, cfg.warmup_runs, cfg.max_batch)
    log.info(
        "sessions %s on %s, warm-up done in %.2f s",
        engine.sessions.providers,
        engine.sessions.device,
        time.perf_counter() - t0,
    )
    service.attach(engine)
    if not stop.is_set():
        log.info("health SERVING: bundle %s (sha256 %s)", bundle.path, bundle.digest[:12])
        for name in ("", SERVICE_NAME):
            health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)

    while not stop.wait(0.2):
        if reload.is_set():
            reload.clear()
            reload_bundle(cfg, service)
    log.info("shutting down: health NOT_SERVING, in-flight RPCs get %.1f s", cfg.grace_s)
    health_servicer.enter_graceful_shutdown()
    deadline = time.monotonic() + cfg.grace_s
    if not service.drain(cfg.grace_s):  # new RPCs get UNAVAILABLE while those in flight finish
        log.warning("grace period over with RPCs still in flight: they end UNAVAILABLE")
    server.stop(max(0.0, deadline - time.monotonic())).wait()
    service.close()
    log.info("stopped")
    return 0


def main(argv: list[str] | None = None) -> int:
    cfg = parse_args(argv)
    logging.basicConfig(
        level=cfg.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        return serve(cfg)
    except (ConfigError, BundleError) as e:
        print(f"coop-serve: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
