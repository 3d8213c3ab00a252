"""What runs before a handler: the bearer-token check, and request bodies that are not a protobuf message.

Both are grpc.ServerInterceptors that swap a method's behaviour for one that refuses the call, so a refused
call never reaches the service; each refusal is counted in coopnets_requests_total{rpc, code} like any RPC.
"""

from __future__ import annotations

import hmac

import grpc
from coopnets.serving.lifecycle import SERVICE_NAME
from coopnets.serving.metrics import Metrics

_MAKERS = {
    "unary_unary": grpc.unary_unary_rpc_method_handler,
    "unary_stream": grpc.unary_stream_rpc_method_handler,
    "stream_unary": grpc.stream_unary_rpc_method_handler,
    "stream_stream": grpc.stream_stream_rpc_method_handler,
}


def _replaced(handler: grpc.RpcMethodHandler, behavior, request_deserializer=None) -> grpc.RpcMethodHandler:
    """`handler` of the same kind with another behaviour (and request deserializer)."""
    kind = next(k for k in _MAKERS if getattr(handler, k))
    deserializer = request_deserializer or handler.request_deserializer
    return _MAKERS[kind](behavior, deserializer, handler.response_serializer)


class TokenInterceptor(grpc.ServerInterceptor):
    """Every RPC except grpc.health.v1 must carry `authorization: Bearer <token>`, else UNAUTHENTICATED."""

    def __init__(self, token: str, metrics: Metrics):
        self._expected = f"Bearer {token}".encode()
        self._metrics = metrics

    def intercept_service(self, continuation, details):
        handler = continuation(details)
        if handler is None or details.method.startswith("/grpc.health.v1.Health/"):
            return handler
        sent = dict(details.invocation_metadata).get("authorization", "")
        if hmac.compare_digest(sent.encode(), self._expected):
            return handler
        rpc = details.method.rsplit("/", 1)[-1]

        def deny(request, context):
            self._metrics.observe(rpc, "UNAUTHENTICATED", 0.0)
            context.abort(
                grpc.StatusCode.UNAUTHENTICATED,
                "missing or wrong bearer token: send metadata 'authorization: Bearer <token>'",
            )

        return _replaced(handler, deny)


class _Undecodable:
    """Stands in for a request whose bytes do not parse as its protobuf message."""

    def __init__(self, error: Exception):
        self.error = error


class DecodeErrorInterceptor(grpc.ServerInterceptor):
    """A request body that is not a valid protobuf message answers INVALID_ARGUMENT: grpcio's own deserializer
    would answer INTERNAL (and log a traceback) for what is only bad client input."""

    def __init__(self, metrics: Metrics):
        self._metrics = metrics

    def intercept_service(self, continuation, details):
        handler = continuation(details)
        if handler is None or not details.method.startswith(f"/{SERVICE_NAME}/"):
            return handler
        rpc = details.method.rsplit("/", 1)[-1]
        deserialize, behavior = handler.request_deserializer, handler.unary_unary or handler.unary_stream

        def safe(data: bytes):
            try:
                return deserialize(data)
            except Exception as e:  # protobuf's DecodeError, or anything else a parser raises
                return _Undecodable(e)

        def guarded(request, context):
            if isinstance(request, _Undecodable):
                self._metrics.observe(rpc, "INVALID_ARGUMENT", 0.0)
                context.abort(
                    grpc.StatusCode.INVALID_ARGUMENT,
                    f"the request is not a valid protobuf message for {rpc} "
                    f"({type(request.error).__name__}): check the client's coopnets.proto",
                )
            return behavior(request, context)

        return _replaced(handler, guarded, safe)  # the service has no client-streaming methods
