"""The Open Inference Protocol's REST binding (`coop-serve --http-port`, serving/rest.py) against a real
server on loopback: every endpoint; the same images, bit for bit, as coopnets.v1 over gRPC, in JSON and in
binary tensor data; `tritonclient.http` (a client no one here wrote) on the three models; and the error table
(400 naming the input, 401, 404, 413, 429 with Retry-After, 503 before warm-up and while draining)."""

from __future__ import annotations

import json
import threading
import urllib.error
import urllib.request

import numpy as np
import pytest
import tritonclient.grpc as triton_grpc
import tritonclient.http as triton_http
from support import TOKEN, local_server, wait_for
from tritonclient.utils import InferenceServerException, triton_to_np_dtype

AUTH = {"Authorization": f"Bearer {TOKEN}"}
MODELS = ("coopnets-synthesize", "coopnets-complete", "coopnets-energy")


def call(url: str, body: bytes | dict | None = None, headers: dict | None = None, method: str | None = None):
    """(status, headers, body bytes) of one HTTP request; a dict body is sent as JSON."""
    data = json.dumps(body).encode() if isinstance(body, dict) else body
    req = urllib.request.Request(url, data=data, headers=headers or {}, method=method)
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, r.headers, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.headers, e.read()


def infer_json(server, model: str, inputs: list, outputs=None, parameters=None, headers=AUTH):
    doc = {
        "inputs": [{"name": n, "datatype": d, "shape": list(np.shape(v)), "data": v} for n, d, v in inputs]
    }
    if outputs is not None:
        doc["outputs"] = outputs
    if parameters is not None:
        doc["parameters"] = parameters
    return call(f"{server.http_url}/v2/models/{model}/infer", doc, headers)


def output(body: bytes, name: str) -> np.ndarray:
    t = next(o for o in json.loads(body)["outputs"] if o["name"] == name)
    return np.asarray(t["data"], np.float32).reshape(t["shape"])


# ---- endpoints ---------------------------------------------------------------------------------------------


def test_health_is_open_and_the_rest_needs_the_token(coop_server):
    url = coop_server.http_url
    assert call(f"{url}/v2/health/live")[::2] == (200, b'{"live":true}')
    assert call(f"{url}/v2/health/ready")[::2] == (200, b'{"ready":true}')
    for path in ("/v2", "/v2/models/coopnets-synthesize", "/v2/models/coopnets-synthesize/ready"):
        status, headers, body = call(url + path)
        assert status == 401 and headers["WWW-Authenticate"] == "Bearer", path
        assert "bearer token" in json.loads(body)["error"]
    status, _, _ = call(f"{url}/v2", headers={"Authorization": "Bearer wrong"})
    assert status == 401
    assert (
        coop_server.metric("coopnets_requests_total", rpc="http/ServerMetadata", code="UNAUTHENTICATED") >= 2
    )


def test_metadata_config_ready_and_repository_index(coop_server, serving_engine):
    url, shape = coop_server.http_url, list(serving_engine.image_shape)
    status, _, body = call(f"{url}/v2", headers=AUTH)
    assert status == 200 and json.loads(body)["name"] == "coopnets"
    assert "binary_tensor_data" in json.loads(body)["extensions"]
    for model in MODELS:
        for prefix in (f"/v2/models/{model}", f"/v2/models/{model}/versions/1"):
            status, _, body = call(url + prefix + "/ready", headers=AUTH)
            assert (status, json.loads(body)) == (200, {"name": model, "ready": True})
            status, _, body = call(url + prefix, headers=AUTH)
            meta = json.loads(body)
            assert status == 200 and meta["name"] == model and meta["versions"] == ["1"]
    meta = json.loads(call(f"{url}/v2/models/coopnets-complete", headers=AUTH)[2])
    assert {"name": "masks", "datatype": "FP32", "shape": [-1, *shape]} in meta["inputs"]
    config = json.loads(call(f"{url}/v2/models/coopnets-complete/config", headers=AUTH)[2])
    assert config["input"][1]["name"] == "masks" and config["input"][1]["dims"] == [-1, *shape]
    index = json.loads(call(f"{url}/v2/repository/index", b"", AUTH, "POST")[2])
    assert index == [{"name": m, "version": "1", "state": "READY", "reason": ""} for m in MODELS]
    assert json.loads(call(f"{url}/v2/repository/index", {"ready": True}, AUTH)[2]) == index
    for path in ("/v2/models/coopnets-nothing", "/v2/models/coopnets-energy/versions/2/ready", "/v3"):
        status, _, body = call(url + path, headers=AUTH)
        assert status == 404, (path, body)
    assert call(f"{url}/v2/models/coopnets-nothing", headers=AUTH)[2].count(b'"field":"model_name"') == 1


