"""Everything served in color, on the tiny RGB bundle of tests/conftest.py (cifar32 nets, 3×32×32):
coop-client synth writes RGB PNGs and an RGB grid, coop-complete takes RGB PNGs with a grey or an RGB mask
PNG (white = missing) through the server and locally alike and writes RGB strips, the Open Inference Protocol
answers with 3-channel tensors equal to coopnets.v1's, and the Triton repository of a color bundle is
consistent and its whole-chain graph makes the engine's images."""

from __future__ import annotations

import float32_bound
import numpy as np
import onnxruntime as ort
import pytest
from coopnets.clients.cli import client_main, complete_main
from coopnets.contract.codec import encode_png, to_uint8
from PIL import Image as PILImage
from support import TOKEN, local_server

SHAPE = (3, 32, 32)


@pytest.fixture(scope="module")
def rgb_server(rgb_bundle, tmp_path_factory):
    server = local_server(rgb_bundle, tmp_path_factory.mktemp("rgb-server"), token=TOKEN, max_count=16)
    yield server
    assert server.stop(), server.log()


@pytest.fixture()
def rgb_client(rgb_server):
    with rgb_server.client(timeout=60) as c:
        yield c


@pytest.fixture()
def rgb_inputs(tmp_path, rgb_client):
    """Two 32×32 RGB PNGs (generator drafts) to complete."""
    paths = []
    for i, image in enumerate(rgb_client.synthesize(count=2, seed=30, steps=0).images):
        path = tmp_path / f"item{i}.png"
        path.write_bytes(encode_png(image))
        paths.append(str(path))
    return paths


def _pixels(path) -> np.ndarray:
    with PILImage.open(path) as img:
        assert img.mode == "RGB", path
        return np.asarray(img)


def test_synth_writes_rgb_pngs_and_an_rgb_grid(rgb_server, rgb_client, token_file, tmp_path):
    out = tmp_path / "synth"
    argv = ["synth", "--server", rgb_server.address, "--token-file", token_file, "--count", "4", "--seed",
            "3", "--steps", "2", "--out", str(out)]  # fmt: skip
    assert client_main(argv) == 0
    assert sorted(p.name for p in out.iterdir()) == ["grid.png", *(f"seed_{s}.png" for s in range(3, 7))]
    side = 4 * (2 + 2 * 34)  # 2x2 tiles of 32 + 2 pixels padding, enlarged 4x to reach 256 pixels a side
    grid = _pixels(out / "grid.png")
    assert grid.shape == (side, side, 3)
    png = rgb_client.synthesize(count=1, seed=4, steps=2, png=True).images[0]  # (3, 32, 32)
    single = _pixels(out / "seed_4.png")
    np.testing.assert_array_equal(single, to_uint8(png).transpose(1, 2, 0))
    assert np.abs(single[..., 0].astype(int) - single[..., 2]).max() > 0  # color, not grey in three planes
    # the grid's second tile (row 0, column 1: from pixel 2 + 34 = 36, × 4) is seed 4
    np.testing.assert_array_equal(grid[8:136:4, 144:272:4], single)


@pytest.mark.parametrize("mask_mode", ["L", "RGB"])
def test_complete_rgb_with_a_grey_or_rgb_mask_png_remote_and_local_agree(
    rgb_server, rgb_bundle, token_file, rgb_inputs, tmp_path, mask_mode
):
    mask = np.zeros((32, 32), np.uint8)
    mask[:, 16:] = 255  # white = missing
    picture = mask if mask_mode == "L" else np.stack([mask] * 3, axis=2)
    PILImage.fromarray(picture, mask_mode).save(tmp_path / "mask.png")
    remote, local = tmp_path / "remote", tmp_path / "local"
    common = [*rgb_inputs, "--mask", str(tmp_path / "mask.png"), "--seed", "5", "--out"]
    server = ["--server", rgb_server.address, "--token-file", token_file]
    assert complete_main([*common, str(remote), *server]) == 0
    assert complete_main([*common, str(local), "--bundle", str(rgb_bundle), "--device", "cpu"]) == 0
    for path in rgb_inputs:
        stem = path.rsplit("/", 1)[1][:-4]
        rec, original = _pixels(remote / f"{stem}_recovered.png"), _pixels(path)
        assert rec.shape == (32, 32, 3)
        np.testing.assert_array_equal(rec[:, :16], original[:, :16])  # observed pixels, every channel
        assert not np.array_equal(rec[:, 16:], original[:, 16:])
        np.testing.assert_array_equal(rec, _pixels(local / f"{stem}_recovered.png"))
        strip = _pixels(remote / f"{stem}_strip.png")
        k = 4  # 32-pixel images are shown 4x (nearest neighbour) in strips
        assert strip.shape == (32 * k, 3 * 32 * k + 2 * 8, 3)  # original | occluded | recovered
        np.testing.assert_array_equal(strip[::k, : 32 * k : k], original)
        assert (strip[:, (32 + 16) * k + 8 : 64 * k + 8] == 0).all()  # the hole, shown black


def test_complete_occlusion_on_rgb_keeps_observed_pixels(rgb_server, token_file, rgb_inputs, tmp_path):
    out = tmp_path / "m40"
    argv = [rgb_inputs[0], "--occlude", "center:12", "--server", rgb_server.address, "--token-file",
            token_file, "--out", str(out)]  # fmt: skip
    assert complete_main(argv) == 0
    rec, original = _pixels(out / "item0_recovered.png"), _pixels(rgb_inputs[0])
    np.testing.assert_array_equal(rec[:10], original[:10])  # rows above the centred 12-px square


