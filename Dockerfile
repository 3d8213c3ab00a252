# The serving image: coop-serve on ONNX Runtime, the base install of coopnets (no torch, no training stack).
#   docker build -t coopnets-serve:0.5.0 .
#   docker run -p 50051:50051 -p 8000:8000 -p 9090:9090 -v "$PWD/runs/demo/bundle:/models/bundle:ro" coopnets-serve:0.5.0
# 50051: gRPC (coopnets.v1, the Open Inference Protocol, grpc.health.v1); 8000: the Open Inference Protocol's
# REST binding (KServe v2 / Triton HTTP, GET /v2/health/ready); 9090: Prometheus /metrics.
# The bundle is not in the image: mount it at /models/bundle (Kubernetes: deploy/coopnets.yaml). Any coop-serve
# flag can be appended (`docker run ... coopnets-serve:0.5.0 --bundle /models/bundle --max-batch 32`).

FROM python:3.11-slim AS build
WORKDIR /src
COPY . .
RUN pip wheel --no-cache-dir --no-deps --wheel-dir /wheels .

FROM python:3.11-slim
LABEL org.opencontainers.image.title="coopnets-serve" \
      org.opencontainers.image.description="coop-serve: CoopNets bundles over gRPC (coopnets.v1, grpc.health.v1) and KServe v2 REST"
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
COPY --from=build /wheels /wheels
# The base install only: pip resolves the serving dependencies (onnxruntime, grpcio, protobuf, numpy, Pillow,
# prometheus-client, starlette and uvicorn); the [train] extra, and with it torch, is never named.
RUN pip install --no-cache-dir /wheels/coopnets-*.whl && rm -rf /wheels \
    && useradd --uid 10001 --no-create-home --shell /usr/sbin/nologin coop
USER 10001
EXPOSE 50051 8000 9090
# grpc.health.v1 over loopback (health needs no token); exit 0 only once warm-up is done and it says SERVING.
HEALTHCHECK --interval=10s --timeout=5s --start-period=60s --retries=3 \
    CMD ["coop-client", "health", "--server", "127.0.0.1:50051", "--timeout", "4"]
ENTRYPOINT ["coop-serve"]
CMD ["--bundle", "/models/bundle", "--host", "0.0.0.0", "--port", "50051", "--http-port", "8000", "--metrics-port", "9090", "--device", "cpu"]
