"""JSON bodies of the REST API: pydantic models (they make the OpenAPI schemas) and converters from the protos.

The resources are the gRPC API's (``protos/lmaas/control/v1/resources.proto``) with the same field names;
enums read as short lowercase words (``"reader"``, ``"progressing"``) and times stay Unix epoch milliseconds.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from lmaas.control_plane.tokens import role_name
from lmaas.protos.lmaas.control.v1 import resources_pb2 as pb
from pydantic import BaseModel, ConfigDict, Field

__all__ = [
    "AccuracyMeasurement",
    "ArtifactStored",
    "AuditEntry",
    "AuditPage",
    "Canary",
    "CreateModel",
    "CreateToken",
    "Deploy",
    "Deployment",
    "DeploymentList",
    "DeploymentRecord",
    "DeploymentSpec",
    "DeploymentState",
    "Derivation",
    "HeldVersion",
    "Model",
    "ModelList",
    "ModelVersion",
    "ObservedModel",
    "Problem",
    "Rollback",
    "Rollout",
    "SpeedMeasurement",
    "Token",
    "TokenCreated",
    "TokenList",
    "UploadStatus",
    "VersionCreated",
    "VersionList",
    "Worker",
    "WorkerList",
    "WorkerRollout",
    "audit_entry",
    "deployment",
    "model",
    "rollout",
    "token",
    "version",
    "worker",
]

RoleName = Literal["reader", "deployer", "worker", "admin"]
Phase = Literal["unspecified", "progressing", "succeeded", "failed", "superseded"]
WorkerState = Literal["unspecified", "pending", "acked", "nacked"]
Revision = Annotated[int, Field(description="Store revision this answer reflects (orders answers and events).",
                                 examples=[42])]
Name = Annotated[str, Field(pattern=r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$", description="Model name.",
                            examples=["demo"])]
TimeMs = Annotated[int, Field(description="Unix epoch milliseconds; 0 = never.", examples=[1764586800000])]
Digest = Annotated[str, Field(description="Lowercase hex sha256 of the artifact.",
                              examples=["ab" * 32])]


class _Out(BaseModel):
    model_config = ConfigDict(extra="forbid")


class _In(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Problem(BaseModel):
    """An error, as RFC 9457 ``application/problem+json``, with LMaaS's error code."""

    type: str = Field(description="URI naming the problem type: urn:lmaas:error:<CODE>.",
                      examples=["urn:lmaas:error:NOT_FOUND"])
    title: str = Field(description="The HTTP status phrase.", examples=["Not Found"])
    status: int = Field(description="The HTTP status code.", examples=[404])
    detail: str = Field(description="What went wrong, for people.", examples=["model 'demo' is not found or not ready"])
    code: str = Field(description="LMaaS error code (the gRPC status name, the same on both transports).",
                      examples=["NOT_FOUND"])
    instance: str = Field(description="The request path.", examples=["/api/v1/models/demo"])
    errors: list[dict[str, object]] | None = Field(
        None, description="For request validation errors: each field's location, message and type."
    )
    reason: str | None = Field(
        None, description="The exact error (google.rpc.ErrorInfo reason, as gRPC's rich status carries it).",
        examples=["MODEL_NOT_FOUND"],
    )
    metadata: dict[str, str] | None = Field(
        None, description="The error's fields (ErrorInfo metadata), e.g. the model's name.",
        examples=[{"name": "demo", "version": ""}],
    )


# -- models and versions ------------------------------------------------------------------------------------


class Model(_Out):
    """A named model: the container of its immutable versions."""

    name: Name
    description: str = Field(description="Free text.", examples=["y = 2x + 1"])
    metadata: dict[str, str] = Field(description="User metadata, never interpreted.", examples=[{"team": "search"}])
    latest_version: int = Field(description="Highest version number assigned so far (0: none yet).", examples=[3])
    created_at_ms: TimeMs
    created_by: str = Field(description="Who created it: token:<id>, or anonymous without auth.",
                            examples=["token:0123456789ab"])


class ModelList(_Out):
    """Every model."""

    models: list[Model] = Field(description="Every model, sorted by name.")
    revision: Revision


