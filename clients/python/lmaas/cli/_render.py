"""Rich tables and messages for the control-plane commands (stdout for data, stderr for chatter)."""

from __future__ import annotations

import time
from collections.abc import Sequence

from rich.console import Console
from rich.table import Table

from lmaas.client.control import phase_name
from lmaas.protos.lmaas.control.v1 import resources_pb2 as pb

__all__ = [
    "deployments_table",
    "err",
    "models_table",
    "out",
    "rollout_line",
    "size",
    "tokens_table",
    "versions_table",
    "workers_table",
]

out = Console(highlight=False)
err = Console(stderr=True, highlight=False)
if not out.is_terminal:  # pipes and logs: do not squeeze tables into 80 columns
    out.width = 200

_PHASE_STYLE = {"succeeded": "green", "failed": "red", "progressing": "yellow", "superseded": "dim"}
_WORKER_STATE = {
    pb.WORKER_ROLLOUT_STATE_PENDING: "[yellow]pending[/]",
    pb.WORKER_ROLLOUT_STATE_ACKED: "[green]ACK[/]",
    pb.WORKER_ROLLOUT_STATE_NACKED: "[red]NACK[/]",
}


def when(ms: int) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ms / 1000)) if ms else "-"


def size(n: int) -> str:
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{n} B"


def spec_text(spec: pb.DeploymentSpec) -> str:
    if not spec.stable_version:
        return "(not served)"
    text = f"v{spec.stable_version}"
    if spec.canary_version:
        text += f" + canary v{spec.canary_version} @ {spec.canary_weight}%"
    return text + " (lazy)" * spec.lazy


def phase(rollout: pb.Rollout) -> str:
    name = phase_name(rollout.phase)
    return f"[{_PHASE_STYLE.get(name, 'white')}]{name}[/]"


def rollout_line(rollout: pb.Rollout) -> str:
    workers = ", ".join(f"{w.worker_id} {_WORKER_STATE.get(w.state, '?')}" for w in rollout.workers)
    text = f"{rollout.model} generation {rollout.generation}: {phase(rollout)}"
    if workers:
        text += f" ({workers})"
    if rollout.message:
        text += f" — {rollout.message}"
    return text


def models_table(models: Sequence[pb.Model]) -> Table:
    table = Table(title="Models")
    for column in ("name", "latest", "description", "created", "by"):
        table.add_column(column, justify="right" if column == "latest" else "left")
    for m in models:
        table.add_row(m.name, str(m.latest_version or "-"), m.description, when(m.created_at_ms), m.created_by)
    return table


def versions_table(name: str, versions: Sequence[pb.ModelVersion], spec: pb.DeploymentSpec | None) -> Table:
    table = Table(title=f"Versions of {name}")
    for column in ("version", "serving", "format", "sha256", "size", "created", "by", "parent", "description"):
        table.add_column(column, justify="right" if column in ("version", "size", "parent") else "left")
    for v in versions:
        serving = ""
        if spec is not None and v.version == spec.stable_version:
            serving = f"[green]stable {100 - spec.canary_weight}%[/]"
        elif spec is not None and v.version == spec.canary_version:
            serving = f"[yellow]canary {spec.canary_weight}%[/]"
        table.add_row(
            str(v.version), serving, v.format, v.digest[:12], size(v.size_bytes), when(v.created_at_ms), v.created_by,
            str(v.parent_version or ""), v.description,
        )
    return table


def deployments_table(deployments: Sequence[pb.Deployment], rollouts: Sequence[pb.Rollout]) -> Table:
    table = Table(title="Deployments")
    for column in ("model", "serving", "generation", "rollout", "workers", "updated", "message"):
        table.add_column(column, justify="right" if column == "generation" else "left")
    for d, r in zip(deployments, rollouts, strict=True):
        acked = sum(w.state == pb.WORKER_ROLLOUT_STATE_ACKED for w in r.workers)
        table.add_row(
            d.model, spec_text(d.spec), str(d.generation), f"{phase(r)} (gen {r.generation})",
            f"{acked}/{len(r.workers)} ACK", when(d.updated_at_ms), r.message,
        )
    return table


def workers_table(workers: Sequence[pb.WorkerInfo]) -> Table:
    table = Table(title="Workers")
    for column in ("worker", "pool", "inference", "control plane", "revision", "models", "memory used / capacity",
                   "held (measured memory)"):
        table.add_column(column)
    for w in workers:
        revision = f"{w.acked_revision}/{w.desired_revision}"
        if w.acked_revision != w.desired_revision:
            revision = f"[yellow]{revision}[/]"
        models = []
        for o in w.models:
            loaded = ",".join(f"v{v}" for v in o.loaded_versions)
            models.append(f"{o.model} {loaded}" + ("" if o.ok else f" [red]NACK: {o.error}[/]"))
        memory = f"{size(w.memory_used_bytes)} / {size(w.memory_capacity_bytes)}" if w.memory_capacity_bytes else "-"
        held = [f"{h.model} v{h.version} {size(h.memory_bytes) if h.memory_bytes else '?'}" for h in w.held]
        table.add_row(
            w.worker_id, w.pool, w.inference_address, w.control_plane, revision, "\n".join(models) or "-", memory,
            "\n".join(held) or "-",
        )
    return table


_ROLE = {pb.ROLE_READER: "reader", pb.ROLE_DEPLOYER: "deployer", pb.ROLE_WORKER: "worker", pb.ROLE_ADMIN: "admin"}


def tokens_table(tokens: Sequence[pb.Token]) -> Table:
    table = Table(title="Tokens")
    for column in ("id", "role", "description", "created", "by", "revoked"):
        table.add_column(column)
    for t in tokens:
        table.add_row(t.id, _ROLE.get(t.role, "?"), t.description, when(t.created_at_ms), t.created_by,
                      f"{when(t.revoked_at_ms)} by {t.revoked_by}" if t.revoked_at_ms else "")
    return table
