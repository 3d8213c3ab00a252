"""Helpers shared by the tests (imported as `from support import ...`; fixtures stay in conftest.py).

- ROOT, TOKEN and the tiny bundle's sampling settings (LANGEVIN, COMPLETION); `completion_params`
  (CompletionParams that name only what a test changes); `load_script` (a tool of protos/ or bench/ as a
  module), `tracked_text_files` (what git tracks, binaries left out); `legacy_nets` (the legacy bundle's nets
  rebuilt in torch, for float32_bound);
- `local_server`: serving.server.create_server in this process on a free loopback port (`LocalServer`), for
  every test that needs no signal and no torch blocker: it starts in milliseconds;
- `start_server`: a real coop-serve subprocess (torch and the trainer blocked) on a free loopback port, for
  tests of signals (SIGTERM, SIGHUP) and of the blocker; `ServerProc` reads its log and /metrics.
  Both kinds have .address, .port, .metrics_port, .http_port and .http_url (with http_port=0 /
  "--http-port", "0"), .token, .client(), .metric(name, **labels), .log() and
  .stop() (the exit code of the process; for a LocalServer, whether no RPC was cut off);
- `wait_for`, `write_idx` (idx image/label files as Fashion-MNIST ships them), `make_pki` (a CA, server and
  client certificates, and a rogue CA that signs a rogue client and server).
"""

from __future__ import annotations

import datetime
import gzip
import ipaddress
import logging
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import numpy as np
from coopnets.contract.sampling import CompletionParams

ROOT = Path(__file__).resolve().parent.parent


def load_script(rel: str):
    """A development script of the repository (not part of the installed package) as a module, loaded from
    its file: the tests reach the tools in protos/ and bench/ without editing sys.path."""
    import importlib.util
    import sys

    path = ROOT / rel
    name = path.stem
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module  # dataclasses look their module up while the file runs
        spec.loader.exec_module(module)
    return sys.modules[name]


def legacy_nets(bundle_dir: Path = ROOT / "tests" / "data" / "legacy" / "bundle"):
    """The bundle's descriptor and generator in torch (eval mode), for the float32 bound: record.py's layers
    (descriptor convs 1 → 8 → 16 → 10, generator transposed convs 8 → 16 → 8 → 1 with BatchNorm, leaky ReLU
    0.2, tanh) with the weights of the bundle's graphs, which name them as the torch modules do."""
    import onnx
    import torch
    from coopnets.trainer.nets import LEAK, NetSpec, build_nets
    from onnx import numpy_helper
    from torch import nn

    descriptor, generator = build_nets(NetSpec("mnist28", 1, 8))  # their spec; the bodies replaced below
    lrelu = lambda: nn.LeakyReLU(LEAK)  # noqa: E731
    descriptor.body = nn.Sequential(
        nn.Conv2d(1, 8, 4, 2, 1), lrelu(), nn.Conv2d(8, 16, 4, 2, 1), lrelu(), nn.Conv2d(16, 10, 7, 1, 0)
    )
    generator.body = nn.Sequential(
        nn.Unflatten(1, (8, 1, 1)),
        *(nn.ConvTranspose2d(8, 16, 7, 1, 0), nn.BatchNorm2d(16), lrelu()),
        *(nn.ConvTranspose2d(16, 8, 4, 2, 1), nn.BatchNorm2d(8), lrelu()),
        *(nn.ConvTranspose2d(8, 1, 4, 2, 1), nn.Tanh()),
    )
    for net, graph in ((descriptor, "descriptor"), (generator, "generator")):
        weights = onnx.load(str(bundle_dir / f"{graph}.onnx")).graph.initializer
        found = {t.name: torch.from_numpy(numpy_helper.to_array(t).copy()) for t in weights}
        state = {k: v for k, v in net.state_dict().items() if not k.endswith("num_batches_tracked")}
        assert set(state) <= set(found), sorted(set(state) - set(found))
        net.load_state_dict({k: found[k] for k in state}, strict=False)
    return descriptor.eval(), generator.eval()


