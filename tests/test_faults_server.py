"""coop-serve under faults: clients that vanish mid-stream or let deadlines expire, a bundle directory that
changes on disk while serving (reload only on SIGHUP, only after it verifies), and SIGTERM with requests in
flight (health NOT_SERVING first, new RPCs refused, in-flight ones finish, exit 0; past the grace period they
end UNAVAILABLE).

One real server (subprocess, torch unimportable, loopback port 0) on a private copy of the test bundle serves
the module in file order and is stopped by the SIGTERM test; the grace-period test starts its own.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import threading
import time

import grpc
import numpy as np
import pytest
from support import COMPLETION, LANGEVIN, ROOT, start_server
from grpc_health.v1 import health_pb2, health_pb2_grpc

# A client process that opens a stream, reads one snapshot, prints "started" and then hangs until SIGKILLed:
# its connection drops without a cancel from a live client.
VANISHING_CLIENT = """
import sys, time
from clients.client import CoopNetsClient
c = CoopNetsClient(sys.argv[1], timeout=120)
call = c.synthesize_stream_call(count=4, seed=3, steps=200, snapshot_every=1)
next(call)
print("started", flush=True)
time.sleep(600)
"""


def wait_for(predicate, timeout: float = 60.0) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


@pytest.fixture(scope="module")
def bundle_dir(serving_bundle, tmp_path_factory):
    """A copy of the test bundle that the tests may edit while the server serves it."""
    path = tmp_path_factory.mktemp("faults") / "bundle"
    shutil.copytree(serving_bundle, path)
    return path


@pytest.fixture(scope="module")
def server(bundle_dir, tmp_path_factory):
    proc = start_server(
        bundle_dir,
        tmp_path_factory.mktemp("faults_server"),
        "--max-batch",
        "8",
        "--max-delay-ms",
        "20",
        "--grace-s",
        "60",
        "--warmup-runs",
        "1",
    )
    yield proc
    if proc.proc.poll() is None:  # the SIGTERM test did not run
        proc.stop()


def cancelled(server, rpc: str) -> float:
    return server.metric("coopnets_cancelled_total", rpc=rpc)


def test_a_client_that_vanishes_mid_stream_stops_its_work_and_others_are_served(server):
    before = cancelled(server, "SynthesizeStream")
    victim = subprocess.Popen(
        [sys.executable, "-c", VANISHING_CLIENT, server.address], cwd=ROOT, stdout=subprocess.PIPE, text=True
    )
    try:
        assert victim.stdout.readline().strip() == "started"
        victim.kill()  # no cancel: the TCP connection just goes away
        victim.wait(30)
        with server.client(timeout=60) as c:  # served while (and after) the orphaned work stops
            assert c.synthesize(count=2, seed=5, steps=3).images.shape == (2, 1, 28, 28)
        assert wait_for(lambda: cancelled(server, "SynthesizeStream") > before)
    finally:
        if victim.poll() is None:
            victim.kill()
    assert "SynthesizeStream stopped after" in server.log()


def test_an_expired_deadline_stops_only_its_own_work(server):
    before = cancelled(server, "Synthesize")
    results: dict[str, object] = {}
    with server.client(timeout=60, retries=1) as c:

        def patient():
            results["patient"] = c.synthesize(count=2, seed=0, steps=60).images

        t = threading.Thread(target=patient)
        t.start()
        with pytest.raises(
            grpc.RpcError
        ) as err:  # different steps: a batch of its own, stopped between steps
            c.synthesize(count=8, seed=10, steps=1000, timeout=0.5)
        t.join(120)
        assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        assert results["patient"].shape == (2, 1, 28, 28)
    assert wait_for(lambda: cancelled(server, "Synthesize") > before)


def test_a_bundle_changed_on_disk_is_ignored_until_sighup_and_a_bad_one_is_refused(
    server, bundle_dir, tiny_nets, tmp_path
):
    from trainer.export import export_bundle

    with server.client(timeout=60) as c:
        served = c.info().bundle_sha256
        reference = c.synthesize(count=2, seed=1, steps=2).images

        # 1. tampered file on disk: nothing changes while serving, and SIGHUP refuses it
        onnx = bundle_dir / "generator.onnx"
        onnx.write_bytes(onnx.read_bytes() + b"tampered")
        np.testing.assert_array_equal(c.synthesize(count=2, seed=1, steps=2).images, reference)
        server.proc.send_signal(signal.SIGHUP)
        assert wait_for(lambda: "reload refused" in server.log()), server.log()
        assert "does not match its sha256" in server.log()
        assert c.info().bundle_sha256 == served
        np.testing.assert_array_equal(c.synthesize(count=2, seed=1, steps=2).images, reference)

        # 2. a missing file: refused as well
        onnx.unlink()
        server.proc.send_signal(signal.SIGHUP)
        assert wait_for(lambda: server.log().count("reload refused") == 2), server.log()
        assert c.health("coopnets.v1.CoopNets") == "SERVING"

        # 3. a valid new bundle (other Langevin defaults) is served only after SIGHUP
        descriptor, generator = tiny_nets
        new = export_bundle(
            descriptor, generator, tmp_path / "new", langevin={**LANGEVIN, "steps": 5}, completion=COMPLETION
        )
        shutil.rmtree(bundle_dir)
        shutil.copytree(new, bundle_dir)
        assert c.info().bundle_sha256 == served and c.info().langevin.steps == LANGEVIN["steps"]
        server.proc.send_signal(signal.SIGHUP)
        assert wait_for(lambda: "SIGHUP: reloaded" in server.log()), server.log()
        info = c.info()
        assert info.bundle_sha256 != served and info.langevin.steps == 5
        np.testing.assert_array_equal(c.synthesize(count=2, seed=1, steps=2).images, reference)  # same nets
    assert server.proc.poll() is None and "Traceback" not in server.log()


def test_sigterm_flips_health_first_refuses_new_rpcs_finishes_in_flight_and_exits_0(server):
    result: dict[str, object] = {}
    with server.client(timeout=120, retries=1) as c, grpc.insecure_channel(server.address) as ch:
        watch = health_pb2_grpc.HealthStub(ch).Watch(
            health_pb2.HealthCheckRequest(service="coopnets.v1.CoopNets")
        )
        assert next(watch).status == health_pb2.HealthCheckResponse.SERVING

        def in_flight():
            try:
                result["images"] = c.synthesize(count=8, seed=0, steps=600).images
            except grpc.RpcError as e:
                result["error"] = e.code().name

        batches = server.metric("coopnets_batch_images_count", kind="synthesize")
        t = threading.Thread(target=in_flight)
        t.start()
        assert wait_for(lambda: server.metric("coopnets_batch_images_count", kind="synthesize") > batches)
        server.proc.send_signal(signal.SIGTERM)
        assert next(watch).status == health_pb2.HealthCheckResponse.NOT_SERVING  # before anything else
        watch.cancel()  # an open Watch is an in-flight RPC too: it would hold shutdown to the grace period
        with server.client(timeout=10, retries=1) as late, pytest.raises(grpc.RpcError) as err:
            late.synthesize(count=1, seed=0, steps=1)
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
        assert t.is_alive(), "the in-flight request should still be running"
        t.join(120)
    assert result.get("images") is not None and result["images"].shape == (8, 1, 28, 28), result
    assert server.proc.wait(60) == 0
    log = server.log()
    assert log.index("shutting down: health NOT_SERVING") < log.index("coop-serve: stopped")


def test_past_the_grace_period_in_flight_requests_end_unavailable_and_exit_is_0(serving_bundle, tmp_path):
    server = start_server(serving_bundle, tmp_path, "--grace-s", "0.5", "--warmup-runs", "0")
    codes: list[str] = []
    with server.client(timeout=120, retries=1) as c:

        def too_long():
            try:
                c.synthesize(count=8, seed=0, steps=1000)
                codes.append("OK")
            except grpc.RpcError as e:
                codes.append(e.code().name)

        t = threading.Thread(target=too_long)
        t.start()
        assert wait_for(lambda: server.metric("coopnets_batch_images_count", kind="synthesize") > 0)
        server.proc.send_signal(signal.SIGTERM)
        t.join(60)
    assert codes == ["UNAVAILABLE"], codes
    assert server.proc.wait(60) == 0