class CreateModel(_In):
    """A model to create (pushing a version creates its model too)."""

    name: Name
    description: str = Field("", max_length=4096, description="Free text.", examples=["fraud scorer"])
    metadata: dict[str, str] = Field(default_factory=dict, description="User metadata (at most 64 entries).",
                                     examples=[{"team": "risk"}])


class SpeedMeasurement(_Out):
    """Throughput of a derived version beside its parent (one process, same engine and threads)."""

    batch: int = Field(description="Batch size of each timed call.", examples=[1], ge=0, le=(1 << 31) - 1)
    parent_samples_per_s: float = Field(description="The parent's samples per second.", examples=[5506.0])
    derived_samples_per_s: float = Field(description="The derived version's samples per second.", examples=[10571.0])
    speedup: float = Field(description="derived / parent.", examples=[1.92])


class AccuracyMeasurement(_Out):
    """Accuracy of a derived version against the reference outputs."""

    reference: str = Field(description="eval (expected outputs given), eval-parent or sampled-parent (the "
                                       "parent's outputs on the eval inputs or on sampled inputs).",
                           examples=["sampled-parent"])
    samples: int = Field(description="Samples compared.", examples=[64], ge=0, le=(1 << 63) - 1)
    max_abs_error: float = Field(description="Largest absolute difference.", examples=[0.0018])
    mean_abs_error: float = Field(description="Mean absolute difference.", examples=[0.00028])
    max_rel_error: float = Field(description="max_abs_error / largest absolute reference value.", examples=[0.018])
    mean_rel_error: float = Field(description="mean_abs_error / mean absolute reference value.", examples=[0.004])
    top1_agreement: float | None = Field(description="Share of samples whose arg-max agrees (classification).",
                                         examples=[1.0])


class Derivation(_Out):
    """How a derived version was made from its parent (`lmaas model optimize`) and what it measured."""

    recipe: str = Field(description="int8-dynamic, int8-static, fp16, ort-optimize, tune, prune, merge, compress.",
                        examples=["int8-static"])
    params: dict[str, str] = Field(description="Every recipe parameter, values as JSON text.",
                                   examples=[{"per_channel": "true"}])
    tool_versions: dict[str, str] = Field(description="Versions of the tools used.", examples=[{"onnx": "1.17.0"}])
    parent_size_bytes: int = Field(description="The parent's artifact size.", examples=[3680000], ge=0,
                                   le=(1 << 63) - 1)
    size_bytes: int = Field(description="This version's artifact size.", examples=[956800], ge=0, le=(1 << 63) - 1)
    speed: list[SpeedMeasurement] = Field(description="Throughput beside the parent per batch size.")
    accuracy: AccuracyMeasurement | None = Field(description="Accuracy against the reference; null if not measured.")
    max_error: float = Field(description="The gate passed (largest allowed max_rel_error); 0 = none.",
                             examples=[0.02])
    merged_versions: list[Annotated[int, Field(ge=1, le=(1 << 63) - 1)]] = Field(
        description="Other versions merged into this one (merge).", examples=[[2, 3]])


class ModelVersion(_Out):
    """One immutable version: a verified artifact, its format and configuration, and its lineage."""

    model: Name
    version: int = Field(description="Version number, assigned by the control plane from 1.", examples=[2])
    digest: Digest
    format: str = Field(description="Artifact format: onnx, torchscript, torch_export or llm (a directory).",
                        examples=["onnx"])
    config_json: str = Field(description="Model configuration as JSON text; empty = defaults.", examples=[""])
    size_bytes: int = Field(description="Artifact size in bytes.", examples=[1234])
    created_at_ms: TimeMs
    created_by: str = Field(description="Who registered it.", examples=["token:0123456789ab"])
    parent_version: int = Field(description="The version it derives from; 0 = none.", examples=[1])
    description: str = Field(description="Free text (release notes...).", examples=["retrained on May data"])
    derivation: Derivation | None = Field(default=None, description="How it was derived from parent_version "
                                          "(`lmaas model optimize`); null for a plain push.")


