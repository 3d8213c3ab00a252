"""Prometheus metrics of coop-serve, on their own registry and their own HTTP port (--metrics-port).

coopnets_requests_total{rpc, code}           RPCs by method and final status code
coopnets_request_seconds{rpc, code}          latency histogram, same labels
coopnets_queue_seconds{kind}                 time a request waited in the batcher's queue
coopnets_batch_images{kind}                  images per ONNX Runtime batch (dynamic batching at work)
coopnets_cancelled_total{rpc, stage}         requests whose work stopped early (client cancelled or deadline
                                             passed) while "queued" or "running" (between Langevin steps)
coopnets_rejected_total{reason}              requests refused before any work (queue full)
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class Metrics:
    """The server's metrics on a registry of their own, so that several servers in one process (tests) keep
    separate counts."""

    def __init__(self) -> None:
        self._httpd = None
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "coopnets_requests", "RPCs by method and status code", ["rpc", "code"], registry=r
        )
        self.latency = Histogram(
            "coopnets_request_seconds", "RPC latency", ["rpc", "code"], buckets=LATENCY_BUCKETS, registry=r
        )
        self.queue_seconds = Histogram(
            "coopnets_queue_seconds",
            "time waiting in the batch queue",
            ["kind"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.batch_images = Histogram(
            "coopnets_batch_images", "images per engine batch", ["kind"], buckets=BATCH_BUCKETS, registry=r
        )
        self.cancelled = Counter(
            "coopnets_cancelled",
            "requests stopped early (cancelled or deadline)",
            ["rpc", "stage"],
            registry=r,
        )
        self.rejected = Counter(
            "coopnets_rejected", "requests refused before any work", ["reason"], registry=r
        )

    def observe(self, rpc: str, code: str, seconds: float) -> None:
        self.requests.labels(rpc, code).inc()
        self.latency.labels(rpc, code).observe(seconds)

    def serve(self, port: int, host: str = "127.0.0.1") -> int:
        """Serves /metrics from a daemon thread; returns the bound port (port 0 = any free)."""
        self._httpd, _thread = start_http_server(port, addr=host, registry=self.registry)
        return int(self._httpd.server_port)

    def close(self) -> None:
        """Stops serving /metrics (if it was)."""
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None
