"""With --tls-cert/--tls-key the REST API speaks HTTPS with the same certificate as the gRPC port; plain HTTP
gets no answer, and tokens are still required."""

from __future__ import annotations

import ssl
from pathlib import Path

import httpx
import pytest
from certs import TestCA
from cp_harness import ADMIN_TOKEN, running
from lmaas.control_plane.store.sqlite import SqliteStore


async def test_https_with_the_grpc_certificate(tmp_path: Path) -> None:
    ca = TestCA(tmp_path / "pki")
    server = ca.issue("control-plane")
    store = SqliteStore(tmp_path / "tls.db")
    try:
        async with running(store, tmp_path, http_port=0, tls_cert=server.cert, tls_key=server.key) as cp:
            trust = ssl.create_default_context(cafile=str(ca.cert))
            url = f"https://127.0.0.1:{cp.http_port}"
            async with httpx.AsyncClient(base_url=url, verify=trust) as https:
                assert (await https.get("/api/v1/models")).status_code == 401
                reply = await https.get("/api/v1/models", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
                assert reply.status_code == 200 and reply.json()["models"] == []
            async with httpx.AsyncClient(base_url=url) as untrusting:
                with pytest.raises(httpx.ConnectError):
                    await untrusting.get("/api/v1/models")
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{cp.http_port}") as plain:
                with pytest.raises(httpx.HTTPError):
                    reply = await plain.get("/api/v1/models")
                    reply.raise_for_status()
    finally:
        await store.close()
