"""Routes of models, versions, uploads and artifacts: thin calls of the Registry and the ArtifactStore.

An upload is the request body itself (``application/octet-stream``), streamed to the artifact store in
1 MiB pieces (never held whole) through the same :meth:`ArtifactStore.receive` as gRPC's CreateVersion,
which verifies the sha256 before the blob appears. Resuming is the gRPC protocol too: ``GET
/api/v1/uploads/{digest}`` (GetUploadStatus) says how many bytes are kept, and the next POST sends the rest
with ``X-LMaaS-Offset`` (and ``X-LMaaS-Size``, the whole size). A client that disconnects mid-body leaves
what arrived for a resume. A directory version (format ``llm``) is pushed as gRPC does it: each file with
``PUT /api/v1/artifacts/{digest}`` (UploadArtifact), then its manifest as the version's body.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import APIRouter, Header, Path, Request, Response
from fastapi.responses import StreamingResponse
from lmaas.control_plane.registry import FORMATS, NewVersion
from lmaas.control_plane.rest import schemas as s
from lmaas.control_plane.rest.access import AuthorizedRoute, principal, route_options
from lmaas.control_plane.rest.problems import RangeNotSatisfiable
from lmaas.protos.errors import InvalidArgument, PayloadTooLarge
from lmaas.protos.lmaas.control.v1 import registry_pb2
from starlette.requests import ClientDisconnect

__all__ = ["router"]

_REG = "/lmaas.control.v1.ModelRegistry/"
_PIECE = 1 << 20
router = APIRouter(route_class=AuthorizedRoute, tags=["models"])
ModelName = Annotated[str, Path(description="Model name.", examples=["demo"], max_length=128)]
VersionNumber = Annotated[int, Path(description="Version number (from 1).", examples=[1], ge=1,
                                    le=(1 << 63) - 1)]


def _plane(request: Request):  # type: ignore[no-untyped-def]
    return request.app.state.plane


@router.get("/models", summary="List models", response_model=s.ModelList, openapi_extra=route_options(
    _REG + "ListModels"))
async def list_models(request: Request) -> s.ModelList:
    """Every model, sorted by name."""
    models, revision = await _plane(request).models.list_models()
    return s.ModelList(models=[s.model(m) for m in models], revision=revision)


@router.post("/models", summary="Create a model", status_code=201, response_model=s.Model,
             openapi_extra=route_options(_REG + "CreateModel"))
async def create_model(body: s.CreateModel, request: Request) -> s.Model:
    """Create an empty model with a description and metadata (409 ALREADY_EXISTS if the name is taken).
    Pushing a version creates its model too."""
    request.state.audit = registry_pb2.CreateModelRequest(name=body.name, description=body.description,
                                                          metadata=body.metadata)
    model, _ = await _plane(request).models.create_model(
        body.name, description=body.description, metadata=body.metadata, created_by=principal(request).name
    )
    return s.model(model)


@router.get("/models/{name}", summary="Get a model", response_model=s.Model,
            openapi_extra=route_options(_REG + "GetModel"))
async def get_model(name: ModelName, request: Request) -> s.Model:
    """The model's description, metadata, creator and latest version number."""
    model, _ = await _plane(request).models.get_model(name)
    return s.model(model)


@router.get("/models/{name}/versions", summary="Version history", response_model=s.VersionList,
            openapi_extra=route_options(_REG + "ListVersions"))
async def list_versions(name: ModelName, request: Request) -> s.VersionList:
    """Every version of the model, oldest first: creator, time, digest, size, format, parent."""
    versions, revision = await _plane(request).models.list_versions(name)
    return s.VersionList(versions=[s.version(v) for v in versions], revision=revision)


@router.get("/models/{name}/versions/{version}", summary="Get a version", response_model=s.ModelVersion,
            openapi_extra=route_options(_REG + "GetVersion"))
async def get_version(name: ModelName, version: VersionNumber, request: Request) -> s.ModelVersion:
    """One version: digest, size, format, configuration, creator, time and parent."""
    v, _ = await _plane(request).models.get_version(name, version)
    return s.version(v)


_UPLOAD_BODY = {
    "requestBody": {
        "required": True,
        "description": "The artifact's bytes (from X-LMaaS-Offset on, when resuming).",
        "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}},
    },
}