def tracked_text_files() -> list[Path]:
    """The files git tracks, less the binary kinds (graphs, weights, images, archives)."""
    import subprocess

    names = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True).stdout.split()
    out = []
    for name in names:
        path = ROOT / name
        if path.suffix in {".onnx", ".bin", ".png", ".gz", ".npz", ".pt"} or not path.is_file():
            continue
        out.append(path)
    return out


_spawn = load_script("bench/spawn.py")  # coop-serve in a child process, shared with the benchmarks
Spawned, spawn, wait_serving = _spawn.Spawned, _spawn.spawn, _spawn.wait_serving
TOKEN = "test-token-0123456789"
LANGEVIN = {"s": 0.016, "delta": 0.002, "steps": 4, "sigma": 0.3, "noise": True}
COMPLETION = {"latent_steps": 6, "latent_step_size": 0.05, "latent_noise": False, "refine_steps": 3}


def completion_params(**fields) -> CompletionParams:
    """CompletionParams for a test: one latent step of η = 0.05 without noise, one refinement step of the
    tiny bundle's δ with noise, one chain; `fields` replace any of them, so a test names only what it is
    about."""
    base = dict(latent_steps=1, latent_step_size=0.05, latent_noise=False, refine_steps=1,
                delta=LANGEVIN["delta"], noise=True, restarts=1)  # fmt: skip
    return CompletionParams(**{**base, **fields})


# Run in coop-serve's process before its main (serving.spawn's prelude): any import of torch or the trainer
# raises ImportError, so a server that needed them would fail its start or its requests.
NO_TORCH = """
import sys
class _Blocker:
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] == 'torch' or (name + '.').startswith('coopnets.trainer.'):
            raise ImportError(f'{name} is blocked: serving must not import torch or the trainer')
        return None
sys.meta_path.insert(0, _Blocker())
sys.modules.pop('torch', None)
"""


@dataclass
class ServerProc(Spawned):
    """A coop-serve child process (serving.spawn) with what the tests read: client, /metrics, health seen."""

    token: str | None = None
    health_history: list[str] = field(default_factory=list)

    def client(self, **kw):
        from coopnets.clients.client import CoopNetsClient

        return CoopNetsClient(self.address, token=self.token, **kw)

    def metric(self, name: str, **labels) -> float:
        """Sum of the samples of `name` whose labels include `labels`, read from /metrics."""
        from prometheus_client.parser import text_string_to_metric_families

        text = (
            urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5).read().decode()
        )
        return _sum_samples(text_string_to_metric_families(text), name, labels)


def start_server(
    bundle: Path,
    workdir: Path,
    *args: str,
    token: str | None = None,
    channel_credentials=None,
    watch_health: bool = False,
) -> ServerProc:
    """Starts coop-serve (torch blocked) on a free loopback port and waits until health says SERVING; with
    `watch_health`, records every status from the moment the port is bound."""
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    argv = ["--device", "cpu", "--threads", "1", "--metrics-port", "0", *args]
    if token:
        workdir.mkdir(parents=True, exist_ok=True)
        (workdir / "token").write_text(token + "\n")
        argv += ["--token-file", str(workdir / "token")]
    spawned = spawn(bundle, workdir, *argv, prelude=NO_TORCH, timeout=60)
    server = ServerProc(**vars(spawned), token=token)
    if not watch_health:
        wait_serving(server.address, 60, channel_credentials)
        return server
    with grpc.insecure_channel(server.address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        for resp in stub.Watch(health_pb2.HealthCheckRequest(service="coopnets.v1.CoopNets"), timeout=60):
            server.health_history.append(health_pb2.HealthCheckResponse.ServingStatus.Name(resp.status))
            if resp.status == health_pb2.HealthCheckResponse.SERVING:
                break
    return server


def _sum_samples(families, name: str, labels: dict) -> float:
    return sum(
        s.value
        for family in families
        for s in family.samples
        if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())
    )


