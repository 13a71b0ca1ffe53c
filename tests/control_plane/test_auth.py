"""Control-plane authentication, roles, tokens and the audit trail: real servers, real stores, the real CLI."""

from __future__ import annotations

import stat
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import grpc.aio
import pytest
from cp_harness import (
    ADMIN_TOKEN,
    Stubs,
    address,
    channel,
    deploy,
    eventually,
    expect_status,
    lmaas,
    push,
    running,
    start_control_plane,
    worker,
    write_scale_onnx,
)
from grpc_health.v1 import health_pb2, health_pb2_grpc
from lmaas.client.control import ControlPlaneClient
from lmaas.control_plane import keys
from lmaas.control_plane.app import SERVICE_NAMES, ControlPlane
from lmaas.control_plane.audit import AuditLog
from lmaas.control_plane.auth import AUDITED, GRANTS, METHODS, AuthInterceptor, Permission
from lmaas.control_plane.store.base import Store
from lmaas.control_plane.tokens import Tokens, generate_token, parse_token
from lmaas.protos._pool import POOL
from lmaas.protos.errors import PermissionDenied, Unauthenticated
from lmaas.protos.interceptors import ErrorInterceptor
from lmaas.protos.lmaas.control.v1 import deployments_pb2, registry_pb2, tokens_pb2, workers_pb2
from lmaas.protos.lmaas.control.v1 import resources_pb2 as pb
from lmaas.protos.lmaas.worker.v1 import artifacts_pb2, sync_pb2
from processes import ServerProcess, start_worker

pytest_plugins = ["cp_fixtures"]  # cp, stubs

OK = grpc.StatusCode.OK
DENIED = grpc.StatusCode.PERMISSION_DENIED
UNAUTH = grpc.StatusCode.UNAUTHENTICATED


async def make_token(stubs: Stubs, role: int, description: str = "") -> str:
    reply = await stubs.tokens.CreateToken(tokens_pb2.CreateTokenRequest(role=role, description=description))
    assert reply.secret.startswith(f"lmaas_{reply.token.id}_") and not reply.token.secret_sha256
    return str(reply.secret)


async def status_of(call: object) -> grpc.StatusCode:
    try:
        result = await call  # type: ignore[misc]
        if hasattr(result, "__aiter__"):
            async for _ in result:
                break
    except grpc.aio.AioRpcError as exc:
        return exc.code()
    return OK


async def group_statuses(cp: ControlPlane, token: str | None) -> dict[Permission, grpc.StatusCode]:
    """One call per permission group, as ``token``; NOT_FOUND and friends mean "let in"."""
    async with channel(cp, token) as ch:
        s = Stubs(ch)
        codes = {
            Permission.READ: await status_of(s.registry.ListModels(registry_pb2.ListModelsRequest())),
            Permission.DEPLOY: await status_of(
                s.deployments.Deploy(deployments_pb2.DeployRequest(
                    model="absent", spec=pb.DeploymentSpec(stable_version=1)))
            ),
            # no hello: INVALID_ARGUMENT once let in
            Permission.SYNC: await status_of(s.sync.Sync(iter([sync_pb2.WorkerMessage()])).read()),
            Permission.DOWNLOAD: await status_of(
                s.artifacts.Download(artifacts_pb2.DownloadRequest(digest="0" * 64)).read()
            ),
            Permission.ADMIN: await status_of(s.tokens.ListTokens(tokens_pb2.ListTokensRequest())),
        }
    return {p: (OK if c not in (DENIED, UNAUTH) else c) for p, c in codes.items()}


async def test_each_role_is_allowed_and_denied_per_method_group(stubs: Stubs, cp: ControlPlane) -> None:
    for role, granted in GRANTS.items():
        token = await make_token(stubs, role, f"role {role}")
        codes = await group_statuses(cp, token)
        assert codes == {p: OK if p in granted else DENIED for p in Permission}, (role, codes)
    assert await group_statuses(cp, None) == dict.fromkeys(Permission, UNAUTH)


