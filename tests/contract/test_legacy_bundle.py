"""Compatibility: a bundle written by the code before the contract/sampler restructuring (commit 3891903)
still loads, and the service answers the requests recorded then with the same images and energies.

tests/data/legacy/ holds that bundle (tiny mnist28-shaped nets, latent size 8) and cases.json, the requests
and responses of the old service as protobuf bytes; record.py says how they were made. The server here is
today's coop-serve in a subprocess with torch blocked. The recorded answers and today's are two float32
evaluations of the same computation on different kernels (another ONNX Runtime, maybe another CPU), so they
are held to the float32 rounding bound of tests/float32_bound.py, computed on the bundle's nets (rebuilt in
torch from its graphs' weights) and each request's inputs: images, E and f, f on its own scale (E ≈ 1e6
would hide a sign flip of f ≈ 10); PNG pixels to one grey level, where the bound is below one level.
"""

from __future__ import annotations

import base64
import dataclasses
import io
import json

import float32_bound
import grpc
import numpy as np
import pytest
from coopnets.contract.bundle import read_bundle
from coopnets.serving import requests
from coopnets.serving.engine import Engine
from coopnets.v1 import coopnets_pb2 as pb
from coopnets.v1 import coopnets_pb2_grpc as pb_grpc
from PIL import Image as PILImage
from support import ROOT, legacy_nets, start_server

LEGACY = ROOT / "tests" / "data" / "legacy"
CASES = json.loads((LEGACY / "cases.json").read_text())["cases"]
RESPONSES = {
    "Synthesize": pb.SynthesizeResponse,
    "Complete": pb.CompleteResponse,
    "Energy": pb.EnergyResponse,
    "ModelInfo": pb.ModelInfoResponse,
}
REQUESTS = {
    "Synthesize": pb.SynthesizeRequest,
    "SynthesizeStream": pb.SynthesizeStreamRequest,
    "Complete": pb.CompleteRequest,
    "Energy": pb.EnergyRequest,
    "ModelInfo": pb.ModelInfoRequest,
}


GREY_LEVEL = 1 / 127.5  # one step of the 8-bit PNG pixels in [-1, 1] (contract.codec.to_uint8)


@pytest.fixture(scope="module")
def legacy():
    """The bundle opened here (what a request asks for: seeds, masks, parameters with the bundle's defaults)
    and its nets in torch."""
    return Engine.open(LEGACY / "bundle", device="cpu", threads=1), *legacy_nets()


def bound_of(rpc: str, request, legacy) -> float32_bound.Bound:
    """The float32 error scale of the answer to `request`, its inputs as today's service reads them."""
    engine, descriptor, generator = legacy
    s, sigma = engine.backend.s, engine.backend.sigma
    if rpc == "Energy":
        return float32_bound.energy_of(
            descriptor, requests.energy(request, engine, requests.Limits()).images, s
        )
    if rpc == "Complete":
        job = requests.completion(request, engine, requests.Limits()).job
        nets = descriptor, generator
        try:
            return float32_bound.completion(*nets, job.images, job.masks, job.seeds, job.params, s, sigma)
        except AssertionError:
            # the chains' U tie within the full model's bound: in the latent chains of two recorded
            # completions (center:10 and rects, 2 chains each) an input comes within its bound of a leaky
            # ReLU's kink, and the gradient's possible jump, (1 − 0.2)·|∂U/∂a| through η²/2, compounds over
            # the steps. Bound them as two evaluations that took the same slopes; had they not, their answers
            # would part by far more than rounding and this test fails, to be judged by hand.
            with float32_bound.assumptions(slope_flips=False):
                return float32_bound.completion(*nets, job.images, job.masks, job.seeds, job.params, s, sigma)
    job = requests.synthesis(request, engine, requests.Limits()).job
    return float32_bound.synthesis(descriptor, generator, job.seeds, job.params, s)


@pytest.fixture(scope="module")
def stub(tmp_path_factory):
    server = start_server(LEGACY / "bundle", tmp_path_factory.mktemp("legacy"))
    with grpc.insecure_channel(server.address) as channel:
        yield pb_grpc.CoopNetsStub(channel)
    assert server.stop() == 0, server.log()


def _pixels(image: pb.Image) -> np.ndarray:
    if image.WhichOneof("kind") == "png":
        return np.asarray(PILImage.open(io.BytesIO(image.png)), dtype=np.float32)  # (H, W) grey levels
    return np.frombuffer(image.tensor.data, "<f4").reshape(tuple(image.tensor.shape))


def assert_same_image(got: pb.Image, want: pb.Image, tolerance: np.ndarray | None) -> None:
    """Within `tolerance` (C, H, W) as float32 tensors; as PNG pixels within one grey level, which is all a
    difference below one level can make of rounding to 8 bits. Tolerance None: computed from the request's
    inputs alone (the mask, the occluded image), so equal."""
    assert got.WhichOneof("kind") == want.WhichOneof("kind")
    g, w = _pixels(got), _pixels(want)
    assert g.shape == w.shape
    if tolerance is None:
        np.testing.assert_array_equal(g, w)
    elif want.WhichOneof("kind") == "png":
        assert tolerance.max() < GREY_LEVEL  # so the two may round to neighbouring levels, no further
        assert np.abs(g - w).max() <= 1
    else:
        float32_bound.assert_within(g, w, tolerance.reshape(w.shape), "image")


