"""The Open Inference Protocol on coop-serve's port, called by tritonclient (the ecosystem's own client, in
this environment beside coopnets): the same images, bit for bit, as coopnets.v1 for the same seeds; health and
metadata; the same token, limits and error mapping (INVALID_ARGUMENT naming the input)."""

from __future__ import annotations

import grpc
import numpy as np
import pytest
import tritonclient.grpc as triton
from coopnets.clients.client import bad_request_fields
from coopnets.oip import grpc_service_pb2 as oip
from coopnets.oip import grpc_service_pb2_grpc as oip_grpc
from support import TOKEN
from tritonclient.utils import InferenceServerException, triton_to_np_dtype

AUTH = {"authorization": f"Bearer {TOKEN}"}


@pytest.fixture()
def tc(coop_server):
    c = triton.InferenceServerClient(url=coop_server.address)
    yield c
    c.close()


def tensor(name: str, value, datatype: str) -> triton.InferInput:
    a = np.asarray(value, dtype=triton_to_np_dtype(datatype))
    t = triton.InferInput(name, list(a.shape), datatype)
    t.set_data_from_numpy(a)
    return t


def infer(tc, model: str, *inputs, outputs=None):
    wanted = [triton.InferRequestedOutput(o) for o in outputs] if outputs else None
    return tc.infer(model, list(inputs), outputs=wanted, headers=AUTH, client_timeout=60)


def test_health_and_metadata(tc, serving_engine):
    assert tc.is_server_live(headers=AUTH) and tc.is_server_ready(headers=AUTH)
    c, h, w = serving_engine.image_shape
    for model in ("coopnets-synthesize", "coopnets-complete", "coopnets-energy"):
        assert tc.is_model_ready(model, headers=AUTH)
    meta = tc.get_model_metadata("coopnets-synthesize", headers=AUTH)
    assert meta.versions == ["1"]
    assert {(t.name, t.datatype, tuple(t.shape)) for t in meta.outputs} == {
        ("images", "FP32", (-1, c, h, w)),
        ("energy", "FP32", (-1,)),
    }
    config = tc.get_model_config("coopnets-complete", headers=AUTH).config
    assert [i.name for i in config.input][:2] == ["images", "masks"] and not config.input[0].optional
    assert list(config.input[1].dims) == [-1, c, h, w]
    assert tc.get_server_metadata(headers=AUTH).name == "coopnets"
    energy = tc.get_model_metadata("coopnets-energy", headers=AUTH)
    assert [t.name for t in energy.outputs] == ["energy", "score"]  # no `ood`: this bundle has no typicality


def test_synthesis_is_bit_for_bit_the_coopnets_v1_images(tc, client):
    expected = client.synthesize(count=4, seed=7)
    got = infer(tc, "coopnets-synthesize", tensor("seed", [7], "INT64"), tensor("count", [4], "INT32"))
    np.testing.assert_array_equal(got.as_numpy("images"), expected.images)
    np.testing.assert_array_equal(got.as_numpy("energy"), expected.energy)
    one_by_one = infer(tc, "coopnets-synthesize", tensor("seeds", [10, 8], "INT64"), outputs=["images"])
    np.testing.assert_array_equal(
        one_by_one.as_numpy("images"), expected.images[[3, 1]]
    )  # one seed per image
    assert one_by_one.as_numpy("energy") is None  # only what was asked for
    steps = infer(
        tc,
        "coopnets-synthesize",
        tensor("seed", [3], "INT64"),
        tensor("steps", [1], "INT64"),
        tensor("noise", [False], "BOOL"),
    )
    np.testing.assert_array_equal(
        steps.as_numpy("images"), client.synthesize(count=1, seed=3, steps=1, noise=False).images
    )


def test_completion_and_energy_are_the_coopnets_v1_answers(tc, client, serving_engine):
    rng = np.random.default_rng(0)
    shape = serving_engine.image_shape
    images = rng.uniform(-1, 1, (2, *shape)).astype(np.float32)
    masks = np.zeros_like(images)
    masks[:, :, 8:20, 8:20] = 1
    got = infer(
        tc,
        "coopnets-complete",
        tensor("images", images, "FP32"),
        tensor("masks", masks, "FP32"),
        tensor("seed", [5], "INT64"),
    )
    for i in range(2):  # image i uses seed + i, as coop-complete's inputs do
        expected = client.complete(images[i], mask=masks[i], seed=5 + i)
        np.testing.assert_array_equal(got.as_numpy("images")[i], expected.recovered)
        assert got.as_numpy("energy")[i] == np.float32(expected.energy)
    # each choice travels: the bundle's defaults (residual on, chains averaged, auto = harmonic on this
    # block) asked for otherwise give coopnets.v1's answer to the same override, and a different image
    for name, value, datatype in (
        ("residual_fill", False, "BOOL"),
        ("average_restarts", False, "BOOL"),
        ("residual_interpolant", b"biharmonic", "BYTES"),
    ):
        one = infer(
            tc,
            "coopnets-complete",
            tensor("images", images[:1], "FP32"),
            tensor("masks", masks[:1], "FP32"),
            tensor("seed", [5], "INT64"),
            tensor(name, np.array([value], dtype=object if datatype == "BYTES" else None), datatype),
        )
        asked = value.decode() if isinstance(value, bytes) else value
        expected = client.complete(images[0], mask=masks[0], seed=5, **{name: asked})
        np.testing.assert_array_equal(one.as_numpy("images")[0], expected.recovered)
        assert not np.array_equal(one.as_numpy("images")[0], got.as_numpy("images")[0]), name
    energy = infer(tc, "coopnets-energy", tensor("images", images, "FP32"))
    np.testing.assert_array_equal(energy.as_numpy("energy"), client.energy(images))