async def test_table_covers_every_method_and_denies_unknown_ones(tmp_path: Path, store: Store) -> None:
    served = {f"/{name}/{m.name}" for name in SERVICE_NAMES for m in POOL.FindServiceByName(name).methods}
    rpcs = {m for m in METHODS if m.startswith("/")}  # the other rows are REST routes without an RPC twin
    assert served == rpcs, "every RPC needs exactly one entry in lmaas.control_plane.auth.METHODS"
    assert all(m.split(" ", 1)[0] in ("GET", "PUT", "POST", "DELETE") for m in set(METHODS) - rpcs)
    assert set(METHODS) >= AUDITED
    assert all(METHODS[m] in (Permission.DEPLOY, Permission.ADMIN) for m in AUDITED)

    # a method that is served but not listed is refused, even to an admin
    tokens = Tokens(store)
    await tokens.import_token(ADMIN_TOKEN, pb.ROLE_ADMIN, "admin")
    server = grpc.aio.server(interceptors=[ErrorInterceptor(), AuthInterceptor(tokens, AuditLog(store, "t"))])

    async def echo(request: bytes, context: object) -> bytes:
        return request

    server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler(
        "lmaas.control.v1.Unlisted", {"Echo": grpc.unary_unary_rpc_method_handler(echo)})])
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
            call = ch.unary_unary("/lmaas.control.v1.Unlisted/Echo")(
                b"x", metadata=(("authorization", f"Bearer {ADMIN_TOKEN}"),))
            details = await expect_status(DENIED, call)
            assert "not open to any role" in details
    finally:
        await server.stop(0)


async def test_bad_credentials_are_unauthenticated_and_probes_stay_open(cp: ControlPlane) -> None:
    request = registry_pb2.ListModelsRequest()
    tid = parse_token(ADMIN_TOKEN)[0]  # type: ignore[index]
    for header in (
        "Bearer not-a-token", f"Bearer lmaas_{tid}_{'x' * 43}", f"Bearer {generate_token()}",  # wrong or unknown
        f"Basic {ADMIN_TOKEN}", "Bearer ", f"bearer {ADMIN_TOKEN[:-1]}",
    ):
        async with grpc.aio.insecure_channel(address(cp)) as ch:
            call = Stubs(ch).registry.ListModels(request, metadata=(("authorization", header),))
            assert "token" in await expect_status(UNAUTH, call)
    async with grpc.aio.insecure_channel(address(cp)) as ch:
        assert (await Stubs(ch).registry.ListModels(
            request, metadata=(("authorization", f"bearer {ADMIN_TOKEN}"),))).revision > 0  # scheme is case-blind
        health = await health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(service=""))
        assert health.status == health_pb2.HealthCheckResponse.SERVING


async def test_revoked_tokens_are_rejected_and_stay_revoked(store: Store, tmp_path: Path) -> None:
    async with running(store, tmp_path) as cp, channel(cp) as admin_ch:
        admin = Stubs(admin_ch)
        token = await make_token(admin, pb.ROLE_DEPLOYER, "ci")
        token_id = parse_token(token)[0]  # type: ignore[index]
        async with channel(cp, token) as ch:
            assert (await Stubs(ch).registry.ListModels(registry_pb2.ListModelsRequest())).revision > 0
            revoked = await admin.tokens.RevokeToken(tokens_pb2.RevokeTokenRequest(id=token_id))
            assert revoked.token.revoked_at_ms > 0 and revoked.token.revoked_by == "token:00000000ad01"
            await expect_status(UNAUTH, Stubs(ch).registry.ListModels(registry_pb2.ListModelsRequest()))
        again = await admin.tokens.RevokeToken(tokens_pb2.RevokeTokenRequest(id=token_id))  # idempotent
        assert again.token.revoked_at_ms == revoked.token.revoked_at_ms
        await expect_status(grpc.StatusCode.NOT_FOUND, admin.tokens.RevokeToken(
            tokens_pb2.RevokeTokenRequest(id="abcdefabcdef")))
        await expect_status(grpc.StatusCode.INVALID_ARGUMENT, admin.tokens.RevokeToken(
            tokens_pb2.RevokeTokenRequest(id="../../models")))
        listed = await admin.tokens.ListTokens(tokens_pb2.ListTokensRequest())
        assert token_id not in {t.id for t in listed.tokens} and all(not t.secret_sha256 for t in listed.tokens)
        everything = await admin.tokens.ListTokens(tokens_pb2.ListTokensRequest(include_revoked=True))
        assert token_id in {t.id for t in everything.tokens}
        # the bootstrap token, revoked by another admin, stays revoked after a restart that imports it again
        other = await make_token(admin, pb.ROLE_ADMIN, "second admin")
        async with channel(cp, other) as ch:
            await Stubs(ch).tokens.RevokeToken(tokens_pb2.RevokeTokenRequest(id=parse_token(ADMIN_TOKEN)[0]))  # type: ignore[index]
    async with running(store, tmp_path) as cp, channel(cp) as ch:
        await expect_status(UNAUTH, Stubs(ch).registry.ListModels(registry_pb2.ListModelsRequest()))