def test_the_same_seed_gives_the_same_bits_as_grpc_in_json_and_binary(coop_server, client):
    expected = client.synthesize(count=3, seed=7)  # coopnets.v1 over gRPC
    status, headers, body = infer_json(
        coop_server, "coopnets-synthesize", [("seed", "INT64", [7]), ("count", "INT32", [3])]
    )
    assert status == 200 and headers["Content-Type"] == "application/json"
    np.testing.assert_array_equal(output(body, "images"), expected.images)
    np.testing.assert_array_equal(output(body, "energy"), expected.energy)
    # the binary tensor data extension: a binary input, binary outputs after the JSON header
    head = json.dumps(
        {
            "inputs": [
                {"name": "seeds", "datatype": "INT64", "shape": [2], "parameters": {"binary_data_size": 16}}
            ],
            "parameters": {"binary_data_output": True},
            "id": "r1",
        }
    ).encode()
    status, headers, body = call(
        f"{coop_server.http_url}/v2/models/coopnets-synthesize/infer",
        head + np.array([9, 8], "<i8").tobytes(),
        {**AUTH, "Inference-Header-Content-Length": str(len(head))},
    )
    assert status == 200
    n = int(headers["Inference-Header-Content-Length"])
    meta = json.loads(body[:n])
    assert meta["id"] == "r1" and [o["name"] for o in meta["outputs"]] == ["images", "energy"]
    size = meta["outputs"][0]["parameters"]["binary_data_size"]
    images = np.frombuffer(body[n : n + size], "<f4").reshape(meta["outputs"][0]["shape"])
    np.testing.assert_array_equal(images, expected.images[[2, 1]])


@pytest.fixture()
def th(coop_server):
    c = triton_http.InferenceServerClient(url=f"127.0.0.1:{coop_server.http_port}", network_timeout=60)
    yield c
    c.close()


def tensor(module, name: str, value, datatype: str):
    a = np.asarray(value, dtype=triton_to_np_dtype(datatype))
    t = module.InferInput(name, list(a.shape), datatype)
    t.set_data_from_numpy(a)
    return t


