"""Export benchmarks: bundle export time per exporter, ORT Langevin-step latency, and the completion defaults.

    .venv/bin/python bench/export_step.py                         # export time + step latency, all archs
    .venv/bin/python bench/export_step.py --archs mnist28 --exporters torchscript      # one row (smoke)
    .venv/bin/python bench/export_step.py --completion CKPT       # λ_max of U's Hessian and a (η, L) sweep

The completion sweep completes held-out Fashion-MNIST test images (t10k, evaluation only) with a centre 14×14
hole by latent gradient steps (no noise, as the default); PSNR on the observed and on the hidden pixels.
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
from coopnets.contract.codec import from_uint8
from coopnets.contract.flags import Parser, add_flags, cli_main, resolve
from coopnets.contract.sampling import latent_step
from coopnets.trainer.data import DEBIAN_DIR
from coopnets.trainer.export import EXPORTERS, export_bundle
from coopnets.trainer.langevin import latent_energy_grad
from coopnets.trainer.nets import NetSpec, build_nets

LANGEVIN = {"s": 0.016, "delta": 0.002, "steps": 15, "sigma": 0.3, "noise": True}
CHANNELS = {"mnist28": 1, "cifar32": 3, "scene64": 3}
TEST_IMAGES = "t10k-images-idx3-ubyte.gz"  # Fashion-MNIST's held-out split: evaluation only

HELP = {
    "archs": f"comma-separated architectures to export ({', '.join(CHANNELS)})",
    "exporters": f"comma-separated exporters ({', '.join(EXPORTERS)})",
    "completion": "sweep completion steps on this checkpoint instead",
    "images": "test images for --completion",
    "sigma": "σ of U for --completion",
    "data_dir": f"folder with {TEST_IMAGES} for --completion",
}


@dataclass(frozen=True)
class ExportBenchConfig:
    archs: str = ",".join(CHANNELS)
    exporters: str = ",".join(EXPORTERS)
    completion: str = ""
    images: int = 64
    sigma: float = 0.3
    data_dir: str = str(DEBIAN_DIR)

    def validate(self) -> ExportBenchConfig:
        for name, known in (("archs", CHANNELS), ("exporters", EXPORTERS)):
            unknown = set(getattr(self, name).split(",")) - set(known)
            if unknown:
                raise ValueError(f"--{name}: unknown {', '.join(sorted(unknown))}; use {', '.join(known)}")
        if self.images < 1 or not self.sigma > 0:
            raise ValueError("--images must be >= 1 and --sigma > 0")
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


def psnr(a: torch.Tensor, b: torch.Tensor, where: torch.Tensor) -> float:
    """Mean PSNR (dB) over images on the pixels where `where` = 1; [-1, 1] images, peak-to-peak 2."""
    mse = ((a - b) ** 2 * where).flatten(1).sum(1) / where.flatten(1).sum(1)
    return (10 * torch.log10(4 / mse)).mean().item()


def completion_table(checkpoint: str, n_images: int, sigma: float, data_dir: str) -> None:
    from coopnets.trainer.checkpoint import load_models
    from coopnets.trainer.data import read_idx_images

    _, generator, _ = load_models(checkpoint)
    generator.requires_grad_(False)
    pixels = read_idx_images(Path(data_dir) / TEST_IMAGES)[:n_images]  # (N, 28, 28)
    y = torch.from_numpy(from_uint8(pixels[:, None]))  # (N, 1, 28, 28)
    mask = torch.zeros_like(y)
    mask[:, :, 7:21, 7:21] = 1  # 1 = missing
    keep = 1 - mask
    z0 = torch.from_numpy(
        np.random.default_rng(0).standard_normal((n_images, generator.spec.latent_dim), dtype=np.float32)
    )

    # Top eigenvalue of the Gauss-Newton Hessian of U at z ~ N(0, I): JᵀMJ/σ² + I, by power iteration.
    def hessian_vector(v: torch.Tensor) -> torch.Tensor:
        _, jv = torch.func.jvp(generator, (z0,), (v,))  # (N, C, H, W)
        _, vjp = torch.func.vjp(generator, z0)
        return vjp(keep * jv)[0] / sigma**2 + v  # (N, d)

    v = torch.randn_like(z0)
    for _ in range(30):
        w = hessian_vector(v)
        lam = (w * v).sum(1) / (v * v).sum(1)
        v = w / w.norm(dim=1, keepdim=True)
    print(
        f"λ_max(Hessian of U) over {n_images} images: median {lam.median():.0f}, max {lam.max():.0f}; "
        f"stable gradient steps need η < 2/sqrt(λ) = {2 / lam.max().sqrt():.3f} (max)"
    )

    lengths = (25, 50, 100, 200)
    print("| η | " + " | ".join(f"L={n} obs / hole (dB)" for n in lengths) + " |")
    print("|---|" + "---:|" * len(lengths))
    for eta in (0.02, 0.05, 0.1, 0.2):
        z, cells = z0.clone(), []
        for step in range(1, max(lengths) + 1):
            z = latent_step(z, latent_energy_grad(generator, z, y, mask, sigma), 0.0, eta)  # (N, d), no noise
            if step in lengths:
                with torch.no_grad():
                    y_gen = generator(z)
                cells.append(f"{psnr(y_gen, y, keep):.2f} / {psnr(y_gen, y, mask):.2f}")
        print(f"| {eta} | " + " | ".join(cells) + " |", flush=True)
    mean_fill = psnr(y.mean(0, keepdim=True).expand_as(y), y, mask)
    print(f"baseline, hole filled with the mean test image: {mean_fill:.2f} dB")


def main(argv: list[str] | None = None) -> int:
    parser = Parser(prog="export_step.py", description=__doc__.splitlines()[0])
    add_flags(parser, ExportBenchConfig, HELP)
    args = vars(parser.parse_args(argv))

    def body() -> int:
        cfg = resolve(ExportBenchConfig, args)
        torch.manual_seed(0)
        if cfg.completion:
            completion_table(cfg.completion, cfg.images, cfg.sigma, cfg.data_dir)
        else:
            export_table(cfg.archs.split(","), cfg.exporters.split(","))
        return 0

    return cli_main("export_step.py", body)


if __name__ == "__main__":
    sys.exit(main())
