"""A typed Python client of coop-serve: numpy (or PIL / PNG files) in, numpy out.

    with CoopNetsClient("127.0.0.1:50051") as c:
        out = c.synthesize(count=16, seed=0)                     # out.images (16, C, H, W), out.energy (16,)
        rec = c.complete("shirt.png", occlusion="center:14")     # rec.recovered (C, H, W)

Images travel as raw float32 tensors by default (exact); masks are **1 = missing** (as PNG: white = missing).
Every call takes a deadline (`timeout`, seconds). UNAVAILABLE (server starting, restarting, warming up) is
retried by gRPC's own retry policy with exponential backoff. Errors raise grpc.RpcError; `bad_request_fields`
reads the field names of an INVALID_ARGUMENT.

Replicas: `CoopNetsClient("127.0.0.1:50051,127.0.0.1:50052")` opens one channel over both addresses with
gRPC's `round_robin` policy (see `channel_target`), so consecutive calls alternate between the replicas and a
replica that goes away is skipped until it is back.
"""

from __future__ import annotations

import io
import ipaddress
import json
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np
from coopnets.contract.codec import decode_png, set_image, tensor_from_message
from coopnets.v1 import coopnets_pb2 as pb
from coopnets.v1 import coopnets_pb2_grpc as pb_grpc
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_status import rpc_status
from PIL import Image as PILImage

ImageLike = np.ndarray | PILImage.Image | str | os.PathLike | bytes  # array (C, H, W) in [-1, 1], or a PNG


@dataclass(frozen=True)
class Synthesized:
    """What Synthesize answered: the images, their energies and the seed of each."""

    images: np.ndarray  # (N, C, H, W) float32
    energy: np.ndarray  # (N,)
    seeds: list[int]


@dataclass(frozen=True)
class StreamEvent:
    index: int
    seed: int
    step: int  # Langevin steps done
    final: bool
    image: np.ndarray  # (C, H, W)
    energy: float | None  # final images only


@dataclass(frozen=True)
class Completion:
    recovered: np.ndarray  # (C, H, W), observed pixels as given
    occluded: np.ndarray  # (C, H, W), the server's preview: holes black (-1)
    mask: np.ndarray  # (C, H, W), 1 = missing
    energy: float


@dataclass(frozen=True)
class Energies:
    energy: np.ndarray  # (N,) E(Y) = ‖Y‖²/(2s²) − f(Y)
    score: np.ndarray  # (N,) f(Y)
    ood: np.ndarray | None  # (N,) out-of-distribution score, > 1 = flagged; None: the bundle has none


def bad_request_fields(err: grpc.RpcError) -> list[str]:
    """The fields named by an INVALID_ARGUMENT's google.rpc.BadRequest detail (empty if none)."""
    status = rpc_status.from_call(err)
    fields: list[str] = []
    for detail in status.details if status else []:
        if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            br = error_details_pb2.BadRequest()
            detail.Unpack(br)
            fields += [v.field for v in br.field_violations]
    return fields


def channel_target(server: str) -> str:
    """The gRPC target for `server`: one HOST:PORT as it is, or several comma-separated IP:PORT addresses
    (IPv6 as [ADDR]:PORT) as gRPC's static `ipv4:`/`ipv6:` resolver target, over which the round_robin policy
    spreads the calls. Several addresses must be IP literals of one family: those resolvers take nothing else
    (a DNS name with several A records, e.g. a Kubernetes headless Service, is given alone: round_robin
    spreads over what it resolves to). Raises ValueError saying which address is wrong."""
    parts = [p.strip() for p in server.split(",")]
    if len(parts) == 1:
        return server
    families = set()
    for part in parts:
        host, sep, port = part.rpartition(":")
        try:
            if not sep or not port.isdigit() or not 0 < int(port) < 65536:
                raise ValueError
            families.add(ipaddress.ip_address(host.removeprefix("[").removesuffix("]")).version)
        except ValueError:
            raise ValueError(
                f"server address {part!r} in {server!r}: several addresses must each be IP:PORT "
                "(IPv6 as [ADDR]:PORT); give a DNS name alone"
            ) from None
    if len(families) > 1:
        raise ValueError(f"server addresses {server!r} mix IPv4 and IPv6: give addresses of one family")
    return f"ipv{families.pop()}:{','.join(parts)}"


def _service_config(retries: int) -> str:
    return json.dumps(
        {
            # Every address the target resolves to gets a connection and calls go round them in turn (gRPC's
            # default, pick_first, would send everything to the first); one address: nothing changes.
            "loadBalancingConfig": [{"round_robin": {}}],
            "methodConfig": [
                {
                    "name": [{"service": "coopnets.v1.CoopNets"}],
                    "retryPolicy": {
                        "maxAttempts": max(2, retries + 1),
                        "initialBackoff": "0.2s",
                        "maxBackoff": "5s",
                        "backoffMultiplier": 2,
                        "retryableStatusCodes": ["UNAVAILABLE"],
                    },
                }
            ],
        }
    )


