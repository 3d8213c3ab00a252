"""Shared fixtures of the serving and client tests.

`tiny_nets` are the real mnist28 nets from trainer.nets with seeded weights (scaled up from the official init
so that f(Y) and its gradient are far from zero and the equality tests mean something); `serving_bundle` is
them exported by trainer.export.export_bundle with small default step counts. `coop_server` is ONE real
coop-serve process for the whole session, started on a free loopback port in a subprocess where torch and the
trainer cannot be imported (a meta-path blocker), with a bearer token and a metrics port.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import pytest

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


@pytest.fixture(scope="session")
def tiny_nets():
    import torch

    from trainer.nets import NetSpec, build_nets

    torch.manual_seed(0)
    descriptor, generator = build_nets(NetSpec("mnist28", 1, 100))
    with torch.no_grad():
        for net, scale in ((descriptor, 4.0), (generator, 8.0)):
            for p in net.parameters():
                if p.dim() > 1:
                    p.mul_(scale)
    return descriptor.eval(), generator.eval()


@pytest.fixture(scope="session")
def serving_bundle(tiny_nets, tmp_path_factory) -> Path:
    from trainer.export import export_bundle

    descriptor, generator = tiny_nets
    out = tmp_path_factory.mktemp("serving") / "bundle"
    return export_bundle(descriptor, generator, out, langevin=LANGEVIN, completion=COMPLETION)


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


@pytest.fixture(scope="session")
def coop_server(serving_bundle, tmp_path_factory):
    """The session's server: token auth, batching up to 16 images within 100 ms, warm-up 3 passes."""
    server = start_server(
        serving_bundle,
        tmp_path_factory.mktemp("server"),
        "--max-batch",
        "16",
        "--max-delay-ms",
        "100",
        "--max-count",
        "32",
        "--max-steps",
        "200",
        "--warmup-runs",
        "3",
        token=TOKEN,
        watch_health=True,
    )
    yield server
    code = server.stop()
    assert code == 0, server.log()


@pytest.fixture()
def client(coop_server):
    with coop_server.client(timeout=60) as c:
        yield c
