"""The CUDA paths (pytest -m gpu; skipped on a machine without CUDA, run by bench/gpu.sh on one that has it):
the trainer on cuda in fp32 and bf16 autocast, the ONNX Runtime CUDA provider with IO binding against the CPU
provider's answers, and the service on CUDA."""

from __future__ import annotations

import numpy as np
import pytest
from coopnets.contract.occlusions import occlusion_masks
from coopnets.contract.sampling import SynthesisParams
from support import ROOT

LEGACY = ROOT / "tests" / "data" / "legacy" / "bundle"

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
    params = SynthesisParams(steps=8, delta=0.002, noise=True)
    a, b = gpu.synthesize(list(range(5)), params), cpu.synthesize(list(range(5)), params)
    np.testing.assert_allclose(a.images, b.images, atol=1e-4)
    np.testing.assert_allclose(a.score, b.score, rtol=1e-3, atol=1e-3)
    masks = occlusion_masks("center:10", gpu.image_shape, range(5))
    ca, cb = gpu.complete(b.images, masks, list(range(5))), cpu.complete(b.images, masks, list(range(5)))
    np.testing.assert_allclose(ca.images, cb.images, atol=1e-3)
    np.testing.assert_array_equal(ca.images[masks < 0.5], b.images[masks < 0.5])  # observed pixels exactly


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
