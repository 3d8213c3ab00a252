"""Regenerates the Python code of the contract: `make protogen` (then commit the result).

The generated modules are committed so that a fresh clone imports them without a build step. They are made by
one pinned generator, GENERATOR (grpcio-tools 1.62.3, protoc 25.x, gencode "Protobuf Python Version: 4.25.1"),
because newer generators stamp the code with a runtime check (`ValidateProtobufRuntimeVersion`,
`GRPC_GENERATED_VERSION`) that refuses every protobuf older than the generator's: stubs from grpcio-tools 1.85
needed protobuf >= 7.35, and `pip install tritonclient[grpc]` (protobuf < 7) then broke every import of
coopnets.v1. The old gencode carries no such check and runs on protobuf 4.25 through 7.x (measured:
tests/system/test_install.py runs the lowest, the project's venv the newest). `make protogen` runs this file
from a throw-away venv that holds GENERATOR; run elsewhere, main refuses with one line.

tests/serving/test_serving_proto.py fails when the committed code is stale, comparing what matters rather than
bytes: the FileDescriptorProto embedded in each *_pb2 against `compiled` (the .proto compiled now by whatever
grpcio-tools is installed), the methods of the generated stubs against the compiled service, and the absence
of a runtime version check.
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass
from pathlib import Path

PROTO_ROOT = Path(__file__).resolve().parent  # protos/: a development tool beside the .protos, not installed
OIP_ROOT = PROTO_ROOT / "coopnets" / "oip"
PROTO = "coopnets/v1/coopnets.proto"
GENERATED = ("coopnets_pb2.py", "coopnets_pb2.pyi", "coopnets_pb2_grpc.py")
GENERATOR = "1.62.3"  # grpcio-tools: the newest whose gencode has no runtime version check


@dataclass(frozen=True)
class Proto:
    """One .proto: the include root protoc gets (so `name` is the file name registered in the descriptor
    pool), and the Python package its generated modules live in."""

    root: Path
    name: str
    package: str

    @property
    def source(self) -> Path:
        return self.root / self.name

    def module(self, suffix: str) -> Path:
        """The committed generated file: suffix "_pb2.py", "_pb2.pyi" or "_pb2_grpc.py"."""
        stem = self.source.with_suffix("")
        return stem.with_name(stem.name + suffix)


# The Open Inference Protocol (KServe v2 / Triton's gRPC API) under its published file names and package
# `inference`: registered as "grpc_service.proto" and "model_config.proto" with the very descriptors that
# tritonclient registers, so that serving's modules and tritonclient's load into one process (a descriptor
# pool accepts the same file twice, never two definitions of one name). The .proto files are printed from
# tritonclient's descriptors (`python protos/protogen.py --oip-from-tritonclient`), then generated like
# coopnets.v1.
PROTOS = (
    Proto(PROTO_ROOT, PROTO, "coopnets.v1"),
    Proto(OIP_ROOT, "model_config.proto", "coopnets.oip"),
    Proto(OIP_ROOT, "grpc_service.proto", "coopnets.oip"),
)
OIP_HEADER = """// The Open Inference Protocol as Triton defines it ({name}; BSD-3-Clause, NVIDIA).
// Printed by `python protos/protogen.py --oip-from-tritonclient` from the descriptors that
// tritonclient {version} ships (its comments are not in them); protoc compiles it back to those
// descriptors, byte for byte (tests/serving/test_serving_proto.py). Do not edit: regenerate.
"""


def _include() -> str:
    import grpc_tools

    return str(Path(grpc_tools.__file__).parent / "_proto")


def generate(proto: Proto) -> list[Path]:
    """Runs grpc_tools.protoc on `proto` into its folder, imports made absolute (`from coopnets.oip import
    model_config_pb2`: protoc writes bare `import model_config_pb2` for a file at the include root); returns
    the generated files."""
    from grpc_tools import protoc

    args = [
        "protoc",
        f"-I{proto.root}",
        f"-I{_include()}",
        f"--python_out={proto.root}",
        f"--pyi_out={proto.root}",
        f"--grpc_python_out={proto.root}",
        proto.name,
    ]
    if protoc.main(args) != 0:
        raise RuntimeError(f"protoc failed on {proto.source}")
    files = [proto.module(s) for s in ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py")]
    if "/" not in proto.name:
        for path in files:
            text = re.sub(
                r"^import (\w+_pb2) as ", rf"from {proto.package} import \1 as ", path.read_text(), flags=re.M
            )
            path.write_text(text)
    return files


def compiled(out_dir: Path, proto: str | Proto = PROTO):
    """`proto` compiled now by grpc_tools.protoc, as the FileDescriptorProto that its *_pb2 embeds
    (json_name cleared: the Python generator leaves it out, and it is derived from the field name)."""
    from google.protobuf import descriptor_pb2
    from grpc_tools import protoc

    proto = proto if isinstance(proto, Proto) else Proto(PROTO_ROOT, proto, "")
    out = out_dir / (Path(proto.name).stem + ".pb")
    args = ["protoc", f"-I{proto.root}", f"-I{_include()}", f"--descriptor_set_out={out}", proto.name]
    if protoc.main(args) != 0:
        raise RuntimeError(f"protoc failed on {proto.source}")
    (file,) = descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes()).file

    def clear(messages) -> None:
        for message in messages:
            for f in message.field:
                f.ClearField("json_name")
            clear(message.nested_type)

    clear(file.message_type)
    return file


SCALARS = (
    "double", "float", "int64", "uint64", "int32", "fixed64", "fixed32", "bool", "string", "bytes", "uint32",
    "sfixed32", "sfixed64", "sint32", "sint64",
)  # fmt: skip


class _Printer:
    """Prints a FileDescriptorProto's definitions as .proto lines into `out`, in the order protoc registered
    them, so that compiling the text gives back the same descriptor (no comments, no source info)."""

    def __init__(self) -> None:
        from google.protobuf.descriptor_pb2 import FieldDescriptorProto as F

        self.repeated = F.LABEL_REPEATED
        self.scalars = {getattr(F, "TYPE_" + n.upper()): n for n in SCALARS}
        self.out: list[str] = []

    def type_name(self, f) -> str:
        return self.scalars[f.type] if f.type in self.scalars else f.type_name

    def enum(self, e, ind: str) -> None:
        if e.HasField("options"):
            raise ValueError(f"enum {e.name} has options")
        self.out.append(f"{ind}enum {e.name} {{")
        self.out.extend(f"{ind}  {v.name} = {v.number};" for v in e.value)
        self.out.append(f"{ind}}}")

    def message(self, msg, ind: str) -> None:
        """A message with its enums, fields (maps and oneofs folded back) and nested messages. protoc keeps a
        map's entry as a nested message at the map field's place: nested messages before it are printed
        before the field, the rest after every field."""
        if msg.HasField("options"):
            raise ValueError(f"message {msg.name} has options")
        self.out.append(f"{ind}message {msg.name} {{")
        entries = {n.name: n for n in msg.nested_type if n.options.map_entry}
        pending = list(msg.nested_type)
        for e in msg.enum_type:
            self.enum(e, ind + "  ")
        open_oneof = None
        for f in msg.field:
            if f.HasField("options") or f.proto3_optional:
                raise ValueError(f"field {msg.name}.{f.name}: options/optional are not printed")
            entry = entries.get(f.type_name.rsplit(".", 1)[-1]) if f.label == self.repeated else None
            oneof = msg.oneof_decl[f.oneof_index].name if f.HasField("oneof_index") else None
            if entry is not None:
                self.nested_until(msg, pending, entry, open_oneof, ind)
            open_oneof = self.switch_oneof(open_oneof, oneof, ind)
            self.field(f, entry, ind + ("    " if oneof else "  "))
        if open_oneof:
            self.out.append(f"{ind}  }}")
        for n in pending:
            if n.options.map_entry:
                raise ValueError(f"{msg.name}: a map entry without its field")
            self.message(n, ind + "  ")
        self.out.append(f"{ind}}}")

    def nested_until(self, msg, pending: list, entry, open_oneof: str | None, ind: str) -> None:
        """Prints the nested messages defined before the map entry `entry` (as they stood in the source),
        then drops the entry itself from `pending`."""
        while pending and pending[0] is not entry:
            n = pending.pop(0)
            if n.options.map_entry:
                raise ValueError(f"{msg.name}: map entries out of order")
            if open_oneof:
                raise ValueError(f"{msg.name}: a nested message inside oneof {open_oneof}")
            self.message(n, ind + "  ")
        pending.pop(0)

    def switch_oneof(self, open_oneof: str | None, oneof: str | None, ind: str) -> str | None:
        """Closes the open oneof block and opens the next field's, where they differ; returns the open one."""
        if oneof != open_oneof:
            if open_oneof:
                self.out.append(f"{ind}  }}")
            if oneof:
                self.out.append(f"{ind}  oneof {oneof} {{")
        return oneof

    def field(self, f, entry, pad: str) -> None:
        if entry is not None:
            k, v = entry.field
            self.out.append(f"{pad}map<{self.type_name(k)}, {self.type_name(v)}> {f.name} = {f.number};")
        else:
            rep = "repeated " if f.label == self.repeated else ""
            self.out.append(f"{pad}{rep}{self.type_name(f)} {f.name} = {f.number};")

    def service(self, svc) -> None:
        self.out.append(f"service {svc.name} {{")
        for m in svc.method:
            cs = "stream " if m.client_streaming else ""
            ss = "stream " if m.server_streaming else ""
            self.out.append(f"  rpc {m.name}({cs}{m.input_type}) returns ({ss}{m.output_type}) {{}}")
        self.out.append("}")


