"""Every RPC of coop-serve on loopback: health, batching, streams, cancellation, rich INVALID_ARGUMENT errors,
token auth, reflection, metrics, and the client's retries while the server warms up.

The session's in-process server (conftest.coop_server) answers most tests; one test runs coop-serve itself in
a subprocess with torch and the trainer unimportable. Answers are compared with the engine: the server's
engine is the same bundle's graphs on one thread, run on the same batch (one request at a time), so its
answers are the engine's bit for bit, and float32 values travel exactly as tensors and proto floats. Energies
are also compared with the descriptor graph run directly, f on its own scale (E ≈ 1e5 would hide a sign flip
of f ≈ 0.4); PNGs to the half grey level of their rounding to 8 bits.
"""

from __future__ import annotations

import dataclasses
import io
import json
import threading
import urllib.request

import float32_bound
import grpc
import numpy as np
import pytest
from coopnets.clients.client import CoopNetsClient, bad_request_fields
from coopnets.contract.codec import encode_png, set_tensor
from coopnets.contract.occlusions import occlusion_mask
from coopnets.contract.sampling import SynthesisParams
from coopnets.v1 import coopnets_pb2 as pb
from coopnets.v1 import coopnets_pb2_grpc as pb_grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from PIL import Image as PILImage
from support import COMPLETION, LANGEVIN, TOKEN, local_server, start_server, wait_for


@pytest.fixture(scope="module")
def engine(serving_engine):
    return serving_engine


@pytest.fixture()
def stub(coop_server):
    with grpc.insecure_channel(coop_server.address) as channel:
        yield pb_grpc.CoopNetsStub(channel)


def params(steps: int) -> SynthesisParams:
    return SynthesisParams(steps=steps, delta=LANGEVIN["delta"], noise=LANGEVIN["noise"])


def tensor(array: np.ndarray) -> pb.Tensor:
    return set_tensor(pb.Tensor(), array)


AUTH = [("authorization", f"Bearer {TOKEN}")]


def test_coop_serve_is_live_before_ready_and_never_imports_torch(serving_bundle, engine, tmp_path):
    """coop-serve itself, in a subprocess where importing torch or the trainer raises: health NOT_SERVING from
    the moment the port is bound until warm-up is done, the stdout line and the port file, and answers (over
    HTTP too: the REST binding's stack must not pull torch in either)."""
    server = start_server(
        serving_bundle,
        tmp_path,
        *("--warmup-runs", "1", "--max-batch", "16", "--http-port", "0"),
        token=TOKEN,
        watch_health=True,
    )
    try:
        assert server.health_history[0] == "NOT_SERVING" and server.health_history[-1] == "SERVING"
        with server.client(timeout=60) as c:
            out = c.synthesize(count=2, seed=40, steps=3)
        np.testing.assert_array_equal(out.images, engine.synthesize([40, 41], params(3)).images)
        ports = json.loads((tmp_path / "port.json").read_text())
        assert ports == {
            "port": server.port,
            "metrics_port": server.metrics_port,
            "http_port": server.http_port,
        }
        with urllib.request.urlopen(f"{server.http_url}/v2/health/ready", timeout=10) as r:
            assert r.status == 200
    finally:
        code = server.stop()
    log = server.log()
    assert code == 0, log
    assert f"coop-serve: listening on 127.0.0.1:{server.port} (plaintext, token); metrics port " in log
    assert f"HTTP port {server.http_port}" in log
    assert log.index("live on") < log.index("warm-up done") < log.index("health SERVING")
    assert "ImportError" not in log and "Traceback" not in log  # torch/trainer were never imported


