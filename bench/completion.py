"""What completion's residual interpolant costs (contract.inpainting.interpolate_residual): `Engine.complete`
with the residual off, harmonic, biharmonic and auto, side by side, and the interpolation alone; with
--restarts, also what the number of latent chains costs (the color bundle averages 16, others 4).

    .venv/bin/python bench/completion.py                                  # the shipped reference
    .venv/bin/python bench/completion.py cifar10 --occlusions m40 --counts 1 --restarts 4,16
    .venv/bin/python bench/completion.py runs/demo/bundle --counts 1 --repeats 3 --warmup 1   # smoke

The latent chains (R × L generator-gradient steps) dominate a completion; the biharmonic fill is a conjugate-
gradient solve in numpy (up to BIHARMONIC_ITERATIONS iterations per image), so this table says whether
choosing it ("auto" on scattered holes) is visible in a request's latency. Held-out Fashion-MNIST (t10k)
images, image i with seed i; the cases run interleaved (bench/timing.py). Ends with one NAME=VALUE line.
"""

from __future__ import annotations

import dataclasses
import sys
from dataclasses import dataclass

import numpy as np
from coopnets.contract import inpainting
from coopnets.contract.flags import Parser, add_flags, cli_main, resolve
from coopnets.contract.occlusions import occlusion_masks
from coopnets.contract.sampling import MAX_RESTARTS
from coopnets.evaluation.data import load_split
from coopnets.serving.engine import Engine
from timing import interleave, machine, table  # bench/timing.py: python puts the script's folder on sys.path

CASES = {"no residual": None, **{name: name for name in ("harmonic", "biharmonic", "auto")}}

HELP = {
    "bundle": "bundle directory, or reference",
    "occlusions": "comma-separated occlusions (contract.occlusions syntax)",
    "counts": "comma-separated images per request",
    "repeats": "kept repeats per case",
    "warmup": "dropped rounds",
    "threads": "ONNX Runtime threads (0 = all cores)",
    "data_dir": "folder with the Fashion-MNIST idx files (default: Debian's)",
    "restarts": "comma-separated latent chain counts also timed, each with the bundle's other defaults",
}


@dataclass(frozen=True)
class CompletionBenchConfig:
    bundle: str = "reference"
    occlusions: str = "random:0.5,center:12"
    counts: str = "1,8"
    repeats: int = 3
    warmup: int = 1
    threads: int = 0
    data_dir: str = ""
    restarts: str = ""

    def validate(self) -> CompletionBenchConfig:
        if self.repeats < 1 or self.warmup < 0:
            raise ValueError("--repeats must be at least 1 and --warmup not negative")
        if any(int(c) < 1 for c in self.counts.split(",")):
            raise ValueError("--counts: every count must be at least 1")
        if any(not 1 <= int(r) <= MAX_RESTARTS for r in filter(None, self.restarts.split(","))):
            raise ValueError(f"--restarts: every chain count must be 1 to {MAX_RESTARTS}")
        return self


def cases_for(
    engine: Engine, images: np.ndarray, masks: np.ndarray, seeds: list[int], restarts: list[int]
) -> dict:
    """The timed calls for one request: a whole completion per interpolant, each fill alone, and a whole
    completion per chain count in `restarts`."""
    base = engine.completion_defaults
    residual = np.where(masks > 0.5, 0.0, images).astype(np.float32)  # (n, C, H, W) a stand-in for Y − g(X)

    def complete(interpolant):
        params = dataclasses.replace(
            base, residual_fill=interpolant is not None, residual_interpolant=interpolant or "harmonic"
        )
        return lambda: engine.complete(images, masks, seeds, params)

    def fill(interpolant):
        return lambda: inpainting.interpolate_residual(residual, masks, interpolant)

    def chains(r):
        return lambda: engine.complete(images, masks, seeds, dataclasses.replace(base, restarts=r))

    return (
        {name: complete(interpolant) for name, interpolant in CASES.items()}
        | {f"{name} fill alone": fill(name) for name in ("harmonic", "biharmonic")}
        | {f"{r} chains": chains(r) for r in restarts}
    )


def run(config: CompletionBenchConfig) -> float:
    """Prints the table; returns the largest (biharmonic complete time / harmonic complete time)."""
    engine = Engine.open(config.bundle, device="cpu", threads=config.threads)
    base = engine.completion_defaults
    counts = [int(c) for c in config.counts.split(",")]
    restarts = [int(r) for r in filter(None, config.restarts.split(","))]
    heldout = load_split("t10k", engine.image_shape, config.data_dir).images[: max(counts)]  # (N, C, H, W)
    print(
        f"{machine()}\nbundle {config.bundle}: {base.restarts} latent chains × {base.latent_steps} steps, "
        f"{base.refine_steps} refinement steps; threads {config.threads or 'all'}\n"
    )
    rows, worst = [], 0.0
    for occlusion in config.occlusions.split(","):
        for count in counts:
            seeds = list(range(count))
            masks = occlusion_masks(occlusion, engine.image_shape, seeds)  # (n, C, H, W), 1 = missing
            cases = cases_for(engine, heldout[:count], masks, seeds, restarts)
            stats = interleave(cases, config.repeats, config.warmup)
            harmonic = stats["harmonic"].median
            worst = max(worst, stats["biharmonic"].median / harmonic)
            touching = f"{float(np.mean(inpainting.scattered_fraction(masks))):.2f}"
            for name, s in stats.items():
                ratio = f"{s.median / harmonic:.3f}"
                rows.append([occlusion, touching, str(count), name, s.ms(), ratio, f"{s.cpu_per_wall:.2f}"])
    headers = ["occlusion", "hole touching observed", "count", "case", "ms (p10–p90)", "/ harmonic"]
    print(table([*headers, "cpu/wall"], rows))
    print(f"biharmonic_vs_harmonic_max={worst:.3f}")
    return worst


def main(argv: list[str] | None = None) -> int:
    parser = Parser(prog="completion.py", description=__doc__.splitlines()[0])
    add_flags(parser, CompletionBenchConfig, HELP, positional=("bundle",))
    args = vars(parser.parse_args(argv))

    def body() -> int:
        run(resolve(CompletionBenchConfig, args))
        return 0

    return cli_main("completion.py", body)


if __name__ == "__main__":
    sys.exit(main())
