"""Regenerates the Python code of the contract: `python -m serving.protogen` (then commit the result).

The generated modules are committed so that a fresh clone imports them without a build step;
tests/test_serving_proto.py regenerates into a temporary directory and fails when the committed copy is stale.
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


def main() -> int:
    for path in generate(PROTO_ROOT):
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
