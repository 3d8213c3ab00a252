"""coop-client and coop-complete: command-line clients of coop-serve.

    coop-client synth --server 127.0.0.1:50051 --count 16 --seed 0 --out samples/   # grid.png + seed_<s>.png
    coop-client info --server 127.0.0.1:50051                                          # ModelInfo as JSON
    coop-client energy --server 127.0.0.1:50051 a.png b.png                            # E(Y) per image
    coop-client health --server 127.0.0.1:50051 --wait 60                              # exit 0 once SERVING
    coop-complete shirt.png --occlude center:14 --server 127.0.0.1:50051 --out rec/
    coop-complete shirt.png --mask hole.png --bundle runs/demo/bundle --out rec/       # local ONNX Runtime

Every command is built from its config dataclass by contract.flags; the connection settings are one dataclass,
ConnectionConfig, that every command's config extends, so its flags (and `--config FILE.toml` keys: a file of
server, token_file, tls_* and timeout serves every command) are written once.

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
from coopnets.clients.client import CoopNetsClient, channel_target
from coopnets.contract.codec import decode_png, save_grid, save_image, save_strip
from coopnets.contract.flags import Parser, add_flags, resolve
from coopnets.contract.sampling import RESIDUAL_INTERPOLANTS
from google.protobuf.json_format import MessageToDict


class CliError(Exception):
    """One line for the user."""


@dataclass(frozen=True)
class Recovered:
    recovered: np.ndarray  # (C, H, W)
    occluded: np.ndarray  # (C, H, W), holes black (-1)


# ---- configs ----------------------------------------------------------------------------------------------

CONNECTION_HELP = {
    "server": "coop-serve address HOST:PORT, or several IP:PORT comma-separated (replicas: round robin)",
    "token_file": "file with the bearer token the server expects",
    "tls_ca": "PEM CA that signed the server certificate (enables TLS)",
    "tls_cert": "PEM client certificate (mTLS)",
    "tls_key": "PEM client key (mTLS)",
    "timeout": "deadline per call in seconds",
}


@dataclass(frozen=True)
class ConnectionConfig:
    """How to reach coop-serve; every command's config extends it."""

    server: str = ""
    token_file: str = ""
    tls_ca: str = ""
    tls_cert: str = ""
    tls_key: str = ""
    timeout: float = 300.0

    def validate(self) -> ConnectionConfig:
        if not self.server:
            raise ValueError("--server HOST:PORT is required: the address of coop-serve")
        return self.check_connection()

    def check_connection(self) -> ConnectionConfig:
        if self.server:
            try:
                channel_target(self.server)
            except ValueError as e:
                raise ValueError(f"--server: {e}") from None
        if not self.timeout > 0:
            raise ValueError(f"--timeout {self.timeout}: must be a positive number of seconds")
        return self


@dataclass(frozen=True)
class SynthConfig(ConnectionConfig):
    count: int = 16
    seed: int = 0
    steps: int | None = None
    step_size: float | None = None
    noise: bool | None = None
    out: str = ""

    def validate(self) -> SynthConfig:
        if self.count < 1:
            raise ValueError(f"--count {self.count}: must be at least 1")
        if not self.out:
            raise ValueError("--out DIR is required: where grid.png and seed_<s>.png go")
        return super().validate()


@dataclass(frozen=True)
class HealthConfig(ConnectionConfig):
    wait: float = 0.0


@dataclass(frozen=True)
class CompleteConfig(ConnectionConfig):
    mask: str = ""
    occlude: str = ""
    bundle: str = ""
    out: str = ""
    seed: int = 0
    latent_steps: int | None = None
    refine_steps: int | None = None
    restarts: int | None = None
    residual_fill: bool | None = None
    average_restarts: bool | None = None
    residual_interpolant: str | None = None
    device: str = "auto"

    def validate(self) -> CompleteConfig:
        if bool(self.mask) == bool(self.occlude):
            raise ValueError("give exactly one of --mask PNG (white = missing) and --occlude SPEC")
        if bool(self.server) == bool(self.bundle):
            raise ValueError("give exactly one of --server HOST:PORT (coop-serve) and --bundle DIR (locally)")
        if not self.out:
            raise ValueError("--out DIR is required: where <stem>_recovered.png and <stem>_strip.png go")
        if self.seed < 0:
            raise ValueError(f"--seed {self.seed}: must be >= 0")
        if self.residual_interpolant not in (None, *RESIDUAL_INTERPOLANTS):
            forms = ", ".join(RESIDUAL_INTERPOLANTS)
            raise ValueError(f"--residual-interpolant {self.residual_interpolant!r}: use one of {forms}")
        if self.restarts is not None and self.restarts < 1:
            raise ValueError(f"--restarts {self.restarts}: must be at least 1 (omit it for the default)")
        for name in ("latent_steps", "refine_steps"):
            if (getattr(self, name) or 0) < 0:
                raise ValueError(f"--{name.replace('_', '-')}: must be >= 0 (omit it for the default)")
        return self.check_connection()


