"""Synthesis speed: the service's engine (ONNX Runtime) vs the same sampler in PyTorch eager vs torch.compile.

    .venv/bin/python bench/synthesis.py [--repeats 7] [--steps 15] [--counts 1,16,64] [--threads 2]

For each net (mnist28: 1×28×28, cifar32: 3×32×32; seeded weights scaled up from the official init so that
activations are far from zero) and each count, these cases run interleaved in one window:
    engine   serving.engine.Engine.synthesize on an exported bundle (what coop-serve runs per batch); a
             batch of 8 or more runs as parts on single-threaded sessions at once (serving.sessions)
    one part the same engine with --batch-shards 1: the whole batch on one session with every thread
    chain    the whole synthesis as one ONNX graph (an ONNX Loop over the Langevin step: the Triton export's
             synthesis_chain, trainer/triton.py) in one ONNX Runtime call, fed the same draws
    eager    contract.sampling.synthesize over trainer.reference.TorchBackend (autograd input gradients)
    compile  the same sampler with each Langevin step a torch.compile'd trainer.grads.LangevinStep
All draw the same per-image numpy noise and run the same K steps from the same drafts (checked: max
|engine − eager| is printed). GFLOP/s counts the convolutions and matmuls of the draft and of K forward +
input-gradient passes (torch.utils.flop_counter), over the median wall time. Ends with
`synth_speedup_vs_eager_min=` (the smallest eager/engine ratio in the table).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent

from coopnets.contract import sampling  # noqa: E402
from coopnets.contract.sampling import SynthesisParams  # noqa: E402
from coopnets.serving.engine import Engine  # noqa: E402
from coopnets.serving.sessions import MIN_PER_SHARD, usable_cores  # noqa: E402
from coopnets.trainer.export import export_bundle  # noqa: E402
from coopnets.trainer.grads import LangevinStep  # noqa: E402
from coopnets.trainer.nets import NetSpec, build_nets  # noqa: E402
from coopnets.trainer.reference import TorchBackend  # noqa: E402
from timing import fp32_peak, interleave, machine, table  # noqa: E402

NETS = {"mnist28": NetSpec("mnist28", 1, 100), "cifar32": NetSpec("cifar32", 3, 100)}
S, SIGMA, DELTA = 0.016, 0.3, 0.002


def seeded_nets(spec: NetSpec):
    torch.manual_seed(0)
    descriptor, generator = build_nets(spec)
    with torch.no_grad():
        for net, scale in ((descriptor, 4.0), (generator, 8.0)):
            for p in net.parameters():
                if p.dim() > 1:
                    p.mul_(scale)
    return descriptor.eval(), generator.eval()


class CompiledBackend(TorchBackend):
    """TorchBackend whose Langevin step is the explicit-gradient module, compiled."""

    def __init__(self, descriptor, generator, *, s: float, sigma: float, device: str = "cpu"):
        super().__init__(descriptor, generator, s=s, sigma=sigma, device=device)
        self.step = torch.compile(LangevinStep(self.descriptor).eval(), dynamic=False)

    def chain(self, y, mask, delta):
        return _CompiledChain(self, y, mask, delta)


class _CompiledChain:
    def __init__(self, backend: CompiledBackend, y, mask, delta):
        self.backend = backend
        self.y, self.mask = backend.tensor(np.array(y, np.float32)), backend.tensor(mask)
        self.delta = torch.tensor(float(delta), device=backend.device)
        self.s = torch.tensor(backend.s, device=backend.device)

    def step(self, noise) -> None:
        with torch.no_grad():
            self.y, _ = self.backend.step(self.y, self.backend.tensor(noise), self.mask, self.delta, self.s)

    def value(self):
        return self.y.cpu().numpy()


class ChainPath:
    """The Triton export's whole-chain graph on ONNX Runtime: one call per synthesis, no per-step Python."""

    def __init__(self, bundle: Path, out: Path, threads: int, device: str = "cpu"):
        import onnxruntime as ort
        from coopnets.contract.bundle import read_bundle
        from coopnets.serving.sessions import session_options
        from coopnets.trainer.triton import CHAIN, export_triton

        self.bundle = read_bundle(bundle)
        path = export_triton(bundle, out) / CHAIN / "1" / "model.onnx"
        opts = session_options(threads)
        providers = ["CUDAExecutionProvider"] * (device == "cuda") + ["CPUExecutionProvider"]
        self.sess = ort.InferenceSession(str(path), opts, providers=providers)

    def synthesize(self, seeds, params: SynthesisParams) -> sampling.Samples:
        z, noise = sampling.synthesis_draws(
            seeds, self.bundle.latent_dim, self.bundle.image_shape, params.steps, params.noise
        )
        images, energy = self.sess.run(None, {"z": z, "noise": noise, "steps": np.array([params.steps])})
        s = self.bundle.langevin.s
        score = (images.astype(np.float64) ** 2).reshape(len(images), -1).sum(1) / (2 * s * s) - energy
        return sampling.Samples(images=images, energy=energy, score=score.astype(np.float32))  # f = prior - E


