"""The Open Inference Protocol's REST binding (KServe v2 / Triton HTTP) on `coop-serve --http-port`.

curl, load balancers, notebooks, `tritonclient.http` and browsers speak HTTP/JSON, not gRPC. This is a third
front door to the same service, not a second server: every endpoint calls serving.oip's InferenceService
(labelled "http/" in the metrics) with a request context of its own, so a request goes through the same
admission, drain, batcher and queue bound, limits, engine and error mapping as gRPC; the same seed gives the
same bits over either protocol. The body of an infer request becomes the very `ModelInferRequest` that gRPC
clients send (binary tensors as `raw_input_contents`), and its answer is encoded back.

    GET  /v2/health/live                      200 {"live": true}                 (no token)
    GET  /v2/health/ready                     200 {"ready": true}, else 503       (no token)
    GET  /v2                                  server metadata
    GET  /v2/models/{m}[/versions/1]          model metadata (tensor names, datatypes, shapes)
    GET  /v2/models/{m}[/versions/1]/config   Triton's model configuration, as JSON
    GET  /v2/models/{m}[/versions/1]/ready    200 {"ready": true}, else 503
    POST /v2/models/{m}[/versions/1]/infer    JSON tensors, or the binary tensor data extension
    POST /v2/repository/index                 [{"name", "version", "state", "reason"}] (read-only)

The page at `/` (serving/page: plain HTML, CSS and JavaScript, no build step) tries the model in a browser.
It calls coopnets.v1 in protobuf's JSON mapping (field names as in the .proto, int64 as strings, bytes such
as PNGs in base64), through the very CoopNetsService methods gRPC calls (labelled "http/..."):

    GET  /                                    the page; GET /page/{file}: its CSS and JavaScript (no token)
    GET  /page/examples/{file}.png            held-out example images for the served bundle (no token)
    GET  /api/info                            {"name", "info": ModelInfoResponse, "examples", "occlusions"}
    POST /api/synthesize | complete | energy  a SynthesizeRequest | CompleteRequest | EnergyRequest
    POST /api/synthesize/stream               a SynthesizeStreamRequest, answered as server-sent events:
                                              `snapshot` and `image` (a SynthesizeEvent each), then `end`;
                                              `error` if it fails after the first event. Closing the
                                              stream cancels the synthesis, as a gRPC cancel does.

Binary tensor data: with a header `Inference-Header-Content-Length: N` the body's first N bytes are the JSON
request and the rest are the inputs whose `parameters.binary_data_size` says so, in order. Outputs come
back binary where `outputs[i].parameters.binary_data` or the request's `parameters.binary_data_output` asks,
and the answer then carries the same header; otherwise as flat JSON `data`, which round-trips float32
exactly.

Errors are JSON {"error": message, "field": name} with the codes KServe and Triton use: 400 for bad input
(naming the input or field as the gRPC BadRequest does), 401 without the token, 404 for an unknown model or
version or path, 413 over --max-receive-mb, 429 with Retry-After when the batch queue or the handler pool is
full, 503 (Retry-After) before warm-up and while draining, 504 past the request's `timeout` parameter; bad
input never answers 500.

Runs on starlette and uvicorn (what KServe's Python server runs on) in a thread of coop-serve's process; the
handlers hand the blocking work to a bounded thread pool (--workers, as gRPC's), and a client that hangs up
cancels its work as a gRPC cancel does.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import re
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from importlib.resources import files
from pathlib import Path

import anyio
import grpc
import numpy as np
import uvicorn
from coopnets.contract.bundle import SHIPPED, SHIPPED_NAMES
from coopnets.contract.codec import FieldError
from coopnets.contract.occlusions import DEFAULT_OCCLUSIONS, PAPER_OCCLUSIONS, parse_occlusion
from coopnets.oip import grpc_service_pb2 as oip
from coopnets.serving.oip import DTYPES, InferenceService
from coopnets.serving.service import CoopNetsService
from coopnets.v1 import coopnets_pb2 as pb
from google.protobuf import json_format
from google.rpc import error_details_pb2, status_pb2
from PIL import Image as PILImage
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

log = logging.getLogger(__name__)

LABEL = "http/"  # metrics: coopnets_requests_total{rpc="http/ModelInfer"}
HEADER_LENGTH = "Inference-Header-Content-Length"
RETRY_AFTER_S = "1"
# gRPC status -> HTTP status, as KServe's and Triton's HTTP servers answer the same errors
HTTP_STATUS = {
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.UNAUTHENTICATED: 401,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
    grpc.StatusCode.CANCELLED: 499,  # the client has gone: nobody reads it, but logs and metrics tell
    grpc.StatusCode.INTERNAL: 500,
}
NOT_FOUND_FIELDS = ("model_name", "model_version")  # a path that names nothing: 404, not 400


class Aborted(Exception):
    """What `handling` ends a refused request with (gRPC's abort), carrying its status."""

    def __init__(self, status: grpc.Status):
        super().__init__(status.details)
        self.status = status


class Context:
    """What CoopNetsService.handling and submit use of a grpc.ServicerContext, for one HTTP request: the
    callbacks that set its stop event run when the client hangs up or the `timeout` parameter passes."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._callbacks: list[Callable[[], None]] = []
        self._ended = False
        self.deadline: float | None = None  # time.monotonic()

    def add_callback(self, callback: Callable[[], None]) -> bool:
        with self._lock:
            if not self._ended:
                self._callbacks.append(callback)
                return True
        return False

    def end(self) -> None:
        """The request is over (client gone, timeout passed, or answered): stop what still runs for it."""
        with self._lock:
            self._ended, callbacks, self._callbacks = True, self._callbacks, []
        for callback in callbacks:
            callback()

    @property
    def ended(self) -> bool:
        return self._ended

    def time_remaining(self) -> float | None:
        return None if self.deadline is None else self.deadline - time.monotonic()

    def abort_with_status(self, status: grpc.Status):
        raise Aborted(status)

    def abort(self, code: grpc.StatusCode, details: str):
        raise Aborted(_Status(code, details, ()))


class _Status(grpc.Status):
    def __init__(self, code, details, trailing_metadata):
        self.code, self.details, self.trailing_metadata = code, details, trailing_metadata


def _field(status: grpc.Status) -> str | None:
    """The field a google.rpc.BadRequest detail names, if the status has one."""
    for key, value in status.trailing_metadata or ():
        if key == "grpc-status-details-bin":
            for detail in status_pb2.Status.FromString(value).details:
                bad = error_details_pb2.BadRequest()
                if detail.Unpack(bad) and bad.field_violations:
                    return bad.field_violations[0].field
    return None


def error(status: int, message: str, field: str | None = None, retry: bool = False) -> JSONResponse:
    body = {"error": message, **({"field": field} if field else {})}
    headers = {"Retry-After": RETRY_AFTER_S} if retry else None
    return JSONResponse(body, status_code=status, headers=headers)


def answer_too_large(size: int, limit: int) -> str:
    return (
        f"the answer ({size} bytes) exceeds --max-send-mb ({limit} bytes): ask for fewer images (count), "
        "or for binary outputs (OIP: parameters.binary_data)"
    )


def _aborted(e: Aborted) -> JSONResponse:
    field = _field(e.status)
    status = HTTP_STATUS.get(e.status.code, 500)
    if status == 400 and field in NOT_FOUND_FIELDS:
        status = 404
    return error(status, e.status.details, field, retry=status in (429, 503))


# ---- the infer body <-> ModelInferRequest / ModelInferResponse ---------------------------------------------


def _flat(data, name: str) -> list:
    """Row-major values of a nested JSON list (KServe accepts nested and flat), without recursion: a body
    nested thousands deep is refused by json.loads already, but this must not depend on it."""
    if not isinstance(data, list):
        raise FieldError(name, "data must be a JSON array of the tensor's values")
    out, stack = [], [iter(data)]
    while stack:
        for v in stack[-1]:
            if isinstance(v, list):
                stack.append(iter(v))
                break
            out.append(v)
        else:
            stack.pop()
    return out


def _strings_raw(values: list, name: str) -> bytes:
    """JSON strings as a raw BYTES tensor: each a uint32 little-endian length, then its UTF-8 bytes."""
    parts = []
    for v in values:
        if not isinstance(v, str):
            raise FieldError(name, f"BYTES data must be strings, not {type(v).__name__}")
        b = v.encode("utf-8", "surrogatepass")
        parts += [len(b).to_bytes(4, "little"), b]
    return b"".join(parts)


def _json_raw(values: list, datatype: str, name: str) -> bytes:
    """JSON numbers or booleans as the little-endian bytes of `datatype`; FieldError naming the input for a
    value of another kind or out of the datatype's range (never a silent truncation)."""
    if datatype == "BYTES":
        return _strings_raw(values, name)
    dtype = np.dtype(DTYPES[datatype][0])
    if not values:
        return b""
    if datatype == "BOOL":
        ok = all(isinstance(v, bool) for v in values)
    elif dtype.kind in "iu":
        ok = all(isinstance(v, int) and not isinstance(v, bool) for v in values)
    else:
        ok = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)
    if not ok:
        raise FieldError(name, f"data holds values that are not {datatype}")
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        if min(values) < info.min or max(values) > info.max:
            raise FieldError(name, f"a value is out of the range of {datatype}")
    try:
        return np.asarray(values, dtype=dtype).tobytes()
    except (OverflowError, ValueError) as e:  # a float beyond float32's range is inf, not an error
        raise FieldError(name, f"data does not convert to {datatype}: {e}") from None


