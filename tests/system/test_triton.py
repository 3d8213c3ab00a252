"""coop-export --triton: the Triton model repository (trainer/triton.py). Every config.pbtxt is parsed by
Triton's own ModelConfig protobuf (tritonclient's model_config_pb2) and held against its ONNX graph as ONNX
Runtime loads it; tritonserver itself (2.51, the binary the nvidia-pytriton wheel ships, which has no
onnxruntime backend) validates every config and gets as far as looking for that backend; the whole-chain
synthesis graph runs in ONNX Runtime against serving's engine for the same seeds. The chain is the engine's
graphs fused differently (inside a Loop, another session's threads), and ‖Y‖² summed in float32 in the graph:
its answers are held to the float32 rounding bound of tests/float32_bound.py on the bundle's nets."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import float32_bound
import numpy as np
import onnxruntime as ort
import pytest
from coopnets.contract.bundle import GRAPHS
from coopnets.contract.sampling import SynthesisParams, synthesis_draws
from coopnets.trainer.cli import export_main
from coopnets.trainer.triton import CHAIN, export_triton
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as triton_config

PYTRITON = "0.7.0"  # its tritonserver is 2.51
CPU = ["CPUExecutionProvider"]
ORT_TYPES = {"tensor(float)": triton_config.TYPE_FP32, "tensor(int64)": triton_config.TYPE_INT64}


@pytest.fixture(scope="module")
def repository(serving_bundle, tmp_path_factory):
    return export_triton(serving_bundle, tmp_path_factory.mktemp("triton") / "models")


@pytest.fixture(scope="module")
def chain(repository):
    return ort.InferenceSession(str(repository / CHAIN / "1" / "model.onnx"), providers=CPU)


def parse(path) -> triton_config.ModelConfig:
    return text_format.Parse(path.read_text(), triton_config.ModelConfig())


def test_the_repository_has_every_graph_and_the_chain(repository, serving_bundle):
    assert sorted(p.name for p in repository.iterdir()) == sorted([*GRAPHS, CHAIN])
    rng = np.random.default_rng(0)
    for name in GRAPHS:  # the bundle's graphs, their scalars taken as [1]: the very same outputs
        ours = ort.InferenceSession(str(repository / name / "1" / "model.onnx"), providers=CPU)
        bundle = ort.InferenceSession(str(serving_bundle / f"{name}.onnx"), providers=CPU)
        feeds = {
            i.name: rng.uniform(0.05, 0.5, [2 if isinstance(d, str) else d for d in i.shape]).astype(
                np.float32
            )
            for i in bundle.get_inputs()
        }
        got = ours.run(None, {k: v.reshape(-1) if v.ndim == 0 else v for k, v in feeds.items()})
        for a, b in zip(got, bundle.run(None, feeds), strict=True):
            np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("name", [*GRAPHS, CHAIN])
def test_every_config_parses_as_tritons_model_config_and_matches_its_graph(repository, name):
    config = parse(repository / name / "config.pbtxt")
    assert config.name == name and config.backend == "onnxruntime"
    assert len(config.instance_group) == 1 and config.instance_group[0].count == 1
    batched = config.max_batch_size > 0
    assert config.HasField("dynamic_batching") == batched  # Triton refuses dynamic batching without a batch
    session = ort.InferenceSession(str(repository / name / "1" / "model.onnx"), providers=CPU)
    for declared, actual in ((config.input, session.get_inputs()), (config.output, session.get_outputs())):
        assert [t.name for t in declared] == [t.name for t in actual]
        for t, a in zip(declared, actual, strict=True):
            assert t.data_type == ORT_TYPES[a.type], t.name
            graph_dims = [d if isinstance(d, int) else -1 for d in a.shape]
            if t.HasField("reshape"):  # [N] of a batched model: [1] per item, reshaped to []
                assert batched and list(t.dims) == [1] and not t.reshape.shape and graph_dims == [-1]
            elif batched:  # Triton adds the batch axis
                assert [-1, *t.dims] == graph_dims, t.name
            else:
                assert list(t.dims) == graph_dims, t.name


def test_only_graphs_with_a_batch_axis_everywhere_batch(repository):
    batched = {p.name for p in repository.iterdir() if parse(p / "config.pbtxt").max_batch_size > 0}
    assert batched == {"generator", "descriptor"}  # langevin_step/generator_grad have scalars, the chain K


def chain_energy_error(bound: float32_bound.Bound, images: np.ndarray, s: float) -> np.ndarray:
    """The error scale of the chain's E = Σy²/(2s²) − f of `images`, all float32 in the graph: the engine's
    (f's and the cast's, `bound` = float32_bound.energy_of) and the sum of squares in float32, n squares and
    n − 1 sums, then the constant 2s² and the quotient: n + 3 roundings of Σy² (float32_bound.rounding)."""
    n = images[0].size
    sq = (images.astype(np.float64) ** 2).reshape(len(images), -1).sum(1)
    return np.hypot(bound.energy, float32_bound.rounding(n + 3) * sq / (2 * s * s))


@pytest.mark.parametrize("params", [None, SynthesisParams(steps=2, delta=0.002, noise=True), "no noise"])
def test_the_chain_makes_the_engines_images_for_the_same_seeds(chain, serving_engine, tiny_nets, params):
    d = serving_engine.synthesis_defaults
    if params is None:
        params = d
    elif params == "no noise":
        params = SynthesisParams(steps=d.steps, delta=d.delta, noise=False)
    seeds = [0, 5, 9]
    expected = serving_engine.synthesize(seeds, params=params)
    z, noise = synthesis_draws(
        seeds, serving_engine.bundle.latent_dim, serving_engine.image_shape, params.steps, params.noise
    )
    images, energy = chain.run(None, {"z": z, "noise": noise, "steps": np.array([params.steps], np.int64)})
    s = serving_engine.backend.s
    bound = float32_bound.synthesis(*tiny_nets, seeds, params, s)
    float32_bound.assert_within(images, expected.images, float32_bound.tolerance(bound.images), "images")
    # E against the engine's E of the chain's own images: what the images' own difference would add through
    # ‖Y‖²/(2s²) (~10 here) is left out; the float32 sum's rounding (~2) remains, above |f| ≈ 0.1-0.5
    own = serving_engine.energy(images)[0]
    e_bound = chain_energy_error(float32_bound.energy_of(tiny_nets[0], images, s), images, s)
    float32_bound.assert_within(energy, own, float32_bound.tolerance(e_bound), "E")


def test_an_image_does_not_depend_on_its_batch(chain, serving_engine, tiny_nets):
    """Image 1 of two is image 1 alone, to float32 rounding: at another batch size the convolutions' sums
    may be blocked (and, the chain's session taking every core, split between threads) otherwise."""
    d = serving_engine.synthesis_defaults
    z, noise = synthesis_draws([4, 7], serving_engine.bundle.latent_dim, serving_engine.image_shape, d.steps)
    steps = np.array([d.steps], np.int64)
    both, _ = chain.run(None, {"z": z, "noise": noise, "steps": steps})
    alone, _ = chain.run(None, {"z": z[1:], "noise": noise[:, 1:], "steps": steps})
    bound = float32_bound.synthesis(*tiny_nets, [7], d, serving_engine.backend.s)
    float32_bound.assert_within(alone, both[1:], float32_bound.tolerance(bound.images), "image 7")


@pytest.fixture(scope="module")
def tritonserver(tmp_path_factory) -> Path:
    """tritonserver from the nvidia-pytriton wheel (PyPI), its libraries bundled beside it."""
    where = tmp_path_factory.mktemp("pytriton")
    pip = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "-d", str(where)]
    got = subprocess.run([*pip, f"nvidia-pytriton=={PYTRITON}"], capture_output=True, text=True)
    if got.returncode != 0:
        pytest.skip(f"nvidia-pytriton {PYTRITON} could not be downloaded: {got.stderr.strip()[-300:]}")
    (wheel,) = where.glob("*.whl")
    with zipfile.ZipFile(wheel) as z:
        z.extractall(where / "x")
    binary = where / "x" / "pytriton" / "tritonserver" / "bin" / "tritonserver"
    binary.chmod(0o755)
    return binary


