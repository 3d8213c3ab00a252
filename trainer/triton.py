"""A Triton model repository from a bundle (`coop-export --triton OUT_DIR`): Triton serves it with its own
ONNX Runtime backend, no Python backend and no coopnets code.

    OUT_DIR/
      generator/1/model.onnx        + config.pbtxt   z [N, d] -> y [N, C, H, W]; dynamic batching
      descriptor/1/model.onnx       + config.pbtxt   y -> f [N], grad [N, C, H, W]; dynamic batching
      langevin_step/1/model.onnx    + config.pbtxt   one step (delta, s [1]: no Triton batching)
      generator_grad/1/model.onnx   + config.pbtxt   dU/dz for completion (sigma [1]: no Triton batching)
      synthesis_chain/1/model.onnx  + config.pbtxt   the whole synthesis in one graph (below)

The four graphs are the bundle's, their scalar inputs (δ, s, σ) taken as [1], since Triton feeds no scalar to
a model without batching. `synthesis_chain` is built here with the onnx helper API from them: g(z), then an
ONNX Loop of `steps` iterations whose body is the bundle's langevin_step graph (mask all ones, δ and s the
bundle's defaults, baked in), iteration t using noise[t]; then the descriptor on the result for E(Y) =
‖Y‖²/(2s²) − f(Y). Inputs z [N, d], noise [K, N, C, H, W], steps INT64 [1] (≤ K); outputs images [N, C, H, W],
energy [N]. The randomness stays outside the graph, so results are reproducible per seed:
contract.sampling.synthesis_draws(seeds, d, (C, H, W), K) gives the z and noise that coop-serve's sampler
draws, and the graph then makes its images (checked in ONNX Runtime against serving's engine:
tests/system/test_triton.py). Triton's batching would stack requests on axis 0, which for noise is K, not N,
so this model batches per request (max_batch_size 0); `generator` and `descriptor` batch dynamically.

Each config.pbtxt is written from Triton's own ModelConfig message (coopnets.oip.model_config_pb2, the
descriptors tritonclient ships) with text_format; tritonserver 2.51 (the binary in the nvidia-pytriton wheel)
accepts every one (tests/system/test_triton.py).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import onnx
from coopnets.contract.bundle import GRAPHS, OPSET, Bundle, read_bundle
from coopnets.contract.files import make_temp_dir, replace_dir
from coopnets.oip import model_config_pb2 as mc
from google.protobuf import text_format
from onnx import TensorProto, compose, helper, numpy_helper

CHAIN = "synthesis_chain"
MAX_BATCH = 64  # Triton's max_batch_size for the graphs whose every input and output has the batch axis first
BATCH_DELAY_US = 5000  # dynamic_batching's max_queue_delay: coop-serve's --max-delay-ms default (5 ms)


def _dims(dims: tuple[str, ...], bundle: Bundle) -> list[int]:
    """Manifest dims symbols -> numbers; N (batch) -> -1."""
    c, h, w = bundle.image_shape
    sizes = {"N": -1, "C": c, "H": h, "W": w, "d": bundle.latent_dim}
    return [sizes[d] for d in dims]


def _tensor(cls, name: str, dims: list[int], batched: bool, data_type=mc.TYPE_FP32):
    """A ModelInput/ModelOutput. With Triton batching the batch axis is implied, and a tensor that is only the
    batch axis ([N]) is declared [1] reshaped to [] (Triton wants dims). Triton has no scalar tensors for a
    model without batching: those are [1] in the repository's graph (`_scalars_as_one`)."""
    if batched:
        if len(dims) == 1:
            return cls(name=name, data_type=data_type, dims=[1], reshape=mc.ModelTensorReshape(shape=[]))
        return cls(name=name, data_type=data_type, dims=dims[1:])
    return cls(name=name, data_type=data_type, dims=dims or [1])


