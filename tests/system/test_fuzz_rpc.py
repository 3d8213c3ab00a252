"""Property-based fuzzing of every coopnets.v1 RPC through a real gRPC server on loopback (create_server, in
this process).

Whatever a client sends (arbitrary field values, garbage / truncated / oversized PNGs, tensors of the wrong
size or full of NaN/inf, masks of the wrong shape or all-zero / all-one, huge counts and steps, zero or
negative step sizes, absent fields, bytes that are not a protobuf at all), every call must end in OK,
INVALID_ARGUMENT or RESOURCE_EXHAUSTED, never INTERNAL or UNKNOWN, and the server must still answer health
checks afterwards, having logged no traceback.

The server here has small limits (count <= 4, steps <= 8, 1 MiB messages) so that requests that pass
validation cost milliseconds and the oversized ones are cheap to build; the examples are derandomized, so CI
runs the same cases every time. The number of cases that ran is printed (pytest -s shows it).
"""

from __future__ import annotations

import io
import math
import struct
import zlib
from collections import Counter

import grpc
import numpy as np
import pytest
from coopnets.v1 import coopnets_pb2 as pb
from coopnets.v1 import coopnets_pb2_grpc as pb_grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image as PILImage
from support import local_server

pytestmark = pytest.mark.slow  # property-based: many examples through a server