def test_tritonclient_http_gets_the_grpc_answers_on_all_three_models(coop_server, th, client, serving_engine):
    h = dict(headers={"authorization": f"Bearer {TOKEN}"})
    assert th.is_server_live() and th.is_server_ready()
    assert all(th.is_model_ready(m, **h) for m in MODELS)
    assert [m["name"] for m in th.get_model_repository_index(**h)] == list(MODELS)
    assert th.get_model_metadata("coopnets-energy", **h)["outputs"][0]["name"] == "energy"
    assert th.get_model_config("coopnets-synthesize", **h)["name"] == "coopnets-synthesize"

    r = th.infer("coopnets-synthesize", [tensor(triton_http, "seed", [5], "INT64")], **h)
    np.testing.assert_array_equal(r.as_numpy("images"), client.synthesize(count=1, seed=5).images)
    # JSON outputs (binary_data=False) are the same bits
    wanted = [triton_http.InferRequestedOutput("images", binary_data=False)]
    r = th.infer("coopnets-synthesize", [tensor(triton_http, "seed", [5], "INT64")], outputs=wanted, **h)
    np.testing.assert_array_equal(r.as_numpy("images"), client.synthesize(count=1, seed=5).images)

    rng = np.random.default_rng(1)
    images = rng.uniform(-1, 1, (2, *serving_engine.image_shape)).astype(np.float32)
    masks = np.zeros_like(images)
    masks[:, :, 6:18, 6:18] = 1
    for interpolant in (b"auto", b"biharmonic"):  # a string input travels too

        def inputs(module, interpolant=interpolant):
            return [
                tensor(module, "images", images, "FP32"),
                tensor(module, "masks", masks, "FP32"),
                tensor(module, "seed", [3], "INT64"),
                tensor(module, "residual_interpolant", np.array([interpolant], object), "BYTES"),
            ]

        r = th.infer("coopnets-complete", inputs(triton_http), **h)
        tg = triton_grpc.InferenceServerClient(url=coop_server.address)
        try:
            expected = tg.infer(
                "coopnets-complete", inputs(triton_grpc), headers={"authorization": f"Bearer {TOKEN}"}
            )
        finally:
            tg.close()
        np.testing.assert_array_equal(r.as_numpy("images"), expected.as_numpy("images"))
        np.testing.assert_array_equal(r.as_numpy("energy"), expected.as_numpy("energy"))
    for i in range(2):  # and image by image, coopnets.v1's Complete (auto: the harmonic fill, this hole)
        one = th.infer(
            "coopnets-complete",
            [
                tensor(triton_http, "images", images[i : i + 1], "FP32"),
                tensor(triton_http, "masks", masks[i : i + 1], "FP32"),
                tensor(triton_http, "seed", [3 + i], "INT64"),
            ],
            **h,
        )
        expected = client.complete(images[i], mask=masks[i], seed=3 + i)
        np.testing.assert_array_equal(one.as_numpy("images")[0], expected.recovered)
    r = th.infer("coopnets-energy", [tensor(triton_http, "images", images, "FP32")], **h)
    np.testing.assert_array_equal(r.as_numpy("energy"), client.energy(images))

    with pytest.raises(InferenceServerException) as err:
        th.infer("coopnets-synthesize", [tensor(triton_http, "steps", [201], "INT64")], **h)
    assert err.value.status() == "400" and "steps" in err.value.message()
    with pytest.raises(InferenceServerException) as err:
        th.infer("coopnets-synthesize", [tensor(triton_http, "seed", [1], "INT64")])
    assert err.value.status() == "401"


def test_grpc_answers_the_repository_index(coop_server):
    c = triton_grpc.InferenceServerClient(url=coop_server.address)
    try:
        index = c.get_model_repository_index(headers={"authorization": f"Bearer {TOKEN}"})
        assert [(m.name, m.version, m.state) for m in index.models] == [(m, "1", "READY") for m in MODELS]
    finally:
        c.close()


# ---- errors ------------------------------------------------------------------------------------------------

