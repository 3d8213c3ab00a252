"""Export benchmarks: bundle export time per exporter and ORT Langevin-step latency.

    .venv/bin/python bench/export_step.py                         # export time + step latency, all archs
    .venv/bin/python bench/export_step.py --archs mnist28 --exporters torchscript      # one row (smoke)

(The completion step-size sweep that lived here as `--completion` is experiments/latent_completion.py.)
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
from coopnets.contract.flags import Parser, add_flags, cli_main, resolve
from coopnets.trainer.export import EXPORTERS, export_bundle
from coopnets.trainer.nets import NetSpec, build_nets

LANGEVIN = {"s": 0.016, "delta": 0.002, "steps": 15, "sigma": 0.3, "noise": True}
CHANNELS = {"mnist28": 1, "cifar32": 3, "scene64": 3}

HELP = {
    "archs": f"comma-separated architectures to export ({', '.join(CHANNELS)})",
    "exporters": f"comma-separated exporters ({', '.join(EXPORTERS)})",
}


@dataclass(frozen=True)
class ExportBenchConfig:
    archs: str = ",".join(CHANNELS)
    exporters: str = ",".join(EXPORTERS)

    def validate(self) -> ExportBenchConfig:
        for name, known in (("archs", CHANNELS), ("exporters", EXPORTERS)):
            unknown = set(getattr(self, name).split(",")) - set(known)
            if unknown:
                raise ValueError(f"--{name}: unknown {', '.join(sorted(unknown))}; use {', '.join(known)}")
        return self


def step_latency_ms(bundle: Path, spec: NetSpec, n: int, reps: int = 5, steps: int = 10) -> float:
    """Median wall time of one langevin_step call at batch n (2 intra-op threads)."""
    so = ort.SessionOptions()
    so.intra_op_num_threads, so.inter_op_num_threads = 2, 1
    sess = ort.InferenceSession(str(bundle / "langevin_step.onnx"), so, providers=["CPUExecutionProvider"])
    y = np.random.default_rng(0).uniform(-1, 1, (n, *spec.image_shape)).astype(np.float32)
    feed = {
        "y": y,
        "noise": y,
        "mask": np.ones_like(y),
        "delta": np.array(0.002, np.float32),
        "s": np.array(0.016, np.float32),
    }
    sess.run(None, feed)
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        for _ in range(steps):
            sess.run(None, feed)
        times.append((time.perf_counter() - t) / steps * 1000)
    return statistics.median(times)


def export_table(archs: list[str], exporters: list[str]) -> None:
    print("| arch | exporter | export + verify (s) | step b1 (ms) | step b16 (ms) |")
    print("|---|---|---:|---:|---:|")
    with tempfile.TemporaryDirectory() as tmp:
        for arch in archs:
            spec = NetSpec(arch, CHANNELS[arch], 100)
            descriptor, generator = build_nets(spec)
            for exporter in exporters:
                t = time.perf_counter()
                out = export_bundle(
                    descriptor,
                    generator,
                    Path(tmp) / f"{spec.arch}-{exporter}",
                    langevin=LANGEVIN,
                    exporter=exporter,
                )
                seconds = time.perf_counter() - t
                print(
                    f"| {spec.arch} | {exporter} | {seconds:.2f} | {step_latency_ms(out, spec, 1):.2f} | "
                    f"{step_latency_ms(out, spec, 16):.2f} |",
                    flush=True,
                )


def main(argv: list[str] | None = None) -> int:
    parser = Parser(prog="export_step.py", description=__doc__.splitlines()[0])
    add_flags(parser, ExportBenchConfig, HELP)
    args = vars(parser.parse_args(argv))

    def body() -> int:
        cfg = resolve(ExportBenchConfig, args)
        torch.manual_seed(0)
        export_table(cfg.archs.split(","), cfg.exporters.split(","))
        return 0

    return cli_main("export_step.py", body)


if __name__ == "__main__":
    sys.exit(main())