def _flops(fn) -> float:
    """FLOPs torch.utils.flop_counter counts in `fn()` (convolutions and matmuls), no autograd."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        fn()
    return float(counter.get_total_flops())


def flops_per_step(backend: TorchBackend) -> float:
    """FLOPs of one image's Langevin step: a descriptor forward and its input gradient, counted on
    trainer.grads.LangevinStep, the explicit form of the same arithmetic (FlopCounterMode does not follow
    torch.autograd.grad)."""
    step = LangevinStep(backend.descriptor).eval()
    y = torch.zeros(1, *backend.image_shape)
    return _flops(lambda: step(y, y, y, torch.tensor(DELTA), torch.tensor(S)))


def flops_per_image(backend: TorchBackend, params: SynthesisParams) -> float:
    """FLOPs of one image's synthesis: the draft g(X) and K Langevin steps."""
    draft = _flops(lambda: backend.generator(torch.zeros(1, backend.latent_dim)))
    return draft + params.steps * flops_per_step(backend)


ARITHMETIC_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")  # where a step's FLOPs are


def part_scaling(bundle: Path, n_part: int, parts: int, repeats: int = 10) -> tuple[float, float, float]:
    """Whether parts at once slow each other: ms of one Langevin step of one single-threaded part alone, and
    of `parts` such parts at once (threads, as the engine runs them); and how a 2048² matmul scales from one
    thread to `parts` (a compute-bound reference). Interleaved, medians."""
    from concurrent.futures import ThreadPoolExecutor

    import onnxruntime as ort
    from coopnets.serving.sessions import scalar, session_options

    sessions = [
        ort.InferenceSession(
            str(bundle / "langevin_step.onnx"), session_options(1), providers=["CPUExecutionProvider"]
        )
        for _ in range(parts)
    ]
    shape = [n_part if d is None or isinstance(d, str) else d for d in sessions[0].get_inputs()[0].shape]
    rng = np.random.default_rng(0)
    feeds = []
    for _ in range(parts):
        y = rng.standard_normal(shape).astype(np.float32)
        feeds.append({"y": y, "mask": np.ones_like(y), "noise": y, "delta": scalar(DELTA), "s": scalar(S)})
    pool = ThreadPoolExecutor(parts)
    a, b = torch.randn(2048, 2048), torch.randn(2048, 2048)

    def matmul(threads: int):
        torch.set_num_threads(threads)
        a @ b

    threads = torch.get_num_threads()
    cases = {
        "alone": lambda: sessions[0].run(None, feeds[0]),
        "together": lambda: list(pool.map(lambda i: sessions[i].run(None, feeds[i]), range(parts))),
        "matmul 1": lambda: matmul(1),
        "matmul n": lambda: matmul(parts),
    }
    st = interleave(cases, repeats, 2)
    torch.set_num_threads(threads)
    pool.shutdown()
    return (
        st["alone"].median * 1e3,
        st["together"].median * 1e3,
        st["matmul 1"].median / st["matmul n"].median,
    )