BAD = [
    ("coopnets-synthesize", [("steps", "INT64", [201])], "steps"),  # max_steps 200
    ("coopnets-synthesize", [("count", "INT32", [33])], "count"),  # max_count 32
    ("coopnets-synthesize", [("count", "INT32", [10**12])], "count"),  # out of INT32's range
    ("coopnets-synthesize", [("seed", "INT64", [-1])], "seed"),
    ("coopnets-synthesize", [("seed", "INT64", [1.5])], "seed"),  # not an integer
    ("coopnets-synthesize", [("seed", "INT64", ["1"])], "seed"),
    ("coopnets-synthesize", [("noise", "BOOL", [1])], "noise"),
    ("coopnets-synthesize", [("steps", "FP32", [1.0])], "steps"),  # a datatype it does not take
    ("coopnets-synthesize", [("steps", "FP16", [1])], "steps"),  # one OIP has and coopnets does not
    ("coopnets-synthesize", [("colour", "INT64", [1])], "colour"),
    ("coopnets-synthesize", [("seeds", "INT64", [1]), ("seed", "INT64", [2])], "seeds"),
    ("coopnets-energy", [("images", "FP32", np.zeros((1, 1, 28, 27)).tolist())], "images"),
    ("coopnets-complete", [("images", "FP32", np.zeros((1, 1, 28, 28)).tolist())], "masks"),
    (
        "coopnets-complete",
        [
            ("images", "FP32", np.zeros((1, 1, 28, 28)).tolist()),
            ("masks", "FP32", np.ones((1, 1, 28, 28)).tolist()),
            ("residual_interpolant", "BYTES", ["cubic"]),
        ],
        "residual_interpolant",
    ),
]


@pytest.mark.parametrize("model, inputs, field", BAD)
def test_bad_input_is_400_naming_the_input(coop_server, model, inputs, field):
    status, headers, body = infer_json(coop_server, model, inputs)
    assert status == 400 and headers["Content-Type"] == "application/json", body
    error = json.loads(body)
    assert error["field"] == field and error["error"].startswith(field), error


def binary_body(inputs: list, extra: int) -> tuple[bytes, dict]:
    """A binary-data request whose inputs (name, shape, binary_data_size) are followed by `extra` bytes."""
    head = json.dumps(
        {
            "inputs": [
                {"name": n, "datatype": "INT64", "shape": shape, "parameters": {"binary_data_size": size}}
                for n, shape, size in inputs
            ]
        }
    ).encode()
    return head + bytes(extra), {"Inference-Header-Content-Length": str(len(head))}


@pytest.mark.parametrize(
    "body, headers, field",
    [
        (b"{not json", {}, "body"),
        (b"[1, 2]", {}, "body"),
        (b'{"inputs": {}}', {}, "inputs"),
        (b'{"inputs": [{"name": "seed", "datatype": "INT64", "shape": [-1], "data": []}]}', {}, "seed"),
        (b'{"inputs": [{"name": "seed", "datatype": "INT64", "shape": [2], "data": [1]}]}', {}, "seed"),
        (b'{"inputs": [{"name": "seed", "datatype": "INT64", "shape": [1]}]}', {}, "seed"),
        (b'{"inputs": [], "parameters": {"binary_data_output": "yes"}}', {}, "parameters.binary_data_output"),
        (b'{"inputs": [], "outputs": [{"name": "pixels"}]}', {}, "pixels"),
        (b'{"inputs": []}', {"Inference-Header-Content-Length": "99"}, "Inference-Header-Content-Length"),
        (b'{"inputs": []}', {"Inference-Header-Content-Length": "x"}, "Inference-Header-Content-Length"),
        # binary lengths that lie: more than the body holds, bytes left over, too few for the shape
        binary_body([("seed", [1], 16)], 8) + ("seed",),
        binary_body([("seed", [1], 8)], 12) + ("Inference-Header-Content-Length",),
        binary_body([("seed", [2], 8)], 8) + ("seed",),
        binary_body([("seed", [1], -8)], 8) + ("seed",),
    ],
)
def test_malformed_bodies_are_400_naming_the_field(coop_server, body, headers, field):
    url = f"{coop_server.http_url}/v2/models/coopnets-synthesize/infer"
    status, _, answer = call(url, body, {**AUTH, **headers})
    assert status == 400, answer
    assert json.loads(answer)["field"] == field, answer


