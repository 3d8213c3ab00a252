from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from typing import ClassVar as _ClassVar, Iterable as _Iterable, Mapping as _Mapping, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ImageFormat(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    IMAGE_FORMAT_UNSPECIFIED: _ClassVar[ImageFormat]
    IMAGE_FORMAT_PNG: _ClassVar[ImageFormat]
    IMAGE_FORMAT_TENSOR: _ClassVar[ImageFormat]
IMAGE_FORMAT_UNSPECIFIED: ImageFormat
IMAGE_FORMAT_PNG: ImageFormat
IMAGE_FORMAT_TENSOR: ImageFormat

class Tensor(_message.Message):
    __slots__ = ("shape", "data")
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    shape: _containers.RepeatedScalarFieldContainer[int]
    data: bytes
    def __init__(self, shape: _Optional[_Iterable[int]] = ..., data: _Optional[bytes] = ...) -> None: ...

class Image(_message.Message):
    __slots__ = ("png", "tensor")
    PNG_FIELD_NUMBER: _ClassVar[int]
    TENSOR_FIELD_NUMBER: _ClassVar[int]
    png: bytes
    tensor: Tensor
    def __init__(self, png: _Optional[bytes] = ..., tensor: _Optional[_Union[Tensor, _Mapping]] = ...) -> None: ...

class LangevinParams(_message.Message):
    __slots__ = ("steps", "step_size", "noise")
    STEPS_FIELD_NUMBER: _ClassVar[int]
    STEP_SIZE_FIELD_NUMBER: _ClassVar[int]
    NOISE_FIELD_NUMBER: _ClassVar[int]
    steps: int
    step_size: float
    noise: bool
    def __init__(self, steps: _Optional[int] = ..., step_size: _Optional[float] = ..., noise: bool = ...) -> None: ...

class SynthesizeRequest(_message.Message):
    __slots__ = ("count", "seed", "langevin", "format")
    COUNT_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    LANGEVIN_FIELD_NUMBER: _ClassVar[int]
    FORMAT_FIELD_NUMBER: _ClassVar[int]
    count: int
    seed: int
    langevin: LangevinParams
    format: ImageFormat
    def __init__(self, count: _Optional[int] = ..., seed: _Optional[int] = ..., langevin: _Optional[_Union[LangevinParams, _Mapping]] = ..., format: _Optional[_Union[ImageFormat, str]] = ...) -> None: ...

class GeneratedImage(_message.Message):
    __slots__ = ("index", "seed", "image", "energy")
    INDEX_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    ENERGY_FIELD_NUMBER: _ClassVar[int]
    index: int
    seed: int
    image: Image
    energy: float
    def __init__(self, index: _Optional[int] = ..., seed: _Optional[int] = ..., image: _Optional[_Union[Image, _Mapping]] = ..., energy: _Optional[float] = ...) -> None: ...

class SynthesizeResponse(_message.Message):
    __slots__ = ("images",)
    IMAGES_FIELD_NUMBER: _ClassVar[int]
    images: _containers.RepeatedCompositeFieldContainer[GeneratedImage]
    def __init__(self, images: _Optional[_Iterable[_Union[GeneratedImage, _Mapping]]] = ...) -> None: ...

class SynthesizeStreamRequest(_message.Message):
    __slots__ = ("request", "snapshot_every")
    REQUEST_FIELD_NUMBER: _ClassVar[int]
    SNAPSHOT_EVERY_FIELD_NUMBER: _ClassVar[int]
    request: SynthesizeRequest
    snapshot_every: int
    def __init__(self, request: _Optional[_Union[SynthesizeRequest, _Mapping]] = ..., snapshot_every: _Optional[int] = ...) -> None: ...

class SynthesizeEvent(_message.Message):
    __slots__ = ("image", "step", "final")
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    FINAL_FIELD_NUMBER: _ClassVar[int]
    image: GeneratedImage
    step: int
    final: bool
    def __init__(self, image: _Optional[_Union[GeneratedImage, _Mapping]] = ..., step: _Optional[int] = ..., final: bool = ...) -> None: ...

class CompleteRequest(_message.Message):
    __slots__ = ("image", "mask", "occlusion", "seed", "latent_steps", "latent_step_size", "refine_steps", "refine_step_size", "noise", "format", "restarts", "residual_fill", "average_restarts", "residual_interpolant")
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    MASK_FIELD_NUMBER: _ClassVar[int]
    OCCLUSION_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    LATENT_STEPS_FIELD_NUMBER: _ClassVar[int]
    LATENT_STEP_SIZE_FIELD_NUMBER: _ClassVar[int]
    REFINE_STEPS_FIELD_NUMBER: _ClassVar[int]
    REFINE_STEP_SIZE_FIELD_NUMBER: _ClassVar[int]
    NOISE_FIELD_NUMBER: _ClassVar[int]
    FORMAT_FIELD_NUMBER: _ClassVar[int]
    RESTARTS_FIELD_NUMBER: _ClassVar[int]
    RESIDUAL_FILL_FIELD_NUMBER: _ClassVar[int]
    AVERAGE_RESTARTS_FIELD_NUMBER: _ClassVar[int]
    RESIDUAL_INTERPOLANT_FIELD_NUMBER: _ClassVar[int]
    image: Image
    mask: Image
    occlusion: str
    seed: int
    latent_steps: int
    latent_step_size: float
    refine_steps: int
    refine_step_size: float
    noise: bool
    format: ImageFormat
    restarts: int
    residual_fill: bool
    average_restarts: bool
    residual_interpolant: str
    def __init__(self, image: _Optional[_Union[Image, _Mapping]] = ..., mask: _Optional[_Union[Image, _Mapping]] = ..., occlusion: _Optional[str] = ..., seed: _Optional[int] = ..., latent_steps: _Optional[int] = ..., latent_step_size: _Optional[float] = ..., refine_steps: _Optional[int] = ..., refine_step_size: _Optional[float] = ..., noise: bool = ..., format: _Optional[_Union[ImageFormat, str]] = ..., restarts: _Optional[int] = ..., residual_fill: bool = ..., average_restarts: bool = ..., residual_interpolant: _Optional[str] = ...) -> None: ...

class CompleteResponse(_message.Message):
    __slots__ = ("recovered", "occluded", "mask", "energy")
    RECOVERED_FIELD_NUMBER: _ClassVar[int]
    OCCLUDED_FIELD_NUMBER: _ClassVar[int]
    MASK_FIELD_NUMBER: _ClassVar[int]
    ENERGY_FIELD_NUMBER: _ClassVar[int]
    recovered: Image
    occluded: Image
    mask: Image
    energy: float
    def __init__(self, recovered: _Optional[_Union[Image, _Mapping]] = ..., occluded: _Optional[_Union[Image, _Mapping]] = ..., mask: _Optional[_Union[Image, _Mapping]] = ..., energy: _Optional[float] = ...) -> None: ...

class EnergyRequest(_message.Message):
    __slots__ = ("images",)
    IMAGES_FIELD_NUMBER: _ClassVar[int]
    images: _containers.RepeatedCompositeFieldContainer[Image]
    def __init__(self, images: _Optional[_Iterable[_Union[Image, _Mapping]]] = ...) -> None: ...

class EnergyResponse(_message.Message):
    __slots__ = ("energy", "score", "ood")
    ENERGY_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    OOD_FIELD_NUMBER: _ClassVar[int]
    energy: _containers.RepeatedScalarFieldContainer[float]
    score: _containers.RepeatedScalarFieldContainer[float]
    ood: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, energy: _Optional[_Iterable[float]] = ..., score: _Optional[_Iterable[float]] = ..., ood: _Optional[_Iterable[float]] = ...) -> None: ...

class ModelInfoRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class LangevinDefaults(_message.Message):
    __slots__ = ("s", "step_size", "steps", "sigma", "noise")
    S_FIELD_NUMBER: _ClassVar[int]
    STEP_SIZE_FIELD_NUMBER: _ClassVar[int]
    STEPS_FIELD_NUMBER: _ClassVar[int]
    SIGMA_FIELD_NUMBER: _ClassVar[int]
    NOISE_FIELD_NUMBER: _ClassVar[int]
    s: float
    step_size: float
    steps: int
    sigma: float
    noise: bool
    def __init__(self, s: _Optional[float] = ..., step_size: _Optional[float] = ..., steps: _Optional[int] = ..., sigma: _Optional[float] = ..., noise: bool = ...) -> None: ...

class CompletionDefaults(_message.Message):
    __slots__ = ("latent_steps", "latent_step_size", "latent_noise", "refine_steps", "restarts", "residual_fill", "average_restarts", "residual_interpolant")
    LATENT_STEPS_FIELD_NUMBER: _ClassVar[int]
    LATENT_STEP_SIZE_FIELD_NUMBER: _ClassVar[int]
    LATENT_NOISE_FIELD_NUMBER: _ClassVar[int]
    REFINE_STEPS_FIELD_NUMBER: _ClassVar[int]
    RESTARTS_FIELD_NUMBER: _ClassVar[int]
    RESIDUAL_FILL_FIELD_NUMBER: _ClassVar[int]
    AVERAGE_RESTARTS_FIELD_NUMBER: _ClassVar[int]
    RESIDUAL_INTERPOLANT_FIELD_NUMBER: _ClassVar[int]
    latent_steps: int
    latent_step_size: float
    latent_noise: bool
    refine_steps: int
    restarts: int
    residual_fill: bool
    average_restarts: bool
    residual_interpolant: str
    def __init__(self, latent_steps: _Optional[int] = ..., latent_step_size: _Optional[float] = ..., latent_noise: bool = ..., refine_steps: _Optional[int] = ..., restarts: _Optional[int] = ..., residual_fill: bool = ..., average_restarts: bool = ..., residual_interpolant: _Optional[str] = ...) -> None: ...