def _dict(value, field: str) -> dict:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise FieldError(field, "must be a JSON object")
    return value


def _bool(value, field: str) -> bool:
    if not isinstance(value, bool):
        raise FieldError(field, "must be true or false")
    return value


def decode_infer(
    body: bytes, header_length: str | None, model: str, version: str
) -> tuple[oip.ModelInferRequest, dict[str, bool], float | None]:
    """The body as the ModelInferRequest gRPC clients send, which outputs go back binary (by name; "" = the
    request's default), and the `timeout` parameter in seconds (Triton's, in microseconds) if given."""
    n = _json_length(body, header_length)
    doc = _json_head(body[:n])
    request = oip.ModelInferRequest(model_name=model, model_version=version)
    if "id" in doc:
        if not isinstance(doc["id"], str):
            raise FieldError("id", "must be a string")
        request.id = doc["id"]
    params = _dict(doc.get("parameters"), "parameters")
    binary = {"": _bool(params.get("binary_data_output", False), "parameters.binary_data_output")}
    timeout = params.get("timeout")
    if timeout is not None and (isinstance(timeout, bool) or not isinstance(timeout, int) or timeout <= 0):
        raise FieldError("parameters.timeout", "must be a positive number of microseconds")
    _decode_inputs(doc.get("inputs"), memoryview(body)[n:], request)
    _decode_outputs(doc.get("outputs"), request, binary)
    return request, binary, None if timeout is None else timeout / 1e6


