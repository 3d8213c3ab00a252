"""Write and verify the model bundle (docs/architecture.md, "The model bundle"): four ONNX graphs, a manifest.

    export_bundle(descriptor, generator, "runs/x/bundle", langevin={...})  # -> Path of the verified bundle
    verify_bundle("runs/x/bundle")                                          # -> manifest dict, or BundleError

A bundle is declared good only after every graph passed `onnx.checker` and ran in ONNX Runtime (CPU) on a
random batch whose size differs from the traced one, matching PyTorch within a relative error of 1e-4
(autograd from trainer.langevin for the gradients, so the explicit backward of trainer.grads is checked on
every export). Everything is written into a temporary sibling directory that is renamed into place; an
existing bundle is replaced only after the new one verified.

The default exporter is the TorchScript one (``dynamo=False``): on this 2-core CPU its graphs took ~0.1-0.3 s
each against ~1-2.5 s with ``dynamo=True``, and ORT runs both at the same speed. It is deprecated since torch
2.9 but present through 2.14 (the pinned range); ``exporter="dynamo"`` selects the other.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.metadata
import json
import logging
import os
import shutil
import tempfile
import warnings
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from torch import nn

from trainer.grads import DescriptorWithGrad, GeneratorGrad, LangevinStep, frozen_copy, kink_margin
from trainer.langevin import descriptor_score_and_grad, descriptor_step, latent_energy_grad

log = logging.getLogger(__name__)

FORMAT = "coopnets.bundle"
FORMAT_VERSION = 1
OPSET = 18
MANIFEST = "manifest.json"
EXPORTERS = ("torchscript", "dynamo")
RTOL = 1e-4  # max |onnx − torch| / max |torch|, per output
TRACE_BATCH, CHECK_BATCH = 2, 3  # the check runs another batch size than the trace: the batch axis is dynamic
CANDIDATES = 16  # random inputs drawn per checked one (the smoothest are kept, see _check_case)

LANGEVIN_KEYS = ("s", "delta", "steps", "sigma", "noise")
# Completion defaults, measured for the 28×28 net (`python bench/export_step.py --completion CKPT`): on a
# 200-iteration Fashion-MNIST model the Gauss-Newton Hessian of U(z) had top eigenvalue λ ≈ 960 (median
# image; 1760 max), so gradient steps are stable for (η²/2)·λ < 2, i.e. η ≲ 0.05-0.065; η = 0.05 gave the best
# PSNR on the hidden pixels of a centre 14×14 hole (11.5 dB at L = 100, 11.4 at 200; η = 0.1 oscillates).
# Restarts and refinement, measured on the reference run's 2000-iteration checkpoint (100 t10k images,
# PSNR of the missing region, centre 12×12 / 16×16 / left half): R = 4 chains of L = 100 raise latent-only
# from 15.57 / 14.32 / 14.46 dB (R = 1) to 15.83 / – / –; R = 8 gives 15.84 / 14.66 / 14.65 (no better
# than 4 on centre 12, at twice the cost). After them K = 10 refinement steps add 0.2-0.3 dB (16.17 at
# R = 4), K = 15 less (16.05), and K = 50 loses (ckpt 1000: 14.29 at K = 15, 12.20 at K = 50). Larger η
# loses: η = 0.06 at L = 200 gave 13.53 dB against 13.69 for η = 0.05 at L = 100 (ckpt 1000), η = 0.07
# 11.79 vs 12.31 (ckpt 500, L = 100).
DEFAULT_COMPLETION = {
    "latent_steps": 100,
    "latent_step_size": 0.05,
    "latent_noise": False,
    "refine_steps": 10,
    "restarts": 4,
}


class BundleError(ValueError):
    """A bundle that is missing, malformed, or whose files do not match their manifest sha256."""


class ExportError(RuntimeError):
    """An exported graph failed onnx.checker or did not match PyTorch: the bundle was not written."""


@dataclass(frozen=True)
class _Graph:
    """One graph of the bundle: the module to export and how to call it."""

    name: str
    module: nn.Module
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    scalars: tuple[str, ...] = ()  # inputs of shape [] (no batch axis)

    @property
    def file(self) -> str:
        return f"{self.name}.onnx"


def export_bundle(
    descriptor: nn.Module,
    generator: nn.Module,
    out_dir: str | os.PathLike,
    *,
    langevin: dict,
    completion: dict | None = None,
    training: dict | None = None,
    exporter: str = "torchscript",
) -> Path:
    """Export both nets (copied to CPU, float32, eval mode) as a verified bundle at `out_dir`; returns it.

    langevin:   {"s", "delta", "steps", "sigma", "noise"}, the sampling defaults written to the manifest
    completion: {"latent_steps", "latent_step_size", "latent_noise", "refine_steps", "restarts"}; missing
                keys (or None) take DEFAULT_COMPLETION
    training:   the resolved training config (JSON-serialisable), stored as the manifest's "training"
    """
    missing = [k for k in LANGEVIN_KEYS if k not in langevin]
    if missing:
        raise ValueError(f"langevin settings lack {', '.join(missing)}: give {', '.join(LANGEVIN_KEYS)}")
    completion = {**DEFAULT_COMPLETION, **(completion or {})}
    if exporter not in EXPORTERS:
        raise ValueError(f"unknown exporter {exporter!r}: use one of {', '.join(EXPORTERS)}")
    spec = descriptor.spec
    if generator.spec != spec:
        raise ValueError(f"descriptor and generator disagree: {spec} vs {generator.spec}")
    descriptor, generator = frozen_copy(descriptor), frozen_copy(generator)
    out_dir = Path(out_dir)
    _check_replaceable(out_dir)

    graphs = [
        _Graph("generator", generator, ("z",), ("y",)),
        _Graph("descriptor", DescriptorWithGrad(descriptor).eval(), ("y",), ("f", "grad")),
        _Graph(
            "langevin_step",
            LangevinStep(descriptor).eval(),
            ("y", "noise", "mask", "delta", "s"),
            ("y_next", "f"),
            scalars=("delta", "s"),
        ),
        _Graph(
            "generator_grad",
            GeneratorGrad(generator).eval(),
            ("z", "y", "mask", "sigma"),
            ("grad_z", "y_gen", "u"),
            scalars=("sigma",),
        ),
    ]
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
    tmp.chmod(0o755)  # mkdtemp makes it private; a bundle is meant to be read by the service's user too
    try:
        rng = torch.Generator().manual_seed(0)
        checks = {g.name: _check_case(g, descriptor, generator, langevin, rng) for g in graphs}
        manifest_graphs, files = {}, {}
        for graph in graphs:
            path = tmp / graph.file
            trace_args = _inputs(graph.inputs, spec, langevin, TRACE_BATCH, rng)
            _export(graph, trace_args, path, exporter)
            onnx.checker.check_model(str(path), full_check=True)
            _compare(graph, path, *checks[graph.name])
            manifest_graphs[graph.name] = {"file": graph.file, **_graph_io(path)}
            files[graph.file] = {"sha256": _sha256(path), "bytes": path.stat().st_size}
        manifest = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "created": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "net": dataclasses.asdict(spec),
            "image": {"shape": list(spec.image_shape), "value_range": [-1.0, 1.0]},
            "latent_dim": spec.latent_dim,
            "langevin": {k: langevin[k] for k in LANGEVIN_KEYS},
            "completion": completion,
            "opset": OPSET,
            "exporter": exporter,
            "graphs": manifest_graphs,
            "files": files,
            "training": training or {},
            "versions": _versions(),
        }
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2, default=str) + "\n")
        verify_bundle(tmp)
        _replace(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.info("exported bundle %s (%s, %d graphs)", out_dir, spec.arch, len(graphs))
    return out_dir


def verify_bundle(path: str | os.PathLike) -> dict:
    """The manifest of the bundle at `path` after checking its format and every file's size and sha256;
    BundleError (one line saying what is wrong) otherwise."""
    path = Path(path)
    manifest_path = path / MANIFEST
    if not manifest_path.is_file():
        raise BundleError(f"{path} is not a model bundle: no {MANIFEST} (export one with coop-export)")
    try:
        manifest = json.loads(manifest_path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise BundleError(f"{manifest_path} is not valid JSON ({e}); re-export the bundle") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise BundleError(f"{manifest_path} is not a {FORMAT} manifest; re-export the bundle")
    if manifest.get("format_version") != FORMAT_VERSION:
        raise BundleError(
            f"{path} has bundle format_version {manifest.get('format_version')!r}, this code reads "
            f"{FORMAT_VERSION}; re-export it with this version of coop-export"
        )
    files, graphs = manifest.get("files"), manifest.get("graphs")
    if not isinstance(files, dict) or not isinstance(graphs, dict):
        raise BundleError(f"{manifest_path} lacks its 'files' or 'graphs' table; re-export the bundle")
    for name in ("generator", "descriptor", "langevin_step", "generator_grad"):
        file = (graphs.get(name) or {}).get("file")
        if file not in files:
            raise BundleError(f"{manifest_path} lists no file for graph {name!r}; re-export the bundle")
    for file, meta in files.items():
        f = path / file
        if Path(file).name != file or not f.is_file():
            raise BundleError(f"{path} is incomplete: {file} is missing; re-export the bundle")
        size = f.stat().st_size
        if size != meta.get("bytes") or _sha256(f) != meta.get("sha256"):
            raise BundleError(
                f"{f} does not match its sha256 in {MANIFEST} (corrupted or modified); re-export the bundle"
            )
    return manifest


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
        y_gen = generator(z)  # (N, C, H, W)
        grad_z = latent_energy_grad(generator, z, y, mask, float(sigma))  # (N, d)
        resid = (1 - mask) * (y - y_gen)  # (N, C, H, W)
        u = resid.pow(2).flatten(1).sum(1) / (2 * sigma**2) + 0.5 * z.pow(2).sum(1)  # (N,)
        return grad_z, y_gen, u


def _export(graph: _Graph, args: tuple[torch.Tensor, ...], path: Path, exporter: str) -> None:
    batched = [name for name in graph.inputs if name not in graph.scalars]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # the TorchScript exporter's notice (module doc)
        # grads.py reads H and W as Python ints (static by design: only the batch axis is dynamic)
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        if exporter == "torchscript":
            axes = {name: {0: "N"} for name in (*batched, *graph.outputs)}
            torch.onnx.export(
                graph.module,
                args,
                str(path),
                input_names=list(graph.inputs),
                output_names=list(graph.outputs),
                opset_version=OPSET,
                dynamo=False,
                dynamic_axes=axes,
            )
        else:
            warnings.simplefilter("ignore", FutureWarning)  # torch.export internals (pytree deprecations)
            warnings.filterwarnings("ignore", message=".*axis name", category=UserWarning)  # N is N: benign
            batch = torch.export.Dim("N", min=1)
            shapes = tuple(None if name in graph.scalars else {0: batch} for name in graph.inputs)
            program = torch.onnx.export(
                graph.module,
                args,
                input_names=list(graph.inputs),
                output_names=list(graph.outputs),
                opset_version=OPSET,
                dynamo=True,
                dynamic_shapes=shapes,
                verbose=False,
            )
            program.save(str(path))


def _compare(graph: _Graph, path: Path, args, expected) -> None:
    """Run the exported graph in ONNX Runtime (CPU) and compare each output with PyTorch."""
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    feed = {name: a.numpy() for name, a in zip(graph.inputs, args, strict=True)}
    got = session.run(list(graph.outputs), feed)
    for name, g, e in zip(graph.outputs, got, expected, strict=True):
        e = e.numpy()
        if g.shape != e.shape:
            raise ExportError(f"{graph.file}: output {name} has shape {g.shape}, PyTorch gives {e.shape}")
        err = float(np.abs(g - e).max() / max(float(np.abs(e).max()), 1e-12))
        if not err < RTOL:
            raise ExportError(
                f"{graph.file}: output {name} differs from PyTorch (relative error {err:.2e} >= {RTOL:g}); "
                "the explicit backward in trainer/grads.py is out of sync with trainer/nets.py"
            )


def _graph_io(path: Path) -> dict:
    """Input and output names, shapes ('N' for the batch axis) and dtypes, read back from the ONNX file."""
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


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _versions() -> dict:
    try:
        coopnets = importlib.metadata.version("coopnets")
    except importlib.metadata.PackageNotFoundError:
        coopnets = "unknown"
    return {
        "coopnets": coopnets,
        "torch": torch.__version__,
        "onnx": onnx.__version__,
        "onnxruntime": ort.__version__,
    }


def _check_replaceable(out_dir: Path) -> None:
    """Refuse to replace a directory that is neither empty nor a bundle: export never deletes user files."""
    if out_dir.exists() and not (out_dir.is_dir() and (not any(out_dir.iterdir()) or _is_bundle(out_dir))):
        raise ValueError(
            f"{out_dir} exists and is not a model bundle; choose a new output directory or remove it"
        )


def _is_bundle(path: Path) -> bool:
    try:
        return json.loads((path / MANIFEST).read_text()).get("format") == FORMAT
    except (OSError, ValueError, AttributeError):
        return False


def _replace(tmp: Path, out_dir: Path) -> None:
    """Move the verified `tmp` to `out_dir`. A directory cannot be renamed over a non-empty one, so the old
    bundle is first renamed aside (and put back if the second rename fails), then deleted."""
    if not out_dir.exists():
        os.replace(tmp, out_dir)
        return
    old = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.old-", dir=out_dir.parent))
    os.replace(out_dir, old / "bundle")
    try:
        os.replace(tmp, out_dir)
    except BaseException:
        os.replace(old / "bundle", out_dir)
        raise
    finally:
        shutil.rmtree(old, ignore_errors=True)
