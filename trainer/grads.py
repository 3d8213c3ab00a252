"""Explicit input gradients (∂f/∂Y and ∂U/∂X) as plain forward modules, so that they export to ONNX.

ONNX Runtime cannot differentiate, and with torch 2.13 a forward that calls ``torch.autograd.grad`` does not
export. So the gradient is written out: a reverse pass walks the
SAME ``nn.Sequential`` layers of trainer/nets.py backwards, each layer kind mapped to its vector-Jacobian
product (conv -> transposed conv with the same weight, leaky ReLU -> mask multiply, ...). Because it reads the
layers of the module it is given, it stays in sync with the nets; a layer kind without a backward here raises
`UnsupportedLayerError` naming it, and the export tests compare every graph with autograd.

Modules (all nets must be in eval mode: BatchNorm uses its running statistics):
    Generate(generator):             z (N, d) -> g(z) (N, C, H, W)
    DescriptorWithGrad(descriptor):  y (N, C, H, W) -> f (N,), ∂f/∂Y (N, C, H, W)
    LangevinStep(descriptor):        y, noise, mask (N, C, H, W), δ, s (scalars) -> y_next, f(y) (N,)
    GeneratorGrad(generator):        z (N, d), y, mask (N, C, H, W), σ -> ∂U/∂z (N, d), g(z), U (N,)
with U(z) = ‖(1 − mask) ⊙ (y − g(z))‖² / (2σ²) + ‖z‖² / 2 per image. Mask: 1 = missing (pixel may move),
0 = observed (clamped).
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import torch
import torch.nn.functional as F
from coopnets.trainer.langevin import descriptor_step
from torch import nn


def frozen_copy(net: nn.Module) -> nn.Module:
    """A CPU float32 eval-mode copy with frozen parameters: the nets as the bundle and the reference sampler
    use them. The caller's net (maybe training on CUDA) is left untouched."""
    net = copy.deepcopy(net).to("cpu", torch.float32).eval()
    net.requires_grad_(False)
    return net


class UnsupportedLayerError(TypeError):
    """A layer kind (or a layer setting) that the explicit reverse pass has no backward for."""


def _pair(v) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else tuple(v)


def _backward_of(kind: type) -> Callable | None:
    """The backward of layer class `kind`, or of the nearest base class that has one: a subclass that only
    computes its parent's function another way (trainer.nets.WholeConv2d) shares its backward."""
    return next((_BACKWARD[k] for k in kind.__mro__ if k in _BACKWARD), None)


def _check_layer(layer: nn.Module) -> None:
    """Raise if `layer` has no exact backward below (checked once, when a gradient module is built)."""
    kind = type(layer)
    if _backward_of(kind) is None:
        supported = ", ".join(sorted(k.__name__ for k in _BACKWARD))
        raise UnsupportedLayerError(
            f"layer {kind.__name__} has no explicit backward in trainer/grads.py (supported: {supported}); "
            "add its vector-Jacobian product to _BACKWARD"
        )
    if isinstance(layer, (nn.Conv2d, nn.ConvTranspose2d)):
        if layer.padding_mode != "zeros" or isinstance(layer.padding, str):
            raise UnsupportedLayerError(
                f"{kind.__name__} with padding={layer.padding!r}, padding_mode={layer.padding_mode!r}: only "
                "explicit integer zero padding has a backward here"
            )
        if _pair(layer.dilation) != (1, 1) or layer.groups != 1:
            raise UnsupportedLayerError(f"{kind.__name__}: only dilation 1 and groups 1 have a backward here")
        _square(layer)
    if isinstance(layer, nn.BatchNorm2d) and (layer.training or not layer.track_running_stats):
        raise UnsupportedLayerError(
            "BatchNorm2d must be in eval mode with running statistics (call .eval() on the net first): the "
            "exported graphs use running statistics so that every sample is independent of its batch"
        )


# Backward of each layer kind: (layer, x = its input, y = its output, g = ∂L/∂y) -> ∂L/∂x.


