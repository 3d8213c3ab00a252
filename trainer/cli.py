"""Command-line entry points: coop-train and coop-export.

    coop-train --dataset fashion-mnist --iterations 300 --out runs/demo
    coop-train --out runs/demo --iterations 600 --resume        # continue the same run to 600 iterations
    coop-train --config my.toml --device cuda --amp bf16 --out runs/big
    coop-train --dataset folder:/data/faces --image-size 64 --channels 3 --dry-run
    torchrun --standalone --nproc_per_node=4 -m coopnets.trainer.cli --out runs/ddp   # data parallel
    coop-export runs/demo/checkpoint.pt runs/demo/bundle2

Flags, the TOML file and the one-line errors come from contract.flags, as for every entry point: bad input
exits with status 2 and one line saying what is wrong and how to fix it; a diverging run exits 1 and keeps
its last good checkpoint; Ctrl-C exits 130 (the last checkpoint is kept: continue with --resume). Under
torchrun an error on any rank stops every rank, rank 0 prints its one line; a rank that loses the others
exits 1. A run directory being trained (RUN_DIR/.lock held) is refused with one line.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from pathlib import Path

from coopnets.contract.bundle import DEFAULT_COMPLETION, STORAGE
from coopnets.contract.flags import Parser, add_flags, cli_main
from coopnets.contract.sampling import MAX_RESTARTS
from coopnets.trainer.config import HELP, TrainConfig, resolve_train_config

log = logging.getLogger("coopnets.trainer")
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def _setup_logging(run_dir: Path | None, quiet: bool = False) -> None:
    """The log on stderr and in RUN_DIR/train.log; `quiet` (ranks > 0 under torchrun) logs errors only and
    writes no file: rank 0 speaks for the job."""
    logging.basicConfig(level=logging.ERROR if quiet else logging.INFO, format=LOG_FORMAT)
    if run_dir is not None and not quiet:
        run_dir.mkdir(parents=True, exist_ok=True)
        handler = logging.FileHandler(run_dir / "train.log")
        handler.setFormatter(logging.Formatter(LOG_FORMAT))
        logging.getLogger().addHandler(handler)


def train_main(argv: list[str] | None = None) -> int:
    parser = Parser(
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
        help="continue RUN_DIR/checkpoint.pt (its config; the file and flags given here override) up to "
        "--iterations in total",
    )
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help="check the config, data and nets, print the resolved config, write nothing",
    )
    add_flags(parser, TrainConfig, HELP)
    args = vars(parser.parse_args(argv))
    config_file, resume, dry_run = args.pop("config"), args.pop("resume"), args.pop("dry_run")
    if args.get("preset") == "list":
        from coopnets.trainer.presets import describe

        print(describe())
        return 0
    return cli_main("coop-train", lambda: _train(args, config_file, resume, dry_run))


def _train(flags: dict, config_file: str | None, resume: bool, dry_run: bool) -> int:
    """coop-train's body on every rank (one process: the only rank). Errors that `Dist.together` agreed on
    reach every rank as `Stopped`: rank 0 prints the one line, every rank exits with its code."""
    from coopnets.trainer.distributed import Dist, PeerLost, Stopped

    dist = Dist.from_env(timeout_s=max(1.0, float(flags.get("dist_timeout", TrainConfig.dist_timeout))))
    try:
        return _train_ranks(dist, flags, config_file, resume, dry_run)
    except Stopped as e:
        if dist.is_main:
            print(f"coop-train: error: {e}", file=sys.stderr)
        return e.code
    except PeerLost as e:  # another rank vanished (killed, its machine gone) or --dist-timeout passed
        print(f"coop-train: error: {e}", file=sys.stderr)
        return 1
    finally:
        dist.close()


def _train_ranks(dist, flags: dict, config_file: str | None, resume: bool, dry_run: bool) -> int:
    """Resolve the config, load the data, then check (--dry-run) or train, sample and export."""
    from coopnets.trainer.coop import DivergenceError

    config = _resolve_config(dist, flags, config_file, resume)
    data = _load_data(dist, config)
    if dry_run:
        return _dry_run(dist, config, data)
    lock = None  # rank 0's flock on RUN_DIR/.lock, held until the bundle is written
    try:
        lock = _claim_run_dir(dist, Path(config.out), resume)
        try:
            run = _train_logged(dist, config, data, resume)
        except DivergenceError as e:  # not bad input: the run itself failed (exit 1, the checkpoint is kept)
            print(f"coop-train: error: {e}", file=sys.stderr)
            return 1
        if dist.is_main:  # rank 0 alone writes the final samples and the bundle
            _finish(run, config, data)
        return 0
    finally:
        if lock is not None:
            os.close(lock)


def _resolve_config(dist, flags: dict, config_file: str | None, resume: bool) -> TrainConfig:
    """The run's config on every rank: the file and flags, on resume over the checkpoint's config, which rank
    0 alone reads (no shared filesystem needed) and broadcasts."""
    from coopnets.trainer.checkpoint import load_checkpoint
    from coopnets.trainer.coop import CHECKPOINT

    with dist.together():  # bad input on any rank stops every rank
        config = resolve_train_config(flags, config_file)
        if resume and dist.is_main:  # the checkpoint's config, then this command's file and flags on top
            state = load_checkpoint(Path(config.out) / CHECKPOINT)
            config = resolve_train_config(flags, config_file, saved=state["config"])
            if config.iterations <= state["iteration"]:
                raise ValueError(
                    f"--iterations {config.iterations}: the checkpoint is already at iteration "
                    f"{state['iteration']}; pass a larger total"
                )
    return dist.broadcast_object(config)


def _load_data(dist, config: TrainConfig):
    """The training images, uint8 (N, C, H, W), on every rank; none at all is bad input."""
    from coopnets.trainer.data import training_images

    with dist.together():
        data = training_images(config)
        if len(data) == 0:
            raise ValueError(f"--dataset {config.dataset}: no images")
    return data


def _dry_run(dist, config: TrainConfig, data) -> int:
    """Build the nets on the device and print the resolved config: what a run would be, nothing written."""
    from coopnets.trainer.coop import build_run

    run = build_run(config, dist)
    n_params = sum(p.numel() for p in [*run.descriptor.parameters(), *run.generator.parameters()])
    if dist.is_main:
        print(json.dumps(config.to_dict(), indent=2))
        print(
            f"dry run ok: {len(data)} images {tuple(data.shape[1:])}, arch {config.resolved_arch}, "
            f"{n_params} parameters, device {run.device}, {dist.world_size} rank(s)"
        )
    return 0


def _claim_run_dir(dist, out: Path, resume: bool) -> int | None:
    """Rank 0's lock on RUN_DIR (None on other ranks): refused while another coop-train writes there, and a
    fresh run refused where a run already is, so that nothing is overwritten without --resume."""
    from coopnets.trainer.checkpoint import lock_run_dir
    from coopnets.trainer.coop import CHECKPOINT

    lock = None
    try:
        with dist.together():
            if dist.is_main:
                lock = lock_run_dir(out)
                if not resume and (out / CHECKPOINT).exists():
                    raise ValueError(
                        f"--out {out} already holds a run ({CHECKPOINT}); pass --resume to continue it or "
                        "choose another --out"
                    )
    except BaseException:
        if lock is not None:
            os.close(lock)
        raise
    return lock


def _train_logged(dist, config: TrainConfig, data, resume: bool):
    """trainer.coop.train with the log set up (stderr, and RUN_DIR/train.log on rank 0) and timed."""
    from coopnets.trainer.coop import train

    out = Path(config.out)
    _setup_logging(out, quiet=not dist.is_main)
    log.info(
        "training %s on %s (%d images) for %d iterations into %s; %d rank(s), global batch %d, %d chains",
        config.resolved_arch,
        config.dataset,
        len(data),
        config.iterations,
        out,
        dist.world_size,
        config.batch_size * dist.world_size,
        config.num_chains * dist.world_size,
    )
    started = time.perf_counter()
    run = train(config, data, resume=resume, progress=dist.is_main, dist=dist)
    log.info("trained to iteration %d in %.1f s", run.iteration, time.perf_counter() - started)
    return run


def _finish(run, config: TrainConfig, data) -> None:
    """Rank 0's end of a run: the final sample grids and, unless --no-export, the bundle."""
    from coopnets.trainer.coop import CHECKPOINT, final_samples

    out = Path(config.out)
    bn = final_samples(run, out / "samples")
    log.info("final samples: %s", json.dumps({k: round(v, 4) for k, v in bn.items()}))
    if config.export:
        from coopnets.trainer.export import export_run  # onnx and onnxruntime load only for a bundle

        source = {"checkpoint": CHECKPOINT, "iteration": run.iteration}
        bundle = export_run(run.descriptor, run.generator, config, out / "bundle", data, source=source)
        print(f"bundle: {bundle}")
    print(f"run directory: {out} (config.json, checkpoint.pt, metrics.jsonl, tb/, samples/)")