class CoopNetsClient:
    def __init__(
        self,
        target: str,
        *,
        token: str | None = None,
        tls_ca: str | None = None,
        tls_cert: str | None = None,
        tls_key: str | None = None,
        tls_server_name: str | None = None,
        timeout: float = 120.0,
        retries: int = 4,
        max_message_mb: int = 64,
    ):
        """`target` host:port, or several IP:PORT comma-separated (replicas, round robin: `channel_target`).
        TLS when tls_ca is given (plus tls_cert/tls_key for mTLS); `token` is sent as
        `authorization: Bearer <token>`. `timeout` is the default deadline of every call, in seconds."""
        options = [
            ("grpc.max_receive_message_length", max_message_mb << 20),
            ("grpc.max_send_message_length", max_message_mb << 20),
            ("grpc.enable_retries", 1),
            ("grpc.service_config", _service_config(retries)),
        ]
        if tls_server_name:
            options.append(("grpc.ssl_target_name_override", tls_server_name))
        if tls_ca:
            creds = grpc.ssl_channel_credentials(
                root_certificates=Path(tls_ca).read_bytes(),
                private_key=Path(tls_key).read_bytes() if tls_key else None,
                certificate_chain=Path(tls_cert).read_bytes() if tls_cert else None,
            )
            self.channel = grpc.secure_channel(channel_target(target), creds, options=options)
        else:
            self.channel = grpc.insecure_channel(channel_target(target), options=options)
        self.stub = pb_grpc.CoopNetsStub(self.channel)
        self.health_stub = health_pb2_grpc.HealthStub(self.channel)
        self.timeout = timeout
        self._metadata = [("authorization", f"Bearer {token}")] if token else []
        self._shape: tuple[int, int, int] | None = None

    def __enter__(self) -> CoopNetsClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self.channel.close()

    def _call(self, method, request, timeout: float | None):
        return method(request, timeout=self.timeout if timeout is None else timeout, metadata=self._metadata)

    # ---- RPCs -----------------------------------------------------------------------------------------

    def health(self, service: str = "", timeout: float | None = 5.0) -> str:
        """grpc.health.v1 status name: SERVING, NOT_SERVING, ..."""
        resp = self.health_stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=timeout)
        return health_pb2.HealthCheckResponse.ServingStatus.Name(resp.status)

    def info(self, timeout: float | None = None) -> pb.ModelInfoResponse:
        info = self._call(self.stub.ModelInfo, pb.ModelInfoRequest(), timeout)
        self._shape = tuple(info.image_shape)  # type: ignore[assignment]
        return info

    @property
    def image_shape(self) -> tuple[int, int, int]:
        if self._shape is None:
            self.info()
        return self._shape  # type: ignore[return-value]

    @staticmethod
    def _langevin(steps, step_size, noise) -> pb.LangevinParams:
        lp = pb.LangevinParams()
        if steps is not None:
            lp.steps = steps
        if step_size is not None:
            lp.step_size = step_size
        if noise is not None:
            lp.noise = noise
        return lp

    def synthesize(
        self,
        count: int = 1,
        seed: int = 0,
        steps: int | None = None,
        step_size: float | None = None,
        noise: bool | None = None,
        png: bool = False,
        timeout: float | None = None,
    ) -> Synthesized:
        """`count` images, image i from seed + i; None = the bundle's defaults. png=True asks for 8-bit PNGs
        (clipped) instead of exact float32 tensors."""
        req = pb.SynthesizeRequest(
            count=count,
            seed=seed,
            langevin=self._langevin(steps, step_size, noise),
            format=pb.IMAGE_FORMAT_PNG if png else pb.IMAGE_FORMAT_TENSOR,
        )
        resp = self._call(self.stub.Synthesize, req, timeout)
        return Synthesized(
            images=np.stack([self._decode(g.image) for g in resp.images]),
            energy=np.array([g.energy for g in resp.images], dtype=np.float32),
            seeds=[g.seed for g in resp.images],
        )

    def synthesize_stream(
        self,
        count: int = 1,
        seed: int = 0,
        steps: int | None = None,
        step_size: float | None = None,
        noise: bool | None = None,
        snapshot_every: int = 0,
        timeout: float | None = None,
    ) -> Iterator[StreamEvent]:
        """Yields snapshots every `snapshot_every` steps, then one final event per image. Stop iterating (or
        call .cancel() on the underlying call via `synthesize_stream_call`) to cancel the work."""
        call = self.synthesize_stream_call(count, seed, steps, step_size, noise, snapshot_every, timeout)
        try:
            for ev in call:
                yield StreamEvent(
                    index=ev.image.index,
                    seed=ev.image.seed,
                    step=ev.step,
                    final=ev.final,
                    image=self._decode(ev.image.image),
                    energy=ev.image.energy if ev.final else None,
                )
        finally:
            call.cancel()

    def synthesize_stream_call(
        self, count, seed, steps=None, step_size=None, noise=None, snapshot_every=0, timeout=None
    ):
        """The raw streaming call (iterable of SynthesizeEvent, with .cancel())."""
        req = pb.SynthesizeStreamRequest(
            request=pb.SynthesizeRequest(
                count=count,
                seed=seed,
                langevin=self._langevin(steps, step_size, noise),
                format=pb.IMAGE_FORMAT_TENSOR,
            ),
            snapshot_every=snapshot_every,
        )
        return self._call(self.stub.SynthesizeStream, req, timeout)

    def complete(
        self,
        image: ImageLike,
        mask: ImageLike | None = None,
        occlusion: str | None = None,
        seed: int = 0,
        latent_steps: int | None = None,
        latent_step_size: float | None = None,
        refine_steps: int | None = None,
        refine_step_size: float | None = None,
        noise: bool | None = None,
        restarts: int | None = None,
        residual_fill: bool | None = None,
        average_restarts: bool | None = None,
        residual_interpolant: str | None = None,
        timeout: float | None = None,
    ) -> Completion:
        """Recover the missing pixels of one image. Give `mask` ((C, H, W) / (H, W) array of 0/1, **1 =
        missing**, or a PNG with white = missing) or `occlusion` ("center:14", "random:0.5", "left-half",
        "rects") applied by the server. `restarts`: latent chains per image;
        `residual_fill`: add the observed pixels' residual, interpolated, to g(X) in the hole;
        `average_restarts`: fill with the mean of the chains' g(X), or (False) with the lowest-U chain's;
        `residual_interpolant`: how the residual is carried in, "harmonic", "biharmonic" or "auto" (by the
        hole's shape) (None = the model's default for each)."""
        req = pb.CompleteRequest(image=self._encode(image), seed=seed, format=pb.IMAGE_FORMAT_TENSOR)
        if (mask is None) == (occlusion is None):
            raise ValueError("give exactly one of mask (1 = missing) and occlusion")
        if mask is not None:
            req.mask.CopyFrom(self._encode(mask))
        else:
            req.occlusion = occlusion
        for name, value in (
            ("latent_steps", latent_steps),
            ("latent_step_size", latent_step_size),
            ("refine_steps", refine_steps),
            ("refine_step_size", refine_step_size),
            ("noise", noise),
            ("restarts", restarts),
            ("residual_fill", residual_fill),
            ("average_restarts", average_restarts),
            ("residual_interpolant", residual_interpolant),
        ):
            if value is not None:
                setattr(req, name, value)
        resp = self._call(self.stub.Complete, req, timeout)
        return Completion(
            recovered=self._decode(resp.recovered),
            occluded=self._decode(resp.occluded),
            mask=self._decode(resp.mask),
            energy=resp.energy,
        )

    def energy(self, images: Sequence[ImageLike] | np.ndarray, timeout: float | None = None) -> np.ndarray:
        """E(Y) per image (lower = more typical)."""
        return self.energies(images, timeout).energy

    def energies(self, images: Sequence[ImageLike] | np.ndarray, timeout: float | None = None) -> Energies:
        """Everything Energy answers: E(Y), f(Y) and the out-of-distribution score (None when the bundle
        has none), each (N,) float32."""
        req = pb.EnergyRequest(images=[self._encode(im) for im in images])
        resp = self._call(self.stub.Energy, req, timeout)
        ood = np.array(resp.ood, dtype=np.float32) if len(resp.ood) else None
        return Energies(np.array(resp.energy, np.float32), np.array(resp.score, np.float32), ood)

    # ---- encoding -------------------------------------------------------------------------------------

    def _decode(self, msg: pb.Image) -> np.ndarray:
        """The server's image as float32: a tensor exactly as sent (any shape: masks and images alike, and
        not checked for finiteness, since a diverged chain is an answer too), a PNG at the model's shape."""
        if msg.WhichOneof("kind") == "tensor":
            return tensor_from_message(msg.tensor)
        return decode_png(msg.png, self.image_shape)

    @staticmethod
    def _encode(image: ImageLike) -> pb.Image:
        if isinstance(image, np.ndarray):
            return set_image(pb.Image(), image, png=False)  # exact float32
        if isinstance(image, bytes):
            return pb.Image(png=image)
        if isinstance(image, PILImage.Image):  # as PNG: the server converts grey/RGB (masks: white = missing)
            buf = io.BytesIO()
            image.save(buf, format="PNG")
            return pb.Image(png=buf.getvalue())
        return pb.Image(png=Path(image).read_bytes())