def test_over_the_size_limit_is_413(serving_bundle):
    import http.client

    server = local_server(serving_bundle, http_port=0, max_receive_mb=1)
    try:
        # The server answers on the declared length, before the body: a client that read nothing until
        # it had sent 2 MB could meet a closed socket (EPIPE) instead of the answer, so this one sends the
        # headers and reads the answer first, as curl does with Expect: 100-continue.
        conn = http.client.HTTPConnection("127.0.0.1", server.http_port, timeout=60)
        conn.putrequest("POST", "/v2/models/coopnets-energy/infer")
        conn.putheader("Content-Type", "application/json")
        conn.putheader("Content-Length", str(2 << 20))
        conn.endheaders()
        response = conn.getresponse()
        status, body = response.status, response.read()
        conn.close()
        assert status == 413 and "--max-receive-mb" in json.loads(body)["error"]
        assert call(f"{server.http_url}/v2/health/ready")[0] == 200
    finally:
        assert server.stop()


def test_an_answer_over_max_send_is_429_naming_count_as_grpc_bounds_it(serving_bundle):
    """--max-send-mb bounds HTTP answers as it bounds gRPC messages. 300 images of 28×28 float32 are 940,800
    bytes: under 1 MiB in gRPC's binary, over it as the page API's base64 (4/3 of that, 1,254,400) and the
    OIP's JSON numbers (several bytes each), so one count is served by gRPC and refused by HTTP. (PNG answers,
    the page's default format, are far smaller.)"""
    server = local_server(serving_bundle, http_port=0, metrics_port=0, max_send_mb=1, max_count=300)
    url, count = server.http_url, 300
    tensor = {"count": count, "seed": "1", "langevin": {"steps": 0}, "format": "IMAGE_FORMAT_TENSOR"}
    try:
        with server.client() as c:
            assert c.synthesize(count=count, seed=1, steps=0).images.shape[0] == count
        for path, body in (
            ("/api/synthesize", tensor),
            ("/v2/models/coopnets-synthesize/infer", {"inputs": [
                {"name": "count", "datatype": "INT32", "shape": [1], "data": [count]},
                {"name": "steps", "datatype": "INT32", "shape": [1], "data": [0]}]}),
        ):  # fmt: skip
            status, headers, answer = call(url + path, body)
            doc = json.loads(answer)
            assert status == 429 and doc["field"] == "count" and "--max-send-mb" in doc["error"], path
            assert "Retry-After" not in headers  # the same request would be refused again
        status, _, answer = call(url + "/api/synthesize/stream", {"request": tensor})
        # a stream sends one image per event, as gRPC one per message: each is far under the bound
        assert status == 200 and answer.count(b"event: image") == count and b"event: error" not in answer
        # within the bound: the same binary answer the OIP gives gRPC clients, and fewer images in JSON
        doc = {"inputs": [{"name": "count", "datatype": "INT32", "shape": [1], "data": [count]},
                          {"name": "steps", "datatype": "INT32", "shape": [1], "data": [0]}],
               "parameters": {"binary_data_output": True}}  # fmt: skip
        assert call(url + "/v2/models/coopnets-synthesize/infer", doc)[0] == 200
        assert call(url + "/api/synthesize", {"count": 10, "seed": "1"})[0] == 200
        assert server.metric("coopnets_requests_total", rpc="http/Synthesize", code="RESOURCE_EXHAUSTED") == 1
    finally:
        assert server.stop()


