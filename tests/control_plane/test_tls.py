"""TLS on the control plane, mutual TLS between workers and the control plane, the CLI and SDK over TLS.

Every certificate comes from a throwaway CA (``tests/certs.py``). Rule under test: without a token, a
client certificate signed by ``--tls-client-ca`` whose CN matches ``--tls-worker-cn`` is a worker and
nothing more; tokens grant everything else.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import grpc.aio
import numpy as np
import pytest
from certs import CertFiles, TestCA
from cp_harness import (
    ADMIN_TOKEN,
    Stubs,
    eventually,
    expect_status,
    lmaas,
    running,
    start_control_plane,
    version_requests,
    worker,
    write_scale_onnx,
)
from lmaas.client import InferenceClient
from lmaas.client.control import ControlPlaneClient
from lmaas.control_plane.store.base import Store
from lmaas.protos.credentials import channel_credentials
from lmaas.protos.errors import PermissionDenied, Unavailable
from lmaas.protos.lmaas.control.v1 import deployments_pb2, registry_pb2
from lmaas.protos.lmaas.control.v1 import resources_pb2 as pb
from lmaas.protos.lmaas.worker.v1 import sync_pb2
from processes import ServerProcess, start_worker


@dataclass
class Pki:
    ca: TestCA
    server: CertFiles
    worker: CertFiles
    user: CertFiles

    def tls(self, cert: CertFiles | None = None) -> tuple[str, ...]:
        """CLI options for a client of the control plane."""
        args = ("--tls-ca", str(self.ca.cert))
        return args + (("--tls-cert", str(cert.cert), "--tls-key", str(cert.key)) if cert else ())


@pytest.fixture()
def pki(tmp_path: Path) -> Pki:
    ca = TestCA(tmp_path / "pki")
    return Pki(ca, ca.issue("control-plane"), ca.issue("worker-rack1"), ca.issue("alice"))


def wait_until(check, timeout: float = 30.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.1)


@pytest.fixture()
def tls_plane(tmp_path: Path, pki: Pki) -> Iterator[ServerProcess]:
    proc = start_control_plane(tmp_path, "--tls-cert", str(pki.server.cert), "--tls-key", str(pki.server.key))
    yield proc
    proc.stop()


@pytest.fixture()
def mtls_plane(tmp_path: Path, pki: Pki) -> Iterator[ServerProcess]:
    proc = start_control_plane(tmp_path, "--tls-cert", str(pki.server.cert), "--tls-key", str(pki.server.key),
                               "--tls-client-ca", str(pki.ca.cert), "--tls-worker-cn", "worker-*")
    yield proc
    proc.stop()


def test_cli_and_sdk_over_tls(tls_plane: ServerProcess, pki: Pki, tmp_path: Path) -> None:
    cp = tls_plane.grpc
    model = write_scale_onnx(tmp_path / "m.onnx", 2.0)
    assert lmaas("model", "push", "scale", str(model), "-q", *pki.tls(), address=cp).stdout.strip() == "1"
    assert "scale" in lmaas("model", "list", address=cp, env={"LMAAS_TLS_CA": str(pki.ca.cert)}).stdout
    plaintext = lmaas("model", "list", "--timeout", "2", address=cp, check=False)
    assert plaintext.returncode == 1 and "UNAVAILABLE" in plaintext.stderr
    with ControlPlaneClient(cp, tls_ca=pki.ca.cert) as client:
        assert [m.name for m in client.list_models()] == ["scale"]
    other_ca = TestCA(tmp_path / "other", "impostor-ca")
    with ControlPlaneClient(cp, tls_ca=other_ca.cert, timeout=2) as client, pytest.raises(Unavailable):
        client.list_models()  # the server's certificate is not trusted


def test_mtls_worker_syncs_with_its_certificate_alone(mtls_plane: ServerProcess, pki: Pki, tmp_path: Path) -> None:
    cp = mtls_plane.grpc
    model = write_scale_onnx(tmp_path / "m.onnx", 3.0)
    user = pki.tls(pki.user)
    assert lmaas("model", "push", "scale", str(model), "-q", *user, address=cp).stdout.strip() == "1"
    lmaas("deploy", "scale", "1", *user, address=cp)
    good = start_worker(None, "--control-plane", cp, "--worker-id", "rack1", "--cache-dir", str(tmp_path / "c1"),
                        "--tls-ca", str(pki.ca.cert), "--tls-cert", str(pki.worker.cert),
                        "--tls-key", str(pki.worker.key), env={"LMAAS_TOKEN": ""})
    no_cert = start_worker(None, "--control-plane", cp, "--worker-id", "no-cert", "--cache-dir", str(tmp_path / "c2"),
                           "--tls-ca", str(pki.ca.cert), env={"LMAAS_TOKEN": ""})
    try:
        with ControlPlaneClient(cp, tls_ca=pki.ca.cert, tls_cert=pki.user.cert, tls_key=pki.user.key) as client:
            wait_until(lambda: [w.worker_id for w in client.workers()] == ["rack1"])
            assert client.wait_rollout("scale", timeout=60).phase == pb.ROLLOUT_PHASE_SUCCEEDED
        x = np.arange(4, dtype=np.float32).reshape(1, 4)
        # the worker serves TLS too (its --tls-cert); inference clients need only the CA
        with InferenceClient(good.grpc, root_certificates=pki.ca.cert.read_bytes()) as inference:
            wait_until(lambda: inference.infer("scale", {"x": x})["y"][0, 1] == 3.0)
        wait_until(lambda: any("sync with" in line and "UNAVAILABLE" in line for line in no_cert.log))
    finally:
        good.stop()
        no_cert.stop()


def test_mtls_certificate_grants_the_worker_role_only(mtls_plane: ServerProcess, pki: Pki) -> None:
    cp = mtls_plane.grpc
    as_user = pki.tls(pki.user)
    assert "Models" in lmaas("model", "list", *as_user, address=cp).stdout  # the token (admin) decides
    cert_only = lmaas("model", "list", *pki.tls(pki.worker), address=cp, env={"LMAAS_TOKEN": ""}, check=False)
    assert cert_only.returncode == 1 and "PERMISSION_DENIED" in cert_only.stderr and "cert:worker-rack1" in (
        cert_only.stderr)
    other = lmaas("model", "list", *pki.tls(pki.user), address=cp, env={"LMAAS_TOKEN": ""}, check=False)
    assert other.returncode == 1 and "PERMISSION_DENIED" in other.stderr  # CN alice is not worker-*
    no_cert = lmaas("model", "list", "--timeout", "2", *pki.tls(), address=cp, check=False)
    assert no_cert.returncode == 1 and "UNAVAILABLE" in no_cert.stderr  # the handshake needs a client cert


async def test_in_process_mtls_cn_rule(store: Store, tmp_path: Path, pki: Pki) -> None:
    async with running(store, tmp_path, tls_cert=pki.server.cert, tls_key=pki.server.key,
                       tls_client_ca=pki.ca.cert, tls_worker_cn="worker-*") as cp:
        target = f"127.0.0.1:{cp.grpc_port}"
        await push_over(target, pki)
        worker_creds = channel_credentials(pki.ca.cert, pki.worker.cert, pki.worker.key)
        async with worker(target, tmp_path, "rack1", token=None, credentials=worker_creds) as w:
            await eventually(lambda: w.host.serving("m") == 1)
        user_creds = channel_credentials(pki.ca.cert, pki.user.cert, pki.user.key)
        async with grpc.aio.secure_channel(target, user_creds) as ch:
            hello = sync_pb2.WorkerMessage(hello=sync_pb2.Hello(worker_id="alice"))
            await expect_status(grpc.StatusCode.PERMISSION_DENIED, Stubs(ch).sync.Sync(iter([hello])).read())
        async with grpc.aio.secure_channel(target, worker_creds) as ch:  # a worker's certificate reads nothing
            call = Stubs(ch).registry.ListModels(registry_pb2.ListModelsRequest())
            assert "cert:worker-rack1" in await expect_status(grpc.StatusCode.PERMISSION_DENIED, call)


async def push_over(target: str, pki: Pki) -> None:
    """Push and deploy model m over mutual TLS, as an admin (the token decides the role)."""
    creds = channel_credentials(pki.ca.cert, pki.user.cert, pki.user.key)
    md = (("authorization", f"Bearer {ADMIN_TOKEN}"),)
    async with grpc.aio.secure_channel(target, creds) as ch:
        stubs = Stubs(ch)
        await stubs.registry.CreateVersion(iter(version_requests("m", b"weights")), metadata=md)  # type: ignore[arg-type]
        spec = pb.DeploymentSpec(stable_version=1)
        await stubs.deployments.Deploy(deployments_pb2.DeployRequest(model="m", spec=spec), metadata=md)


def test_sdk_reads_tls_settings_from_the_environment(
    tls_plane: ServerProcess, pki: Pki, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LMAAS_TLS_CA", str(pki.ca.cert))
    with ControlPlaneClient(tls_plane.grpc) as client:  # LMAAS_TOKEN and LMAAS_TLS_CA from the environment
        assert client.list_models() == []
        reader = client.create_token("reader").secret
    with ControlPlaneClient(tls_plane.grpc, token=reader) as client, pytest.raises(PermissionDenied):
        client.create_token("admin")
    with ControlPlaneClient(tls_plane.grpc, tls=False, timeout=2) as client, pytest.raises(Unavailable):
        client.list_models()  # tls=False: plaintext whatever the environment says