def _json_length(body: bytes, header_length: str | None) -> int:
    """How many of the body's first bytes are the JSON request: all, or what the binary extension's header
    says."""
    if header_length is None:
        return len(body)
    try:
        n = int(header_length)
    except ValueError:
        raise FieldError(HEADER_LENGTH, f"{header_length[:40]!r} is not a number of bytes") from None
    if not 0 <= n <= len(body):
        raise FieldError(HEADER_LENGTH, f"{n} is not between 0 and the body's {len(body)} bytes")
    return n


def _json_head(text: bytes) -> dict:
    try:
        doc = json.loads(text) if text else {}
    except (ValueError, RecursionError) as e:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise FieldError("body", f"not a JSON request ({type(e).__name__}: {str(e)[:120]})") from None
    if not isinstance(doc, dict):
        raise FieldError("body", "the request must be a JSON object with `inputs`")
    return doc


def _decode_inputs(inputs, rest: memoryview, request: oip.ModelInferRequest) -> None:
    """Adds each input's name, datatype, shape and raw bytes (JSON `data`, or its slice of the binary `rest`,
    taken in order) to `request`; every byte of `rest` must belong to an input."""
    if not isinstance(inputs, list):
        raise FieldError("inputs", "must be a JSON array of tensors")
    at = 0
    for i, t in enumerate(inputs):
        name, datatype, shape = _tensor_head(t, i)
        size = _dict(t.get("parameters"), f"{name}.parameters").get("binary_data_size")
        if size is not None:
            if isinstance(size, bool) or not isinstance(size, int) or size < 0:
                raise FieldError(name, "parameters.binary_data_size must be a number of bytes >= 0")
            if "data" in t:
                raise FieldError(name, "give either data or parameters.binary_data_size, not both")
            if at + size > len(rest):
                raise FieldError(
                    name, f"binary_data_size {size} runs past the body's end ({len(rest) - at} bytes left)"
                )
            raw = bytes(rest[at : at + size])
            at += size
        elif "data" not in t:
            raise FieldError(name, "has neither data nor parameters.binary_data_size")
        elif datatype in DTYPES:
            raw = _json_raw(_flat(t["data"], name), datatype, name)
        else:
            raw = b""  # read_inputs refuses the datatype, naming the input as gRPC does
        request.inputs.add(name=name, datatype=datatype, shape=shape)
        request.raw_input_contents.append(raw)
    if at != len(rest):
        raise FieldError(HEADER_LENGTH, f"{len(rest) - at} bytes after the JSON belong to no input")


def _tensor_head(t, i: int) -> tuple[str, str, list]:
    """An input tensor's name, datatype and shape, each checked for its JSON type."""
    if not isinstance(t, dict):
        raise FieldError(f"inputs[{i}]", "must be a JSON object")
    name = t.get("name")
    if not isinstance(name, str) or not name:
        raise FieldError(f"inputs[{i}].name", "must be a non-empty string")
    datatype = t.get("datatype")
    if not isinstance(datatype, str):
        raise FieldError(name, "datatype must be a string such as INT64 or FP32")
    shape = t.get("shape")
    if not isinstance(shape, list) or not all(
        isinstance(d, int) and not isinstance(d, bool) and 0 <= d < 2**63 for d in shape
    ):
        raise FieldError(name, "shape must be a JSON array of sizes >= 0")
    return name, datatype, shape


def _decode_outputs(outputs, request: oip.ModelInferRequest, binary: dict[str, bool]) -> None:
    """The requested outputs, and which of them go back binary."""
    if outputs is None:
        return
    if not isinstance(outputs, list):
        raise FieldError("outputs", "must be a JSON array")
    for i, o in enumerate(outputs):
        if not isinstance(o, dict) or not isinstance(o.get("name"), str):
            raise FieldError(f"outputs[{i}]", "must be a JSON object with a name")
        p = _dict(o.get("parameters"), f"outputs[{i}].parameters")
        if "binary_data" in p:
            binary[o["name"]] = _bool(p["binary_data"], f"outputs[{i}].parameters.binary_data")
        request.outputs.add(name=o["name"])