SYNTH_HELP = {
    "count": "images to synthesize",
    "seed": "image i uses seed S + i",
    "steps": "Langevin steps",
    "step_size": "Langevin step size δ",
    "noise": "Langevin noise on/off",
    "out": "output directory (required)",
}
HEALTH_HELP = {"wait": "poll up to this many seconds for SERVING"}
COMPLETE_HELP = {
    "mask": "PNG mask, white = missing (applied to every input)",
    "occlude": "named occlusion: center:N | random:P | left-half | rects | square:K | m30 | m40 | m50 | "
    "blocks[:B[:P]]",
    "bundle": "complete locally with ONNX Runtime on this bundle directory, or a shipped model (reference, "
    "cifar10), instead of --server",
    "out": "output directory (required)",
    "seed": "input i uses seed S + i",
    "latent_steps": "latent inference steps",
    "refine_steps": "descriptor refinement steps",
    "restarts": "latent chains per image (their g(X) averaged, or the lowest-energy one kept)",
    "residual_fill": "fill the hole with g(X) plus the observed pixels' residual, interpolated",
    "average_restarts": "fill the hole with the mean of the latent chains' g(X), not the lowest-energy one's",
    "residual_interpolant": "how the residual is carried into the hole: auto = biharmonic in scattered holes "
    "(random pixels), harmonic in blocks",
    "device": "ONNX Runtime device, with --bundle",
}


def _add_config(parser: argparse.ArgumentParser, config: type, help: dict[str, str], **kw) -> None:
    """The flags of `config` (the connection ones included) and --config FILE.toml."""
    parser.add_argument("--config", metavar="FILE.toml", help="TOML file of these fields (flags override it)")
    add_flags(parser, config, {**CONNECTION_HELP, **help}, **kw)


def _resolve(parser: Parser, config: type, args: argparse.Namespace):
    """The validated config; a bad flag or TOML file is a one-line usage error (exit 2)."""
    try:
        return resolve(config, vars(args), config_file=args.config)
    except ValueError as e:
        parser.error(str(e))


# ---- running ----------------------------------------------------------------------------------------------


def _read_text(path: str, what: str) -> str:
    try:
        return Path(path).read_text().strip()
    except OSError as e:
        raise CliError(f"cannot read {what} {path!r} ({e.strerror})") from None


