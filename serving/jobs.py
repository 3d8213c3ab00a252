"""Batch jobs: one typed value per kind of engine work, which merges with its kind and runs itself.

A job is what the batcher queues. It carries exactly what its engine call needs (seeds as a tuple of ints,
images and masks as (N, C, H, W) float32 arrays, frozen params), so nothing between a request and the
engine reads an untyped dict, and the seeds keep the one form that `contract.sampling.rngs_for` turns into
the per-image generators. Jobs of one kind with equal `key` merge (`merged`): one ONNX Runtime batch runs one
step size and step count, so only equal params share a batch. `run` is the engine call, and `take` cuts a
merged result back into each job's rows.

Because every image has its own rng (contract.sampling), an image is bit-identical whether it ran alone or
merged with others; merging changes only how many images one graph call holds.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from typing import ClassVar, Protocol, TypeVar

import numpy as np
from coopnets.contract.sampling import CompletionParams, Samples, SynthesisParams
from coopnets.serving.engine import Engine, StopFn


@dataclass(frozen=True)
class Measures:
    """What an energy job answers, per image."""

    energy: np.ndarray  # (N,) float32, E(Y)
    score: np.ndarray  # (N,) float32, f(Y)
    ood: np.ndarray | None  # (N,) float32, or None for a bundle without typicality.onnx


Result = TypeVar("Result", Samples, Measures)


class Job(Protocol):
    """What the batcher needs of a job: its kind (its queue), its merge key, its size, and how it runs."""

    kind: ClassVar[str]

    @property
    def key(self) -> Hashable: ...
    @property
    def rows(self) -> int: ...
    def run(self, engine: Engine, should_stop: StopFn) -> Samples | Measures: ...


@dataclass(frozen=True, eq=False)
class SynthesisJob:
    """Images seeds[0], seeds[1], ... drawn then moved by params.steps descriptor Langevin steps."""

    kind: ClassVar[str] = "synthesize"
    seeds: tuple[int, ...]  # image i from default_rng(seeds[i])
    params: SynthesisParams

    @property
    def key(self) -> Hashable:
        return self.params

    @property
    def rows(self) -> int:
        return len(self.seeds)

    @classmethod
    def merged(cls, jobs: Sequence[SynthesisJob]) -> SynthesisJob:
        return cls(tuple(s for j in jobs for s in j.seeds), jobs[0].params)

    def run(self, engine: Engine, should_stop: StopFn) -> Samples:
        return engine.synthesize(self.seeds, self.params, should_stop=should_stop)


@dataclass(frozen=True, eq=False)
class CompletionJob:
    """The missing pixels (mask = 1) of `images` recovered, image i with its own seed."""

    kind: ClassVar[str] = "complete"
    images: np.ndarray  # (N, C, H, W) float32
    masks: np.ndarray  # (N, C, H, W) float32, 1 = missing
    seeds: tuple[int, ...]  # image i from default_rng(seeds[i])
    params: CompletionParams

    @property
    def key(self) -> Hashable:
        return self.params

    @property
    def rows(self) -> int:
        return len(self.seeds)

    @classmethod
    def merged(cls, jobs: Sequence[CompletionJob]) -> CompletionJob:
        return cls(
            np.concatenate([j.images for j in jobs]),  # (ΣN, C, H, W)
            np.concatenate([j.masks for j in jobs]),  # (ΣN, C, H, W)
            tuple(s for j in jobs for s in j.seeds),
            jobs[0].params,
        )

    def run(self, engine: Engine, should_stop: StopFn) -> Samples:
        return engine.complete(self.images, self.masks, self.seeds, self.params, should_stop=should_stop)


@dataclass(frozen=True, eq=False)
class EnergyJob:
    """E(Y), f(Y) and (where the bundle has it) the out-of-distribution score of `images`."""

    kind: ClassVar[str] = "energy"
    images: np.ndarray  # (N, C, H, W) float32

    @property
    def key(self) -> Hashable:
        return None  # no parameters: every energy job merges with every other

    @property
    def rows(self) -> int:
        return len(self.images)

    @classmethod
    def merged(cls, jobs: Sequence[EnergyJob]) -> EnergyJob:
        return cls(np.concatenate([j.images for j in jobs]))  # (ΣN, C, H, W)

    def run(self, engine: Engine, should_stop: StopFn) -> Measures:
        energy, score = engine.energy(self.images)
        return Measures(energy, score, engine.ood(self.images))


def take(result: Result, start: int, stop: int) -> Result:
    """Rows start:stop of every per-image array of a merged result (None stays None)."""
    arrays = {f.name: getattr(result, f.name) for f in dataclasses.fields(result)}
    return type(result)(**{k: None if a is None else a[start:stop] for k, a in arrays.items()})
