from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class RolloutPhase(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ROLLOUT_PHASE_UNSPECIFIED: _ClassVar[RolloutPhase]
    ROLLOUT_PHASE_PROGRESSING: _ClassVar[RolloutPhase]
    ROLLOUT_PHASE_SUCCEEDED: _ClassVar[RolloutPhase]
    ROLLOUT_PHASE_FAILED: _ClassVar[RolloutPhase]
    ROLLOUT_PHASE_SUPERSEDED: _ClassVar[RolloutPhase]

class WorkerRolloutState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    WORKER_ROLLOUT_STATE_UNSPECIFIED: _ClassVar[WorkerRolloutState]
    WORKER_ROLLOUT_STATE_PENDING: _ClassVar[WorkerRolloutState]
    WORKER_ROLLOUT_STATE_ACKED: _ClassVar[WorkerRolloutState]
    WORKER_ROLLOUT_STATE_NACKED: _ClassVar[WorkerRolloutState]

class Role(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ROLE_UNSPECIFIED: _ClassVar[Role]
    ROLE_READER: _ClassVar[Role]
    ROLE_DEPLOYER: _ClassVar[Role]
    ROLE_WORKER: _ClassVar[Role]
    ROLE_ADMIN: _ClassVar[Role]
ROLLOUT_PHASE_UNSPECIFIED: RolloutPhase
ROLLOUT_PHASE_PROGRESSING: RolloutPhase
ROLLOUT_PHASE_SUCCEEDED: RolloutPhase
ROLLOUT_PHASE_FAILED: RolloutPhase
ROLLOUT_PHASE_SUPERSEDED: RolloutPhase
WORKER_ROLLOUT_STATE_UNSPECIFIED: WorkerRolloutState
WORKER_ROLLOUT_STATE_PENDING: WorkerRolloutState
WORKER_ROLLOUT_STATE_ACKED: WorkerRolloutState
WORKER_ROLLOUT_STATE_NACKED: WorkerRolloutState
ROLE_UNSPECIFIED: Role
ROLE_READER: Role
ROLE_DEPLOYER: Role
ROLE_WORKER: Role
ROLE_ADMIN: Role

class Model(_message.Message):
    __slots__ = ("name", "description", "metadata", "latest_version", "created_at_ms", "created_by")
    class MetadataEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    NAME_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    LATEST_VERSION_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_MS_FIELD_NUMBER: _ClassVar[int]
    CREATED_BY_FIELD_NUMBER: _ClassVar[int]
    name: str
    description: str
    metadata: _containers.ScalarMap[str, str]
    latest_version: int
    created_at_ms: int
    created_by: str
    def __init__(self, name: _Optional[str] = ..., description: _Optional[str] = ..., metadata: _Optional[_Mapping[str, str]] = ..., latest_version: _Optional[int] = ..., created_at_ms: _Optional[int] = ..., created_by: _Optional[str] = ...) -> None: ...

class ModelVersion(_message.Message):
    __slots__ = ("model", "version", "digest", "format", "config_json", "size_bytes", "created_at_ms", "created_by", "parent_version", "description", "derivation")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    FORMAT_FIELD_NUMBER: _ClassVar[int]
    CONFIG_JSON_FIELD_NUMBER: _ClassVar[int]
    SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_MS_FIELD_NUMBER: _ClassVar[int]
    CREATED_BY_FIELD_NUMBER: _ClassVar[int]
    PARENT_VERSION_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    DERIVATION_FIELD_NUMBER: _ClassVar[int]
    model: str
    version: int
    digest: str
    format: str
    config_json: str
    size_bytes: int
    created_at_ms: int
    created_by: str
    parent_version: int
    description: str
    derivation: Derivation
    def __init__(self, model: _Optional[str] = ..., version: _Optional[int] = ..., digest: _Optional[str] = ..., format: _Optional[str] = ..., config_json: _Optional[str] = ..., size_bytes: _Optional[int] = ..., created_at_ms: _Optional[int] = ..., created_by: _Optional[str] = ..., parent_version: _Optional[int] = ..., description: _Optional[str] = ..., derivation: _Optional[_Union[Derivation, _Mapping]] = ...) -> None: ...

class SpeedMeasurement(_message.Message):
    __slots__ = ("batch", "parent_samples_per_s", "derived_samples_per_s", "speedup")
    BATCH_FIELD_NUMBER: _ClassVar[int]
    PARENT_SAMPLES_PER_S_FIELD_NUMBER: _ClassVar[int]
    DERIVED_SAMPLES_PER_S_FIELD_NUMBER: _ClassVar[int]
    SPEEDUP_FIELD_NUMBER: _ClassVar[int]
    batch: int
    parent_samples_per_s: float
    derived_samples_per_s: float
    speedup: float
    def __init__(self, batch: _Optional[int] = ..., parent_samples_per_s: _Optional[float] = ..., derived_samples_per_s: _Optional[float] = ..., speedup: _Optional[float] = ...) -> None: ...

class AccuracyMeasurement(_message.Message):
    __slots__ = ("reference", "samples", "max_abs_error", "mean_abs_error", "max_rel_error", "mean_rel_error", "top1_agreement")
    REFERENCE_FIELD_NUMBER: _ClassVar[int]
    SAMPLES_FIELD_NUMBER: _ClassVar[int]
    MAX_ABS_ERROR_FIELD_NUMBER: _ClassVar[int]
    MEAN_ABS_ERROR_FIELD_NUMBER: _ClassVar[int]
    MAX_REL_ERROR_FIELD_NUMBER: _ClassVar[int]
    MEAN_REL_ERROR_FIELD_NUMBER: _ClassVar[int]
    TOP1_AGREEMENT_FIELD_NUMBER: _ClassVar[int]
    reference: str
    samples: int
    max_abs_error: float
    mean_abs_error: float
    max_rel_error: float
    mean_rel_error: float
    top1_agreement: float
    def __init__(self, reference: _Optional[str] = ..., samples: _Optional[int] = ..., max_abs_error: _Optional[float] = ..., mean_abs_error: _Optional[float] = ..., max_rel_error: _Optional[float] = ..., mean_rel_error: _Optional[float] = ..., top1_agreement: _Optional[float] = ...) -> None: ...

class Derivation(_message.Message):
    __slots__ = ("recipe", "params", "tool_versions", "parent_size_bytes", "size_bytes", "speed", "accuracy", "max_error", "merged_versions")
    class ParamsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    class ToolVersionsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    RECIPE_FIELD_NUMBER: _ClassVar[int]
    PARAMS_FIELD_NUMBER: _ClassVar[int]
    TOOL_VERSIONS_FIELD_NUMBER: _ClassVar[int]
    PARENT_SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    SPEED_FIELD_NUMBER: _ClassVar[int]
    ACCURACY_FIELD_NUMBER: _ClassVar[int]
    MAX_ERROR_FIELD_NUMBER: _ClassVar[int]
    MERGED_VERSIONS_FIELD_NUMBER: _ClassVar[int]
    recipe: str
    params: _containers.ScalarMap[str, str]
    tool_versions: _containers.ScalarMap[str, str]
    parent_size_bytes: int
    size_bytes: int
    speed: _containers.RepeatedCompositeFieldContainer[SpeedMeasurement]
    accuracy: AccuracyMeasurement
    max_error: float
    merged_versions: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, recipe: _Optional[str] = ..., params: _Optional[_Mapping[str, str]] = ..., tool_versions: _Optional[_Mapping[str, str]] = ..., parent_size_bytes: _Optional[int] = ..., size_bytes: _Optional[int] = ..., speed: _Optional[_Iterable[_Union[SpeedMeasurement, _Mapping]]] = ..., accuracy: _Optional[_Union[AccuracyMeasurement, _Mapping]] = ..., max_error: _Optional[float] = ..., merged_versions: _Optional[_Iterable[int]] = ...) -> None: ...

class DeploymentSpec(_message.Message):
    __slots__ = ("stable_version", "canary_version", "canary_weight", "pools", "lazy")
    STABLE_VERSION_FIELD_NUMBER: _ClassVar[int]
    CANARY_VERSION_FIELD_NUMBER: _ClassVar[int]
    CANARY_WEIGHT_FIELD_NUMBER: _ClassVar[int]
    POOLS_FIELD_NUMBER: _ClassVar[int]
    LAZY_FIELD_NUMBER: _ClassVar[int]
    stable_version: int
    canary_version: int
    canary_weight: int
    pools: _containers.RepeatedScalarFieldContainer[str]
    lazy: bool
    def __init__(self, stable_version: _Optional[int] = ..., canary_version: _Optional[int] = ..., canary_weight: _Optional[int] = ..., pools: _Optional[_Iterable[str]] = ..., lazy: _Optional[bool] = ...) -> None: ...

class DeploymentRecord(_message.Message):
    __slots__ = ("generation", "spec", "reason", "message", "created_at_ms", "created_by", "failed")
    GENERATION_FIELD_NUMBER: _ClassVar[int]
    SPEC_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_MS_FIELD_NUMBER: _ClassVar[int]
    CREATED_BY_FIELD_NUMBER: _ClassVar[int]
    FAILED_FIELD_NUMBER: _ClassVar[int]
    generation: int
    spec: DeploymentSpec
    reason: str
    message: str
    created_at_ms: int
    created_by: str
    failed: bool
    def __init__(self, generation: _Optional[int] = ..., spec: _Optional[_Union[DeploymentSpec, _Mapping]] = ..., reason: _Optional[str] = ..., message: _Optional[str] = ..., created_at_ms: _Optional[int] = ..., created_by: _Optional[str] = ..., failed: _Optional[bool] = ...) -> None: ...

class Deployment(_message.Message):
    __slots__ = ("model", "spec", "generation", "history", "updated_at_ms")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    SPEC_FIELD_NUMBER: _ClassVar[int]
    GENERATION_FIELD_NUMBER: _ClassVar[int]
    HISTORY_FIELD_NUMBER: _ClassVar[int]
    UPDATED_AT_MS_FIELD_NUMBER: _ClassVar[int]
    model: str
    spec: DeploymentSpec
    generation: int
    history: _containers.RepeatedCompositeFieldContainer[DeploymentRecord]
    updated_at_ms: int
    def __init__(self, model: _Optional[str] = ..., spec: _Optional[_Union[DeploymentSpec, _Mapping]] = ..., generation: _Optional[int] = ..., history: _Optional[_Iterable[_Union[DeploymentRecord, _Mapping]]] = ..., updated_at_ms: _Optional[int] = ...) -> None: ...

class WorkerRollout(_message.Message):
    __slots__ = ("worker_id", "state", "error")
    WORKER_ID_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    worker_id: str
    state: WorkerRolloutState
    error: str
    def __init__(self, worker_id: _Optional[str] = ..., state: _Optional[_Union[WorkerRolloutState, str]] = ..., error: _Optional[str] = ...) -> None: ...

class Rollout(_message.Message):
    __slots__ = ("model", "generation", "spec", "phase", "message", "reason", "started_at_ms", "finished_at_ms", "restored_generation", "workers")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    GENERATION_FIELD_NUMBER: _ClassVar[int]
    SPEC_FIELD_NUMBER: _ClassVar[int]
    PHASE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    STARTED_AT_MS_FIELD_NUMBER: _ClassVar[int]
    FINISHED_AT_MS_FIELD_NUMBER: _ClassVar[int]
    RESTORED_GENERATION_FIELD_NUMBER: _ClassVar[int]
    WORKERS_FIELD_NUMBER: _ClassVar[int]
    model: str
    generation: int
    spec: DeploymentSpec
    phase: RolloutPhase
    message: str
    reason: str
    started_at_ms: int
    finished_at_ms: int
    restored_generation: int
    workers: _containers.RepeatedCompositeFieldContainer[WorkerRollout]
    def __init__(self, model: _Optional[str] = ..., generation: _Optional[int] = ..., spec: _Optional[_Union[DeploymentSpec, _Mapping]] = ..., phase: _Optional[_Union[RolloutPhase, str]] = ..., message: _Optional[str] = ..., reason: _Optional[str] = ..., started_at_ms: _Optional[int] = ..., finished_at_ms: _Optional[int] = ..., restored_generation: _Optional[int] = ..., workers: _Optional[_Iterable[_Union[WorkerRollout, _Mapping]]] = ...) -> None: ...

class HeldVersion(_message.Message):
    __slots__ = ("model", "version", "digest", "memory_bytes", "memory_peak_bytes")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    MEMORY_BYTES_FIELD_NUMBER: _ClassVar[int]
    MEMORY_PEAK_BYTES_FIELD_NUMBER: _ClassVar[int]
    model: str
    version: int
    digest: str
    memory_bytes: int
    memory_peak_bytes: int
    def __init__(self, model: _Optional[str] = ..., version: _Optional[int] = ..., digest: _Optional[str] = ..., memory_bytes: _Optional[int] = ..., memory_peak_bytes: _Optional[int] = ...) -> None: ...

class LatencyHistogram(_message.Message):
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
    request_duration: LatencyHistogram
    time_to_first_token: LatencyHistogram
    generation_tokens: int
    def __init__(self, model: _Optional[str] = ..., version: _Optional[int] = ..., request_duration: _Optional[_Union[LatencyHistogram, _Mapping]] = ..., time_to_first_token: _Optional[_Union[LatencyHistogram, _Mapping]] = ..., generation_tokens: _Optional[int] = ...) -> None: ...

class WorkerInfo(_message.Message):
    __slots__ = ("worker_id", "pool", "inference_address", "control_plane", "connected_at_ms", "desired_revision", "acked_revision", "held", "models", "memory_capacity_bytes", "memory_used_bytes", "latency", "reported_at_ms")
    WORKER_ID_FIELD_NUMBER: _ClassVar[int]
    POOL_FIELD_NUMBER: _ClassVar[int]
    INFERENCE_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    CONTROL_PLANE_FIELD_NUMBER: _ClassVar[int]
    CONNECTED_AT_MS_FIELD_NUMBER: _ClassVar[int]
    DESIRED_REVISION_FIELD_NUMBER: _ClassVar[int]
    ACKED_REVISION_FIELD_NUMBER: _ClassVar[int]
    HELD_FIELD_NUMBER: _ClassVar[int]
    MODELS_FIELD_NUMBER: _ClassVar[int]
    MEMORY_CAPACITY_BYTES_FIELD_NUMBER: _ClassVar[int]
    MEMORY_USED_BYTES_FIELD_NUMBER: _ClassVar[int]
    LATENCY_FIELD_NUMBER: _ClassVar[int]
    REPORTED_AT_MS_FIELD_NUMBER: _ClassVar[int]
    worker_id: str
    pool: str
    inference_address: str
    control_plane: str
    connected_at_ms: int
    desired_revision: int
    acked_revision: int
    held: _containers.RepeatedCompositeFieldContainer[HeldVersion]
    models: _containers.RepeatedCompositeFieldContainer[ObservedModel]
    memory_capacity_bytes: int
    memory_used_bytes: int
    latency: _containers.RepeatedCompositeFieldContainer[VersionLatency]
    reported_at_ms: int
    def __init__(self, worker_id: _Optional[str] = ..., pool: _Optional[str] = ..., inference_address: _Optional[str] = ..., control_plane: _Optional[str] = ..., connected_at_ms: _Optional[int] = ..., desired_revision: _Optional[int] = ..., acked_revision: _Optional[int] = ..., held: _Optional[_Iterable[_Union[HeldVersion, _Mapping]]] = ..., models: _Optional[_Iterable[_Union[ObservedModel, _Mapping]]] = ..., memory_capacity_bytes: _Optional[int] = ..., memory_used_bytes: _Optional[int] = ..., latency: _Optional[_Iterable[_Union[VersionLatency, _Mapping]]] = ..., reported_at_ms: _Optional[int] = ...) -> None: ...

class ObservedModel(_message.Message):
    __slots__ = ("worker_id", "model", "generation", "snapshot_revision", "ok", "error", "loaded_versions", "updated_at_ms")
    WORKER_ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    GENERATION_FIELD_NUMBER: _ClassVar[int]
    SNAPSHOT_REVISION_FIELD_NUMBER: _ClassVar[int]
    OK_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    LOADED_VERSIONS_FIELD_NUMBER: _ClassVar[int]
    UPDATED_AT_MS_FIELD_NUMBER: _ClassVar[int]
    worker_id: str
    model: str
    generation: int
    snapshot_revision: int
    ok: bool
    error: str
    loaded_versions: _containers.RepeatedScalarFieldContainer[int]
    updated_at_ms: int
    def __init__(self, worker_id: _Optional[str] = ..., model: _Optional[str] = ..., generation: _Optional[int] = ..., snapshot_revision: _Optional[int] = ..., ok: _Optional[bool] = ..., error: _Optional[str] = ..., loaded_versions: _Optional[_Iterable[int]] = ..., updated_at_ms: _Optional[int] = ...) -> None: ...

class Token(_message.Message):
    __slots__ = ("id", "role", "description", "secret_sha256", "created_at_ms", "created_by", "revoked_at_ms", "revoked_by")
    ID_FIELD_NUMBER: _ClassVar[int]
    ROLE_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    SECRET_SHA256_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_MS_FIELD_NUMBER: _ClassVar[int]
    CREATED_BY_FIELD_NUMBER: _ClassVar[int]
    REVOKED_AT_MS_FIELD_NUMBER: _ClassVar[int]
    REVOKED_BY_FIELD_NUMBER: _ClassVar[int]
    id: str
    role: Role
    description: str
    secret_sha256: bytes
    created_at_ms: int
    created_by: str
    revoked_at_ms: int
    revoked_by: str
    def __init__(self, id: _Optional[str] = ..., role: _Optional[_Union[Role, str]] = ..., description: _Optional[str] = ..., secret_sha256: _Optional[bytes] = ..., created_at_ms: _Optional[int] = ..., created_by: _Optional[str] = ..., revoked_at_ms: _Optional[int] = ..., revoked_by: _Optional[str] = ...) -> None: ...

class AuditEntry(_message.Message):
    __slots__ = ("time_ms", "principal", "role", "method", "request", "code", "message", "replica", "peer")
    TIME_MS_FIELD_NUMBER: _ClassVar[int]
    PRINCIPAL_FIELD_NUMBER: _ClassVar[int]
    ROLE_FIELD_NUMBER: _ClassVar[int]
    METHOD_FIELD_NUMBER: _ClassVar[int]
    REQUEST_FIELD_NUMBER: _ClassVar[int]
    CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    REPLICA_FIELD_NUMBER: _ClassVar[int]
    PEER_FIELD_NUMBER: _ClassVar[int]
    time_ms: int
    principal: str
    role: Role
    method: str
    request: str
    code: str
    message: str
    replica: str
    peer: str
    def __init__(self, time_ms: _Optional[int] = ..., principal: _Optional[str] = ..., role: _Optional[_Union[Role, str]] = ..., method: _Optional[str] = ..., request: _Optional[str] = ..., code: _Optional[str] = ..., message: _Optional[str] = ..., replica: _Optional[str] = ..., peer: _Optional[str] = ...) -> None: ...