def test_health_needs_no_token_and_lists_the_service(coop_server):
    with grpc.insecure_channel(coop_server.address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        for service in ("", "coopnets.v1.CoopNets"):
            resp = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
            assert resp.status == health_pb2.HealthCheckResponse.SERVING
        # List came with grpcio-health-checking 1.85 (protobuf >= 7.35); beside tritonclient (protobuf < 7)
        # pip resolves an earlier one, whose health service has Check and Watch only
        if hasattr(health_pb2, "HealthListRequest"):
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
    # s travels as a proto float: the bundle's s rounded to float32, exactly
    assert info.langevin.steps == LANGEVIN["steps"] and info.langevin.s == np.float32(LANGEVIN["s"])
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
        "weights.bin",
    }
    assert info.device == "cpu"
    assert {s.graph: list(s.providers) for s in info.sessions} == {
        g: ["CPUExecutionProvider"] for g in ("generator", "descriptor", "langevin_step", "generator_grad")
    }
    assert info.limits.max_count == 32 and info.limits.max_steps == 200 and info.limits.max_batch == 16


def test_synthesize_equals_the_engine(client, engine):
    out = client.synthesize(count=3, seed=40, steps=5)
    ref = engine.synthesize([40, 41, 42], params(5))
    assert out.seeds == [40, 41, 42]
    np.testing.assert_array_equal(out.images, ref.images)  # the same graphs on the same batch
    np.testing.assert_array_equal(out.energy, ref.energy)
    png = client.synthesize(count=3, seed=40, steps=5, png=True)  # 8-bit, clipped
    assert np.abs(png.images - np.clip(ref.images, -1, 1)).max() <= float32_bound.PNG_ERROR


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


def test_cancelling_a_stream_stops_the_work(coop_server, client):
    before = coop_server.metric("coopnets_cancelled_total", rpc="SynthesizeStream")
    logged = len(coop_server.log())
    call = client.synthesize_stream_call(count=4, seed=1, steps=200, snapshot_every=1)
    next(call)  # the work has started
    call.cancel()
    assert wait_for(lambda: coop_server.metric("coopnets_cancelled_total", rpc="SynthesizeStream") > before)
    assert "SynthesizeStream stopped after" in coop_server.log()[logged:]


def test_a_deadline_stops_the_work_between_steps(coop_server, client):
    before = coop_server.metric("coopnets_cancelled_total", rpc="Synthesize", stage="running")
    logged = len(coop_server.log())
    with pytest.raises(grpc.RpcError) as err:
        client.synthesize(count=32, seed=0, steps=200, timeout=0.5)
    assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert wait_for(
        lambda: coop_server.metric("coopnets_cancelled_total", rpc="Synthesize", stage="running") > before
    )
    assert "stopped after" in coop_server.log()[logged:]
    assert client.synthesize(count=1, seed=0, steps=1).images.shape == (1, 1, 28, 28)  # still serving


@pytest.mark.parametrize("occlusion", ["m40", "blocks"])
def test_complete_takes_the_papers_occlusions(client, occlusion):
    """The service's named occlusions include the paper's protocol, drawn per seed as contract.occlusions
    draws them (m40 at 28 px: one 18-px square; blocks: half of the 2×2 blocks)."""
    from coopnets.contract.occlusions import occlusion_mask

    image = np.zeros((1, 28, 28), np.float32)
    rec = client.complete(image, occlusion=occlusion, seed=4)
    np.testing.assert_array_equal(rec.mask, occlusion_mask(occlusion, (1, 28, 28), 4))
    assert rec.mask.sum() == (18 * 18 if occlusion == "m40" else 28 * 28 / 2)
    assert np.array_equal(rec.recovered[rec.mask == 0], image[rec.mask == 0])


def completed_with(client, engine, image, occlusion: str, mask, **setting) -> np.ndarray:
    """The service's completion of `image` at seed 9 with one completion setting sent, checked equal (bit for
    bit: the same computation) to the engine's with the bundle's defaults but that setting: the setting
    travelled."""
    recovered = client.complete(image, occlusion=occlusion, seed=9, **setting).recovered
    chosen = dataclasses.replace(engine.completion_defaults, **setting)
    np.testing.assert_array_equal(recovered, engine.complete(image[None], mask[None], [9], chosen).images[0])
    return recovered


