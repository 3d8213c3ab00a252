"""The CUDA paths (pytest -m gpu; skipped on a machine without CUDA, run by bench/gpu.sh on one that has it):
the trainer on cuda in fp32 and bf16 autocast, the ONNX Runtime CUDA provider with IO binding against the CPU
provider's answers, and the service on CUDA.

The CUDA and CPU providers are two implementations of the same graphs: their answers are held to the rounding
bound of tests/float32_bound.py on the legacy bundle's nets, with one more term where the CUDA provider runs
convolutions in TF32 (its `use_tf32` option, on by default; tensor cores of Ampere and later GPUs): each
product's two factors keep 10 bits of mantissa, a relative error below 2·2⁻¹⁰ per product (truncated, or half
that rounded), taken as independent and of mean zero as float32_bound takes roundings, so a sum Σ w·x is off
by PRODUCT·√Σ(w·x)² more. That term is some thousand times float32's, too coarse to see a lost Langevin step;
without TF32 the bound is float32's (which covers direct and GEMM convolutions, not cuDNN's FFT or Winograd
ones, should it pick those)."""

from __future__ import annotations

import dataclasses

import float32_bound
import numpy as np
import pytest
from coopnets.contract.occlusions import occlusion_masks
from coopnets.contract.sampling import SynthesisParams
from support import ROOT, legacy_nets

LEGACY = ROOT / "tests" / "data" / "legacy" / "bundle"
PRODUCT = 2.0**-9  # TF32: the relative error of a product of two factors cut to 10-bit mantissas

pytestmark = pytest.mark.gpu


def _torch_cuda() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()


def _ort_cuda_engine():
    from coopnets.contract.bundle import BundleError
    from coopnets.serving.engine import Engine

    try:
        return Engine.open(LEGACY, device="cuda")
    except BundleError as e:
        pytest.skip(f"ONNX Runtime cannot run CUDA here: {e}")


needs_torch_cuda = pytest.mark.skipif(not _torch_cuda(), reason="torch sees no CUDA device")


def _uses_tf32(engine) -> bool:
    """Whether the engine's CUDA sessions may multiply in TF32: ONNX Runtime's use_tf32 (1 unless set)."""
    options = engine.sessions["langevin_step"].get_provider_options().get("CUDAExecutionProvider", {})
    return options.get("use_tf32", "1") != "0"


def assert_engines_agree(gpu, cpu, tf32: bool) -> None:
    """Synthesis, then completion of its images, on both engines within the bound; one latent chain, since
    with TF32 two chains' U come within the bound of each other and the sides could keep different ones."""
    descriptor, generator = legacy_nets(LEGACY)
    s, sigma, seeds = cpu.backend.s, cpu.backend.sigma, list(range(5))
    params = SynthesisParams(steps=8, delta=0.002, noise=True)
    a, b = gpu.synthesize(seeds, params), cpu.synthesize(seeds, params)
    masks = occlusion_masks("center:10", gpu.image_shape, seeds)
    completion = dataclasses.replace(cpu.completion_defaults, restarts=1)
    ca, cb = (
        gpu.complete(b.images, masks, seeds, completion),
        cpu.complete(b.images, masks, seeds, completion),
    )
    with float32_bound.assumptions(product=PRODUCT if tf32 else 0.0):
        synthesis = float32_bound.synthesis(descriptor, generator, seeds, params, s)
        completed = float32_bound.completion(
            descriptor, generator, b.images, masks, seeds, completion, s, sigma
        )
    if not tf32:
        float32_bound.assert_fine(synthesis, b.score, params.delta)
    float32_bound.assert_samples_within(a, b, synthesis)
    float32_bound.assert_samples_within(ca, cb, completed)
    np.testing.assert_array_equal(ca.images[masks < 0.5], b.images[masks < 0.5])  # observed pixels exactly


@needs_torch_cuda
@pytest.mark.parametrize("amp", ["none", "bf16"])
def test_the_trainer_runs_on_cuda(amp):
    import torch
    from coopnets.trainer.config import TrainConfig
    from coopnets.trainer.coop import build_run, cooperative_iteration

    config = TrainConfig(device="cuda", amp=amp, batch_size=8, langevin_steps=3, iterations=2)
    run = build_run(config)
    y = (torch.rand(8, 1, 28, 28, device="cuda") * 2 - 1).float()  # (N, C, H, W)
    for _ in range(2):
        stats, _, y_rev = cooperative_iteration(run, y)
    assert y_rev.is_cuda and np.isfinite([stats.loss_d, stats.loss_g, stats.f_revised]).all()


def test_ort_cuda_with_io_binding_equals_the_cpu_provider():
    from coopnets.serving.engine import Engine

    gpu = _ort_cuda_engine()
    cpu = Engine.open(LEGACY, device="cpu")
    assert gpu.sessions.device == "cuda" and all(
        p[0] == "CUDAExecutionProvider" for p in gpu.sessions.providers.values()
    )
    assert_engines_agree(gpu, cpu, _uses_tf32(gpu))


def test_the_service_serves_on_cuda(tmp_path):
    from coopnets.clients.client import CoopNetsClient
    from coopnets.serving.server import ServeConfig, create_server

    engine = _ort_cuda_engine()
    config = ServeConfig(bundle=str(LEGACY), port=0, device="cuda", metrics_port=-1)
    server = create_server(config, engine)
    try:
        with CoopNetsClient(f"127.0.0.1:{server.port}", timeout=60) as c:
            assert c.info().device == "cuda"
            out = c.synthesize(count=4, seed=0)
            assert out.images.shape == (4, 1, 28, 28) and np.isfinite(out.energy).all()
    finally:
        server.shutdown(0)
