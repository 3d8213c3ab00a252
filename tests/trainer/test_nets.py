"""The full-size layers computed as matrix products (trainer.nets.WholeConv2d, WholeConvTranspose2d) give
their parent convolution's outputs and gradients, on every architecture and on every CPU.

Each Whole* layer is tested on its own, fed with the input and the upstream gradient it gets inside the
randomized network. Its output and its three gradients (input, weight, bias) are sums of float32 products,
which the matmul and the convolution add in different orders, and which another CPU (AVX2, AVX-512, AMX;
Intel or AMD) adds in yet another order: neither float32 result is "the" answer. Both are compared with the
same layer run in float64, within the error bound of a float32 dot product (`float32_bound`). A tolerance
relative to the largest value means nothing for an element near zero (a bias before BatchNorm has a zero
gradient up to rounding); this bound is per element and follows that element's own sum.
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import pytest
import torch
from coopnets.trainer.nets import ARCHS, NetSpec, WholeConv2d, WholeConvTranspose2d, build_nets
from float32_bound import U64, gamma
from float32_bound import U as U32
from torch import nn

QUANTITIES = ("output", "∂input", "∂weight", "∂bias")


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


def run_layer(layer: nn.Module, x: torch.Tensor, g: torch.Tensor) -> list[torch.Tensor | None]:
    """[output, ∂/∂input, ∂/∂weight, ∂/∂bias] of `layer` at input x for the upstream gradient g."""
    v = x.clone().requires_grad_(True)
    out = layer(v)
    out.backward(g)
    return [out.detach(), v.grad, layer.weight.grad, layer.bias.grad]


def as_float64(layer: nn.Module, value: Callable[[torch.Tensor], torch.Tensor] | None = None) -> nn.Module:
    """A float64 copy of `layer` as its plain convolution, each parameter p replaced by value(p)."""
    ref = as_plain(layer).double()
    if value is not None:
        with torch.no_grad():
            for p in ref.parameters():
                p.copy_(value(p))
    return ref


def float32_bound(layer: nn.Module, x: torch.Tensor, g: torch.Tensor) -> list[torch.Tensor]:
    """Per element of [output, ∂input, ∂weight, ∂bias]: how far a float32 computation of it may be from the
    float64 one, whatever order the kernel adds its terms in.

    Every element is a sum of n products of float32 numbers (x, W, b and g are the same float32 tensors in
    all three computations, so no rounding of the inputs enters). In float32, in any summation order, with
    or without FMA, |fl(Σ t_i) − Σ t_i| ≤ γ_n · Σ|t_i| with u = 2^-24 (Higham, Eq. 3.5; the bias is one more
    term, a product by 1). The float64 reference is itself off by at most γ_n(2^-53) · Σ|t_i|, hence the sum
    of both γ. A convolution is bilinear in (input, parameters) and its backward is linear in g, so the same
    float64 layer run on |x|, |W|, |b| with upstream |g| gives Σ|t_i| for every element, and run on all-ones
    gives each element's n, the count of its terms (C_in·K·K + 1 for WholeConv2d's output, C_out for its
    ∂input, N for a ∂weight, N·K·K for the transposed layer's ∂bias). That float64 Σ|t_i| is rounded by a
    relative γ_n(2^-53) at most: the factor (1 + γ) covers it. The bound holds for direct summation (GEMM,
    oneDNN's direct convolution), not for a Winograd or FFT convolution, which none of these shapes runs.
    """
    abs_sums = run_layer(as_float64(layer, torch.abs), x.double().abs(), g.double().abs())
    ones = torch.ones_like
    counts = run_layer(as_float64(layer, ones), ones(x, dtype=torch.float64), ones(g, dtype=torch.float64))
    bounds = []
    for s, n in zip(abs_sums, counts, strict=True):
        g64 = gamma(n, U64)
        bounds.append((gamma(n, U32) + g64) * s * (1 + g64))
    return bounds


def whole_layers_in_use(
    net: nn.Module, inp: torch.Tensor
) -> list[tuple[nn.Module, torch.Tensor, torch.Tensor, str]]:
    """(layer, its input, its upstream gradient, its output's autograd node) for each Whole* layer of `net`,
    as met in one forward and backward of the whole net on `inp`."""
    seen = []

    def hook(module, args, out):
        entry = {"layer": module, "x": args[0].detach().clone(), "node": type(out.grad_fn).__name__}
        out.register_hook(lambda grad: entry.__setitem__("g", grad.detach().clone()))
        seen.append(entry)

    whole = [m for m in net.modules() if isinstance(m, (WholeConv2d, WholeConvTranspose2d))]
    handles = [m.register_forward_hook(hook) for m in whole]
    try:
        out = net(inp.clone().requires_grad_(True))
        # random weights: a symmetric weighting would make some gradients cancel to exactly 0
        (out * torch.randn(out.shape, generator=torch.Generator().manual_seed(4))).sum().backward()
    finally:
        for h in handles:
            h.remove()
    return [(e["layer"], e["x"], e["g"], e["node"]) for e in seen]


@pytest.mark.parametrize("arch", ARCHS)
def test_whole_layers_match_the_plain_convolutions_forward_and_backward(arch):
    spec = NetSpec(arch=arch, channels=3 if arch != "mnist28" else 1)
    descriptor, generator = (randomized(n, i) for i, n in enumerate(build_nets(spec)))
    assert any(isinstance(m, WholeConvTranspose2d) for m in generator.modules())
    has_whole = any(isinstance(m, WholeConv2d) for m in descriptor.modules())
    assert has_whole == (arch != "cifar32")  # cifar32 ends in a Linear
    x = torch.randn(5, spec.latent_dim, generator=torch.Generator().manual_seed(2))  # (N, d)
    y = torch.rand(5, *spec.image_shape, generator=torch.Generator().manual_seed(3)) * 2 - 1  # (N, C, H, W)
    tested = 0
    for net, inp in ((descriptor, y), (generator, x)):
        for layer, lx, lg, node in whole_layers_in_use(net, inp):
            kind = f"{arch} {type(layer).__name__}"
            assert "Convolution" not in node, f"{kind} ran {node}, not the matmul"  # inside the net
            whole = run_layer(copy.deepcopy(layer), lx, lg)
            plain = run_layer(as_plain(layer), lx, lg)
            ref = run_layer(as_float64(layer), lx.double(), lg.double())
            bounds = float32_bound(layer, lx, lg)
            for what, w, p, r, bound in zip(QUANTITIES, whole, plain, ref, bounds, strict=True):
                for name, got in (("whole", w), ("plain", p)):
                    assert got is not None and got.shape == r.shape, f"{kind} {what}: {name} gave {got}"
                    excess = (got.double() - r).abs() - bound
                    bad = int((excess > 0).sum())
                    assert bad == 0, (
                        f"{kind} {what}: {name} float32 beyond the γ_n bound at {bad} of {excess.numel()} "
                        f"elements (worst by {excess.max().item():.3g})"
                    )
            tested += 1
    assert tested == 1 + has_whole  # the generator's first layer, the descriptor's last where it has one


def test_whole_layers_on_other_input_sizes_run_the_convolution():
    conv = randomized(WholeConv2d(8, 4, 4, 1, 0), 0)
    up = randomized(WholeConvTranspose2d(8, 4, 4, 1, 0), 1)
    y = torch.randn(2, 8, 6, 6)  # larger than the kernel: a 3×3 output, not a matmul
    # bit for bit: both are the parent's forward (super().forward), the same float32 kernel on the same input
    torch.testing.assert_close(conv(y), as_plain(conv)(y), rtol=0, atol=0)
    assert conv(y).shape == (2, 4, 3, 3)
    torch.testing.assert_close(up(y), as_plain(up)(y), rtol=0, atol=0)
    assert up(y).shape == (2, 4, 9, 9)
