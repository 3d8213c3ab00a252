"""ONNX Runtime sessions for a verified bundle (contract.bundle.read_bundle), one per graph, on one device.

Device policy (`open_sessions(device=...)`):
    cpu   providers=["CPUExecutionProvider"] only: CUDA is never tried;
    cuda  CUDA first; start-up fails when a session does not actually run on CUDA;
    auto  CUDA when it loads, otherwise CPU with one log line.
What ONNX Runtime really uses is read back from `session.get_providers()` (onnxruntime-gpu lists CUDA as
"available" even on a machine without a GPU). Every session's inputs and outputs are checked against the
contract (contract.bundle.check_graph_io) for the manifest's image shape and latent size, so a manifest that
does not describe its graphs is refused at start, not inside a request.

Batch shards (CPU): ONNX Runtime's intra-op pool leaves a core idle between ops (cpu/wall ~1.6 of 2), while
the images of a batch are independent. So a graph is a `ShardedSession`: small batches run on one session with
every thread; a larger batch is cut along its first axis into up to `shards` parts of at least MIN_PER_SHARD
images, run at once, each on its own single-threaded session (opened on first use), and the outputs joined.
Each image's answer is the same either way (tests/serving/test_serving_engine.py).
"""

from __future__ import annotations

import logging
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort
from coopnets.contract.bundle import Bundle, BundleError, check_graph_io

log = logging.getLogger(__name__)

DEVICES = ("auto", "cuda", "cpu")
CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"


# Images per part below which a batch is not cut. Chosen by measurement on 2 cores, 1-thread parts against
# one 2-thread session of langevin_step.onnx: 2 images per part lost, 4 broke even, 8 and more won; the
# `engine` vs `one part` columns of `bench/synthesis.py --counts 4,8,16,64` show the same comparison.
MIN_PER_SHARD = 4


