"""The committed generated code is what the committed .proto compiles to (fails when stale).

Compared by content, not bytes, so any grpcio-tools version passes while the .proto and the committed code
agree: the FileDescriptorProto in coopnets_pb2 (every message, field, number, type and service) against the
.proto compiled now, and the generated stub and servicer against the compiled service's methods. The committed
code must also be what protos/protogen.py's pinned generator writes: no runtime version check, which would
refuse every protobuf older than the generator (tests/system/test_install.py runs this file on the lowest
protobuf).
"""

from __future__ import annotations

import importlib

import grpc
import pytest
from coopnets.v1 import coopnets_pb2 as pb
from coopnets.v1 import coopnets_pb2_grpc as pb_grpc
from google.protobuf import descriptor_pb2
from support import load_script

PROTO_ROOT, PROTOS, compiled = (
    getattr(load_script("protos/protogen.py"), n) for n in ("PROTO_ROOT", "PROTOS", "compiled")
)
STALE = "is stale: run `make protogen` and commit the result"


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


def test_the_committed_code_has_no_runtime_version_check():
    for proto in PROTOS:
        messages, services = proto.module("_pb2.py").read_text(), proto.module("_pb2_grpc.py").read_text()
        assert "ValidateProtobufRuntimeVersion" not in messages, f"{proto.name}: regenerate (`make protogen`)"
        assert "GRPC_GENERATED_VERSION" not in services, f"{proto.name}: regenerate (`make protogen`)"


@pytest.mark.parametrize("name", ["model_config", "grpc_service"])
def test_the_oip_modules_are_the_compiled_proto(name, tmp_path):
    (proto,) = [p for p in PROTOS if p.name == f"{name}.proto"]
    module = importlib.import_module(f"coopnets.oip.{name}_pb2")
    committed = descriptor_pb2.FileDescriptorProto.FromString(module.DESCRIPTOR.serialized_pb)
    assert committed == compiled(tmp_path, proto), f"{proto.module('_pb2.py')} {STALE}"


def test_the_oip_descriptors_are_tritonclients_so_both_load_in_one_process():
    """Byte-identical files: the descriptor pool takes the same file twice, never a second definition."""
    triton = pytest.importorskip("tritonclient.grpc")
    from coopnets.oip import grpc_service_pb2, model_config_pb2
    from tritonclient.grpc import model_config_pb2 as triton_config
    from tritonclient.grpc import service_pb2 as triton_service

    assert triton and grpc_service_pb2.DESCRIPTOR.serialized_pb == triton_service.DESCRIPTOR.serialized_pb
    assert model_config_pb2.DESCRIPTOR.serialized_pb == triton_config.DESCRIPTOR.serialized_pb
    assert grpc_service_pb2.ModelInferRequest is triton_service.ModelInferRequest


def test_contract_names_the_mask_convention():
    text = (PROTO_ROOT / "coopnets" / "v1" / "coopnets.proto").read_text()
    assert "1 = missing" in text and "WHITE (255) = MISSING" in text
    assert "evaluation/" not in text  # occlusions live in contract/occlusions.py
