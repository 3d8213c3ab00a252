"""Load test of coop-serve on loopback: N concurrent clients mixing every RPC for a fixed time, then an
overload burst against a small queue bound.

    .venv/bin/python bench/load.py --bundle models/reference --clients 64 --seconds 60      # the long run
    .venv/bin/python bench/load.py --bundle B --clients 16 --seconds 3 --json out.json      # CI's short run

Phase 1 (mix): each client loops Synthesize, SynthesizeStream, Complete, Energy and ModelInfo (weighted) on
its own channel until the time is up. Reported: requests served, errors by status code, p50/p99 latency per
RPC, the server's resident memory (VmRSS) after warm-up and a first round of requests, and at the end.
Phase 2 (overload): a second server with `--max-queue Q --max-batch 1` gets a burst of `--burst` concurrent
heavy Synthesize calls at once: the requests beyond the bound must come back RESOURCE_EXHAUSTED, and fast
(their p99 is printed next to the served ones').
Phase 3 (priority): `--saturate` clients send only Complete (the heaviest kind) while one probe client loops
Energy (one image), ModelInfo and one-image Synthesize at the bundle's default steps: the probe's p50/p99 say
whether cheap work still answers fast while completions saturate the server (`--saturate 0` skips it).

Each server is a coop-serve subprocess on a free 127.0.0.1 port (never another host). Exit status 1 when an
error other than RESOURCE_EXHAUSTED was seen or when the burst got no RESOURCE_EXHAUSTED.
"""

from __future__ import annotations

import functools
import random
import sys
import tempfile
import threading
import time
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

import grpc  # noqa: E402
import numpy as np  # noqa: E402
from coopnets.clients.client import CoopNetsClient  # noqa: E402
from coopnets.contract.files import atomic_write_json  # noqa: E402
from coopnets.contract.flags import Parser, add_flags, cli_main, resolve  # noqa: E402
from spawn import Spawned, spawn, wait_serving  # noqa: E402

MIX = {"Synthesize": 4, "SynthesizeStream": 2, "Complete": 2, "Energy": 3, "ModelInfo": 1}  # weights
EXPECTED = {"OK", "RESOURCE_EXHAUSTED"}  # the only codes a correct server gives this traffic


HELP = {
    "bundle": "the model bundle to serve",
    "clients": "concurrent clients of the mix phase",
    "seconds": "length of the mix phase",
    "steps": "Langevin steps per synthesis (small: many requests, not long ones)",
    "latent_steps": "latent steps per completion",
    "refine_steps": "refinement steps per completion",
    "max_count": "images per Synthesize/Energy request: 1..max_count",
    "threads": "ONNX Runtime intra-op threads of the server",
    "max_queue": "coop-serve --max-queue of the mix server",
    "burst": "overload phase: concurrent heavy requests ...",
    "burst_queue": "... against this queue bound",
    "workers": "coop-serve --workers; 0 = its default",
    "saturate": "priority phase: clients sending only Complete (0 = skip the phase)",
    "priority_seconds": "length of the priority phase",
    "json": "also write the results here",
}
PROBES = ("Energy", "ModelInfo", "Synthesize")  # the priority phase's cheap calls, in turn


@dataclass(frozen=True)
class LoadConfig:
    bundle: str = "models/reference"  # the shipped reference
    clients: int = 64
    seconds: float = 60.0
    steps: int = 10  # Langevin steps per synthesis (small: many requests, not long ones)
    latent_steps: int = 20
    refine_steps: int = 5
    max_count: int = 4  # images per Synthesize/Energy request: 1..max_count
    threads: int = 0  # ONNX Runtime intra-op threads of the server
    max_queue: int = 64  # of the mix server
    burst: int = 48  # overload phase: concurrent requests ...
    burst_queue: int = 4  # ... against this queue bound
    seed: int = 0
    workers: int = 0  # coop-serve --workers; 0 = its default
    saturate: int = 16  # priority phase: Complete-only clients ...
    priority_seconds: float = 30.0  # ... for this long, beside one probe client
    json: str = ""  # also write the results here


