"""Mixed precision for the training loop (`--amp bf16 | fp16`): the nets under autocast, float32 where needed.

The Langevin arithmetic, the losses and the sum of the descriptor's 100 outputs stay float32; only the
layers run in low precision. The descriptor's head (its last layer and that sum) is trainer.nets'
`Descriptor.head`, used here as it is in the descriptor's own forward, so the two cannot drift apart.
`--amp none` is the identity everywhere: the nets themselves, and a null context.
"""

from __future__ import annotations

import contextlib

import torch
from coopnets.trainer.nets import Descriptor
from torch import nn

AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


class Autocast(nn.Module):
    """Runs a net under autocast (CUDA: bf16 or fp16; CPU: bf16) and returns float32, so Langevin arithmetic
    stays float32.

    The descriptor's sum over its 100 outputs is float32, and under fp16 its last layer too: that is where f
    grows with training (per-output values of 5.5e4 by iteration 500 and f(data) of 1.25e7 were measured,
    beyond float16's 65504). bfloat16 has float32's range, so under bf16 the last layer stays in bf16: a
    float32 copy of it only costs time (docs/training.md, "Mixed precision")."""

    def __init__(self, net: nn.Module, dtype: torch.dtype, device_type: str):
        super().__init__()
        self.net, self.dtype, self.device_type = net, dtype, device_type

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not isinstance(self.net, Descriptor):
            with torch.autocast(self.device_type, dtype=self.dtype):
                return self.net(x).float()  # (N, C, H, W) of the generator
        if self.dtype == torch.float16:
            with torch.autocast(self.device_type, dtype=self.dtype):
                h = self.net.hidden(x)  # the last layer's input, float16
            with torch.autocast(self.device_type, enabled=False):
                return self.net.head(h.float())  # (N,), the last layer and the sum in float32
        with torch.autocast(self.device_type, dtype=self.dtype):
            return self.net.head(self.net.hidden(x))  # (N,): the last layer in bf16, the sum in float32


def autocast_nets(
    descriptor: nn.Module, generator: nn.Module, amp: str, device_type: str
) -> tuple[nn.Module, nn.Module]:
    """The nets the loop calls, f and g: themselves under `--amp none`, wrapped in Autocast otherwise (the
    wrappers share the nets' parameters, so the optimisers see every update)."""
    if amp == "none":
        return descriptor, generator
    dtype = AMP_DTYPES[amp]
    return Autocast(descriptor, dtype, device_type), Autocast(generator, dtype, device_type)


def cast_once(amp: str, device_type: str):
    """An autocast region around work that does not change the weights (the Langevin chain): autocast keeps
    its low-precision copies of the weights until the outermost region exits, so the l steps cast them once,
    not l times (same numbers; `bench/training.py`'s iteration ~1-2% faster). A no-op without --amp."""
    if amp == "none":
        return contextlib.nullcontext()
    return torch.autocast(device_type, dtype=AMP_DTYPES[amp])