async def test_principal_is_recorded_and_mutations_are_audited(
    stubs: Stubs, cp: ControlPlane, caplog: pytest.LogCaptureFixture
) -> None:
    deployer = await make_token(stubs, pb.ROLE_DEPLOYER, "release bot")
    reader = await make_token(stubs, pb.ROLE_READER)
    did, rid = parse_token(deployer)[0], parse_token(reader)[0]  # type: ignore[index]
    caplog.set_level("INFO", logger="lmaas.audit")
    async with channel(cp, deployer) as ch, channel(cp, reader) as rch:
        s = Stubs(ch)
        v1 = await push(s, "m", b"weights")
        assert v1.created_by == f"token:{did}"
        reply = await deploy(s, "m", 1)
        assert reply.deployment.history[-1].created_by == f"token:{did}"
        model = await s.registry.GetModel(registry_pb2.GetModelRequest(name="m"))
        assert model.model.created_by == f"token:{did}"
        await expect_status(grpc.StatusCode.NOT_FOUND, deploy(s, "absent", 1))
        await expect_status(DENIED, deploy(Stubs(rch), "m", 1))
        await expect_status(DENIED, Stubs(rch).tokens.ListTokens(tokens_pb2.ListTokensRequest()))
    entries = await cp.audit.entries()
    seen = [(e.principal, e.method.rsplit("/", 1)[-1], e.code) for e in entries]
    admin = f"token:{parse_token(ADMIN_TOKEN)[0]}"  # type: ignore[index]
    assert seen == [
        (admin, "CreateToken", "OK"), (admin, "CreateToken", "OK"),
        (f"token:{did}", "CreateVersion", "OK"), (f"token:{did}", "Deploy", "OK"),
        (f"token:{did}", "Deploy", "NOT_FOUND"), (f"token:{rid}", "Deploy", "PERMISSION_DENIED"),
    ]  # reads (ListTokens) are not audited, even when denied
    create_version, deploy_ok = entries[2], entries[3]
    assert 'model: "m"' in create_version.request and "digest" in create_version.request
    assert 'model: "m"' in deploy_ok.request and deploy_ok.role == pb.ROLE_DEPLOYER and deploy_ok.time_ms > 0
    assert deploy_ok.replica and deploy_ok.peer.startswith("ipv")
    assert all("lmaas_" not in e.request for e in entries)  # secrets never reach the trail
    keys_ = [kv.key for kv in (await cp.store.range(keys.AUDIT)).kvs]
    assert len(keys_) == len(entries) and keys_ == sorted(keys_)
    logged = [r for r in caplog.records if r.name == "lmaas.audit"]
    assert any(f"token:{did}" in r.getMessage() and "Deploy" in r.getMessage() for r in logged)
    assert any(r.levelname == "WARNING" and "PERMISSION_DENIED" in r.getMessage() for r in logged)


async def test_audit_trail_is_trimmed_to_its_limit(store: Store) -> None:
    audit = AuditLog(store, "r1", limit=100, trim_every=1000)
    for i in range(130):
        await audit.record(pb.AuditEntry(time_ms=1_000 + i, principal="p", method=f"/m/{i}", code="OK"))
    assert await audit.trim() == 30
    entries = await audit.entries()
    assert len(entries) == 100 and entries[0].method == "/m/30" and entries[-1].method == "/m/129"
    assert await audit.trim() == 0


async def test_workers_sync_with_a_worker_token_and_not_with_a_reader_token(
    stubs: Stubs, cp: ControlPlane, tmp_path: Path
) -> None:
    await push(stubs, "m", b"weights")
    await deploy(stubs, "m", 1)
    worker_token = await make_token(stubs, pb.ROLE_WORKER, "fleet")
    async with worker(address(cp), tmp_path, "w-ok", token=worker_token) as w:
        await eventually(lambda: w.host.serving("m") == 1)
    reader = await make_token(stubs, pb.ROLE_READER)
    async with channel(cp, reader) as ch:
        hello = sync_pb2.WorkerMessage(hello=sync_pb2.Hello(worker_id="w-bad", pool="default"))
        call = Stubs(ch).sync.Sync(iter([hello]))
        await expect_status(DENIED, call.read())
    listed = await stubs.workers.ListWorkers(workers_pb2.ListWorkersRequest())
    assert "w-bad" not in {x.worker_id for x in listed.workers}


