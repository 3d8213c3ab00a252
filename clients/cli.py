"""coop-client and coop-complete: command-line clients of coop-serve.

    coop-client synth --server 127.0.0.1:50051 --count 16 --seed 0 --out samples/   # grid.png + seed_<s>.png
    coop-client info --server 127.0.0.1:50051                                          # ModelInfo as JSON
    coop-client energy --server 127.0.0.1:50051 a.png b.png                            # E(Y) per image
    coop-client health --server 127.0.0.1:50051 --wait 60                              # exit 0 once SERVING
    coop-complete shirt.png --occlude center:14 --server 127.0.0.1:50051 --out rec/
    coop-complete shirt.png --mask hole.png --bundle runs/demo/bundle --out rec/       # local ONNX Runtime

coop-complete writes, per input, OUT/<stem>_recovered.png and OUT/<stem>_strip.png (input | occluded |
recovered). Masks: **white (1) = missing**. Input i uses seed S + i. Errors: one line on stderr, exit 1
(bad input, server errors) or 2 (bad flags).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np
from google.protobuf.json_format import MessageToDict

from clients.client import CoopNetsClient
from clients.images import save_grid, save_image, save_strip


class CliError(Exception):
    """One line for the user."""


@dataclass(frozen=True)
class Recovered:
    recovered: np.ndarray  # (C, H, W)
    occluded: np.ndarray  # (C, H, W), holes black


def _connection_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--server", required=True, metavar="HOST:PORT", help="coop-serve address")
    p.add_argument("--token-file", help="file with the bearer token the server expects")
    p.add_argument("--tls-ca", help="PEM CA that signed the server certificate (enables TLS)")
    p.add_argument("--tls-cert", help="PEM client certificate (mTLS)")
    p.add_argument("--tls-key", help="PEM client key (mTLS)")
    p.add_argument("--timeout", type=float, default=300.0, help="deadline per call in seconds (default 300)")


def _read_text(path: str, what: str) -> str:
    try:
        return Path(path).read_text().strip()
    except OSError as e:
        raise CliError(f"cannot read {what} {path!r} ({e.strerror})") from None


def _client(args) -> CoopNetsClient:
    for name in ("tls_ca", "tls_cert", "tls_key"):
        path = getattr(args, name)
        if path and not Path(path).is_file():
            raise CliError(f"--{name.replace('_', '-')} {path!r} does not exist")
    token = _read_text(args.token_file, "--token-file") if args.token_file else None
    return CoopNetsClient(
        args.server,
        token=token,
        tls_ca=args.tls_ca,
        tls_cert=args.tls_cert,
        tls_key=args.tls_key,
        timeout=args.timeout,
    )


def _run(prog: str, fn: Callable[[], int]) -> int:
    """Runs a command; every expected failure becomes one line on stderr and exit status 1."""
    try:
        return fn()
    except CliError as e:
        msg = str(e)
    except grpc.RpcError as e:
        msg = f"{e.code().name}: {e.details()}"
        if e.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
            msg += (
                " (is coop-serve running at that address, with matching TLS settings? raise --timeout "
                "for long requests)"
            )
    except (OSError, ValueError) as e:  # unreadable files, bad images, bundle problems
        msg = str(e)
    print(f"{prog}: {msg}", file=sys.stderr)
    return 1


# ---- coop-client ------------------------------------------------------------------------------------------


def _synth(args) -> int:
    if args.count < 1:
        raise CliError("--count must be >= 1")
    with _client(args) as c:
        out = c.synthesize(
            count=args.count, seed=args.seed, steps=args.steps, step_size=args.step_size, noise=args.noise
        )
    out_dir = Path(args.out)
    save_grid(out.images, out_dir / "grid.png")
    for image, seed in zip(out.images, out.seeds, strict=True):
        save_image(image, out_dir / f"seed_{seed}.png")
    print(
        f"wrote {out_dir / 'grid.png'} and {len(out.seeds)} images seed_{out.seeds[0]}.png.. "
        f"(mean energy {float(out.energy.mean()):.3f})"
    )
    return 0


def _info(args) -> int:
    with _client(args) as c:
        info = c.info()
    print(json.dumps(MessageToDict(info, always_print_fields_with_no_presence=True), indent=2))
    return 0


def _health(args) -> int:
    """Prints the grpc.health.v1 status; with --wait S polls until SERVING for up to S seconds."""
    deadline = time.monotonic() + args.wait
    with _client(args) as c:
        while True:
            try:
                status = c.health(timeout=2.0)
            except grpc.RpcError as e:
                status = e.code().name
            if status == "SERVING" or time.monotonic() >= deadline:
                break
            time.sleep(0.2)
    print(status)
    return 0 if status == "SERVING" else 1


def _energy(args) -> int:
    with _client(args) as c:
        energy = c.energy([Path(p) for p in args.images])
    for path, e in zip(args.images, energy, strict=True):
        print(f"{path}\t{e:.4f}")
    return 0


def client_main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="coop-client", description="Client of coop-serve.")
    sub = parser.add_subparsers(dest="command", required=True)
    synth = sub.add_parser("synth", help="synthesize images: OUT/grid.png and OUT/seed_<s>.png")
    _connection_flags(synth)
    synth.add_argument("--count", type=int, default=16)
    synth.add_argument("--seed", type=int, default=0, help="image i uses seed S + i")
    synth.add_argument("--steps", type=int, help="Langevin steps (default: the bundle's)")
    synth.add_argument("--step-size", type=float, help="Langevin step size δ (default: the bundle's)")
    synth.add_argument(
        "--noise",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="Langevin noise on/off (default: the bundle's)",
    )
    synth.add_argument("--out", required=True, help="output directory")
    info = sub.add_parser("info", help="print ModelInfo as JSON")
    _connection_flags(info)
    health = sub.add_parser("health", help="print the health status (exit 0 only when SERVING)")
    _connection_flags(health)
    health.add_argument("--wait", type=float, default=0.0, help="poll up to this many seconds for SERVING")
    energy = sub.add_parser("energy", help="print the descriptor energy of PNG images (lower = more typical)")
    _connection_flags(energy)
    energy.add_argument("images", nargs="+")
    args = parser.parse_args(argv)
    fn = {"synth": _synth, "info": _info, "health": _health, "energy": _energy}[args.command]
    return _run("coop-client", lambda: fn(args))


# ---- coop-complete -----------------------------------------------------------------------------------------


def _complete_remote(args, inputs: list[Path]) -> list[Recovered]:
    mask = Path(args.mask).read_bytes() if args.mask else None
    out = []
    with _client(args) as c:
        for i, path in enumerate(inputs):
            r = c.complete(
                path.read_bytes(),
                mask=mask,
                occlusion=args.occlude,
                seed=args.seed + i,
                latent_steps=args.latent_steps,
                refine_steps=args.refine_steps,
                restarts=args.restarts,
            )
            out.append(Recovered(r.recovered, r.occluded))
    return out


def _complete_local(args, inputs: list[Path]) -> list[Recovered]:
    from coopnets.v1 import coopnets_pb2 as pb

    from evaluation.occlusions import occlusion_mask
    from serving.bundle import BundleError
    from serving.codec import decode_png, mask_from_proto
    from serving.engine import Engine

    try:
        engine = Engine.open(args.bundle, device=args.device)
    except BundleError as e:
        raise CliError(str(e)) from None
    shape = engine.image_shape
    images = np.stack([decode_png(p.read_bytes(), shape, str(p)) for p in inputs])  # (N, C, H, W)
    seeds = [args.seed + i for i in range(len(inputs))]
    if args.mask:
        mask = mask_from_proto(pb.Image(png=Path(args.mask).read_bytes()), shape, args.mask)
        masks = np.stack([mask] * len(inputs))  # (N, C, H, W)
    else:
        masks = np.stack([occlusion_mask(args.occlude, shape, s) for s in seeds])  # (N, C, H, W)
    out = engine.complete(
        images,
        masks,
        seeds,
        latent_steps=args.latent_steps,
        refine_steps=args.refine_steps,
        restarts=args.restarts,
    )
    occluded = np.where(masks > 0.5, -1.0, images).astype(np.float32)
    return [Recovered(out.images[i], occluded[i]) for i in range(len(inputs))]


def _complete(args) -> int:
    inputs = [Path(p) for p in args.inputs]
    for p in inputs:
        if not p.is_file():
            raise CliError(f"input {str(p)!r} does not exist")
    if args.mask and not Path(args.mask).is_file():
        raise CliError(f"--mask {args.mask!r} does not exist")
    if args.seed < 0:
        raise CliError("--seed must be >= 0")
    if args.restarts is not None and args.restarts < 1:
        raise CliError("--restarts must be at least 1 (omit it for the model's default)")
    results = _complete_remote(args, inputs) if args.server else _complete_local(args, inputs)
    out_dir = Path(args.out)
    from serving.codec import decode_png

    for path, r in zip(inputs, results, strict=True):
        original = decode_png(path.read_bytes(), r.recovered.shape, str(path))  # (C, H, W)
        save_image(r.recovered, out_dir / f"{path.stem}_recovered.png")
        save_strip([original, r.occluded, r.recovered], out_dir / f"{path.stem}_strip.png")
        print(f"wrote {out_dir / (path.stem + '_recovered.png')} and {out_dir / (path.stem + '_strip.png')}")
    return 0


def complete_main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="coop-complete",
        description="Recover occluded images (white mask pixels = missing) through coop-serve or locally.",
    )
    parser.add_argument("inputs", nargs="+", metavar="INPUT", help="PNG images of the model's size")
    how = parser.add_mutually_exclusive_group(required=True)
    how.add_argument("--mask", help="PNG mask, white = missing (applied to every input)")
    how.add_argument("--occlude", metavar="SPEC", help="center:N | random:P | left-half | rects")
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--server", metavar="HOST:PORT", help="complete through coop-serve")
    where.add_argument("--bundle", help="complete locally with ONNX Runtime on this bundle directory")
    parser.add_argument("--out", required=True, help="output directory")
    parser.add_argument("--seed", type=int, default=0, help="input i uses seed S + i")
    parser.add_argument("--latent-steps", type=int, help="latent inference steps (default: the bundle's)")
    parser.add_argument(
        "--refine-steps", type=int, help="descriptor refinement steps (default: the bundle's)"
    )
    parser.add_argument(
        "--restarts",
        type=int,
        help="latent chains per image, the lowest-energy one kept (default: the bundle's)",
    )
    parser.add_argument("--device", default="auto", choices=("auto", "cuda", "cpu"), help="with --bundle")
    parser.add_argument("--token-file", help="file with the bearer token the server expects")
    parser.add_argument("--tls-ca", help="PEM CA that signed the server certificate (enables TLS)")
    parser.add_argument("--tls-cert", help="PEM client certificate (mTLS)")
    parser.add_argument("--tls-key", help="PEM client key (mTLS)")
    parser.add_argument("--timeout", type=float, default=300.0, help="deadline per call in seconds")
    args = parser.parse_args(argv)
    return _run("coop-complete", lambda: _complete(args))
