"""The model bundle: every graph against PyTorch autograd in ONNX Runtime, masks, manifest, sha256, atomicity.

Nets get larger random weights and random BatchNorm running statistics (support.perturbed_nets) so that
activations and gradients are O(1), not the near-zero of the official initialisation, and a wrong backward
cannot hide. The manifest is read back through contract.bundle, the reader the service uses.
"""

from __future__ import annotations

import copy
import hashlib
import json

import float32_bound
import numpy as np
import onnxruntime as ort
import pytest
import torch
from coopnets.contract.bundle import DEFAULT_COMPLETION, BundleError, read_bundle
from coopnets.trainer import grads
from coopnets.trainer.config import TrainConfig
from coopnets.trainer.export import PACK_RTOL, ExportError, export_bundle, export_run
from coopnets.trainer.grads import DescriptorWithGrad, GeneratorGrad, UnsupportedLayerError, kink_margin
from coopnets.trainer.langevin import descriptor_score_and_grad, descriptor_step, latent_energy_grad
from coopnets.trainer.nets import NetSpec
from float32_bound import Bounded, assert_within, tolerance
from support import perturbed_nets
from torch import nn

LANGEVIN = {"s": 0.016, "delta": 0.002, "steps": 15, "sigma": 0.3, "noise": True}
SPECS = [NetSpec("mnist28", 1, 100), NetSpec("cifar32", 3, 100), NetSpec("scene64", 3, 16)]
GRAPHS = ("generator", "descriptor", "langevin_step", "generator_grad")


def graph_bounds(descriptor, generator, x: dict[str, np.ndarray]) -> dict[str, Bounded]:
    """Each graph output's exact value and float32 error scale on inputs x (tests/float32_bound.py: Higham
    and Mary's probabilistic rounding model on these nets and inputs): ONNX Runtime's graph and PyTorch's
    autograd, each within LAMBDA·e of the exact value, are within `tolerance(e)` of each other. The graphs'
    float32 scalar inputs (δ, s, σ) against PyTorch's float64 ones are among the roundings it counts."""
    y, z = Bounded.exact(x["y"]), Bounded.exact(x["z"])
    mask, images = torch.from_numpy(x["mask"]).double(), torch.from_numpy(x["y"]).double()
    f, grad = float32_bound.score_and_grad(descriptor, y)
    y_next = float32_bound.langevin_step(y, grad, x["noise"], mask, LANGEVIN["delta"], LANGEVIN["s"])
    grad_z, u = float32_bound.latent_grad(generator, z, images, mask, LANGEVIN["sigma"])
    y_gen = float32_bound.generate(generator, z)
    return {"y_gen": y_gen, "f": f, "grad": grad, "y_next": y_next, "grad_z": grad_z, "u": u}


def within(got: np.ndarray, want: torch.Tensor, bound: Bounded, what: str) -> None:
    """got (ONNX Runtime) within the float32 tolerance of want (PyTorch), element by element."""
    want = want.detach().numpy()
    assert got.shape == want.shape, (what, got.shape, want.shape)
    assert_within(got, want, tolerance(bound.e.numpy()), what)


@pytest.fixture(scope="module", params=SPECS, ids=[s.arch for s in SPECS])
def exported(request, tmp_path_factory):
    """(descriptor, generator, bundle dir, {graph: ORT session}) for one architecture."""
    descriptor, generator = perturbed_nets(request.param)
    out = export_bundle(
        descriptor,
        generator,
        tmp_path_factory.mktemp("b") / "bundle",
        langevin=LANGEVIN,
        training={"lr": 0.007},
    )
    sessions = {
        g: ort.InferenceSession(str(out / f"{g}.onnx"), providers=["CPUExecutionProvider"]) for g in GRAPHS
    }
    return descriptor, generator, out, sessions


