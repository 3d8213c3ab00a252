"""The service's engine: the sampling contract (contract.sampling) over the bundle's ONNX Runtime sessions.

    engine = Engine.open("runs/demo/bundle", device="cpu")
    out = engine.synthesize([0, 1, 2])                      # out.images (3, C, H, W), out.energy, out.score
    rec = engine.complete(images, masks, seeds=[0] * len(images))   # masks: 1 = missing
    energy, score = engine.energy(images)
    ood = engine.ood(images)                                # None for bundles without typicality.onnx

`OrtBackend` is the sampler's backend on the four graphs: generate (generator.onnx), score (descriptor.onnx),
a descriptor Langevin chain (langevin_step.onnx; on CUDA Y and the mask stay on the GPU between steps through
IO binding, only the noise goes up), and the latent gradient (generator_grad.onnx). The engine adds the
bundle's defaults and cancellation: `should_stop` is checked before every Langevin step and raises Cancelled.
Thread-safe: ONNX Runtime sessions may be run concurrently.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import onnxruntime as ort
from coopnets.contract import sampling
from coopnets.contract.bundle import Bundle, read_bundle
from coopnets.contract.sampling import CompletionParams, Samples, Steps, SynthesisParams
from coopnets.serving.sessions import Sessions, open_sessions, scalar

StopFn = Callable[[], bool]


class OrtBackend:
    """coopnets.contract.sampling.Backend on ONNX Runtime sessions: numpy in, numpy out."""

    def __init__(self, bundle: Bundle, sessions: Sessions):
        self.sessions = sessions
        self.image_shape = bundle.image_shape  # (C, H, W)
        self.latent_dim = bundle.latent_dim
        self.s = bundle.langevin.s
        self.sigma = bundle.langevin.sigma
        self._on_cuda = sessions.device == "cuda"

    def generate(self, z: np.ndarray) -> np.ndarray:
        (y,) = self.sessions["generator"].run(["y"], {"z": np.ascontiguousarray(z, dtype=np.float32)})
        return y  # (N, C, H, W)

    def score(self, y: np.ndarray) -> np.ndarray:
        (f,) = self.sessions["descriptor"].run(["f"], {"y": np.ascontiguousarray(y, dtype=np.float32)})
        return f  # (N,)

    def chain(self, y: np.ndarray, mask: np.ndarray, delta: float):
        return (_CudaChain if self._on_cuda else _CpuChain)(
            self.sessions["langevin_step"], y, mask, delta, self.s
        )

    def latent_grad(self, z: np.ndarray, y: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        feed = {"z": z, "y": y, "mask": mask, "sigma": scalar(self.sigma)}
        grad, u = self.sessions["generator_grad"].run(["grad_z", "u"], feed)
        return grad, u  # (N, d), (N,)


class _CpuChain:
    """One langevin_step.onnx call per step, numpy in and out."""

    def __init__(self, sess: ort.InferenceSession, y: np.ndarray, mask: np.ndarray, delta: float, s: float):
        self.sess = sess
        self.feed = {"y": y, "mask": mask, "delta": scalar(delta), "s": scalar(s)}

    def step(self, noise: np.ndarray) -> None:
        self.feed["noise"] = noise
        (self.feed["y"],) = self.sess.run(["y_next"], self.feed)

    def value(self) -> np.ndarray:
        return self.feed["y"]


class _CudaChain:
    """IO binding on CUDA: Y and the mask stay on the GPU between steps; only the noise goes up each step."""

    def __init__(self, sess: ort.InferenceSession, y: np.ndarray, mask: np.ndarray, delta: float, s: float):
        self.sess = sess
        self.binding = sess.io_binding()
        self.y = ort.OrtValue.ortvalue_from_numpy(y, "cuda", 0)
        self.binding.bind_ortvalue_input("mask", ort.OrtValue.ortvalue_from_numpy(mask, "cuda", 0))
        self.binding.bind_cpu_input("delta", scalar(delta))
        self.binding.bind_cpu_input("s", scalar(s))

    def step(self, noise: np.ndarray) -> None:
        self.binding.bind_ortvalue_input("y", self.y)
        self.binding.bind_cpu_input("noise", noise)
        self.binding.bind_output("y_next", "cuda")
        self.binding.bind_output("f", "cuda")
        self.sess.run_with_iobinding(self.binding)
        self.y = self.binding.get_outputs()[0]

    def value(self) -> np.ndarray:
        return self.y.numpy()


class Engine:
    """The bundle, its sessions and its defaults; every method runs the one sampler of contract.sampling."""

    def __init__(self, bundle: Bundle, sessions: Sessions):
        self.bundle = bundle
        self.sessions = sessions
        self.backend = OrtBackend(bundle, sessions)
        self.image_shape = bundle.image_shape  # (C, H, W)
        self.latent_dim = bundle.latent_dim
        self.synthesis_defaults: SynthesisParams = bundle.langevin.synthesis
        self.completion_defaults: CompletionParams = bundle.completion.params(bundle.langevin)

    @classmethod
    def load(
        cls, bundle: Bundle, *, device: str = "auto", threads: int = 0, spin: bool = False, shards: int = 0
    ) -> Engine:
        """The engine of a bundle already read and verified: its sessions opened (serving.sessions). The one
        place an engine is assembled: coop-serve at start, SIGHUP's reload and `open` all come here."""
        return cls(bundle, open_sessions(bundle, device=device, threads=threads, spin=spin, shards=shards))

    @classmethod
    def open(
        cls, bundle_dir, *, device: str = "auto", threads: int = 0, spin: bool = False, shards: int = 0
    ) -> Engine:
        """Reads and verifies the bundle (raises contract.bundle.BundleError), then `load`."""
        return cls.load(read_bundle(bundle_dir), device=device, threads=threads, spin=spin, shards=shards)

    def draft(self, seeds: Sequence[int]) -> np.ndarray:
        """Drafts Ŷ = g(X), X drawn from each seed's rng as synthesis draws it: (N, C, H, W)."""
        return sampling.drafts(self.backend, sampling.rngs_for(seeds))

    def synthesis_steps(self, seeds: Sequence[int], params: SynthesisParams | None = None) -> Steps:
        return sampling.synthesis_steps(self.backend, seeds, params or self.synthesis_defaults)

    def synthesize(
        self,
        seeds: Sequence[int],
        params: SynthesisParams | None = None,
        *,
        should_stop: StopFn | None = None,
    ) -> Samples:
        """Drafts then K descriptor Langevin steps, image i from seeds[i]; `params` None = the bundle's."""
        return sampling.run(self.synthesis_steps(seeds, params), should_stop)

    def completion_steps(
        self,
        images: np.ndarray,
        masks: np.ndarray,
        seeds: Sequence[int],
        params: CompletionParams | None = None,
    ) -> Steps:
        return sampling.completion_steps(
            self.backend, images, masks, seeds, params or self.completion_defaults
        )

    def complete(
        self,
        images: np.ndarray,
        masks: np.ndarray,
        seeds: Sequence[int],
        params: CompletionParams | None = None,
        *,
        should_stop: StopFn | None = None,
    ) -> Samples:
        """Recovers the missing pixels (mask = 1) of `images` (N, C, H, W); observed pixels come back
        exactly."""
        return sampling.run(self.completion_steps(images, masks, seeds, params), should_stop)

    def energy(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """E(Y) = ‖Y‖²/(2s²) − f(Y) (lower = more typical) and f(Y), each (N,) float32."""
        return sampling.measure(self.backend, images)

    @property
    def has_ood(self) -> bool:
        return "typicality" in self.sessions.sessions

    def ood(self, images: np.ndarray) -> np.ndarray | None:
        """The bundle's out-of-distribution score (typicality.onnx, trainer/ood.py), (N,) float32, > 1 =
        flagged at a 5% false-alarm rate on calibration images; None when the bundle has none."""
        if not self.has_ood:
            return None
        feed = {"y": np.ascontiguousarray(images, dtype=np.float32)}
        (ood,) = self.sessions["typicality"].run(["ood"], feed)
        return ood  # (N,)
