"""One way to build an entry point from its config dataclass: flags, a TOML file, validation, one-line errors.

    @dataclass(frozen=True)
    class ServeConfig:
        bundle: str = ""
        port: int = 50051
        def validate(self) -> ServeConfig: ...      # raises ValueError("--port: ...") naming the flag

    parser = Parser(prog="coop-serve", description=...)
    add_flags(parser, ServeConfig, HELP)                       # --bundle, --port, --no-reflection, ...
    config = resolve(ServeConfig, vars(parser.parse_args(argv)), config_file=None)

Each field is a flag: `max_batch` is `--max-batch` (and `--max_batch`); a bool is `--x / --no-x`; a field
typed `int | None` / `float | None` / `bool | None` defaults to None (= "the model's default"). Precedence,
lowest first: the dataclass defaults, the TOML file (top-level keys = field names, checked for unknown keys
and types), the flags given on the command line (defaults are suppressed, so only given flags override). The
result is validated by the dataclass's own `validate()` when it has one. Errors are one line: `Parser.error`
exits 2 with "error: ... (see PROG --help)", and `cli_main` turns ValueError/OSError into the same.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

_TYPES = {"int": int, "float": float, "str": str, "bool": bool}


class Parser(argparse.ArgumentParser):
    """argparse with one-line errors (no usage dump) and the docstring's examples kept as written."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", argparse.RawDescriptionHelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str):
        self.exit(2, f"error: {message} (see {self.prog} --help)\n")


def field_type(f: dataclasses.Field) -> tuple[type, bool]:
    """(base type, optional) of a config field annotated int, float, str, bool or `X | None`."""
    text = str(f.type).replace(" ", "")
    optional = text.endswith("|None")
    base = text[: -len("|None")] if optional else text
    if base not in _TYPES:
        raise TypeError(f"config field {f.name}: type {f.type} has no flag form (use int, float, str, bool)")
    return _TYPES[base], optional


def flag_name(name: str) -> str:
    return f"--{name.replace('_', '-')}"


def add_flags(
    parser: argparse.ArgumentParser,
    config: type,
    help: Mapping[str, str],
    *,
    positional: Iterable[str] = (),
    choices: Mapping[str, Iterable[str]] | None = None,
    skip: Iterable[str] = (),
) -> None:
    """One flag per field of the dataclass `config` (`positional` ones as arguments; `skip` ones omitted),
    with `help[name]` and the default in the help text. Defaults are SUPPRESSed: resolve() fills them."""
    defaults, choices, positional, skip = config(), dict(choices or {}), set(positional), set(skip)
    for f in dataclasses.fields(config):
        if f.name in skip:
            continue
        kind, optional = field_type(f)
        default = getattr(defaults, f.name)
        text = help.get(f.name, f.name.replace("_", " "))
        if f.name in positional:
            parser.add_argument(
                f.name,
                type=kind,
                help=text,
                nargs="?" if default not in ("", None) else None,
                default=argparse.SUPPRESS,
            )
            continue
        if default is None and optional:
            text = f"{text} (default: the model's)"
        elif default != "":
            text = f"{text} (default: {default!r})"
        names = [flag_name(f.name)] + ([f"--{f.name}"] if "_" in f.name else [])
        if kind is bool:
            parser.add_argument(
                names[0],
                dest=f.name,
                action=argparse.BooleanOptionalAction,
                default=argparse.SUPPRESS,
                help=text,
            )
        else:
            parser.add_argument(
                *names,
                dest=f.name,
                type=kind,
                default=argparse.SUPPRESS,
                help=text,
                choices=tuple(choices[f.name]) if f.name in choices else None,
            )


def load_toml(path: str | Path, config: type) -> dict[str, Any]:
    """Top-level keys of a TOML file as overrides of `config`'s fields; ValueError if unreadable, or for an
    unknown key or a value of the wrong type."""
    path = Path(path)
    try:
        with path.open("rb") as fh:
            data = tomllib.load(fh)
    except FileNotFoundError:
        raise ValueError(f"--config: {path} does not exist") from None
    except (OSError, tomllib.TOMLDecodeError) as e:
        raise ValueError(f"--config: {path} is not a readable TOML file ({e})") from None
    return checked_overrides(data, config, f"--config {path}")