def rss_mib(pid: int) -> float:
    """Resident memory of a process in MiB (VmRSS from /proc)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024.0
    raise RuntimeError(f"no VmRSS for pid {pid}")


def start_server(bundle: str, workdir: Path, *args: str) -> Spawned:
    """coop-serve on a free loopback port (CPU), once health says SERVING."""
    server = spawn(bundle, workdir, "--device", "cpu", *args)
    wait_serving(server.address)
    return server


class Recorder:
    """(rpc, code, seconds) of every finished call, thread-safe."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.calls: list[tuple[str, str, float]] = []

    def add(self, rpc: str, code: str, seconds: float) -> None:
        with self.lock:
            self.calls.append((rpc, code, seconds))

    def summary(self) -> dict:
        codes = Counter(code for _, code, _ in self.calls)
        latency: dict[str, dict[str, float]] = {}
        by_rpc: dict[str, list[float]] = defaultdict(list)
        for rpc, code, seconds in self.calls:
            by_rpc[f"{rpc} {code}"].append(seconds)
        for key, values in sorted(by_rpc.items()):
            ms = np.asarray(values) * 1000.0
            latency[key] = {
                "n": len(values),
                "p50_ms": float(np.percentile(ms, 50)),
                "p99_ms": float(np.percentile(ms, 99)),
            }
        return {"requests": len(self.calls), "codes": dict(sorted(codes.items())), "latency": latency}