def test_complete_keeps_observed_pixels_and_equals_the_engine(client, engine):
    image = engine.draft([5])[0]  # (C, H, W)
    rec = client.complete(image, occlusion="center:14", seed=9)
    mask = rec.mask  # (C, H, W), 1 = missing
    assert mask.sum() == 14 * 14 and mask[0, 7:21, 7:21].all()
    assert np.array_equal(rec.recovered[mask == 0], image[mask == 0])
    assert np.all(rec.occluded[mask == 1] == -1)
    ref = engine.complete(image[None], mask[None], [9])
    np.testing.assert_array_equal(rec.recovered, ref.images[0])  # the same computation, bit for bit
    assert rec.energy == ref.energy[0]
    # the same hole as a PNG mask (white = missing) gives the same result
    png = PILImage.fromarray((mask[0] * 255).astype(np.uint8))
    by_png = client.complete(image, mask=png, seed=9)
    assert np.array_equal(by_png.recovered, rec.recovered)
    # restarts travel to the engine (0 / unset = the bundle's default)
    one = completed_with(client, engine, image, "center:14", mask, restarts=1)
    assert not np.array_equal(one, rec.recovered)  # the default is not one chain
    restarts = engine.completion_defaults.restarts
    default = client.complete(image, occlusion="center:14", seed=9, restarts=restarts)
    assert np.array_equal(default.recovered, rec.recovered)
    # residual_fill travels too (unset = the bundle's default, on for bundles from coopnets 0.3)
    assert engine.completion_defaults.residual_fill and client.info().completion.residual_fill
    plain = completed_with(client, engine, image, "center:14", mask, residual_fill=False)
    assert not np.array_equal(plain, rec.recovered)
    # and average_restarts (unset = the bundle's default: off before coopnets 0.4)
    assert client.info().completion.average_restarts == engine.completion_defaults.average_restarts
    flip = not engine.completion_defaults.average_restarts
    other = completed_with(client, engine, image, "center:14", mask, average_restarts=flip)
    assert not np.array_equal(other, rec.recovered)


def test_complete_takes_the_residual_interpolant(client, engine):
    """residual_interpolant ("auto" for bundles from coopnets 0.5) travels to the engine; a random mask is
    where the two interpolants differ. An unknown one is INVALID_ARGUMENT naming the field."""
    image = engine.draft([5])[0]  # (C, H, W)
    assert client.info().completion.residual_interpolant == engine.completion_defaults.residual_interpolant
    random_mask = occlusion_mask("random:0.5", engine.image_shape, 9)  # (C, H, W)
    answers = {
        interpolant: completed_with(
            client, engine, image, "random:0.5", random_mask, residual_interpolant=interpolant
        )
        for interpolant in ("harmonic", "biharmonic")
    }
    assert not np.array_equal(answers["harmonic"], answers["biharmonic"])
    with pytest.raises(grpc.RpcError) as err:
        client.complete(image, occlusion="center:14", seed=9, residual_interpolant="cubic")
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "residual_interpolant" in err.value.details()


def test_energy_is_f_of_the_descriptor_graph_and_the_formula(stub, client, engine):
    """Against descriptor.onnx run here, not the engine: f equal (the same graph on the same batch of three,
    |f| ≈ 0.4), E to the formula in float64 within its rounding to float32 (E ≈ 1e5)."""
    images = engine.synthesize([3, 4, 5], params(5)).images  # (3, C, H, W)
    resp = stub.Energy(pb.EnergyRequest(images=[pb.Image(tensor=tensor(y)) for y in images]), metadata=AUTH)
    (f,) = engine.sessions["descriptor"].run(["f"], {"y": images})
    assert np.abs(f).min() > 0.1  # far enough from 0 for a sign flip to show
    np.testing.assert_array_equal(np.float32(resp.score), f)
    sq = (images.astype(np.float64) ** 2).reshape(3, -1).sum(1)
    formula = sq / (2 * LANGEVIN["s"] ** 2) - f
    # the service's float32 cast (u·|E|) and the float64 sums in another order (< 1e-12 of |E|): ~0.006, far
    # below the 2|f| >= 0.2 a sign flip of f would move E by
    np.testing.assert_allclose(
        resp.energy, formula, rtol=float32_bound.U + float32_bound.FLOAT64_SUMS, atol=0
    )
    np.testing.assert_array_equal(client.energy(images), np.float32(resp.energy))


