"""The committed generated code is what the committed .proto compiles to (fails when stale).

Compared by content, not bytes, so any grpcio-tools version passes while the .proto and the committed code
agree: the FileDescriptorProto in coopnets_pb2 (every message, field, number, type and service) against the
.proto compiled now, and the generated stub and servicer against the compiled service's methods.
"""

from __future__ import annotations

import grpc
from coopnets.v1 import coopnets_pb2 as pb
from coopnets.v1 import coopnets_pb2_grpc as pb_grpc
from google.protobuf import descriptor_pb2

from serving.protogen import PROTO_ROOT, compiled

STALE = "is stale: run `python -m serving.protogen` and commit the result"


def test_the_committed_messages_are_the_compiled_proto(tmp_path):
    fresh = compiled(tmp_path)
    committed = descriptor_pb2.FileDescriptorProto.FromString(pb.DESCRIPTOR.serialized_pb)
    assert committed == fresh, f"coopnets_pb2.py {STALE}"


def test_the_committed_stubs_have_the_compiled_methods(tmp_path):
    fresh = compiled(tmp_path)
    (service,) = fresh.service
    methods = {m.name for m in service.method}
    servicer = {name for name in vars(pb_grpc.CoopNetsServicer) if not name.startswith("_")}
    assert servicer == methods, f"coopnets_pb2_grpc.py {STALE}"
    with grpc.insecure_channel("127.0.0.1:1") as channel:  # no connection is made
        stub = pb_grpc.CoopNetsStub(channel)
        assert all(callable(getattr(stub, name, None)) for name in methods), f"coopnets_pb2_grpc.py {STALE}"
    stubs = (PROTO_ROOT / "coopnets" / "v1" / "coopnets_pb2.pyi").read_text()
    missing = [m.name for m in fresh.message_type if f"class {m.name}(" not in stubs]
    assert not missing, f"coopnets_pb2.pyi {STALE} (no {missing})"


def test_contract_names_the_mask_convention():
    text = (PROTO_ROOT / "coopnets" / "v1" / "coopnets.proto").read_text()
    assert "1 = missing" in text and "WHITE (255) = MISSING" in text
    assert "evaluation/" not in text  # occlusions live in contract/occlusions.py
