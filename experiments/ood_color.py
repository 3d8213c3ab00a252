"""Which tests the `ood` score unites: the measurement behind trainer/ood.py's union.

Reproduces the tables of docs/results.md, "Out-of-distribution", "The union test" (the color bundle's
checkpoint and the Fashion-MNIST reference bundle).

    python experiments/ood_color.py /work/runs/cifar10/checkpoint.pt [--n 500] [--calibration 2000]
    python experiments/ood_color.py reference          # a bundle (folder or shipped name): no checkpoint

MODEL is a coop-train checkpoint or a bundle; a bundle's descriptor is rebuilt in PyTorch from its
descriptor.onnx (int8 or float16 weights decoded as ONNX Runtime decodes them, checked against it), so the
shipped Fashion-MNIST reference, whose checkpoint is not in the repository, can be measured too. The
calibration images are `--calibration` training images of the model's dataset (its manifest's or
checkpoint's `dataset`), drawn as export draws them (trainer/ood.py calibration_images); in = `--n` test
images, out = evaluation/ood.py's out sets for the model's channels, built from `--n` other test images.
Each row is one test or union, calibrated by trainer/ood.py's calibrate on those images (AUROC per set and
the worst):

    one-sided     log d: the typicality the bundles exported before 2026-12-07 ship
    t1            |log d − m|: two-sided
    t2            log d(Y) − log d(−Y): the negative test
    t3            −f(Y)
    max z         the union test max(z1, z2, z3), zk = (tk − ck) / wk (0 at the calibration median, 1 at q95)
    ood           Σ max(0, zk): what new bundles ship (the module calibrate returns)
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
from coopnets.evaluation.ood import out_sets, separation
from coopnets.trainer.nets import Descriptor, NetSpec
from coopnets.trainer.ood import calibrate


def bundle_descriptor(path: str) -> tuple[Descriptor, dict]:
    """The descriptor of bundle `path` as a PyTorch module (weights decoded from descriptor.onnx, as ONNX
    Runtime decodes them) and the bundle's manifest; checked against descriptor.onnx's f."""
    import onnx
    import onnxruntime as ort
    from coopnets.contract.bundle import resolve_bundle
    from onnx import numpy_helper

    root = resolve_bundle(path)
    manifest = json.loads((root / "manifest.json").read_text())
    model = onnx.load(str(root / "descriptor.onnx"))  # external data from weights.bin
    raw = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    weights = {}
    for name, a in raw.items():
        base, _, kind = name.partition("::")
        if kind == "int8":
            weights[base] = a.astype(np.float32) * raw[f"{base}::scale"]
        elif kind == "float16":
            weights[base] = a.astype(np.float32)
        elif not kind:
            weights[base] = a
    descriptor = Descriptor(NetSpec(**manifest["net"])).eval()
    state = {k: torch.from_numpy(np.array(weights[k], np.float32)) for k in descriptor.state_dict()}
    descriptor.load_state_dict(state)
    y = torch.rand(8, *descriptor.spec.image_shape, generator=torch.Generator().manual_seed(0)) * 2 - 1
    session = ort.InferenceSession(str(root / "descriptor.onnx"), providers=["CPUExecutionProvider"])
    (f_onnx,) = session.run(["f"], {"y": y.numpy()})
    with torch.no_grad():
        f_torch = descriptor(y).numpy()
    err = np.abs(f_onnx - f_torch).max() / np.abs(f_onnx).max()
    if not err < 1e-4:
        raise SystemExit(f"{root}: the rebuilt descriptor's f differs from descriptor.onnx's by {err:.1e}")
    return descriptor, manifest


def load_model(model: str) -> tuple[Descriptor, str, str, int]:
    """(descriptor, dataset, data_dir, seed) of a checkpoint or a bundle."""
    if Path(model).is_file():
        from coopnets.trainer.checkpoint import load_models

        descriptor, _, config = load_models(model)
        return descriptor.eval(), config.dataset, config.data_dir, config.seed
    descriptor, manifest = bundle_descriptor(model)
    training = manifest.get("training", {})
    return (
        descriptor,
        training.get("dataset", "fashion-mnist"),
        training.get("data_dir", ""),
        training.get("seed", 0),
    )


def split(dataset: str, shape, data_dir: str, seed: int, args) -> tuple[np.ndarray, np.ndarray, dict]:
    """`args.calibration` training images drawn with the run's seed (as export draws them), `args.n` held-out
    test images, and evaluation/ood.py's out sets built from `args.n` other test images."""
    from coopnets.evaluation.data import labelled_splits

    train, test, _ = labelled_splits(dataset, shape, data_dir)
    pick = np.random.default_rng(seed).permutation(len(train.images))[: args.calibration]
    calibration = np.ascontiguousarray(train.images[np.sort(pick)], dtype=np.float32)
    perm = np.random.default_rng(0).permutation(len(test.images))
    held, spare = test.images[perm[: args.n]], test.images[perm[args.n : 2 * args.n]]
    return calibration, held, out_sets(held, spare, seed=0, data_dir=data_dir)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("model", help="a coop-train checkpoint, or a bundle folder or shipped name")
    p.add_argument("--n", type=int, default=500, help="held-out images and images per out set")
    p.add_argument("--calibration", type=int, default=2000, help="training images for the calibration")
    args = p.parse_args()
    torch.set_num_threads(1)
    descriptor, dataset, data_dir, seed = load_model(args.model)
    calibration, held, sets = split(dataset, descriptor.spec.image_shape, data_dir, seed, args)
    module, _ = calibrate(descriptor, torch.from_numpy(calibration))

    @torch.no_grad()
    def rows(x: np.ndarray) -> dict[str, np.ndarray]:
        y = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
        parts = [module.parts(y[i : i + 250]) for i in range(0, len(y), 250)]
        log_d = torch.cat([ld.view(2, -1) for ld, _ in parts], 1).view(-1)
        f = torch.cat([f for _, f in parts])
        t = module.tests(log_d, f)  # (N, 3)
        z = (t - module.centre) / module.spread
        return {
            "one-sided log d (before 2026-12-07)": log_d[: len(f)].numpy(),
            "t1 two-sided": t[:, 0].numpy(),
            "t2 negative test": t[:, 1].numpy(),
            "t3 -f": t[:, 2].numpy(),
            "max z (union of t1, t2, t3)": z.amax(1).numpy(),
            "ood = sum of max(0, z)": module(y).numpy(),
        }

    s_in = rows(held)
    s_out = {name: rows(x) for name, x in sets.items()}
    print(f"{args.model}: {args.calibration} calibration images, in = {args.n} test images")
    print("| score | " + " | ".join(sets) + " | worst |")
    print("|---" * (len(sets) + 2) + "|")
    for score in s_in:
        aurocs = [separation(score, o, s_in[score], s_out[o][score]).auroc for o in sets]
        print(f"| {score} | " + " | ".join(f"{a:.3f}" for a in aurocs) + f" | **{min(aurocs):.3f}** |")
    flagged = {o: float(np.mean(s_out[o]["ood = sum of max(0, z)"] > 1)) for o in sets}
    print(f"ood > 1 on held-out: {np.mean(s_in['ood = sum of max(0, z)'] > 1):.3f}; on out sets:",
          ", ".join(f"{o} {v:.2f}" for o, v in flagged.items()))  # fmt: skip


if __name__ == "__main__":
    main()
