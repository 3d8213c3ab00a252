"""Requests as typed jobs: the one place where serving turns what a client asked into engine work.

Two layers. The first works on plain values and arrays, whatever protocol they came in: seeds, image and mask
arrays (contract.codec's checks), and `synthesis_params` / `completion_params`, which replace every unset
(None) field by the bundle's default and check the ranges. coopnets.v1, the Open Inference Protocol
(serving.oip) and `coop-complete --bundle` (clients.cli) all build their params here. The second layer reads
coopnets.v1 messages into the first: `synthesis`, `stream`, `completion` and `energy` return a serving.jobs
job plus what the response needs (PNG or tensor).

Input is checked where it enters: anything wrong raises contract.codec.FieldError (a field's value) or
contract.sampling.ParamError (a sampling parameter's range), each naming the field by its path in the request,
e.g. "request.langevin.steps" or "images[2].tensor.data"; the service answers both with INVALID_ARGUMENT.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Protocol

import numpy as np
from coopnets.contract.codec import (
    FieldError,
    checked_image,
    checked_mask,
    checked_missing,
    image_from_message,
    mask_from_message,
)
from coopnets.contract.occlusions import occlusion_mask
from coopnets.contract.sampling import CompletionParams, SynthesisParams
from coopnets.serving.jobs import CompletionJob, EnergyJob, SynthesisJob
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


# ---- values and arrays, whatever the protocol ----------------------------------------------------------


def synthesis_params(
    model: Model,
    max_steps: int | None,
    *,
    steps: int | None = None,
    delta: float | None = None,
    noise: bool | None = None,
    prefix: str = "",
) -> SynthesisParams:
    """The bundle's synthesis defaults with the given (not None) fields replaced, range-checked; `prefix`
    is where the fields sit in the request ("request.langevin." inside a stream request)."""
    d = model.synthesis_defaults
    return SynthesisParams(
        steps=d.steps if steps is None else int(steps),
        delta=d.delta if delta is None else float(delta),
        noise=d.noise if noise is None else bool(noise),
    ).checked(max_steps, prefix=prefix)


# CompletionParams fields that the requests (coopnets.v1's CompleteRequest, OIP's coopnets-complete inputs)
# name otherwise: a wire name is a contract and stays
REQUEST_NAMES = {"refine_step_size": "delta"}


def completion_params(model: Model, max_steps: int | None, **given) -> CompletionParams:
    """The bundle's completion defaults with the given (not None) fields of CompletionParams replaced, each
    as its default's type, range-checked. A field may be given by its request name (REQUEST_NAMES)."""
    d = model.completion_defaults
    fields = {REQUEST_NAMES.get(k, k): v for k, v in given.items() if v is not None}
    return dataclasses.replace(d, **{k: type(getattr(d, k))(v) for k, v in fields.items()}).checked(max_steps)


def checked_count(count: int, limits: Limits, field: str) -> int:
    if not 1 <= count <= limits.max_count:
        raise FieldError(field, f"{count} is not between 1 and max_count = {limits.max_count}")
    return int(count)


def checked_seed(seed: int, count: int, field: str) -> int:
    if seed < 0 or seed + count - 1 > MAX_SEED:
        raise FieldError(field, f"{seed} must be >= 0 and seed + count - 1 <= 2^63 - 1")
    return int(seed)


def seed_range(seed: int, count: int, limits: Limits, seed_field: str, count_field: str) -> tuple[int, ...]:
    """Seeds seed, seed + 1, ..., seed + count - 1: image i of a request uses seed + i."""
    count = checked_count(count, limits, count_field)
    seed = checked_seed(seed, count, seed_field)
    return tuple(range(seed, seed + count))


def checked_images(
    a: np.ndarray, shape: tuple[int, int, int], limits: Limits, field: str, masks: bool = False
) -> np.ndarray:
    """An (N, C, H, W) batch checked image by image as a coopnets.v1 Image tensor (or mask) is; a mask
    must mark at least one missing pixel. Errors name image i as `{field}[i].tensor...`."""
    if a.ndim != 4 or tuple(a.shape[1:]) != tuple(shape):
        raise FieldError(field, f"shape {list(a.shape)} is not [N, {', '.join(map(str, shape))}]")
    checked_count(a.shape[0], limits, field)
    if masks:
        return np.stack(
            [
                checked_missing(checked_mask(m, shape, f"{field}[{i}].tensor"), f"{field}[{i}]")
                for i, m in enumerate(a)
            ]
        )  # (N, C, H, W)
    return np.stack([checked_image(x, shape, f"{field}[{i}].tensor") for i, x in enumerate(a)])


# ---- coopnets.v1 messages ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Synthesis:
    job: SynthesisJob
    png: bool  # answer 8-bit PNGs (clipped) rather than exact float32 tensors


@dataclass(frozen=True)
class Stream:
    synthesis: Synthesis
    snapshot_every: int  # 0 = none; k = also every image after steps k, 2k, ... < K


@dataclass(frozen=True)
class Completion:
    job: CompletionJob  # one image
    png: bool


def synthesis(req: pb.SynthesizeRequest, model: Model, limits: Limits, prefix: str = "") -> Synthesis:
    """`prefix` is where the request sits in its parent message ("request." inside a stream request)."""
    seeds = seed_range(req.seed, req.count, limits, f"{prefix}seed", f"{prefix}count")
    lv = req.langevin
    params = synthesis_params(
        model,
        limits.max_steps,
        steps=lv.steps if lv.HasField("steps") else None,
        delta=lv.step_size if lv.HasField("step_size") else None,
        noise=lv.noise if lv.HasField("noise") else None,
        prefix=f"{prefix}langevin.",
    )
    return Synthesis(SynthesisJob(seeds, params), _png(req.format, f"{prefix}format"))


def stream(req: pb.SynthesizeStreamRequest, model: Model, limits: Limits) -> Stream:
    s = synthesis(req.request, model, limits, prefix="request.")
    steps = s.job.params.steps
    if req.snapshot_every > steps:
        raise FieldError("snapshot_every", f"{req.snapshot_every} is more than the {steps} Langevin steps")
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
    given = {
        name: getattr(req, name) if req.HasField(name) else None
        for name in (
            "latent_steps",
            "latent_step_size",
            "refine_steps",
            "refine_step_size",
            "noise",
            "residual_fill",
            "average_restarts",
            "residual_interpolant",
        )
    }
    params = completion_params(model, limits.max_steps, restarts=req.restarts or None, **given)  # 0 = unset
    job = CompletionJob(image[None], mask[None], (seed,), params)  # (1, C, H, W) each
    return Completion(job, _png(req.format, "format"))


def energy(req: pb.EnergyRequest, model: Model, limits: Limits) -> EnergyJob:
    checked_count(len(req.images), limits, "images")
    images = [image_from_message(m, model.image_shape, f"images[{i}]") for i, m in enumerate(req.images)]
    return EnergyJob(np.stack(images))  # (N, C, H, W)


def _png(fmt: int, field: str) -> bool:
    if fmt not in (pb.IMAGE_FORMAT_UNSPECIFIED, pb.IMAGE_FORMAT_PNG, pb.IMAGE_FORMAT_TENSOR):
        raise FieldError(field, f"unknown image format {fmt}: use IMAGE_FORMAT_PNG or IMAGE_FORMAT_TENSOR")
    return fmt != pb.IMAGE_FORMAT_TENSOR
