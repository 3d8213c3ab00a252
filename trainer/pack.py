"""Compact weight storage for a bundle: one shared `weights.bin`, and float16 or int8 storage on request.

The four graphs repeat the same tensors (descriptor.onnx and langevin_step.onnx hold the descriptor's
weights, generator.onnx and generator_grad.onnx the generator's): inline, a 28 px bundle is 41 MB for 18 MB of
distinct weights. `pack_bundle` moves every initializer of at least MIN_ELEMENTS elements into one file,
`weights.bin`, each distinct byte string once, and points the graphs at it with ONNX's external-data fields
(location, offset, length), which ONNX Runtime and `onnx.load` resolve relative to the graph's directory.

`storage` chooses how those weights are stored; the arithmetic stays float32 in every case:

    float32   as trained (bit-exact)
    float16   W16 -> Cast(float)               half the bytes; relative rounding error <= 2^-11 per weight
    int8      q -> Cast(float) -> Mul(scale)   a quarter; symmetric, one scale per slice along axis 0 (a
                                               conv's output channel), |error| <= scale / 2 = max|row| / 254

The decoding nodes read only initializers, so ONNX Runtime folds them into float32 constants when it opens
the session (constant folding, every optimisation level above ORT_DISABLE_ALL): a packed graph runs at the
speed of the float32 one. typicality.onnx is never re-encoded: its calibration (trainer/ood.py) was measured
with the float32 weights, and its whitening matrix would not survive int8. Since it holds the descriptor's
layers, a float16 or int8 bundle carries the descriptor's weights twice: rounded for the contract's graphs,
float32 for the score. Whether the rounding hurts samples is measured with coop-eval (docs/results.md).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnx
from coopnets.contract.bundle import STORAGE, WEIGHTS
from onnx import TensorProto, helper, numpy_helper
from onnx.external_data_helper import set_external_data

MIN_ELEMENTS = 1024  # smaller tensors (biases, shapes, scalars) stay inline and float32: bytes, not weights
ALIGN = 64  # each tensor's offset in weights.bin: aligned for vector loads when ORT maps the file
KEEP_FLOAT32 = ("typicality",)  # graphs whose weights are never re-encoded (see the module docstring)


def encode(model: onnx.ModelProto, storage: str) -> onnx.ModelProto:
    """`model` with each float32 initializer of >= MIN_ELEMENTS elements stored as `storage` and decoded back
    to float32 by nodes at the head of the graph, under its original name (so its consumers are unchanged)."""
    if storage not in STORAGE:
        raise ValueError(f"weight storage {storage!r}: use one of {', '.join(STORAGE)}")
    if storage == "float32":
        return model
    graph = model.graph
    inputs = {v.name for v in graph.input}
    kept, decoders = [], []
    for init in graph.initializer:
        if init.data_type != TensorProto.FLOAT or _elements(init) < MIN_ELEMENTS or init.name in inputs:
            kept.append(init)
            continue
        w = numpy_helper.to_array(init).astype(np.float32)  # (axis 0, ...)
        name = init.name
        if storage == "float16":
            kept.append(numpy_helper.from_array(w.astype(np.float16), f"{name}::float16"))
            decoders.append(helper.make_node("Cast", [f"{name}::float16"], [name], to=TensorProto.FLOAT))
        else:
            q, scale = quantize_int8(w)
            kept += [
                numpy_helper.from_array(q, f"{name}::int8"),
                numpy_helper.from_array(scale, f"{name}::scale"),
            ]
            decoders += [
                helper.make_node("Cast", [f"{name}::int8"], [f"{name}::dequant"], to=TensorProto.FLOAT),
                helper.make_node("Mul", [f"{name}::dequant", f"{name}::scale"], [name]),
            ]
    out = onnx.ModelProto()
    out.CopyFrom(model)
    del out.graph.initializer[:]
    out.graph.initializer.extend(kept)
    nodes = list(out.graph.node)
    del out.graph.node[:]
    out.graph.node.extend(decoders + nodes)  # decoders first: the graph stays topologically sorted
    return out


def quantize_int8(w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric int8 with one float32 scale per slice along axis 0: w ≈ q * scale, q in [-127, 127].
    scale has w's rank (shape (w.shape[0], 1, ...)) so that Mul broadcasts it; an all-zero slice gets 1."""
    rows = w.reshape(w.shape[0], -1)  # (O, rest)
    scale = np.abs(rows).max(axis=1) / 127.0  # (O,)
    scale = np.where(scale > 0, scale, 1.0).astype(np.float32)
    q = np.clip(np.rint(rows / scale[:, None]), -127, 127).astype(np.int8).reshape(w.shape)
    return q, scale.reshape((-1,) + (1,) * (w.ndim - 1))


def pack_bundle(root: str | Path, graphs: Sequence[str], storage: str = "float32") -> dict[str, int]:
    """Rewrites `root`/<graph>.onnx for each name in `graphs`: weights encoded as `storage` (not those of
    KEEP_FLOAT32) and moved to `root`/weights.bin, shared across graphs. Returns {file: bytes} of what it
    wrote. Call before the manifest is written: it lists weights.bin with its sha256 like a graph."""
    root = Path(root)
    models = {}
    for name in graphs:
        model = onnx.load(str(root / f"{name}.onnx"))
        models[name] = model if name in KEEP_FLOAT32 else encode(model, storage)
    offsets: dict[str, int] = {}  # sha256 of the bytes -> offset in weights.bin
    blob = bytearray()
    for model in models.values():
        for init in model.graph.initializer:
            if _elements(init) < MIN_ELEMENTS:
                continue
            data = numpy_helper.to_array(init).tobytes()  # little-endian raw bytes, as ONNX stores them
            key = hashlib.sha256(data).hexdigest()
            if key not in offsets:
                blob += b"\0" * (-len(blob) % ALIGN)
                offsets[key] = len(blob)
                blob += data
            if not init.HasField("raw_data"):  # set_external_data needs the raw form
                init.raw_data = data
            for field in ("float_data", "int32_data", "int64_data", "double_data"):
                init.ClearField(field)
            set_external_data(init, location=WEIGHTS, offset=offsets[key], length=len(data))
            init.ClearField("raw_data")
            init.data_location = TensorProto.EXTERNAL
    (root / WEIGHTS).write_bytes(bytes(blob))
    sizes = {WEIGHTS: len(blob)}
    for name, model in models.items():
        path = root / f"{name}.onnx"
        onnx.save_model(model, str(path))
        sizes[path.name] = path.stat().st_size
    return sizes


def _elements(init: TensorProto) -> int:
    return int(np.prod(init.dims)) if init.dims else 1
