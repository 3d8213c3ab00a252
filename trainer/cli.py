"""Command-line entry points: coop-train and coop-export.

    coop-train --dataset fashion-mnist --iterations 300 --out runs/demo
    coop-train --out runs/demo --iterations 600 --resume        # continue the same run to 600 iterations
    coop-train --config my.toml --device cuda --amp bf16 --out runs/big
    coop-train --dataset folder:/data/faces --image-size 64 --channels 3 --dry-run
    coop-export runs/demo/checkpoint.pt runs/demo/bundle2

Bad input exits with status 2 and one line saying what is wrong and how to fix it; a diverging run exits 1 and
keeps its last good checkpoint.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

from trainer.config import TrainConfig, add_config_flags, from_dict, load_toml, resolve

log = logging.getLogger("trainer")


def _fail(message: str, code: int = 2) -> int:
    print(f"error: {message}", file=sys.stderr)
    return code


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line instead of usage + message
        self.exit(2, f"error: {message} (see {self.prog} --help)\n")


def _setup_logging(run_dir: Path | None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if run_dir is not None:
        run_dir.mkdir(parents=True, exist_ok=True)
        handler = logging.FileHandler(run_dir / "train.log")
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        logging.getLogger().addHandler(handler)


def langevin_manifest(config: TrainConfig) -> dict:
    """The bundle's Langevin defaults: those the descriptor was trained with."""
    return {
        "s": config.s,
        "delta": config.delta,
        "steps": config.langevin_steps,
        "sigma": config.sigma,
        "noise": config.langevin_noise,
    }


def export_run(descriptor, generator, config: TrainConfig, out_dir: Path) -> Path:
    """Export both nets (generator in eval mode) as a bundle; the export module is imported only here."""
    from trainer.export import export_bundle

    descriptor.cpu().eval()
    generator.cpu().eval()
    return export_bundle(
        descriptor, generator, out_dir, langevin=langevin_manifest(config), training=config.to_dict()
    )


def train_main(argv: list[str] | None = None) -> int:
    parser = _Parser(
        prog="coop-train",
        description="Cooperative training of a descriptor and a generator "
        "(CoopNets); exports an ONNX bundle to RUN_DIR/bundle at the end.",
    )
    parser.add_argument(
        "--config", metavar="FILE.toml", help="TOML file of TrainConfig fields (flags override it)"
    )
    parser.add_argument(
        "--resume",
        action="store_true",
        help="continue RUN_DIR/checkpoint.pt (its config; flags given here override) up to "
        "--iterations in total",
    )
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help="check the config, data and nets, print the resolved config, write nothing",
    )
    add_config_flags(parser)
    args = vars(parser.parse_args(argv))
    config_file, resume, dry_run = args.pop("config"), args.pop("resume"), args.pop("dry_run")

    from trainer.checkpoint import load_checkpoint
    from trainer.coop import CHECKPOINT, DivergenceError, final_samples, train
    from trainer.data import load_images

    try:
        config = resolve(args, config_file)
        if resume:  # the checkpoint's config, then this command's file and flags on top
            state = load_checkpoint(Path(config.out) / CHECKPOINT)
            file_overrides = load_toml(config_file) if config_file else {}
            config = from_dict({**state["config"], **file_overrides, **args}).validate()
            if config.iterations <= state["iteration"]:
                return _fail(
                    f"--iterations {config.iterations}: the checkpoint is already at iteration "
                    f"{state['iteration']}; pass a larger total"
                )
        data = load_images(
            config.dataset,
            size=config.image_size,
            channels=config.channels,
            data_dir=config.data_dir,
            max_images=config.max_images,
        )
        if len(data) == 0:
            return _fail(f"--dataset {config.dataset}: no images")
        if dry_run:
            from trainer.coop import build_run

            run = build_run(config)
            n_params = sum(p.numel() for p in [*run.descriptor.parameters(), *run.generator.parameters()])
            print(json.dumps(config.to_dict(), indent=2))
            print(
                f"dry run ok: {len(data)} images {tuple(data.shape[1:])}, arch {config.resolved_arch}, "
                f"{n_params} parameters, device {run.device}"
            )
            return 0
        out = Path(config.out)
        if not resume and (out / CHECKPOINT).exists():
            return _fail(
                f"--out {out} already holds a run ({CHECKPOINT}); pass --resume to continue it or "
                "choose another --out"
            )
        _setup_logging(out)
        log.info(
            "training %s on %s (%d images) for %d iterations into %s",
            config.resolved_arch,
            config.dataset,
            len(data),
            config.iterations,
            out,
        )
        started = time.perf_counter()
        run = train(config, data, resume=resume, progress=True)
        log.info("trained to iteration %d in %.1f s", run.iteration, time.perf_counter() - started)
        bn = final_samples(run, out / "samples")
        log.info("final samples: %s", json.dumps({k: round(v, 4) for k, v in bn.items()}))
        if config.export:
            bundle = export_run(run.descriptor, run.generator, config, out / "bundle")
            print(f"bundle: {bundle}")
        print(f"run directory: {out} (config.json, checkpoint.pt, metrics.jsonl, tb/, samples/)")
        return 0
    except DivergenceError as e:
        return _fail(str(e), 1)
    except (ValueError, OSError) as e:
        return _fail(str(e).splitlines()[0] if str(e) else type(e).__name__)
    except KeyboardInterrupt:
        return _fail("interrupted; resume with --resume", 130)


def export_main(argv: list[str] | None = None) -> int:
    parser = _Parser(
        prog="coop-export", description="Export a coop-train checkpoint as an ONNX model bundle."
    )
    parser.add_argument("checkpoint", help="RUN_DIR/checkpoint.pt")
    parser.add_argument("out_dir", help="bundle directory to write (atomically)")
    args = parser.parse_args(argv)
    from trainer.checkpoint import load_models

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        descriptor, generator, config = load_models(args.checkpoint)
        bundle = export_run(descriptor, generator, config, Path(args.out_dir))
    except (ValueError, OSError) as e:
        return _fail(str(e).splitlines()[0] if str(e) else type(e).__name__)
    print(f"bundle: {bundle}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(train_main())