def test_oip_on_a_color_bundle_is_coopnets_v1(rgb_server, rgb_client):
    import tritonclient.grpc as triton
    from tritonclient.utils import triton_to_np_dtype

    auth = {"authorization": f"Bearer {TOKEN}"}

    def tensor(name, value, datatype):
        a = np.asarray(value, dtype=triton_to_np_dtype(datatype))
        t = triton.InferInput(name, list(a.shape), datatype)
        t.set_data_from_numpy(a)
        return t

    tc = triton.InferenceServerClient(url=rgb_server.address)
    try:
        meta = tc.get_model_metadata("coopnets-synthesize", headers=auth)
        assert ("images", "FP32", (-1, *SHAPE)) in {
            (t.name, t.datatype, tuple(t.shape)) for t in meta.outputs
        }
        config = tc.get_model_config("coopnets-complete", headers=auth).config
        assert list(config.input[1].dims) == [-1, *SHAPE]
        got = tc.infer("coopnets-synthesize", [tensor("seed", [7], "INT64"), tensor("count", [3], "INT32")],
                       headers=auth, client_timeout=60)  # fmt: skip
        expected = rgb_client.synthesize(count=3, seed=7)
        assert got.as_numpy("images").shape == (3, *SHAPE)
        np.testing.assert_array_equal(got.as_numpy("images"), expected.images)
        np.testing.assert_array_equal(got.as_numpy("energy"), expected.energy)

        rng = np.random.default_rng(0)
        images = rng.uniform(-1, 1, (2, *SHAPE)).astype(np.float32)
        masks = np.zeros_like(images)
        masks[:, :, 8:20, 8:20] = 1
        feeds = [
            tensor("images", images, "FP32"),
            tensor("masks", masks, "FP32"),
            tensor("seed", [5], "INT64"),
        ]
        done = tc.infer("coopnets-complete", feeds, headers=auth, client_timeout=60)
        for i in range(2):
            want = rgb_client.complete(images[i], mask=masks[i], seed=5 + i)
            np.testing.assert_array_equal(done.as_numpy("images")[i], want.recovered)
        energy = tc.infer(
            "coopnets-energy", [tensor("images", images, "FP32")], headers=auth, client_timeout=60
        )
        np.testing.assert_array_equal(energy.as_numpy("energy"), rgb_client.energy(images))
    finally:
        tc.close()


@pytest.fixture(scope="module")
def rgb_nets():
    """The nets rgb_bundle exports (tests/conftest.py), for the float32 bound."""
    from conftest import scaled_nets

    return scaled_nets("cifar32", 3, 16, seed=1)


def test_triton_repository_of_a_color_bundle(rgb_bundle, rgb_nets, tmp_path):
    from coopnets.contract.bundle import GRAPHS
    from coopnets.contract.sampling import synthesis_draws
    from coopnets.serving.engine import Engine
    from coopnets.trainer.triton import CHAIN, export_triton
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2 as triton_config

    repository = export_triton(rgb_bundle, tmp_path / "models")
    assert sorted(p.name for p in repository.iterdir()) == sorted([*GRAPHS, CHAIN])
    cpu = ["CPUExecutionProvider"]
    for name in (*GRAPHS, CHAIN):
        config = text_format.Parse(
            (repository / name / "config.pbtxt").read_text(), triton_config.ModelConfig()
        )
        session = ort.InferenceSession(str(repository / name / "1" / "model.onnx"), providers=cpu)
        for declared, actual in (
            (config.input, session.get_inputs()),
            (config.output, session.get_outputs()),
        ):
            for t, a in zip(declared, actual, strict=True):
                dims = [d if isinstance(d, int) else -1 for d in a.shape]
                if len(dims) == 4:  # the images: Triton's dims (batched: without N) carry 3 channels
                    assert dims[1:] == list(SHAPE) and list(t.dims)[-3:] == list(SHAPE), (name, t.name)
    engine = Engine.open(rgb_bundle, device="cpu", threads=1)
    d = engine.synthesis_defaults
    seeds = [0, 5]
    expected = engine.synthesize(seeds, params=d)
    z, noise = synthesis_draws(seeds, engine.bundle.latent_dim, SHAPE, d.steps, d.noise)
    chain = ort.InferenceSession(str(repository / CHAIN / "1" / "model.onnx"), providers=cpu)
    images, _ = chain.run(None, {"z": z, "noise": noise, "steps": np.array([d.steps], np.int64)})
    assert images.shape == (2, *SHAPE)
    # float32 through the same graphs fused otherwise (and another session's threads): the float32 bound on
    # the bundle's nets, which autograd on them reproduces within it (the bound's premise)
    from coopnets.contract.sampling import synthesize
    from coopnets.trainer.reference import TorchBackend

    bound = float32_bound.synthesis(*rgb_nets, seeds, d, engine.backend.s)
    torch_backend = TorchBackend(*rgb_nets, s=engine.backend.s, sigma=engine.backend.sigma)
    float32_bound.assert_samples_within(expected, synthesize(torch_backend, seeds, d), bound)
    float32_bound.assert_within(images, expected.images, float32_bound.tolerance(bound.images), "images")
