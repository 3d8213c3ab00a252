"""The Open Inference Protocol (KServe v2 / Triton's `inference.GRPCInferenceService`) on coop-serve's port.

Teams that run Triton or KServe call models with their own clients (tritonclient, KServe's SDK, perf tools);
this servicer lets them call a bundle the same way, beside coopnets.v1 on the same server. It is a second
front door, not a second service: every ModelInfer goes through CoopNetsService's `handling` (admission,
drain, the one error mapping, metrics under the RPC's name) and `submit` (the batcher and its queue bound, so
OIP and coopnets.v1 requests with equal parameters merge into one engine batch), and the token interceptor
guards it like every RPC. Its tensors become the same typed jobs as coopnets.v1 requests, through the same
params layer and array checks (serving.requests). Models (version "1"; [N] = one value per image, [1] = one
value):

    coopnets-synthesize  in:  seed INT64 [1] + count INT32|INT64 [1] (images seed .. seed+count-1), or
                              seeds INT64 [N]; optional steps INT32|INT64 [1], step_size FP32 [1],
                              noise BOOL [1]
                         out: images FP32 [N, C, H, W], energy FP32 [N]
    coopnets-complete    in:  images FP32 [N, C, H, W], masks FP32 [N, C, H, W] (1 = missing), optional
                              seed INT64 [1] (image i uses seed + i), latent_steps, refine_steps, restarts
                              INT32|INT64 [1], latent_step_size, refine_step_size FP32 [1], noise,
                              residual_fill, average_restarts BOOL [1], residual_interpolant BYTES [1]
                              ("harmonic", "biharmonic" or "auto", UTF-8)
                         out: images FP32 [N, C, H, W] (observed pixels as given), energy FP32 [N]
    coopnets-energy      in:  images FP32 [N, C, H, W]
                         out: energy FP32 [N] (E(Y), lower = more typical), score FP32 [N] (f(Y)),
                              and for a bundle with typicality.onnx ood FP32 [N] (the calibrated
                              out-of-distribution score, > 1 = beyond the held-out images' 95% quantile)

Image i of a synthesis is made from its own default_rng(seed_i), exactly as in coopnets.v1, so the images are
the same bits whichever protocol asked. Unset optional inputs take the bundle's defaults. Bad input answers
INVALID_ARGUMENT whose google.rpc.BadRequest names the input (e.g. "steps", "masks[1].tensor.data"); an
unknown model or version names "model_name" / "model_version". Tensors are read from `raw_input_contents`
(what tritonclient sends) or from the typed `contents`; outputs go out as `raw_output_contents`.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version

import grpc
import numpy as np
from coopnets.contract.codec import FieldError
from coopnets.contract.sampling import Samples
from coopnets.oip import grpc_service_pb2 as oip
from coopnets.oip import grpc_service_pb2_grpc as oip_grpc
from coopnets.oip import model_config_pb2 as mc
from coopnets.serving import requests
from coopnets.serving.jobs import CompletionJob, EnergyJob, Measures, SynthesisJob
from coopnets.serving.service import CoopNetsService

SERVICE_NAME = "inference.GRPCInferenceService"
VERSION = "1"
SYNTHESIZE, COMPLETE, ENERGY = "coopnets-synthesize", "coopnets-complete", "coopnets-energy"

# OIP datatype -> (numpy little-endian dtype, ModelConfig DataType, the typed `contents` field)
DTYPES = {
    "FP32": ("<f4", mc.TYPE_FP32, "fp32_contents"),
    "FP64": ("<f8", mc.TYPE_FP64, "fp64_contents"),
    "INT32": ("<i4", mc.TYPE_INT32, "int_contents"),
    "INT64": ("<i8", mc.TYPE_INT64, "int64_contents"),
    "UINT32": ("<u4", mc.TYPE_UINT32, "uint_contents"),
    "UINT64": ("<u8", mc.TYPE_UINT64, "uint64_contents"),
    "BOOL": ("|b1", mc.TYPE_BOOL, "bool_contents"),
    "BYTES": ("O", mc.TYPE_STRING, "bytes_contents"),  # raw: each element a uint32 LE length, then its bytes
}
INTS, FLOATS = ("INT64", "INT32", "UINT32", "UINT64"), ("FP32", "FP64")


@dataclass(frozen=True)
class Tensor:
    """One declared input or output: name, accepted datatypes (the first is the one reported), dims
    (-1 = any, "image" = the bundle's C, H, W), whether it may be left out."""

    name: str
    datatypes: tuple[str, ...]
    dims: tuple = (1,)
    optional: bool = True

    def shape(self, image_shape: tuple[int, int, int]) -> list[int]:
        return [d for dim in self.dims for d in (image_shape if dim == "image" else (dim,))]


MODELS: dict[str, tuple[tuple[Tensor, ...], tuple[Tensor, ...]]] = {
    SYNTHESIZE: (
        (
            Tensor("seed", ("INT64",) + INTS[1:]),
            Tensor("count", ("INT32", "INT64", "UINT32", "UINT64")),
            Tensor("seeds", ("INT64",) + INTS[1:], (-1,)),
            Tensor("steps", ("INT32", "INT64", "UINT32", "UINT64")),
            Tensor("step_size", FLOATS),
            Tensor("noise", ("BOOL",)),
        ),
        (Tensor("images", ("FP32",), (-1, "image")), Tensor("energy", ("FP32",), (-1,))),
    ),
    COMPLETE: (
        (
            Tensor("images", ("FP32",), (-1, "image"), optional=False),
            Tensor("masks", ("FP32",), (-1, "image"), optional=False),
            Tensor("seed", ("INT64",) + INTS[1:]),
            Tensor("latent_steps", ("INT32", "INT64", "UINT32", "UINT64")),
            Tensor("latent_step_size", FLOATS),
            Tensor("refine_steps", ("INT32", "INT64", "UINT32", "UINT64")),
            Tensor("refine_step_size", FLOATS),
            Tensor("restarts", ("INT32", "INT64", "UINT32", "UINT64")),
            Tensor("noise", ("BOOL",)),
            Tensor("residual_fill", ("BOOL",)),
            Tensor("average_restarts", ("BOOL",)),
            Tensor("residual_interpolant", ("BYTES",)),
        ),
        (Tensor("images", ("FP32",), (-1, "image")), Tensor("energy", ("FP32",), (-1,))),
    ),
    ENERGY: (
        (Tensor("images", ("FP32",), (-1, "image"), optional=False),),
        (Tensor("energy", ("FP32",), (-1,)), Tensor("score", ("FP32",), (-1,))),
    ),
}


OOD = Tensor("ood", ("FP32",), (-1,))


def _outputs(name: str, engine) -> tuple[Tensor, ...]:
    """The model's outputs for the loaded bundle: `ood` exists only where the bundle has typicality.onnx."""
    outs = MODELS[name][1]
    return outs + (OOD,) if name == ENERGY and engine.has_ood else outs


def _package_version() -> str:
    try:
        return version("coopnets")
    except PackageNotFoundError:  # run from a source tree that was never installed
        return "0+unknown"


def read_inputs(request, model: str) -> dict[str, np.ndarray]:
    """The request's tensors by name, as numpy arrays of their shape; FieldError naming the input for an
    unknown or repeated name, a datatype the model does not take, or bytes that do not fill the shape."""
    declared = {t.name: t for t in MODELS[model][0]}
    raw = list(request.raw_input_contents)
    if raw and len(raw) != len(request.inputs):
        raise FieldError("raw_input_contents", f"{len(raw)} buffers for {len(request.inputs)} inputs")
    out: dict[str, np.ndarray] = {}
    for i, t in enumerate(request.inputs):
        spec = declared.get(t.name)
        if spec is None:
            known = ", ".join(declared)
            raise FieldError(t.name or f"inputs[{i}]", f"{model} has no input {t.name!r}: {known}")
        if t.name in out:
            raise FieldError(t.name, "given twice")
        if t.datatype not in spec.datatypes:
            raise FieldError(t.name, f"datatype {t.datatype!r} is not one of {', '.join(spec.datatypes)}")
        shape = tuple(int(d) for d in t.shape)
        if any(d < 0 for d in shape):
            raise FieldError(t.name, f"shape {list(shape)} has a negative size")
        dtype, _, contents = DTYPES[t.datatype]
        if t.datatype == "BYTES":
            array = _strings(raw[i], t.name) if raw else np.array(list(t.contents.bytes_contents), object)
            if array.size != int(np.prod(shape, dtype=object)):
                raise FieldError(t.name, f"{array.size} elements do not fill shape {list(shape)}")
        elif raw:
            buffer = raw[i]
            if len(buffer) != np.dtype(dtype).itemsize * int(np.prod(shape, dtype=object)):
                raise FieldError(t.name, f"{len(buffer)} bytes do not hold {t.datatype} shape {list(shape)}")
            array = np.frombuffer(buffer, dtype=dtype)
        else:
            values = list(getattr(t.contents, contents))
            if len(values) != int(np.prod(shape, dtype=object)):
                raise FieldError(t.name, f"{len(values)} values do not fill shape {list(shape)}")
            array = np.asarray(values, dtype=dtype)
        out[t.name] = array.reshape(shape)
    missing = [n for n, s in declared.items() if not s.optional and n not in out]
    if missing:
        raise FieldError(missing[0], f"{model} needs input {missing[0]!r}")
    return out


def _scalar(inputs: dict, name: str, default, kind: type):
    """A [1] input as a Python `kind`, or `default` when it was not given."""
    if name not in inputs:
        return default
    a = inputs[name]
    if a.size != 1:
        raise FieldError(name, f"one value expected, got shape {list(a.shape)}")
    value = a.reshape(-1)[0]
    if kind is str:
        try:
            return bytes(value).decode("utf-8")
        except (TypeError, UnicodeDecodeError):
            raise FieldError(name, "is not UTF-8 text") from None
    if kind is float and not np.isfinite(value):
        raise FieldError(name, f"{value} is not a finite number")
    return kind(value)


def _strings(buffer: bytes, name: str) -> np.ndarray:
    """A raw BYTES tensor (each element: a uint32 little-endian length, then its bytes) as an object array."""
    out, at = [], 0
    while at < len(buffer):
        if at + 4 > len(buffer):
            raise FieldError(name, "raw BYTES end inside an element's 4-byte length")
        n = int.from_bytes(buffer[at : at + 4], "little")
        if at + 4 + n > len(buffer):
            raise FieldError(name, f"raw BYTES element of {n} bytes runs past the buffer's end")
        out.append(bytes(buffer[at + 4 : at + 4 + n]))
        at += 4 + n
    return np.array(out, dtype=object)


class InferenceService(oip_grpc.GRPCInferenceServiceServicer):
    """OIP over `service` (a CoopNetsService): its lifecycle, limits, batcher, metrics and error mapping.
    `label` prefixes the method names in the metrics, so that the REST binding (serving.rest), which calls
    these same methods with a context of its own, is counted apart from gRPC ("http/ModelInfer")."""

    def __init__(self, service: CoopNetsService, label: str = ""):
        self.service = service
        self.label = label

    # ---- health and metadata --------------------------------------------------------------------------

    def _observed(self, rpc: str, answer):
        """Counts an RPC that cannot fail (liveness and readiness) like the handled ones."""
        self.service.metrics.observe(self.label + rpc, grpc.StatusCode.OK.name, 0.0)
        return answer

    def ServerLive(self, request, context):
        return self._observed("ServerLive", oip.ServerLiveResponse(live=True))

    def ServerReady(self, request, context):
        return self._observed("ServerReady", oip.ServerReadyResponse(ready=self.service.lifecycle.ready))

    def ModelReady(self, request, context):
        with self.service.handling(self.label + "ModelReady", context):
            _model(request.name, request.version)
            return oip.ModelReadyResponse(ready=self.service.lifecycle.ready)

    def ServerMetadata(self, request, context):
        with self.service.handling(self.label + "ServerMetadata", context):
            return oip.ServerMetadataResponse(name="coopnets", version=_package_version(), extensions=[])

    def ModelMetadata(self, request, context):
        with self.service.handling(self.label + "ModelMetadata", context):
            name = _model(request.name, request.version)
            engine = self.service.lifecycle.engine
            shape, ins, outs = engine.image_shape, MODELS[name][0], _outputs(name, engine)

            def meta(t: Tensor):
                return oip.ModelMetadataResponse.TensorMetadata(
                    name=t.name, datatype=t.datatypes[0], shape=t.shape(shape)
                )

            return oip.ModelMetadataResponse(
                name=name,
                versions=[VERSION],
                platform="coopnets_onnxruntime",
                inputs=[meta(t) for t in ins],
                outputs=[meta(t) for t in outs],
            )

    def ModelConfig(self, request, context):
        with self.service.handling(self.label + "ModelConfig", context):
            name = _model(request.name, request.version)
            engine = self.service.lifecycle.engine
            shape, ins, outs = engine.image_shape, MODELS[name][0], _outputs(name, engine)
            config = mc.ModelConfig(
                name=name,
                platform="coopnets_onnxruntime",
                max_batch_size=0,  # the batch axis is explicit in the dims (-1); the server batches itself
                input=[
                    mc.ModelInput(
                        name=t.name,
                        data_type=DTYPES[t.datatypes[0]][1],
                        dims=t.shape(shape),
                        optional=t.optional,
                    )
                    for t in ins
                ],
                output=[
                    mc.ModelOutput(name=t.name, data_type=DTYPES[t.datatypes[0]][1], dims=t.shape(shape))
                    for t in outs
                ],
            )
            return oip.ModelConfigResponse(config=config)

    # ---- inference -------------------------------------------------------------------------------------

    def RepositoryIndex(self, request, context):
        """The read-only part of Triton's model repository extension: the three models and their state
        (tritonclient's get_model_repository_index()); loading and unloading stay UNIMPLEMENTED, since a
        bundle's models come and go together (SIGHUP reloads them)."""
        with self.service.handling(self.label + "RepositoryIndex", context):
            if request.repository_name:
                raise FieldError(
                    "repository_name", f"no repository {request.repository_name!r}: there is one, named ''"
                )
            ready = self.service.lifecycle.ready
            state, reason = ("READY", "") if ready else ("LOADING", "the model is still warming up")
            models = [] if request.ready and not ready else list(MODELS)
            return oip.RepositoryIndexResponse(
                models=[
                    oip.RepositoryIndexResponse.ModelIndex(
                        name=n, version=VERSION, state=state, reason=reason
                    )
                    for n in models
                ]
            )

    def ModelInfer(self, request, context):
        with self.service.handling(self.label + "ModelInfer", context):
            return self.infer(request, context)

    def infer(self, request, context):
        """ModelInfer's work, inside the caller's `handling`: the REST binding decodes its body within the
        same `handling`, so that a malformed body and a bad tensor end in the one error mapping."""
        name = _model(request.model_name, request.model_version)
        wanted = [o.name for o in request.outputs]
        names = [t.name for t in _outputs(name, self.service.lifecycle.engine)]
        for o in wanted:
            if o not in names:
                raise FieldError(o, f"{name} has no output {o!r}: {', '.join(names)}")
        inputs = read_inputs(request, name)
        run = {SYNTHESIZE: self._synthesize, COMPLETE: self._complete, ENERGY: self._energy}[name]
        outputs = run(inputs, context)
        response = oip.ModelInferResponse(model_name=name, model_version=VERSION, id=request.id)
        for o in wanted or names:
            a = np.ascontiguousarray(outputs[o], dtype="<f4")
            response.outputs.add(name=o, datatype="FP32", shape=list(a.shape))
            response.raw_output_contents.append(a.tobytes())
        return response

    def _synthesize(self, inputs: dict, context) -> dict[str, np.ndarray]:
        engine, limits = self.service.lifecycle.engine, self.service.limits
        if "seeds" in inputs:
            if "seed" in inputs or "count" in inputs:
                raise FieldError("seeds", "give either seeds (one per image) or seed and count")
            seeds = tuple(int(s) for s in inputs["seeds"].reshape(-1))
            requests.checked_count(len(seeds), limits, "seeds")
            for s in seeds:
                requests.checked_seed(s, 1, "seeds")
        else:
            count, seed = _scalar(inputs, "count", 1, int), _scalar(inputs, "seed", 0, int)
            seeds = requests.seed_range(seed, count, limits, "seed", "count")
        params = requests.synthesis_params(
            engine,
            limits.max_steps,
            steps=_scalar(inputs, "steps", None, int),
            delta=_scalar(inputs, "step_size", None, float),
            noise=_scalar(inputs, "noise", None, bool),
        )
        return _samples(self.service.submit(self.label + "ModelInfer", SynthesisJob(seeds, params), context))

    def _complete(self, inputs: dict, context) -> dict[str, np.ndarray]:
        engine, limits = self.service.lifecycle.engine, self.service.limits
        shape = engine.image_shape
        images = requests.checked_images(inputs["images"], shape, limits, "images")  # (N, C, H, W)
        masks = requests.checked_images(inputs["masks"], shape, limits, "masks", masks=True)  # (N, C, H, W)
        if len(masks) != len(images):
            raise FieldError("masks", f"{len(masks)} masks for {len(images)} images")
        seed = requests.checked_seed(_scalar(inputs, "seed", 0, int), len(images), "seed")
        given = {name: _scalar(inputs, name, None, kind) for name, kind in COMPLETION_INPUTS.items()}
        params = requests.completion_params(engine, limits.max_steps, **given)
        job = CompletionJob(images, masks, tuple(range(seed, seed + len(images))), params)
        return _samples(self.service.submit(self.label + "ModelInfer", job, context))

    def _energy(self, inputs: dict, context) -> dict[str, np.ndarray]:
        engine, limits = self.service.lifecycle.engine, self.service.limits
        images = requests.checked_images(inputs["images"], engine.image_shape, limits, "images")
        out: Measures = self.service.submit(self.label + "ModelInfer", EnergyJob(images), context)
        return {"energy": out.energy, "score": out.score, **({} if out.ood is None else {"ood": out.ood})}


COMPLETION_INPUTS = {  # coopnets-complete's optional [1] inputs (requests.REQUEST_NAMES) and their types
    "latent_steps": int,
    "latent_step_size": float,
    "refine_steps": int,
    "refine_step_size": float,
    "restarts": int,
    "noise": bool,
    "residual_fill": bool,
    "average_restarts": bool,
    "residual_interpolant": str,
}


def _samples(out: Samples) -> dict[str, np.ndarray]:
    return {"images": out.images, "energy": out.energy}


def _model(name: str, model_version: str) -> str:
    if name not in MODELS:
        raise FieldError("model_name", f"unknown model {name!r}: {', '.join(MODELS)}")
    if model_version not in ("", VERSION):
        raise FieldError("model_version", f"{name} has version {VERSION} only, not {model_version!r}")
    return name