def random_inputs(spec: NetSpec, n: int, seed: int, descriptor=None, generator=None) -> dict[str, np.ndarray]:
    """Fresh random inputs at batch n. Given the nets, z and y are the n of 16n draws farthest from a
    leaky-ReLU kink (trainer.grads.kink_margin), where a gradient is defined to float32 precision."""
    rng = np.random.default_rng(seed)
    shape = (n, *spec.image_shape)
    z = torch.from_numpy(rng.standard_normal((16 * n, spec.latent_dim), dtype=np.float32))
    y = torch.from_numpy(rng.uniform(-1, 1, (16 * n, *spec.image_shape)).astype(np.float32))
    return {
        "z": smoothest(generator, z, n).numpy(),
        "y": smoothest(descriptor, y, n).numpy(),
        "noise": rng.standard_normal(shape, dtype=np.float32),
        "mask": (rng.random(shape) < 0.5).astype(np.float32),
        "delta": np.array(LANGEVIN["delta"], np.float32),
        "s": np.array(LANGEVIN["s"], np.float32),
        "sigma": np.array(LANGEVIN["sigma"], np.float32),
    }


def smoothest(net: nn.Module | None, candidates: torch.Tensor, n: int) -> torch.Tensor:
    if net is None:
        return candidates[:n]
    return candidates[kink_margin(net, candidates).argsort(descending=True)[:n]]


def run(session: ort.InferenceSession, x: dict[str, np.ndarray]) -> list[np.ndarray]:
    return session.run(None, {i.name: x[i.name] for i in session.get_inputs()})


@pytest.mark.parametrize("n", [1, 7])
def test_every_graph_matches_pytorch_autograd(exported, n):
    descriptor, generator, _, sessions = exported
    x = random_inputs(descriptor.spec, n, seed=100 + n, descriptor=descriptor, generator=generator)
    t = {k: torch.from_numpy(v) for k, v in x.items()}

    bound = graph_bounds(descriptor, generator, x)

    (y_gen,) = run(sessions["generator"], x)
    with torch.no_grad():
        y_gen_ref = generator(t["z"])
    within(y_gen, y_gen_ref, bound["y_gen"], "generator y")

    f, grad = run(sessions["descriptor"], x)
    f_ref, grad_ref = descriptor_score_and_grad(descriptor, t["y"])
    within(f, f_ref, bound["f"], "descriptor f")
    within(grad, grad_ref, bound["grad"], "descriptor grad")
    assert np.abs(grad).max() > 1e-2  # the perturbed nets give gradients worth comparing

    y_next, f_step = run(sessions["langevin_step"], x)
    y_next_ref = descriptor_step(t["y"], grad_ref, t["noise"], t["mask"], LANGEVIN["delta"], LANGEVIN["s"])
    within(y_next, y_next_ref, bound["y_next"], "langevin_step y_next")
    # the step itself, not just y + tiny: both sides start from the same y, so the bound on y_next bounds the
    # difference of the steps, and it is under a thousandth of the largest step
    step = (y_next_ref - t["y"]).abs().max().item()
    assert tolerance(bound["y_next"].e.numpy()).max() < 1e-3 * step
    within(f_step, f_ref, bound["f"], "langevin_step f")

    grad_z, y_gen2, u = run(sessions["generator_grad"], x)
    grad_z_ref = latent_energy_grad(generator, t["z"], t["y"], t["mask"], LANGEVIN["sigma"])
    with torch.no_grad():
        resid = (1 - t["mask"]) * (t["y"] - generator(t["z"]))
        u_ref = resid.pow(2).flatten(1).sum(1) / (2 * LANGEVIN["sigma"] ** 2) + 0.5 * t["z"].pow(2).sum(1)
    within(grad_z, grad_z_ref, bound["grad_z"], "generator_grad grad_z")
    within(y_gen2, y_gen_ref, bound["y_gen"], "generator_grad y_gen")
    within(u, u_ref, bound["u"], "generator_grad u")


def _bn_scale_without_weight(m, x, y, g):
    return g * torch.rsqrt(m.running_var + m.eps).reshape(1, -1, 1, 1)


