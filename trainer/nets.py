"""The two ConvNets of CoopNets, as in the paper's official code (see docs/architecture.md).

Descriptor f(Y; α): bottom-up ConvNet, Y (N, C, H, W) -> one scalar per image (N,). The last layer has 100
outputs that are summed, as in the official code. No normalisation layers.

Generator g(X; β): top-down ConvNet, X (N, d) -> Y (N, C, H, W) in [-1, 1] (tanh). BatchNorm + leaky ReLU on
hidden layers; trained with batch statistics, exported in eval mode with running statistics so that every
sample is deterministic and independent of the batch it runs in.

Both bodies are plain ``nn.Sequential`` stacks of a few layer kinds (Conv2d, ConvTranspose2d, Linear,
LeakyReLU, BatchNorm2d, Tanh, Flatten, Unflatten). ``trainer.grads`` walks the same layers backwards to build
the explicit input gradients that the ONNX graphs need, so adding another layer kind means adding its backward
there (the export tests fail until it is).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

ARCHS = ("mnist28", "cifar32", "scene64")
ARCH_FOR_SIZE = {28: "mnist28", 32: "cifar32", 64: "scene64"}
LEAK = 0.2  # leaky ReLU slope of the official TF code


def arch_for_size(size: int) -> str:
    """The paper's network for a square image of `size` pixels; ValueError for sizes it has none for."""
    if size not in ARCH_FOR_SIZE:
        raise ValueError(
            f"image size {size} is not supported: use one of {sorted(ARCH_FOR_SIZE)} (28 MNIST net, "
            "32 CIFAR net, 64 scene net)"
        )
    return ARCH_FOR_SIZE[size]


def image_size(arch: str) -> int:
    for size, name in ARCH_FOR_SIZE.items():
        if name == arch:
            return size
    raise ValueError(f"unknown architecture {arch!r}: use one of {', '.join(ARCHS)}")


@dataclass(frozen=True)
class NetSpec:
    """What rebuilds both networks: saved in checkpoints and in the bundle manifest."""

    arch: str = "mnist28"
    channels: int = 1
    latent_dim: int = 100

    @property
    def image_shape(self) -> tuple[int, int, int]:
        size = image_size(self.arch)
        return (self.channels, size, size)


def _lrelu() -> nn.LeakyReLU:
    return nn.LeakyReLU(LEAK)


