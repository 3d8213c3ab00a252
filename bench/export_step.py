"""Export benchmarks: bundle export time per exporter, ORT Langevin-step latency, and the completion defaults.

    .venv/bin/python bench/export_step.py                         # export time + step latency, all archs
    .venv/bin/python bench/export_step.py --completion CKPT       # λ_max of U's Hessian and a (η, L) sweep

The completion sweep completes held-out Fashion-MNIST test images (t10k, evaluation only) with a centre 14×14
hole by latent gradient steps (no noise, as the default); PSNR on the observed and on the hidden pixels.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

from trainer.export import export_bundle
from trainer.langevin import latent_energy_grad
from trainer.nets import NetSpec, build_nets

LANGEVIN = {"s": 0.016, "delta": 0.002, "steps": 15, "sigma": 0.3, "noise": True}
SPECS = [NetSpec("mnist28", 1, 100), NetSpec("cifar32", 3, 100), NetSpec("scene64", 3, 100)]
TEST_IMAGES = Path("/usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz")


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


def export_table() -> None:
    print("| arch | exporter | export + verify (s) | step b1 (ms) | step b16 (ms) |")
    print("|---|---|---:|---:|---:|")
    with tempfile.TemporaryDirectory() as tmp:
        for spec in SPECS:
            descriptor, generator = build_nets(spec)
            for exporter in ("torchscript", "dynamo"):
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


def completion_table(checkpoint: str, n_images: int, sigma: float) -> None:
    from trainer.checkpoint import load_models
    from trainer.data import read_idx_images

    _, generator, _ = load_models(checkpoint)
    generator.requires_grad_(False)
    pixels = read_idx_images(TEST_IMAGES)[:n_images]
    y = torch.from_numpy(pixels[:, None].astype(np.float32) / 127.5 - 1)  # (N, 1, 28, 28)
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
            z = z - 0.5 * eta**2 * latent_energy_grad(generator, z, y, mask, sigma)  # (N, d)
            if step in lengths:
                with torch.no_grad():
                    y_gen = generator(z)
                cells.append(f"{psnr(y_gen, y, keep):.2f} / {psnr(y_gen, y, mask):.2f}")
        print(f"| {eta} | " + " | ".join(cells) + " |", flush=True)
    mean_fill = psnr(y.mean(0, keepdim=True).expand_as(y), y, mask)
    print(f"baseline, hole filled with the mean test image: {mean_fill:.2f} dB")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--completion", metavar="CHECKPOINT", help="sweep completion steps on this model")
    parser.add_argument("--images", type=int, default=64, help="test images for --completion")
    parser.add_argument("--sigma", type=float, default=0.3)
    args = parser.parse_args()
    torch.manual_seed(0)
    if args.completion:
        completion_table(args.completion, args.images, args.sigma)
    else:
        export_table()


if __name__ == "__main__":
    main()