class VersionList(_Out):
    """A model's version history."""

    versions: list[ModelVersion] = Field(description="The model's history: every version, oldest first.")
    revision: Revision


class VersionCreated(ModelVersion):
    """The version an upload registered (``version`` is its number)."""

    revision: Revision
    deduplicated: bool = Field(description="The artifact was stored already: no byte was written.")
    existing: bool = Field(description="The latest version had the same artifact and settings: no new version.")


class ArtifactStored(_Out):
    """A stored, verified file of a directory version."""

    digest: Digest
    size_bytes: int = Field(description="Its size in bytes.", examples=[1048576])
    deduplicated: bool = Field(description="It was stored already: no byte was written.")


class UploadStatus(_Out):
    """What the control plane holds of an artifact: resume an interrupted upload from ``offset``."""

    digest: Digest
    exists: bool = Field(description="The complete, verified artifact is stored: upload nothing.")
    offset: int = Field(description="Bytes kept of an interrupted upload (the whole size when it exists).",
                        examples=[1048576])


def model(m: pb.Model) -> Model:
    return Model(name=m.name, description=m.description, metadata=dict(m.metadata), latest_version=m.latest_version,
                 created_at_ms=m.created_at_ms, created_by=m.created_by)


def _version_fields(v: pb.ModelVersion) -> dict[str, object]:
    return {
        "model": v.model, "version": v.version, "digest": v.digest, "format": v.format, "config_json": v.config_json,
        "size_bytes": v.size_bytes, "created_at_ms": v.created_at_ms, "created_by": v.created_by,
        "parent_version": v.parent_version, "description": v.description,
        "derivation": derivation(v.derivation) if v.HasField("derivation") else None,
    }


def derivation(d: pb.Derivation) -> Derivation:
    a = d.accuracy
    accuracy = AccuracyMeasurement(
        reference=a.reference, samples=a.samples, max_abs_error=a.max_abs_error, mean_abs_error=a.mean_abs_error,
        max_rel_error=a.max_rel_error, mean_rel_error=a.mean_rel_error,
        top1_agreement=a.top1_agreement if a.HasField("top1_agreement") else None,
    ) if d.HasField("accuracy") else None
    return Derivation(
        recipe=d.recipe, params=dict(d.params), tool_versions=dict(d.tool_versions),
        parent_size_bytes=d.parent_size_bytes, size_bytes=d.size_bytes,
        speed=[SpeedMeasurement(batch=m.batch, parent_samples_per_s=m.parent_samples_per_s,
                                derived_samples_per_s=m.derived_samples_per_s, speedup=m.speedup) for m in d.speed],
        accuracy=accuracy, max_error=d.max_error, merged_versions=list(d.merged_versions),
    )


def version(v: pb.ModelVersion) -> ModelVersion:
    return ModelVersion.model_validate(_version_fields(v))


def version_created(v: pb.ModelVersion, revision: int, deduplicated: bool, existing: bool) -> VersionCreated:
    return VersionCreated.model_validate(
        {**_version_fields(v), "revision": revision, "deduplicated": deduplicated, "existing": existing}
    )


# -- deployments --------------------------------------------------------------------------------------------


class Canary(_In):
    """A second version taking a share of the traffic."""

    version: int = Field(ge=1, description="The canary version.", examples=[3])
    weight: int = Field(ge=0, le=100, description="Percent of the requests naming no version it takes.",
                        examples=[20])


class Deploy(_In):
    """The desired state to serve: a stable version and an optional canary."""

    model_config = ConfigDict(
        extra="forbid", json_schema_extra={"examples": [{"version": 2}, {"version": 2, "canary": {"version": 3,
                                                                                                    "weight": 20}}]}
    )

    version: int = Field(ge=1, description="The stable version.", examples=[2])
    canary: Canary | None = Field(None, description="An optional canary beside the stable version.")
    pools: list[str] = Field(default_factory=list, max_length=64,
                             description="Worker pools that serve the model; empty = every pool.", examples=[[]])
    lazy: bool = Field(False, description="Load on first request (workers download at deploy time); an idle lazy "
                                          "version may be unloaded, least recently used first, to make room.")
    expected_generation: int = Field(
        0, ge=-1, description="Compare-and-swap guard: the generation you read (0 = none; -1 = only if never "
                              "deployed). A mismatch answers 409 ABORTED.", examples=[0],
    )


