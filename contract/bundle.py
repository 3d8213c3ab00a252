"""The model bundle: the only thing that joins the trainer and the service (docs/architecture.md).

A directory holding four ONNX graphs and `manifest.json`, format "coopnets.bundle" version 1:

    generator.onnx       z (N, d)                                 -> y (N, C, H, W) = g(z)
    descriptor.onnx      y (N, C, H, W)                           -> f (N,), grad (N, C, H, W) = ∂f/∂Y
    langevin_step.onnx   y, noise, mask (N, C, H, W); delta, s [] -> y_next (N, C, H, W), f (N,)
    generator_grad.onnx  z (N, d); y, mask (N, C, H, W); sigma [] -> grad_z (N, d), y_gen (N, C, H, W), u (N,)

and, from coopnets 0.2 on, one optional graph (bundles without it still load; the service then answers
Energy without an out-of-distribution score):

    typicality.onnx      y (N, C, H, W)                           -> ood (N,)

the out-of-distribution score (trainer/ood.py), calibrated on training images so that 95% of them score
below 1. The manifest's `ood` section says which score the graph computes and how it was calibrated: earlier
bundles ship the Mahalanobis distance of the descriptor's first-block feature statistics, newer ones the sum
of three calibrated tests (its `tests` list); the graph's inputs and outputs are the same.

From coopnets 0.3 on the graphs keep their large tensors in one shared file, `weights.bin` (ONNX external
data: each tensor once, though two graphs use it), listed in `files` like a graph; the manifest's `weights`
section says how they are stored (STORAGE: float32, or float16 / int8 decoded to float32 inside the graph,
trainer/pack.py). Older bundles, all inline, load as before.

Both sides go through this module: the exporter writes the manifest with `write_manifest` and reads the
result back with `read_bundle` before renaming the directory into place; the service loads with
`read_bundle` and checks its ONNX Runtime sessions' inputs and outputs with `check_graph_io`. So the format,
the defaults and every check are written once. `read_bundle` refuses, with one line saying what is wrong and
how to fix it: a missing or non-JSON manifest, another format or version, a missing section or graph, a
default out of its range (s, δ, σ > 0; step counts >= 0; 1 <= restarts <= 16), graph I/O that disagrees with
the image shape or latent size, and any file whose size or sha256 differs from the manifest.

Completion defaults are one typed object, CompletionDefaults: DEFAULT_COMPLETION is what an export writes,
LEGACY_COMPLETION what a manifest without a key meant (its `residual_fill`, `average_restarts` off and
`residual_interpolant` "harmonic"), so bundles written before a key existed answer as before.

The package ships trained bundles (models/, installed as coopnets.models; models/README.md says how each was
made): `reference` (Fashion-MNIST) and `cifar10` (CIFAR-10, color). Such a name in place of a directory means
the shipped bundle (`coop-serve --bundle cifar10`), and reading one, by name or by path, also checks its
manifest's sha256 against the pin in models/NAME.sha256, so a partial copy, a Git LFS pointer or a re-export
that was not re-pinned is refused with one line.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.metadata
import json
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from coopnets.contract.files import atomic_write_json, sha256_file
from coopnets.contract.sampling import (
    MAX_RESTARTS,
    MAX_STEP_SIZE,
    RESIDUAL_INTERPOLANTS,
    CompletionParams,
    SynthesisParams,
)

FORMAT = "coopnets.bundle"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
OPSET = 18
WEIGHTS = "weights.bin"  # the graphs' shared external data (optional)
STORAGE = ("float32", "float16", "int8")  # how weights.bin stores them; the arithmetic is float32 in all
BATCH = "N"  # the dynamic batch axis, in the manifest and in every graph

# name -> (inputs, outputs), each a tuple of (tensor name, dims); dims use the symbols below, () = a scalar
_IMG, _Z = ("N", "C", "H", "W"), ("N", "d")
GRAPHS: dict[str, tuple[tuple[tuple[str, tuple[str, ...]], ...], tuple[tuple[str, tuple[str, ...]], ...]]] = {
    "generator": ((("z", _Z),), (("y", _IMG),)),
    "descriptor": ((("y", _IMG),), (("f", ("N",)), ("grad", _IMG))),
    "langevin_step": (
        (("y", _IMG), ("noise", _IMG), ("mask", _IMG), ("delta", ()), ("s", ())),
        (("y_next", _IMG), ("f", ("N",))),
    ),
    "generator_grad": (
        (("z", _Z), ("y", _IMG), ("mask", _IMG), ("sigma", ())),
        (("grad_z", _Z), ("y_gen", _IMG), ("u", ("N",))),
    ),
}
OPTIONAL_GRAPHS = {"typicality": ((("y", _IMG),), (("ood", ("N",)),))}
ALL_GRAPHS = {**GRAPHS, **OPTIONAL_GRAPHS}

LANGEVIN_KEYS = ("s", "delta", "steps", "sigma", "noise")


def _shipped_dir() -> Path:
    """Where the shipped bundles are: the installed package `coopnets.models` (models/ of a clone or an
    editable install, or the wheel's copy), found by import name, not by a path relative to this file."""
    from importlib.resources import files

    return Path(str(files("coopnets.models")))


SHIPPED = _shipped_dir()
REFERENCE = "reference"  # the Fashion-MNIST model, the default of examples and tests
SHIPPED_NAMES = (REFERENCE, "cifar10")


def shipped_name(path: str | os.PathLike) -> str | None:
    """The shipped bundle `path` names by name (not a directory here), or None."""
    name = str(path)
    return name if name in SHIPPED_NAMES and not Path(path).is_dir() else None


class BundleError(ValueError):
    """The bundle cannot be written or served; the message says what is wrong and how to fix it."""


@dataclass(frozen=True)
class LangevinDefaults:
    """Descriptor Langevin as trained: reference std s, step size δ, K steps, generator noise σ, noise."""

    s: float
    delta: float
    steps: int
    sigma: float
    noise: bool

    @property
    def synthesis(self) -> SynthesisParams:
        """What a synthesis request that sets nothing gets."""
        return SynthesisParams(steps=self.steps, delta=self.delta, noise=self.noise)


@dataclass(frozen=True, kw_only=True)
class CompletionDefaults:
    """Latent Langevin steps L of size η (noise on/off) on R restarts (the lowest U kept, or the mean of their
    fills), then K descriptor refinement steps; field names are the manifest's `completion` keys.

    Each default is the best value measured for the 28×28 net (docs/results.md, "Completion defaults", with
    the commands that reproduce the tables). Why each holds:
    - latent_step_size 0.05: plain gradient steps on U(z) are stable while (η²/2)·λ_max < 2 for the top
      eigenvalue λ_max of U's Gauss-Newton Hessian; larger steps oscillate, smaller ones need more of them.
    - restarts 4, latent_steps 100, refine_steps 10: more chains or steps stop paying for their cost; longer
      descriptor refinement drifts away from the data towards the descriptor's sharper modes.
    - residual_fill: g(X) matches the visible pixels only approximately; carrying that residual into the hole
      corrects the fill where the hole has visible neighbours (random-pixel masks most).
    - average_restarts: under uncertainty the PSNR-optimal fill is the posterior mean, not its likeliest draw.
    - residual_interpolant "auto": the biharmonic residual wins where the hole is scattered and overshoots
      into blocks, so the hole's shape picks it (contract.inpainting.interpolate_residual)."""

    latent_steps: int = 100
    latent_step_size: float = 0.05
    latent_noise: bool = False
    refine_steps: int = 10
    restarts: int = 4
    residual_fill: bool = True
    average_restarts: bool = True
    residual_interpolant: str = "auto"

    def params(self, langevin: LangevinDefaults) -> CompletionParams:
        """What a completion request that sets nothing gets: refinement uses the bundle's δ and noise."""
        return CompletionParams(
            latent_steps=self.latent_steps,
            latent_step_size=self.latent_step_size,
            latent_noise=self.latent_noise,
            refine_steps=self.refine_steps,
            delta=langevin.delta,
            noise=langevin.noise,
            restarts=self.restarts,
            residual_fill=self.residual_fill,
            average_restarts=self.average_restarts,
            residual_interpolant=self.residual_interpolant,
        )

    def to_manifest(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


DEFAULT_COMPLETION = CompletionDefaults()
# What a manifest without a key meant when it was written: the keys added later (residual_fill,
# average_restarts, residual_interpolant) were off, so bundles written before them answer as they did.
LEGACY_COMPLETION = CompletionDefaults(
    residual_fill=False, average_restarts=False, residual_interpolant="harmonic"
)


@dataclass(frozen=True)
class Bundle:
    """A verified bundle directory: what the manifest says, typed. `manifest` is the raw JSON, kept for
    writers that copy it; readers use the fields."""

    path: Path
    manifest: dict
    digest: str  # sha256 of manifest.json, which holds the sha256 of every file
    image_shape: tuple[int, int, int]  # (C, H, W)
    latent_dim: int
    langevin: LangevinDefaults
    completion: CompletionDefaults
    graph_files: dict[str, Path] = field(default_factory=dict)
    format_version: int = FORMAT_VERSION
    created: str = ""
    arch: str = ""
    training: dict = field(default_factory=dict)  # the resolved TrainConfig it was trained with
    ood: dict = field(default_factory=dict)  # how typicality.onnx was calibrated; {} without the graph
    weights_storage: str = "float32"  # how the graphs' weights are stored (STORAGE); float32 before 0.3
    file_sha256: dict[str, str] = field(default_factory=dict)


# ---- graph I/O ---------------------------------------------------------------------------------------------


def expected_io(graph: str, image_shape: Sequence[int], latent_dim: int) -> tuple[list, list]:
    """The (name, dims) inputs and outputs `graph` must have for this image shape and latent size; the batch
    axis is BATCH."""
    c, h, w = image_shape
    sizes = {"N": BATCH, "C": c, "H": h, "W": w, "d": latent_dim}
    ins, outs = ALL_GRAPHS[graph]
    return tuple([(name, [sizes[s] for s in dims]) for name, dims in io] for io in (ins, outs))


def check_graph_io(
    where: str,
    graph: str,
    inputs: Iterable[tuple[str, Sequence]],
    outputs: Iterable[tuple[str, Sequence]],
    image_shape: Sequence[int],
    latent_dim: int,
) -> None:
    """BundleError unless the graph's (name, dims) inputs and outputs are those of the contract. A batch axis
    may be any symbolic name (not a fixed number); every other axis must be the expected size."""
    want_in, want_out = expected_io(graph, image_shape, latent_dim)
    for kind, want, got in (("inputs", want_in, list(inputs)), ("outputs", want_out, list(outputs))):
        got = [(str(name), list(dims)) for name, dims in got]
        if [n for n, _ in got] != [n for n, _ in want]:
            raise BundleError(
                f"{where}: graph {graph} has {kind} {[n for n, _ in got]}, the contract needs "
                f"{[n for n, _ in want]}: re-export the bundle with coop-export"
            )
        for (name, dims), (_, wdims) in zip(got, want, strict=True):
            ok = len(dims) == len(wdims) and all(
                (not isinstance(d, int) or d <= 0) if w == BATCH else d == w
                for d, w in zip(dims, wdims, strict=True)
            )
            if not ok:
                raise BundleError(
                    f"{where}: graph {graph} {name} has shape {dims}, the manifest's image shape "
                    f"{list(image_shape)} and latent size {latent_dim} need {wdims}: re-export the bundle"
                )


# ---- writing -----------------------------------------------------------------------------------------------


def versions(**extra: str) -> dict[str, str]:
    """coopnets' own version and those the writer passes (torch, onnx, ...), for the manifest."""
    try:
        coopnets = importlib.metadata.version("coopnets")
    except importlib.metadata.PackageNotFoundError:
        coopnets = "unknown"
    return {"coopnets": coopnets, **extra}


def write_manifest(
    root: str | os.PathLike,
    *,
    net: Mapping[str, Any],
    image_shape: Sequence[int],
    latent_dim: int,
    langevin: Mapping[str, Any],
    completion: CompletionDefaults | None,
    graph_io: Mapping[str, Mapping[str, list]],
    training: Mapping[str, Any] | None = None,
    writer: Mapping[str, Any] | None = None,
    ood: Mapping[str, Any] | None = None,
    weights: Mapping[str, Any] | None = None,
) -> dict:
    """Writes `root`/manifest.json for the graph files already in `root` (named <graph>.onnx), with their
    sha256 and size; returns the manifest. `graph_io`: per graph {"inputs": [...], "outputs": [...]} as read
    from the ONNX files; `writer`: extra top-level entries (exporter, versions); `weights`: the `weights`
    section ({"storage": ...}) when `root` has WEIGHTS, which is then listed in `files` too. `completion`
    None = DEFAULT_COMPLETION. Call read_bundle(root) afterwards: that is the verification."""
    root = Path(root)
    missing = [k for k in LANGEVIN_KEYS if k not in langevin]
    if missing:
        raise BundleError(f"langevin settings lack {', '.join(missing)}: give {', '.join(LANGEVIN_KEYS)}")
    graphs, files = {}, {}
    for name in [*GRAPHS, *(g for g in OPTIONAL_GRAPHS if g in graph_io)]:
        file = f"{name}.onnx"
        graphs[name] = {"file": file, **graph_io[name]}
        files[file] = {"sha256": sha256_file(root / file), "bytes": (root / file).stat().st_size}
    if (root / WEIGHTS).is_file():
        files[WEIGHTS] = {"sha256": sha256_file(root / WEIGHTS), "bytes": (root / WEIGHTS).stat().st_size}
        weights = {"file": WEIGHTS, "storage": "float32", **(weights or {})}
    elif weights:
        raise BundleError(f"weights {dict(weights)} given but {root / WEIGHTS} was not written")
    manifest = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "created": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "net": dict(net),
        "image": {"shape": list(image_shape), "value_range": [-1.0, 1.0]},
        "latent_dim": latent_dim,
        "langevin": {k: langevin[k] for k in LANGEVIN_KEYS},
        "completion": (completion or DEFAULT_COMPLETION).to_manifest(),
        "opset": OPSET,
        **(writer or {}),
        "graphs": graphs,
        "files": files,
        "training": dict(training or {}),
        **({"ood": dict(ood)} if ood else {}),
        **({"weights": dict(weights)} if weights else {}),
    }
    atomic_write_json(root / MANIFEST, manifest)
    return manifest


def is_bundle(path: str | os.PathLike) -> bool:
    """Whether `path` looks like a bundle (its manifest names the format), checked before replacing it."""
    try:
        return json.loads((Path(path) / MANIFEST).read_text()).get("format") == FORMAT
    except (OSError, ValueError, AttributeError):
        return False


# ---- reading -----------------------------------------------------------------------------------------------


def resolve_bundle(path: str | os.PathLike) -> Path:
    """The directory `path` names: itself, or for a shipped name (when no such directory exists here) the
    shipped bundle."""
    name = shipped_name(path)
    if name is None:
        return Path(path)
    if not (SHIPPED / name / MANIFEST).is_file():
        raise BundleError(
            f"--bundle {name}: the shipped bundle is not installed ({SHIPPED / name} is missing): reinstall "
            "it (pip install --force-reinstall coopnets) or pass a bundle directory"
        )
    return SHIPPED / name


def pinned_digest(root: Path) -> str | None:
    """The sha256 the repository pins for the manifest of the shipped bundle at `root`; None for any other
    directory."""
    try:
        names = [n for n in SHIPPED_NAMES if root.resolve() == (SHIPPED / n).resolve()]
    except OSError:
        return None
    if not names:
        return None
    pin = SHIPPED / f"{names[0]}.sha256"
    try:
        return pin.read_text().split()[0]  # sha256sum's format: "<hex>  reference/manifest.json"
    except (OSError, IndexError):
        raise BundleError(f"{pin} is missing or empty: restore it with git checkout {pin.name}") from None


def read_bundle(path: str | os.PathLike) -> Bundle:
    """Reads and verifies the bundle at `path` (see the module docstring); raises BundleError."""
    root = resolve_bundle(path)
    manifest, digest = _load_manifest(root)
    m = _Checker(root / MANIFEST)
    shape = tuple(m.ints(m.section(manifest, "image"), "shape", "image.shape", length=3))
    latent_dim = m.integer(manifest, "latent_dim", "latent_dim", low=1)
    langevin, completion = _langevin(m, manifest), _completion(m, manifest)
    net = m.section(manifest, "net", optional=True)
    if "latent_dim" in net and net["latent_dim"] != latent_dim:
        raise m.fail("net.latent_dim", f"{net['latent_dim']!r} differs from latent_dim {latent_dim}")
    files = m.section(manifest, "files")
    graph_files = _graph_files(m, manifest, root, shape, latent_dim)
    _verify_files(m, root, files)
    return Bundle(
        path=root,
        manifest=manifest,
        digest=digest,
        image_shape=shape,  # type: ignore[arg-type]
        latent_dim=latent_dim,
        langevin=langevin,
        completion=completion,
        graph_files=graph_files,
        format_version=manifest["format_version"],
        created=str(manifest.get("created", "")),
        arch=str(net.get("arch", "")),
        training=dict(manifest.get("training") or {}),
        ood=dict(manifest.get("ood", {})) if "typicality" in graph_files else {},
        weights_storage=_weights_storage(m, manifest, files),
        file_sha256={name: entry["sha256"] for name, entry in files.items()},
    )


def _load_manifest(root: Path) -> tuple[dict, str]:
    """The manifest as JSON and its sha256, once it is this format's and matches any pin."""
    mpath = root / MANIFEST
    if not mpath.is_file():
        raise BundleError(
            f"{root} is not a model bundle (no {MANIFEST}): pass the directory coop-export wrote"
        )
    raw = mpath.read_bytes()
    try:
        manifest = json.loads(raw)
    except ValueError as e:  # JSONDecodeError, or UnicodeDecodeError for bytes that are not UTF-8 text
        raise BundleError(f"{mpath} is not valid JSON ({e}): re-export the bundle") from None
    if not isinstance(manifest, dict):
        raise BundleError(f"{mpath} is not a JSON object: re-export the bundle")
    digest, pin = hashlib.sha256(raw).hexdigest(), pinned_digest(root)
    if pin is not None and digest != pin:
        raise BundleError(
            f"{mpath}: sha256 {digest[:16]}… is not the {pin[:16]}… pinned in "
            f"{SHIPPED / (root.name + '.sha256')}: restore the shipped bundle (git checkout models/), or "
            "re-pin it as models/README.md says"
        )
    if manifest.get("format") != FORMAT or manifest.get("format_version") != FORMAT_VERSION:
        raise BundleError(
            f"{mpath}: format {manifest.get('format')!r} version {manifest.get('format_version')!r} is not "
            f"{FORMAT!r} version {FORMAT_VERSION}: re-export the bundle with this version's coop-export"
        )
    return manifest, digest


def _langevin(m: _Checker, manifest: dict) -> LangevinDefaults:
    lv = m.section(manifest, "langevin")
    return LangevinDefaults(
        s=m.real(lv, "s", "langevin.s"),
        delta=m.real(lv, "delta", "langevin.delta", high=MAX_STEP_SIZE),
        steps=m.integer(lv, "steps", "langevin.steps", low=0),
        sigma=m.real(lv, "sigma", "langevin.sigma"),
        noise=m.boolean(lv, "noise", "langevin.noise"),
    )


def _completion(m: _Checker, manifest: dict) -> CompletionDefaults:
    """The `completion` section, each missing key as LEGACY_COMPLETION says it was meant."""
    cp = {**LEGACY_COMPLETION.to_manifest(), **m.section(manifest, "completion", optional=True)}
    return CompletionDefaults(
        latent_steps=m.integer(cp, "latent_steps", "completion.latent_steps", low=0),
        latent_step_size=m.real(cp, "latent_step_size", "completion.latent_step_size", high=MAX_STEP_SIZE),
        latent_noise=m.boolean(cp, "latent_noise", "completion.latent_noise"),
        refine_steps=m.integer(cp, "refine_steps", "completion.refine_steps", low=0),
        restarts=m.integer(cp, "restarts", "completion.restarts", low=1, high=MAX_RESTARTS),
        residual_fill=m.boolean(cp, "residual_fill", "completion.residual_fill"),
        average_restarts=m.boolean(cp, "average_restarts", "completion.average_restarts"),
        residual_interpolant=m.choice(
            cp, "residual_interpolant", "completion.residual_interpolant", RESIDUAL_INTERPOLANTS
        ),
    )


def _weights_storage(m: _Checker, manifest: dict, files: dict) -> str:
    weights = m.section(manifest, "weights", optional=True)
    if weights and weights.get("storage") not in STORAGE:
        got = weights.get("storage")
        raise m.fail("weights.storage", f"must be one of {', '.join(STORAGE)}, got {got!r}")
    if weights and weights.get("file") not in files:
        raise BundleError(f"{m.where}: weights names no file listed in 'files': re-export the bundle")
    return str(weights.get("storage", "float32"))


def _graph_files(
    m: _Checker, manifest: dict, root: Path, shape: Sequence[int], latent_dim: int
) -> dict[str, Path]:
    """Each graph's file, its recorded inputs and outputs checked against the contract."""
    graphs, files = m.section(manifest, "graphs"), m.section(manifest, "files")
    graph_files = {}
    for name in [*GRAPHS, *(g for g in OPTIONAL_GRAPHS if g in graphs)]:
        entry = m.section(graphs, name, f"graphs.{name}")
        file = entry.get("file")
        if not isinstance(file, str) or file not in files:
            raise BundleError(
                f"{m.where}: graph {name} names no file listed in 'files': re-export the bundle"
            )
        if "inputs" in entry or "outputs" in entry:  # what the exporter read from the graph itself
            check_graph_io(
                str(m.where),
                name,
                [(v["name"], v["shape"]) for v in entry.get("inputs", [])],
                [(v["name"], v["shape"]) for v in entry.get("outputs", [])],
                shape,
                latent_dim,
            )
        graph_files[name] = root / file
    return graph_files


def _verify_files(m: _Checker, root: Path, files: dict) -> None:
    """Every listed file is there with its size and sha256."""
    for fname, entry in files.items():
        fpath = root / fname
        if not isinstance(entry, dict) or Path(fname).name != fname:
            raise BundleError(f"{m.where}: 'files' must map plain file names to their sha256: re-export")
        if not fpath.is_file():
            raise BundleError(f"{fpath} is missing: copy the whole bundle directory")
        size = entry.get("bytes")
        if (size is not None and fpath.stat().st_size != size) or sha256_file(fpath) != entry.get("sha256"):
            raise BundleError(
                f"{fpath} does not match its sha256 in {MANIFEST}: the bundle is corrupt, re-copy it"
            )


class _Checker:
    """Typed reads of manifest entries; each failure is one BundleError line naming the key and its range."""

    def __init__(self, where: Path):
        self.where = where

    def fail(self, key: str, why: str) -> BundleError:
        return BundleError(f"{self.where}: {key} {why}: fix the manifest or re-export the bundle")

    def section(self, parent: dict, name: str, key: str | None = None, optional: bool = False) -> dict:
        value = parent.get(name, {} if optional else None)
        if not isinstance(value, dict):
            raise self.fail(key or name, "is missing or not an object")
        return value

    def _get(self, parent: dict, name: str, key: str):
        if name not in parent:
            raise self.fail(key, "is missing")
        return parent[name]

    def integer(self, parent: dict, name: str, key: str, low: int, high: int | None = None) -> int:
        v = self._get(parent, name, key)
        if isinstance(v, bool) or not isinstance(v, int) or v < low or (high is not None and v > high):
            raise self.fail(
                key, f"must be an integer >= {low}{'' if high is None else f' and <= {high}'}, got {v!r}"
            )
        return v

    def ints(self, parent: dict, name: str, key: str, length: int) -> list[int]:
        v = self._get(parent, name, key)
        if not (
            isinstance(v, list)
            and len(v) == length
            and all(isinstance(x, int) and not isinstance(x, bool) and x > 0 for x in v)
        ):
            raise self.fail(key, f"must be {length} positive integers, got {v!r}")
        return v

    def real(self, parent: dict, name: str, key: str, high: float = math.inf) -> float:
        v = self._get(parent, name, key)
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not (math.isfinite(v) and 0 < v <= high):
            span = "> 0" if high == math.inf else f"in (0, {high:g}]"
            raise self.fail(key, f"must be a finite number {span}, got {v!r}")
        return float(v)

    def boolean(self, parent: dict, name: str, key: str) -> bool:
        v = self._get(parent, name, key)
        if not isinstance(v, bool):
            raise self.fail(key, f"must be true or false, got {v!r}")
        return v

    def choice(self, parent: dict, name: str, key: str, choices: Sequence[str]) -> str:
        v = self._get(parent, name, key)
        if v not in choices:
            raise self.fail(key, f"must be one of {', '.join(map(repr, choices))}, got {v!r}")
        return v