ALLOWED = {"OK", "INVALID_ARGUMENT", "RESOURCE_EXHAUSTED"}
SHAPE = (1, 28, 28)  # the test bundle's (C, H, W)
MAX_MB = 1
FUZZ = settings(
    max_examples=100,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

CODES: Counter = Counter()  # status code name -> cases, over the whole module


@pytest.fixture(scope="module")
def fuzz_server(serving_bundle, serving_engine):
    server = local_server(
        serving_bundle,
        engine=serving_engine,
        max_count=4,
        max_steps=8,
        max_receive_mb=MAX_MB,
        max_queue=32,
        max_delay_ms=0,
    )
    yield server
    total = sum(CODES.values())
    print(f"\nfuzz: {total} RPC cases through coop-serve, codes {dict(sorted(CODES.items()))}")
    assert health_status(server) == "SERVING"
    assert server.stop(), server.log()
    log = server.log()
    assert "Traceback" not in log and " failed" not in log, log


@pytest.fixture(scope="module")
def channel(fuzz_server):
    with grpc.insecure_channel(fuzz_server.address) as ch:
        yield ch


@pytest.fixture(scope="module")
def stub(channel):
    return pb_grpc.CoopNetsStub(channel)


def health_status(server) -> str:
    with grpc.insecure_channel(server.address) as ch:
        resp = health_pb2_grpc.HealthStub(ch).Check(
            health_pb2.HealthCheckRequest(service="coopnets.v1.CoopNets"), timeout=10
        )
    return health_pb2.HealthCheckResponse.ServingStatus.Name(resp.status)


def outcome(call, *args) -> str:
    """Runs one RPC (draining a stream) and returns its final status code name."""
    try:
        result = call(*args, timeout=60)
        if not isinstance(
            result,
            (pb.SynthesizeResponse, pb.CompleteResponse, pb.EnergyResponse, pb.ModelInfoResponse, bytes),
        ):
            for _ in result:
                pass
        code = "OK"
    except grpc.RpcError as e:
        code = e.code().name
    CODES[code] += 1
    return code


def check(call, *args) -> None:
    code = outcome(call, *args)
    assert code in ALLOWED, f"{code} for {args!r:.600}"


# ---- strategies -------------------------------------------------------------------------------------------

u32 = st.one_of(st.integers(0, 12), st.integers(0, 2**32 - 1))
i64 = st.one_of(st.integers(-3, 100), st.integers(-(2**63), 2**63 - 1))
f32 = st.one_of(
    st.sampled_from([0.0, -0.0, -0.002, 0.002, 1e-30, 1e30, float("nan"), float("inf"), -float("inf")]),
    st.floats(width=32),
)
image_format = st.one_of(st.sampled_from([0, 1, 2]), st.integers(-(2**31), 2**31 - 1))


def png_bytes(size: tuple[int, int], mode: str, seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    bands = {"L": 1, "LA": 2, "RGB": 3, "RGBA": 4, "I;16": 1, "1": 1, "P": 1}[mode]
    w, h = size
    if mode == "I;16":
        img = PILImage.fromarray(rng.integers(0, 65535, (h, w), dtype=np.uint16))
    else:
        arr = rng.integers(0, 256, (h, w, bands) if bands > 1 else (h, w), dtype=np.uint8)
        img = PILImage.fromarray(arr, "L" if bands == 1 else mode).convert(mode)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_header_only(width: int, height: int) -> bytes:
    """A ~70-byte PNG whose header claims width x height grey pixels but whose data holds a few bytes: the
    shape of a decompression bomb, or of a truncated file."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", ihdr)
        + png_chunk(b"IDAT", zlib.compress(b"\0" * 64))
        + png_chunk(b"IEND", b"")
    )


@st.composite
def pngs(draw) -> bytes:
    kind = draw(st.sampled_from(["valid", "valid", "truncated", "garbage", "header", "bitflip", "oversized"]))
    size = draw(st.one_of(st.just((28, 28)), st.tuples(st.integers(1, 64), st.integers(1, 64))))
    mode = draw(st.sampled_from(["L", "LA", "RGB", "RGBA", "I;16", "1", "P"]))
    seed = draw(st.integers(0, 2**16))
    if kind == "garbage":
        return draw(st.binary(max_size=300))
    if kind == "header":
        return png_header_only(draw(st.integers(0, 2**31 - 1)), draw(st.integers(0, 2**31 - 1)))
    if kind == "oversized":  # beyond --max-receive-mb: gRPC itself answers RESOURCE_EXHAUSTED
        return png_bytes((28, 28), "L", seed) + b"\0" * (MAX_MB << 20)
    data = png_bytes(size, mode, seed)
    if kind == "truncated":
        return data[: draw(st.integers(0, len(data) - 1))]
    if kind == "bitflip":
        i = draw(st.integers(0, len(data) - 1))
        return data[:i] + bytes([data[i] ^ (1 << draw(st.integers(0, 7)))]) + data[i + 1 :]
    return data


@st.composite
def tensors(draw, mask: bool = False) -> pb.Tensor:
    shape = draw(
        st.one_of(
            st.sampled_from(
                [
                    list(SHAPE),
                    [1, *SHAPE],
                    [28, 28],
                    [3, 28, 28],
                    [2, 1, 28, 28],
                    [],
                    [0, 28, 28],
                    [1, -28, -28],
                    [2**62, 4],
                    [2**32, 2**32],
                    [784],
                    [1, 28, 28, 1],
                ]
            ),
            st.lists(st.integers(-(2**63), 2**63 - 1), max_size=5),
        )
    )
    sane = shape and all(0 < v < 4096 for v in shape) and math.prod(shape) <= 4096  # else: bytes only
    n = int(np.prod(shape)) if sane else 0
    how = draw(st.sampled_from(["values", "values", "nan", "inf", "short", "long", "random_bytes"]))
    if how == "random_bytes" or n == 0:  # incl. empty data for shapes whose int64 product wraps to 0
        return pb.Tensor(shape=shape, data=draw(st.one_of(st.just(b""), st.binary(max_size=4 * 800))))
    if mask:
        values = draw(st.sampled_from(["zeros", "ones", "binary", "half", "any"]))
        rng = np.random.default_rng(draw(st.integers(0, 2**16)))
        a = {
            "zeros": np.zeros(n),
            "ones": np.ones(n),
            "binary": rng.integers(0, 2, n),
            "half": np.full(n, 0.5),
            "any": rng.standard_normal(n),
        }[values].astype("<f4")
    else:
        a = np.random.default_rng(draw(st.integers(0, 2**16))).uniform(-3, 3, n).astype("<f4")
    if how == "nan":
        a[draw(st.integers(0, n - 1))] = np.nan
    if how == "inf":
        a[draw(st.integers(0, n - 1))] = draw(st.sampled_from([np.inf, -np.inf]))
    data = a.tobytes()
    if how == "short":
        data = data[: draw(st.integers(0, len(data) - 1))]
    if how == "long":
        data += draw(st.binary(min_size=1, max_size=8))
    return pb.Tensor(shape=shape, data=data)


@st.composite
def images(draw, mask: bool = False) -> pb.Image:
    kind = draw(st.sampled_from(["png", "tensor", "tensor", "absent"]))
    if kind == "absent":
        return pb.Image()
    if kind == "png":
        return pb.Image(png=draw(pngs()))
    return pb.Image(tensor=draw(tensors(mask)))


@st.composite
def langevin_params(draw) -> pb.LangevinParams | None:
    if draw(st.booleans()):
        return None
    p = pb.LangevinParams()
    if draw(st.booleans()):
        p.steps = draw(u32)
    if draw(st.booleans()):
        p.step_size = draw(f32)
    if draw(st.booleans()):
        p.noise = draw(st.booleans())
    return p


@st.composite
def synthesize_requests(draw) -> pb.SynthesizeRequest:
    req = pb.SynthesizeRequest()
    if draw(st.booleans()):
        req.count = draw(u32)
    if draw(st.booleans()):
        req.seed = draw(i64)
    lv = draw(langevin_params())
    if lv is not None:
        req.langevin.CopyFrom(lv)
    if draw(st.booleans()):
        req.format = draw(image_format)
    return req


occlusions = st.one_of(
    st.sampled_from(
        [
            "center:14",
            "center:0",
            "center:-3",
            "center:29",
            "center:99999999999999999999",
            "random:0.5",
            "random:0",
            "random:1",
            "random:nan",
            "random:inf",
            "random:1e-9",
            "random:-0.5",
            "left-half",
            "left-half:3",
            "rects",
            "rects:",
            "",
            ":",
            "center:",
            "center:٣",
        ]
    ),
    st.text(max_size=30),
)


@st.composite
def complete_requests(draw) -> pb.CompleteRequest:
    req = pb.CompleteRequest()
    if draw(st.integers(0, 4)):
        req.image.CopyFrom(draw(images()))
    source = draw(st.sampled_from(["mask", "occlusion", "none"]))
    if source == "mask":
        req.mask.CopyFrom(draw(images(mask=True)))
    elif source == "occlusion":
        req.occlusion = draw(occlusions)
    if draw(st.booleans()):
        req.seed = draw(i64)
    for name in ("latent_steps", "refine_steps", "restarts"):
        if draw(st.booleans()):
            setattr(req, name, draw(u32))
    for name in ("latent_step_size", "refine_step_size"):
        if draw(st.booleans()):
            setattr(req, name, draw(f32))
    if draw(st.booleans()):
        req.noise = draw(st.booleans())
    if draw(st.booleans()):
        req.format = draw(image_format)
    return req


# ---- the properties ------------------------------------------------------------------------------------


@FUZZ
@given(req=synthesize_requests())
def test_fuzz_synthesize(stub, req):
    check(stub.Synthesize, req)


@FUZZ
@given(req=synthesize_requests(), every=u32)
def test_fuzz_synthesize_stream(stub, req, every):
    check(stub.SynthesizeStream, pb.SynthesizeStreamRequest(request=req, snapshot_every=every))


@settings(FUZZ, max_examples=300)
@given(req=complete_requests())
def test_fuzz_complete(stub, req):
    check(stub.Complete, req)


@settings(FUZZ, max_examples=150)
@given(imgs=st.lists(images(), max_size=6))
def test_fuzz_energy(stub, imgs):
    check(stub.Energy, pb.EnergyRequest(images=imgs))


@settings(FUZZ, max_examples=100)
@given(
    method=st.sampled_from(["Synthesize", "SynthesizeStream", "Complete", "Energy", "ModelInfo"]),
    payload=st.one_of(
        st.binary(max_size=200), st.builds(lambda r: r.SerializeToString(), complete_requests())
    ),
)
def test_fuzz_raw_bytes_that_may_not_be_a_protobuf(channel, method, payload):
    """Arbitrary bytes as the request message: undecodable ones must not turn into INTERNAL."""
    path = f"/coopnets.v1.CoopNets/{method}"
    call = channel.unary_stream(path) if method == "SynthesizeStream" else channel.unary_unary(path)
    check(call, payload)


def test_model_info_and_health_after_the_fuzzing(fuzz_server, stub):
    check(stub.ModelInfo, pb.ModelInfoRequest())
    assert health_status(fuzz_server) == "SERVING"
    ok = stub.Synthesize(pb.SynthesizeRequest(count=2, seed=7), timeout=30)
    assert [img.seed for img in ok.images] == [7, 8]


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")  # Pillow's, on reading the header
def test_a_png_claiming_a_huge_size_is_refused_before_decoding(stub):
    """The size check comes before Pillow decodes: a 100-byte file claiming 10000 x 10000 pixels (a
    decompression bomb's shape) is refused by its header instead of being inflated."""
    with pytest.raises(grpc.RpcError) as err:
        stub.Energy(pb.EnergyRequest(images=[pb.Image(png=png_header_only(10000, 10000))]), timeout=10)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "images[0].png" in err.value.details() and "10000x10000 pixels" in err.value.details()
