"""coop-serve under faults: clients that vanish mid-stream or let deadlines expire, a bundle directory that
changes on disk while serving (reload only on SIGHUP, only after it verifies and keeps the latent size, and
then the new weights answer), and SIGTERM with requests in flight (health NOT_SERVING first, new RPCs
refused, in-flight ones finish, exit 0; past the grace period they end UNAVAILABLE).

Each test makes its own server: in this process for the client faults, a coop-serve subprocess (torch
unimportable) where a signal is sent.
"""

from __future__ import annotations

import copy
import shutil
import signal
import subprocess
import sys
import threading

import float32_bound
import grpc
import numpy as np
import pytest
import torch
from coopnets.contract.sampling import SynthesisParams
from coopnets.serving.engine import Engine
from grpc_health.v1 import health_pb2, health_pb2_grpc
from support import COMPLETION, LANGEVIN, ROOT, local_server, start_server, wait_for

pytestmark = pytest.mark.slow  # coop-serve processes under signals and faults

LEGACY_BUNDLE = ROOT / "tests" / "data" / "legacy" / "bundle"  # the same image shape, latent size 8

# A client process that opens a stream, reads one snapshot, prints "started" and then hangs until SIGKILLed:
# its connection drops without a cancel from a live client.
VANISHING_CLIENT = """
import sys, time
from coopnets.clients.client import CoopNetsClient
c = CoopNetsClient(sys.argv[1], timeout=120)
call = c.synthesize_stream_call(count=4, seed=3, steps=200, snapshot_every=1)
next(call)
print("started", flush=True)
time.sleep(600)
"""


@pytest.fixture()
def server(serving_bundle):
    server = local_server(serving_bundle, max_batch=8, max_delay_ms=20)
    yield server
    server.stop()


def cancelled(server, rpc: str) -> float:
    return server.metric("coopnets_cancelled_total", rpc=rpc)


def test_a_client_that_vanishes_mid_stream_stops_its_work_and_others_are_served(server):
    victim = subprocess.Popen(
        [sys.executable, "-c", VANISHING_CLIENT, server.address], cwd=ROOT, stdout=subprocess.PIPE, text=True
    )
    try:
        assert victim.stdout.readline().strip() == "started"
        victim.kill()  # no cancel: the TCP connection just goes away
        victim.wait(30)
        with server.client(timeout=60) as c:  # served while (and after) the orphaned work stops
            assert c.synthesize(count=2, seed=5, steps=3).images.shape == (2, 1, 28, 28)
        assert wait_for(lambda: cancelled(server, "SynthesizeStream") == 1)
    finally:
        if victim.poll() is None:
            victim.kill()
    assert "SynthesizeStream stopped after" in server.log()


def test_an_expired_deadline_stops_only_its_own_work(server):
    results: dict[str, object] = {}
    with server.client(timeout=60, retries=1) as c:

        def patient():
            results["patient"] = c.synthesize(count=2, seed=0, steps=60).images

        t = threading.Thread(target=patient)
        t.start()
        with pytest.raises(grpc.RpcError) as err:  # other steps: a batch of its own, stopped between steps
            c.synthesize(count=8, seed=10, steps=1000, timeout=0.5)
        t.join(120)
        assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        assert results["patient"].shape == (2, 1, 28, 28)
    assert wait_for(lambda: cancelled(server, "Synthesize") == 1)


@pytest.fixture(scope="module")
def other_bundle(tiny_nets, tmp_path_factory):
    """The tiny nets with other weights (the generator's scaled by 1.1) and other Langevin defaults."""
    from coopnets.trainer.export import export_bundle

    descriptor, generator = tiny_nets
    generator = copy.deepcopy(generator)
    with torch.no_grad():
        for p in generator.parameters():
            p.mul_(1.1)
    out = tmp_path_factory.mktemp("other") / "bundle"
    return export_bundle(descriptor, generator, out, langevin={**LANGEVIN, "steps": 5}, completion=COMPLETION)


def test_a_bundle_changed_on_disk_is_ignored_until_sighup_and_a_bad_one_is_refused(
    serving_bundle, other_bundle, tiny_nets, tmp_path
):
    bundle_dir = tmp_path / "bundle"  # a copy the test may edit while the server serves it
    shutil.copytree(serving_bundle, bundle_dir)
    server = start_server(bundle_dir, tmp_path / "server", "--warmup-runs", "0")
    try:
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

            # 3. a valid bundle of another latent size (requests checked against the old one may be queued)
            shutil.rmtree(bundle_dir)
            shutil.copytree(LEGACY_BUNDLE, bundle_dir)
            server.proc.send_signal(signal.SIGHUP)
            assert wait_for(lambda: server.log().count("reload refused") == 3), server.log()
            assert "latent size 8 differ from the served (1, 28, 28) / 100" in server.log()

            # 4. a valid bundle with other weights and defaults is served only after SIGHUP
            shutil.rmtree(bundle_dir)
            shutil.copytree(other_bundle, bundle_dir)
            assert c.info().bundle_sha256 == served and c.info().langevin.steps == LANGEVIN["steps"]
            np.testing.assert_array_equal(c.synthesize(count=2, seed=1, steps=2).images, reference)
            server.proc.send_signal(signal.SIGHUP)
            assert wait_for(lambda: "SIGHUP: reloaded" in server.log()), server.log()
            info = c.info()
            assert info.bundle_sha256 != served and info.langevin.steps == 5
            answer = c.synthesize(count=2, seed=1, steps=2).images
    finally:
        server.stop()
    params = SynthesisParams(steps=2, delta=LANGEVIN["delta"], noise=LANGEVIN["noise"])
    # the batches run on the new engine: the answer left the old one's by more than any float32 evaluation of
    # the old nets could (float32_bound on them)
    old = float32_bound.synthesis(*tiny_nets, [1, 2], params, LANGEVIN["s"])
    assert (np.abs(answer - reference) > float32_bound.tolerance(old.images)).any()
    new = Engine.open(other_bundle, device="cpu", threads=1)
    expected = new.synthesize([1, 2], params)
    np.testing.assert_array_equal(answer, expected.images)
    assert server.proc.returncode == 0 and "Traceback" not in server.log()


def test_sigterm_flips_health_first_refuses_new_rpcs_finishes_in_flight_and_exits_0(serving_bundle, tmp_path):
    server = start_server(serving_bundle, tmp_path, "--grace-s", "60", "--warmup-runs", "0")
    result: dict[str, object] = {}
    with server.client(timeout=120, retries=1) as c, grpc.insecure_channel(server.address) as ch:
        watch = health_pb2_grpc.HealthStub(ch).Watch(
            health_pb2.HealthCheckRequest(service="coopnets.v1.CoopNets")
        )
        assert next(watch).status == health_pb2.HealthCheckResponse.SERVING

        def in_flight():
            try:
                result["images"] = c.synthesize(count=8, seed=0, steps=250).images
            except grpc.RpcError as e:
                result["error"] = e.code().name

        t = threading.Thread(target=in_flight)
        t.start()
        assert wait_for(lambda: server.metric("coopnets_batch_images_count", kind="synthesize") > 0)
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
    assert "shutting down: health NOT_SERVING, 1 RPCs in flight" in log
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
    assert "grace period over with RPCs still in flight" in server.log()
