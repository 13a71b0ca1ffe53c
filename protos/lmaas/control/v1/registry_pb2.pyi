from lmaas.protos.lmaas.control.v1 import resources_pb2 as _resources_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class CreateModelRequest(_message.Message):
    __slots__ = ("name", "description", "metadata")
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
    name: str
    description: str
    metadata: _containers.ScalarMap[str, str]
    def __init__(self, name: _Optional[str] = ..., description: _Optional[str] = ..., metadata: _Optional[_Mapping[str, str]] = ...) -> None: ...

class CreateModelResponse(_message.Message):
    __slots__ = ("model", "revision")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    REVISION_FIELD_NUMBER: _ClassVar[int]
    model: _resources_pb2.Model
    revision: int
    def __init__(self, model: _Optional[_Union[_resources_pb2.Model, _Mapping]] = ..., revision: _Optional[int] = ...) -> None: ...

class GetModelRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class GetModelResponse(_message.Message):
    __slots__ = ("model", "revision")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    REVISION_FIELD_NUMBER: _ClassVar[int]
    model: _resources_pb2.Model
    revision: int
    def __init__(self, model: _Optional[_Union[_resources_pb2.Model, _Mapping]] = ..., revision: _Optional[int] = ...) -> None: ...

class ListModelsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListModelsResponse(_message.Message):
    __slots__ = ("models", "revision")
    MODELS_FIELD_NUMBER: _ClassVar[int]
    REVISION_FIELD_NUMBER: _ClassVar[int]
    models: _containers.RepeatedCompositeFieldContainer[_resources_pb2.Model]
    revision: int
    def __init__(self, models: _Optional[_Iterable[_Union[_resources_pb2.Model, _Mapping]]] = ..., revision: _Optional[int] = ...) -> None: ...

class GetVersionRequest(_message.Message):
    __slots__ = ("model", "version")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    model: str
    version: int
    def __init__(self, model: _Optional[str] = ..., version: _Optional[int] = ...) -> None: ...

class GetVersionResponse(_message.Message):
    __slots__ = ("version", "revision")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    REVISION_FIELD_NUMBER: _ClassVar[int]
    version: _resources_pb2.ModelVersion
    revision: int
    def __init__(self, version: _Optional[_Union[_resources_pb2.ModelVersion, _Mapping]] = ..., revision: _Optional[int] = ...) -> None: ...

class ListVersionsRequest(_message.Message):
    __slots__ = ("model",)
    MODEL_FIELD_NUMBER: _ClassVar[int]
    model: str
    def __init__(self, model: _Optional[str] = ...) -> None: ...

class ListVersionsResponse(_message.Message):
    __slots__ = ("versions", "revision")
    VERSIONS_FIELD_NUMBER: _ClassVar[int]
    REVISION_FIELD_NUMBER: _ClassVar[int]
    versions: _containers.RepeatedCompositeFieldContainer[_resources_pb2.ModelVersion]
    revision: int
    def __init__(self, versions: _Optional[_Iterable[_Union[_resources_pb2.ModelVersion, _Mapping]]] = ..., revision: _Optional[int] = ...) -> None: ...

class GetUploadStatusRequest(_message.Message):
    __slots__ = ("digest",)
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    digest: str
    def __init__(self, digest: _Optional[str] = ...) -> None: ...

class GetUploadStatusResponse(_message.Message):
    __slots__ = ("exists", "offset")
    EXISTS_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    exists: bool
    offset: int
    def __init__(self, exists: _Optional[bool] = ..., offset: _Optional[int] = ...) -> None: ...

class CreateVersionHeader(_message.Message):
    __slots__ = ("model", "format", "config_json", "digest", "size_bytes", "offset", "parent_version", "description", "derivation")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    FORMAT_FIELD_NUMBER: _ClassVar[int]
    CONFIG_JSON_FIELD_NUMBER: _ClassVar[int]
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    PARENT_VERSION_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    DERIVATION_FIELD_NUMBER: _ClassVar[int]
    model: str
    format: str
    config_json: str
    digest: str
    size_bytes: int
    offset: int
    parent_version: int
    description: str
    derivation: _resources_pb2.Derivation
    def __init__(self, model: _Optional[str] = ..., format: _Optional[str] = ..., config_json: _Optional[str] = ..., digest: _Optional[str] = ..., size_bytes: _Optional[int] = ..., offset: _Optional[int] = ..., parent_version: _Optional[int] = ..., description: _Optional[str] = ..., derivation: _Optional[_Union[_resources_pb2.Derivation, _Mapping]] = ...) -> None: ...

class CreateVersionRequest(_message.Message):
    __slots__ = ("header", "chunk")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    CHUNK_FIELD_NUMBER: _ClassVar[int]
    header: CreateVersionHeader
    chunk: bytes
    def __init__(self, header: _Optional[_Union[CreateVersionHeader, _Mapping]] = ..., chunk: _Optional[bytes] = ...) -> None: ...

class CreateVersionResponse(_message.Message):
    __slots__ = ("version", "revision", "deduplicated", "existing")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    REVISION_FIELD_NUMBER: _ClassVar[int]
    DEDUPLICATED_FIELD_NUMBER: _ClassVar[int]
    EXISTING_FIELD_NUMBER: _ClassVar[int]
    version: _resources_pb2.ModelVersion
    revision: int
    deduplicated: bool
    existing: bool
    def __init__(self, version: _Optional[_Union[_resources_pb2.ModelVersion, _Mapping]] = ..., revision: _Optional[int] = ..., deduplicated: _Optional[bool] = ..., existing: _Optional[bool] = ...) -> None: ...

class UploadArtifactHeader(_message.Message):
    __slots__ = ("digest", "size_bytes", "offset")
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    digest: str
    size_bytes: int
    offset: int
    def __init__(self, digest: _Optional[str] = ..., size_bytes: _Optional[int] = ..., offset: _Optional[int] = ...) -> None: ...

class UploadArtifactRequest(_message.Message):
    __slots__ = ("header", "chunk")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    CHUNK_FIELD_NUMBER: _ClassVar[int]
    header: UploadArtifactHeader
    chunk: bytes
    def __init__(self, header: _Optional[_Union[UploadArtifactHeader, _Mapping]] = ..., chunk: _Optional[bytes] = ...) -> None: ...

class UploadArtifactResponse(_message.Message):
    __slots__ = ("digest", "size_bytes", "deduplicated")
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    DEDUPLICATED_FIELD_NUMBER: _ClassVar[int]
    digest: str
    size_bytes: int
    deduplicated: bool
    def __init__(self, digest: _Optional[str] = ..., size_bytes: _Optional[int] = ..., deduplicated: _Optional[bool] = ...) -> None: ...