class LogRecorder(logging.Handler):
    """Keeps the records of the server's loggers (coopnets.serving.*, coop-serve) at INFO and above,
    formatted as the coop-serve process writes them, tracebacks included. Those loggers are set to INFO for
    good: several recorders may be open at once, so none may restore a level another one needs."""

    LOGGERS = ("coopnets.serving", "coop-serve")

    def __init__(self):
        super().__init__(logging.INFO)
        self.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
        self.lines: list[str] = []
        for name in self.LOGGERS:
            logging.getLogger(name).setLevel(logging.INFO)
            logging.getLogger(name).addHandler(self)

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))

    def close(self) -> None:
        for name in self.LOGGERS:
            logging.getLogger(name).removeHandler(self)
        super().close()


@dataclass
class LocalServer:
    """A coop-serve made by create_server in this process (see local_server)."""

    server: object  # serving.server.Server
    recorder: LogRecorder
    token: str | None = None

    @property
    def port(self) -> int:
        return self.server.port

    @property
    def metrics_port(self) -> int | None:
        return self.server.metrics_port

    @property
    def http_port(self) -> int | None:
        return self.server.http_port

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def lifecycle(self):
        return self.server.lifecycle

    def client(self, **kw):
        from coopnets.clients.client import CoopNetsClient

        return CoopNetsClient(self.address, token=self.token, **kw)

    def log(self) -> str:
        """What the server's loggers wrote since it was made (other servers of this process included)."""
        return "\n".join(self.recorder.lines)

    def metric(self, name: str, **labels) -> float:
        """Sum of the samples of `name` whose labels include `labels`, read from the server's registry."""
        return _sum_samples(self.server.metrics.registry.collect(), name, labels)

    def stop(self, grace_s: float = 10.0) -> bool:
        """Drains and stops it; True when no RPC was cut off."""
        try:
            return self.server.shutdown(grace_s)
        finally:
            self.recorder.close()


def local_server(
    bundle: Path,
    workdir: Path | None = None,
    *,
    engine=None,
    ready: bool = True,
    token: str | None = None,
    **config,
) -> LocalServer:
    """create_server on a free loopback port in this process. It serves `engine` (default: the bundle opened
    on one CPU thread), or with ready=False nothing yet: health NOT_SERVING and RPCs UNAVAILABLE until
    `.lifecycle.start(engine)`. `config`: ServeConfig fields, over port 0, cpu, one thread, no warm-up and no
    /metrics port. A `token` is written to a file in `workdir`."""
    from coopnets.serving.engine import Engine
    from coopnets.serving.server import ServeConfig, create_server

    if token:
        workdir.mkdir(parents=True, exist_ok=True)
        (workdir / "token").write_text(token + "\n")
        config["token_file"] = str(workdir / "token")
    base = {"port": 0, "device": "cpu", "threads": 1, "warmup_runs": 0, "metrics_port": -1}
    cfg = ServeConfig(bundle=str(bundle), **{**base, **config}).validate()
    if ready and engine is None:
        engine = Engine.open(bundle, device="cpu", threads=1)
    recorder = LogRecorder()
    try:
        server = create_server(cfg, engine if ready else None)
    except BaseException:
        recorder.close()
        raise
    return LocalServer(server, recorder, token)