async def test_no_auth_lets_everyone_in_as_anonymous(store: Store, tmp_path: Path) -> None:
    async with running(store, tmp_path, auth=False) as cp:
        for token in (None, "lmaas_000000000000_stale-token-from-the-environment-000000000"):
            async with channel(cp, token) as ch:
                assert (await Stubs(ch).tokens.ListTokens(tokens_pb2.ListTokensRequest())).revision > 0
        async with channel(cp, None) as ch:
            v = await push(Stubs(ch), "m", b"w")
            assert v.created_by == "anonymous"
        assert [e.principal for e in await cp.audit.entries()] == ["anonymous"]


# -- processes and the CLI -------------------------------------------------------------------------------------


@pytest.fixture()
def secured(tmp_path: Path) -> Iterator[ServerProcess]:
    """A control-plane process that generates its own bootstrap token into ``tmp/secrets/admin.token``."""
    proc = start_control_plane(tmp_path, "--bootstrap-token-file", str(tmp_path / "secrets" / "admin.token"))
    try:
        yield proc
    finally:
        proc.stop()


def test_bootstrap_file_is_written_0600_and_imported_idempotently(secured: ServerProcess, tmp_path: Path) -> None:
    token_file = tmp_path / "secrets" / "admin.token"
    assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
    token = token_file.read_text().strip()
    assert parse_token(token) is not None
    assert str(token_file) in secured.output()  # the log says where the token is
    env = {"LMAAS_TOKEN": token}
    listed = lmaas("token", "list", address=secured.grpc, env=env).stdout
    assert parse_token(token)[0] in listed and "bootstrap" in listed  # type: ignore[index]
    secured.stop()
    again = start_control_plane(tmp_path, "--bootstrap-token-file", str(token_file))  # the file exists: reused
    try:
        assert token_file.read_text().strip() == token
        with ControlPlaneClient(again.grpc, token=token) as client:
            assert [t.id for t in client.list_tokens()] == [parse_token(token)[0]]  # type: ignore[index]
    finally:
        again.stop()


def test_bootstrap_from_env_and_malformed_bootstrap_files(tmp_path: Path) -> None:
    token, fleet = generate_token(), generate_token()
    proc = start_control_plane(tmp_path, "--bootstrap-token-file", str(tmp_path / "unused.token"),
                               env={"LMAAS_BOOTSTRAP_TOKEN": token, "LMAAS_BOOTSTRAP_WORKER_TOKEN": fleet})
    try:
        assert not (tmp_path / "unused.token").exists()  # the variable wins; the file is not written
        with ControlPlaneClient(proc.grpc, token=token) as client:
            roles = {t.id: t.role for t in client.list_tokens()}
        assert roles == {parse_token(token)[0]: pb.ROLE_ADMIN, parse_token(fleet)[0]: pb.ROLE_WORKER}  # type: ignore[index]
        with ControlPlaneClient(proc.grpc, token=fleet) as client, pytest.raises(PermissionDenied):
            client.list_models()  # a worker token syncs and downloads, nothing else
    finally:
        proc.stop()
    bad = tmp_path / "bad.token"
    bad.write_text("hunter2\n")
    with pytest.raises(RuntimeError, match="not an LMaaS token"):
        start_control_plane(tmp_path / "b", "--bootstrap-token-file", str(bad))


def test_no_auth_is_logged_as_a_warning(tmp_path: Path) -> None:
    proc = start_control_plane(tmp_path, "--no-auth")
    try:
        warning = [line for line in proc.log if "WARNING" in line and "authentication is OFF" in line]
        assert warning, proc.output()
        assert "demo" not in lmaas("model", "list", address=proc.grpc, env={"LMAAS_TOKEN": ""}).stdout
    finally:
        proc.stop()