def export_main(argv: list[str] | None = None) -> int:
    parser = Parser(prog="coop-export", description="Export a coop-train checkpoint as an ONNX model bundle.")
    parser.add_argument("checkpoint", help="RUN_DIR/checkpoint.pt")
    parser.add_argument("out_dir", help="bundle directory to write (atomically)")
    parser.add_argument(
        "--triton",
        metavar="OUT_DIR",
        help="also write a Triton model repository of the bundle there (trainer/triton.py)",
    )
    parser.add_argument(
        "--bn-recalibrate",
        type=int,
        metavar="BATCHES",
        help=f"{HELP['bn_recalibrate']} (default: the run's --bn-recalibrate)",
    )
    parser.add_argument(
        "--weights",
        choices=STORAGE,
        help=f"{HELP['weights']} (default: the run's --weights)",
    )
    parser.add_argument(
        "--restarts",
        type=int,
        metavar="R",
        help="latent chains per completed image that the bundle's completion requests get by default, their "
        f"g(X) averaged: more chains fill closer to the posterior mean at R times the latent cost "
        f"(1..{MAX_RESTARTS}; default {DEFAULT_COMPLETION.restarts})",
    )
    args = parser.parse_args(argv)
    if args.restarts is not None and not 1 <= args.restarts <= MAX_RESTARTS:
        parser.error(f"--restarts {args.restarts}: give 1 to {MAX_RESTARTS} chains per image")

    def export() -> int:
        import dataclasses

        from coopnets.trainer.checkpoint import load_checkpoint, models_from_state
        from coopnets.trainer.export import export_run

        logging.basicConfig(level=logging.INFO, format=LOG_FORMAT)
        state = load_checkpoint(args.checkpoint)
        descriptor, generator, config = models_from_state(state)
        if args.bn_recalibrate is not None:
            config = dataclasses.replace(config, bn_recalibrate=args.bn_recalibrate).validate()
        if args.weights is not None:
            config = dataclasses.replace(config, weights=args.weights).validate()
        source = {"checkpoint": Path(args.checkpoint).name, "iteration": int(state["iteration"])}
        completion = None if args.restarts is None else {"restarts": args.restarts}
        bundle = export_run(
            descriptor, generator, config, Path(args.out_dir), source=source, completion=completion
        )
        print(f"bundle: {bundle}")
        if args.triton:
            from coopnets.trainer.triton import export_triton

            print(f"triton model repository: {export_triton(bundle, args.triton)}")
        return 0

    return cli_main("coop-export", export)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(train_main())