def _client(conn: ConnectionConfig) -> CoopNetsClient:
    for name in ("tls_ca", "tls_cert", "tls_key"):
        path = getattr(conn, name)
        if path and not Path(path).is_file():
            raise CliError(f"--{name.replace('_', '-')} {path!r} does not exist")
    return CoopNetsClient(
        conn.server,
        token=_read_text(conn.token_file, "--token-file") if conn.token_file else None,
        tls_ca=conn.tls_ca or None,
        tls_cert=conn.tls_cert or None,
        tls_key=conn.tls_key or None,
        timeout=conn.timeout,
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
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
    print(f"{prog}: {msg}", file=sys.stderr)
    return 1


# ---- coop-client ------------------------------------------------------------------------------------------


def _synth(config: SynthConfig) -> int:
    with _client(config) as c:
        out = c.synthesize(
            count=config.count,
            seed=config.seed,
            steps=config.steps,
            step_size=config.step_size,
            noise=config.noise,
        )
    out_dir = Path(config.out)
    save_grid(out.images, out_dir / "grid.png")
    for image, seed in zip(out.images, out.seeds, strict=True):
        save_image(image, out_dir / f"seed_{seed}.png")
    print(
        f"wrote {out_dir / 'grid.png'} and {len(out.seeds)} images seed_{out.seeds[0]}.png.. "
        f"(mean energy {float(out.energy.mean()):.3f})"
    )
    return 0


def _info(config: ConnectionConfig) -> int:
    with _client(config) as c:
        info = c.info()
    print(json.dumps(_as_dict(info), indent=2))
    return 0


def _as_dict(message) -> dict:
    """MessageToDict with zero-valued fields printed, on every protobuf the package admits: the keyword was
    renamed in protobuf 5.26 (from including_default_value_fields, since removed); test_install runs 4.25."""
    try:
        return MessageToDict(message, always_print_fields_with_no_presence=True)
    except TypeError:
        return MessageToDict(message, including_default_value_fields=True)


def _health(config: HealthConfig) -> int:
    """Prints the grpc.health.v1 status; with --wait S polls until SERVING for up to S seconds."""
    deadline = time.monotonic() + config.wait
    with _client(config) as c:
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


def _energy(config: ConnectionConfig, images: list[str]) -> int:
    with _client(config) as c:
        out = c.energies([Path(p) for p in images])
    if out.ood is None:
        print("path\tenergy\t(the bundle has no out-of-distribution score: re-export it)")
        for path, e in zip(images, out.energy, strict=True):
            print(f"{path}\t{e:.4f}")
        return 0
    print("path\tenergy\tood\tflagged (ood > 1)")
    for path, e, o in zip(images, out.energy, out.ood, strict=True):
        print(f"{path}\t{e:.4f}\t{o:.3f}\t{'yes' if o > 1 else 'no'}")
    return 0


def client_main(argv: list[str] | None = None) -> int:
    parser = Parser(prog="coop-client", description="Client of coop-serve.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)
    commands = {  # name -> (config, help of its own flags, what it does, run(config, args))
        "synth": (SynthConfig, SYNTH_HELP, "synthesize images: OUT/grid.png and OUT/seed_<s>.png",
                  lambda config, args: _synth(config)),
        "info": (ConnectionConfig, {}, "print ModelInfo as JSON", lambda config, args: _info(config)),
        "health": (HealthConfig, HEALTH_HELP, "print the health status (exit 0 only when SERVING)",
                   lambda config, args: _health(config)),
        "energy": (ConnectionConfig, {}, "print the energy and out-of-distribution score of PNG images",
                   lambda config, args: _energy(config, args.images)),
    }  # fmt: skip
    parsers = {}
    for name, (config, help, what, _) in commands.items():
        parsers[name] = sub.add_parser(name, help=what, description=what)
        _add_config(parsers[name], config, help)
    parsers["energy"].add_argument("images", nargs="+", metavar="IMAGE", help="PNG images, the model's size")
    args = parser.parse_args(argv)
    config_type, _, _, run = commands[args.command]
    config = _resolve(parsers[args.command], config_type, args)
    return _run("coop-client", lambda: run(config, args))


# ---- coop-complete -----------------------------------------------------------------------------------------


COMPLETION_SETTINGS = (
    "latent_steps", "refine_steps", "restarts", "residual_fill", "average_restarts", "residual_interpolant",
)  # fmt: skip


def _completion_settings(config: CompleteConfig) -> dict:
    """The completion settings coop-complete passes on, the same to a server and to the local engine, by
    their request names (None = the model's default)."""
    return {name: getattr(config, name) for name in COMPLETION_SETTINGS}


def _complete_remote(config: CompleteConfig, inputs: list[Path]) -> list[Recovered]:
    mask = Path(config.mask).read_bytes() if config.mask else None
    out = []
    with _client(config) as c:
        for i, path in enumerate(inputs):
            r = c.complete(
                path.read_bytes(),
                mask=mask,
                occlusion=config.occlude or None,
                seed=config.seed + i,
                **_completion_settings(config),
            )
            out.append(Recovered(r.recovered, r.occluded))
    return out


def _complete_local(config: CompleteConfig, inputs: list[Path]) -> list[Recovered]:
    """The service's completion without a server: the same engine, masks and defaults, in this process."""
    from coopnets.contract.codec import checked_missing, decode_mask_png
    from coopnets.contract.occlusions import occluded, occlusion_mask
    from coopnets.serving.engine import Engine
    from coopnets.serving.requests import completion_params

    engine = Engine.open(config.bundle, device=config.device)  # BundleError is a ValueError: one line
    shape = engine.image_shape
    images = np.stack([decode_png(p.read_bytes(), shape, str(p)) for p in inputs])  # (N, C, H, W)
    seeds = tuple(config.seed + i for i in range(len(inputs)))
    if config.mask:  # checked as the service checks a mask PNG
        mask = checked_missing(
            decode_mask_png(Path(config.mask).read_bytes(), shape, config.mask), config.mask
        )
        masks = np.stack([mask] * len(inputs))  # (N, C, H, W)
    else:
        masks = np.stack([occlusion_mask(config.occlude, shape, s) for s in seeds])  # (N, C, H, W)
    params = completion_params(engine, None, **_completion_settings(config))
    out = engine.complete(images, masks, seeds, params)
    preview = occluded(images, masks)  # (N, C, H, W)
    return [Recovered(out.images[i], preview[i]) for i in range(len(inputs))]


def _complete(config: CompleteConfig, inputs: list[Path]) -> int:
    for p in inputs:
        if not p.is_file():
            raise CliError(f"input {str(p)!r} does not exist")
    if config.mask and not Path(config.mask).is_file():
        raise CliError(f"--mask {config.mask!r} does not exist")
    results = _complete_remote(config, inputs) if config.server else _complete_local(config, inputs)
    out_dir = Path(config.out)
    for path, r in zip(inputs, results, strict=True):
        original = decode_png(path.read_bytes(), r.recovered.shape, str(path))  # (C, H, W)
        save_image(r.recovered, out_dir / f"{path.stem}_recovered.png")
        save_strip([original, r.occluded, r.recovered], out_dir / f"{path.stem}_strip.png")
        print(f"wrote {out_dir / (path.stem + '_recovered.png')} and {out_dir / (path.stem + '_strip.png')}")
    return 0


def complete_main(argv: list[str] | None = None) -> int:
    parser = Parser(
        prog="coop-complete",
        description="Recover occluded images (white mask pixels = missing) through coop-serve or locally.",
    )
    parser.add_argument("inputs", nargs="+", metavar="INPUT", help="PNG images of the model's size")
    choices = {"device": ("auto", "cuda", "cpu"), "residual_interpolant": RESIDUAL_INTERPOLANTS}
    _add_config(parser, CompleteConfig, COMPLETE_HELP, choices=choices)
    args = parser.parse_args(argv)
    config = _resolve(parser, CompleteConfig, args)
    return _run("coop-complete", lambda: _complete(config, [Path(p) for p in args.inputs]))
