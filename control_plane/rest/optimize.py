"""Routes of optimised versions: register a derived version with its derivation, and read a model's lineage.

The optimisation itself runs where the client runs (``lmaas model optimize`` or :func:`lmaas.optimize.optimize`:
download the parent, apply the recipe, measure beside the parent, gate), so the control plane stays light. A
REST client that did that work uploads the artifact with ``PUT /api/v1/artifacts/{digest}`` and registers it here
as a child of its parent with the recipe and figures; the control plane re-checks the figures against the gate
they name, so an over-the-gate version is never registered whoever computed it.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Request, Response
from lmaas.control_plane.registry import FORMATS, NewVersion
from lmaas.control_plane.rest import schemas as s
from lmaas.control_plane.rest.access import AuthorizedRoute, principal, route_options
from lmaas.protos.errors import FailedPrecondition, InvalidArgument
from lmaas.protos.lmaas.control.v1 import registry_pb2
from lmaas.protos.lmaas.control.v1 import resources_pb2 as pb
from pydantic import BaseModel, ConfigDict, Field

__all__ = ["DerivedVersion", "Lineage", "LineageNode", "router"]

_REG = "/lmaas.control.v1.ModelRegistry/"
router = APIRouter(route_class=AuthorizedRoute, tags=["models"])
ModelName = Annotated[str, Path(description="Model name.", examples=["demo"], max_length=128)]
VersionNumber = Annotated[int, Path(description="The parent version's number (from 1).", examples=[1], ge=1,
                                    le=(1 << 63) - 1)]


class DerivedVersion(BaseModel):
    """A derived version to register: an uploaded artifact, how it was made from the parent and what it measured."""

    model_config = ConfigDict(extra="forbid")

    digest: s.Digest
    format: str = Field(default="onnx", description=f"Artifact format: {', '.join(FORMATS)}.",
                        examples=["onnx"])
    config_json: str = Field(default="", description="Model configuration as JSON text; empty = defaults.",
                             examples=[""])
    description: str = Field(default="", max_length=4096, description="Free text for the version.",
                             examples=["int8-static of version 1"])
    derivation: s.Derivation = Field(description="Recipe, parameters, tool versions, sizes, speed-ups and accuracy.")


class LineageNode(BaseModel):
    """One version in a lineage tree, with its recipe and figures (plain pushes have no recipe)."""

    model_config = ConfigDict(extra="forbid")

    version: int = Field(description="Version number.", examples=[2])
    parent_version: int = Field(description="The version it derives from; 0 = none.", examples=[1])
    recipe: str = Field(description="The recipe that made it; empty for a pushed version.", examples=["int8-static"])
    description: str = Field(description="The version's free text.", examples=["int8-static of version 1"])
    speedup: dict[str, float] = Field(description="Speed-up over the parent per batch size (key: batch).",
                                      examples=[{"1": 1.92, "8": 2.44}])
    max_rel_error: float | None = Field(description="Largest relative error against the reference; null if none.",
                                        examples=[0.018])
    top1_agreement: float | None = Field(description="Top-1 agreement with the reference (classification).",
                                         examples=[1.0])
    size_ratio: float | None = Field(description="Artifact size over the parent's; null for a pushed version.",
                                     examples=[0.26])
    merged_versions: list[int] = Field(description="Other versions merged into it (merge).")
    children: list[LineageNode] = Field(description="Versions derived from this one, by version number.")


class Lineage(BaseModel):
    """A model's versions as a forest: roots are versions without a parent, each with its derived versions."""

    model_config = ConfigDict(extra="forbid")

    model: s.Name
    roots: list[LineageNode] = Field(description="Versions without a (known) parent, oldest first.")
    revision: s.Revision


def _plane(request: Request):  # type: ignore[no-untyped-def]
    return request.app.state.plane


def to_proto(d: s.Derivation) -> pb.Derivation:
    """The REST derivation as the stored message."""
    out = pb.Derivation(
        recipe=d.recipe, params=d.params, tool_versions=d.tool_versions, parent_size_bytes=d.parent_size_bytes,
        size_bytes=d.size_bytes, max_error=d.max_error, merged_versions=d.merged_versions,
        speed=[pb.SpeedMeasurement(batch=m.batch, parent_samples_per_s=m.parent_samples_per_s,
                                   derived_samples_per_s=m.derived_samples_per_s, speedup=m.speedup)
               for m in d.speed],
    )
    if d.accuracy is not None:
        a = d.accuracy
        out.accuracy.CopyFrom(pb.AccuracyMeasurement(
            reference=a.reference, samples=a.samples, max_abs_error=a.max_abs_error, mean_abs_error=a.mean_abs_error,
            max_rel_error=a.max_rel_error, mean_rel_error=a.mean_rel_error))
        if a.top1_agreement is not None:
            out.accuracy.top1_agreement = a.top1_agreement
    return out