class WholeConv2d(nn.Conv2d):
    """A Conv2d whose kernel covers its whole unpadded input (the descriptor's last layer): the same numbers
    computed as one matrix product. oneDNN runs this shape as a convolution at a fraction of the matmul's
    speed (forward and input gradient of mnist28's 256 -> 100 layer: ~2.4 ms of a 12 ms Langevin step on
    the 2-core AMX Xeon, `bench/training.py --variants whole-conv-off`). Same parameters as nn.Conv2d, so
    checkpoints and bundles are unchanged; other input sizes run the convolution."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if tuple(x.shape[-2:]) != self.kernel_size or self.padding != (0, 0):
            return super().forward(x)
        return F.linear(x.flatten(1), self.weight.flatten(1), self.bias)[:, :, None, None]  # (N, C_out, 1, 1)


class WholeConvTranspose2d(nn.ConvTranspose2d):
    """A ConvTranspose2d from a 1×1 input without padding (the generator's first layer): one matrix product,
    X (N, C_in) @ W (C_in, C_out·K·K), for the reason WholeConv2d gives."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if tuple(x.shape[-2:]) != (1, 1) or self.padding != (0, 0) or self.output_padding != (0, 0):
            return super().forward(x)
        kh, kw = self.kernel_size
        bias = None if self.bias is None else self.bias.repeat_interleave(kh * kw)  # (C_out·K·K,)
        out = F.linear(x.flatten(1), self.weight.flatten(1).t(), bias)  # (N, C_out·K·K)
        return out.view(x.shape[0], self.out_channels, kh, kw)  # (N, C_out, K, K)


def _up(c_in: int, c_out: int, k: int, s: int, p: int, op: int = 0) -> list[nn.Module]:
    """A hidden generator layer: transposed conv, BatchNorm, leaky ReLU."""
    conv = WholeConvTranspose2d if (s, p, op) == (1, 0, 0) else nn.ConvTranspose2d  # from 1×1: a matmul
    return [conv(c_in, c_out, k, s, p, output_padding=op), nn.BatchNorm2d(c_out), _lrelu()]


class Descriptor(nn.Module):
    """f(Y): (N, C, H, W) -> (N,). Energy E(Y) = ||Y||^2 / (2 s^2) - f(Y)."""

    def __init__(self, spec: NetSpec):
        super().__init__()
        c = spec.channels
        if spec.arch == "mnist28":
            layers = [
                nn.Conv2d(c, 64, 4, 2, 1),
                _lrelu(),  # (N, 64, 14, 14)
                nn.Conv2d(64, 128, 4, 2, 1),
                _lrelu(),  # (N, 128, 7, 7)
                nn.Conv2d(128, 256, 4, 2, 2),
                _lrelu(),  # (N, 256, 4, 4)
                WholeConv2d(256, 100, 4, 1, 0),  # (N, 100, 1, 1) full-size conv
            ]
        elif spec.arch == "cifar32":
            layers = [
                nn.Conv2d(c, 64, 5, 2, 1),
                _lrelu(),  # (N, 64, 15, 15)
                nn.Conv2d(64, 128, 3, 2, 1),
                _lrelu(),  # (N, 128, 8, 8)
                nn.Conv2d(128, 256, 3, 1, 1),
                _lrelu(),  # (N, 256, 8, 8)
                nn.Flatten(),
                nn.Linear(256 * 8 * 8, 100),  # (N, 100)
            ]
        elif spec.arch == "scene64":
            layers = [
                nn.Conv2d(c, 64, 5, 2, 2),
                _lrelu(),  # (N, 64, 32, 32)
                nn.Conv2d(64, 128, 3, 2, 1),
                _lrelu(),  # (N, 128, 16, 16)
                nn.Conv2d(128, 256, 3, 1, 1),
                _lrelu(),  # (N, 256, 16, 16)
                WholeConv2d(256, 100, 16, 1, 0),  # (N, 100, 1, 1) VALID full-size conv
            ]
        else:
            raise ValueError(f"unknown architecture {spec.arch!r}: use one of {', '.join(ARCHS)}")
        self.spec = spec
        self.body = nn.Sequential(*layers)
        init_weights(self)

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        return self.head(self.hidden(y))  # (N, C, H, W) -> (N,)

    def hidden(self, y: torch.Tensor) -> torch.Tensor:
        """Every layer but the last: split from `head` so that mixed precision (trainer.precision) can run
        the two in different precisions."""
        *layers, _ = self.body
        for layer in layers:
            y = layer(y)
        return y  # (N, C_k, H_k, W_k), the last layer's input

    def head(self, h: torch.Tensor) -> torch.Tensor:
        """The last layer and the sum of its 100 outputs, summed in float32 whatever precision the layer ran
        in: f grows with training beyond what a low-precision sum keeps (docs/training.md, "Mixed
        precision"). The only definition of the head: forward and the autocast wrapper both call it."""
        return self.body[-1](h).float().flatten(1).sum(1)  # (N, 100, 1, 1) or (N, 100) -> (N,)


class Generator(nn.Module):
    """g(X): (N, d) -> (N, C, H, W), tanh output in [-1, 1]."""

    def __init__(self, spec: NetSpec):
        super().__init__()
        d, c = spec.latent_dim, spec.channels
        if spec.arch == "mnist28":
            layers = [
                *_up(d, 512, 4, 1, 0),  # (N, 512, 4, 4)
                *_up(512, 256, 4, 2, 2, 1),  # (N, 256, 7, 7)
                *_up(256, 128, 4, 2, 1),  # (N, 128, 14, 14)
                nn.ConvTranspose2d(128, c, 4, 2, 1),  # (N, C, 28, 28)
            ]
        elif spec.arch == "cifar32":
            layers = [
                *_up(d, 256, 4, 1, 0),  # (N, 256, 4, 4)
                *_up(256, 128, 5, 2, 2, 1),  # (N, 128, 8, 8)
                *_up(128, 64, 5, 2, 2, 1),  # (N, 64, 16, 16)
                nn.ConvTranspose2d(64, c, 5, 2, 2, output_padding=1),  # (N, C, 32, 32)
            ]
        elif spec.arch == "scene64":
            layers = [
                *_up(d, 512, 4, 1, 0),  # (N, 512, 4, 4)
                *_up(512, 256, 5, 2, 2, 1),  # (N, 256, 8, 8)
                *_up(256, 128, 5, 2, 2, 1),  # (N, 128, 16, 16)
                *_up(128, 64, 5, 2, 2, 1),  # (N, 64, 32, 32)
                nn.ConvTranspose2d(64, c, 5, 2, 2, output_padding=1),  # (N, C, 64, 64)
            ]
        else:
            raise ValueError(f"unknown architecture {spec.arch!r}: use one of {', '.join(ARCHS)}")
        self.spec = spec
        self.body = nn.Sequential(nn.Unflatten(1, (d, 1, 1)), *layers, nn.Tanh())
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)  # (N, d) -> (N, C, H, W)


def init_weights(module: nn.Module) -> None:
    """The official initialisation: N(0, 0.01^2) convs, N(0, 0.005^2) transposed convs, zero biases."""
    for m in module.modules():
        if isinstance(m, nn.ConvTranspose2d):
            nn.init.normal_(m.weight, 0.0, 0.005)
            nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.Conv2d, nn.Linear)):
            nn.init.normal_(m.weight, 0.0, 0.01)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


def build_nets(spec: NetSpec) -> tuple[Descriptor, Generator]:
    return Descriptor(spec), Generator(spec)
