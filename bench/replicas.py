"""Throughput of one coop-serve against two replicas on the same cores, on loopback.

    .venv/bin/python bench/replicas.py                                   # tests' legacy bundle, 20 s per case
    .venv/bin/python bench/replicas.py --bundle runs/demo/bundle --seconds 60 --clients 8 --count 16

Cases, each a fresh set of coop-serve subprocesses (serving.spawn) on free 127.0.0.1 ports:
- `1 x threads=N`: one server, N ONNX Runtime threads (N = the cores this process may use);
- `1 x threads=1`: one server, one ONNX Runtime thread (on small graphs intra-op threads cost more than
  they give, so this is the fairer single-process baseline);
- `2 x threads=N/2, pinned`: two servers, each with its threads pinned to its half of the cores
  (os.sched_setaffinity on every thread once the port is bound; threads made later inherit it, as with
  `taskset -a`), and the clients given both addresses (round robin).
`--clients` threads each loop Synthesize(count, steps) on their own CoopNetsClient for `--seconds`. The client
threads share the machine with the servers, as a co-located load generator does. Prints a table and, last,
`replica_speedup=X` (images/s of two replicas over the better single server).
"""

from __future__ import annotations

import os
import statistics
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

from coopnets.clients.client import CoopNetsClient  # noqa: E402
from coopnets.contract.flags import Parser, add_flags, cli_main, resolve  # noqa: E402
from spawn import Spawned, spawn, wait_serving  # noqa: E402
from timing import machine, table  # noqa: E402

HELP = {
    "bundle": "the model bundle to serve (default: tests/data/legacy/bundle)",
    "seconds": "load time per case",
    "clients": "concurrent client threads",
    "count": "images per Synthesize request",
    "steps": "Langevin steps per request",
}


@dataclass(frozen=True)
class ReplicaConfig:
    bundle: str = str(ROOT / "tests" / "data" / "legacy" / "bundle")
    seconds: float = 20.0
    clients: int = 4
    count: int = 8
    steps: int = 15

    def validate(self) -> ReplicaConfig:
        for name in ("seconds", "clients", "count"):
            if not getattr(self, name) > 0:
                raise ValueError(f"--{name} must be > 0")
        return self


def pin(proc_pid: int, cores: set[int]) -> None:
    """Every thread of the process onto `cores` (what `taskset -a -cp` does)."""
    for tid in os.listdir(f"/proc/{proc_pid}/task"):
        os.sched_setaffinity(int(tid), cores)


def start(cfg: ReplicaConfig, workdir: Path, threads: int, cores: set[int] | None) -> Spawned:
    server = spawn(cfg.bundle, workdir, "--device", "cpu", "--threads", str(threads), "--max-batch", "64")
    if cores is not None:
        pin(server.proc.pid, cores)
    wait_serving(server.address, 120)
    return server


def load(target: str, cfg: ReplicaConfig) -> tuple[int, list[float]]:
    """Images served and per-request latencies over `cfg.seconds` of `cfg.clients` looping threads."""
    latencies: list[float] = []
    lock = threading.Lock()
    stop_at = time.monotonic() + cfg.seconds

    def loop(i: int) -> None:
        with CoopNetsClient(target, timeout=120) as c:
            c.synthesize(count=1, seed=0, steps=1)  # connect to every replica before the clock counts
            seed = i * 1_000_000
            while time.monotonic() < stop_at:
                t0 = time.perf_counter()
                c.synthesize(count=cfg.count, seed=seed, steps=cfg.steps)
                with lock:
                    latencies.append(time.perf_counter() - t0)
                seed += cfg.count

    threads = [threading.Thread(target=loop, args=(i,)) for i in range(cfg.clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return len(latencies) * cfg.count, latencies


def run_case(cfg: ReplicaConfig, tmp: Path, replicas: int, threads: int | None = None) -> list[str]:
    cores = sorted(os.sched_getaffinity(0))
    per = threads or max(1, len(cores) // replicas)
    servers = []
    try:
        for r in range(replicas):
            mine = set(cores[r * per : (r + 1) * per]) if replicas > 1 else None
            servers.append(start(cfg, tmp / f"{replicas}-{per}-{r}", per, mine))
        images, latencies = load(",".join(s.address for s in servers), cfg)
    finally:
        for s in servers:
            s.stop()
    name = f"1 x threads={per}" if replicas == 1 else f"{replicas} x threads={per}, pinned"
    p50 = statistics.median(latencies) * 1e3
    return [name, f"{images / cfg.seconds:.1f}", f"{p50:.1f}", str(len(latencies))]


def main(argv: list[str] | None = None) -> int:
    def run() -> int:
        parser = Parser(prog="bench/replicas.py", description=__doc__.split("\n\n")[0])
        add_flags(parser, ReplicaConfig, HELP)
        cfg = resolve(ReplicaConfig, vars(parser.parse_args(argv)), None)
        with tempfile.TemporaryDirectory() as tmp:
            rows = [
                run_case(cfg, Path(tmp), 1),
                run_case(cfg, Path(tmp), 1, threads=1),
                run_case(cfg, Path(tmp), 2),
            ]
        print(machine())
        print(
            f"Synthesize count={cfg.count} steps={cfg.steps}, {cfg.clients} client threads, {cfg.seconds:g} s"
            f" per case, bundle {cfg.bundle}"
        )
        print(table(["servers", "images/s", "p50 ms", "requests"], rows))
        single = max(float(rows[0][1]), float(rows[1][1]))
        print(f"replica_speedup={float(rows[2][1]) / single:.2f}")
        return 0

    return cli_main("bench/replicas.py", run)


if __name__ == "__main__":
    sys.exit(main())
