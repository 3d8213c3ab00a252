"""Side-by-side timing for the bench/ scripts: interleaved repeats, warm-up
dropped, medians with p10/p90, cpu/wall per case, and the machine's fp32 peak with how it was computed.

A ratio is only meaningful when both sides ran in the same window: `interleave` runs case A, B, C, A, B, C, …
so that a neighbour stealing a core slows every case alike, and it reports process CPU time over wall time for
each case (about 2.0 = both cores busy, 1.0 = one idle) so that a stalled core shows in the table.
"""

from __future__ import annotations

import os
import platform
import statistics
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Stats:
    median: float  # seconds
    p10: float
    p90: float
    n: int
    cpu_per_wall: float  # process CPU seconds / wall seconds over the kept repeats

    def ms(self) -> str:
        return f"{self.median * 1e3:.1f} ({self.p10 * 1e3:.1f}–{self.p90 * 1e3:.1f})"


def quantile(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, max(0, round(q * (len(s) - 1))))]


def interleave(cases: Mapping[str, Callable[[], object]], repeats: int, warmup: int = 2) -> dict[str, Stats]:
    """Runs every case `warmup + repeats` times, round-robin; the first `warmup` rounds are dropped.

    Round i starts at case i mod n, so that every case follows every other equally often: a case right after
    PyTorch pays for its OpenMP threads still spinning (measured: the engine at count 1 was 12% slower in the
    slot after eager than in the slot after another engine)."""
    walls: dict[str, list[float]] = {name: [] for name in cases}
    cpus: dict[str, list[float]] = {name: [] for name in cases}
    names = list(cases)
    for i in range(warmup + repeats):
        for name in names[i % len(names) :] + names[: i % len(names)]:
            fn = cases[name]
            c0, t0 = time.process_time(), time.perf_counter()
            fn()
            t1, c1 = time.perf_counter(), time.process_time()
            if i >= warmup:
                walls[name].append(t1 - t0)
                cpus[name].append(c1 - c0)
    return {
        name: Stats(
            median=statistics.median(w),
            p10=quantile(w, 0.1),
            p90=quantile(w, 0.9),
            n=len(w),
            cpu_per_wall=sum(cpus[name]) / max(sum(w), 1e-12),
        )
        for name, w in walls.items()
    }


def _cpuinfo() -> dict[str, str]:
    info: dict[str, str] = {}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            info.setdefault(key.strip(), value.strip())
    except OSError:
        pass
    return info


def _peak(info: dict[str, str], per_cycle: int, why: str) -> tuple[float, str]:
    """cores this process may use × FLOP per cycle × /proc/cpuinfo's clock, and how that was computed."""
    mhz = float(info.get("cpu MHz", "0") or 0)
    cores = len(os.sched_getaffinity(0))
    peak = cores * per_cycle * mhz * 1e6
    how = f"{cores} cores × {per_cycle} FLOP/cycle ({why}) × {mhz / 1e3:.2f} GHz (cpu MHz)"
    return peak, f"{how} = {peak / 1e9:.0f} GFLOP/s"


def fp32_peak() -> tuple[float, str]:
    """(peak fp32 FLOP/s of the cores this process may use, how it was computed). FLOP per cycle per core:
    2 FMA pipes × SIMD lanes × 2 (multiply + add). AMD Zen 4 (family 25 with AVX-512) executes 512-bit
    instructions on two 256-bit pipes, so 2 × 8 × 2 = 32; full-width AVX-512 cores 2 × 16 × 2 = 64; AVX2
    cores 2 × 8 × 2 = 32. The clock is /proc/cpuinfo's "cpu MHz" (in a VM: the nominal clock; boost clocks
    are not visible, so a measured rate may exceed this "peak")."""
    info = _cpuinfo()
    flags = set(info.get("flags", "").split())
    family = int(info.get("cpu family", "0") or 0)
    vendor = info.get("vendor_id", "")
    if "avx512f" in flags and vendor == "AuthenticAMD" and family == 25:
        per_cycle, why = 32, "Zen 4: AVX-512 on two 256-bit FMA pipes, 2 × 8 lanes × 2"
    elif "avx512f" in flags:
        per_cycle, why = 64, "AVX-512: two 512-bit FMA pipes, 2 × 16 lanes × 2"
    elif "avx2" in flags and "fma" in flags:
        per_cycle, why = 32, "AVX2: two 256-bit FMA pipes, 2 × 8 lanes × 2"
    else:
        per_cycle, why = 8, "no FMA SIMD flags seen: 8 (a guess)"
    return _peak(info, per_cycle, why)


def bf16_peak() -> tuple[float, str] | None:
    """(peak bf16 FLOP/s, how) where the CPU multiplies bfloat16 natively, else None. AMX (amx_bf16): one
    TMUL per core does 1024 bf16 multiply-adds per cycle, 2048 FLOP; AVX512-BF16 alone (vdpbf16ps: 16 lanes ×
    2 products × 2 per instruction) two pipes, 128 FLOP per cycle (Zen 4: half-width pipes, 64). Same clock
    and cores as fp32_peak."""
    info = _cpuinfo()
    flags = set(info.get("flags", "").split())
    zen4 = info.get("vendor_id", "") == "AuthenticAMD" and int(info.get("cpu family", "0") or 0) == 25
    if "amx_bf16" in flags:
        per_cycle, why = 2048, "AMX: 1024 bf16 multiply-adds per TMUL cycle"
    elif "avx512_bf16" in flags:
        per_cycle, why = (64, "Zen 4 AVX512-BF16 on 256-bit pipes") if zen4 else (128, "AVX512-BF16, 2 pipes")
    else:
        return None
    return _peak(info, per_cycle, why)


def machine() -> str:
    info = _cpuinfo()
    return (
        f"{info.get('model name', platform.processor())}, {len(os.sched_getaffinity(0))} cores, "
        f"{platform.system()} {platform.release()}, Python {platform.python_version()}, "
        f"{time.strftime('%Y-%m-%d %H:%M', time.gmtime())} UTC"
    )


def table(headers: list[str], rows: list[list[str]]) -> str:
    """A Markdown table (it reads in a terminal too)."""
    widths = [max(len(str(r[i])) for r in [headers, *rows]) for i in range(len(headers))]
    line = lambda r: "| " + " | ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)) + " |"  # noqa: E731
    return "\n".join([line(headers), "|" + "|".join("-" * (w + 2) for w in widths) + "|", *map(line, rows)])
