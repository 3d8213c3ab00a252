"""The sampling contract in PyTorch autograd: contract.sampling's sampler over the nets themselves.

`TorchBackend` is the sampler's backend on CPU float32 eval-mode copies of the nets (BatchNorm with running
statistics, as in the bundle), with gradients from autograd (trainer.langevin), never from the explicit
backward of trainer.grads that the exported graphs use. So the service (the same sampler over ONNX Runtime)
and this reference share the recipe but not the gradients, and the tests holding them equal check the export.

    backend = TorchBackend(descriptor, generator, s=0.016, sigma=0.3)
    out = sampling.synthesize(backend, [0, 1], SynthesisParams(steps=15, delta=0.002, noise=True))
"""

from __future__ import annotations

import numpy as np
import torch
from coopnets.trainer.grads import frozen_copy
from coopnets.trainer.langevin import descriptor_score_and_grad, descriptor_step, latent_energy_and_grad
from torch import nn


class TorchBackend:
    """contract.sampling.Backend on the torch nets: numpy in, numpy out, autograd for the gradients."""

    def __init__(self, descriptor: nn.Module, generator: nn.Module, *, s: float, sigma: float, device="cpu"):
        """`device` "cuda" runs the nets there (bench/synthesis.py's eager CUDA baseline); arrays cross at
        every call, as numpy in and out is the contract."""
        self.device = torch.device(device)
        self.descriptor = frozen_copy(descriptor).to(self.device)
        self.generator = frozen_copy(generator).to(self.device)
        spec = generator.spec
        self.image_shape, self.latent_dim = tuple(spec.image_shape), spec.latent_dim
        self.s, self.sigma = float(s), float(sigma)

    def generate(self, z: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return self.generator(self.tensor(z)).cpu().numpy()  # (N, C, H, W)

    def score(self, y: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return self.descriptor(self.tensor(y)).cpu().numpy()  # (N,)

    def chain(self, y: np.ndarray, mask: np.ndarray, delta: float) -> _TorchChain:
        return _TorchChain(self, y, mask, delta)

    def latent_grad(self, z: np.ndarray, y: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        z_t, y_t, m_t = self.tensor(z), self.tensor(y), self.tensor(mask)
        u, grad = latent_energy_and_grad(self.generator, z_t, y_t, m_t, self.sigma)  # (N,), (N, d)
        return grad.cpu().numpy(), u.cpu().numpy()

    def tensor(self, a: np.ndarray) -> torch.Tensor:
        """A float32 tensor on the backend's device, sharing `a`'s memory on the CPU where it can; a
        read-only array (the sampler passes broadcast views) is copied, since torch has no read-only
        tensors."""
        a = np.ascontiguousarray(a, np.float32)
        return torch.from_numpy(a if a.flags.writeable else a.copy()).to(self.device)


class _TorchChain:
    """Descriptor Langevin with autograd's ∂f/∂Y: Y − (δ²/2)(Y/s² − ∂f/∂Y) + δ·noise where mask = 1."""

    def __init__(self, backend: TorchBackend, y: np.ndarray, mask: np.ndarray, delta: float):
        self.backend, self.delta = backend, float(delta)
        self.y = torch.from_numpy(np.array(y, np.float32)).to(backend.device)  # (N, C, H, W), a copy
        self.mask = backend.tensor(mask)  # (N, C, H, W)

    def step(self, noise: np.ndarray) -> None:
        _, grad = descriptor_score_and_grad(self.backend.descriptor, self.y)
        u = self.backend.tensor(noise)  # (N, C, H, W)
        self.y = descriptor_step(self.y, grad, u, self.mask, self.delta, self.backend.s)

    def value(self) -> np.ndarray:
        return self.y.cpu().numpy()