def proto_source(file, header: str = "") -> str:
    """.proto text that protoc compiles back to the FileDescriptorProto `file` (no comments, no source info):
    proto3 messages, nested messages and enums, maps, oneofs and services; anything else raises ValueError."""
    if file.syntax != "proto3" or file.HasField("options"):
        raise ValueError(f"{file.name}: only plain proto3 files can be printed")
    printer = _Printer()
    out = printer.out
    out += [header, 'syntax = "proto3";', "", f"package {file.package};", ""]
    out += [f'import "{dep}";' for dep in file.dependency] + ([""] if file.dependency else [])
    for e in file.enum_type:
        printer.enum(e, "")
        out.append("")
    for msg in file.message_type:
        printer.message(msg, "")
        out.append("")
    for svc in file.service:
        printer.service(svc)
        out.append("")
    return "\n".join(out)


def oip_from_tritonclient() -> list[Path]:
    """Writes the OIP .proto files from the descriptors of the installed tritonclient."""
    from importlib.metadata import version

    from google.protobuf import descriptor_pb2
    from tritonclient.grpc import model_config_pb2, service_pb2

    written = []
    for module in (model_config_pb2, service_pb2):
        file = descriptor_pb2.FileDescriptorProto.FromString(module.DESCRIPTOR.serialized_pb)
        header = OIP_HEADER.format(name=file.name, version=version("tritonclient"))
        (OIP_ROOT / file.name).write_text(proto_source(file, header))
        written.append(OIP_ROOT / file.name)
    return written


def main(argv: list[str] | None = None) -> int:
    from importlib.metadata import version

    argv = sys.argv[1:] if argv is None else argv
    if argv == ["--print-generator"]:  # what `make protogen` installs in its venv
        print(GENERATOR)
        return 0
    if argv == ["--oip-from-tritonclient"]:
        for path in oip_from_tritonclient():
            print(f"wrote {path}")
        return 0
    found = version("grpcio-tools")
    if found != GENERATOR:
        print(
            f"protos/protogen.py: needs grpcio-tools=={GENERATOR} (found {found}): run `make protogen`",
            file=sys.stderr,
        )
        return 2
    for proto in PROTOS:
        for path in generate(proto):
            print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
