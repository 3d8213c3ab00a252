"""coop-serve in a child process: for the benchmarks and tests that need one (its own GIL, its own signals).

    server = spawn("runs/demo/bundle", Path("/tmp/w"), "--max-batch", "64")   # waits for the bound port
    wait_serving(server.address)                                             # grpc.health.v1 says SERVING
    ...
    server.stop()                                                            # SIGTERM, then the exit code

The child binds port 0 and writes its ports to WORKDIR/port.json (coop-serve --port-file); its stdout and
stderr go to WORKDIR/server.log. `prelude` is Python run before coop-serve's main in the child (the tests
use it to make torch unimportable). `python` and `cwd` run it from another environment
(tests/system/test_install.py runs the base install's interpreter outside the source tree, so that the
installed package is what runs).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

ROOT = Path(__file__).resolve().parent.parent


@dataclass
class Spawned:
    proc: subprocess.Popen
    port: int
    metrics_port: int | None
    log_path: Path
    http_port: int | None = None  # with --http-port

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def log(self) -> str:
        return self.log_path.read_text()

    def stop(self, timeout: float = 60) -> int:
        """SIGTERM (graceful drain) unless it already exited; returns the exit code."""
        if self.proc.poll() is None:
            self.proc.terminate()
        return self.proc.wait(timeout)


def spawn(
    bundle: str | os.PathLike,
    workdir: Path,
    *args: str,
    prelude: str = "",
    timeout: float = 120,
    python: str = sys.executable,
    cwd: Path = ROOT,
) -> Spawned:
    """Starts coop-serve on a free loopback port with `args` added; returns once the port is bound (health
    is NOT_SERVING until warm-up ends: see wait_serving). RuntimeError with the log if it exits first."""
    workdir.mkdir(parents=True, exist_ok=True)
    port_file, log_path = workdir / "port.json", workdir / "server.log"
    port_file.unlink(missing_ok=True)
    argv = [
        "--bundle",
        str(bundle),
        "--host",
        "127.0.0.1",
        "--port",
        "0",
        "--port-file",
        str(port_file),
        *args,
    ]
    code = f"{prelude}\nimport sys\nfrom coopnets.serving.server import main\nsys.exit(main())\n"
    with open(log_path, "w") as log:
        proc = subprocess.Popen(
            [python, "-c", code, *argv],
            cwd=cwd,
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
    deadline = time.monotonic() + timeout
    while not port_file.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError(f"coop-serve did not start:\n{log_path.read_text()}")
        time.sleep(0.01)
    ports = json.loads(port_file.read_text())
    return Spawned(proc, ports["port"], ports.get("metrics_port"), log_path, ports.get("http_port"))


def wait_serving(
    address: str, timeout: float = 120, credentials=None, server_name: str = "localhost"
) -> None:
    """Polls grpc.health.v1 at `address` until it says SERVING; TimeoutError after `timeout` seconds."""
    options = [("grpc.ssl_target_name_override", server_name)] if credentials else []
    channel = (
        grpc.secure_channel(address, credentials, options=options)
        if credentials
        else grpc.insecure_channel(address)
    )
    deadline = time.monotonic() + timeout
    with channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while stub.Check(health_pb2.HealthCheckRequest(), timeout=timeout, wait_for_ready=True).status != (
            health_pb2.HealthCheckResponse.SERVING
        ):
            if time.monotonic() > deadline:
                raise TimeoutError(f"{address} never said SERVING within {timeout:g} s")
            time.sleep(0.05)
