"""Regenerates the Python code of the contract: `python -m serving.protogen` (then commit the result).

The generated modules are committed so that a fresh clone imports them without a build step.
tests/test_serving_proto.py fails when they are stale, comparing what matters rather than bytes (which
change with the grpcio-tools version): the FileDescriptorProto embedded in coopnets_pb2 against `compiled`,
the .proto compiled now, and the methods of the generated stubs against the compiled service.
"""

from __future__ import annotations

import sys
from pathlib import Path

PROTO_ROOT = Path(__file__).resolve().parent.parent / "protos"
PROTO = "coopnets/v1/coopnets.proto"
GENERATED = ("coopnets_pb2.py", "coopnets_pb2.pyi", "coopnets_pb2_grpc.py")


def generate(out_root: Path) -> list[Path]:
    """Runs grpc_tools.protoc on the contract into <out_root>/coopnets/v1/; returns the generated files."""
    import grpc_tools
    from grpc_tools import protoc

    include = str(Path(grpc_tools.__file__).parent / "_proto")
    out_root.mkdir(parents=True, exist_ok=True)
    args = [
        "protoc",
        f"-I{PROTO_ROOT}",
        f"-I{include}",
        f"--python_out={out_root}",
        f"--pyi_out={out_root}",
        f"--grpc_python_out={out_root}",
        PROTO,
    ]
    if protoc.main(args) != 0:
        raise RuntimeError(f"protoc failed on {PROTO_ROOT / PROTO}")
    return [out_root / "coopnets" / "v1" / name for name in GENERATED]


def compiled(out_dir: Path):
    """The .proto compiled now by grpc_tools.protoc, as the FileDescriptorProto that coopnets_pb2 embeds
    (json_name cleared: the Python generator leaves it out, and it is derived from the field name)."""
    import grpc_tools
    from google.protobuf import descriptor_pb2
    from grpc_tools import protoc

    include = str(Path(grpc_tools.__file__).parent / "_proto")
    out = out_dir / "coopnets.pb"
    if protoc.main(["protoc", f"-I{PROTO_ROOT}", f"-I{include}", f"--descriptor_set_out={out}", PROTO]) != 0:
        raise RuntimeError(f"protoc failed on {PROTO_ROOT / PROTO}")
    (file,) = descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes()).file

    def clear(messages) -> None:
        for message in messages:
            for f in message.field:
                f.ClearField("json_name")
            clear(message.nested_type)

    clear(file.message_type)
    return file


def main() -> int:
    for path in generate(PROTO_ROOT):
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
