"""Export the nets as a model bundle (contract.bundle): four ONNX graphs and a manifest, verified.

    export_bundle(descriptor, generator, "runs/x/bundle", langevin={...})  # -> Path of the verified bundle
    export_run(descriptor, generator, train_config, "runs/x/bundle")       # the same, settings from the run

The format, the manifest and its verification belong to contract.bundle (the service reads bundles through
the same module); this module owns what only the writer can check. A bundle is declared good only after
every graph passed `onnx.checker`, has the contract's inputs and outputs, and ran in ONNX Runtime (CPU) on a
random batch whose size differs from the traced one, matching PyTorch (autograd from trainer.langevin for
the gradients, so the explicit backward of trainer.grads is checked on every export) within RTOL: 3e-4 of
each output's largest value, float32 rounding on the presets' largest nets (derived below). Everything is
written into a temporary sibling directory, read back with
`contract.bundle.read_bundle`, and only then renamed into place; an existing bundle is replaced only after
the new one verified.

The default exporter is the TorchScript one (``dynamo=False``): on this 2-core CPU its graphs took ~0.1-0.3 s
each against ~1-2.5 s with ``dynamo=True``, and ORT runs both at the same speed. It is deprecated since torch
2.9 but present through 2.14 (the pinned range); ``exporter="dynamo"`` selects the other.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import math
import os
import shutil
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from coopnets.contract import bundle
from coopnets.contract.files import make_temp_dir, replace_dir
from coopnets.trainer.config import TrainConfig
from coopnets.trainer.grads import (
    DescriptorWithGrad,
    Generate,
    GeneratorGrad,
    LangevinStep,
    frozen_copy,
    kink_margin,
)
from coopnets.trainer.langevin import (
    descriptor_score_and_grad,
    descriptor_step,
    latent_energy,
    latent_energy_grad,
)
from coopnets.trainer.pack import pack_bundle
from torch import nn

log = logging.getLogger(__name__)

EXPORTERS = ("torchscript", "dynamo")

# RTOL bounds max |onnx − torch| / max |torch| per output: float32 rounding on both sides. A sum of n float32
# terms errs by about √n·u of its size (u = 2⁻²⁴; Higham and Mary's probabilistic model, the errors random
# and independent, λ = 8 its tail factor as in tests/float32_bound.py), whatever order ORT and PyTorch sum in;
# each layer adds its own and passes the earlier ones on at their relative size (so their √n add), and two
# sides, each within that of the exact value, are within √2 of it of each other. The longest chain of sums
# in the presets' graphs is scene64's generator_grad (latent 100, 3 channels): its forward (the 1×1 input's
# matmul, then 5×5 stride-2 transposed convs with up to 9 taps per output pixel) and its backward (convs
# over C_out·5·5, then 512·4·4); the descriptor's ∂f/∂Y depends on the forward only through the leaky ReLUs'
# slopes, so its chain is shorter (the inputs are kept away from their kinks: _check_case), and so is
# typicality's (the first block, means and variances over H·W, a 128-wide whitening).
_LONGEST_CHAIN = (100, 512 * 9, 256 * 9, 128 * 9, 64 * 9, 3 * 25, 64 * 25, 128 * 25, 256 * 25, 512 * 16)
RTOL = 8 * math.sqrt(2) * 2.0**-24 * sum(math.sqrt(n) for n in _LONGEST_CHAIN)  # 3.1e-4


def _pack_rtol(r: float) -> float:
    """The relative L2 error per output that weights rounded with relative rms error r (trainer/pack.py) give
    along the presets' longest chain (above: 10 affine layers, 4 leaky ReLUs), twice its expected value under
    independent rounding errors. The 10 layers each move their output by r of its size, in quadrature: √10·r.
    After k layers a pre-activation has moved by Δ = √k·r of its rms, which takes a fraction 0.32·Δ of a
    leaky ReLU's units across 0 (a normal variable's density at 0, 0.4 / rms, times the mean move 0.8·Δ·rms,
    half of them towards 0); the gradient through such a unit changes by (1 − 0.2) of itself against a mean
    square slope of (1 + 0.2²) / 2 = 0.52: a squared relative error of 0.8² / 0.52 · 0.32·Δ per ReLU. The L2
    over an output's many elements stays near its expectation; the factor 2 covers the model's
    approximations (normal pre-activations, f's sum of 100 outputs cancelling on untrained nets)."""
    flips = sum(0.8**2 / 0.52 * 0.32 * math.sqrt(k) * r for k in range(1, 5))
    return 2 * math.sqrt(10 * r * r + flips)


# A broken packing (a wrong offset or scale) is off by O(1); what the rounding does to samples is measured by
# coop-eval instead. float16: |relative error| <= 2⁻¹¹, uniform: r = 2⁻¹¹/√3 (PACK_RTOL 0.052). int8:
# |error| <= step/2 with step = max|row|/127, uniform: rms max|row|/(127·√12), and max|row| / rms(row) is
# √(2 ln n) for a normal row of n weights, n <= 65536 (scene64's last descriptor layer): r = 4.71/(127·√12)
# (PACK_RTOL 0.33).
PACK_RTOL = {
    "float32": RTOL,  # float32 storage is bit-exact: the float32 check again
    "float16": _pack_rtol(2.0**-11 / math.sqrt(3)),
    "int8": _pack_rtol(math.sqrt(2 * math.log(65536)) / (127 * math.sqrt(12))),
}
TRACE_BATCH, CHECK_BATCH = 2, 3  # the check runs another batch size than the trace: the batch axis is dynamic
CANDIDATES = 16  # random inputs drawn per checked one (the smoothest are kept, see _check_case)


class ExportError(RuntimeError):
    """An exported graph failed onnx.checker or did not match PyTorch: the bundle was not written."""


@dataclass(frozen=True)
class _Graph:
    """One graph of the bundle: the module to export; its input and output names are the contract's."""

    name: str
    module: nn.Module

    @property
    def inputs(self) -> tuple[str, ...]:
        return tuple(name for name, _ in bundle.ALL_GRAPHS[self.name][0])

    @property
    def outputs(self) -> tuple[str, ...]:
        return tuple(name for name, _ in bundle.ALL_GRAPHS[self.name][1])

    @property
    def scalars(self) -> tuple[str, ...]:
        """Inputs of shape [] (no batch axis)."""
        return tuple(name for name, dims in bundle.ALL_GRAPHS[self.name][0] if not dims)

    @property
    def file(self) -> str:
        return f"{self.name}.onnx"


def langevin_manifest(config: TrainConfig) -> dict:
    """The bundle's Langevin defaults: those the descriptor was trained with."""
    return {
        "s": config.s,
        "delta": config.delta,
        "steps": config.langevin_steps,
        "sigma": config.sigma,
        "noise": config.langevin_noise,
    }


def recalibrate_batchnorm(
    generator: nn.Module, latent_dim: int, batch: int, batches: int, seed: int = 0
) -> nn.Module:
    """A copy of `generator` whose BatchNorm running statistics are recomputed at its final weights: the
    equal-weight average of the batch statistics of `batches` batches of `batch` fresh latents, the batch
    size it trained with. The running averages of training mix in statistics of weights long since changed
    (momentum 0.1); eval-mode drafts then drift from the batch-statistics drafts the descriptor was trained
    against (docs/training.md measures the gap and what it does to FD). The weights are untouched."""
    g = copy.deepcopy(generator).cpu().float()
    bns = [m for m in g.modules() if isinstance(m, nn.BatchNorm2d)]
    if not bns or batches < 1:
        return g.eval()
    rng = torch.Generator().manual_seed(seed)
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None  # cumulative moving average: every batch counts the same
    g.train()
    with torch.no_grad():
        for _ in range(batches):
            g(torch.randn(batch, latent_dim, generator=rng))  # (batch, d) -> updates the running stats
    for bn in bns:
        bn.momentum = 0.1
    return g.eval()


def export_run(
    descriptor: nn.Module,
    generator: nn.Module,
    config: TrainConfig,
    out_dir: str | os.PathLike,
    pixels: np.ndarray | None = None,
    source: dict | None = None,
    completion: dict | None = None,
) -> Path:
    """The nets of a training run as a bundle: its Langevin settings as the defaults, its config stored,
    the generator's BatchNorm statistics recalibrated first (`--bn-recalibrate` batches; 0 keeps training's
    running averages), the OOD score calibrated on its training images (`pixels`, uint8 (N, C, H, W), when
    the caller holds them; else read again from its --dataset). `source`: where the weights come from
    ({"checkpoint": name, "iteration": N}), the manifest's `source`. `completion`: completion defaults that
    differ from DEFAULT_COMPLETION (export_bundle's argument)."""
    if config.bn_recalibrate:
        generator = recalibrate_batchnorm(
            generator, config.latent_dim, config.num_chains, config.bn_recalibrate, config.seed
        )
    from coopnets.trainer.ood import calibration_images

    return export_bundle(
        descriptor,
        generator,
        out_dir,
        langevin=langevin_manifest(config),
        training=config.to_dict(),
        calibration=calibration_images(config, pixels),
        weights=config.weights,
        source=source,
        completion=completion,
    )


def export_bundle(
    descriptor: nn.Module,
    generator: nn.Module,
    out_dir: str | os.PathLike,
    *,
    langevin: dict,
    completion: dict | None = None,
    training: dict | None = None,
    exporter: str = "torchscript",
    calibration: torch.Tensor | None = None,
    weights: str = "float32",
    source: dict | None = None,
) -> Path:
    """Export both nets (copied to CPU, float32, eval mode) as a verified bundle at `out_dir`; returns it.

    langevin:   {"s", "delta", "steps", "sigma", "noise"}, the sampling defaults written to the manifest
    completion: {"latent_steps", "latent_step_size", "latent_noise", "refine_steps", "restarts",
                "residual_fill", "average_restarts", "residual_interpolant"} (the manifest's keys, as the
                trainer's flags give them); missing keys (or None) take contract.bundle.CompletionDefaults'
                defaults
    training:   the resolved training config (JSON-serialisable), stored as the manifest's "training"
    calibration: training images (N, C, H, W) in [-1, 1] for the out-of-distribution score
                (typicality.onnx, trainer/ood.py); None = a bundle without it
    weights:    how weights.bin stores the weights (contract.bundle.STORAGE, trainer/pack.py); the graphs
                are checked against PyTorch in float32 first, then again after packing within PACK_RTOL
    source:     where the weights come from ({"checkpoint": name, "iteration": N}), stored as the
                manifest's `source`
    """
    _check_arguments(descriptor, generator, langevin, weights, exporter)
    descriptor, generator = frozen_copy(descriptor), frozen_copy(generator)
    out_dir = Path(out_dir)
    _check_replaceable(out_dir)
    graphs, ood = _graphs(descriptor, generator, calibration)
    tmp = make_temp_dir(out_dir)
    try:
        graph_io = _write_graphs(tmp, graphs, descriptor, generator, langevin, exporter, weights)
        bundle.write_manifest(
            tmp,
            net=dataclasses.asdict(descriptor.spec),
            image_shape=descriptor.spec.image_shape,
            latent_dim=descriptor.spec.latent_dim,
            langevin=langevin,
            completion=bundle.CompletionDefaults(**(completion or {})),  # missing keys: the defaults
            graph_io=graph_io,
            training=training,
            ood=ood,
            weights={"storage": weights},
            writer=_writer(source, exporter),
        )
        bundle.read_bundle(tmp)  # the reader's verification, before anything is replaced
        replace_dir(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.info("exported bundle %s (%s, %d graphs)", out_dir, descriptor.spec.arch, len(graphs))
    return out_dir


def _check_arguments(descriptor, generator, langevin: dict, weights: str, exporter: str) -> None:
    """Refuse what export_bundle cannot write, before the minutes of export (write_manifest would refuse
    missing Langevin settings too, but only after them)."""
    missing = [k for k in bundle.LANGEVIN_KEYS if k not in langevin]
    if missing:
        raise bundle.BundleError(
            f"langevin settings lack {', '.join(missing)}: give {', '.join(bundle.LANGEVIN_KEYS)}"
        )
    if weights not in bundle.STORAGE:
        raise ValueError(f"weight storage {weights!r}: use one of {', '.join(bundle.STORAGE)}")
    if exporter not in EXPORTERS:
        raise ValueError(f"unknown exporter {exporter!r}: use one of {', '.join(EXPORTERS)}")
    if generator.spec != descriptor.spec:
        raise ValueError(f"descriptor and generator disagree: {descriptor.spec} vs {generator.spec}")


def _graphs(descriptor, generator, calibration: torch.Tensor | None) -> tuple[list[_Graph], dict | None]:
    """The bundle's graphs (the contract's four, and typicality when `calibration` images are given) and the
    manifest's OOD section (None without calibration)."""
    graphs = [
        _Graph("generator", Generate(generator).eval()),
        _Graph("descriptor", DescriptorWithGrad(descriptor).eval()),
        _Graph("langevin_step", LangevinStep(descriptor).eval()),
        _Graph("generator_grad", GeneratorGrad(generator).eval()),
    ]
    if calibration is None:
        return graphs, None
    from coopnets.trainer.ood import calibrate

    typicality, ood = calibrate(descriptor, calibration.float().cpu())
    return [*graphs, _Graph("typicality", typicality)], ood


def _write_graphs(
    tmp: Path, graphs: list[_Graph], descriptor, generator, langevin: dict, exporter: str, weights: str
) -> dict:
    """Export every graph into `tmp` and pack their weights, each graph checked against PyTorch on inputs
    drawn before any was traced (and before packing too when the weights are rounded); returns their inputs
    and outputs as the manifest records them."""
    spec = descriptor.spec
    rng = torch.Generator().manual_seed(0)
    checks = {g.name: _check_case(g, descriptor, generator, langevin, rng) for g in graphs}
    graph_io = {}
    for graph in graphs:
        path = tmp / graph.file
        graph_io[graph.name] = _export_checked(
            graph, _inputs(graph.inputs, spec, langevin, TRACE_BATCH, rng), path, spec, exporter
        )
        if weights != "float32":  # the exact math first; a float32 packing is checked at RTOL below
            _compare(graph, path, *checks[graph.name])
    packed = pack_bundle(tmp, [g.name for g in graphs], weights)
    for graph in graphs:
        _compare(graph, tmp / graph.file, *checks[graph.name], rtol=PACK_RTOL[weights], packed=weights)
    log.info("weights.bin: %.1f MB (%s)", packed[bundle.WEIGHTS] / 1e6, weights)
    return graph_io


def _export_checked(graph: _Graph, trace_args: tuple, path: Path, spec, exporter: str) -> dict:
    """One graph traced on `trace_args` into `path`, passed by onnx.checker and held to the contract's inputs
    and outputs; returns them as read back from the file."""
    _export(graph, trace_args, path, exporter)
    onnx.checker.check_model(str(path), full_check=True)
    io = _graph_io(path)
    bundle.check_graph_io(
        str(path),
        graph.name,
        [(v["name"], v["shape"]) for v in io["inputs"]],
        [(v["name"], v["shape"]) for v in io["outputs"]],
        spec.image_shape,
        spec.latent_dim,
    )
    return io


def _writer(source: dict | None, exporter: str) -> dict:
    """The manifest's record of what wrote the bundle: the weights' source, the exporter, the versions."""
    return {
        **({"source": dict(source)} if source else {}),
        "exporter": exporter,
        "versions": bundle.versions(
            torch=torch.__version__, onnx=onnx.__version__, onnxruntime=ort.__version__
        ),
    }


# --- building blocks ---------------------------------------------------------------------------------------


def _inputs(names, spec, langevin: dict, n: int, rng: torch.Generator) -> tuple[torch.Tensor, ...]:
    """Random inputs called `names` at batch `n`: images in [-1, 1], binary masks (1 = missing), N(0, I)
    latents, the langevin settings as scalars."""
    c, h, w = spec.image_shape
    make = {
        "z": lambda: torch.randn(n, spec.latent_dim, generator=rng),  # (N, d)
        "y": lambda: torch.rand(n, c, h, w, generator=rng) * 2 - 1,  # (N, C, H, W)
        "noise": lambda: torch.randn(n, c, h, w, generator=rng),
        "mask": lambda: (torch.rand(n, c, h, w, generator=rng) < 0.5).float(),
        "delta": lambda: torch.tensor(float(langevin["delta"])),
        "s": lambda: torch.tensor(float(langevin["s"])),
        "sigma": lambda: torch.tensor(float(langevin["sigma"])),
    }
    return tuple(make[name]() for name in names)


def _check_case(graph: _Graph, descriptor, generator, langevin: dict, rng: torch.Generator) -> tuple:
    """Inputs at CHECK_BATCH for `graph` and the PyTorch outputs they must give (autograd for gradients).

    Of CANDIDATES random inputs per slot, those farthest from a leaky-ReLU kink are kept (see
    trainer.grads.kink_margin): at a kink the gradient jumps, and ORT's and PyTorch's float32 forwards may
    fall on different sides (measured: one pre-activation of 6e-8 gave a 2e-3 relative error in ∂U/∂z)."""
    args = _inputs(graph.inputs, descriptor.spec, langevin, CHECK_BATCH * CANDIDATES, rng)
    named = dict(zip(graph.inputs, args, strict=True))
    if graph.name == "generator_grad":
        margin = kink_margin(generator, named["z"])  # the kinks of ∂U/∂z are those of g's forward at z
    elif "y" in named:
        margin = kink_margin(descriptor, named["y"])
    else:
        margin = torch.zeros(CHECK_BATCH * CANDIDATES)  # a plain forward is continuous: no selection
    keep = margin.argsort(descending=True, stable=True)[:CHECK_BATCH].sort().values
    args = tuple(a if name in graph.scalars else a[keep] for name, a in named.items())
    if graph.name == "typicality":  # a plain forward: the module is its own reference
        with torch.no_grad():
            return args, (graph.module(*args),)
    return args, _reference_outputs(graph.name, descriptor, generator, args)


def _reference_outputs(name: str, descriptor, generator, args) -> tuple[torch.Tensor, ...]:
    """What each graph must compute, in plain PyTorch with autograd (trainer.langevin)."""
    with torch.no_grad():
        if name == "generator":
            (z,) = args
            return (generator(z),)
        if name == "descriptor":
            (y,) = args
            return descriptor_score_and_grad(descriptor, y)
        if name == "langevin_step":
            y, noise, mask, delta, s = args
            f, grad = descriptor_score_and_grad(descriptor, y)
            return descriptor_step(y, grad, noise, mask, delta, s), f
        z, y, mask, sigma = args
        grad_z = latent_energy_grad(generator, z, y, mask, float(sigma))  # (N, d)
        u = latent_energy(generator, z, y, mask, float(sigma))  # (N,)
        return grad_z, generator(z), u


def _export(graph: _Graph, args: tuple[torch.Tensor, ...], path: Path, exporter: str) -> None:
    batched = [name for name in graph.inputs if name not in graph.scalars]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # the TorchScript exporter's notice (module doc)
        # grads.py reads H and W as Python ints (static by design: only the batch axis is dynamic)
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        # the flipped sub-kernels of grads.conv_transpose2d_as_conv: ONNX Runtime folds them at session start
        warnings.filterwarnings("ignore", message="Constant folding - Only steps=1", category=UserWarning)
        if exporter == "torchscript":
            axes = {name: {0: bundle.BATCH} for name in (*batched, *graph.outputs)}
            torch.onnx.export(
                graph.module,
                args,
                str(path),
                input_names=list(graph.inputs),
                output_names=list(graph.outputs),
                opset_version=bundle.OPSET,
                dynamo=False,
                dynamic_axes=axes,
            )
            # The exporter may declare an output's static sizes as symbols (seen after the pixel shuffle and
            # slices of grads.conv_transpose2d_as_conv); ONNX shape inference recovers them, so that the
            # graph says what the contract promises and check_graph_io can hold it to that.
            onnx.save(onnx.shape_inference.infer_shapes(onnx.load(str(path)), strict_mode=True), str(path))
        else:
            warnings.simplefilter("ignore", FutureWarning)  # torch.export internals (pytree deprecations)
            warnings.filterwarnings("ignore", message=".*axis name", category=UserWarning)  # N is N: benign
            batch = torch.export.Dim(bundle.BATCH, min=1)
            shapes = tuple(None if name in graph.scalars else {0: batch} for name in graph.inputs)
            program = torch.onnx.export(
                graph.module,
                args,
                input_names=list(graph.inputs),
                output_names=list(graph.outputs),
                opset_version=bundle.OPSET,
                dynamo=True,
                dynamic_shapes=shapes,
                verbose=False,
            )
            program.save(str(path))


def _compare(graph: _Graph, path: Path, args, expected, rtol: float = RTOL, packed: str = "") -> None:
    """Run the exported graph in ONNX Runtime (CPU) and compare each output with PyTorch; `packed` names the
    weight storage when the graph was packed (trainer/pack.py), whose rounding `rtol` then allows."""
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    feed = {name: a.numpy() for name, a in zip(graph.inputs, args, strict=True)}
    got = session.run(list(graph.outputs), feed)
    for name, g, e in zip(graph.outputs, got, expected, strict=True):
        e = e.numpy()
        if g.shape != e.shape:
            raise ExportError(f"{graph.file}: output {name} has shape {g.shape}, PyTorch gives {e.shape}")
        if packed and packed != "float32":  # rounded weights: the error of the whole output, not its worst
            # element, which a pre-activation moved across a leaky-ReLU kink by the rounding may dominate
            err = float(np.linalg.norm(g - e) / max(float(np.linalg.norm(e)), 1e-12))
            if not err < rtol:
                raise ExportError(
                    f"{graph.file}: output {name} with {packed} weights differs from PyTorch by {err:.2e} "
                    f"(relative L2, >= {rtol:g}): the packing is broken; export with --weights float32"
                )
            continue
        err = float(np.abs(g - e).max() / max(float(np.abs(e).max()), 1e-12))
        if not err < rtol:
            raise ExportError(
                f"{graph.file}: output {name} differs from PyTorch (relative error {err:.2e} >= {rtol:g}); "
                "the explicit backward in trainer/grads.py is out of sync with trainer/nets.py"
            )


def _graph_io(path: Path) -> dict:
    """Input and output names, shapes (contract.bundle.BATCH for the batch axis) and dtypes, read back from
    the ONNX file."""
    model = onnx.load(str(path), load_external_data=False)

    def describe(values) -> list[dict]:
        out = []
        for v in values:
            t = v.type.tensor_type
            dims = [d.dim_param if d.dim_param else d.dim_value for d in t.shape.dim]
            dtype = str(onnx.helper.tensor_dtype_to_np_dtype(t.elem_type))
            out.append({"name": v.name, "shape": dims, "dtype": dtype})
        return out

    return {"inputs": describe(model.graph.input), "outputs": describe(model.graph.output)}


def _check_replaceable(out_dir: Path) -> None:
    """Refuse to replace a directory that is neither empty nor a bundle: export never deletes user files."""
    replaceable = out_dir.is_dir() and (not any(out_dir.iterdir()) or bundle.is_bundle(out_dir))
    if out_dir.exists() and not replaceable:
        raise ValueError(
            f"{out_dir} exists and is not a model bundle; choose a new output directory or remove it"
        )