@pytest.mark.parametrize(
    ("graph", "layer", "wrong"),
    [
        ("descriptor", nn.LeakyReLU, lambda m, x, y, g: g * torch.where(x > 0, 1.0, 0.25)),  # slope 0.25
        ("generator_grad", nn.Tanh, lambda m, x, y, g: g),  # tanh' = 1
        ("generator_grad", nn.BatchNorm2d, _bn_scale_without_weight),  # BatchNorm's scale without γ
    ],
    ids=["leaky-slope", "tanh", "batchnorm-weight"],
)
def test_the_bound_sees_a_wrong_backward(exported, monkeypatch, graph, layer, wrong):
    """The float32 bound that test_every_graph_matches_pytorch_autograd holds the gradients to is fine enough
    to fail a backward with a bug in one layer kind: the exported graph against that wrong backward, run in
    PyTorch (trainer.grads with the bug), differs by more than the bound somewhere."""
    descriptor, generator, _, sessions = exported
    x = random_inputs(descriptor.spec, 7, seed=107, descriptor=descriptor, generator=generator)
    t = {k: torch.from_numpy(v) for k, v in x.items()}
    if graph == "descriptor":
        got = run(sessions["descriptor"], x)[1]
        _, bound = float32_bound.score_and_grad(descriptor, Bounded.exact(x["y"]))
    else:
        got = run(sessions["generator_grad"], x)[0]
        z, mask, images = Bounded.exact(x["z"]), t["mask"].double(), t["y"].double()
        bound, _ = float32_bound.latent_grad(generator, z, images, mask, LANGEVIN["sigma"])
    monkeypatch.setitem(grads._BACKWARD, layer, wrong)
    with torch.no_grad():
        if graph == "descriptor":
            want = grads.DescriptorWithGrad(descriptor)(t["y"])[1]
        else:
            want = grads.GeneratorGrad(generator)(t["z"], t["y"], t["mask"], t["sigma"])[0]
    with pytest.raises(AssertionError, match=r"\|difference\|"):
        within(got, want, bound, graph)


def test_masked_pixels_semantics(exported):
    """mask = 0 (observed) pixels come out of a Langevin step bit-identical; mask = 1 (missing) pixels of y do
    not pull on z in the generator gradient."""
    descriptor, _, _, sessions = exported
    x = random_inputs(descriptor.spec, 4, seed=7)
    y_next, _ = run(sessions["langevin_step"], x)
    observed = x["mask"] == 0
    assert np.array_equal(y_next[observed], x["y"][observed])
    assert np.all(y_next[~observed] != x["y"][~observed])

    grad_z, _, u = run(sessions["generator_grad"], x)
    x2 = dict(x, y=np.where(x["mask"] == 1, -x["y"], x["y"]))  # change only the missing pixels
    grad_z2, _, u2 = run(sessions["generator_grad"], x2)
    assert np.array_equal(grad_z, grad_z2) and np.array_equal(u, u2)

    all_missing = dict(x, mask=np.ones_like(x["mask"]))  # nothing observed: only the prior, ∂U/∂z = z
    grad_z, _, u = run(sessions["generator_grad"], all_missing)
    # exactly z: the residual is multiplied by keep = 0, and zeros stay zeros through every linear layer and
    # slope of the backward (no rounding), so ∂U/∂z is 0 + z
    assert np.array_equal(grad_z, x["z"])
    # U = 0 + ½‖z‖², the d squares summed in float32 in some order on each side: each within γ_d·‖z‖² of the
    # exact value (u = 2⁻²⁴, the terms all >= 0; the ½ is exact), so within 2γ_d of each other, relatively
    d = x["z"].shape[1]
    np.testing.assert_allclose(u, 0.5 * (x["z"] ** 2).sum(1), rtol=2 * float32_bound.gamma(d), atol=0)


