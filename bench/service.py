"""Service speed: gRPC Synthesize and the REST binding's infer vs the engine called directly, and concurrent
single-image clients with dynamic batching on and off.

    .venv/bin/python bench/service.py [--bundle DIR] [--repeats 9] [--clients 32] [--seconds 20]

Without --bundle, a bundle of the 28 px net (seeded weights, as bench/synthesis.py) is exported to a
temporary directory. coop-serve runs in a child process (bench/spawn.py: its own GIL, as in production) with
the engine's device and threads. Part 1, latency at counts 1, 16, 64 and the bundle's default steps: the
engine in this process, the same request through gRPC on loopback, and through the REST binding
(coopnets-synthesize, binary tensor data out, one kept-alive connection), interleaved, medians and p10/p90;
overhead = gRPC (HTTP) / engine − 1. Part 2: `--clients` threads each sending count-1 Synthesize requests
(distinct seeds) for `--seconds`, against a server with batching (--max-batch 64 --max-delay-ms 5) and one
without (--max-batch 1); throughput in images/s, p50/p99 latency, against the engine's best images/s (count 64
called directly). Ends with `service_overhead_count1=` and `http_overhead_count1=` (the overheads at count 1,
fractions).
"""

from __future__ import annotations

import argparse
import http.client
import json
import socket
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

from coopnets.clients.client import CoopNetsClient  # noqa: E402
from coopnets.serving.engine import Engine  # noqa: E402
from spawn import spawn, wait_serving  # noqa: E402
from timing import interleave, machine, quantile, table  # noqa: E402


def default_bundle(tmp: Path) -> Path:
    from coopnets.trainer.export import export_bundle
    from synthesis import NETS, SIGMA, S, seeded_nets

    descriptor, generator = seeded_nets(NETS["mnist28"])
    langevin = {"s": S, "delta": 0.002, "steps": 15, "sigma": SIGMA, "noise": True}
    return export_bundle(descriptor, generator, tmp / "bundle", langevin=langevin)


def http_synthesize(conn: http.client.HTTPConnection, n: int) -> bytes:
    """coopnets-synthesize over the REST binding, images as binary tensor data (as tritonclient.http asks)."""
    body = json.dumps(
        {
            "inputs": [{"name": "count", "datatype": "INT32", "shape": [1], "data": [n]}],
            "parameters": {"binary_data_output": True},
        }
    )
    conn.request("POST", "/v2/models/coopnets-synthesize/infer", body)
    r = conn.getresponse()
    data = r.read()
    if r.status != 200:
        raise RuntimeError(f"HTTP {r.status}: {data[:300]!r}")
    return data


def latency(
    engine: Engine, address: str, http_port: int, counts: list[int], repeats: int, warmup: int
) -> list[list[str]]:
    rows = []
    conn = http.client.HTTPConnection("127.0.0.1", http_port, timeout=600)
    conn.connect()
    # http.client sends a request's headers and body in two writes; with Nagle's algorithm on, the body
    # waits for the server's delayed ACK of the headers (40 ms on Linux). curl and tritonclient.http set
    # TCP_NODELAY, and so does this client, so that the column measures the server, not that stall.
    conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    with CoopNetsClient(address, timeout=600) as client:
        for n in counts:
            seeds = list(range(n))
            cases = {
                "engine": lambda seeds=seeds: engine.synthesize(seeds),
                "gRPC": lambda n=n: client.synthesize(count=n),
                "HTTP": lambda n=n: http_synthesize(conn, n),
            }
            st = interleave(cases, repeats, warmup)
            e, g, h = st["engine"], st["gRPC"], st["HTTP"]
            rows.append(
                [str(n), e.ms(), g.ms(), f"{g.median / e.median - 1:+.1%}", h.ms(),
                 f"{h.median / e.median - 1:+.1%}", f"{e.cpu_per_wall:.2f}"]
            )  # fmt: skip
            print(f"  count {n}: engine {e.ms()} ms, gRPC {g.ms()} ms, HTTP {h.ms()} ms", flush=True)
    conn.close()
    return rows