def test_a_full_queue_is_429_with_retry_after(serving_bundle):
    server = local_server(serving_bundle, http_port=0, max_batch=1, max_queue=1, max_delay_ms=0)
    answers = []
    try:

        def one():
            status, headers, _ = infer_json(
                server, "coopnets-synthesize", [("count", "INT32", [8]), ("steps", "INT32", [50])], headers={}
            )
            answers.append((status, headers.get("Retry-After")))

        threads = [threading.Thread(target=one) for _ in range(5)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert (200, None) in answers and (429, "1") in answers, answers
        assert {a for a in answers} <= {(200, None), (429, "1")}
        refused = answers.count((429, "1"))
        assert (
            server.metric("coopnets_requests_total", rpc="http/ModelInfer", code="RESOURCE_EXHAUSTED")
            == refused
        )
    finally:
        assert server.stop()


def test_503_before_warm_up_and_while_draining(serving_bundle, serving_engine):
    server = local_server(serving_bundle, http_port=0, ready=False)
    try:
        url = server.http_url
        assert call(f"{url}/v2/health/live")[0] == 200
        assert call(f"{url}/v2/health/ready")[0] == 503
        status, headers, body = infer_json(
            server, "coopnets-synthesize", [("seed", "INT64", [1])], headers={}
        )
        assert (status, headers["Retry-After"]) == (503, "1") and "warming up" in json.loads(body)["error"]
        index = json.loads(call(f"{url}/v2/repository/index", b"", method="POST")[2])
        assert {m["state"] for m in index} == {"LOADING"}
        server.lifecycle.start(serving_engine)
        assert call(f"{url}/v2/health/ready")[0] == 200
        assert infer_json(server, "coopnets-synthesize", [("seed", "INT64", [1])], headers={})[0] == 200
        server.lifecycle.drain(0.0)
        assert call(f"{url}/v2/health/ready")[0] == 503
        assert call(f"{url}/v2/models/coopnets-synthesize/ready")[0] == 503
        status, _, body = infer_json(server, "coopnets-synthesize", [("seed", "INT64", [1])], headers={})
        assert status == 503 and "shutting down" in json.loads(body)["error"]
    finally:
        server.stop()
    assert "Traceback" not in server.log()


def test_a_client_that_hangs_up_cancels_its_work(serving_bundle):
    import http.client

    server = local_server(serving_bundle, http_port=0, max_steps=100000)
    try:
        conn = http.client.HTTPConnection("127.0.0.1", server.http_port, timeout=60)
        body = json.dumps(
            {
                "inputs": [
                    {"name": "count", "datatype": "INT32", "shape": [1], "data": [8]},
                    {"name": "steps", "datatype": "INT32", "shape": [1], "data": [50000]},
                ]
            }
        )
        conn.request("POST", "/v2/models/coopnets-synthesize/infer", body)
        assert wait_for(lambda: server.metric("coopnets_batch_images_count", kind="synthesize") > 0, 30)
        conn.close()  # long before 50000 Langevin steps
        assert wait_for(
            lambda: server.metric("coopnets_cancelled_total", rpc="http/ModelInfer", stage="running") == 1, 30
        ), server.log()
    finally:
        assert server.stop(5)


def test_the_timeout_parameter_is_a_deadline(serving_bundle):
    server = local_server(serving_bundle, http_port=0, max_steps=100000)
    try:
        status, _, body = infer_json(
            server,
            "coopnets-synthesize",
            [("count", "INT32", [8]), ("steps", "INT32", [50000])],
            parameters={"timeout": 300_000},  # microseconds, as Triton's
            headers={},
        )
        assert status == 504, body
    finally:
        assert server.stop(5)


def test_connections_have_nagle_off(coop_server):
    """Every accepted connection has TCP_NODELAY set. uvicorn writes a response's head and body in two writes;
    with Nagle's algorithm on, the body waits for the client's delayed ACK of the head, 40 ms on Linux, on
    every keep-alive request (bench/service.py's HTTP column showed it). asyncio sets TCP_NODELAY only on
    sockets whose proto says TCP, so the listening socket must be made with IPPROTO_TCP."""
    import http.client
    import socket

    conn = http.client.HTTPConnection("127.0.0.1", coop_server.http_port, timeout=30)
    try:
        conn.request("GET", "/v2/health/live")
        assert conn.getresponse().read() == b'{"live":true}'
        connections = coop_server.server.http.server.server_state.connections  # uvicorn's open connections
        sockets = [c.transport.get_extra_info("socket") for c in connections]
        assert sockets and all(s.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) for s in sockets)
    finally:
        conn.close()