def checked_overrides(data: Mapping[str, Any], config: type, where: str) -> dict[str, Any]:
    """`data` with keys turned into field names (dashes allowed) and values type-checked against `config`."""
    known = {f.name: f for f in dataclasses.fields(config)}
    out = {}
    for key, value in data.items():
        name = key.replace("-", "_")
        if name not in known:
            raise ValueError(f"{where}: unknown key {key!r} (see --help for the fields)")
        kind, optional = field_type(known[name])
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        ok = (value is None and optional) or (
            isinstance(value, kind) and not (kind is not bool and isinstance(value, bool))
        )
        if not ok:
            raise ValueError(f"{where}: {key} must be {kind.__name__}, got {value!r}")
        out[name] = value
    return out


def resolve(
    config: type, given: Mapping[str, Any], config_file: str | None = None, base: Mapping | None = None
):
    """`config` built from, lowest first: its defaults, `base` (e.g. a checkpoint's saved config), the TOML
    `config_file`, then `given` (the parsed flags; keys that are not fields are ignored); validated."""
    names = {f.name for f in dataclasses.fields(config)}
    merged: dict[str, Any] = {k: v for k, v in (base or {}).items() if k in names}
    if config_file:
        merged.update(load_toml(config_file, config))
    merged.update({k: v for k, v in given.items() if k in names})
    made = config(**merged)
    return made.validate() if hasattr(made, "validate") else made


def from_dict(config: type, data: Mapping[str, Any]):
    """Rebuilds a saved config; keys this version does not know are ignored (older and newer files load)."""
    names = {f.name for f in dataclasses.fields(config)}
    return config(**{k: v for k, v in data.items() if k in names})


def cli_main(prog: str, run: Callable[[], int], errors: tuple[type[BaseException], ...] = ()) -> int:
    """Runs an entry point's body: ValueError, OSError and `errors` become one line on stderr and exit 2;
    Ctrl-C exits 130."""
    try:
        return run()
    except (ValueError, OSError, *errors) as e:
        message = str(e).splitlines()[0] if str(e) else type(e).__name__
        print(f"{prog}: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130


def extra_main(prog: str, target: str, needs: Iterable[str], extra: str) -> Callable[[list[str] | None], int]:
    """An entry point that first checks the packages of its install extra, so that a base install (serving
    and clients, no torch) answers `coop-train` with one line saying what to install, not a traceback.
    `target` is "module:function", imported only once `needs` are found."""

    def main(argv: list[str] | None = None) -> int:
        import importlib
        import importlib.util

        missing = [name for name in needs if importlib.util.find_spec(name) is None]
        if missing:
            print(
                f"{prog}: error: {', '.join(missing)} not installed: {prog} needs the [{extra}] extra: "
                f"pip install 'coopnets[{extra}]' (CPU-only torch first: pip install torch==2.13.0)",
                file=sys.stderr,
            )
            return 2
        module, function = target.split(":")
        try:
            entry = getattr(importlib.import_module(module), function)
        except Exception as e:
            if type(e).__name__ != "VersionError":  # google.protobuf.runtime_version.VersionError
                raise
            print(f"{prog}: error: {PROTOBUF_MISMATCH} ({str(e).splitlines()[0][:160]})", file=sys.stderr)
            return 2
        return entry(argv)

    return main


# What an environment broken by another package's protobuf pin needs (pyproject.toml says why).
PROTOBUF_MISMATCH = (
    "a gRPC package's generated code demands a newer protobuf than the one installed (another package pinned "
    "it lower): pip install 'grpcio-health-checking>=1.62,<1.63' 'grpcio-reflection>=1.62,<1.63'"
)