def wait_for(predicate, timeout: float = 60.0, interval: float = 0.05) -> bool:
    """Polls `predicate` until it is true (returns True) or `timeout` seconds pass (returns False)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(interval)
    return True


IDX_MAGIC = {1: 0x00000801, 3: 0x00000803}  # unsigned-byte labels (N,), images (N, H, W)


def write_idx(path, array: np.ndarray, magic: int | None = None, gz: bool = True) -> Path:
    """`array` (N,) labels or (N, H, W) images as an idx-ubyte file, gzipped unless gz=False."""
    magic = IDX_MAGIC[array.ndim] if magic is None else magic
    raw = magic.to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in array.shape)
    raw += array.astype(np.uint8).tobytes()
    Path(path).write_bytes(gzip.compress(raw) if gz else raw)
    return Path(path)


def _cert(name: str, key, issuer_name, issuer_key, ca: bool = False, server: bool = False):
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.timezone.utc)
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .issuer_name(issuer_name or x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if server:
        builder = builder.add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
    return builder.sign(issuer_key or key, hashes.SHA256())


def make_pki(d: Path) -> Path:
    """In `d`: ca.pem signs server.pem/.key (localhost, 127.0.0.1) and client.pem/.key; rogue-ca.pem signs
    rogue-client.pem/.key (and a rogue server)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    d.mkdir(parents=True, exist_ok=True)

    def write(name: str, cert, key=None) -> None:
        (d / f"{name}.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        if key is not None:
            (d / f"{name}.key").write_bytes(
                key.private_bytes(
                    serialization.Encoding.PEM,
                    serialization.PrivateFormat.PKCS8,
                    serialization.NoEncryption(),
                )
            )

    for prefix in ("", "rogue-"):
        ca_key = ec.generate_private_key(ec.SECP256R1())
        ca = _cert(f"{prefix}coopnets test CA", ca_key, None, None, ca=True)
        write(f"{prefix}ca", ca)
        for name, server in (("server", True), ("client", False)):
            key = ec.generate_private_key(ec.SECP256R1())
            write(f"{prefix}{name}", _cert(f"{prefix}{name}", key, ca.subject, ca_key, server=server), key)
    return d


def perturbed_nets(spec, seed: int = 0):
    """Descriptor and generator (eval mode) of `spec` (a trainer.nets.NetSpec) with weights ~ N(0, 1/fan_in),
    nonzero biases and random BatchNorm affine parameters and running statistics: activations and gradients
    are O(1), not the near-zero of the official initialisation, so a wrong backward or a wrong BatchNorm
    mode cannot hide in a comparison."""
    import torch
    from coopnets.trainer.nets import build_nets
    from torch import nn

    torch.manual_seed(seed)
    descriptor, generator = build_nets(spec)
    for m in [*descriptor.modules(), *generator.modules()]:
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
            nn.init.normal_(m.weight, 0.0, m.weight[0].numel() ** -0.5)
            nn.init.normal_(m.bias, 0.0, 0.1)
        elif isinstance(m, nn.BatchNorm2d):
            m.running_mean.normal_(0.0, 0.2)
            m.running_var.uniform_(0.5, 2.0)
            nn.init.uniform_(m.weight, 0.5, 1.5)
            nn.init.normal_(m.bias, 0.0, 0.1)
    return descriptor.eval(), generator.eval()


class PerImageBackend:
    """A contract.sampling.Backend that runs `backend`'s nets one image at a time, on one thread. Batched
    float32 convolutions sum in an order that depends on the batch size (and, multi-threaded, on the threads
    they get), so a batched backend can differ from itself in the last bits between a batch and one image of
    it; image by image, the same image meets the same sums in both. A test of the sampler's batch
    independence (draw order, one rng per image) then compares exactly: any difference is the sampler's."""

    def __init__(self, backend):
        self.backend = backend
        self.image_shape, self.latent_dim = backend.image_shape, backend.latent_dim
        self.s, self.sigma = backend.s, backend.sigma

    def each(self, fn, *arrays) -> list:
        """[fn(a[i:i+1] for a in arrays) for each image i] on one thread; (1, ...) arrays broadcast."""
        import torch

        n = max(len(a) for a in arrays)
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            return [fn(*(a[i : i + 1] if len(a) == n else a for a in arrays)) for i in range(n)]
        finally:
            torch.set_num_threads(threads)

    def generate(self, z: np.ndarray) -> np.ndarray:
        return np.concatenate(self.each(self.backend.generate, z))

    def score(self, y: np.ndarray) -> np.ndarray:
        return np.concatenate(self.each(self.backend.score, y))

    def latent_grad(self, z: np.ndarray, y: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        grads, us = zip(*self.each(self.backend.latent_grad, z, y, mask), strict=True)
        return np.concatenate(grads), np.concatenate(us)

    def chain(self, y: np.ndarray, mask: np.ndarray, delta: float):
        return _PerImageChain(self, self.each(lambda yi, mi: self.backend.chain(yi, mi, delta), y, mask))


class _PerImageChain:
    def __init__(self, backend: PerImageBackend, chains: list):
        self.backend, self.chains = backend, chains

    def step(self, noise: np.ndarray) -> None:
        steps = iter(self.chains)
        self.backend.each(lambda u: next(steps).step(u), noise)

    def value(self) -> np.ndarray:
        return np.concatenate([c.value() for c in self.chains])