def clients_load(address: str, clients: int, seconds: float) -> dict:
    """`clients` threads of count-1 requests for `seconds`: images/s and latency quantiles (ms)."""
    latencies: list[float] = []
    lock = threading.Lock()
    stop = time.monotonic() + seconds

    def loop(i: int) -> None:
        with CoopNetsClient(address, timeout=120) as c:
            c.synthesize(count=1, seed=i)  # connect and warm before the clock starts counting
            seed, mine = 1000 * i, []
            while time.monotonic() < stop:
                t0 = time.perf_counter()
                c.synthesize(count=1, seed=seed)
                mine.append(time.perf_counter() - t0)
                seed += 1
        with lock:
            latencies.extend(mine)

    threads = [threading.Thread(target=loop, args=(i,)) for i in range(clients)]
    t0 = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.monotonic() - t0
    return {
        "images_per_s": len(latencies) / elapsed,
        "p50": quantile(latencies, 0.5) * 1e3,
        "p99": quantile(latencies, 0.99) * 1e3,
        "n": len(latencies),
    }


LATENCY_HEADERS = [
    "count", "engine ms (p10–p90)", "gRPC ms (p10–p90)", "gRPC overhead", "HTTP ms (p10–p90)",
    "HTTP overhead", "engine cpu/wall",
]  # fmt: skip


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--bundle", default="")
    p.add_argument("--repeats", type=int, default=9)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--counts", default="1,16,64")
    p.add_argument("--clients", type=int, default=32)
    p.add_argument("--seconds", type=float, default=20.0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--delay-ms", type=int, default=5, help="--max-delay-ms of the batching server")
    return p.parse_args(argv)


def with_batching(engine: Engine, bundle: Path, tmp: Path, common: list[str], counts: list[int], args):
    """Parts 1 and 2 against the batching server (HTTP on too): the latency rows, the engine's best
    images/s (count 64 called directly, measured while the server idles) and the clients' load."""
    batching = ["--max-batch", "64", "--max-delay-ms", str(args.delay_ms)]
    batched = spawn(bundle, tmp / "batched", *common, *batching, "--http-port", "0")
    wait_serving(batched.address)
    try:
        rows = latency(engine, batched.address, batched.http_port, counts, args.repeats, args.warmup)
        seeds = list(range(64))
        best = interleave({"engine": lambda: engine.synthesize(seeds)}, args.repeats, args.warmup)["engine"]
        return rows, 64 / best.median, clients_load(batched.address, args.clients, args.seconds)
    finally:
        batched.stop()


def without_batching(bundle: Path, tmp: Path, common: list[str], args) -> dict:
    """Part 2 against a server that runs every request alone (--max-batch 1)."""
    single = spawn(bundle, tmp / "single", *common, "--max-batch", "1", "--max-delay-ms", "0")
    wait_serving(single.address)
    try:
        return clients_load(single.address, args.clients, args.seconds)
    finally:
        single.stop()


def print_load(on: dict, off: dict, best_rate: float, args) -> None:
    load_rows = [
        [name, f"{r['images_per_s']:.1f}", f"{r['images_per_s'] / best_rate:.0%}", f"{r['p50']:.0f}",
         f"{r['p99']:.0f}", f"{r['p99'] / r['p50']:.2f}", str(r["n"])]
        for name, r in ((f"batching on (64, {args.delay_ms} ms)", on), ("batching off (max-batch 1)", off))
    ]  # fmt: skip
    print(f"{args.clients} clients × count 1 for {args.seconds:g} s; engine's best: {best_rate:.1f} images/s")
    print(
        table(["server", "images/s", "of engine best", "p50 ms", "p99 ms", "p99/p50", "requests"], load_rows)
    )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    counts = [int(c) for c in args.counts.split(",")]
    print(f"machine: {machine()}")
    print(f"threads: ONNX Runtime intra-op {args.threads} in the engine and in coop-serve")
    with tempfile.TemporaryDirectory() as tmp:
        bundle = Path(args.bundle) if args.bundle else default_bundle(Path(tmp))
        engine = Engine.open(bundle, device="cpu", threads=args.threads)
        print(f"bundle: {bundle} ({engine.bundle.arch}), {engine.synthesis_defaults.steps} Langevin steps")
        common = ["--device", "cpu", "--threads", str(args.threads), "--max-count", "64",
                  "--max-queue", "256", "--workers", "320", "--log-level", "warning"]  # fmt: skip
        rows, best_rate, on = with_batching(engine, bundle, Path(tmp), common, counts, args)
        off = without_batching(bundle, Path(tmp), common, args)
    print()
    print(table(LATENCY_HEADERS, rows))
    print()
    print_load(on, off, best_rate, args)
    overhead = float(rows[0][3].rstrip("%")) / 100
    http_overhead = float(rows[0][5].rstrip("%")) / 100
    print(f"service_overhead_count1={overhead:.3f}")
    print(f"http_overhead_count1={http_overhead:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
