"""Compatibility: a bundle written by the code before the contract/sampler restructuring (commit 3891903)
still loads, and the service answers the requests recorded then with the same images and energies.

tests/data/legacy/ holds that bundle (tiny mnist28-shaped nets, latent size 8) and cases.json, the requests
and responses of the old service as protobuf bytes; record.py says how they were made. The server here is
today's coop-serve in a subprocess with torch blocked; tensors are compared to float32 tolerance, f(Y) on its
own scale (E ≈ 1e6 would hide a sign flip of f ≈ 10), PNG pixels to one grey level.
"""

from __future__ import annotations

import base64
import io
import json

import grpc
import numpy as np
import pytest
from coopnets.contract.bundle import read_bundle
from coopnets.v1 import coopnets_pb2 as pb
from coopnets.v1 import coopnets_pb2_grpc as pb_grpc
from PIL import Image as PILImage
from support import ROOT, start_server

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


def assert_same_image(got: pb.Image, want: pb.Image) -> None:
    assert got.WhichOneof("kind") == want.WhichOneof("kind")
    g, w = _pixels(got), _pixels(want)
    assert g.shape == w.shape
    if want.WhichOneof("kind") == "png":
        assert np.abs(g - w).max() <= 1  # a float32 difference may round to the next grey level
    else:
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=2e-6)


def assert_same_generated(got: pb.GeneratedImage, want: pb.GeneratedImage) -> None:
    assert (got.index, got.seed) == (want.index, want.seed)
    assert_same_image(got.image, want.image)
    assert got.energy == pytest.approx(want.energy, rel=1e-5)


def test_the_legacy_bundle_still_loads():
    bundle = read_bundle(LEGACY / "bundle")
    assert bundle.latent_dim == 8 and bundle.image_shape == (1, 28, 28)
    assert bundle.completion.restarts == 2 and bundle.langevin.steps == 4
    # completion choices added later keep what the bundle meant when it was written: off
    assert not bundle.completion.residual_fill and not bundle.completion.average_restarts
    assert bundle.completion.residual_interpolant == "harmonic"


@pytest.mark.parametrize("i", range(len(CASES)), ids=[f"{c['rpc']}-{i}" for i, c in enumerate(CASES)])
def test_the_service_answers_as_it_did(stub, i):
    case = CASES[i]
    rpc = case["rpc"]
    request = REQUESTS[rpc].FromString(base64.b64decode(case["request"]))
    if rpc == "SynthesizeStream":
        got = list(stub.SynthesizeStream(request, timeout=60))
        want = [pb.SynthesizeEvent.FromString(base64.b64decode(r)) for r in case["response"]]
        assert [(e.step, e.final) for e in got] == [(e.step, e.final) for e in want]
        for g, w in zip(got, want, strict=True):
            assert_same_generated(g.image, w.image)
        return
    got = getattr(stub, rpc)(request, timeout=60)
    want = RESPONSES[rpc].FromString(base64.b64decode(case["response"]))
    if rpc == "Synthesize":
        assert len(got.images) == len(want.images)
        for g, w in zip(got.images, want.images, strict=True):
            assert_same_generated(g, w)
    elif rpc == "Complete":
        for name in ("recovered", "occluded", "mask"):
            assert_same_image(getattr(got, name), getattr(want, name))
        assert got.energy == pytest.approx(want.energy, rel=1e-5)
    elif rpc == "Energy":
        np.testing.assert_allclose(got.energy, want.energy, rtol=1e-5)
        np.testing.assert_allclose(got.score, want.score, rtol=1e-4, atol=1e-4)  # f itself, |f| ≈ 2-10
        assert np.abs(np.asarray(want.score)).min() > 1  # the recorded f is far from 0: a sign flip shows
    else:
        # a field added to the proto since the recording is new information, not a changed answer: checked
        # to say what the bundle meant when it was written, then compared as the recording knew the message
        assert got.completion.residual_interpolant == "harmonic"
        got.completion.ClearField("residual_interpolant")
        for name in ("image_shape", "latent_dim", "arch", "langevin", "completion", "format_version",
                     "bundle_sha256", "file_sha256", "created", "limits"):  # fmt: skip
            assert getattr(got, name) == getattr(want, name), name
