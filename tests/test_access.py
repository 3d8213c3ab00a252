"""Who may talk to coop-serve: TLS and mTLS with certificates made here (cryptography), the bearer token on
every RPC except health, and the loopback default bind.

Two real servers: TLS + token, and mTLS + token. Certificates come from a throw-away CA; a second, unrelated
CA signs the certificates that must be refused.
"""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest
from support import start_server
from coopnets.v1 import coopnets_pb2 as pb
from coopnets.v1 import coopnets_pb2_grpc as pb_grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from test_serving_lifecycle import _cert

from clients.client import CoopNetsClient
from serving.server import ServeConfig

TOKEN = "access-test-token-42"
EVERY_RPC = {
    "Synthesize": pb.SynthesizeRequest(count=1, seed=0),
    "SynthesizeStream": pb.SynthesizeStreamRequest(request=pb.SynthesizeRequest(count=1, seed=0)),
    "Complete": pb.CompleteRequest(occlusion="center:14"),
    "Energy": pb.EnergyRequest(),
    "ModelInfo": pb.ModelInfoRequest(),
}


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> Path:
    """ca.pem signs server.pem (localhost, 127.0.0.1) and client.pem; rogue-ca.pem signs rogue-client.pem."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    d = tmp_path_factory.mktemp("pki")

    def write(name: str, cert, key=None) -> None:
        (d / f"{name}.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        if key is not None:
            (d / f"{name}.key").write_bytes(
                key.private_bytes(
                    serialization.Encoding.PEM,
                    serialization.PrivateFormat.PKCS8,
                    serialization.NoEncryption(),
                )
            )

    for prefix in ("", "rogue-"):
        ca_key = ec.generate_private_key(ec.SECP256R1())
        ca = _cert(f"{prefix}coopnets test CA", ca_key, None, None, ca=True)
        write(f"{prefix}ca", ca)
        for name, server in (("server", True), ("client", False)):
            key = ec.generate_private_key(ec.SECP256R1())
            write(f"{prefix}{name}", _cert(f"{prefix}{name}", key, ca.subject, ca_key, server=server), key)
    return d


def channel_credentials(pki: Path, ca: str = "ca", client: str | None = None) -> grpc.ChannelCredentials:
    key_pair = (
        ((pki / f"{client}.key").read_bytes(), (pki / f"{client}.pem").read_bytes())
        if client
        else (None, None)
    )
    return grpc.ssl_channel_credentials((pki / f"{ca}.pem").read_bytes(), *key_pair)


@pytest.fixture(scope="module")
def tls_server(serving_bundle, pki, tmp_path_factory):
    server = start_server(
        serving_bundle,
        tmp_path_factory.mktemp("tls"),
        "--tls-cert",
        str(pki / "server.pem"),
        "--tls-key",
        str(pki / "server.key"),
        "--warmup-runs",
        "0",
        token=TOKEN,
        channel_credentials=channel_credentials(pki),
    )
    yield server
    assert server.stop() == 0


@pytest.fixture(scope="module")
def mtls_server(serving_bundle, pki, tmp_path_factory):
    server = start_server(
        serving_bundle,
        tmp_path_factory.mktemp("mtls"),
        "--tls-cert",
        str(pki / "server.pem"),
        "--tls-key",
        str(pki / "server.key"),
        "--tls-client-ca",
        str(pki / "ca.pem"),
        "--warmup-runs",
        "0",
        token=TOKEN,
        channel_credentials=channel_credentials(pki, client="client"),
    )
    yield server
    assert server.stop() == 0


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
    assert tls_server.metric("coopnets_requests_total", rpc="ModelInfo", code="UNAUTHENTICATED") >= 3


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
    # start_server passes no --host: both the gRPC port and the metrics port listen on 127.0.0.1 only
    for port in (tls_server.port, tls_server.metrics_port):
        assert listening_addresses(port) and listening_addresses(port) <= LOOPBACK, port