def encode_infer(response: oip.ModelInferResponse, binary: dict[str, bool]) -> Response:
    """The answer: JSON only, or (some output binary) the JSON header then the binary outputs in order."""
    outputs, blobs = [], []
    for o, raw in zip(response.outputs, response.raw_output_contents, strict=True):
        t = {"name": o.name, "datatype": o.datatype, "shape": list(o.shape)}
        if binary.get(o.name, binary[""]):
            t["parameters"] = {"binary_data_size": len(raw)}
            blobs.append(raw)
        else:
            t["data"] = np.frombuffer(raw, DTYPES[o.datatype][0]).tolist()
        outputs.append(t)
    head = {"model_name": response.model_name, "model_version": response.model_version, "outputs": outputs}
    if response.id:
        head["id"] = response.id
    text = json.dumps(head, separators=(",", ":")).encode()
    if not blobs:
        return Response(text, media_type="application/json")
    return Response(
        b"".join([text, *blobs]),
        media_type="application/octet-stream",
        headers={HEADER_LENGTH: str(len(text))},
    )


def _model_config_json(response: oip.ModelConfigResponse) -> dict:
    """Triton's HTTP config: the ModelConfig message as JSON, its int64 dims as numbers (protobuf's JSON
    mapping writes int64 as strings, which Triton's own server does not)."""
    config = json_format.MessageToDict(response.config, preserving_proto_field_name=True)
    for key in ("input", "output"):
        for t in config.get(key, []):
            t["dims"] = [int(d) for d in t.get("dims", [])]
    return config


# ---- the page: its files, its examples, and coopnets.v1 in protobuf's JSON mapping ----------------------