def test_manifest_and_sha256(exported):
    descriptor, _, out, _ = exported
    spec = descriptor.spec
    manifest = json.loads((out / "manifest.json").read_text())
    read = read_bundle(out)
    assert read.manifest == manifest
    assert (read.image_shape, read.latent_dim) == (spec.image_shape, spec.latent_dim)
    assert (read.langevin.s, read.langevin.delta, read.langevin.steps) == (0.016, 0.002, 15)
    assert manifest["format"] == "coopnets.bundle" and manifest["format_version"] == 1
    assert manifest["net"] == {"arch": spec.arch, "channels": spec.channels, "latent_dim": spec.latent_dim}
    assert manifest["image"] == {"shape": list(spec.image_shape), "value_range": [-1.0, 1.0]}
    assert manifest["latent_dim"] == spec.latent_dim
    assert manifest["langevin"] == LANGEVIN
    assert (
        manifest["completion"] == DEFAULT_COMPLETION.to_manifest()
        and manifest["completion"]["residual_fill"] is True
    )
    assert manifest["completion"]["average_restarts"] is True
    assert manifest["opset"] == 18
    assert manifest["training"] == {"lr": 0.007}
    assert set(manifest["versions"]) >= {"coopnets", "torch", "onnx", "onnxruntime"}
    image, latent = ["N", *spec.image_shape], ["N", spec.latent_dim]
    io = {
        g: {d: [(v["name"], v["shape"]) for v in manifest["graphs"][g][d]] for d in ("inputs", "outputs")}
        for g in GRAPHS
    }
    assert io["generator"] == {"inputs": [("z", latent)], "outputs": [("y", image)]}
    assert io["descriptor"] == {"inputs": [("y", image)], "outputs": [("f", ["N"]), ("grad", image)]}
    assert io["langevin_step"] == {
        "inputs": [("y", image), ("noise", image), ("mask", image), ("delta", []), ("s", [])],
        "outputs": [("y_next", image), ("f", ["N"])],
    }
    assert io["generator_grad"] == {
        "inputs": [("z", latent), ("y", image), ("mask", image), ("sigma", [])],
        "outputs": [("grad_z", latent), ("y_gen", image), ("u", ["N"])],
    }
    assert all(
        v["dtype"] == "float32"
        for g in GRAPHS
        for d in ("inputs", "outputs")
        for v in manifest["graphs"][g][d]
    )
    assert sorted(manifest["files"]) == sorted([*(f"{g}.onnx" for g in GRAPHS), "weights.bin"])
    assert manifest["weights"] == {"file": "weights.bin", "storage": "float32"}
    for file, meta in manifest["files"].items():
        data = (out / file).read_bytes()
        assert meta == {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}


def test_read_bundle_rejects_damage(tmp_path):
    descriptor, generator = perturbed_nets(SPECS[0])
    out = export_bundle(descriptor, generator, tmp_path / "bundle", langevin=LANGEVIN)
    data = bytearray((out / "descriptor.onnx").read_bytes())
    weights = (out / "weights.bin").read_bytes()
    (out / "weights.bin").write_bytes(weights[:100] + bytes([weights[100] ^ 1]) + weights[101:])
    with pytest.raises(BundleError, match="weights.bin does not match its sha256"):
        read_bundle(out)
    (out / "weights.bin").write_bytes(weights)
    read_bundle(out)
    data[len(data) // 2] ^= 1
    (out / "descriptor.onnx").write_bytes(bytes(data))
    with pytest.raises(BundleError, match="descriptor.onnx does not match its sha256"):
        read_bundle(out)
    (out / "descriptor.onnx").unlink()
    with pytest.raises(BundleError, match="descriptor.onnx is missing"):
        read_bundle(out)

    (out / "manifest.json").write_text("{")
    with pytest.raises(BundleError, match="not valid JSON"):
        read_bundle(out)
    with pytest.raises(BundleError, match="no manifest.json"):
        read_bundle(tmp_path)


def test_atomic_replacement(tmp_path, monkeypatch):
    """A new bundle replaces the old one only once it verified; a failed export leaves the old one and no
    temporary directories; a directory that is not a bundle is never replaced."""
    descriptor, generator = perturbed_nets(SPECS[0])
    out = export_bundle(descriptor, generator, tmp_path / "bundle", langevin=LANGEVIN, training={"run": 1})
    first = read_bundle(out).manifest

    # a wrong backward (tanh' = 1) passes onnx.checker but not the comparison with autograd
    monkeypatch.setitem(grads._BACKWARD, nn.Tanh, lambda m, x, y, g: g)
    with pytest.raises(ExportError, match="generator_grad.onnx: output grad_z differs from PyTorch"):
        export_bundle(descriptor, generator, out, langevin=LANGEVIN, training={"run": 2})
    assert read_bundle(out).manifest == first
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bundle"]
    monkeypatch.undo()

    export_bundle(descriptor, generator, out, langevin=LANGEVIN, training={"run": 3})
    assert read_bundle(out).manifest["training"] == {"run": 3}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bundle"]

    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "notes.txt").write_text("keep me")
    with pytest.raises(ValueError, match="exists and is not a model bundle"):
        export_bundle(descriptor, generator, precious, langevin=LANGEVIN)
    assert (precious / "notes.txt").read_text() == "keep me"