def conv_transpose2d_as_conv(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, stride: int, padding: int, out_size: int
) -> torch.Tensor:
    """F.conv_transpose2d(x, weight, bias, stride, padding) cropped to `out_size` (square kernels, strides and
    paddings, dilation 1, groups 1), computed as ONE ordinary convolution followed by a pixel shuffle.

    Why: ONNX Runtime's CPU ConvTranspose spends most of its time in a single-threaded col2im (measured: 60%
    of a Langevin step, twice the time of the Conv layers of the same FLOPs), while its Conv is
    multi-threaded and blocked for AVX-512. Output pixel u + p = s·m + φ of a stride-s transposed conv only
    sees kernel taps k = φ + s·t, t < T = ceil(K/s), and inputs m − t: for each phase φ that is a T×T
    correlation with the flipped sub-kernel. All s² phases are stacked as output channels of one conv,
    pixel_shuffle interleaves them (channel c·s² + φh·s + φw -> pixel (s·m + φh, s·n + φw)), and a slice
    drops the padding rows.
    Same FLOPs as the transposed conv when s divides K; otherwise the phases would need zero taps, and the
    plain transposed conv is kept."""
    # Python ints, not traced sizes: the exporter would otherwise record this arithmetic in the graph, and
    # ONNX integer division truncates where Python's // floors (a wrong T for K = 5, s = 2)
    c_in, c_out, k = (int(v) for v in weight.shape[:3])
    size_in = int(x.shape[2])
    if k % stride:  # phases with fewer taps would be padded with zeros: measured slower than ConvTranspose
        # (cifar32's 5×5 and 3×3 stride-2 layers, `python bench/synthesis.py`)
        extra = out_size - ((size_in - 1) * stride - 2 * padding + k)
        return F.conv_transpose2d(x, weight, bias, stride, padding, extra)
    if size_in == 1 and padding + out_size <= k:  # a 1×1 input (the first generator layer, the last
        # descriptor layer's adjoint) is a matmul; the conv form would spend K² times the FLOPs on padding
        out = x.flatten(1) @ weight.reshape(c_in, c_out * k * k)  # (N, C_in) @ (C_in, C_out·K²)
        out = out.reshape(-1, c_out, k, k)  # (N, C_out, K, K)
        out = out[:, :, padding : padding + out_size, padding : padding + out_size]
        return out if bias is None else out + bias.reshape(1, -1, 1, 1)
    t = -(-k // stride)
    last = (padding + out_size - 1) // stride  # the last phase row m any output needs
    pad = max(t - 1, last - (size_in - 1))  # t - 1 rows before m = 0, and rows past the input after it
    w = F.pad(weight, (0, stride * t - k, 0, stride * t - k))  # (C_in, C_out, sT, sT), zero taps past K
    w = w.reshape(c_in, c_out, t, stride, t, stride).flip(2, 4)  # k = t·s + φ; correlation taps reversed
    w = w.permute(1, 3, 5, 0, 2, 4).reshape(c_out * stride * stride, c_in, t, t)  # (C_out·s², C_in, T, T)
    z = F.conv2d(x, w, None, 1, pad)  # (N, C_out·s², M, M)
    if stride > 1:
        z = F.pixel_shuffle(z, stride)  # (N, C_out, s·M, s·M)
    start = padding + stride * (pad - t + 1)
    out = z[:, :, start : start + out_size, start : start + out_size]  # (N, C_out, out_size, out_size)
    return out if bias is None else out + bias.reshape(1, -1, 1, 1)


def _square(m: nn.Module) -> tuple[int, int]:
    stride, pad, k = _pair(m.stride), _pair(m.padding), _pair(m.kernel_size)
    if stride[0] != stride[1] or pad[0] != pad[1] or k[0] != k[1]:
        raise UnsupportedLayerError(f"{type(m).__name__}: only square kernels, strides and paddings export")
    return stride[0], pad[0]


def _conv2d_backward(m: nn.Conv2d, x: torch.Tensor, y: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    # The transposed conv with the same weight, cropped to the input's size (which restores the rows and
    # columns the stride dropped), as a conv + pixel shuffle (conv_transpose2d_as_conv).
    stride, pad = _square(m)
    return conv_transpose2d_as_conv(g, m.weight, None, stride, pad, int(x.shape[2]))  # (N, C_in, H, W)


def _conv_transpose2d_backward(m: nn.ConvTranspose2d, x, y, g):
    # A transposed conv is the adjoint of a conv: its input gradient is the conv with the same weight.
    return F.conv2d(g, m.weight, None, m.stride, m.padding, m.dilation, m.groups)  # (N, C_in, H, W)


def _linear_backward(m: nn.Linear, x, y, g):
    return g @ m.weight  # (N, out) @ (out, in) -> (N, in)


def _leaky_relu_backward(m: nn.LeakyReLU, x, y, g):
    # g * where(x > 0, 1, slope): measured 30-40% faster in ORT than where(x > 0, g, g * slope).
    return g * torch.where(x > 0, 1.0, m.negative_slope)


def _batch_norm2d_backward(m: nn.BatchNorm2d, x, y, g):
    scale = torch.rsqrt(m.running_var + m.eps)  # (C,)
    if m.weight is not None:
        scale = scale * m.weight
    return g * scale.reshape(1, -1, 1, 1)  # (N, C, H, W)


def _tanh_backward(m: nn.Tanh, x, y, g):
    return g * (1.0 - y * y)


def _reshape_backward(m: nn.Module, x, y, g):
    return g.reshape(x.shape)  # Flatten / Unflatten: undo the reshape


_BACKWARD: dict[type, Callable] = {
    nn.Conv2d: _conv2d_backward,
    nn.ConvTranspose2d: _conv_transpose2d_backward,
    nn.Linear: _linear_backward,
    nn.LeakyReLU: _leaky_relu_backward,
    nn.BatchNorm2d: _batch_norm2d_backward,
    nn.Tanh: _tanh_backward,
    nn.Flatten: _reshape_backward,
    nn.Unflatten: _reshape_backward,
}


def forward_layer(layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """layer(x), a transposed conv written as conv_transpose2d_as_conv (the form ONNX Runtime runs fast)."""
    if isinstance(layer, nn.ConvTranspose2d):
        stride, pad = _square(layer)
        k, out_pad = _pair(layer.kernel_size)[0], _pair(layer.output_padding)[0]
        size = (int(x.shape[2]) - 1) * stride - 2 * pad + k + out_pad
        return conv_transpose2d_as_conv(x, layer.weight, layer.bias, stride, pad, size)
    return layer(x)


def forward_saving(body: nn.Sequential, x: torch.Tensor) -> list[torch.Tensor]:
    """Run `x` through `body`, keeping every layer's input and the output: [x, a_1, ..., out]."""
    acts = [x]
    for layer in body:
        acts.append(forward_layer(layer, acts[-1]))
    return acts


def input_vjp(body: nn.Sequential, acts: list[torch.Tensor], g: torch.Tensor) -> torch.Tensor:
    """Walk `body` backwards from g = ∂L/∂out to ∂L/∂x, given `forward_saving`'s activations. Every layer must
    have passed `_check_layer`."""
    for i in range(len(body) - 1, -1, -1):
        layer = body[i]
        g = _backward_of(type(layer))(layer, acts[i], acts[i + 1], g)
    return g


def kink_margin(net: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Per input (N,): the smallest |input| of any leaky ReLU in `net.body`, relative to that layer's RMS.

    Where it is ~0 the input gradient jumps (the ReLU's slope switches between 1 and the leak), so two float32
    implementations of the same forward (ORT, PyTorch) can land on different sides and give gradients that
    differ by far more than rounding. Gradient comparisons are only meaningful away from such kinks."""
    margin = torch.full((x.shape[0],), float("inf"))
    with torch.no_grad():
        acts = forward_saving(net.body, x)
    for layer, a in zip(net.body, acts[:-1], strict=True):
        if isinstance(layer, nn.LeakyReLU):
            rel = a.abs().flatten(1) / a.pow(2).mean().sqrt().clamp_min(1e-30)  # (N, units)
            margin = torch.minimum(margin, rel.min(1).values)
    return margin


def _checked_body(net: nn.Module, probe: torch.Tensor, head: Callable) -> nn.Sequential:
    """`net.body` after checking every layer, and that net(x) really is head(body(x)) (the part of the forward
    outside the Sequential is written out here, so a change to the net's forward must fail loudly)."""
    body = getattr(net, "body", None)
    if not isinstance(body, nn.Sequential):
        raise UnsupportedLayerError(f"{type(net).__name__} has no nn.Sequential `body` to differentiate")
    for layer in body:
        _check_layer(layer)
    # One thread for the comparison: multi-threaded MKL and oneDNN split their sums by the threads they get,
    # which varies with the machine's load, so two calls of one forward could differ in the last bits (an
    # export failed this check on a busy machine); on one thread the same code sums in the same order.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with torch.no_grad():
            same = torch.equal(net(probe), head(body(probe)))
    finally:
        torch.set_num_threads(threads)
    if not same:
        raise UnsupportedLayerError(
            f"{type(net).__name__}.forward is no longer head(body(x)) as trainer/grads.py assumes"
        )
    return body


def _descriptor_head(out: torch.Tensor) -> torch.Tensor:
    return out.flatten(1).sum(1)  # (N, 100, ...) -> (N,): the official code sums the last layer's outputs


class DescriptorWithGrad(nn.Module):
    """y (N, C, H, W) -> (f(y) (N,), ∂f/∂y (N, C, H, W)). Images in a batch are independent: ∂f_i/∂y_i."""

    def __init__(self, descriptor: nn.Module):
        super().__init__()
        probe = torch.randn(2, *descriptor.spec.image_shape)
        self.body = _checked_body(descriptor, probe, _descriptor_head)

    def forward(self, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        acts = forward_saving(self.body, y)
        grad = input_vjp(self.body, acts, torch.ones_like(acts[-1]))  # ∂f/∂out = 1: f sums the outputs
        return _descriptor_head(acts[-1]), grad  # (N,), (N, C, H, W)


class LangevinStep(nn.Module):
    """One descriptor Langevin step (trainer.langevin.descriptor_step with the explicit gradient):
    y_next = where(mask = 1, y − (δ²/2)(y/s² − ∂f/∂y) + δ·noise, y); also returns f(y) of the input.
    Mask: 1 = missing (pixel may move), 0 = observed (comes out bit-identical)."""

    def __init__(self, descriptor: nn.Module):
        super().__init__()
        self.score = DescriptorWithGrad(descriptor)

    def forward(self, y, noise, mask, delta, s) -> tuple[torch.Tensor, torch.Tensor]:
        f, grad = self.score(y)  # (N,), (N, C, H, W)
        return descriptor_step(y, grad, noise, mask, delta, s), f


class Generate(nn.Module):
    """z (N, d) -> g(z) (N, C, H, W), the generator's forward with its transposed convs in the conv +
    pixel-shuffle form (forward_layer) that ONNX Runtime runs multi-threaded."""

    def __init__(self, generator: nn.Module):
        super().__init__()
        probe = torch.randn(2, generator.spec.latent_dim)
        self.body = _checked_body(generator, probe, lambda out: out)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return forward_saving(self.body, z)[-1]


class GeneratorGrad(nn.Module):
    """(z (N, d), y (N, C, H, W), mask, σ) -> (∂U/∂z (N, d), g(z) (N, C, H, W), U (N,)) with
    U = ‖(1 − mask) ⊙ (y − g(z))‖² / (2σ²) + ‖z‖² / 2 per image. Mask: 1 = missing, 0 = observed; only
    observed pixels pull on z. The generator must be in eval mode (BatchNorm with running statistics)."""

    def __init__(self, generator: nn.Module):
        super().__init__()
        probe = torch.randn(2, generator.spec.latent_dim)
        self.body = _checked_body(generator, probe, lambda out: out)

    def forward(self, z, y, mask, sigma) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        keep = 1.0 - mask  # (N, C, H, W) 1 where observed
        acts = forward_saving(self.body, z)
        y_gen = acts[-1]  # (N, C, H, W)
        resid = keep * (y - y_gen)  # (N, C, H, W)
        grad_z = input_vjp(self.body, acts, -keep * resid / sigma**2) + z  # ∂U/∂g(z) back to z, plus prior
        u = resid.pow(2).flatten(1).sum(1) / (2 * sigma**2) + 0.5 * z.pow(2).sum(1)  # (N,)
        return grad_z, y_gen, u