def one_call(c: CoopNetsClient, rpc: str, rng: random.Random, cfg: LoadConfig, image: np.ndarray) -> None:
    """One RPC of the mix, with random sizes and seeds; raises grpc.RpcError on failure."""
    n, seed = rng.randint(1, cfg.max_count), rng.randrange(2**31)
    if rpc == "Synthesize":
        c.synthesize(count=n, seed=seed, steps=cfg.steps)
    elif rpc == "SynthesizeStream":
        for _ in c.synthesize_stream(
            count=min(n, 2), seed=seed, steps=cfg.steps, snapshot_every=max(1, cfg.steps // 2)
        ):
            pass
    elif rpc == "Complete":
        c.complete(
            image,
            occlusion=rng.choice(["center:14", "left-half", "random:0.5"]),
            seed=seed,
            latent_steps=cfg.latent_steps,
            refine_steps=cfg.refine_steps,
        )
    elif rpc == "Energy":
        c.energy(np.repeat(image[None], n, axis=0))
    else:
        c.info()


def run_all(threads: list[threading.Thread]) -> None:
    """Starts every thread, then waits for all: the clients of a phase run at once."""
    for t in threads:
        t.start()
    for t in threads:
        t.join()


def timed(rec: Recorder, name: str, call, *args) -> None:
    """Runs call(*args) and records its status code and seconds under `name`."""
    start = time.perf_counter()
    try:
        call(*args)
        code = "OK"
    except grpc.RpcError as e:
        code = e.code().name
    rec.add(name, code, time.perf_counter() - start)


def client_loop(
    address: str, cfg: LoadConfig, index: int, until: float, rec: Recorder, image: np.ndarray
) -> None:
    rng = random.Random(cfg.seed * 1000 + index)
    names, weights = list(MIX), list(MIX.values())
    with CoopNetsClient(address, timeout=120, retries=1) as c:
        while time.monotonic() < until:
            rpc = rng.choices(names, weights)[0]
            timed(rec, rpc, one_call, c, rpc, rng, cfg, image)


def run_clients(address: str, cfg: LoadConfig, clients: int, seconds: float, image: np.ndarray) -> Recorder:
    rec = Recorder()
    until = time.monotonic() + seconds
    threads = [
        threading.Thread(target=client_loop, args=(address, cfg, i, until, rec, image), daemon=True)
        for i in range(clients)
    ]
    run_all(threads)
    return rec


def mix_server(cfg: LoadConfig, workdir: Path) -> Spawned:
    """The server of the mix and priority phases."""
    return start_server(
        cfg.bundle,
        workdir,
        "--threads",
        str(cfg.threads),
        "--max-queue",
        str(cfg.max_queue),
        "--max-count",
        str(cfg.max_count),
        *(["--workers", str(cfg.workers)] if cfg.workers else []),
        "--max-steps",  # at least coop-serve's default: the bundle's own defaults must fit (it refuses them)
        str(max(1000, cfg.steps, cfg.latent_steps, cfg.refine_steps)),
    )


def mix_phase(cfg: LoadConfig, workdir: Path) -> dict:
    """N clients for cfg.seconds; RSS after warm-up (and a 1-second round of the same traffic) and at the
    end."""
    server = mix_server(cfg, workdir)
    try:
        with CoopNetsClient(server.address, timeout=60) as c:
            image = c.synthesize(count=1, seed=0, steps=cfg.steps).images[0]  # (C, H, W): the Complete input
        run_clients(
            server.address, cfg, cfg.clients, min(1.0, cfg.seconds), image
        )  # warm-up: arenas, threads
        rss_start = rss_mib(server.proc.pid)
        started = time.monotonic()
        rec = run_clients(server.address, cfg, cfg.clients, cfg.seconds, image)
        elapsed = time.monotonic() - started
        rss_end = rss_mib(server.proc.pid)
    finally:
        code = server.stop()
    return {
        **rec.summary(),
        "clients": cfg.clients,
        "seconds": round(elapsed, 2),
        "rss_start_mib": rss_start,
        "rss_end_mib": rss_end,
        "server_exit": code,
    }


def overload_phase(cfg: LoadConfig, workdir: Path) -> dict:
    """`burst` concurrent heavy calls against --max-queue burst_queue --max-batch 1."""
    server = start_server(
        cfg.bundle,
        workdir,
        "--threads",
        str(cfg.threads),
        "--max-queue",
        str(cfg.burst_queue),
        "--max-batch",
        "1",
        "--max-delay-ms",
        "0",
        *(["--workers", str(cfg.workers)] if cfg.workers else []),
        "--max-count",
        str(cfg.max_count),
        "--max-steps",
        "1000",
    )
    rec = Recorder()
    try:
        gate = threading.Barrier(cfg.burst)

        def heavy(i: int) -> None:
            with CoopNetsClient(server.address, timeout=300, retries=1) as c:
                c.info()  # connected before the burst
                gate.wait()
                heavy_call = functools.partial(
                    c.synthesize, count=cfg.max_count, seed=i, steps=20 * cfg.steps
                )
                timed(rec, "Synthesize", heavy_call)

        run_all([threading.Thread(target=heavy, args=(i,), daemon=True) for i in range(cfg.burst)])
    finally:
        code = server.stop()
    return {**rec.summary(), "burst": cfg.burst, "max_queue": cfg.burst_queue, "server_exit": code}


def probe_call(c: CoopNetsClient, rpc: str, image: np.ndarray) -> None:
    """One cheap call of the priority phase: one image, the bundle's defaults."""
    if rpc == "Energy":
        c.energy(image[None])
    elif rpc == "ModelInfo":
        c.info()
    else:
        c.synthesize(count=1, seed=0)


def probe_loop(address: str, until: float, rec: Recorder, image: np.ndarray) -> None:
    """Energy, ModelInfo and one-image Synthesize in turn, one at a time, until the time is up."""
    with CoopNetsClient(address, timeout=120, retries=1) as c:
        turn = 0
        while time.monotonic() < until:
            rpc = PROBES[turn % len(PROBES)]
            turn += 1
            timed(rec, f"probe {rpc}", probe_call, c, rpc, image)


def priority_phase(cfg: LoadConfig, workdir: Path) -> dict:
    """Complete-only clients saturate the server while one probe client measures the cheap kinds."""
    server = mix_server(cfg, workdir)
    try:
        with CoopNetsClient(server.address, timeout=60) as c:
            image = c.synthesize(count=1, seed=0, steps=cfg.steps).images[0]
        rec, until = Recorder(), time.monotonic() + cfg.priority_seconds
        threads = [
            threading.Thread(target=complete_loop, args=(server.address, cfg, i, until, rec, image))
            for i in range(cfg.saturate)
        ]
        threads.append(threading.Thread(target=probe_loop, args=(server.address, until, rec, image)))
        run_all(threads)
    finally:
        code = server.stop()
    return {**rec.summary(), "saturate": cfg.saturate, "server_exit": code}


def complete_loop(
    address: str, cfg: LoadConfig, index: int, until: float, rec: Recorder, image: np.ndarray
) -> None:
    """Complete after Complete (the mix's random occlusions) until the time is up."""
    rng = random.Random(cfg.seed * 1000 + index)
    with CoopNetsClient(address, timeout=300, retries=1) as c:
        while time.monotonic() < until:
            timed(rec, "Complete", one_call, c, "Complete", rng, cfg, image)


def latency_rows(latency: dict) -> list[str]:
    return [f"     {k:<32} {v['n']:>6} {v['p50_ms']:>9.1f} {v['p99_ms']:>9.1f}" for k, v in latency.items()]


def report(result: dict) -> str:
    mix, over = result["mix"], result["overload"]
    lines = [
        f"mix: {mix['clients']} clients x {mix['seconds']} s: {mix['requests']} requests "
        f"({mix['requests'] / max(mix['seconds'], 1e-9):.1f}/s), codes {mix['codes']}",
        f"     server RSS {mix['rss_start_mib']:.1f} MiB after warm-up -> {mix['rss_end_mib']:.1f} MiB at "
        "the end",
        f"     {'rpc code':<32} {'n':>6} {'p50 ms':>9} {'p99 ms':>9}",
    ]
    lines += latency_rows(mix["latency"])
    lines.append(
        f"overload: {over['burst']} concurrent heavy Synthesize, --max-queue {over['max_queue']}: "
        f"codes {over['codes']}"
    )
    lines += latency_rows(over["latency"])
    if "priority" in result:
        prio = result["priority"]
        lines.append(f"priority: {prio['saturate']} Complete-only clients + one probe: codes {prio['codes']}")
        lines += latency_rows(prio["latency"])
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> dict:
    parser = Parser(prog="load.py", description=__doc__.split("\n\n")[0])
    add_flags(parser, LoadConfig, HELP)
    return vars(parser.parse_args(argv))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    return cli_main("load.py", lambda: load_test(resolve(LoadConfig, args)))


def load_test(cfg: LoadConfig) -> int:
    if not (Path(cfg.bundle) / "manifest.json").is_file():
        raise ValueError(f"--bundle {cfg.bundle} is not a model bundle: pass a bundle directory")
    with tempfile.TemporaryDirectory(prefix="coop-load-") as tmp:
        (Path(tmp) / "mix").mkdir()
        (Path(tmp) / "overload").mkdir()
        result = {
            "config": asdict(cfg),
            "mix": mix_phase(cfg, Path(tmp) / "mix"),
            "overload": overload_phase(cfg, Path(tmp) / "overload"),
        }
        if cfg.saturate:
            (Path(tmp) / "priority").mkdir()
            result["priority"] = priority_phase(cfg, Path(tmp) / "priority")
    print(report(result))
    if cfg.json:
        atomic_write_json(cfg.json, result)
    unexpected = set(result["mix"]["codes"]).union(result.get("priority", {}).get("codes", ())) - EXPECTED
    refused = result["overload"]["codes"].get("RESOURCE_EXHAUSTED", 0)
    return 1 if unexpected or not refused else 0


if __name__ == "__main__":
    sys.exit(main())