def check_gate(name: str, parent: int, d: s.Derivation) -> None:
    """FailedPrecondition when the derivation's own figures are over the gate it names (max_error 0 = none)."""
    if not d.recipe:
        raise InvalidArgument(f"a derived version of model '{name}' version {parent} needs its recipe")
    if d.max_error > 0 and d.accuracy is not None and d.accuracy.max_rel_error > d.max_error:
        raise FailedPrecondition(
            f"recipe {d.recipe!r} on model '{name}' version {parent} is over its accuracy gate: max rel error "
            f"{d.accuracy.max_rel_error:.4g} > max_error {d.max_error:g}; no version registered")


@router.post(
    "/models/{name}/versions/{version}/derived", summary="Register a derived (optimised) version", status_code=201,
    response_model=s.VersionCreated,
    responses={200: {"model": s.VersionCreated, "description": "The latest version is this derived version "
                                                               "already: no new version."}},
    openapi_extra=route_options(_REG + "CreateVersion"),
)
async def create_derived(name: ModelName, version: VersionNumber, body: DerivedVersion, request: Request,
                         response: Response) -> s.VersionCreated:
    """Register an uploaded artifact (`PUT /api/v1/artifacts/{digest}`) as a version derived from `version`,
    with the recipe and figures of `lmaas model optimize` (which runs the recipe, measures and gates where the
    client runs). The parent must exist (409 FAILED_PRECONDITION otherwise); figures over the gate they name
    (`accuracy.max_rel_error` > `max_error`) answer 409 FAILED_PRECONDITION and register nothing."""
    plane = _plane(request)
    try:
        derivation = to_proto(body.derivation)
    except (ValueError, TypeError) as exc:  # what protobuf refuses (e.g. a string it cannot encode)
        raise InvalidArgument(f"derivation of model '{name}' version {version}: {exc}") from None
    new = NewVersion(model=name, digest=body.digest, format=body.format, config_json=body.config_json,
                     parent_version=version, description=body.description, derivation=derivation)
    request.state.audit = registry_pb2.CreateVersionHeader(
        model=name, format=body.format, digest=body.digest, parent_version=version, description=body.description,
        config_json=body.config_json, derivation=derivation,
    )
    plane.models.validate(new)
    check_gate(name, version, body.derivation)
    made, revision, existing = await plane.models.register_version(new, created_by=principal(request).name)
    if existing:
        response.status_code = 200
    return s.version_created(made, revision, True, existing)


def _node(v: pb.ModelVersion, children: list[LineageNode]) -> LineageNode:
    d = v.derivation if v.HasField("derivation") else None
    acc = d.accuracy if d is not None and d.HasField("accuracy") else None
    return LineageNode(
        version=v.version, parent_version=v.parent_version, recipe=d.recipe if d else "", description=v.description,
        speedup={str(m.batch): m.speedup for m in d.speed} if d else {},
        max_rel_error=acc.max_rel_error if acc else None,
        top1_agreement=acc.top1_agreement if acc is not None and acc.HasField("top1_agreement") else None,
        size_ratio=d.size_bytes / d.parent_size_bytes if d and d.parent_size_bytes else None,
        merged_versions=list(d.merged_versions) if d else [], children=children,
    )


def lineage(versions: list[pb.ModelVersion]) -> list[LineageNode]:
    """The versions as a forest: each under its parent (a missing parent makes a root), by version number."""
    known = {v.version for v in versions}
    by_parent: dict[int, list[pb.ModelVersion]] = {}
    for v in versions:
        by_parent.setdefault(v.parent_version if v.parent_version in known else 0, []).append(v)

    def grow(parent: int) -> list[LineageNode]:
        return [_node(v, grow(v.version)) for v in sorted(by_parent.get(parent, []), key=lambda v: v.version)]

    return grow(0)


@router.get("/models/{name}/lineage", summary="Lineage of a model's versions", response_model=Lineage,
            openapi_extra=route_options(_REG + "ListVersions"))
async def get_lineage(name: ModelName, request: Request) -> Lineage:
    """Every version of the model as a tree: derived versions under their parents, each with its recipe,
    speed-up per batch size, error and size ratio (what `lmaas model versions NAME` prints)."""
    versions, revision = await _plane(request).models.list_versions(name)
    return Lineage(model=name, roots=lineage(list(versions)), revision=revision)