def _scalars_as_one(model: onnx.ModelProto) -> onnx.ModelProto:
    """The graph with every scalar ([]) input taken as shape [1] and reshaped to [] before its first use:
    what Triton can feed (tritonserver: "scalar tensors are not supported" for a non-batching model)."""
    graph = model.graph
    scalars = [i.name for i in graph.input if not i.type.tensor_type.shape.dim]
    if not scalars:
        return model
    for node in graph.node:
        node.input[:] = [f"{n}/scalar" if n in scalars else n for n in node.input]
    for i in graph.input:
        if i.name in scalars:
            i.type.tensor_type.shape.dim.add().dim_value = 1
    graph.initializer.append(numpy_helper.from_array(np.zeros(0, np.int64), "scalar_shape"))
    reshapes = [helper.make_node("Reshape", [n, "scalar_shape"], [f"{n}/scalar"]) for n in scalars]
    nodes = [*reshapes, *graph.node]  # prepended: the nodes stay topologically sorted
    del graph.node[:]
    graph.node.extend(nodes)
    onnx.checker.check_model(model, full_check=True)
    return model


def graph_config(name: str, bundle: Bundle, instances: int = 1) -> mc.ModelConfig:
    """The config of one bundle graph: dynamic batching when every tensor has the batch axis first."""
    ins, outs = GRAPHS[name]
    batched = all(dims[:1] == ("N",) for _, dims in (*ins, *outs))
    config = mc.ModelConfig(
        name=name,
        backend="onnxruntime",
        max_batch_size=MAX_BATCH if batched else 0,
        input=[_tensor(mc.ModelInput, n, _dims(d, bundle), batched) for n, d in ins],
        output=[_tensor(mc.ModelOutput, n, _dims(d, bundle), batched) for n, d in outs],
        instance_group=[mc.ModelInstanceGroup(count=instances, kind=mc.ModelInstanceGroup.KIND_AUTO)],
    )
    if batched:
        config.dynamic_batching.max_queue_delay_microseconds = BATCH_DELAY_US
    return config


def chain_config(bundle: Bundle, instances: int = 1) -> mc.ModelConfig:
    c, h, w = bundle.image_shape
    return mc.ModelConfig(
        name=CHAIN,
        backend="onnxruntime",
        max_batch_size=0,
        input=[
            mc.ModelInput(name="z", data_type=mc.TYPE_FP32, dims=[-1, bundle.latent_dim]),
            mc.ModelInput(name="noise", data_type=mc.TYPE_FP32, dims=[-1, -1, c, h, w]),
            _tensor(mc.ModelInput, "steps", [1], False, mc.TYPE_INT64),
        ],
        output=[
            mc.ModelOutput(name="images", data_type=mc.TYPE_FP32, dims=[-1, c, h, w]),
            mc.ModelOutput(name="energy", data_type=mc.TYPE_FP32, dims=[-1]),
        ],
        instance_group=[mc.ModelInstanceGroup(count=instances, kind=mc.ModelInstanceGroup.KIND_AUTO)],
    )


def _prefixed(bundle: Bundle, graph: str, prefix: str) -> onnx.GraphProto:
    model = onnx.load(str(bundle.graph_files[graph]))
    return compose.add_prefix(model, prefix).graph


def _loop_body(step: onnx.GraphProto, shape: tuple[int, int, int]) -> onnx.GraphProto:
    """The Loop body: one Langevin step on y with the noise of iteration t (mask, δ and s come from the outer
    scope); carries y (N, C, H, W) and the loop condition."""
    c, h, w = shape
    return helper.make_graph(
        [
            helper.make_node("Gather", ["noise", "t"], ["l/noise"], axis=0),  # noise[t]: (N, C, H, W)
            *step.node,
            helper.make_node("Identity", ["cond"], ["cond_out"]),
        ],
        "langevin_step_t",
        [
            helper.make_tensor_value_info("t", TensorProto.INT64, []),
            helper.make_tensor_value_info("cond", TensorProto.BOOL, []),
            helper.make_tensor_value_info("l/y", TensorProto.FLOAT, ["N", c, h, w]),
        ],
        [
            helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
            helper.make_tensor_value_info("l/y_next", TensorProto.FLOAT, ["N", c, h, w]),
        ],
    )