def test_unsupported_layer_raises(tmp_path):
    descriptor, generator = perturbed_nets(SPECS[0])
    descriptor.body.insert(1, nn.ReLU())
    with pytest.raises(UnsupportedLayerError, match="layer ReLU has no explicit backward"):
        DescriptorWithGrad(descriptor)
    with pytest.raises(UnsupportedLayerError, match="ReLU"):
        export_bundle(descriptor, generator, tmp_path / "bundle", langevin=LANGEVIN)
    assert list(tmp_path.iterdir()) == []

    with pytest.raises(UnsupportedLayerError, match="BatchNorm2d must be in eval mode"):
        GeneratorGrad(generator.train())


def test_a_forward_that_is_not_head_of_body_is_refused_and_threads_are_restored():
    """The explicit gradients differentiate `body` and the head written in trainer/grads.py, so a net whose
    forward does more must fail the check; the check runs on one thread (bit-equal sums) and gives the
    caller's thread count back."""
    descriptor, generator = perturbed_nets(SPECS[0])
    threads = torch.get_num_threads()
    GeneratorGrad(generator.eval())
    DescriptorWithGrad(descriptor)
    assert torch.get_num_threads() == threads
    generator.forward = lambda z: generator.body(z) * 1.0001
    with pytest.raises(UnsupportedLayerError, match="Generator.forward is no longer head"):
        GeneratorGrad(generator)
    descriptor.forward = lambda y: descriptor.body(y).flatten(1).sum(1) + 1e-3
    with pytest.raises(UnsupportedLayerError, match="Descriptor.forward is no longer head"):
        DescriptorWithGrad(descriptor)
    assert torch.get_num_threads() == threads


def test_bad_arguments(tmp_path):
    descriptor, generator = perturbed_nets(SPECS[0])
    with pytest.raises(ValueError, match="langevin settings lack delta"):
        export_bundle(
            descriptor,
            generator,
            tmp_path / "b",
            langevin={k: v for k, v in LANGEVIN.items() if k != "delta"},
        )
    _, other = perturbed_nets(SPECS[1])
    with pytest.raises(ValueError, match="descriptor and generator disagree"):
        export_bundle(descriptor, other, tmp_path / "b", langevin=LANGEVIN)


@pytest.mark.slow  # a second full export through torch's dynamo exporter: ~12 s
def test_dynamo_exporter_gives_an_equivalent_bundle(tmp_path):
    """The alternative exporter (torch.export based) passes the same verification."""
    descriptor, generator = perturbed_nets(NetSpec("mnist28", 1, 8))
    out = export_bundle(descriptor, generator, tmp_path / "bundle", langevin=LANGEVIN, exporter="dynamo")
    assert read_bundle(out).manifest["exporter"] == "dynamo"


def test_export_run_writes_the_runs_settings_and_leaves_its_nets_alone(tmp_path):
    """The bundle of a training run: its Langevin settings as the defaults, its config as "training"; the
    caller's nets (maybe still training) are neither switched to eval mode nor changed."""
    descriptor, generator = perturbed_nets(NetSpec("mnist28", 1, 8))
    generator.train()
    before = {k: v.clone() for k, v in generator.state_dict().items()}
    config = TrainConfig(latent_dim=8, langevin_steps=7, delta=0.003, sigma=0.2, langevin_noise=False)
    out = export_run(descriptor, generator, config, tmp_path / "bundle")
    manifest = read_bundle(out).manifest
    assert manifest["langevin"] == {"s": 0.016, "delta": 0.003, "steps": 7, "sigma": 0.2, "noise": False}
    assert manifest["training"] == json.loads(json.dumps(config.to_dict()))
    assert generator.training
    assert all(torch.equal(v, before[k]) for k, v in generator.state_dict().items())