class Rollback(_In):
    """Roll back to the previous good deployment, or to a given version."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{}, {"to": 1}]})

    to: int | None = Field(None, ge=1, description="Serve this version; omitted = the previous good deployment.",
                           examples=[1])
    expected_generation: int = Field(0, ge=0, description="Compare-and-swap guard (0 = none).", examples=[0])


class DeploymentSpec(_Out):
    """Which versions serve, and how traffic splits between them."""

    stable_version: int = Field(description="Version taking requests naming no version (0: not served).",
                                examples=[2])
    canary_version: int = Field(description="Canary version; 0 = none.", examples=[3])
    canary_weight: int = Field(description="Percent of requests naming no version sent to the canary.",
                               examples=[20])
    pools: list[str] = Field(description="Worker pools that serve it; empty = every pool.", examples=[[]])
    lazy: bool = Field(description="Loaded on first request, not at deploy time.", examples=[False])


class DeploymentRecord(_Out):
    """One entry of a deployment's history."""

    generation: int = Field(description="The generation this record created.", examples=[4])
    spec: DeploymentSpec = Field(description="The desired state it set.")
    reason: str = Field(description="deploy, rollback or auto-rollback.", examples=["deploy"])
    message: str = Field(description="The rollback target, or the error behind an automatic rollback.",
                         examples=[""])
    created_at_ms: TimeMs
    created_by: str = Field(description="Who made the change (control-plane: automatic).",
                            examples=["token:0123456789ab"])
    failed: bool = Field(description="A worker rejected this record's rollout; rollbacks skip it.")


class Deployment(_Out):
    """The desired state of a model's serving, and its history."""

    model: Name
    spec: DeploymentSpec = Field(description="The current desired state.")
    generation: int = Field(description="Increases by one with every change.", examples=[4])
    history: list[DeploymentRecord] = Field(description="Records, oldest first; the last is the current spec.")
    updated_at_ms: TimeMs


class WorkerRollout(_Out):
    """One worker's part in a rollout."""

    worker_id: str = Field(description="The worker's id.", examples=["up-worker"])
    state: WorkerState = Field(description="pending, acked (loaded, warmed, routed) or nacked.", examples=["acked"])
    error: str = Field(description="The worker's error for a nack.", examples=[""])


class Rollout(_Out):
    """Progress of the latest change of a model's deployment."""

    model: Name
    generation: int = Field(description="The deployment generation being rolled out.", examples=[4])
    spec: DeploymentSpec = Field(description="The spec of that generation.")
    phase: Phase = Field(description="progressing until every worker acks (succeeded) or one nacks (failed); "
                                     "superseded when a newer change replaced it.", examples=["succeeded"])
    message: str = Field(description="Why it ended this way (the nack's error for failed).",
                         examples=["acknowledged by 1 worker"])
    reason: str = Field(description="deploy, rollback or auto-rollback.", examples=["deploy"])
    started_at_ms: TimeMs
    finished_at_ms: TimeMs
    restored_generation: int = Field(description="For failed: the generation that restored the previous state.",
                                     examples=[0])
    workers: list[WorkerRollout] = Field(description="Each connected worker of the model's pools.")


class DeploymentState(_Out):
    """A deployment with its latest rollout."""

    deployment: Deployment = Field(description="The desired state and its history.")
    rollout: Rollout = Field(description="The latest rollout, with per-worker progress.")
    revision: Revision


class DeploymentList(_Out):
    """Every deployment."""

    deployments: list[DeploymentState] = Field(description="Every deployed model, sorted by name.")
    revision: Revision


def _spec(s: pb.DeploymentSpec) -> DeploymentSpec:
    return DeploymentSpec(stable_version=s.stable_version, canary_version=s.canary_version,
                          canary_weight=s.canary_weight, pools=list(s.pools), lazy=s.lazy)


