"""Reads a model bundle (docs/architecture.md, format_version 1), verifies it once, and opens its ONNX Runtime
sessions.

Verification happens at load, not per request: the manifest must name every graph the sampling contract needs,
and every file's sha256 must match, so a half-copied or edited bundle is refused at start with one clear line
instead of failing later inside a request.

Device policy (`open_sessions(device=...)`):
    cpu   providers=["CPUExecutionProvider"] only: CUDA is never tried;
    cuda  CUDA first; start-up fails when a session does not actually run on CUDA;
    auto  CUDA when it loads, otherwise CPU with one log line.
What ONNX Runtime really uses is read back from `session.get_providers()` (onnxruntime-gpu lists CUDA as
"available" even on a machine without a GPU).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnxruntime as ort

log = logging.getLogger(__name__)

FORMAT = "coopnets.bundle"
FORMAT_VERSION = 1
GRAPHS = ("generator", "descriptor", "langevin_step", "generator_grad")
DEVICES = ("auto", "cuda", "cpu")
CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"


class BundleError(Exception):
    """The bundle cannot be served; the message says what is wrong and how to fix it."""


@dataclass(frozen=True)
class LangevinDefaults:
    """Descriptor Langevin: reference std s, step size δ, steps K, generator noise σ, noise on/off."""

    s: float
    delta: float
    steps: int
    sigma: float
    noise: bool


@dataclass(frozen=True)
class CompletionDefaults:
    """Latent Langevin steps L of size η (noise on/off) on R restarts (the lowest U kept), then K descriptor
    refinement steps."""

    latent_steps: int
    latent_step_size: float
    latent_noise: bool
    refine_steps: int
    restarts: int = 1  # absent from bundles written before it existed: one chain, as they were made


@dataclass(frozen=True)
class Bundle:
    """A verified bundle directory: what the manifest says, with typed defaults."""

    path: Path
    manifest: dict
    digest: str  # sha256 of manifest.json, which holds the sha256 of every file
    image_shape: tuple[int, int, int]  # (C, H, W)
    latent_dim: int
    langevin: LangevinDefaults
    completion: CompletionDefaults
    graph_files: dict[str, Path] = field(default_factory=dict)

    @property
    def arch(self) -> str:
        return str(self.manifest.get("net", {}).get("arch", ""))

    @property
    def file_sha256(self) -> dict[str, str]:
        return {name: entry["sha256"] for name, entry in self.manifest.get("files", {}).items()}


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def load_bundle(path: str | os.PathLike) -> Bundle:
    """Reads and verifies `path`/manifest.json and the sha256 of every file it lists. Raises BundleError."""
    root = Path(path)
    manifest_path = root / "manifest.json"
    if not manifest_path.is_file():
        raise BundleError(
            f"{root} is not a model bundle (no manifest.json): pass the directory coop-export wrote"
        )
    raw = manifest_path.read_bytes()
    try:
        manifest = json.loads(raw)
    except ValueError as e:  # JSONDecodeError, or UnicodeDecodeError for bytes that are not UTF-8 text
        raise BundleError(f"{manifest_path} is not valid JSON ({e}): re-export the bundle") from e
    if not isinstance(manifest, dict):
        raise BundleError(f"{manifest_path} is not a JSON object: re-export the bundle")
    if manifest.get("format") != FORMAT or manifest.get("format_version") != FORMAT_VERSION:
        raise BundleError(
            f"{manifest_path}: format {manifest.get('format')!r} version {manifest.get('format_version')!r} "
            "is "
            f"not {FORMAT!r} version {FORMAT_VERSION}: re-export the bundle with this version's coop-export"
        )
    try:
        shape = tuple(int(v) for v in manifest["image"]["shape"])
        latent_dim = int(manifest["latent_dim"])
        lv = manifest["langevin"]
        langevin = LangevinDefaults(
            s=float(lv["s"]),
            delta=float(lv["delta"]),
            steps=int(lv["steps"]),
            sigma=float(lv["sigma"]),
            noise=bool(lv["noise"]),
        )
        cp = manifest.get("completion") or {}
        completion = CompletionDefaults(
            latent_steps=int(cp.get("latent_steps", 200)),
            latent_step_size=float(cp.get("latent_step_size", 0.05)),
            latent_noise=bool(cp.get("latent_noise", False)),
            refine_steps=int(cp.get("refine_steps", langevin.steps)),
            restarts=int(cp.get("restarts", 1)),
        )
        graph_files = {name: root / manifest["graphs"][name]["file"] for name in GRAPHS}
    except (KeyError, TypeError, ValueError, AttributeError) as e:  # AttributeError: a section not an object
        raise BundleError(f"{manifest_path}: missing or malformed entry {e}: re-export the bundle") from e
    if len(shape) != 3:
        raise BundleError(
            f"{manifest_path}: image.shape must be [C, H, W], got {shape}: re-export the bundle"
        )
    if completion.restarts < 1:
        raise BundleError(
            f"{manifest_path}: completion.restarts must be at least 1, got {completion.restarts}: fix the "
            "manifest or re-export the bundle"
        )
    files = manifest.get("files") or {}
    if not isinstance(files, dict) or not all(isinstance(entry, dict) for entry in files.values()):
        raise BundleError(
            f"{manifest_path}: 'files' must map each file name to its sha256: re-export the bundle"
        )
    for name, gpath in graph_files.items():
        if gpath.name not in files:
            raise BundleError(f"{manifest_path}: graph {name} ({gpath.name}) has no sha256 entry: re-export")
    for fname, entry in files.items():
        fpath = root / fname
        if not fpath.is_file():
            raise BundleError(f"{fpath} is missing: copy the whole bundle directory")
        if sha256_file(fpath) != entry.get("sha256"):
            raise BundleError(
                f"{fpath} does not match its sha256 in manifest.json: the bundle is corrupt, re-copy it"
            )
    return Bundle(
        path=root,
        manifest=manifest,
        digest=hashlib.sha256(raw).hexdigest(),
        image_shape=shape,  # type: ignore[arg-type]
        latent_dim=latent_dim,
        langevin=langevin,
        completion=completion,
        graph_files=graph_files,
    )


@dataclass
class Sessions:
    """One ORT session per graph, on one device."""

    sessions: dict[str, ort.InferenceSession]
    device: str  # "cuda" or "cpu": where they actually run

    @property
    def providers(self) -> dict[str, list[str]]:
        return {name: list(s.get_providers()) for name, s in self.sessions.items()}

    def __getitem__(self, name: str) -> ort.InferenceSession:
        return self.sessions[name]


def session_options(threads: int = 0) -> ort.SessionOptions:
    """Deliberate options: full graph optimisation, `threads` intra-op threads (0 = one per core),
    one inter-op thread (the graphs are sequential), and no spinning when idle, so a quiet server uses no CPU
    and leaves the cores to the batches."""
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    so.add_session_config_entry("session.inter_op.allow_spinning", "0")
    so.log_severity_level = 3  # ORT's own per-session fallback warnings; we log the outcome once ourselves
    return so


def open_sessions(bundle: Bundle, device: str = "auto", threads: int = 0) -> Sessions:
    """Opens the four graphs on `device` (auto | cuda | cpu, see the module docstring). Raises BundleError."""
    if device not in DEVICES:
        raise BundleError(f"--device {device!r} is not one of {', '.join(DEVICES)}")
    want_cuda = device in ("auto", "cuda") and CUDA in ort.get_available_providers()
    if device == "cuda" and not want_cuda:
        raise BundleError(
            "--device cuda: this onnxruntime has no CUDAExecutionProvider; install onnxruntime-gpu "
            "or use --device auto|cpu"
        )
    opts = session_options(threads)
    providers = [CPU]
    if want_cuda:
        # Probe with one session, ORT's own error lines silenced: when CUDA cannot load, every session would
        # log the same two lines; we log one instead.
        ort.set_default_logger_severity(4)
        try:
            probe = _session(bundle.graph_files["generator"], opts, [CUDA, CPU])
        finally:
            ort.set_default_logger_severity(2)
        if probe.get_providers()[0] == CUDA:
            providers = [CUDA, CPU]
        elif device == "cuda":
            raise BundleError(
                "--device cuda: ONNX Runtime could not load CUDA (no GPU, or the CUDA/cuDNN "
                "libraries it needs are missing); use --device auto or cpu"
            )
        else:
            log.warning(
                "--device auto: CUDA not usable by ONNX Runtime here, falling back to CPUExecutionProvider"
            )
    sessions = {name: _session(path, opts, providers) for name, path in bundle.graph_files.items()}
    on_cuda = all(s.get_providers()[0] == CUDA for s in sessions.values())
    if device == "cuda" and not on_cuda:
        raise BundleError(
            f"--device cuda: not every session runs on CUDA ({Sessions(sessions, 'cpu').providers})"
        )
    result = Sessions(sessions=sessions, device="cuda" if on_cuda else "cpu")
    log.info("ONNX Runtime %s sessions on %s: %s", ort.__version__, result.device, result.providers)
    return result


def _session(path: Path, opts: ort.SessionOptions, providers: list[str]) -> ort.InferenceSession:
    try:
        return ort.InferenceSession(str(path), sess_options=opts, providers=providers)
    except Exception as e:  # ORT raises its own exception types (Fail, InvalidGraph, ...)
        raise BundleError(f"{path}: ONNX Runtime cannot load it ({str(e).splitlines()[0]}): re-export") from e


def scalar(x: float) -> np.ndarray:
    """A float32 scalar input (shape [])."""
    return np.asarray(x, dtype=np.float32)
