"""coop-serve: the gRPC service of a model bundle, on ONNX Runtime.

    coop-serve --bundle runs/demo/bundle                       # 127.0.0.1:50051, CUDA if it loads, else CPU
    coop-serve --bundle B --port 0 --port-file /tmp/port.json --metrics-port 9090 --device cpu
    coop-serve --bundle B --tls-cert server.pem --tls-key server.key [--tls-client-ca ca.pem] --token-file tok
    coop-serve --config serve.toml --port 50052                # TOML keys = the flags' names; flags win
    coop-serve --bundle B --http-port 8000                     # also KServe v2 / Triton REST on :8000

Besides coopnets.v1 it serves the Open Inference Protocol (KServe v2 / Triton's
inference.GRPCInferenceService, serving/oip.py) on the same port, through the same engine, batcher, limits,
token and error mapping; with --http-port, its REST binding too (serving/rest.py, uvicorn in a thread of this
process), through the same again.

Start-up order, so that orchestrators can trust the health service:
1. verify the bundle (sha256 of every file) and the TLS/token files: any problem exits 2 with one line;
2. bind and start gRPC at once: grpc.health.v1 answers NOT_SERVING (live, not ready);
3. open the ONNX Runtime sessions and warm them up, then health says SERVING;
4. SIGTERM/SIGINT: health NOT_SERVING, no new RPCs, in-flight RPCs get --grace-s seconds, exit 0.
SIGHUP reloads --bundle: the new files are verified, opened and warmed up first; until then, and for good when
they do not verify, the loaded bundle keeps serving (editing the files on disk changes nothing by itself).
The bound port (and the metrics and HTTP ports) are printed on stdout and written to --port-file as JSON.
Never imports torch or the trainer.

In a program (tests, an embedding service): `server = create_server(config, engine)` serves `engine` on
`server.port` until `server.shutdown(grace_s)`; serving.lifecycle has the states it goes through.
"""

from __future__ import annotations

import logging
import signal
import sys
import threading
import time
from concurrent import futures
from dataclasses import dataclass
from pathlib import Path

import grpc
from coopnets.contract.bundle import read_bundle
from coopnets.contract.files import atomic_write_json
from coopnets.contract.flags import Parser, add_flags, cli_main, resolve
from coopnets.oip import grpc_service_pb2_grpc as oip_grpc
from coopnets.serving.engine import Engine
from coopnets.serving.interceptors import DecodeErrorInterceptor, TokenInterceptor
from coopnets.serving.lifecycle import SERVICE_NAME, HealthServicer, Lifecycle, check_defaults
from coopnets.serving.metrics import Metrics
from coopnets.serving.oip import SERVICE_NAME as OIP_SERVICE_NAME
from coopnets.serving.oip import InferenceService
from coopnets.serving.requests import Limits
from coopnets.serving.service import CoopNetsService
from coopnets.serving.sessions import DEVICES, MIN_PER_SHARD
from coopnets.v1 import coopnets_pb2_grpc as pb_grpc
from grpc_health.v1 import health, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

log = logging.getLogger("coop-serve")

LOG_LEVELS = ("debug", "info", "warning", "error")
HELP = {
    "bundle": "model bundle directory written by coop-export, or a shipped model: reference (Fashion-MNIST) "
    "or cifar10 (color) (required)",
    "host": "address to bind; 127.0.0.1 keeps it local, 0.0.0.0 exposes it (then use TLS and a token)",
    "port": "gRPC port; 0 = any free port (see --port-file)",
    "reuse_port": "SO_REUSEPORT: several coop-serve processes (replicas) may bind the same --port and the "
    "kernel spreads new connections among them; off, a second server on a used port fails to start",
    "port_file": 'write {"port": P, "metrics_port": M, "http_port": H} here once bound (atomic)',
    "http_port": "the Open Inference Protocol's REST binding (KServe v2 / Triton HTTP: /v2/health/ready, "
    "/v2/models/NAME/infer, ...) on this port of --host, beside gRPC; -1 = off, 0 = any free port",
    "device": "auto (CUDA if it loads, else CPU) | cuda (fail if CUDA cannot load) | cpu (never tries CUDA)",
    "threads": "ONNX Runtime intra-op threads per session (0 = one per core)",
    "batch_shards": f"CPU: a batch of {2 * MIN_PER_SHARD} or more images runs as up to this many parts at "
    f"once, each of at least {MIN_PER_SHARD} images on its own single-threaded sessions (0 = one per "
    "--threads thread, per core with --threads 0; 1 = never cut)",
    "max_batch": "most images merged into one ONNX Runtime batch",
    "max_delay_ms": (
        "how long the first request of a batch waits for others to join (only under concurrency: "
        "a lone request runs at once)"
    ),
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
    "log_level": " | ".join(LOG_LEVELS),
}


