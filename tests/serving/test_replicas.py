"""Replicas: several coop-serve processes on one machine, and clients that spread calls over them.

Two ways, both real processes on loopback: one port each with a client given both addresses (gRPC's
round_robin over an `ipv4:` target; each server's own /metrics shows its share), and one port shared with
`--reuse-port` (SO_REUSEPORT: the kernel hands each new connection to one of the processes).
"""

from __future__ import annotations

import socket

import grpc
import numpy as np
import pytest
from coopnets.clients.cli import client_main
from coopnets.clients.client import CoopNetsClient, channel_target
from coopnets.v1 import coopnets_pb2 as pb
from coopnets.v1 import coopnets_pb2_grpc as pb_grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from support import ROOT, start_server, wait_for

pytestmark = pytest.mark.slow  # several coop-serve processes

LEGACY = ROOT / "tests" / "data" / "legacy" / "bundle"
SYNTH_OK = {"rpc": "Synthesize", "code": "OK"}
SERVING = health_pb2.HealthCheckResponse.SERVING


@pytest.fixture(scope="module")
def replicas(tmp_path_factory):
    servers = [start_server(LEGACY, tmp_path_factory.mktemp(f"replica{i}")) for i in range(2)]
    yield servers
    for server in servers:
        assert server.stop() == 0, server.log()


def test_a_client_given_two_addresses_reaches_both_replicas(replicas):
    target = ",".join(s.address for s in replicas)
    before = [s.metric("coopnets_requests_total", **SYNTH_OK) for s in replicas]
    with CoopNetsClient(target, timeout=60) as c:
        got = [c.synthesize(count=1, seed=seed, steps=2) for seed in range(10)]
    served = [
        s.metric("coopnets_requests_total", **SYNTH_OK) - b for s, b in zip(replicas, before, strict=True)
    ]
    assert sum(served) == 10 and min(served) >= 3, served  # round robin: 5 + 5 once both are connected
    with CoopNetsClient(replicas[0].address, timeout=60) as c:  # the same images whichever replica made them
        alone = c.synthesize(count=10, seed=0, steps=2)
    np.testing.assert_array_equal(np.concatenate([g.images for g in got]), alone.images)


def test_a_replica_that_stops_is_skipped(tmp_path):
    servers = [start_server(LEGACY, tmp_path / f"r{i}") for i in range(2)]
    try:
        with CoopNetsClient(",".join(s.address for s in servers), timeout=30) as c:
            c.synthesize(count=1, seed=0, steps=1)
            assert servers[0].stop() == 0
            for seed in range(4):  # every call still answers: round robin drops the closed address
                assert c.synthesize(count=1, seed=seed, steps=1).seeds == [seed]
    finally:
        for server in servers:
            server.stop()


def test_reuse_port_lets_two_processes_share_one_port(tmp_path):
    with socket.socket() as s:  # a port free right now, for both replicas to bind
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    servers = [
        start_server(LEGACY, tmp_path / f"r{i}", "--port", str(port), "--reuse-port") for i in range(2)
    ]
    try:
        assert {s.port for s in servers} == {port}
        for _ in range(24):  # one new connection each (a local subchannel pool: no shared connection)
            options = [("grpc.use_local_subchannel_pool", 1)]
            with grpc.insecure_channel(f"127.0.0.1:{port}", options=options) as channel:
                # start_server's SERVING may have come from the other process: wait on this connection
                health = health_pb2_grpc.HealthStub(channel)
                assert wait_for(lambda h=health: h.Check(health_pb2.HealthCheckRequest()).status == SERVING)
                pb_grpc.CoopNetsStub(channel).ModelInfo(pb.ModelInfoRequest(), timeout=30)
        served = [s.metric("coopnets_requests_total", rpc="ModelInfo", code="OK") for s in servers]
        assert sum(served) == 24 and min(served) > 0, served  # all on one: probability 2 ** -23
    finally:
        for server in servers:
            server.stop()


def test_without_reuse_port_a_second_server_on_the_port_fails(tmp_path, replicas):
    with pytest.raises(RuntimeError, match="cannot bind"):
        start_server(LEGACY, tmp_path, "--port", str(replicas[0].port))


@pytest.mark.parametrize(
    "server, why",
    [
        ("127.0.0.1:1,localhost:2", "'localhost:2'"),
        ("127.0.0.1:1,127.0.0.1", "'127.0.0.1'"),
        ("127.0.0.1:1,[::1]:2", "mix IPv4 and IPv6"),
    ],
)
def test_bad_replica_lists_are_one_line_errors(server, why, capsys):
    with pytest.raises(SystemExit) as exit_:
        client_main(["info", "--server", server])
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error: --server") and why in err


def test_targets():
    assert channel_target("h:1") == "h:1"
    assert channel_target("127.0.0.1:1, 127.0.0.2:2") == "ipv4:127.0.0.1:1,127.0.0.2:2"
    assert channel_target("[::1]:1,[::1]:2") == "ipv6:[::1]:1,[::1]:2"
