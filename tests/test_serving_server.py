"""Every RPC of the real coop-serve (subprocess, torch unimportable, loopback port 0): health, batching,
streams, cancellation, rich INVALID_ARGUMENT errors, token auth, reflection, metrics."""

from __future__ import annotations

import io
import json
import threading
import time

import grpc
import numpy as np
import pytest
from support import COMPLETION, LANGEVIN, TOKEN
from coopnets.v1 import coopnets_pb2 as pb
from coopnets.v1 import coopnets_pb2_grpc as pb_grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from PIL import Image as PILImage

from clients.client import CoopNetsClient, bad_request_fields
from serving.codec import encode_png, tensor_to_proto
from serving.engine import Engine


@pytest.fixture(scope="module")
def engine(serving_bundle) -> Engine:
    return Engine.open(serving_bundle, device="cpu", threads=1)


@pytest.fixture()
def stub(coop_server):
    with grpc.insecure_channel(coop_server.address) as channel:
        yield pb_grpc.CoopNetsStub(channel)


AUTH = [("authorization", f"Bearer {TOKEN}")]


def test_health_is_serving_only_after_warm_up(coop_server):
    assert coop_server.health_history[0] == "NOT_SERVING"
    assert coop_server.health_history[-1] == "SERVING"
    log = coop_server.log()
    assert log.index("live on") < log.index("warm-up done") < log.index("health SERVING")
    assert "ImportError" not in log  # torch/trainer were never imported by the server process


