"""Who may talk to coop-serve: TLS and mTLS with certificates made here (cryptography), the bearer token on
every RPC except health, and the loopback default bind.

Two real gRPC servers in this process (create_server): TLS + token, and mTLS + token. Certificates come
from the session's throw-away CA (conftest.pki); a second, unrelated CA signs the certificates that must be
refused.
"""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest
from coopnets.clients.client import CoopNetsClient
from coopnets.serving.server import ServeConfig
from coopnets.v1 import coopnets_pb2 as pb
from coopnets.v1 import coopnets_pb2_grpc as pb_grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from support import local_server

TOKEN = "access-test-token-42"
EVERY_RPC = {
    "Synthesize": pb.SynthesizeRequest(count=1, seed=0),
    "SynthesizeStream": pb.SynthesizeStreamRequest(request=pb.SynthesizeRequest(count=1, seed=0)),
    "Complete": pb.CompleteRequest(occlusion="center:14"),
    "Energy": pb.EnergyRequest(),
    "ModelInfo": pb.ModelInfoRequest(),
}


def channel_credentials(pki: Path, ca: str = "ca", client: str | None = None) -> grpc.ChannelCredentials:
    key_pair = (
        ((pki / f"{client}.key").read_bytes(), (pki / f"{client}.pem").read_bytes())
        if client
        else (None, None)
    )
    return grpc.ssl_channel_credentials((pki / f"{ca}.pem").read_bytes(), *key_pair)


@pytest.fixture(scope="module")
def tls_server(serving_bundle, serving_engine, pki, tmp_path_factory):
    """TLS and a token, /metrics on a free port (default host: loopback)."""
    server = local_server(
        serving_bundle,
        tmp_path_factory.mktemp("tls"),
        engine=serving_engine,
        token=TOKEN,
        tls_cert=str(pki / "server.pem"),
        tls_key=str(pki / "server.key"),
        metrics_port=0,
    )
    yield server
    assert server.stop()


@pytest.fixture(scope="module")
def mtls_server(serving_bundle, serving_engine, pki, tmp_path_factory):
    server = local_server(
        serving_bundle,
        tmp_path_factory.mktemp("mtls"),
        engine=serving_engine,
        token=TOKEN,
        tls_cert=str(pki / "server.pem"),
        tls_key=str(pki / "server.key"),
        tls_client_ca=str(pki / "ca.pem"),
    )
    yield server
    assert server.stop()


def code_of(call, request, metadata=()) -> str:
    try:
        result = call(request, timeout=10, metadata=metadata)
        if not hasattr(result, "ListFields"):  # a stream: drain it
            list(result)
        return "OK"
    except grpc.RpcError as e:
        return e.code().name


def call_every_rpc(channel: grpc.Channel, metadata=()) -> dict[str, str]:
    stub = pb_grpc.CoopNetsStub(channel)
    return {name: code_of(getattr(stub, name), req, metadata) for name, req in EVERY_RPC.items()}


def health(channel: grpc.Channel) -> str:
    resp = health_pb2_grpc.HealthStub(channel).Check(
        health_pb2.HealthCheckRequest(service="coopnets.v1.CoopNets"), timeout=10
    )
    return health_pb2.HealthCheckResponse.ServingStatus.Name(resp.status)


def test_tls_token_on_every_rpc_health_open(tls_server, pki):
    refused = tls_server.metric("coopnets_requests_total", rpc="ModelInfo", code="UNAUTHENTICATED")
    with grpc.secure_channel(tls_server.address, channel_credentials(pki)) as ch:
        assert set(call_every_rpc(ch).values()) == {"UNAUTHENTICATED"}  # no token
        wrong = [("authorization", f"Bearer {TOKEN}x")]
        assert set(call_every_rpc(ch, wrong).values()) == {"UNAUTHENTICATED"}
        assert set(call_every_rpc(ch, [("authorization", TOKEN)]).values()) == {
            "UNAUTHENTICATED"
        }  # no "Bearer"
        right = call_every_rpc(ch, [("authorization", f"Bearer {TOKEN}")])
        assert right["ModelInfo"] == right["Synthesize"] == right["SynthesizeStream"] == "OK"
        # Complete and Energy get past the token to INVALID_ARGUMENT for their empty images
        assert "UNAUTHENTICATED" not in right.values()
        raw = ch.unary_unary("/coopnets.v1.CoopNets/Synthesize")  # an undecodable body, no token
        assert code_of(raw, b"\xff\xff\xff") == "UNAUTHENTICATED"
        assert health(ch) == "SERVING"  # no token needed
    assert (
        tls_server.metric("coopnets_requests_total", rpc="ModelInfo", code="UNAUTHENTICATED") == refused + 3
    )


def test_tls_refuses_plaintext_and_untrusted_servers(tls_server, pki):
    for kw in ({}, {"tls_ca": str(pki / "rogue-ca.pem")}):  # plaintext; a CA that did not sign the server
        with (
            CoopNetsClient(tls_server.address, token=TOKEN, timeout=3, retries=1, **kw) as c,
            pytest.raises(grpc.RpcError) as err,
        ):
            c.info()
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    with CoopNetsClient(tls_server.address, token=TOKEN, tls_ca=str(pki / "ca.pem"), timeout=30) as c:
        assert list(c.info().image_shape) == [1, 28, 28]


def test_mtls_needs_a_client_certificate_from_the_right_ca_and_the_token(mtls_server, pki):
    for client in (None, "rogue-client"):  # no client certificate; one signed by another CA
        with (
            grpc.secure_channel(mtls_server.address, channel_credentials(pki, client=client)) as ch,
            pytest.raises(grpc.RpcError) as err,
        ):
            health(ch)
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    with grpc.secure_channel(mtls_server.address, channel_credentials(pki, client="client")) as ch:
        assert health(ch) == "SERVING"
        assert call_every_rpc(ch)["ModelInfo"] == "UNAUTHENTICATED"
        assert call_every_rpc(ch, [("authorization", f"Bearer {TOKEN}")])["ModelInfo"] == "OK"


# 127.0.0.1 as /proc/net/tcp writes it, as an IPv4-mapped IPv6 address (gRPC's dual-stack socket), and ::1
LOOPBACK = {"0100007F", "0000000000000000FFFF00000100007F", "00000000000000000000000001000000"}


def listening_addresses(port: int) -> set[str]:
    """Local addresses with a socket listening on `port`, read from /proc/net/tcp and tcp6."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            local, state = line.split()[1], line.split()[3]
            addr, hex_port = local.split(":")
            if state == "0A" and int(hex_port, 16) == port:  # 0A = LISTEN
                found.add(addr)
    return found


def test_default_bind_is_loopback(tls_server):
    assert ServeConfig().host == "127.0.0.1"
    # the server was made with the default host: the gRPC port and the metrics port listen on 127.0.0.1 only
    for port in (tls_server.port, tls_server.metrics_port):
        assert listening_addresses(port) and listening_addresses(port) <= LOOPBACK, port