def test_batchnorm_recalibration_matches_batch_statistics_and_keeps_the_weights():
    """Running statistics that lag the weights (here: garbage) are recomputed at the final weights: the
    eval-mode drafts then match the batch-statistics drafts training saw, and no weight changes."""
    from coopnets.trainer.export import recalibrate_batchnorm
    from coopnets.trainer.nets import Generator, NetSpec

    g = Generator(NetSpec())
    g.train()
    with torch.no_grad():
        for _ in range(3):  # a few training-mode passes at other latents' scale, then spoil the averages
            g(3 * torch.randn(32, 100))
        for m in g.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.add_(0.5)
                m.running_var.mul_(4)
    x = torch.randn(256, 100, generator=torch.Generator().manual_seed(1))  # (256, d)

    def gap(net) -> float:
        with torch.no_grad():
            batch = copy.deepcopy(net).train()(x)  # batch statistics of 256 fresh latents
            return (net.eval()(x) - batch).pow(2).mean().sqrt().item()

    fixed = recalibrate_batchnorm(g, 100, batch=32, batches=40)
    assert gap(fixed) < 0.2 * gap(copy.deepcopy(g)), (gap(fixed), gap(copy.deepcopy(g)))
    for (name, p), q in zip(g.named_parameters(), fixed.parameters(), strict=True):
        assert torch.equal(p, q), name
    assert not fixed.training


@pytest.mark.parametrize("storage", ["float16", "int8"])
def test_packed_weights_are_shared_smaller_and_answer_like_float32(exported, storage, tmp_path):
    """weights.bin holds each tensor once (descriptor.onnx and langevin_step.onnx share the descriptor's);
    float16 and int8 storage shrink it to about 1/2 and 1/4 and the graphs still answer like the float32
    bundle (trainer/pack.py: the rounding's error, relative L2 per output)."""
    descriptor, generator, out, sessions = exported
    dense = sum(p.numel() for net in (descriptor, generator) for p in net.parameters()) * 4
    float32 = (out / "weights.bin").stat().st_size
    assert float32 < 1.3 * dense  # shared: an inline bundle holds every weight at least twice
    packed = export_bundle(descriptor, generator, tmp_path / "b", langevin=LANGEVIN, weights=storage)
    b = read_bundle(packed)
    assert b.weights_storage == storage and b.manifest["weights"]["storage"] == storage
    ratio = (packed / "weights.bin").stat().st_size / float32
    assert (0.45 < ratio < 0.55) if storage == "float16" else (0.2 < ratio < 0.3), ratio
    spec = descriptor.spec
    feed = random_inputs(spec, 4, seed=7, descriptor=descriptor, generator=generator)
    for g in GRAPHS:
        mine = ort.InferenceSession(str(packed / f"{g}.onnx"), providers=["CPUExecutionProvider"])
        names = [i.name for i in mine.get_inputs()]
        got = mine.run(None, {k: feed[k] for k in names})
        want = sessions[g].run(None, {k: feed[k] for k in names})
        for a, w in zip(got, want, strict=True):
            err = np.linalg.norm(a - w) / np.linalg.norm(w)
            assert 0 < err < PACK_RTOL[storage], (g, err)  # rounded (not bit-equal), and close


def test_a_bundle_with_inline_weights_still_loads_and_runs(tmp_path):
    """Bundles before weights.bin (coopnets < 0.3) held every tensor inside its graph: still served."""
    import onnx

    descriptor, generator = perturbed_nets(SPECS[0])
    out = export_bundle(descriptor, generator, tmp_path / "bundle", langevin=LANGEVIN)
    manifest = json.loads((out / "manifest.json").read_text())
    for g in GRAPHS:
        model = onnx.load(str(out / f"{g}.onnx"))  # resolves weights.bin
        onnx.save(model, str(out / f"{g}.onnx"))  # inline again
        data = (out / f"{g}.onnx").read_bytes()
        manifest["files"][f"{g}.onnx"] = {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
    (out / "weights.bin").unlink()
    del manifest["files"]["weights.bin"], manifest["weights"]
    (out / "manifest.json").write_text(json.dumps(manifest))
    b = read_bundle(out)
    assert b.weights_storage == "float32"
    session = ort.InferenceSession(str(b.graph_files["generator"]), providers=["CPUExecutionProvider"])
    z = np.random.default_rng(0).standard_normal((2, 100)).astype(np.float32)
    with torch.no_grad():
        want = generator.eval()(torch.from_numpy(z))
    bound = float32_bound.generate(generator, Bounded.exact(z))  # the float32 rounding bound, as above
    within(session.run(None, {"z": z})[0], want, bound, "generator y")