def test_health_needs_no_token_and_lists_the_service(coop_server):
    with grpc.insecure_channel(coop_server.address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        for service in ("", "coopnets.v1.CoopNets"):
            resp = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
            assert resp.status == health_pb2.HealthCheckResponse.SERVING
        listed = stub.List(health_pb2.HealthListRequest(), timeout=5)
        assert "coopnets.v1.CoopNets" in listed.statuses


def test_every_other_rpc_needs_the_token(coop_server, stub):
    for method, req in (
        (stub.ModelInfo, pb.ModelInfoRequest()),
        (stub.Synthesize, pb.SynthesizeRequest(count=1)),
    ):
        with pytest.raises(grpc.RpcError) as err:
            method(req, timeout=5)
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
        with pytest.raises(grpc.RpcError) as err:
            method(req, timeout=5, metadata=[("authorization", "Bearer wrong")])
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED


def test_reflection_lists_the_services(coop_server):
    from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

    with grpc.insecure_channel(coop_server.address, options=[]) as channel:
        intercepted = grpc.intercept_channel(channel, _AddMetadata(AUTH))
        services = ProtoReflectionDescriptorDatabase(intercepted).get_services()
    assert {"coopnets.v1.CoopNets", "grpc.health.v1.Health"} <= set(services)


class _AddMetadata(grpc.UnaryUnaryClientInterceptor, grpc.StreamStreamClientInterceptor):
    def __init__(self, metadata):
        self.metadata = metadata

    def _details(self, d):
        return d._replace(metadata=list(d.metadata or []) + self.metadata)

    def intercept_unary_unary(self, continuation, details, request):
        return continuation(self._details(details), request)

    def intercept_stream_stream(self, continuation, details, requests):
        return continuation(self._details(details), requests)


def test_model_info(client, serving_bundle):
    import hashlib

    info = client.info()
    assert list(info.image_shape) == [1, 28, 28] and info.latent_dim == 100 and info.arch == "mnist28"
    assert info.langevin.steps == LANGEVIN["steps"] and info.langevin.s == pytest.approx(LANGEVIN["s"])
    assert info.completion.latent_steps == COMPLETION["latent_steps"]
    assert (
        info.completion.restarts
        == json.loads((serving_bundle / "manifest.json").read_text())["completion"]["restarts"]
    )
    assert info.bundle_sha256 == hashlib.sha256((serving_bundle / "manifest.json").read_bytes()).hexdigest()
    assert set(info.file_sha256) == {
        "generator.onnx",
        "descriptor.onnx",
        "langevin_step.onnx",
        "generator_grad.onnx",
    }
    assert info.device == "cpu"
    assert {s.graph: list(s.providers) for s in info.sessions} == {
        g: ["CPUExecutionProvider"] for g in ("generator", "descriptor", "langevin_step", "generator_grad")
    }
    assert info.limits.max_count == 32 and info.limits.max_steps == 200 and info.limits.max_batch == 16


def test_synthesize_equals_the_engine(client, engine):
    out = client.synthesize(count=3, seed=40, steps=5)
    ref = engine.synthesize([40, 41, 42], steps=5)
    assert out.seeds == [40, 41, 42]
    np.testing.assert_allclose(out.images, ref.images, rtol=0, atol=1e-6)
    np.testing.assert_allclose(out.energy, ref.energy, rtol=1e-5)
    png = client.synthesize(count=3, seed=40, steps=5, png=True)  # 8-bit, clipped
    assert np.abs(png.images - np.clip(ref.images, -1, 1)).max() <= 1 / 127.5 + 1e-6


def test_concurrent_requests_are_batched_and_identical(coop_server, client):
    seeds = [60, 61, 62, 63]
    before = (
        coop_server.metric("coopnets_batch_images_count", kind="synthesize"),
        coop_server.metric("coopnets_batch_images_sum", kind="synthesize"),
    )
    barrier, results = threading.Barrier(len(seeds)), {}

    def one(seed):
        barrier.wait()
        results[seed] = client.synthesize(count=1, seed=seed)

    threads = [threading.Thread(target=one, args=(s,)) for s in seeds]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    batches = coop_server.metric("coopnets_batch_images_count", kind="synthesize") - before[0]
    images = coop_server.metric("coopnets_batch_images_sum", kind="synthesize") - before[1]
    assert images == 4 and batches < 4  # merged into fewer ONNX Runtime batches
    together = client.synthesize(count=4, seed=60)
    assert np.array_equal(np.concatenate([results[s].images for s in seeds]), together.images)


def test_stream_sends_snapshots_then_one_final_message_per_image(client):
    events = list(client.synthesize_stream(count=2, seed=7, steps=6, snapshot_every=2))
    assert [(e.step, e.index, e.final) for e in events] == [
        (2, 0, False),
        (2, 1, False),
        (4, 0, False),
        (4, 1, False),
        (6, 0, True),
        (6, 1, True),
    ]
    assert events[0].energy is None and events[-1].energy is not None
    unary = client.synthesize(count=2, seed=7, steps=6)
    assert np.array_equal(np.stack([e.image for e in events[-2:]]), unary.images)


def _wait_for(predicate, timeout=20.0):
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def test_cancelling_a_stream_stops_the_work(coop_server, client):
    before = coop_server.metric("coopnets_cancelled_total", rpc="SynthesizeStream")
    call = client.synthesize_stream_call(count=4, seed=1, steps=200, snapshot_every=1)
    next(call)  # the work has started
    call.cancel()
    assert _wait_for(lambda: coop_server.metric("coopnets_cancelled_total", rpc="SynthesizeStream") > before)
    assert "SynthesizeStream stopped after" in coop_server.log()


def test_a_deadline_stops_the_work_between_steps(coop_server, client):
    before = coop_server.metric("coopnets_cancelled_total", rpc="Synthesize")
    with pytest.raises(grpc.RpcError) as err:
        client.synthesize(count=32, seed=0, steps=200, timeout=0.5)
    assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert _wait_for(lambda: coop_server.metric("coopnets_cancelled_total", rpc="Synthesize") > before)
    assert "stopped after" in coop_server.log()
    assert client.synthesize(count=1, seed=0, steps=1).images.shape == (1, 1, 28, 28)  # still serving


def test_complete_keeps_observed_pixels_and_equals_the_engine(client, engine):
    image = engine.synthesize([5], steps=0).images[0]  # (C, H, W)
    rec = client.complete(image, occlusion="center:14", seed=9)
    mask = rec.mask  # (C, H, W), 1 = missing
    assert mask.sum() == 14 * 14 and mask[0, 7:21, 7:21].all()
    assert np.array_equal(rec.recovered[mask == 0], image[mask == 0])
    assert np.all(rec.occluded[mask == 1] == -1)
    ref = engine.complete(image[None], mask[None], [9])
    np.testing.assert_allclose(rec.recovered, ref.images[0], rtol=0, atol=1e-6)
    # the same hole as a PNG mask (white = missing) gives the same result
    png = PILImage.fromarray((mask[0] * 255).astype(np.uint8))
    by_png = client.complete(image, mask=png, seed=9)
    assert np.array_equal(by_png.recovered, rec.recovered)
    # restarts travel to the engine (0 / unset = the bundle's default)
    one = client.complete(image, occlusion="center:14", seed=9, restarts=1)
    np.testing.assert_allclose(
        one.recovered, engine.complete(image[None], mask[None], [9], restarts=1).images[0], rtol=0, atol=1e-6
    )
    default = client.complete(image, occlusion="center:14", seed=9, restarts=engine.completion.restarts)
    assert np.array_equal(default.recovered, rec.recovered)


def test_energy_equals_the_engine(client, engine):
    images = engine.synthesize([1, 2], steps=2).images
    np.testing.assert_allclose(client.energy(images), engine.energy(images), rtol=1e-6)


def _png(size=(28, 28), value=0) -> bytes:
    buf = io.BytesIO()
    PILImage.new("L", size, value).save(buf, format="PNG")
    return buf.getvalue()


GOOD_IMAGE = pb.Image(png=_png())
GOOD_TENSOR = tensor_to_proto(np.zeros((1, 28, 28), np.float32))
HALF = np.zeros((1, 28, 28), np.float32)
HALF[..., :14] = 1

INVALID = [
    ("Synthesize", pb.SynthesizeRequest(count=0), "count"),
    ("Synthesize", pb.SynthesizeRequest(count=33), "count"),
    ("Synthesize", pb.SynthesizeRequest(count=1, seed=-1), "seed"),
    ("Synthesize", pb.SynthesizeRequest(count=2, seed=2**63 - 1), "seed"),
    ("Synthesize", pb.SynthesizeRequest(count=1, langevin=pb.LangevinParams(steps=201)), "langevin.steps"),
    (
        "Synthesize",
        pb.SynthesizeRequest(count=1, langevin=pb.LangevinParams(step_size=0)),
        "langevin.step_size",
    ),
    (
        "Synthesize",
        pb.SynthesizeRequest(count=1, langevin=pb.LangevinParams(step_size=float("nan"))),
        "langevin.step_size",
    ),
    ("Synthesize", pb.SynthesizeRequest(count=1, format=7), "format"),
    ("SynthesizeStream", pb.SynthesizeStreamRequest(request=pb.SynthesizeRequest(count=0)), "request.count"),
    (
        "SynthesizeStream",
        pb.SynthesizeStreamRequest(
            request=pb.SynthesizeRequest(count=1, langevin=pb.LangevinParams(steps=2)), snapshot_every=3
        ),
        "snapshot_every",
    ),
    ("Complete", pb.CompleteRequest(occlusion="center:4"), "image"),
    ("Complete", pb.CompleteRequest(image=pb.Image(png=b"not a png"), occlusion="center:4"), "image.png"),
    ("Complete", pb.CompleteRequest(image=pb.Image(png=_png((32, 32))), occlusion="center:4"), "image.png"),
    (
        "Complete",
        pb.CompleteRequest(
            image=pb.Image(tensor=tensor_to_proto(np.zeros((3, 28, 28), np.float32))), occlusion="center:4"
        ),
        "image.tensor.shape",
    ),
    (
        "Complete",
        pb.CompleteRequest(
            image=pb.Image(tensor=pb.Tensor(shape=[1, 28, 28], data=b"\0" * 12)), occlusion="center:4"
        ),
        "image.tensor.data",
    ),
    (
        "Complete",
        pb.CompleteRequest(
            image=pb.Image(tensor=tensor_to_proto(np.full((1, 28, 28), np.inf, np.float32))),
            occlusion="center:4",
        ),
        "image.tensor.data",
    ),
    ("Complete", pb.CompleteRequest(image=GOOD_IMAGE), "mask"),
    (
        "Complete",
        pb.CompleteRequest(image=GOOD_IMAGE, mask=pb.Image(tensor=tensor_to_proto(HALF * 0.5))),
        "mask.tensor.data",
    ),
    (
        "Complete",
        pb.CompleteRequest(image=GOOD_IMAGE, mask=pb.Image(tensor=tensor_to_proto(HALF[:, :5]))),
        "mask.tensor.shape",
    ),
    ("Complete", pb.CompleteRequest(image=GOOD_IMAGE, mask=pb.Image(png=_png(value=0))), "mask"),
    ("Complete", pb.CompleteRequest(image=GOOD_IMAGE, mask=pb.Image(png=_png((14, 14), 255))), "mask.png"),
    ("Complete", pb.CompleteRequest(image=GOOD_IMAGE, occlusion="middle:3"), "occlusion"),
    ("Complete", pb.CompleteRequest(image=GOOD_IMAGE, occlusion="center:99"), "occlusion"),
    ("Complete", pb.CompleteRequest(image=GOOD_IMAGE, occlusion="left-half", seed=-3), "seed"),
    (
        "Complete",
        pb.CompleteRequest(image=GOOD_IMAGE, occlusion="left-half", latent_steps=500),
        "latent_steps",
    ),
    (
        "Complete",
        pb.CompleteRequest(image=GOOD_IMAGE, occlusion="left-half", latent_step_size=-1),
        "latent_step_size",
    ),
    (
        "Complete",
        pb.CompleteRequest(image=GOOD_IMAGE, occlusion="left-half", refine_steps=201),
        "refine_steps",
    ),
    (
        "Complete",
        pb.CompleteRequest(image=GOOD_IMAGE, occlusion="left-half", refine_step_size=2.0),
        "refine_step_size",
    ),
    ("Complete", pb.CompleteRequest(image=GOOD_IMAGE, occlusion="left-half", restarts=17), "restarts"),
    ("Energy", pb.EnergyRequest(), "images"),
    ("Energy", pb.EnergyRequest(images=[GOOD_IMAGE, pb.Image(tensor=GOOD_TENSOR), pb.Image()]), "images[2]"),
]


def test_every_invalid_field_is_invalid_argument_naming_it(coop_server, stub):
    before = coop_server.metric("coopnets_requests_total", code="INVALID_ARGUMENT")
    for rpc, request, field in INVALID:
        with pytest.raises(grpc.RpcError) as err:
            result = getattr(stub, rpc)(request, timeout=10, metadata=AUTH)
            if rpc == "SynthesizeStream":
                list(result)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, (rpc, field, err.value.details())
        assert bad_request_fields(err.value) == [field], (rpc, field, err.value.details())
        assert field in err.value.details()
    after = coop_server.metric("coopnets_requests_total", code="INVALID_ARGUMENT")
    assert after - before == len(INVALID)
    # and the server keeps serving
    assert len(stub.Synthesize(pb.SynthesizeRequest(count=1), timeout=10, metadata=AUTH).images) == 1


def test_metrics_count_requests_by_rpc_and_code(coop_server, client):
    client.info()
    assert coop_server.metric("coopnets_requests_total", rpc="ModelInfo", code="OK") >= 1
    assert coop_server.metric("coopnets_request_seconds_count", rpc="Synthesize", code="OK") >= 1
    assert coop_server.metric("coopnets_queue_seconds_count", kind="synthesize") >= 1
    assert coop_server.metric("coopnets_requests_total", code="UNAUTHENTICATED") >= 1


def test_client_png_inputs(client):
    rec = client.complete(encode_png(np.full((1, 28, 28), -1.0, np.float32)), occlusion="left-half", seed=1)
    assert rec.recovered.shape == (1, 28, 28)
    assert np.all(rec.recovered[:, :, 14:] == -1.0)  # observed right half unchanged (black in, black out)


def test_client_retries_unavailable_until_the_deadline():
    with CoopNetsClient("127.0.0.1:1", retries=2, timeout=1.0) as c, pytest.raises(grpc.RpcError) as err:
        c.info()
    assert err.value.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
