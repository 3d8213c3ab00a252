"""ONNX Runtime sessions for a verified bundle (contract.bundle.read_bundle), one per graph, on one device.

Device policy (`open_sessions(device=...)`):
    cpu   providers=["CPUExecutionProvider"] only: CUDA is never tried;
    cuda  CUDA first; start-up fails when a session does not actually run on CUDA;
    auto  CUDA when it loads, otherwise CPU with one log line.
What ONNX Runtime really uses is read back from `session.get_providers()` (onnxruntime-gpu lists CUDA as
"available" even on a machine without a GPU). Every session's inputs and outputs are checked against the
contract (contract.bundle.check_graph_io) for the manifest's image shape and latent size, so a manifest that
does not describe its graphs is refused at start, not inside a request.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort

from contract.bundle import Bundle, BundleError, check_graph_io

log = logging.getLogger(__name__)

DEVICES = ("auto", "cuda", "cpu")
CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"


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


def session_options(threads: int = 0, spin: bool = False) -> ort.SessionOptions:
    """Deliberate options: full graph optimisation, `threads` intra-op threads (0 = one per core), one
    inter-op thread (the graphs are sequential), and the intra-op pool's spinning off by default.

    Spinning keeps a pool thread busy-waiting for the next op instead of sleeping. One session alone on the
    machine gains from it at large batches, but every session has its own pool, and a pool that spins after
    its run takes the cores from the next session, from gRPC's threads and from any other process: measured
    side by side, interleaved engines ran slower with it, so it is an option (`spin=True`), not a default."""
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.add_session_config_entry("session.intra_op.allow_spinning", "1" if spin else "0")
    so.add_session_config_entry("session.inter_op.allow_spinning", "0")
    so.log_severity_level = 3  # ORT's own per-session fallback warnings; we log the outcome once ourselves
    return so


def open_sessions(bundle: Bundle, device: str = "auto", threads: int = 0, spin: bool = False) -> Sessions:
    """Opens the four graphs on `device` (auto | cuda | cpu, see the module docstring). Raises BundleError."""
    if device not in DEVICES:
        raise BundleError(f"--device {device!r} is not one of {', '.join(DEVICES)}")
    want_cuda = device in ("auto", "cuda") and CUDA in ort.get_available_providers()
    if device == "cuda" and not want_cuda:
        raise BundleError(
            "--device cuda: this onnxruntime has no CUDAExecutionProvider; install onnxruntime-gpu "
            "or use --device auto|cpu"
        )
    opts = session_options(threads, spin)
    providers = [CPU]
    if want_cuda and hasattr(ort, "preload_dlls"):
        # onnxruntime-gpu >= 1.21 finds the CUDA/cuDNN libraries of pip's nvidia-* packages (torch's) only
        # after this; with system-wide CUDA it is harmless
        try:
            ort.preload_dlls()
        except Exception as e:  # a partial CUDA install: the probe below decides, with one line
            log.debug("onnxruntime.preload_dlls failed: %s", e)
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
    for name, sess in sessions.items():
        io = [[(v.name, v.shape) for v in values] for values in (sess.get_inputs(), sess.get_outputs())]
        check_graph_io(str(bundle.graph_files[name]), name, *io, bundle.image_shape, bundle.latent_dim)
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
