"""The full-size layers computed as matrix products (trainer.nets.WholeConv2d, WholeConvTranspose2d) give
their parent convolution's outputs and gradients, on every architecture."""

from __future__ import annotations

import copy

import pytest
import torch
from coopnets.trainer.nets import ARCHS, NetSpec, WholeConv2d, WholeConvTranspose2d, build_nets
from torch import nn


def as_plain(net: nn.Module) -> nn.Module:
    """A copy whose Whole* layers are the plain convolutions they subclass (same parameters)."""
    net = copy.deepcopy(net)
    for m in net.modules():
        if isinstance(m, WholeConv2d):
            m.__class__ = nn.Conv2d
        elif isinstance(m, WholeConvTranspose2d):
            m.__class__ = nn.ConvTranspose2d
    return net


def randomized(net: nn.Module, seed: int) -> nn.Module:
    """Weights and biases far from the zero-bias official init, so every term shows."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.05)
    return net


@pytest.mark.parametrize("arch", ARCHS)
def test_whole_layers_match_the_plain_convolutions_forward_and_backward(arch):
    spec = NetSpec(arch=arch, channels=3 if arch != "mnist28" else 1)
    descriptor, generator = (randomized(n, i) for i, n in enumerate(build_nets(spec)))
    assert any(isinstance(m, WholeConvTranspose2d) for m in generator.modules())
    has_whole = any(isinstance(m, WholeConv2d) for m in descriptor.modules())
    assert has_whole == (arch != "cifar32")  # cifar32 ends in a Linear
    x = torch.randn(5, spec.latent_dim, generator=torch.Generator().manual_seed(2))  # (N, d)
    y = torch.rand(5, *spec.image_shape, generator=torch.Generator().manual_seed(3)) * 2 - 1  # (N, C, H, W)
    for net, inp in ((descriptor, y), (generator, x)):
        plain = as_plain(net)
        outs, grads = [], []
        for n in (net, plain):
            v = inp.clone().requires_grad_(True)
            out = n(v)
            (out * torch.linspace(-1, 1, out.numel()).view(out.shape)).sum().backward()
            outs.append(out.detach())
            grads.append([v.grad, *(p.grad for p in n.parameters())])
        torch.testing.assert_close(outs[0], outs[1], rtol=1e-4, atol=1e-6)
        # sums of many terms: float32 rounding relative to the largest gradient (a conv bias before BatchNorm
        # has a zero gradient up to that rounding)
        scale = max(b.abs().max().item() for b in grads[1])
        for a, b in zip(*grads, strict=True):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6 * scale)


def test_whole_layers_on_other_input_sizes_run_the_convolution():
    conv = randomized(WholeConv2d(8, 4, 4, 1, 0), 0)
    up = randomized(WholeConvTranspose2d(8, 4, 4, 1, 0), 1)
    y = torch.randn(2, 8, 6, 6)  # larger than the kernel: a 3×3 output, not a matmul
    torch.testing.assert_close(conv(y), as_plain(conv)(y), rtol=0, atol=0)
    assert conv(y).shape == (2, 4, 3, 3)
    torch.testing.assert_close(up(y), as_plain(up)(y), rtol=0, atol=0)
    assert up(y).shape == (2, 4, 9, 9)