def assert_same_generated(got: pb.GeneratedImage, want: pb.GeneratedImage, bound, i: int) -> None:
    """Image i of a synthesis and its E within the float32 bound (a stream's snapshots carry no E: 0)."""
    assert (got.index, got.seed) == (want.index, want.seed)
    assert_same_image(got.image, want.image, float32_bound.tolerance(bound.images[i]))
    if want.energy == 0:
        assert got.energy == 0
    else:
        float32_bound.assert_within(got.energy, want.energy, float32_bound.tolerance(bound.energy[i]), "E")


def test_the_legacy_bundle_still_loads():
    bundle = read_bundle(LEGACY / "bundle")
    assert bundle.latent_dim == 8 and bundle.image_shape == (1, 28, 28)
    assert bundle.completion.restarts == 2 and bundle.langevin.steps == 4
    # completion choices added later keep what the bundle meant when it was written: off
    assert not bundle.completion.residual_fill and not bundle.completion.average_restarts
    assert bundle.completion.residual_interpolant == "harmonic"


def test_the_nets_rebuilt_in_torch_are_the_bundles(legacy):
    """The bound's premise: autograd on the rebuilt nets makes the bundle's own samples, within the bound."""
    from coopnets.contract import sampling
    from coopnets.contract.sampling import SynthesisParams
    from coopnets.trainer.reference import TorchBackend

    engine, descriptor, generator = legacy
    params, seeds = SynthesisParams(steps=4, delta=engine.synthesis_defaults.delta, noise=True), [5, 6, 7]
    torch_backend = TorchBackend(descriptor, generator, s=engine.backend.s, sigma=engine.backend.sigma)
    want = sampling.synthesize(torch_backend, seeds, params)
    bound = float32_bound.synthesis(descriptor, generator, seeds, params, engine.backend.s)
    float32_bound.assert_fine(bound, want.score, params.delta)
    float32_bound.assert_samples_within(engine.synthesize(seeds, params), want, bound)


def assert_same_stream(stub, request, case, legacy) -> None:
    got = list(stub.SynthesizeStream(request, timeout=60))
    want = [pb.SynthesizeEvent.FromString(base64.b64decode(r)) for r in case["response"]]
    assert [(e.step, e.final) for e in got] == [(e.step, e.final) for e in want]
    engine, descriptor, generator = legacy
    job = requests.stream(request, engine, requests.Limits()).synthesis.job
    for g, w in zip(got, want, strict=True):  # the images after w.step steps
        params = dataclasses.replace(job.params, steps=w.step)
        bound = float32_bound.synthesis(descriptor, generator, job.seeds, params, engine.backend.s)
        assert_same_generated(g.image, w.image, bound, w.image.index)


def assert_same_answer(rpc: str, got, want, bound: float32_bound.Bound) -> None:
    if rpc == "Synthesize":
        assert len(got.images) == len(want.images)
        for i, (g, w) in enumerate(zip(got.images, want.images, strict=True)):
            assert_same_generated(g, w, bound, i)
    elif rpc == "Complete":
        assert_same_image(got.recovered, want.recovered, float32_bound.tolerance(bound.images[0]))
        for name in ("occluded", "mask"):
            assert_same_image(getattr(got, name), getattr(want, name), None)
        float32_bound.assert_within(got.energy, want.energy, float32_bound.tolerance(bound.energy[0]), "E")
    else:
        assert np.abs(np.asarray(want.score)).min() > 1  # the recorded f is far from 0: a sign flip shows
        f_tolerance = float32_bound.tolerance(bound.score)
        assert (f_tolerance < np.abs(want.score) / 10).all()  # and the tolerance far below |f|
        float32_bound.assert_within(got.score, want.score, f_tolerance, "f")  # f itself, |f| ≈ 2-10
        float32_bound.assert_within(got.energy, want.energy, float32_bound.tolerance(bound.energy), "E")


@pytest.mark.parametrize("i", range(len(CASES)), ids=[f"{c['rpc']}-{i}" for i, c in enumerate(CASES)])
def test_the_service_answers_as_it_did(stub, legacy, i):
    case = CASES[i]
    rpc = case["rpc"]
    request = REQUESTS[rpc].FromString(base64.b64decode(case["request"]))
    if rpc == "SynthesizeStream":
        assert_same_stream(stub, request, case, legacy)
        return
    got = getattr(stub, rpc)(request, timeout=60)
    want = RESPONSES[rpc].FromString(base64.b64decode(case["response"]))
    if rpc != "ModelInfo":
        assert_same_answer(rpc, got, want, bound_of(rpc, request, legacy))
        return
    # a field added to the proto since the recording is new information, not a changed answer: checked to
    # say what the bundle meant when it was written, then compared as the recording knew the message
    assert got.completion.residual_interpolant == "harmonic"
    got.completion.ClearField("residual_interpolant")
    for name in ("image_shape", "latent_dim", "arch", "langevin", "completion", "format_version",
                 "bundle_sha256", "file_sha256", "created", "limits"):  # fmt: skip
        assert getattr(got, name) == getattr(want, name), name
