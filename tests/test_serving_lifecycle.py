"""coop-serve's edges: mTLS, a full queue (RESOURCE_EXHAUSTED), SIGTERM draining in-flight work, bad flags,
the device policy. One TLS server for the module, stopped by the last test."""

from __future__ import annotations

import datetime
import ipaddress
import logging
import signal
import subprocess
import sys
import threading
import time

import grpc
import pytest
from support import ROOT, start_server

from clients.client import CoopNetsClient
from serving.bundle import BundleError, load_bundle, open_sessions


def _cert(name: str, key, issuer_name, issuer_key, ca: bool = False, server: bool = False):
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.timezone.utc)
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .issuer_name(issuer_name or x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if server:
        builder = builder.add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
    return builder.sign(issuer_key or key, hashes.SHA256())


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    """A throw-away CA, a server certificate for localhost/127.0.0.1 and a client certificate."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    d = tmp_path_factory.mktemp("pki")
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = _cert("coopnets test CA", ca_key, None, None, ca=True)
    files = {"ca.pem": ca}
    for name, server in (("server", True), ("client", False)):
        key = ec.generate_private_key(ec.SECP256R1())
        files[f"{name}.pem"] = _cert(name, key, ca.subject, ca_key, server=server)
        (d / f"{name}.key").write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
        )
    for fname, cert in files.items():
        (d / fname).write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return d


@pytest.fixture(scope="module")
def tls_server(serving_bundle, pki, tmp_path_factory):
    creds = grpc.ssl_channel_credentials(
        (pki / "ca.pem").read_bytes(), (pki / "client.key").read_bytes(), (pki / "client.pem").read_bytes()
    )
    server = start_server(
        serving_bundle,
        tmp_path_factory.mktemp("tls"),
        "--tls-cert",
        str(pki / "server.pem"),
        "--tls-key",
        str(pki / "server.key"),
        "--tls-client-ca",
        str(pki / "ca.pem"),
        "--max-batch",
        "1",
        "--max-queue",
        "1",
        "--max-delay-ms",
        "0",
        "--grace-s",
        "60",
        "--warmup-runs",
        "0",
        channel_credentials=creds,
    )
    yield server
    server.stop()


def mtls_client(server, pki, **kw) -> CoopNetsClient:
    return CoopNetsClient(
        server.address,
        tls_ca=str(pki / "ca.pem"),
        tls_cert=str(pki / "client.pem"),
        tls_key=str(pki / "client.key"),
        **kw,
    )


def test_mtls_accepts_a_signed_client_and_refuses_others(tls_server, pki):
    with mtls_client(tls_server, pki) as c:
        assert list(c.info().image_shape) == [1, 28, 28]
    for kw in ({"tls_ca": str(pki / "ca.pem")}, {}):  # TLS without a client certificate; plaintext
        with (
            CoopNetsClient(tls_server.address, timeout=3, retries=1, **kw) as c,
            pytest.raises(grpc.RpcError) as err,
        ):
            c.info()
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE


def test_a_full_queue_answers_resource_exhausted(tls_server, pki):
    codes = []
    with mtls_client(tls_server, pki, retries=1) as c:

        def one():
            try:
                c.synthesize(count=8, seed=0, steps=100)
                codes.append("OK")
            except grpc.RpcError as e:
                codes.append(e.code().name)

        threads = [threading.Thread(target=one) for _ in range(5)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert "OK" in codes and "RESOURCE_EXHAUSTED" in codes, codes
    assert set(codes) <= {"OK", "RESOURCE_EXHAUSTED"}
    assert tls_server.metric("coopnets_rejected_total", reason="queue_full") >= 1


def test_sigterm_finishes_in_flight_requests_then_exits_0(tls_server, pki):
    result = {}
    started = tls_server.metric("coopnets_queue_seconds_count", kind="synthesize")  # batches run so far
    with mtls_client(tls_server, pki) as c:

        def slow():
            result["images"] = c.synthesize(count=8, seed=0, steps=150).images

        t = threading.Thread(target=slow)
        t.start()
        deadline = time.monotonic() + 20
        while (
            tls_server.metric("coopnets_queue_seconds_count", kind="synthesize") <= started
        ):  # not running yet
            assert time.monotonic() < deadline
            time.sleep(0.02)
        tls_server.proc.send_signal(signal.SIGTERM)
        t.join(60)
    assert result["images"].shape == (8, 1, 28, 28)
    assert tls_server.proc.wait(60) == 0
    log = tls_server.log()
    assert "shutting down: health NOT_SERVING" in log and "stopped" in log


@pytest.mark.parametrize(
    "args, message",
    [
        (["--bundle", "/nonexistent/bundle"], "not a model bundle"),
        (["--bundle", "B", "--tls-cert", "x.pem"], "--tls-cert and --tls-key go together"),
        (["--bundle", "B", "--token-file", "/nonexistent/token"], "cannot read --token-file"),
        (["--bundle", "B", "--max-batch", "0"], "--max-batch must be >= 1"),
        ([], "--bundle DIR is required"),
    ],
)
def test_bad_flags_exit_2_with_one_line(serving_bundle, args, message):
    args = [str(serving_bundle) if a == "B" else a for a in args]
    proc = subprocess.run(
        [sys.executable, "-m", "serving.server", "--port", "0", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("coop-serve: ") and message in lines[0], proc.stderr


def test_device_policy(serving_bundle, caplog):
    bundle = load_bundle(serving_bundle)
    try:  # cuda: runs on CUDA, or refuses to start
        assert open_sessions(bundle, device="cuda").device == "cuda"
        has_cuda = True
    except BundleError as e:
        assert "CUDA" in str(e)
        has_cuda = False
    with caplog.at_level(logging.INFO, logger="serving.bundle"):
        auto = open_sessions(bundle, device="auto")
    assert auto.device == ("cuda" if has_cuda else "cpu")
    fallback = [r for r in caplog.records if "falling back" in r.getMessage()]
    assert len(fallback) == (0 if has_cuda else 1)
