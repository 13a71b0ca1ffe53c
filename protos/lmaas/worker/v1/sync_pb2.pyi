from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Held(_message.Message):
    __slots__ = ("model", "version", "digest")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    model: str
    version: int
    digest: str
    def __init__(self, model: _Optional[str] = ..., version: _Optional[int] = ..., digest: _Optional[str] = ...) -> None: ...

class Hello(_message.Message):
    __slots__ = ("worker_id", "pool", "inference_address", "held")
    WORKER_ID_FIELD_NUMBER: _ClassVar[int]
    POOL_FIELD_NUMBER: _ClassVar[int]
    INFERENCE_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    HELD_FIELD_NUMBER: _ClassVar[int]
    worker_id: str
    pool: str
    inference_address: str
    held: _containers.RepeatedCompositeFieldContainer[Held]
    def __init__(self, worker_id: _Optional[str] = ..., pool: _Optional[str] = ..., inference_address: _Optional[str] = ..., held: _Optional[_Iterable[_Union[Held, _Mapping]]] = ...) -> None: ...

class ModelStatus(_message.Message):
    __slots__ = ("model", "loaded_versions", "ok", "error")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    LOADED_VERSIONS_FIELD_NUMBER: _ClassVar[int]
    OK_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    model: str
    loaded_versions: _containers.RepeatedScalarFieldContainer[int]
    ok: bool
    error: str
    def __init__(self, model: _Optional[str] = ..., loaded_versions: _Optional[_Iterable[int]] = ..., ok: _Optional[bool] = ..., error: _Optional[str] = ...) -> None: ...

class Ack(_message.Message):
    __slots__ = ("snapshot_revision", "models", "held", "memory")
    SNAPSHOT_REVISION_FIELD_NUMBER: _ClassVar[int]
    MODELS_FIELD_NUMBER: _ClassVar[int]
    HELD_FIELD_NUMBER: _ClassVar[int]
    MEMORY_FIELD_NUMBER: _ClassVar[int]
    snapshot_revision: int
    models: _containers.RepeatedCompositeFieldContainer[ModelStatus]
    held: _containers.RepeatedCompositeFieldContainer[Held]
    memory: Memory
    def __init__(self, snapshot_revision: _Optional[int] = ..., models: _Optional[_Iterable[_Union[ModelStatus, _Mapping]]] = ..., held: _Optional[_Iterable[_Union[Held, _Mapping]]] = ..., memory: _Optional[_Union[Memory, _Mapping]] = ...) -> None: ...

class VersionMemory(_message.Message):
    __slots__ = ("model", "version", "bytes", "peak_bytes")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    BYTES_FIELD_NUMBER: _ClassVar[int]
    PEAK_BYTES_FIELD_NUMBER: _ClassVar[int]
    model: str
    version: int
    bytes: int
    peak_bytes: int
    def __init__(self, model: _Optional[str] = ..., version: _Optional[int] = ..., bytes: _Optional[int] = ..., peak_bytes: _Optional[int] = ...) -> None: ...

class Memory(_message.Message):
    __slots__ = ("capacity_bytes", "used_bytes", "versions")
    CAPACITY_BYTES_FIELD_NUMBER: _ClassVar[int]
    USED_BYTES_FIELD_NUMBER: _ClassVar[int]
    VERSIONS_FIELD_NUMBER: _ClassVar[int]
    capacity_bytes: int
    used_bytes: int
    versions: _containers.RepeatedCompositeFieldContainer[VersionMemory]
    def __init__(self, capacity_bytes: _Optional[int] = ..., used_bytes: _Optional[int] = ..., versions: _Optional[_Iterable[_Union[VersionMemory, _Mapping]]] = ...) -> None: ...

class Histogram(_message.Message):
    __slots__ = ("bounds", "counts", "count", "sum")
    BOUNDS_FIELD_NUMBER: _ClassVar[int]
    COUNTS_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    SUM_FIELD_NUMBER: _ClassVar[int]
    bounds: _containers.RepeatedScalarFieldContainer[float]
    counts: _containers.RepeatedScalarFieldContainer[int]
    count: int
    sum: float
    def __init__(self, bounds: _Optional[_Iterable[float]] = ..., counts: _Optional[_Iterable[int]] = ..., count: _Optional[int] = ..., sum: _Optional[float] = ...) -> None: ...