def usable_cores() -> int:
    """The cores this process may run on (its CPU affinity, which containers and taskset narrow)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


class ShardedSession:
    """One graph: `main` (every thread) for small batches; `shards` single-threaded sessions of the same file
    run the parts of a large batch at once (see the module docstring). Quacks like the InferenceSession it
    wraps for what the engine and tests use (run, get_inputs, get_outputs, get_providers)."""

    def __init__(self, main: ort.InferenceSession, path: Path, shards: int, pool: ThreadPoolExecutor | None):
        self.main, self.path, self.shards, self.pool = main, path, shards, pool
        self._parts: list[ort.InferenceSession] = []
        self._lock = threading.Lock()

    def __getattr__(self, name):  # get_inputs, get_outputs, get_providers, ...: the main session's
        return getattr(self.main, name)

    @property
    def parts_open(self) -> int:
        """How many parts' sessions exist (0 until a batch was large enough to be cut)."""
        return len(self._parts)

    def parts(self, k: int) -> list[ort.InferenceSession]:
        """The first `k` parts' sessions, opened on first need (the server's warm-up at --max-batch opens
        what its largest batch uses), so a many-core machine holds only the copies its batches use."""
        with self._lock:
            if len(self._parts) < k:
                one = session_options(1)
                one.graph_optimization_level = self.main.get_session_options().graph_optimization_level
                self._parts += [_session(self.path, one, [CPU]) for _ in range(k - len(self._parts))]
            return self._parts[:k]

    def run(self, output_names, feed: dict[str, np.ndarray], run_options=None) -> list[np.ndarray]:
        n = _batch_size(feed)
        k = min(self.shards, n // MIN_PER_SHARD)  # parts of at least MIN_PER_SHARD images
        if k < 2:
            return self.main.run(output_names, feed, run_options)
        cuts = np.linspace(0, n, k + 1).astype(int)  # near-equal parts
        feeds = [
            {name: (v[a:b] if np.ndim(v) else v) for name, v in feed.items()}  # views; scalars as they are
            for a, b in zip(cuts[:-1], cuts[1:], strict=True)
        ]
        parts = self.parts(k)
        futures = [
            self.pool.submit(part.run, output_names, f, run_options)
            for part, f in zip(parts[1:], feeds[1:], strict=True)
        ]
        outs = [parts[0].run(output_names, feeds[0], run_options)]  # the first part in the caller's thread
        outs += [fut.result() for fut in futures]
        return [np.concatenate(chunk, axis=0) for chunk in zip(*outs, strict=True)]


def _batch_size(feed: dict[str, np.ndarray]) -> int:
    sizes = {np.shape(v)[0] for v in feed.values() if np.ndim(v)}
    return sizes.pop() if len(sizes) == 1 else 0  # 0: nothing to cut (or inconsistent: let ORT say so)


@dataclass
class Sessions:
    """One ORT session per graph (a ShardedSession on CPU), on one device."""

    sessions: dict[str, ort.InferenceSession | ShardedSession]
    device: str  # "cuda" or "cpu": where they actually run
    shards: int = 1  # parts a large CPU batch is cut into

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


def open_sessions(
    bundle: Bundle, device: str = "auto", threads: int = 0, spin: bool = False, shards: int = 0
) -> Sessions:
    """Opens the bundle's graphs on `device` (auto | cuda | cpu, see the module docstring). `threads`:
    intra-op threads of the main sessions (0 = one per core); `shards`: parts of a large CPU batch (0 = one
    per thread of the main sessions, 1 = never cut). Raises BundleError."""
    if device not in DEVICES:
        raise BundleError(f"--device {device!r} is not one of {', '.join(DEVICES)}")
    opts = session_options(threads, spin)
    sessions = _checked_sessions(bundle, opts, _providers(bundle, device, opts))
    on_cuda = all(s.get_providers()[0] == CUDA for s in sessions.values())
    if device == "cuda" and not on_cuda:
        raise BundleError(
            f"--device cuda: not every session runs on CUDA ({Sessions(sessions, 'cpu').providers})"
        )
    result = Sessions(sessions=sessions, device="cuda" if on_cuda else "cpu")
    if not on_cuda:
        _shard(result, bundle, shards or (threads or usable_cores()))
    log.info(
        "ONNX Runtime %s sessions on %s: %s (large batches in %d parts)",
        ort.__version__,
        result.device,
        result.providers,
        result.shards,
    )
    return result


def _providers(bundle: Bundle, device: str, opts: ort.SessionOptions) -> list[str]:
    """The execution providers every session gets: CUDA first where `device` allows it and a probe session
    really runs on it, else CPU alone (device policy of the module docstring; BundleError for --device cuda
    where CUDA does not work)."""
    want_cuda = device in ("auto", "cuda") and CUDA in ort.get_available_providers()
    if device == "cuda" and not want_cuda:
        raise BundleError(
            "--device cuda: this onnxruntime has no CUDAExecutionProvider; install onnxruntime-gpu "
            "or use --device auto|cpu"
        )
    if not want_cuda:
        return [CPU]
    if hasattr(ort, "preload_dlls"):
        # onnxruntime-gpu >= 1.21 finds the CUDA/cuDNN libraries of pip's nvidia-* packages (torch's) only
        # after this; with system-wide CUDA it is harmless
        try:
            ort.preload_dlls()
        except Exception as e:  # a partial CUDA install: the probe below decides, with one line
            log.debug("onnxruntime.preload_dlls failed: %s", e)
    # Probe with one session, ORT's own error lines silenced: when CUDA cannot load, every session would
    # log the same two lines; we log one instead.
    ort.set_default_logger_severity(4)
    try:
        probe = _session(bundle.graph_files["generator"], opts, [CUDA, CPU])
    finally:
        ort.set_default_logger_severity(2)
    if probe.get_providers()[0] == CUDA:
        return [CUDA, CPU]
    if device == "cuda":
        raise BundleError(
            "--device cuda: ONNX Runtime could not load CUDA (no GPU, or the CUDA/cuDNN "
            "libraries it needs are missing); use --device auto or cpu"
        )
    log.warning("--device auto: CUDA not usable by ONNX Runtime here, falling back to CPUExecutionProvider")
    return [CPU]


def _checked_sessions(bundle: Bundle, opts: ort.SessionOptions, providers: list[str]) -> dict:
    """A session per graph, each one's inputs and outputs checked against the contract for the manifest's
    image shape and latent size, so that a manifest which does not describe its graphs fails at start."""
    sessions = {name: _session(path, opts, providers) for name, path in bundle.graph_files.items()}
    for name, sess in sessions.items():
        io = [[(v.name, v.shape) for v in values] for values in (sess.get_inputs(), sess.get_outputs())]
        check_graph_io(str(bundle.graph_files[name]), name, *io, bundle.image_shape, bundle.latent_dim)
    return sessions


def _shard(result: Sessions, bundle: Bundle, shards: int) -> None:
    """Makes every CPU session of `result` a ShardedSession of `shards` parts (module docstring), the parts
    beyond the first run on one shared pool; one part leaves the sessions as they are."""
    result.shards = shards
    if result.shards > 1:
        pool = ThreadPoolExecutor(result.shards - 1, thread_name_prefix="ort-shard")
        result.sessions = {
            name: ShardedSession(sess, bundle.graph_files[name], result.shards, pool)
            for name, sess in result.sessions.items()
        }


def _session(path: Path, opts: ort.SessionOptions, providers: list[str]) -> ort.InferenceSession:
    try:
        return ort.InferenceSession(str(path), sess_options=opts, providers=providers)
    except Exception as e:  # ORT raises its own exception types (Fail, InvalidGraph, ...)
        raise BundleError(f"{path}: ONNX Runtime cannot load it ({str(e).splitlines()[0]}): re-export") from e


def scalar(x: float) -> np.ndarray:
    """A float32 scalar input (shape [])."""
    return np.asarray(x, dtype=np.float32)