@dataclass(frozen=True)
class ServeConfig:
    bundle: str = ""
    host: str = "127.0.0.1"
    port: int = 50051
    reuse_port: bool = False
    port_file: str = ""
    http_port: int = -1
    device: str = "auto"
    threads: int = 0
    batch_shards: int = 0
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

    def validate(self) -> ServeConfig:
        """Raises ValueError naming the flag; the files the flags name are read by create_server."""
        if not self.bundle:
            raise ValueError(
                "--bundle DIR is required: the directory coop-export wrote (e.g. runs/demo/bundle)"
            )
        for name in (
            "max_batch",
            "max_queue",
            "max_count",
            "max_steps",
            "max_receive_mb",
            "max_send_mb",
            "workers",
        ):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be >= 1")
        for name in ("max_delay_ms", "grace_s", "threads", "batch_shards", "warmup_runs"):
            if getattr(self, name) < 0:
                raise ValueError(f"--{name.replace('_', '-')} must be >= 0")
        if self.workers <= self.max_queue:
            raise ValueError(
                f"--workers {self.workers} must exceed --max-queue {self.max_queue}: each queued request "
                "holds a handler thread, so the queue bound could never be reached"
            )
        if bool(self.tls_cert) != bool(self.tls_key):
            raise ValueError("--tls-cert and --tls-key go together: give both or neither")
        if self.tls_client_ca and not self.tls_cert:
            raise ValueError("--tls-client-ca (mTLS) needs --tls-cert and --tls-key")
        if self.device not in DEVICES:
            raise ValueError(f"--device {self.device!r} is not one of {', '.join(DEVICES)}")
        if self.log_level not in LOG_LEVELS:
            raise ValueError(f"--log-level {self.log_level!r} is not one of {', '.join(LOG_LEVELS)}")
        return self

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


def parse_args(argv: list[str] | None = None) -> ServeConfig:
    """One flag per ServeConfig field, plus --config FILE.toml; raises ValueError for a bad value."""
    parser = Parser(prog="coop-serve", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--config", metavar="FILE.toml", help="TOML file of the flags below (flags override it)"
    )
    add_flags(parser, ServeConfig, HELP, choices={"device": DEVICES, "log_level": LOG_LEVELS})
    given = vars(parser.parse_args(argv))
    return resolve(ServeConfig, given, given.get("config"))


def _read(path: str, flag: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as e:
        raise ValueError(f"cannot read {flag} {path!r} ({e.strerror}): check the path") from None


def _token(path: str) -> str:
    token = _read(path, "--token-file").decode("utf-8", "replace").strip()
    if not token:
        raise ValueError(f"--token-file {path!r} is empty: put the bearer token in it")
    return token


def _credentials(config: ServeConfig) -> grpc.ServerCredentials | None:
    if not config.tls_cert:
        return None
    client_ca = _read(config.tls_client_ca, "--tls-client-ca") if config.tls_client_ca else None
    return grpc.ssl_server_credentials(
        [(_read(config.tls_key, "--tls-key"), _read(config.tls_cert, "--tls-cert"))],
        root_certificates=client_ca,
        require_client_auth=client_ca is not None,
    )


@dataclass
class Server:
    """A started coop-serve: gRPC on `port`, /metrics on `metrics_port` and REST on `http_port` (None when
    off)."""

    grpc_server: grpc.Server
    port: int
    metrics_port: int | None
    lifecycle: Lifecycle
    service: CoopNetsService
    metrics: Metrics
    tls: bool
    http: object | None = None  # serving.rest.RestServer

    @property
    def http_port(self) -> int | None:
        return None if self.http is None else self.http.port

    def shutdown(self, grace_s: float) -> bool:
        """Drains (health NOT_SERVING, new RPCs UNAVAILABLE, in-flight ones get `grace_s` seconds), then stops
        gRPC, HTTP, the batcher and /metrics. True when no RPC was cut off."""
        deadline = time.monotonic() + grace_s
        drained = self.lifecycle.drain(grace_s)
        if self.http is not None:
            self.http.stop(max(1.0, deadline - time.monotonic()))
        self.grpc_server.stop(max(0.0, deadline - time.monotonic())).wait()
        self.service.close()
        self.metrics.close()
        return drained


def create_server(config: ServeConfig, engine: Engine | None = None) -> Server:
    """Binds config.host:config.port (0 = any free port), starts gRPC and returns the server. Health says
    NOT_SERVING (RPCs answer UNAVAILABLE) until an engine is warmed up: `engine` here, before this returns,
    or later through `server.lifecycle.start(engine)`. Raises ValueError for files or an address it cannot
    use."""
    metrics = Metrics()
    grpc_server = _grpc_server(config, metrics)  # reads the token file: its error comes before TLS files'
    creds = _credentials(config)
    health_servicer = HealthServicer(experimental_non_blocking=True)
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, grpc_server)
    lifecycle = Lifecycle(
        health_servicer,
        bundle_dir=config.bundle,
        device=config.device,
        threads=config.threads,
        shards=config.batch_shards,
        warmup_runs=config.warmup_runs,
        max_batch=config.max_batch,
        max_steps=config.max_steps,
    )
    service = CoopNetsService(lifecycle, config.limits, metrics)
    pb_grpc.add_CoopNetsServicer_to_server(service, grpc_server)
    oip_grpc.add_GRPCInferenceServiceServicer_to_server(InferenceService(service), grpc_server)
    if config.reflection:
        reflection.enable_server_reflection(
            (SERVICE_NAME, OIP_SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME), grpc_server
        )
    port = _bind(grpc_server, config, creds, service)
    http = _http_server(config, service) if config.http_port >= 0 else None
    grpc_server.start()
    metrics_port = metrics.serve(config.metrics_port, config.host) if config.metrics_port >= 0 else None
    server = Server(grpc_server, port, metrics_port, lifecycle, service, metrics, creds is not None, http)
    log.info("live on %s:%d, health NOT_SERVING until warm-up is done", config.host, port)
    if engine is not None:
        lifecycle.start(engine)
    return server