def test_the_token_guards_it(tc):
    with pytest.raises(InferenceServerException) as err:
        tc.infer("coopnets-synthesize", [tensor("seed", [1], "INT64")])
    assert "UNAUTHENTICATED" in err.value.status()


@pytest.mark.parametrize(
    "model, inputs, field",
    [
        ("coopnets-synthesize", [("steps", [201], "INT64")], "steps"),  # max_steps 200
        ("coopnets-synthesize", [("count", [33], "INT32")], "count"),  # max_count 32
        ("coopnets-synthesize", [("seed", [-1], "INT64")], "seed"),
        ("coopnets-synthesize", [("step_size", [np.nan], "FP32")], "step_size"),
        ("coopnets-synthesize", [("seeds", [1], "INT64"), ("seed", [2], "INT64")], "seeds"),
        ("coopnets-synthesize", [("steps", [1.0], "FP32")], "steps"),  # a datatype it does not take
        ("coopnets-synthesize", [("colour", [1], "INT64")], "colour"),
        ("coopnets-energy", [("images", np.zeros((1, 1, 28, 27)), "FP32")], "images"),
        ("coopnets-energy", [("images", np.full((1, 1, 28, 28), np.inf), "FP32")], "images[0].tensor.data"),
        ("coopnets-complete", [("images", np.zeros((1, 1, 28, 28)), "FP32")], "masks"),
        (
            "coopnets-complete",
            [("images", np.zeros((1, 1, 28, 28)), "FP32"), ("masks", np.full((1, 1, 28, 28), 0.5), "FP32")],
            "masks[0].tensor.data",
        ),
        (
            "coopnets-complete",
            [
                ("images", np.zeros((1, 1, 28, 28)), "FP32"),
                ("masks", np.ones((1, 1, 28, 28)), "FP32"),
                ("residual_interpolant", np.array([b"cubic"], dtype=object), "BYTES"),
            ],
            "residual_interpolant",
        ),
        ("coopnets-nothing", [("seed", [1], "INT64")], "model_name"),
    ],
)
def test_bad_input_is_invalid_argument_naming_the_input(coop_server, tc, model, inputs, field):
    tensors = [tensor(n, v, d) for n, v, d in inputs]
    with pytest.raises(InferenceServerException) as err:
        infer(tc, model, *tensors)
    assert err.value.status() == "StatusCode.INVALID_ARGUMENT", err.value.message()
    assert field in err.value.message()
    # the same request on a plain gRPC stub: the google.rpc.BadRequest detail names exactly that input
    request = oip.ModelInferRequest(model_name=model)
    for t in tensors:
        request.inputs.append(t._get_tensor())
        request.raw_input_contents.append(t._get_content())
    with grpc.insecure_channel(coop_server.address) as channel:
        with pytest.raises(grpc.RpcError) as raw:
            oip_grpc.GRPCInferenceServiceStub(channel).ModelInfer(
                request, timeout=30, metadata=list(AUTH.items())
            )
    assert raw.value.code() == grpc.StatusCode.INVALID_ARGUMENT and bad_request_fields(raw.value) == [field]


def test_typed_contents_work_as_well_as_raw_bytes(coop_server, client):
    """KServe's own clients send `contents` rather than raw bytes."""
    request = oip.ModelInferRequest(model_name="coopnets-synthesize")
    request.inputs.add(name="seed", datatype="INT64", shape=[1]).contents.int64_contents.append(11)
    request.inputs.add(name="count", datatype="INT64", shape=[1]).contents.int64_contents.append(2)
    with grpc.insecure_channel(coop_server.address) as channel:
        stub = oip_grpc.GRPCInferenceServiceStub(channel)
        response = stub.ModelInfer(request, timeout=60, metadata=list(AUTH.items()))
    (images,) = [i for i, o in enumerate(response.outputs) if o.name == "images"]
    got = np.frombuffer(response.raw_output_contents[images], "<f4").reshape(response.outputs[images].shape)
    np.testing.assert_array_equal(got, client.synthesize(count=2, seed=11).images)
    # a string input as typed bytes_contents: the harmonic residual asked for where auto would take the
    # biharmonic one (a scattered hole)
    image = got[0]  # (C, H, W)
    mask = np.zeros_like(image)
    mask[:, ::2] = 1  # every other column: a scattered hole
    request = oip.ModelInferRequest(model_name="coopnets-complete")
    for name, a in (("images", image[None]), ("masks", mask[None])):
        request.inputs.add(name=name, datatype="FP32", shape=list(a.shape)).contents.fp32_contents.extend(
            a.reshape(-1).tolist()
        )
    text = request.inputs.add(name="residual_interpolant", datatype="BYTES", shape=[1])
    text.contents.bytes_contents.append(b"harmonic")
    with grpc.insecure_channel(coop_server.address) as channel:
        stub = oip_grpc.GRPCInferenceServiceStub(channel)
        response = stub.ModelInfer(request, timeout=60, metadata=list(AUTH.items()))
    (out,) = [i for i, o in enumerate(response.outputs) if o.name == "images"]
    recovered = np.frombuffer(response.raw_output_contents[out], "<f4").reshape(image.shape)
    expected = client.complete(image, mask=mask, seed=0, residual_interpolant="harmonic").recovered
    np.testing.assert_array_equal(recovered, expected)
    assert not np.array_equal(recovered, client.complete(image, mask=mask, seed=0).recovered)


def test_model_infer_is_counted_like_every_rpc(coop_server, tc):
    before = coop_server.metric("coopnets_requests_total", rpc="ModelInfer", code="OK")
    infer(tc, "coopnets-energy", tensor("images", np.zeros((1, 1, 28, 28), np.float32), "FP32"))
    assert coop_server.metric("coopnets_requests_total", rpc="ModelInfer", code="OK") == before + 1