def _energy_nodes() -> list[onnx.NodeProto]:
    """E(Y) = sum(Y²) / (2 s²) - f(Y), from the descriptor's f (d/f) of the final images: (N,)."""
    return [
        helper.make_node("Mul", ["images", "images"], ["y2"]),
        helper.make_node("ReduceSum", ["y2", "axes_chw"], ["sum_y2"], keepdims=0),
        helper.make_node("Div", ["sum_y2", "two_s2"], ["prior"]),
        helper.make_node("Sub", ["prior", "d/f"], ["energy"]),
    ]


def _chain_graph(bundle: Bundle, nodes: list, initializers: list) -> onnx.GraphProto:
    """The chain's graph with its inputs z (N, latent), noise (K, N, C, H, W), steps, and its outputs."""
    c, h, w = bundle.image_shape
    return helper.make_graph(
        nodes,
        CHAIN,
        [
            helper.make_tensor_value_info("z", TensorProto.FLOAT, ["N", bundle.latent_dim]),
            helper.make_tensor_value_info("noise", TensorProto.FLOAT, ["K", "N", c, h, w]),
            helper.make_tensor_value_info("steps", TensorProto.INT64, []),  # [1] in the repository
        ],
        [
            helper.make_tensor_value_info("images", TensorProto.FLOAT, ["N", c, h, w]),
            helper.make_tensor_value_info("energy", TensorProto.FLOAT, ["N"]),
        ],
        initializers,
    )


def chain_model(bundle: Bundle) -> onnx.ModelProto:
    """The whole-chain synthesis graph (module docstring), made of the bundle's own graphs: the generator's
    draft, a Loop over the Langevin step, the descriptor on its result for the energy."""
    s, delta = bundle.langevin.s, bundle.langevin.delta
    gen, step, desc = (
        _prefixed(bundle, g, p)
        for g, p in (("generator", "g/"), ("langevin_step", "l/"), ("descriptor", "d/"))
    )
    scalar = lambda name, v: numpy_helper.from_array(np.asarray(v, np.float32), name)  # noqa: E731
    nodes = [
        helper.make_node("Identity", ["z"], ["g/z"]),
        *gen.node,
        # the constant inputs of every step, seen by the Loop body from the outer scope
        helper.make_node("Shape", ["g/y"], ["y_shape"]),
        helper.make_node(
            "ConstantOfShape", ["y_shape"], ["l/mask"], value=numpy_helper.from_array(np.ones(1, np.float32))
        ),
        helper.make_node("Loop", ["steps", "", "g/y"], ["images"], body=_loop_body(step, bundle.image_shape)),
        helper.make_node("Identity", ["images"], ["d/y"]),
        *desc.node,
        *_energy_nodes(),
    ]
    initializers = [
        *gen.initializer,
        *step.initializer,
        *desc.initializer,
        scalar("l/delta", delta),
        scalar("l/s", s),
        scalar("two_s2", 2 * s * s),
        numpy_helper.from_array(np.array([1, 2, 3], np.int64), "axes_chw"),
    ]
    graph = _chain_graph(bundle, nodes, initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="coopnets")
    model.ir_version = onnx.load(
        str(bundle.graph_files["langevin_step"]), load_external_data=False
    ).ir_version
    onnx.checker.check_model(model, full_check=True)
    return _scalars_as_one(model)


def _write(directory: Path, config: mc.ModelConfig, write_model) -> None:
    (directory / config.name / "1").mkdir(parents=True)
    write_model(directory / config.name / "1" / "model.onnx")
    (directory / config.name / "config.pbtxt").write_text(text_format.MessageToString(config))


def export_triton(bundle_dir: str | Path, out_dir: str | Path, instances: int = 1) -> Path:
    """Writes the repository of the module docstring for the bundle in `bundle_dir` to `out_dir` (atomically:
    a temporary sibling, then renamed); returns it. BundleError for a bundle that does not verify."""
    bundle = read_bundle(bundle_dir)
    chain = chain_model(bundle)
    tmp = make_temp_dir(out_dir)
    try:
        for name in GRAPHS:
            model = _scalars_as_one(onnx.load(str(bundle.graph_files[name])))
            _write(tmp, graph_config(name, bundle, instances), lambda path, m=model: onnx.save(m, str(path)))
        _write(tmp, chain_config(bundle, instances), lambda path: onnx.save(chain, str(path)))
        replace_dir(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return Path(out_dir)