PAGE = files("coopnets.serving") / "page"  # index.html, page.css, page.js: package data, no build step
EXAMPLES = SHIPPED / "examples"  # models/examples/<bundle>/*.png (models/examples/README.md)
PAGE_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".png": "image/png",
}
# The page loads nothing from elsewhere and runs no inline script: a token typed into it stays on this server
PAGE_HEADERS = {
    "Cache-Control": "no-cache",
    "Content-Security-Policy": (
        "default-src 'self'; img-src 'self' data: blob:; object-src 'none'; base-uri 'none'; "
        "form-action 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}
FILE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")  # one plain name: no path, no dot-files


def page_file(folder, name: str) -> Response:
    """A file of `folder` (the page's, or an examples folder) by its plain name; 404 for anything else,
    so that no request reaches outside the folder."""
    kind = PAGE_TYPES.get(Path(name).suffix)
    path = folder / name if kind and FILE_NAME.fullmatch(name) else None
    if path is None or not path.is_file():
        return error(404, f"no file {name!r} here: the page is at /")
    return Response(path.read_bytes(), media_type=kind, headers=PAGE_HEADERS)


def _image_shape(png: Path) -> tuple[int, int, int] | None:
    with PILImage.open(png) as image:  # reads the header only
        channels = {"L": 1, "RGB": 3}.get(image.mode)
        return None if channels is None else (channels, image.height, image.width)


def shipped_as(bundle_path: Path) -> str | None:
    """The shipped name of the bundle at `bundle_path` (reference, cifar10), or None."""
    here = bundle_path.resolve()
    return next((n for n in SHIPPED_NAMES if here == (SHIPPED / n).resolve()), None)


def examples_folder(bundle_path: Path, shape: tuple[int, int, int]) -> Path | None:
    """The held-out examples for the bundle: a shipped bundle's own, else the first folder whose images have
    the bundle's shape (a Fashion-MNIST run of `make demo` gets the reference's), else None."""
    if not EXAMPLES.is_dir():
        return None
    own = shipped_as(bundle_path)
    folders = sorted(EXAMPLES.iterdir(), key=lambda f: (f.name != own, f.name))
    for folder in folders:
        pngs = sorted(folder.glob("*.png")) if folder.is_dir() else []
        if pngs and _image_shape(pngs[0]) == tuple(shape):
            return folder
    return None


def page_occlusions(shape: tuple[int, int, int]) -> list[str]:
    """The named occlusions (contract.occlusions) the page offers for images of `shape`."""
    names, (_, h, w) = dict.fromkeys((*DEFAULT_OCCLUSIONS, *PAPER_OCCLUSIONS)), shape
    ok = []
    for name in names:
        with contextlib.suppress(ValueError):
            parse_occlusion(name, h, w)
            ok.append(name)
    return ok


def to_json(message) -> dict:
    """A coopnets.v1 message in protobuf's JSON mapping, fields named as in the .proto and zeros written
    (the page reads `steps: 0` and `noise: false` rather than guessing defaults)."""
    try:
        return json_format.MessageToDict(
            message, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
        )
    except TypeError:  # protobuf < 5.26 names the option differently
        return json_format.MessageToDict(
            message, preserving_proto_field_name=True, including_default_value_fields=True
        )


def _parse_error_field(message: str) -> str:
    """The field path a json_format.ParseError names: "Failed to parse langevin field: Failed to parse
    steps field: ..." is langevin.steps; 'has no field named "x"' adds x."""
    names = re.findall(r"Failed to parse (\w+) field", message)
    unknown = re.search(r'has no field named "([^"]+)"', message)
    return ".".join([*names, *([unknown.group(1)] if unknown else [])]) or "body"


def from_json(body: bytes, cls):
    """The body as a `cls` message (protobuf's JSON mapping); FieldError naming the field otherwise, so
    that a bad body answers 400 as a bad gRPC request does."""
    try:
        doc = json.loads(body) if body.strip() else {}
    except (ValueError, RecursionError) as e:
        raise FieldError("body", f"not a JSON request ({type(e).__name__}: {str(e)[:120]})") from None
    if not isinstance(doc, dict):
        raise FieldError(
            "body", f"must be a JSON object: a {cls.DESCRIPTOR.full_name} in protobuf's JSON form"
        )
    try:
        return json_format.ParseDict(doc, cls())
    except (json_format.ParseError, ValueError, TypeError) as e:
        text = str(e).split("\n")[0][:300]
        raise FieldError(_parse_error_field(text), text) from None


def sse(event: str, data: dict) -> bytes:
    """One server-sent event."""
    return f"event: {event}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode()


class EventStream(Response):
    """A SynthesizeStream as server-sent events, its events pulled one at a time in the handler pool. The
    client's hang-up (the page's Stop button aborts its fetch) ends `ctx`, which stops the sampler before its
    next Langevin step, or closes the stream between two events: either way the service counts a cancel, as
    for gRPC. `done` runs once at the end (it frees the handler slot)."""

    media_type = "text/event-stream"

    def __init__(self, first, events: Iterator, ctx: Context, pool, done: Callable[[], None]):
        self.status_code, self.background = 200, None
        self.init_headers({"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        self.first, self.events, self.ctx, self.pool, self.done = first, events, ctx, pool, done

    async def __call__(self, scope, receive, send) -> None:
        try:
            await send({"type": "http.response.start", "status": 200, "headers": self.raw_headers})
            async with anyio.create_task_group() as tg:

                async def watch() -> None:
                    while (await receive())["type"] != "http.disconnect":
                        pass
                    self.ctx.end()

                tg.start_soon(watch)
                try:
                    await self._pump(send)
                finally:
                    tg.cancel_scope.cancel()
        finally:
            self.ctx.end()
            with anyio.CancelScope(shield=True):  # a stream the client left: GeneratorExit into the service's
                await anyio.to_thread.run_sync(self.events.close)
            self.done()

    async def _pump(self, send) -> None:
        event = self.first
        while event is not None and not self.ctx.ended:
            await send({"type": "http.response.body", "body": self._encode(event), "more_body": True})
            if self.ctx.ended:
                return
            try:
                event = await anyio.to_thread.run_sync(next, self.events, None, limiter=self.pool)
            except Aborted as e:
                doc = json.loads(_aborted(e).body)
                data = sse("error", {**doc, "status": HTTP_STATUS.get(e.status.code, 500)})
                await send({"type": "http.response.body", "body": data, "more_body": False})
                return
        body = b"" if self.ctx.ended else sse("end", {})
        await send({"type": "http.response.body", "body": body, "more_body": False})

    @staticmethod
    def _encode(event: pb.SynthesizeEvent) -> bytes:
        return sse("image" if event.final else "snapshot", to_json(event))


# ---- the ASGI application ---------------------------------------------------------------------------------


class RestApp:
    """The starlette application over `service`; `token` (or None) guards all but /v2/health/*."""

    def __init__(self, service: CoopNetsService, token: str | None, workers: int):
        self.service = service
        self.oip = InferenceService(service, label=LABEL)
        self._expected = None if token is None else f"Bearer {token}".encode()
        self.workers = workers
        self._limiter: anyio.CapacityLimiter | None = None  # made in the server's event loop
        self._pool: anyio.CapacityLimiter | None = None
        paths = ("/v2/models/{model}", "/v2/models/{model}/versions/{version}")
        routes = [
            Route("/v2/health/live", self.live),
            Route("/v2/health/ready", self.ready),
            Route("/v2", self.server_metadata),
            Route("/v2/repository/index", self.repository_index, methods=["POST"]),
            Route("/", self.page),
            Route("/page/examples/{name}", self.example),
            Route("/page/{name}", self.page),
            Route("/api/info", self.api_info),
            Route("/api/synthesize/stream", self.api_stream, methods=["POST"]),
            Route("/api/{method:str}", self.api_unary, methods=["POST"]),
        ]
        for p in paths:
            routes += [
                Route(p, self.model_metadata),
                Route(p + "/config", self.model_config),
                Route(p + "/ready", self.model_ready),
                Route(p + "/infer", self.infer, methods=["POST"]),
            ]
        self.app = Starlette(routes=routes, exception_handlers={404: self._not_found, 405: self._not_allowed})

    async def _not_found(self, request: Request, exc) -> JSONResponse:
        return error(404, f"no endpoint {request.method} {request.url.path}: see /v2 and docs/serving.md")

    async def _not_allowed(self, request: Request, exc) -> JSONResponse:
        return error(405, f"{request.url.path} does not take {request.method}")

    # ---- health: open to probes, as grpc.health.v1 is -------------------------------------------------

    async def live(self, request: Request) -> JSONResponse:
        self.service.metrics.observe(LABEL + "ServerLive", "OK", 0.0)
        return JSONResponse({"live": True})

    async def ready(self, request: Request) -> JSONResponse:
        ready = self.service.lifecycle.ready
        self.service.metrics.observe(LABEL + "ServerReady", "OK", 0.0)
        return JSONResponse({"ready": ready}, status_code=200 if ready else 503)

    # ---- the rest goes through InferenceService, in the thread pool ------------------------------------

    def _refused(self, request: Request, rpc: str) -> JSONResponse | None:
        """401 without the token, 429 when every handler thread is taken (gRPC's maximum_concurrent_rpcs)."""
        if self._expected is not None:
            sent = request.headers.get("authorization", "").encode()
            if not hmac.compare_digest(sent, self._expected):
                self.service.metrics.observe(LABEL + rpc, "UNAUTHENTICATED", 0.0)
                response = error(401, "missing or wrong bearer token: send 'Authorization: Bearer <token>'")
                response.headers["WWW-Authenticate"] = "Bearer"
                return response
        if self._limiter is None:
            self._limiter = anyio.CapacityLimiter(self.workers)
            self._pool = anyio.CapacityLimiter(self.workers)
        try:
            self._limiter.acquire_nowait()
        except anyio.WouldBlock:
            self.service.metrics.observe(LABEL + rpc, "RESOURCE_EXHAUSTED", 0.0)
            self.service.metrics.rejected.labels("http_workers").inc()
            return error(429, f"server busy: {self.workers} requests are in flight; retry later", retry=True)
        return None

    async def _call(self, request: Request, rpc: str, work: Callable[[Context], Response]) -> Response:
        """`work` in the pool with a Context that a hang-up of the client ends (the work then stops as a
        cancelled gRPC call does); an Aborted becomes its HTTP error."""
        refused = self._refused(request, rpc)
        if refused is not None:
            return refused
        ctx = Context()
        try:
            return self._bounded(rpc, await self._run(request, rpc, ctx, work))
        finally:
            self._limiter.release()
            ctx.end()

    async def _run(self, request: Request, rpc: str, ctx: Context, work: Callable[[Context], object]):
        """What `work(ctx)` returns, run in the pool while a watcher ends `ctx` if the client hangs up; an
        Aborted, or a FieldError raised before `handling` (a page body that is not a message), becomes its
        HTTP error response."""
        async with anyio.create_task_group() as tg:

            async def watch() -> None:
                while (await request.receive())["type"] != "http.disconnect":
                    pass
                ctx.end()

            tg.start_soon(watch)
            try:
                return await anyio.to_thread.run_sync(work, ctx, limiter=self._pool)
            except Aborted as e:
                return _aborted(e)
            except FieldError as e:
                self.service.metrics.observe(LABEL + rpc, grpc.StatusCode.INVALID_ARGUMENT.name, 0.0)
                return error(400, str(e), e.field)
            finally:
                tg.cancel_scope.cancel()

    def _bounded(self, rpc: str, response: Response) -> Response:
        """`response`, or the 429 that replaces it when its body is over --max-send-mb: the bound gRPC puts on
        every answer message (RESOURCE_EXHAUSTED there too), kept for HTTP, where JSON numbers take about 3×
        the bytes of the binary floats gRPC sends."""
        limit = self.service.limits.max_send_message_bytes
        size = len(getattr(response, "body", b""))
        if size <= limit:
            return response
        self.service.metrics.observe(LABEL + rpc, "RESOURCE_EXHAUSTED", 0.0)
        return error(429, answer_too_large(size, limit), "count")

    async def _unary(self, request: Request, rpc: str, call: Callable[[Context], object], answer) -> Response:
        return await self._call(request, rpc, lambda ctx: answer(call(ctx)))

    async def server_metadata(self, request: Request) -> Response:
        def answer(r: oip.ServerMetadataResponse) -> Response:
            extensions = [*r.extensions, "binary_tensor_data", "model_repository(read-only index)"]
            return JSONResponse({"name": r.name, "version": r.version, "extensions": extensions})

        return await self._unary(
            request,
            "ServerMetadata",
            lambda ctx: self.oip.ServerMetadata(oip.ServerMetadataRequest(), ctx),
            answer,
        )

    def _names(self, request: Request) -> tuple[str, str]:
        return request.path_params["model"], request.path_params.get("version", "")

    async def model_metadata(self, request: Request) -> Response:
        name, version = self._names(request)

        def answer(r: oip.ModelMetadataResponse) -> Response:
            def tensors(ts):
                return [{"name": t.name, "datatype": t.datatype, "shape": list(t.shape)} for t in ts]

            return JSONResponse(
                {
                    "name": r.name,
                    "versions": list(r.versions),
                    "platform": r.platform,
                    "inputs": tensors(r.inputs),
                    "outputs": tensors(r.outputs),
                }
            )

        return await self._unary(
            request,
            "ModelMetadata",
            lambda ctx: self.oip.ModelMetadata(oip.ModelMetadataRequest(name=name, version=version), ctx),
            answer,
        )

    async def model_config(self, request: Request) -> Response:
        name, version = self._names(request)
        return await self._unary(
            request,
            "ModelConfig",
            lambda ctx: self.oip.ModelConfig(oip.ModelConfigRequest(name=name, version=version), ctx),
            lambda r: JSONResponse(_model_config_json(r)),
        )

    async def model_ready(self, request: Request) -> Response:
        name, version = self._names(request)

        def answer(r: oip.ModelReadyResponse) -> Response:
            return JSONResponse({"name": name, "ready": r.ready}, status_code=200 if r.ready else 503)

        return await self._unary(
            request,
            "ModelReady",
            lambda ctx: self.oip.ModelReady(oip.ModelReadyRequest(name=name, version=version), ctx),
            answer,
        )

    async def repository_index(self, request: Request) -> Response:
        body = await request.body()  # tritonclient posts an empty body; Triton's is {"ready": bool}

        def call(ctx: Context) -> Response:
            with self.service.handling(LABEL + "RepositoryIndex", ctx):
                try:
                    doc = json.loads(body) if body.strip() else {}
                except (ValueError, RecursionError):
                    raise FieldError("body", "not a JSON object") from None
                doc = _dict(doc, "body")
                ready = _bool(doc.get("ready", False), "ready")
            r = self.oip.RepositoryIndex(oip.RepositoryIndexRequest(ready=ready), ctx)
            models = [
                {"name": m.name, "version": m.version, "state": m.state, "reason": m.reason} for m in r.models
            ]
            return JSONResponse(models)

        return await self._call(request, "RepositoryIndex", call)

    async def infer(self, request: Request) -> Response:
        name, version = self._names(request)
        body = await self._body(request, "ModelInfer")
        if isinstance(body, Response):
            return body
        header_length = request.headers.get(HEADER_LENGTH)

        def work(ctx: Context) -> Response:
            with self.service.handling(LABEL + "ModelInfer", ctx):
                infer_request, binary, timeout = decode_infer(body, header_length, name, version)
                timer = None
                if timeout is not None:
                    ctx.deadline = time.monotonic() + timeout
                    timer = threading.Timer(timeout, ctx.end)
                    timer.daemon = True
                    timer.start()
                try:
                    response = self.oip.infer(infer_request, ctx)
                finally:
                    if timer is not None:
                        timer.cancel()
                return encode_infer(response, binary)

        return await self._call(request, "ModelInfer", work)

    async def _body(self, request: Request, rpc: str) -> bytes | Response:
        """The request's body, or the 413 (over --max-receive-mb, before reading it where the length is
        declared) or 415 (compressed) that answers it."""
        limit = self.service.limits.max_receive_message_bytes
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            return self._too_large(rpc, declared, limit)
        if request.headers.get("content-encoding", "identity").lower() != "identity":
            self.service.metrics.observe(LABEL + rpc, "INVALID_ARGUMENT", 0.0)
            return error(415, "compressed request bodies are not accepted: send Content-Encoding identity")
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                return self._too_large(rpc, f"more than {size}", limit)
            chunks.append(chunk)
        return b"".join(chunks)

    def _too_large(self, rpc: str, size: str, limit: int) -> JSONResponse:
        self.service.metrics.observe(LABEL + rpc, "RESOURCE_EXHAUSTED", 0.0)
        return error(413, f"the request body ({size} bytes) exceeds --max-receive-mb ({limit} bytes)")

    # ---- the page at / and its JSON API ------------------------------------------------------------------

    async def page(self, request: Request) -> Response:
        """The page and its files: open without the token (as health is), since the page is where a user
        types it; they hold no model data."""
        return page_file(PAGE, request.path_params.get("name", "index.html"))

    async def example(self, request: Request) -> Response:
        """A held-out example image for the served bundle (models/examples): open as the page is; 503 until
        a bundle is served."""
        engine = self.service.lifecycle.engine
        if engine is None:
            return error(503, "no bundle is served yet: retry after warm-up", retry=True)
        folder = examples_folder(engine.bundle.path, engine.bundle.image_shape)
        return page_file(folder, request.path_params["name"]) if folder else error(404, "no examples here")

    async def api_info(self, request: Request) -> Response:
        """ModelInfo, with what the page shows besides: the bundle's name, its example images (URLs) and the
        named occlusions that fit its images."""

        def work(ctx: Context) -> Response:
            info = self.service.ModelInfo(pb.ModelInfoRequest(), ctx, rpc=LABEL + "ModelInfo")
            bundle = self.service.lifecycle.engine.bundle
            name = shipped_as(bundle.path) or "/".join(bundle.path.resolve().parts[-2:])
            folder = examples_folder(bundle.path, bundle.image_shape)
            examples = [
                {"name": f.stem, "url": f"/page/examples/{f.name}"}
                for f in (sorted(folder.glob("*.png")) if folder else [])
            ]
            occlusions = page_occlusions(bundle.image_shape)
            return JSONResponse(
                {"name": name, "info": to_json(info), "examples": examples, "occlusions": occlusions}
            )

        return await self._call(request, "ModelInfo", work)

    async def api_unary(self, request: Request) -> Response:
        """POST /api/synthesize | complete | energy: the coopnets.v1 request in protobuf's JSON mapping,
        through the servicer's own method (admission, limits, batcher, errors); the answer likewise."""
        method = {"synthesize": "Synthesize", "complete": "Complete", "energy": "Energy"}.get(
            request.path_params["method"]
        )
        if method is None:
            return error(404, f"no endpoint POST {request.url.path}: see /api/info and docs/serving.md")
        body = await self._body(request, method)
        if isinstance(body, Response):
            return body
        cls = getattr(pb, f"{method}Request")

        def work(ctx: Context) -> Response:
            answer = getattr(self.service, method)(from_json(body, cls), ctx, rpc=LABEL + method)
            return JSONResponse(to_json(answer))

        return await self._call(request, method, work)

    async def api_stream(self, request: Request) -> Response:
        """POST /api/synthesize/stream: SynthesizeStream as server-sent events (EventStream). The first event
        is pulled before answering, so that a refused request answers its HTTP status, not a stream."""
        rpc = "SynthesizeStream"
        body = await self._body(request, rpc)
        if isinstance(body, Response):
            return body
        refused = self._refused(request, rpc)
        if refused is not None:
            return refused
        ctx, opened = Context(), []

        def start(ctx: Context):
            request_ = from_json(body, pb.SynthesizeStreamRequest)
            opened.append(self.service.SynthesizeStream(request_, ctx, rpc=LABEL + rpc))
            return next(opened[0], None)

        def done() -> None:
            self._limiter.release()
            ctx.end()

        try:
            first = await self._run(request, rpc, ctx, start)
        except BaseException:
            done()
            raise
        if isinstance(first, Response):
            done()
            return first
        return EventStream(first, opened[0], ctx, self._pool, done)


# ---- uvicorn in a thread ----------------------------------------------------------------------------------


class RestServer:
    """uvicorn serving `app` on a socket bound before it starts, so that a port in use fails create_server at
    once and port 0 is known to the caller at once; stop() closes it after its requests end."""

    def __init__(self, app: RestApp, host: str, port: int, tls: dict | None = None):
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        # proto IPPROTO_TCP, not the default 0: asyncio turns Nagle's algorithm off (TCP_NODELAY) only on
        # sockets that say they are TCP, and uvicorn writes a response's head and body in two writes; with
        # Nagle on, the body waited for the client's delayed ACK of the head (40 ms on Linux) on every request
        sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
            sock.listen(2048)  # connections queue here until uvicorn's loop accepts them
        except OSError as e:
            sock.close()
            raise ValueError(
                f"cannot bind {host}:{port} for HTTP ({e.strerror}): choose another --http-port"
            ) from None
        self.socket, self.port = sock, sock.getsockname()[1]
        config = uvicorn.Config(
            app.app,
            log_config=None,  # coop-serve's logging stays as it is
            access_log=False,
            lifespan="off",
            timeout_graceful_shutdown=5,
            # uvicorn's 5 s would close a client's connection between two requests that sit minutes apart
            # or behind a load balancer whose idle timeout (60 s on the common ones) must be the shorter
            timeout_keep_alive=75,
            server_header=False,
            **(tls or {}),
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self._run, name="http", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        with contextlib.suppress(asyncio.CancelledError):
            self.server.run(sockets=[self.socket])

    def stop(self, timeout: float = 10.0) -> None:
        self.server.should_exit = True
        self.thread.join(timeout)
        self.socket.close()


def tls_options(cert: str, key: str, client_ca: str) -> dict | None:
    """uvicorn's TLS options for coop-serve's --tls-* files (None without TLS): the HTTP port is as private
    as the gRPC one."""
    if not cert:
        return None
    options = {"ssl_certfile": cert, "ssl_keyfile": key}
    if client_ca:
        options |= {"ssl_ca_certs": client_ca, "ssl_cert_reqs": ssl.CERT_REQUIRED}
    return options
