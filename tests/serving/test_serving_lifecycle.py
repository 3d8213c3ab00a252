"""coop-serve's edges: mTLS, a full queue (RESOURCE_EXHAUSTED), SIGTERM draining in-flight work, bad flags
and files (exit 2, one line), the device policy.

Each test makes the server it needs: in this process (support.local_server) unless a signal is involved.
"""

from __future__ import annotations

import logging
import signal
import threading

import grpc
import pytest
from coopnets.clients.client import CoopNetsClient
from coopnets.contract.bundle import BundleError, read_bundle
from coopnets.serving.server import main
from coopnets.serving.sessions import open_sessions
from support import local_server, start_server, wait_for


def mtls_client(server, pki, **kw) -> CoopNetsClient:
    return CoopNetsClient(
        server.address,
        tls_ca=str(pki / "ca.pem"),
        tls_cert=str(pki / "client.pem"),
        tls_key=str(pki / "client.key"),
        **kw,
    )


def test_mtls_accepts_a_signed_client_and_refuses_others(serving_bundle, pki):
    server = local_server(
        serving_bundle,
        tls_cert=str(pki / "server.pem"),
        tls_key=str(pki / "server.key"),
        tls_client_ca=str(pki / "ca.pem"),
    )
    try:
        with mtls_client(server, pki) as c:
            assert list(c.info().image_shape) == [1, 28, 28]
        for kw in ({"tls_ca": str(pki / "ca.pem")}, {}):  # TLS without a client certificate; plaintext
            with (
                CoopNetsClient(server.address, timeout=3, retries=1, **kw) as c,
                pytest.raises(grpc.RpcError) as err,
            ):
                c.info()
            assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        server.stop()


def test_a_full_queue_answers_resource_exhausted(serving_bundle):
    server = local_server(serving_bundle, max_batch=1, max_queue=1, max_delay_ms=0)
    codes = []
    try:
        with server.client(retries=1) as c:

            def one():
                try:
                    c.synthesize(count=8, seed=0, steps=50)
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
        refused = codes.count("RESOURCE_EXHAUSTED")
        assert server.metric("coopnets_rejected_total", reason="queue_full") == refused
        assert (
            server.metric("coopnets_requests_total", rpc="Synthesize", code="RESOURCE_EXHAUSTED") == refused
        )
    finally:
        server.stop()


def test_sigterm_finishes_in_flight_requests_then_exits_0(serving_bundle, tmp_path):
    server = start_server(serving_bundle, tmp_path, "--grace-s", "60", "--warmup-runs", "0")
    result = {}
    with server.client(timeout=120, retries=1) as c:

        def slow():
            result["images"] = c.synthesize(count=8, seed=0, steps=120).images

        t = threading.Thread(target=slow)
        t.start()
        assert wait_for(
            lambda: server.metric("coopnets_batch_images_count", kind="synthesize") > 0
        )  # running
        server.proc.send_signal(signal.SIGTERM)
        assert t.is_alive(), "the request ended before the signal: make it longer"
        t.join(60)
    assert result["images"].shape == (8, 1, 28, 28)
    assert server.proc.wait(60) == 0
    log = server.log()
    assert "shutting down: health NOT_SERVING, 1 RPCs in flight" in log  # it was running when SIGTERM came
    assert log.index("shutting down") < log.index("coop-serve: stopped")


@pytest.mark.parametrize(
    "args, message",
    [
        (["--bundle", "/nonexistent/bundle"], "not a model bundle"),
        (["--bundle", "B", "--tls-cert", "x.pem"], "--tls-cert and --tls-key go together"),
        (["--bundle", "B", "--token-file", "/nonexistent/token"], "cannot read --token-file"),
        (["--bundle", "B", "--max-batch", "0"], "--max-batch must be >= 1"),
        (["--bundle", "B", "--max-steps", "2"], "raise --max-steps"),  # the bundle's defaults need 6
        (["--bundle", "B", "--config", "/nonexistent/serve.toml"], "--config"),
        ([], "--bundle DIR is required"),
        (["--bundle", "B", "--port", "many"], "--port"),  # argparse's own error, one line too
        (["--bundle", "B", "--device", "tpu"], "--device"),
    ],
)
def test_bad_flags_and_files_exit_2_with_one_line(serving_bundle, args, message, capsys):
    args = [str(serving_bundle) if a == "B" else a for a in args]
    try:
        code = main(["--port", "0", "--device", "cpu", "--warmup-runs", "0", *args])
    except SystemExit as e:
        code = e.code
    err = capsys.readouterr().err
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and message in lines[0] and "Traceback" not in err, err
    assert lines[0].startswith(("coop-serve: ", "error: ")), err


def test_a_toml_config_is_read_and_flags_override_it(serving_bundle, tmp_path):
    from coopnets.serving.server import parse_args

    toml = tmp_path / "serve.toml"
    toml.write_text(f'bundle = "{serving_bundle}"\nmax-batch = 8\nmax_queue = 9\nreflection = false\n')
    config = parse_args(["--config", str(toml), "--max-queue", "3"])
    assert (config.bundle, config.max_batch, config.max_queue, config.reflection) == (
        str(serving_bundle),
        8,
        3,
        False,
    )


def test_device_policy(serving_bundle, caplog):
    bundle = read_bundle(serving_bundle)
    try:  # cuda: runs on CUDA, or refuses to start
        assert open_sessions(bundle, device="cuda").device == "cuda"
        has_cuda = True
    except BundleError as e:
        assert "CUDA" in str(e)
        has_cuda = False
    with caplog.at_level(logging.INFO, logger="coopnets.serving.sessions"):
        auto = open_sessions(bundle, device="auto")
    assert auto.device == ("cuda" if has_cuda else "cpu")
    fallback = [r for r in caplog.records if "falling back" in r.getMessage()]
    assert len(fallback) == (0 if has_cuda else 1)
