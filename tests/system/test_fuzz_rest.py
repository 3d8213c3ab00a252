"""Property-based fuzzing of the REST binding (serving/rest.py) through a real server on loopback, as
tests/system/test_fuzz_rpc.py fuzzes gRPC.

Whatever a client posts to /v2/models/{m}/infer (bytes that are not JSON, JSON of any shape, tensors with
wrong names, datatypes, shapes and values, huge counts and sizes, `Inference-Header-Content-Length` and
`binary_data_size` values that lie about the body), every answer must be 200, 400, 404, 413 or 429 with a
JSON body (an `error` where it is not 200), never a 500, and the server must still be ready afterwards,
having logged no traceback. Small limits (count <= 4, steps <= 8, 1 MiB bodies) keep the requests that pass
validation cheap; the examples are derandomized, so CI runs the same cases every time.
"""

from __future__ import annotations

import http.client
import json
from collections import Counter

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support import local_server

pytestmark = pytest.mark.slow  # property-based: many examples through a server

ALLOWED = {200, 400, 404, 413, 429}
HEADER = "Inference-Header-Content-Length"
FUZZ = settings(
    max_examples=120,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
)
MODELS = ["coopnets-synthesize", "coopnets-complete", "coopnets-energy", "coopnets-nothing", "a/b", "%00"]
INPUTS = ["seed", "count", "seeds", "steps", "step_size", "noise", "images", "masks", "restarts", "", "x"]
DATATYPES = ["INT64", "INT32", "UINT64", "FP32", "FP64", "BOOL", "BYTES", "FP16", "BF16", "", "int64"]
STATUSES: Counter = Counter()


@pytest.fixture(scope="module")
def rest_server(serving_bundle, serving_engine):
    server = local_server(
        serving_bundle,
        engine=serving_engine,
        http_port=0,
        max_count=4,
        max_steps=8,
        max_receive_mb=1,
        max_queue=32,
        max_delay_ms=0,
    )
    yield server
    statuses = dict(sorted(STATUSES.items()))
    print(f"\nfuzz: {sum(STATUSES.values())} HTTP cases through coop-serve, statuses {statuses}")
    assert post(server, "GET", "/v2/health/ready", b"", {})[0] == 200
    assert server.stop(), server.log()
    log = server.log()
    assert "Traceback" not in log and " failed" not in log, log


def post(server, method: str, path: str, body: bytes, headers: dict) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", server.http_port, timeout=60)
    try:
        conn.request(method, path, body, headers)
        r = conn.getresponse()
        return r.status, r.read()
    finally:
        conn.close()


def check(server, model: str, body: bytes, headers: dict | None = None) -> None:
    status, answer = post(server, "POST", f"/v2/models/{model}/infer", body, headers or {})
    STATUSES[status] += 1
    assert status in ALLOWED, f"{status} {answer[:300]!r} for {body[:300]!r} {headers}"
    doc = json.loads(
        answer[: int(headers[HEADER])] if status == 200 and headers and HEADER in headers else answer
    )
    if status != 200:
        assert isinstance(doc, dict) and isinstance(doc["error"], str), doc


# ---- strategies -------------------------------------------------------------------------------------------

json_scalar = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=8),
)
json_value = st.recursive(
    json_scalar,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4),
    max_leaves=20,
)
size = st.one_of(st.integers(0, 6), st.integers(-3, 2**64), st.sampled_from([784, 2**31, 2**63 - 1]))
shape = st.one_of(st.lists(size, max_size=5), json_value)
data = st.one_of(
    st.lists(st.integers(-3, 20), max_size=6),
    st.lists(st.floats(width=32), max_size=6),
    st.lists(st.booleans(), max_size=3),
    st.lists(st.text(max_size=10), max_size=3),
    st.lists(st.lists(st.integers(0, 3), max_size=3), max_size=3),
    json_value,
)


@st.composite
def tensors(draw) -> dict:
    t = {"name": draw(st.sampled_from(INPUTS)), "datatype": draw(st.sampled_from(DATATYPES))}
    t["shape"] = draw(st.one_of(st.just([1]), shape))
    choice = draw(st.integers(0, 3))
    if choice < 2:
        t["data"] = draw(data)
    elif choice == 2:
        t["parameters"] = {"binary_data_size": draw(st.one_of(size, json_value))}
    return t


@st.composite
def infer_bodies(draw) -> tuple[bytes, dict]:
    doc: dict = {"inputs": draw(st.lists(tensors(), max_size=4))}
    if draw(st.booleans()):
        doc["outputs"] = draw(
            st.lists(
                st.fixed_dictionaries(
                    {"name": st.sampled_from(["images", "energy", "score", "ood", "x"])},
                    optional={"parameters": st.fixed_dictionaries({}, optional={"binary_data": json_value})},
                ),
                max_size=3,
            )
        )
    if draw(st.booleans()):
        doc["parameters"] = draw(
            st.fixed_dictionaries(
                {}, optional={"binary_data_output": json_value, "timeout": json_value, "priority": json_value}
            )
        )
    head = json.dumps(doc).encode()
    binary = draw(st.binary(max_size=64))
    mode = draw(st.integers(0, 2))
    if mode == 0 and not binary:
        return head, {}
    length = len(head) if mode < 2 else draw(st.integers(-5, len(head) + len(binary) + 5))
    return head + binary, {HEADER: str(length)}


# ---- properties -------------------------------------------------------------------------------------------


@FUZZ
@given(model=st.sampled_from(MODELS[:3]), body=infer_bodies())
def test_fuzz_infer_requests(rest_server, model, body):
    check(rest_server, model, *body)


@FUZZ
@given(
    model=st.sampled_from(MODELS),
    body=st.one_of(st.binary(max_size=200), json_value.map(lambda v: json.dumps(v).encode())),
)
def test_fuzz_bodies_that_are_not_requests(rest_server, model, body):
    check(rest_server, model, body)


@FUZZ
@given(
    seed=st.integers(-(2**64), 2**64),
    count=st.integers(-(2**40), 2**40),
    datatype=st.sampled_from(["INT32", "INT64", "UINT32", "UINT64"]),
)
def test_fuzz_huge_counts_and_seeds(rest_server, seed, count, datatype):
    doc = {
        "inputs": [
            {"name": "seed", "datatype": "INT64", "shape": [1], "data": [seed]},
            {"name": "count", "datatype": datatype, "shape": [1], "data": [count]},
            {"name": "steps", "datatype": "INT32", "shape": [1], "data": [1]},
        ]
    }
    check(rest_server, "coopnets-synthesize", json.dumps(doc).encode())


def test_deeply_nested_json_and_a_header_beyond_the_body(rest_server):
    check(rest_server, "coopnets-synthesize", b"[" * 100_000 + b"]" * 100_000)
    nested = {"inputs": [{"name": "seeds", "datatype": "INT64", "shape": [1], "data": [[[[[[[[[[1]]]]]]]]]]}]}
    check(rest_server, "coopnets-synthesize", json.dumps(nested).encode())
    check(rest_server, "coopnets-synthesize", b"{}", {HEADER: str(2**70)})
    check(rest_server, "coopnets-energy", b"x" * ((1 << 20) + 1))
