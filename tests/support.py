"""Helpers shared by the tests (imported as `from support import ...`; fixtures stay in conftest.py).

- ROOT, TOKEN and the tiny bundle's sampling settings (LANGEVIN, COMPLETION);
- `start_server`: a real coop-serve subprocess (torch and the trainer blocked) on a free loopback port, for
  tests that need signals or a separate process; `ServerProc` reads its log and /metrics;
- `wait_for`, `write_idx` (idx image/label files as Fashion-MNIST ships them), `make_pki` (a CA, server and
  client certificates, and a rogue CA that signs a rogue client).
"""

from __future__ import annotations

import datetime
import gzip
import ipaddress
import json
import os
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
TOKEN = "test-token-0123456789"
LANGEVIN = {"s": 0.016, "delta": 0.002, "steps": 4, "sigma": 0.3, "noise": True}
COMPLETION = {"latent_steps": 6, "latent_step_size": 0.05, "latent_noise": False, "refine_steps": 3}

# Runs coop-serve with `torch` and `trainer` made unimportable: any import of them raises ImportError.
NO_TORCH_SERVE = """
import sys
class _Blocker:
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in ('torch', 'trainer'):
            raise ImportError(f'{name} is blocked: serving must not import torch or the trainer')
        return None
sys.meta_path.insert(0, _Blocker())
sys.modules.pop('torch', None)
from serving.server import main
code = main()
assert 'torch' not in sys.modules
sys.exit(code)
"""


@dataclass
class ServerProc:
    proc: subprocess.Popen
    port: int
    metrics_port: int | None
    log_path: Path
    token: str | None = None
    health_history: list[str] = field(default_factory=list)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def client(self, **kw):
        from clients.client import CoopNetsClient

        return CoopNetsClient(self.address, token=self.token, **kw)

    def log(self) -> str:
        return self.log_path.read_text()

    def metric(self, name: str, **labels) -> float:
        """Sum of the samples of `name` whose labels include `labels`, read from /metrics."""
        from prometheus_client.parser import text_string_to_metric_families

        text = (
            urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5).read().decode()
        )
        total = 0.0
        for family in text_string_to_metric_families(text):
            for s in family.samples:
                if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                    total += s.value
        return total

    def stop(self, timeout: float = 30) -> int:
        if self.proc.poll() is None:
            self.proc.terminate()
        return self.proc.wait(timeout)


def start_server(
    bundle: Path,
    workdir: Path,
    *args: str,
    token: str | None = None,
    channel_credentials=None,
    watch_health: bool = False,
) -> ServerProc:
    """Starts coop-serve (torch blocked) on a free loopback port and waits until health says SERVING."""
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    workdir.mkdir(parents=True, exist_ok=True)
    port_file, log_path = workdir / "port.json", workdir / "server.log"
    argv = [
        "--bundle",
        str(bundle),
        "--port",
        "0",
        "--port-file",
        str(port_file),
        "--device",
        "cpu",
        "--threads",
        "1",
        "--metrics-port",
        "0",
        *args,
    ]
    if token:
        (workdir / "token").write_text(token + "\n")
        argv += ["--token-file", str(workdir / "token")]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    with open(log_path, "w") as log:
        proc = subprocess.Popen(
            [sys.executable, "-c", NO_TORCH_SERVE, *argv],
            cwd=ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
        )
    deadline = time.monotonic() + 60
    while not port_file.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError(f"coop-serve did not start:\n{log_path.read_text()}")
        time.sleep(0.01)
    ports = json.loads(port_file.read_text())
    server = ServerProc(proc, ports["port"], ports["metrics_port"], log_path, token)
    target = server.address
    channel = (
        grpc.secure_channel(
            target, channel_credentials, options=[("grpc.ssl_target_name_override", "localhost")]
        )
        if channel_credentials
        else grpc.insecure_channel(target)
    )
    with channel:
        stub = health_pb2_grpc.HealthStub(channel)
        if watch_health:  # every status from the moment the port is bound until SERVING
            for resp in stub.Watch(health_pb2.HealthCheckRequest(service="coopnets.v1.CoopNets"), timeout=60):
                server.health_history.append(health_pb2.HealthCheckResponse.ServingStatus.Name(resp.status))
                if resp.status == health_pb2.HealthCheckResponse.SERVING:
                    break
        else:
            while (
                stub.Check(health_pb2.HealthCheckRequest(), timeout=10, wait_for_ready=True).status
                != health_pb2.HealthCheckResponse.SERVING
            ):
                if time.monotonic() > deadline:
                    raise RuntimeError(f"coop-serve never got SERVING:\n{log_path.read_text()}")
                time.sleep(0.05)
    return server



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
