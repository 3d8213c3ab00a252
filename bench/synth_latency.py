"""Synthesis latency at count 1, 16, 64 with the bundle's default Langevin steps: the engine called directly
and
the same request through coop-serve (gRPC, loopback), side by side, median of several runs.

    .venv/bin/python bench/synth_latency.py --bundle runs/demo/bundle [--runs 5] [--device cpu] [--threads 0]

The server runs in a subprocess on a free loopback port with the same device and thread settings. Runs of the
two paths are interleaved so that a noisy machine affects both alike.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from clients.client import CoopNetsClient  # noqa: E402
from serving.engine import Engine  # noqa: E402


@dataclass(frozen=True)
class BenchConfig:
    bundle: str = "runs/demo/bundle"
    counts: tuple[int, ...] = (1, 16, 64)
    runs: int = 5
    device: str = "cpu"
    threads: int = 0


def start_server(cfg: BenchConfig, workdir: Path) -> tuple[subprocess.Popen, str]:
    port_file = workdir / "port.json"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "serving.server",
            "--bundle",
            cfg.bundle,
            "--port",
            "0",
            "--port-file",
            str(port_file),
            "--device",
            cfg.device,
            "--threads",
            str(cfg.threads),
            "--max-batch",
            str(max(cfg.counts)),
            "--max-count",
            str(max(cfg.counts)),
            "--max-delay-ms",
            "0",
            "--log-level",
            "warning",
        ],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
    )
    while not port_file.exists():
        if proc.poll() is not None:
            raise SystemExit("coop-serve failed to start (see its stderr above)")
        time.sleep(0.05)
    return proc, f"127.0.0.1:{json.loads(port_file.read_text())['port']}"


def timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--bundle", default=BenchConfig.bundle)
    p.add_argument("--runs", type=int, default=BenchConfig.runs)
    p.add_argument("--device", default=BenchConfig.device, choices=("auto", "cuda", "cpu"))
    p.add_argument("--threads", type=int, default=BenchConfig.threads)
    cfg = BenchConfig(**vars(p.parse_args(argv)))

    engine = Engine.open(cfg.bundle, device=cfg.device, threads=cfg.threads)
    with tempfile.TemporaryDirectory() as tmp:
        proc, address = start_server(cfg, Path(tmp))
        try:
            with CoopNetsClient(address, timeout=600) as client:
                while client.health() != "SERVING":
                    time.sleep(0.1)
                rows = []
                for n in cfg.counts:
                    seeds = list(range(n))
                    engine.synthesize(seeds)  # warm this batch size on both paths
                    client.synthesize(count=n)
                    direct, grpc_ = [], []
                    for _ in range(cfg.runs):
                        direct.append(timed(lambda seeds=seeds: engine.synthesize(seeds)))
                        grpc_.append(timed(lambda n=n: client.synthesize(count=n)))
                    rows.append((n, statistics.median(direct), statistics.median(grpc_)))
        finally:
            proc.terminate()
            proc.wait(30)

    lv = engine.langevin
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