class SessionInfo(_message.Message):
    __slots__ = ("graph", "providers")
    GRAPH_FIELD_NUMBER: _ClassVar[int]
    PROVIDERS_FIELD_NUMBER: _ClassVar[int]
    graph: str
    providers: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, graph: _Optional[str] = ..., providers: _Optional[_Iterable[str]] = ...) -> None: ...

class Limits(_message.Message):
    __slots__ = ("max_count", "max_steps", "max_batch", "max_delay_ms", "max_queue", "max_receive_message_bytes", "max_send_message_bytes")
    MAX_COUNT_FIELD_NUMBER: _ClassVar[int]
    MAX_STEPS_FIELD_NUMBER: _ClassVar[int]
    MAX_BATCH_FIELD_NUMBER: _ClassVar[int]
    MAX_DELAY_MS_FIELD_NUMBER: _ClassVar[int]
    MAX_QUEUE_FIELD_NUMBER: _ClassVar[int]
    MAX_RECEIVE_MESSAGE_BYTES_FIELD_NUMBER: _ClassVar[int]
    MAX_SEND_MESSAGE_BYTES_FIELD_NUMBER: _ClassVar[int]
    max_count: int
    max_steps: int
    max_batch: int
    max_delay_ms: int
    max_queue: int
    max_receive_message_bytes: int
    max_send_message_bytes: int
    def __init__(self, max_count: _Optional[int] = ..., max_steps: _Optional[int] = ..., max_batch: _Optional[int] = ..., max_delay_ms: _Optional[int] = ..., max_queue: _Optional[int] = ..., max_receive_message_bytes: _Optional[int] = ..., max_send_message_bytes: _Optional[int] = ...) -> None: ...

class ModelInfoResponse(_message.Message):
    __slots__ = ("image_shape", "latent_dim", "arch", "langevin", "completion", "format_version", "bundle_sha256", "file_sha256", "created", "sessions", "device", "limits", "ood")
    class FileSha256Entry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    IMAGE_SHAPE_FIELD_NUMBER: _ClassVar[int]
    LATENT_DIM_FIELD_NUMBER: _ClassVar[int]
    ARCH_FIELD_NUMBER: _ClassVar[int]
    LANGEVIN_FIELD_NUMBER: _ClassVar[int]
    COMPLETION_FIELD_NUMBER: _ClassVar[int]
    FORMAT_VERSION_FIELD_NUMBER: _ClassVar[int]
    BUNDLE_SHA256_FIELD_NUMBER: _ClassVar[int]
    FILE_SHA256_FIELD_NUMBER: _ClassVar[int]
    CREATED_FIELD_NUMBER: _ClassVar[int]
    SESSIONS_FIELD_NUMBER: _ClassVar[int]
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    LIMITS_FIELD_NUMBER: _ClassVar[int]
    OOD_FIELD_NUMBER: _ClassVar[int]
    image_shape: _containers.RepeatedScalarFieldContainer[int]
    latent_dim: int
    arch: str
    langevin: LangevinDefaults
    completion: CompletionDefaults
    format_version: int
    bundle_sha256: str
    file_sha256: _containers.ScalarMap[str, str]
    created: str
    sessions: _containers.RepeatedCompositeFieldContainer[SessionInfo]
    device: str
    limits: Limits
    ood: OodInfo
    def __init__(self, image_shape: _Optional[_Iterable[int]] = ..., latent_dim: _Optional[int] = ..., arch: _Optional[str] = ..., langevin: _Optional[_Union[LangevinDefaults, _Mapping]] = ..., completion: _Optional[_Union[CompletionDefaults, _Mapping]] = ..., format_version: _Optional[int] = ..., bundle_sha256: _Optional[str] = ..., file_sha256: _Optional[_Mapping[str, str]] = ..., created: _Optional[str] = ..., sessions: _Optional[_Iterable[_Union[SessionInfo, _Mapping]]] = ..., device: _Optional[str] = ..., limits: _Optional[_Union[Limits, _Mapping]] = ..., ood: _Optional[_Union[OodInfo, _Mapping]] = ...) -> None: ...

class OodInfo(_message.Message):
    __slots__ = ("score", "threshold", "false_alarm_rate", "calibration_images")
    SCORE_FIELD_NUMBER: _ClassVar[int]
    THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    FALSE_ALARM_RATE_FIELD_NUMBER: _ClassVar[int]
    CALIBRATION_IMAGES_FIELD_NUMBER: _ClassVar[int]
    score: str
    threshold: float
    false_alarm_rate: float
    calibration_images: int
    def __init__(self, score: _Optional[str] = ..., threshold: _Optional[float] = ..., false_alarm_rate: _Optional[float] = ..., calibration_images: _Optional[int] = ...) -> None: ...
