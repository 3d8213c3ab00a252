"""coopnets.v1 requests as plain typed values: the one place where serving reads a request message.

Each function takes a request, the model it is for (image shape and defaults, from the engine) and the
server's Limits, and returns plain values: seeds, (C, H, W) float32 arrays, and a frozen SynthesisParams or
CompletionParams with every unset field already replaced by the bundle's default. So defaults are resolved
once, here, and what reaches the batcher and the engine is typed and checked.

Input is checked where it enters: anything wrong raises contract.codec.FieldError (a field's value) or
contract.sampling.ParamError (a sampling parameter's range), each naming the field by its path in the request,
e.g. "request.langevin.steps" or "images[2].tensor.data"; the service answers both with INVALID_ARGUMENT.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np
from coopnets.contract.codec import FieldError, image_from_message, mask_from_message
from coopnets.contract.occlusions import occlusion_mask
from coopnets.contract.sampling import CompletionParams, SynthesisParams
from coopnets.v1 import coopnets_pb2 as pb

MAX_SEED = 2**63 - 1  # seeds are int64 in the contract; image i of a request uses seed + i


@dataclass(frozen=True)
class Limits:
    """What one request may ask for (flags of coop-serve, reported in ModelInfo)."""

    max_count: int = 64
    max_steps: int = 1000
    max_batch: int = 64
    max_delay_ms: int = 5
    max_queue: int = 64
    max_receive_message_bytes: int = 16 << 20
    max_send_message_bytes: int = 64 << 20


class Model(Protocol):
    """What a request is checked against (serving.engine.Engine has these)."""

    image_shape: tuple[int, int, int]
    synthesis_defaults: SynthesisParams
    completion_defaults: CompletionParams


@dataclass(frozen=True)
class Synthesis:
    seeds: tuple[int, ...]  # image i from seeds[i] = seed + i
    params: SynthesisParams
    png: bool  # answer 8-bit PNGs (clipped) rather than exact float32 tensors


@dataclass(frozen=True)
class Stream:
    synthesis: Synthesis
    snapshot_every: int  # 0 = none; k = also every image after steps k, 2k, ... < K


@dataclass(frozen=True)
class Completion:
    image: np.ndarray  # (C, H, W) float32
    mask: np.ndarray  # (C, H, W) float32, 1 = missing
    seed: int
    params: CompletionParams
    png: bool


def synthesis(req: pb.SynthesizeRequest, model: Model, limits: Limits, prefix: str = "") -> Synthesis:
    """`prefix` is where the request sits in its parent message ("request." inside a stream request)."""
    count = checked_count(req.count, limits, f"{prefix}count")
    seed = checked_seed(req.seed, count, f"{prefix}seed")
    d, lv = model.synthesis_defaults, req.langevin
    params = SynthesisParams(
        steps=int(lv.steps) if lv.HasField("steps") else d.steps,
        delta=float(lv.step_size) if lv.HasField("step_size") else d.delta,
        noise=bool(lv.noise) if lv.HasField("noise") else d.noise,
    ).checked(limits.max_steps, prefix=f"{prefix}langevin.")
    return Synthesis(tuple(range(seed, seed + count)), params, _png(req.format, f"{prefix}format"))


def stream(req: pb.SynthesizeStreamRequest, model: Model, limits: Limits) -> Stream:
    s = synthesis(req.request, model, limits, prefix="request.")
    if req.snapshot_every > s.params.steps:
        raise FieldError(
            "snapshot_every", f"{req.snapshot_every} is more than the {s.params.steps} Langevin steps"
        )
    return Stream(s, int(req.snapshot_every))


def completion(req: pb.CompleteRequest, model: Model, limits: Limits) -> Completion:
    """The mask comes from `mask` (1 / white = missing) or a named `occlusion` seeded by `seed`."""
    shape = model.image_shape
    image = image_from_message(req.image, shape, "image")  # (C, H, W)
    seed = checked_seed(req.seed, 1, "seed")
    source = req.WhichOneof("mask_source")
    if source == "mask":
        mask = mask_from_message(req.mask, shape, "mask")  # (C, H, W), 1 = missing
    elif source == "occlusion":
        try:
            mask = occlusion_mask(req.occlusion, shape, seed)
        except ValueError as e:
            raise FieldError("occlusion", str(e)) from None
    else:
        raise FieldError("mask", "give a mask (1 / white = missing) or an occlusion such as center:14")
    d = model.completion_defaults

    def given(name: str, default):
        return type(default)(getattr(req, name)) if req.HasField(name) else default

    params = CompletionParams(
        latent_steps=given("latent_steps", d.latent_steps),
        latent_step_size=given("latent_step_size", d.latent_step_size),
        latent_noise=d.latent_noise,
        refine_steps=given("refine_steps", d.refine_steps),
        refine_step_size=given("refine_step_size", d.refine_step_size),
        noise=given("noise", d.noise),
        restarts=int(req.restarts) or d.restarts,  # 0 (unset) = the bundle's default
        residual_fill=given("residual_fill", d.residual_fill),
        average_restarts=given("average_restarts", d.average_restarts),
        residual_interpolant=given("residual_interpolant", d.residual_interpolant),
    ).checked(limits.max_steps)
    return Completion(image, mask, seed, params, _png(req.format, "format"))


def energy(req: pb.EnergyRequest, model: Model, limits: Limits) -> np.ndarray:
    """The images, (N, C, H, W) float32."""
    checked_count(len(req.images), limits, "images")
    return np.stack(
        [image_from_message(m, model.image_shape, f"images[{i}]") for i, m in enumerate(req.images)]
    )


def checked_count(count: int, limits: Limits, field: str) -> int:
    if not 1 <= count <= limits.max_count:
        raise FieldError(field, f"{count} is not between 1 and max_count = {limits.max_count}")
    return int(count)


def checked_seed(seed: int, count: int, field: str) -> int:
    if seed < 0 or seed + count - 1 > MAX_SEED:
        raise FieldError(field, f"{seed} must be >= 0 and seed + count - 1 <= 2^63 - 1")
    return int(seed)


def _png(fmt: int, field: str) -> bool:
    if fmt not in (pb.IMAGE_FORMAT_UNSPECIFIED, pb.IMAGE_FORMAT_PNG, pb.IMAGE_FORMAT_TENSOR):
        raise FieldError(field, f"unknown image format {fmt}: use IMAGE_FORMAT_PNG or IMAGE_FORMAT_TENSOR")
    return fmt != pb.IMAGE_FORMAT_TENSOR