def test_cli_token_create_list_revoke_and_roles(secured: ServerProcess, tmp_path: Path) -> None:
    admin = {"LMAAS_TOKEN": (tmp_path / "secrets" / "admin.token").read_text().strip()}
    cp = secured.grpc
    created = lmaas("token", "create", "--role", "reader", "--description", "dashboards", address=cp, env=admin)
    reader = created.stdout.strip()
    reader_id = parse_token(reader)[0]  # type: ignore[index]
    assert "not shown again" in created.stderr and reader_id in created.stderr
    deployer = lmaas("token", "create", "--role", "deployer", address=cp, env=admin).stdout.strip()
    listed = lmaas("token", "list", address=cp, env=admin).stdout
    assert reader_id in listed and "dashboards" in listed and "reader" in listed and reader not in listed

    model = write_scale_onnx(tmp_path / "model.onnx", 2.0)
    pushed = lmaas("model", "push", "scale", str(model), "-q", address=cp, env={"LMAAS_TOKEN": deployer})
    assert pushed.stdout.strip() == "1"
    lmaas("deploy", "scale", "1", address=cp, env={"LMAAS_TOKEN": deployer})
    assert "scale" in lmaas("model", "list", address=cp, env={"LMAAS_TOKEN": reader}).stdout
    denied = lmaas("deploy", "scale", "1", address=cp, env={"LMAAS_TOKEN": reader}, check=False)
    assert denied.returncode == 1 and "PERMISSION_DENIED" in denied.stderr and "Traceback" not in denied.stderr
    no_admin = lmaas("token", "list", address=cp, env={"LMAAS_TOKEN": deployer}, check=False)
    assert no_admin.returncode == 1 and "PERMISSION_DENIED" in no_admin.stderr
    anonymous = lmaas("status", address=cp, env={"LMAAS_TOKEN": ""}, check=False)
    assert anonymous.returncode == 1 and "UNAUTHENTICATED" in anonymous.stderr

    lmaas("token", "revoke", reader_id, address=cp, env=admin)
    revoked = lmaas("model", "list", address=cp, env={"LMAAS_TOKEN": reader}, check=False)
    assert revoked.returncode == 1 and "UNAUTHENTICATED" in revoked.stderr
    assert reader_id not in lmaas("token", "list", address=cp, env=admin).stdout
    assert reader_id in lmaas("token", "list", "--all", address=cp, env=admin).stdout
    assert "--role" in lmaas("token", "create", address=cp, env=admin, check=False).stderr  # role is required


def test_sdk_token_methods(secured: ServerProcess, tmp_path: Path) -> None:
    admin = (tmp_path / "secrets" / "admin.token").read_text().strip()
    with ControlPlaneClient(secured.grpc, token=admin) as client:
        reply = client.create_token("worker", description="rack 7")
        assert reply.token.role == pb.ROLE_WORKER and reply.token.created_by.startswith("token:")
        assert reply.token.id in {t.id for t in client.list_tokens()}
        with ControlPlaneClient(secured.grpc, token=reply.secret) as as_worker, pytest.raises(PermissionDenied):
            as_worker.list_models()
        assert client.revoke_token(reply.token.id).revoked_at_ms > 0
        assert reply.token.id not in {t.id for t in client.list_tokens()}
    with ControlPlaneClient(secured.grpc, token="") as anonymous, pytest.raises(Unauthenticated):
        anonymous.list_models()


def test_worker_process_syncs_with_a_worker_token_only(secured: ServerProcess, tmp_path: Path) -> None:
    admin = (tmp_path / "secrets" / "admin.token").read_text().strip()
    with ControlPlaneClient(secured.grpc, token=admin) as client:
        client.push("scale", write_scale_onnx(tmp_path / "m.onnx", 3.0))
        client.deploy("scale", 1)
        worker_token = client.create_token("worker").secret
        good = start_worker(None, "--control-plane", secured.grpc, "--worker-id", "good",
                            "--cache-dir", str(tmp_path / "c1"), env={"LMAAS_TOKEN": worker_token})
        bad = start_worker(None, "--control-plane", secured.grpc, "--worker-id", "bad",
                           "--cache-dir", str(tmp_path / "c2"), env={"LMAAS_TOKEN": ""})
        try:
            assert client.wait_rollout("scale", timeout=60).phase == pb.ROLLOUT_PHASE_SUCCEEDED
            deadline = time.monotonic() + 30
            while {w.worker_id for w in client.workers()} != {"good"} and time.monotonic() < deadline:
                time.sleep(0.1)
            assert {w.worker_id for w in client.workers()} == {"good"}
            deadline = time.monotonic() + 30
            while not any("UNAUTHENTICATED" in line for line in bad.log) and time.monotonic() < deadline:
                time.sleep(0.1)
            assert any("UNAUTHENTICATED" in line for line in bad.log), bad.output()
        finally:
            good.stop()
            bad.stop()


def test_no_secret_is_logged_or_stored_in_clear(secured: ServerProcess, tmp_path: Path) -> None:
    admin = (tmp_path / "secrets" / "admin.token").read_text().strip()
    with ControlPlaneClient(secured.grpc, token=admin) as client:
        created = client.create_token("deployer").secret
    secured.stop()
    stored = b"".join(p.read_bytes() for p in tmp_path.glob("control.db*"))  # the database and its WAL
    assert stored
    for token in (admin, created):
        secret = parse_token(token)[1]  # type: ignore[index]
        assert secret.encode() not in stored and secret not in secured.output()