def deployment(d: pb.Deployment) -> Deployment:
    history = [
        DeploymentRecord(generation=r.generation, spec=_spec(r.spec), reason=r.reason, message=r.message,
                         created_at_ms=r.created_at_ms, created_by=r.created_by, failed=r.failed)
        for r in d.history
    ]
    return Deployment(model=d.model, spec=_spec(d.spec), generation=d.generation, history=history,
                      updated_at_ms=d.updated_at_ms)


def _enum_word(enum: object, value: int, prefix: str) -> Any:  # a Literal member; pydantic checks it
    name: str = enum.Name(value)  # type: ignore[attr-defined]
    return name.removeprefix(prefix).lower()


def rollout(r: pb.Rollout) -> Rollout:
    workers = [
        WorkerRollout(worker_id=w.worker_id, state=_enum_word(pb.WorkerRolloutState, w.state,
                                                              "WORKER_ROLLOUT_STATE_"), error=w.error)
        for w in r.workers
    ]
    return Rollout(
        model=r.model, generation=r.generation, spec=_spec(r.spec),
        phase=_enum_word(pb.RolloutPhase, r.phase, "ROLLOUT_PHASE_"),
        message=r.message, reason=r.reason, started_at_ms=r.started_at_ms, finished_at_ms=r.finished_at_ms,
        restored_generation=r.restored_generation, workers=workers,
    )


# -- workers ------------------------------------------------------------------------------------------------


class HeldVersion(_Out):
    """A version a worker holds loaded."""

    model: str = Field(description="The model.", examples=["demo"])
    version: int = Field(description="The version.", examples=[2])
    digest: Digest
    memory_bytes: int = Field(description="Memory it took, measured by the worker: growth of its RSS around the "
                                          "load and warm-up (0 = not measured).", examples=[104857600])
    memory_peak_bytes: int = Field(description="Highest RSS growth sampled during its load.", examples=[127926272])


class ObservedModel(_Out):
    """What a worker reported for one model in its latest acknowledgement."""

    model: str = Field(description="The model.", examples=["demo"])
    generation: int = Field(description="Deployment generation of the acknowledged snapshot.", examples=[4])
    snapshot_revision: int = Field(description="The snapshot revision acknowledged.", examples=[17])
    ok: bool = Field(description="True for an ack, false for a nack.")
    error: str = Field(description="The worker's error for a nack.", examples=[""])
    loaded_versions: list[int] = Field(description="Versions of the model it holds loaded.", examples=[[1, 2]])
    updated_at_ms: TimeMs


class Worker(_Out):
    """A connected worker, as the control plane holding its stream sees it."""

    worker_id: str = Field(description="The worker's id.", examples=["up-worker"])
    pool: str = Field(description="Its pool.", examples=["default"])
    inference_address: str = Field(description="host:port of its OIP v2 gRPC server.", examples=["127.0.0.1:8001"])
    control_plane: str = Field(description="The control-plane replica holding its stream.", examples=["up"])
    connected_at_ms: TimeMs
    desired_revision: int = Field(description="Revision of the latest snapshot sent to it.", examples=[17])
    acked_revision: int = Field(description="Revision of the latest snapshot it acknowledged.", examples=[17])
    held: list[HeldVersion] = Field(description="What it holds loaded, with the memory each version took.")
    models: list[ObservedModel] = Field(description="Per model: what it acknowledged.")
    memory_capacity_bytes: int = Field(description="Memory it may use: its --memory-limit, else its cgroup limit "
                                                   "or RAM (0 = not reported).", examples=[314572800])
    memory_used_bytes: int = Field(description="Its resident memory (RSS) at its latest report.",
                                   examples=[157286400])
    reported_at_ms: int = Field(description="When it last reported memory or latency (Unix epoch ms; 0 = never).",
                                examples=[1764586800000])


class WorkerList(_Out):
    """Connected workers."""

    workers: list[Worker] = Field(description="Connected workers, sorted by id.")
    revision: Revision