class VersionLatency(_message.Message):
    __slots__ = ("model", "version", "request_duration", "time_to_first_token", "generation_tokens")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    REQUEST_DURATION_FIELD_NUMBER: _ClassVar[int]
    TIME_TO_FIRST_TOKEN_FIELD_NUMBER: _ClassVar[int]
    GENERATION_TOKENS_FIELD_NUMBER: _ClassVar[int]
    model: str
    version: int
    request_duration: Histogram
    time_to_first_token: Histogram
    generation_tokens: int
    def __init__(self, model: _Optional[str] = ..., version: _Optional[int] = ..., request_duration: _Optional[_Union[Histogram, _Mapping]] = ..., time_to_first_token: _Optional[_Union[Histogram, _Mapping]] = ..., generation_tokens: _Optional[int] = ...) -> None: ...

class Report(_message.Message):
    __slots__ = ("memory", "latency")
    MEMORY_FIELD_NUMBER: _ClassVar[int]
    LATENCY_FIELD_NUMBER: _ClassVar[int]
    memory: Memory
    latency: _containers.RepeatedCompositeFieldContainer[VersionLatency]
    def __init__(self, memory: _Optional[_Union[Memory, _Mapping]] = ..., latency: _Optional[_Iterable[_Union[VersionLatency, _Mapping]]] = ...) -> None: ...

class WorkerMessage(_message.Message):
    __slots__ = ("hello", "ack", "report")
    HELLO_FIELD_NUMBER: _ClassVar[int]
    ACK_FIELD_NUMBER: _ClassVar[int]
    REPORT_FIELD_NUMBER: _ClassVar[int]
    hello: Hello
    ack: Ack
    report: Report
    def __init__(self, hello: _Optional[_Union[Hello, _Mapping]] = ..., ack: _Optional[_Union[Ack, _Mapping]] = ..., report: _Optional[_Union[Report, _Mapping]] = ...) -> None: ...

class Assignment(_message.Message):
    __slots__ = ("model", "version", "digest", "format", "config_json", "size_bytes", "lazy")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    FORMAT_FIELD_NUMBER: _ClassVar[int]
    CONFIG_JSON_FIELD_NUMBER: _ClassVar[int]
    SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    LAZY_FIELD_NUMBER: _ClassVar[int]
    model: str
    version: int
    digest: str
    format: str
    config_json: str
    size_bytes: int
    lazy: bool
    def __init__(self, model: _Optional[str] = ..., version: _Optional[int] = ..., digest: _Optional[str] = ..., format: _Optional[str] = ..., config_json: _Optional[str] = ..., size_bytes: _Optional[int] = ..., lazy: _Optional[bool] = ...) -> None: ...

class Route(_message.Message):
    __slots__ = ("model", "stable_version", "canary_version", "canary_weight", "generation")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    STABLE_VERSION_FIELD_NUMBER: _ClassVar[int]
    CANARY_VERSION_FIELD_NUMBER: _ClassVar[int]
    CANARY_WEIGHT_FIELD_NUMBER: _ClassVar[int]
    GENERATION_FIELD_NUMBER: _ClassVar[int]
    model: str
    stable_version: int
    canary_version: int
    canary_weight: int
    generation: int
    def __init__(self, model: _Optional[str] = ..., stable_version: _Optional[int] = ..., canary_version: _Optional[int] = ..., canary_weight: _Optional[int] = ..., generation: _Optional[int] = ...) -> None: ...

class Snapshot(_message.Message):
    __slots__ = ("revision", "assignments", "routes", "accepts_reports", "report_every_s")
    REVISION_FIELD_NUMBER: _ClassVar[int]
    ASSIGNMENTS_FIELD_NUMBER: _ClassVar[int]
    ROUTES_FIELD_NUMBER: _ClassVar[int]
    ACCEPTS_REPORTS_FIELD_NUMBER: _ClassVar[int]
    REPORT_EVERY_S_FIELD_NUMBER: _ClassVar[int]
    revision: int
    assignments: _containers.RepeatedCompositeFieldContainer[Assignment]
    routes: _containers.RepeatedCompositeFieldContainer[Route]
    accepts_reports: bool
    report_every_s: float
    def __init__(self, revision: _Optional[int] = ..., assignments: _Optional[_Iterable[_Union[Assignment, _Mapping]]] = ..., routes: _Optional[_Iterable[_Union[Route, _Mapping]]] = ..., accepts_reports: _Optional[bool] = ..., report_every_s: _Optional[float] = ...) -> None: ...