def _png(size=(28, 28), value=0) -> bytes:
    buf = io.BytesIO()
    PILImage.new("L", size, value).save(buf, format="PNG")
    return buf.getvalue()


GOOD_IMAGE = pb.Image(png=_png())
GOOD_TENSOR = tensor(np.zeros((1, 28, 28), np.float32))
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
            image=pb.Image(tensor=tensor(np.zeros((3, 28, 28), np.float32))), occlusion="center:4"
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
            image=pb.Image(tensor=tensor(np.full((1, 28, 28), np.inf, np.float32))),
            occlusion="center:4",
        ),
        "image.tensor.data",
    ),
    ("Complete", pb.CompleteRequest(image=GOOD_IMAGE), "mask"),
    (
        "Complete",
        pb.CompleteRequest(image=GOOD_IMAGE, mask=pb.Image(tensor=tensor(HALF * 0.5))),
        "mask.tensor.data",
    ),
    (
        "Complete",
        pb.CompleteRequest(image=GOOD_IMAGE, mask=pb.Image(tensor=tensor(HALF[:, :5]))),
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


def test_metrics_count_requests_by_rpc_and_code(coop_server, client, stub):
    def counts():
        m = coop_server.metric
        return (
            m("coopnets_requests_total", rpc="ModelInfo", code="OK"),
            m("coopnets_request_seconds_count", rpc="Synthesize", code="OK"),
            m("coopnets_requests_total", rpc="Synthesize", code="INVALID_ARGUMENT"),
            m("coopnets_requests_total", rpc="Energy", code="UNAUTHENTICATED"),
            m("coopnets_queue_seconds_count", kind="synthesize"),
            m("coopnets_batch_images_sum", kind="synthesize"),
        )

    before = counts()
    client.info()
    client.synthesize(count=3, seed=0, steps=1)
    with pytest.raises(grpc.RpcError):
        client.synthesize(count=0)
    with pytest.raises(grpc.RpcError):
        stub.Energy(pb.EnergyRequest(), timeout=5)  # no token
    assert [a - b for a, b in zip(counts(), before, strict=True)] == [1, 1, 1, 1, 1, 3]


def test_client_png_inputs(client):
    rec = client.complete(encode_png(np.full((1, 28, 28), -1.0, np.float32)), occlusion="left-half", seed=1)
    assert rec.recovered.shape == (1, 28, 28)
    assert np.all(rec.recovered[:, :, 14:] == -1.0)  # observed right half unchanged (black in, black out)


def refused(server) -> float:
    return server.metric("coopnets_requests_total", rpc="ModelInfo", code="UNAVAILABLE")


def test_the_client_retries_unavailable_while_the_server_warms_up(serving_engine, serving_bundle):
    """A server that is live but not ready answers UNAVAILABLE; the client's retry policy keeps asking until
    the engine is in, so one call succeeds after at least one refused attempt."""
    server = local_server(serving_bundle, ready=False)
    result = {}

    def ask(c):
        try:
            result["info"] = c.info()
        except grpc.RpcError as e:
            result["error"] = e.code().name

    try:
        with CoopNetsClient(server.address, retries=4, timeout=30) as c:
            call = threading.Thread(target=ask, args=(c,))
            call.start()
            assert wait_for(lambda: refused(server) >= 1 or not call.is_alive(), timeout=10)
            server.lifecycle.start(serving_engine)
            call.join(30)
        assert "info" in result, f"the call was not retried: {result}"
        assert list(result["info"].image_shape) == [1, 28, 28]
        assert (
            refused(server) >= 1 and server.metric("coopnets_requests_total", rpc="ModelInfo", code="OK") == 1
        )
    finally:
        server.stop()