def _grpc_server(config: ServeConfig, metrics: Metrics) -> grpc.Server:
    """The gRPC server, not yet bound: the token check (where a token file is given) then the decode-error
    interceptor, a worker per concurrent RPC and the message size limits."""
    interceptors = [TokenInterceptor(_token(config.token_file), metrics)] if config.token_file else []
    interceptors.append(DecodeErrorInterceptor(metrics))  # inside the token check: its refusal decodes too
    limits = config.limits
    return grpc.server(
        futures.ThreadPoolExecutor(max_workers=config.workers, thread_name_prefix="rpc"),
        interceptors=interceptors,
        maximum_concurrent_rpcs=config.workers,  # no unbounded wait for a thread: overload is refused at once
        options=[
            ("grpc.max_receive_message_length", limits.max_receive_message_bytes),
            ("grpc.max_send_message_length", limits.max_send_message_bytes),
            ("grpc.so_reuseport", int(config.reuse_port)),
        ],
    )


def _bind(grpc_server: grpc.Server, config: ServeConfig, creds, service: CoopNetsService) -> int:
    """Binds config.host:config.port (TLS where `creds`); returns the port. A port that cannot be bound closes
    the service and raises ValueError in one line."""
    address = f"{config.host}:{config.port}"
    try:
        port = (
            grpc_server.add_secure_port(address, creds) if creds else grpc_server.add_insecure_port(address)
        )
    except RuntimeError as e:
        port, why = 0, f" ({e})"
    else:
        why = ""
    if port == 0:
        service.close()
        raise ValueError(f"cannot bind {address}{why}: choose another --port or --host")
    return port


def _http_server(config: ServeConfig, service: CoopNetsService):
    """The REST binding on config.http_port, through the same service, token and workers as gRPC; closes the
    service when it cannot start (ValueError)."""
    from coopnets.serving import rest  # starlette and uvicorn load only where HTTP is asked for

    app = rest.RestApp(service, _token(config.token_file) if config.token_file else None, config.workers)
    tls = rest.tls_options(config.tls_cert, config.tls_key, config.tls_client_ca)
    try:
        return rest.RestServer(app, config.host, config.http_port, tls)
    except ValueError:
        service.close()
        raise


def serve(config: ServeConfig) -> int:
    """Runs coop-serve until SIGTERM/SIGINT (SIGHUP reloads the bundle); returns the exit code."""
    bundle = read_bundle(config.bundle)  # verified before anything listens
    check_defaults(bundle, config.max_steps)
    server = create_server(config)
    stop, reload = threading.Event(), threading.Event()
    handlers = {signal.SIGTERM: stop.set, signal.SIGINT: stop.set, signal.SIGHUP: reload.set}
    previous = {sig: signal.signal(sig, lambda signum, frame, on=on: on()) for sig, on in handlers.items()}
    try:
        print(
            f"coop-serve: listening on {config.host}:{server.port} ({'TLS' if server.tls else 'plaintext'}"
            f"{', token' if config.token_file else ''}); metrics port {server.metrics_port}; "
            f"HTTP port {server.http_port}",
            flush=True,
        )
        if config.port_file:
            ports = {"port": server.port, "metrics_port": server.metrics_port, "http_port": server.http_port}
            atomic_write_json(config.port_file, ports, None)
        server.lifecycle.start(server.lifecycle.open(bundle))
        while not stop.wait(0.2):
            if reload.is_set():
                reload.clear()
                server.lifecycle.reload()
    finally:
        server.shutdown(config.grace_s if stop.is_set() else 0.0)
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    log.info("stopped")
    return 0


def main(argv: list[str] | None = None) -> int:
    def run() -> int:
        config = parse_args(argv)
        logging.basicConfig(
            level=config.log_level.upper(),
            format="%(asctime)s %(levelname)s %(name)s: %(message)s",
            stream=sys.stderr,
        )
        return serve(config)

    return cli_main("coop-serve", run)


if __name__ == "__main__":
    sys.exit(main())