@router.post(
    "/models/{name}/versions", summary="Push a version (upload an artifact)", status_code=201,
    response_model=s.VersionCreated,
    responses={200: {"model": s.VersionCreated, "description": "The latest version has this artifact and these "
                                                               "settings already: no new version."}},
    openapi_extra={**route_options(_REG + "CreateVersion"), **_UPLOAD_BODY},
)
async def create_version(
    name: ModelName,
    request: Request,
    response: Response,
    fmt: Annotated[str, Header(alias="X-LMaaS-Format", description=f"Artifact format: {', '.join(FORMATS)}.",
                               examples=["onnx"])],
    digest: Annotated[str, Header(alias="X-LMaaS-Sha256", description="Lowercase hex sha256 of the whole artifact.",
                                  examples=["ab" * 32])],
    offset: Annotated[int, Header(alias="X-LMaaS-Offset", ge=0, le=(1 << 63) - 1,
                                  description="Where the body starts in the artifact: 0, or GET /api/v1/uploads/"
                                              "{digest} offset to resume.")] = 0,
    size: Annotated[int | None, Header(alias="X-LMaaS-Size", ge=0, le=(1 << 63) - 1,
                                       description="The whole artifact's size (default: offset + Content-Length).",
                                       examples=[1048576])] = None,
    parent: Annotated[int, Header(alias="X-LMaaS-Parent-Version", ge=0, le=(1 << 63) - 1,
                                  description="The version this one derives from; 0 = none.")] = 0,
    description: Annotated[str, Header(alias="X-LMaaS-Description", max_length=4096,
                                       description="Free text for the version.")] = "",
    config: Annotated[str, Header(alias="X-LMaaS-Config", description="Model configuration as JSON text "
                                                                     "(lmaas.server.config); empty = defaults.")] = "",
) -> s.VersionCreated:
    """Upload an artifact as the next version of the model (created when missing, as `lmaas model push`).

    The body is verified against X-LMaaS-Sha256 before anything is stored: a mismatch answers 400 DATA_LOSS
    and stores nothing. Body and headers of the same artifact twice answer the existing version (200).
    """
    plane = _plane(request)
    new = NewVersion(model=name, digest=digest, format=fmt, config_json=config, parent_version=parent,
                     description=description)
    request.state.audit = registry_pb2.CreateVersionHeader(
        model=name, format=fmt, digest=digest, size_bytes=size or 0, offset=offset, parent_version=parent,
        description=description, config_json=config,
    )
    plane.models.validate(new)
    size = _whole_size(request, offset, size, plane.artifacts.max_bytes)
    deduplicated = await plane.models.receive_artifact(new, size, offset, _pieces(request))
    version, revision, existing = await plane.models.register_version(new, created_by=principal(request).name)
    if existing:
        response.status_code = 200
    return s.version_created(version, revision, deduplicated, existing)


async def _pieces(request: Request) -> AsyncIterator[bytes]:
    """The body in pieces of about 1 MiB; ends early (a truncated upload, kept for a resume) on disconnect."""
    buffer = bytearray()
    try:
        async for chunk in request.stream():
            buffer += chunk
            if len(buffer) >= _PIECE:
                yield bytes(buffer)
                buffer.clear()
    except ClientDisconnect:
        pass
    if buffer:
        yield bytes(buffer)


@router.put(
    "/artifacts/{digest}", summary="Upload a file of a directory version (an LLM's weights, tokenizer...)",
    response_model=s.ArtifactStored, openapi_extra={**route_options(_REG + "UploadArtifact"), **_UPLOAD_BODY},
)
async def upload_artifact(
    digest: Annotated[str, Path(description="Lowercase hex sha256 of the file.", examples=["ab" * 32])],
    request: Request,
    offset: Annotated[int, Header(alias="X-LMaaS-Offset", ge=0, le=(1 << 63) - 1,
                                  description="Where the body starts in the file: 0, or GET /api/v1/uploads/"
                                              "{digest} offset to resume.")] = 0,
    size: Annotated[int | None, Header(alias="X-LMaaS-Size", ge=0, le=(1 << 63) - 1,
                                       description="The whole file's size (default: offset + Content-Length).",
                                       examples=[1048576])] = None,
) -> s.ArtifactStored:
    """Store one verified, content-addressed file (no version yet): the files of a directory version go up
    one by one, then its manifest is pushed as the version (`X-LMaaS-Format: llm`). Stored once, however often
    it is sent; resumable like a version upload."""
    plane = _plane(request)
    request.state.audit = registry_pb2.UploadArtifactHeader(digest=digest, size_bytes=size or 0, offset=offset)
    size = _whole_size(request, offset, size, plane.artifacts.max_bytes)
    deduplicated = await plane.artifacts.receive(digest, size, offset, _pieces(request))
    return s.ArtifactStored(digest=digest, size_bytes=plane.artifacts.size(digest), deduplicated=deduplicated)