@pytest.mark.slow
@pytest.mark.network  # downloads nvidia-pytriton's wheel from PyPI
def test_tritonserver_accepts_every_config(repository, tritonserver):
    """Triton validates each config.pbtxt when it polls the repository (dims, reshapes, batching); a model
    that passes goes on to load its backend, which this build lacks: that, and only that, must fail."""
    args = ["--strict-model-config=true", "--allow-metrics=false", "--allow-http=false"]
    args += ["--grpc-address=127.0.0.1", "--grpc-port=0", "--exit-on-error=true"]
    out = subprocess.run(
        [str(tritonserver), "--model-repository", str(repository), *args],
        capture_output=True,
        text=True,
        timeout=120,
    )
    log = out.stdout + out.stderr
    assert "Poll failed" not in log, log[-3000:]
    no_backend = "Invalid argument: unable to find backend library for backend 'onnxruntime'"
    for name in (*GRAPHS, CHAIN):
        assert f"failed to load '{name}' version 1: {no_backend}" in log, (name, log[-3000:])


def test_coop_export_refuses_a_bad_checkpoint_in_one_line(tmp_path, capsys):
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    assert export_main([str(tmp_path / "junk.pt"), str(tmp_path / "b"), "--triton", str(tmp_path / "t")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("coop-export: error: ")
    assert not (tmp_path / "t").exists()