def worker(w: pb.WorkerInfo) -> Worker:
    return Worker(
        worker_id=w.worker_id, pool=w.pool, inference_address=w.inference_address, control_plane=w.control_plane,
        connected_at_ms=w.connected_at_ms, desired_revision=w.desired_revision, acked_revision=w.acked_revision,
        held=[HeldVersion(model=h.model, version=h.version, digest=h.digest, memory_bytes=h.memory_bytes,
                          memory_peak_bytes=h.memory_peak_bytes) for h in w.held],
        memory_capacity_bytes=w.memory_capacity_bytes, memory_used_bytes=w.memory_used_bytes,
        reported_at_ms=w.reported_at_ms,
        models=[
            ObservedModel(model=o.model, generation=o.generation, snapshot_revision=o.snapshot_revision, ok=o.ok,
                          error=o.error, loaded_versions=list(o.loaded_versions), updated_at_ms=o.updated_at_ms)
            for o in w.models
        ],
    )


# -- tokens and audit ---------------------------------------------------------------------------------------


class Token(_Out):
    """An API token (never its secret)."""

    id: str = Field(description="Public id: 12 lowercase hex characters.", examples=["0123456789ab"])
    role: RoleName | Literal["none"] = Field(description="What it may do.", examples=["deployer"])
    description: str = Field(description="Whose token it is, what for.", examples=["CI pipeline"])
    created_at_ms: TimeMs
    created_by: str = Field(description="Who created it (bootstrap: imported at start).", examples=["bootstrap"])
    revoked_at_ms: TimeMs
    revoked_by: str = Field(description="Who revoked it.", examples=[""])


class TokenList(_Out):
    """Tokens (never their secrets)."""

    tokens: list[Token] = Field(description="Tokens, sorted by id.")
    revision: Revision


class CreateToken(_In):
    """A token to create."""

    role: RoleName = Field(description="reader, deployer, worker or admin.", examples=["deployer"])
    description: str = Field("", max_length=256, description="Whose token it is, what for.", examples=["CI pipeline"])


class TokenCreated(_Out):
    """A new token and its secret."""

    token: Token = Field(description="The token's record.")
    secret: str = Field(description="The bearer token, shown only here: send it as 'Authorization: Bearer ...'.",
                        examples=["lmaas_0123456789ab_" + "x" * 43])
    revision: Revision


def _role(role: int) -> Any:  # a Literal member; pydantic checks it
    return role_name(role)


def token(t: pb.Token) -> Token:
    return Token(id=t.id, role=_role(t.role), description=t.description,
                 created_at_ms=t.created_at_ms, created_by=t.created_by, revoked_at_ms=t.revoked_at_ms,
                 revoked_by=t.revoked_by)


class AuditEntry(_Out):
    """One audited mutation (or denied attempt), from either transport."""

    time_ms: TimeMs
    principal: str = Field(description="token:<id>, cert:<CN>, anonymous or unauthenticated.",
                           examples=["token:0123456789ab"])
    role: RoleName | Literal["none"] = Field(description="The principal's role.", examples=["admin"])
    method: str = Field(description="The gRPC method the call is (REST routes name theirs).",
                        examples=["/lmaas.control.v1.Deployments/Deploy"])
    request: str = Field(description="Short text of the request (no secrets).",
                         examples=['model: "demo" spec { stable_version: 2 }'])
    code: str = Field(description="OK or the error code.", examples=["OK"])
    message: str = Field(description="The error message; empty when OK.", examples=[""])
    peer: str = Field(description="The caller's address (http:HOST:PORT for REST).", examples=["http:127.0.0.1:50312"])
    replica: str = Field(description="The control-plane replica that served the call.", examples=["up"])


class AuditPage(_Out):
    """A page of the audit trail."""

    entries: list[AuditEntry] = Field(description="Newest first.")
    next: str | None = Field(description="Cursor of the next (older) page: pass it as ?before=; null = no more.",
                             examples=[None])
    revision: Revision


def audit_entry(e: pb.AuditEntry) -> AuditEntry:
    return AuditEntry(time_ms=e.time_ms, principal=e.principal, role=_role(e.role),
                      method=e.method, request=e.request, code=e.code, message=e.message, peer=e.peer,
                      replica=e.replica)