def _whole_size(request: Request, offset: int, size: int | None, limit: int) -> int:
    """The artifact's whole size: X-LMaaS-Size, else offset + Content-Length; 413 beyond ``limit``."""
    if size is None:
        length = request.headers.get("content-length")
        if length is None or not length.isdigit():
            raise InvalidArgument("send Content-Length, or X-LMaaS-Size with a chunked body")
        size = offset + int(length)
    if size > limit:
        raise PayloadTooLarge(f"artifact of {size} bytes exceeds the limit of {limit} bytes")
    return size


@router.get("/uploads/{digest}", summary="Upload status (resume)", response_model=s.UploadStatus,
            openapi_extra=route_options(_REG + "GetUploadStatus"))
async def upload_status(
    digest: Annotated[str, Path(description="Lowercase hex sha256 of the artifact.", examples=["ab" * 32])],
    request: Request,
) -> s.UploadStatus:
    """Whether the artifact is stored, else how many bytes of an interrupted upload are kept."""
    artifacts = _plane(request).artifacts
    if artifacts.exists(digest):
        return s.UploadStatus(digest=digest, exists=True, offset=artifacts.size(digest))
    return s.UploadStatus(digest=digest, exists=False, offset=artifacts.upload_offset(digest))


@router.get(
    "/models/{name}/versions/{version}/artifact", summary="Download a version's artifact",
    response_class=StreamingResponse,
    responses={200: {"description": "The artifact's bytes.",
                     "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}},
               206: {"description": "The requested range of the artifact's bytes.",
                     "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}}},
    openapi_extra=route_options("GET /api/v1/models/{name}/versions/{version}/artifact"),
)
async def download(
    name: ModelName, version: VersionNumber, request: Request,
    range_: Annotated[str | None, Header(alias="Range", description="One range, bytes=START-[END] (RFC 9110).",
                                         examples=["bytes=0-1023"])] = None,
) -> StreamingResponse:
    """The artifact's bytes (its sha256 in the ETag); a single `Range` answers 206 with that part."""
    plane = _plane(request)
    v, _ = await plane.models.get_version(name, version)
    total = plane.artifacts.size(v.digest)
    start, end = 0, total - 1
    status = 200
    if range_:
        start, end = _range(range_, total)
        status = 206
    headers = {"ETag": f'"{v.digest}"', "Accept-Ranges": "bytes", "Content-Length": str(max(0, end - start + 1)),
               "Content-Disposition": f'attachment; filename="{name}-{version}.{v.format}"'}
    if status == 206:
        headers["Content-Range"] = f"bytes {start}-{end}/{total}"
    remaining = end - start + 1

    async def body() -> AsyncIterator[bytes]:
        left = remaining
        async for _, data in plane.artifacts.read(v.digest, start):
            if left <= 0:
                break
            piece = data[:left]
            left -= len(piece)
            yield piece

    return StreamingResponse(body(), status_code=status, media_type="application/octet-stream", headers=headers)


def _range(header: str, total: int) -> tuple[int, int]:
    unit, _, spec = header.partition("=")
    if unit.strip().lower() != "bytes" or "," in spec:
        raise RangeNotSatisfiable(f"unsupported Range {header!r}: send one range, bytes=START-[END]")
    first, _, last = spec.strip().partition("-")
    try:
        if first == "":  # the last N bytes
            count = int(last)
            return max(0, total - count), total - 1
        start = int(first)
        end = int(last) if last else total - 1
    except ValueError:
        raise RangeNotSatisfiable(f"invalid Range {header!r}") from None
    if start >= total or end < start:
        raise RangeNotSatisfiable(f"range {header!r} is outside the artifact of {total} bytes")
    return start, min(end, total - 1)
