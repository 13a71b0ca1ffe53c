from lmaas.protos.lmaas.control.v1 import resources_pb2 as _resources_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class DeployRequest(_message.Message):
    __slots__ = ("model", "spec", "expected_generation")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    SPEC_FIELD_NUMBER: _ClassVar[int]
    EXPECTED_GENERATION_FIELD_NUMBER: _ClassVar[int]
    model: str
    spec: _resources_pb2.DeploymentSpec
    expected_generation: int
    def __init__(self, model: _Optional[str] = ..., spec: _Optional[_Union[_resources_pb2.DeploymentSpec, _Mapping]] = ..., expected_generation: _Optional[int] = ...) -> None: ...

class DeployResponse(_message.Message):
    __slots__ = ("deployment", "rollout", "revision")
    DEPLOYMENT_FIELD_NUMBER: _ClassVar[int]
    ROLLOUT_FIELD_NUMBER: _ClassVar[int]
    REVISION_FIELD_NUMBER: _ClassVar[int]
    deployment: _resources_pb2.Deployment
    rollout: _resources_pb2.Rollout
    revision: int
    def __init__(self, deployment: _Optional[_Union[_resources_pb2.Deployment, _Mapping]] = ..., rollout: _Optional[_Union[_resources_pb2.Rollout, _Mapping]] = ..., revision: _Optional[int] = ...) -> None: ...

class RollbackRequest(_message.Message):
    __slots__ = ("model", "to_version", "expected_generation")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    TO_VERSION_FIELD_NUMBER: _ClassVar[int]
    EXPECTED_GENERATION_FIELD_NUMBER: _ClassVar[int]
    model: str
    to_version: int
    expected_generation: int
    def __init__(self, model: _Optional[str] = ..., to_version: _Optional[int] = ..., expected_generation: _Optional[int] = ...) -> None: ...

class RollbackResponse(_message.Message):
    __slots__ = ("deployment", "rollout", "revision")
    DEPLOYMENT_FIELD_NUMBER: _ClassVar[int]
    ROLLOUT_FIELD_NUMBER: _ClassVar[int]
    REVISION_FIELD_NUMBER: _ClassVar[int]
    deployment: _resources_pb2.Deployment
    rollout: _resources_pb2.Rollout
    revision: int
    def __init__(self, deployment: _Optional[_Union[_resources_pb2.Deployment, _Mapping]] = ..., rollout: _Optional[_Union[_resources_pb2.Rollout, _Mapping]] = ..., revision: _Optional[int] = ...) -> None: ...

class GetDeploymentRequest(_message.Message):
    __slots__ = ("model",)
    MODEL_FIELD_NUMBER: _ClassVar[int]
    model: str
    def __init__(self, model: _Optional[str] = ...) -> None: ...

class GetDeploymentResponse(_message.Message):
    __slots__ = ("deployment", "rollout", "revision")
    DEPLOYMENT_FIELD_NUMBER: _ClassVar[int]
    ROLLOUT_FIELD_NUMBER: _ClassVar[int]
    REVISION_FIELD_NUMBER: _ClassVar[int]
    deployment: _resources_pb2.Deployment
    rollout: _resources_pb2.Rollout
    revision: int
    def __init__(self, deployment: _Optional[_Union[_resources_pb2.Deployment, _Mapping]] = ..., rollout: _Optional[_Union[_resources_pb2.Rollout, _Mapping]] = ..., revision: _Optional[int] = ...) -> None: ...

class ListDeploymentsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListDeploymentsResponse(_message.Message):
    __slots__ = ("deployments", "rollouts", "revision")
    DEPLOYMENTS_FIELD_NUMBER: _ClassVar[int]
    ROLLOUTS_FIELD_NUMBER: _ClassVar[int]
    REVISION_FIELD_NUMBER: _ClassVar[int]
    deployments: _containers.RepeatedCompositeFieldContainer[_resources_pb2.Deployment]
    rollouts: _containers.RepeatedCompositeFieldContainer[_resources_pb2.Rollout]
    revision: int
    def __init__(self, deployments: _Optional[_Iterable[_Union[_resources_pb2.Deployment, _Mapping]]] = ..., rollouts: _Optional[_Iterable[_Union[_resources_pb2.Rollout, _Mapping]]] = ..., revision: _Optional[int] = ...) -> None: ...

class WatchRolloutRequest(_message.Message):
    __slots__ = ("model", "generation")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    GENERATION_FIELD_NUMBER: _ClassVar[int]
    model: str
    generation: int
    def __init__(self, model: _Optional[str] = ..., generation: _Optional[int] = ...) -> None: ...

class WatchRolloutResponse(_message.Message):
    __slots__ = ("rollout", "revision")
    ROLLOUT_FIELD_NUMBER: _ClassVar[int]
    REVISION_FIELD_NUMBER: _ClassVar[int]
    rollout: _resources_pb2.Rollout
    revision: int
    def __init__(self, rollout: _Optional[_Union[_resources_pb2.Rollout, _Mapping]] = ..., revision: _Optional[int] = ...) -> None: ...