def ort_profile(bundle: Path, n: int, threads: int, steps: int = 10) -> tuple[list[list[str]], float, float]:
    """Where ONNX Runtime's time goes in one Langevin step at count `n`: its own profiler on
    langevin_step.onnx (the engine's session options, profiling on), summed per op type over `steps` runs
    after one warm-up. Returns rows (op type, ms per step, share of the step, nodes), the ms per step in
    ARITHMETIC_OPS and the ms of the whole step."""
    import json

    import onnxruntime as ort
    from coopnets.serving.sessions import scalar, session_options

    opts = session_options(threads)
    opts.enable_profiling = True
    with tempfile.TemporaryDirectory() as tmp:
        opts.profile_file_prefix = str(Path(tmp) / "ort")
        sess = ort.InferenceSession(
            str(bundle / "langevin_step.onnx"), opts, providers=["CPUExecutionProvider"]
        )
        shape = [n if d is None or isinstance(d, str) else d for d in sess.get_inputs()[0].shape]
        rng = np.random.default_rng(0)
        y = rng.standard_normal(shape).astype(np.float32)
        feed = {"y": y, "mask": np.ones_like(y), "noise": y, "delta": scalar(DELTA), "s": scalar(S)}
        for _ in range(steps + 1):
            sess.run(None, feed)
        events = json.loads(Path(sess.end_profiling()).read_text())
    per_op: dict[str, list[float]] = {}
    runs = [e for e in events if e.get("name") == "model_run"][1:]  # the warm-up run dropped
    start = runs[0]["ts"] if runs else 0
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time") and e["ts"] >= start:
            per_op.setdefault(e["args"]["op_name"], []).append(e["dur"] / 1e3)
    total = sum(r["dur"] for r in runs) / 1e3 / max(len(runs), 1)
    rows = [
        [op, f"{sum(d) / len(runs):.2f}", f"{sum(d) / len(runs) / total:.0%}", str(len(d) // len(runs))]
        for op, d in sorted(per_op.items(), key=lambda kv: -sum(kv[1]))
    ]
    arithmetic = sum(sum(d) for op, d in per_op.items() if op in ARITHMETIC_OPS) / len(runs)
    return [*rows, ["(whole step)", f"{total:.2f}", "100%", ""]], arithmetic, total


def measure(
    name: str, n: int, paths: dict, flops: float, params, args, peak: float
) -> tuple[list[str], float]:
    """One table row: every path at count `n`, interleaved; returns the row and eager/engine."""
    seeds = list(range(n))
    run = {k: (lambda b=b: b.synthesize(seeds, params)) if isinstance(b, (Engine, ChainPath))
           else (lambda b=b: sampling.synthesize(b, seeds, params)) for k, b in paths.items()}  # fmt: skip
    first = {k: fn().images for k, fn in run.items()}  # also compiles torch.compile for this shape
    diff = max(float(np.abs(first["engine"] - x).max()) for x in first.values())
    st = interleave(run, args.repeats, args.warmup)
    e, g = st["engine"], st["eager"]

    def rate(x) -> str:
        r = flops * n / x.median  # FLOP/s
        return f"{r / 1e9:.0f} ({r / peak:.0%})"

    ms = {k: v.ms() for k, v in st.items()}
    print(f"  {name} count {n}: " + ", ".join(f"{k} {v} ms" for k, v in ms.items()), flush=True)
    ratio = lambda k: f"{st[k].median / e.median:.2f}" if k in st else "–"  # noqa: E731
    row = [
        name, str(n), ms["engine"], ms["one part"], ms["chain"], ms["eager"], ms.get("compile", "–"),
        ratio("one part"), ratio("chain"), ratio("eager"), ratio("compile"), rate(e), rate(g),
        "/".join(f"{x.cpu_per_wall:.2f}" for x in st.values()), f"{diff:.1e}",
    ]  # fmt: skip
    return row, g.median / e.median


HEADERS = [
    "net", "count", "engine ms (p10–p90)", "one part ms", "chain ms", "eager ms", "compile ms",
    "one part/engine", "chain/engine", "eager/engine", "compile/engine", "engine GFLOP/s (peak)",
    "eager GFLOP/s (peak)", "cpu/wall (cases in order)", "max |Δ|",
]  # fmt: skip


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--steps", type=int, default=15)
    p.add_argument("--counts", default="1,16,64")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--nets", default=",".join(NETS))
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"), help="engine and eager device")
    p.add_argument("--no-compile", dest="compile", action="store_false", help="skip the torch.compile case")
    p.add_argument(
        "--profile",
        action="store_true",
        help="also print ONNX Runtime's per-op profile of one step at the largest count",
    )
    return p.parse_args(argv)


def open_paths(name: str, tmp: Path, params: SynthesisParams, args) -> tuple[Path, dict]:
    """The bundle exported from the seeded `name` nets into `tmp`, and every case of the table on it, keyed by
    the table's names; the torch cases run the very nets the bundle was exported from."""
    descriptor, generator = seeded_nets(NETS[name])
    langevin = {"s": S, "delta": DELTA, "steps": params.steps, "sigma": SIGMA, "noise": True}
    bundle = export_bundle(descriptor, generator, tmp / name, langevin=langevin)
    paths = {
        "engine": Engine.open(bundle, device=args.device, threads=args.threads),
        "one part": Engine.open(bundle, device=args.device, threads=args.threads, shards=1),
        "chain": ChainPath(bundle, tmp / f"{name}-triton", args.threads, args.device),
        "eager": TorchBackend(descriptor, generator, s=S, sigma=SIGMA, device=args.device),
    }
    if args.compile:
        paths["compile"] = CompiledBackend(descriptor, generator, s=S, sigma=SIGMA, device=args.device)
    return bundle, paths


def profile_part(bundle: Path, eager: TorchBackend, counts: list[int], ratio: float, args) -> tuple:
    """The profile of one part of the largest batch, as the engine runs it (serving.sessions): its per-op
    rows, the part's count and threads, how many parts run at once, the GFLOP/s of its arithmetic kernels,
    their share of the step, eager/engine at that count and how parts at once scale (None for one part)."""
    parts = min(args.threads, max(counts) // MIN_PER_SHARD) if args.threads > 1 else 1
    n_part, t_part = max(counts) // parts, (1 if parts > 1 else args.threads)
    rows_p, arith_ms, step_ms = ort_profile(bundle, n_part, t_part)
    rate = flops_per_step(eager) * n_part / (arith_ms / 1e3)  # FLOP/s of those kernels
    scaling = part_scaling(bundle, n_part, parts) if parts > 1 else None
    return rows_p, n_part, t_part, parts, rate, arith_ms / step_ms, ratio, scaling


def print_profile(name: str, profile: tuple, counts: list[int], peak: float) -> None:
    """One net's profile (from profile_part) and what it bounds: how fast the engine could be were
    every non-arithmetic op gone."""
    prof, n_part, t_part, parts, rate, share, ratio, scaling = profile
    core_peak = peak / usable_cores()  # fp32_peak counts the cores this process may use
    print(
        f"\nONNX Runtime profile, {name}, a Langevin step of one part: count {n_part} on {t_part} "
        f"thread(s) ({parts} such parts run at once at count {max(counts)})"
    )
    print(table(["op type", "ms per step", "share", "nodes"], prof))
    print(
        f"{' + '.join(ARITHMETIC_OPS)}: {rate / 1e9:.0f} GFLOP/s on {t_part} thread(s) "
        f"({rate / (core_peak * t_part):.0%} of {t_part} core(s)' fp32 peak), {share:.0%} of the step. "
        f"With every other op gone the engine would be at most {ratio / share:.2f}x eager at count "
        f"{max(counts)} (eager/engine {ratio:.2f} / that share)."
    )
    if scaling:
        alone, together, mm = scaling
        print(
            f"One part's step alone {alone:.1f} ms, {parts} parts at once {together:.1f} ms "
            f"({alone / together:.0%} parallel efficiency); a 2048² matmul on {parts} threads: {mm:.2f}x "
            "one thread."
        )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    counts = [int(c) for c in args.counts.split(",")]
    torch.set_num_threads(args.threads)
    params = SynthesisParams(steps=args.steps, delta=DELTA, noise=True)
    peak, how = fp32_peak()
    print(f"machine: {machine()}")
    print(f"threads: torch {torch.get_num_threads()}, ONNX Runtime intra-op {args.threads}, inter-op 1")
    print(f"fp32 peak: {how}")
    print(
        f"steps K = {params.steps}, δ = {params.delta}, noise on; {args.repeats} repeats after {args.warmup}"
    )
    rows, ratios, profiles = [], [], {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.nets.split(","):
            bundle, paths = open_paths(name, Path(tmp), params, args)
            flops = flops_per_image(paths["eager"], params)
            eager_over_engine = {}
            for n in counts:
                row, eager_over_engine[n] = measure(name, n, paths, flops, params, args, peak)
                rows.append(row)
            ratios += eager_over_engine.values()
            if args.profile:
                ratio = eager_over_engine[max(counts)]
                profiles[name] = profile_part(bundle, paths["eager"], counts, ratio, args)
    print()
    print(table(HEADERS, rows))
    for name, profile in profiles.items():
        print_profile(name, profile, counts, peak)
    print(f"synth_speedup_vs_eager_min={min(ratios):.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
