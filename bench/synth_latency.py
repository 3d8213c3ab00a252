"""Synthesis latency at count 1, 16, 64 with the bundle's default Langevin steps: the engine called directly
and the same request through coop-serve (gRPC, loopback), side by side, median of several runs.

    .venv/bin/python bench/synth_latency.py --bundle runs/demo/bundle [--runs 5] [--device cpu] [--threads 0]
    .venv/bin/python bench/synth_latency.py --bundle tests/data/legacy/bundle --runs 1 --counts 1,4   # smoke

The server runs in a subprocess on a free loopback port with the same device and thread settings. Runs of the
two paths are interleaved so that a noisy machine affects both alike.
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from clients.client import CoopNetsClient  # noqa: E402
from contract.flags import Parser, add_flags, cli_main, resolve  # noqa: E402
from serving.engine import Engine  # noqa: E402
from serving.spawn import Spawned, spawn, wait_serving  # noqa: E402

HELP = {
    "bundle": "the model bundle to serve",
    "counts": "comma-separated images per request",
    "runs": "timed runs per count and path (the median is printed)",
    "device": "auto | cuda | cpu, for the engine and the server",
    "threads": "ONNX Runtime intra-op threads (0 = all cores)",
}


@dataclass(frozen=True)
class BenchConfig:
    bundle: str = "runs/demo/bundle"
    counts: str = "1,16,64"
    runs: int = 5
    device: str = "cpu"
    threads: int = 0

    @property
    def sizes(self) -> list[int]:
        return [int(n) for n in self.counts.split(",")]

    def validate(self) -> BenchConfig:
        if not all(n.strip().isdigit() and int(n) > 0 for n in self.counts.split(",")):
            raise ValueError(f"--counts {self.counts!r}: give positive integers separated by commas")
        if self.runs < 1:
            raise ValueError(f"--runs {self.runs}: must be >= 1")
        return self


def start_server(cfg: BenchConfig, workdir: Path) -> Spawned:
    """coop-serve with the engine's device and threads, batches as large as the largest count, no delay."""
    biggest = str(max(cfg.sizes))
    flags = [
        "--device",
        cfg.device,
        "--threads",
        str(cfg.threads),
        "--max-batch",
        biggest,
        "--max-count",
        biggest,
    ]
    server = spawn(cfg.bundle, workdir, *flags, "--max-delay-ms", "0", "--log-level", "warning")
    wait_serving(server.address)
    return server


def timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def main(argv: list[str] | None = None) -> int:
    parser = Parser(prog="synth_latency.py", description=__doc__.split("\n\n")[0])
    add_flags(parser, BenchConfig, HELP, choices={"device": ("auto", "cuda", "cpu")})
    args = vars(parser.parse_args(argv))
    return cli_main("synth_latency.py", lambda: bench(resolve(BenchConfig, args)))


def bench(cfg: BenchConfig) -> int:
    engine = Engine.open(cfg.bundle, device=cfg.device, threads=cfg.threads)
    with tempfile.TemporaryDirectory() as tmp:
        server = start_server(cfg, Path(tmp))
        try:
            with CoopNetsClient(server.address, timeout=600) as client:
                rows = []
                for n in cfg.sizes:
                    seeds = list(range(n))
                    engine.synthesize(seeds)  # warm this batch size on both paths
                    client.synthesize(count=n)
                    direct, grpc_ = [], []
                    for _ in range(cfg.runs):
                        direct.append(timed(lambda seeds=seeds: engine.synthesize(seeds)))
                        grpc_.append(timed(lambda n=n: client.synthesize(count=n)))
                    rows.append((n, statistics.median(direct), statistics.median(grpc_)))
        finally:
            server.stop()

    lv = engine.synthesis_defaults
    print(
        f"bundle {cfg.bundle} ({engine.bundle.arch}, {engine.image_shape}), {lv.steps} Langevin steps, "
        f"noise {lv.noise}, device {engine.sessions.device}, threads {cfg.threads or 'all'}, "
        f"median of {cfg.runs} runs"
    )
    print(f"{'count':>5} | {'engine (ms)':>11} | {'gRPC (ms)':>9} | {'gRPC ms/image':>13}")
    print(f"{'-' * 5}-+-{'-' * 11}-+-{'-' * 9}-+-{'-' * 13}")
    for n, d, g in rows:
        print(f"{n:>5} | {d * 1e3:>11.1f} | {g * 1e3:>9.1f} | {g * 1e3 / n:>13.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
