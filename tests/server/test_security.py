"""Worker-side security: API keys on inference, TLS and mutual TLS on the gRPC port."""

from __future__ import annotations

from pathlib import Path

import grpc
import numpy as np
import pytest
import tritonclient.grpc as tc
from certs import TestCA
from grpc_health.v1 import health_pb2, health_pb2_grpc
from processes import start_worker
from tritonclient.utils import InferenceServerException


def _x() -> tc.InferInput:
    x = tc.InferInput("x", [1, 4], "FP32")
    x.set_data_from_numpy(np.ones((1, 4), np.float32))
    return x


def test_api_key_required_for_inference_not_for_health(mlp_repository: Path, tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    keys.write_text("# inference keys\nalpha-key\nbeta-key\n")
    proc = start_worker(mlp_repository, "--require-api-key", "--api-key-file", str(keys))
    client = tc.InferenceServerClient(proc.grpc)
    try:
        with pytest.raises(InferenceServerException, match=r"UNAUTHENTICATED.*API key is required"):
            client.infer("mlp", [_x()])
        with pytest.raises(InferenceServerException, match=r"UNAUTHENTICATED.*not valid"):
            client.infer("mlp", [_x()], headers={"authorization": "Bearer wrong"})
        ok = client.infer("mlp", [_x()], headers={"authorization": "Bearer beta-key"})
        assert ok.as_numpy("y").shape == (1, 3)
        assert client.infer("mlp", [_x()], headers={"x-api-key": "alpha-key"}).as_numpy("y").shape == (1, 3)
        with grpc.insecure_channel(proc.grpc) as channel:  # probes send no headers
            status = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=""))
            assert status.status == health_pb2.HealthCheckResponse.SERVING
    finally:
        client.close()
        assert proc.stop() == 0


def test_require_api_key_without_keys_is_a_usage_error(mlp_repository: Path) -> None:
    with pytest.raises(RuntimeError, match="needs keys"):
        start_worker(mlp_repository, "--require-api-key")


def test_tls_and_mutual_tls(mlp_repository: Path, tmp_path: Path) -> None:
    ca = TestCA(tmp_path / "pki")
    server = ca.issue("worker")
    client_cert = ca.issue("client")
    proc = start_worker(mlp_repository, "--tls-cert", str(server.cert), "--tls-key", str(server.key),
                        "--tls-client-ca", str(ca.cert))
    try:
        good = tc.InferenceServerClient(proc.grpc, ssl=True, root_certificates=str(ca.cert),
                                        private_key=str(client_cert.key), certificate_chain=str(client_cert.cert))
        assert good.infer("mlp", [_x()]).as_numpy("y").shape == (1, 3)
        good.close()
        no_client_cert = tc.InferenceServerClient(proc.grpc, ssl=True, root_certificates=str(ca.cert))
        with pytest.raises(InferenceServerException):
            no_client_cert.is_server_live()
        no_client_cert.close()
        plaintext = tc.InferenceServerClient(proc.grpc)
        with pytest.raises(InferenceServerException):
            plaintext.is_server_live()
        plaintext.close()
    finally:
        assert proc.stop() == 0


def test_repository_rpcs_are_disabled_when_a_control_plane_manages_the_worker(mlp_repository: Path) -> None:
    """With --control-plane, only the control plane loads and unloads: ModelLoad/Unload are refused."""
    from lmaas.protos.inference import grpc_service_pb2 as pb
    from lmaas.protos.inference import grpc_service_pb2_grpc as pb_grpc

    # an unreachable control plane: the worker keeps serving its repository and retries in the background
    proc = start_worker(mlp_repository, "--control-plane", "127.0.0.1:1", env={"LMAAS_TOKEN": ""})
    try:
        with grpc.insecure_channel(proc.grpc) as channel:
            stub = pb_grpc.GRPCInferenceServiceStub(channel)
            for call in (
                lambda: stub.RepositoryModelLoad(pb.RepositoryModelLoadRequest(model_name="mlp"), timeout=10),
                lambda: stub.RepositoryModelUnload(pb.RepositoryModelUnloadRequest(model_name="mlp"), timeout=10),
            ):
                with pytest.raises(grpc.RpcError) as info:
                    call()
                assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
                assert "managed by the control plane" in (info.value.details() or "")
        client = tc.InferenceServerClient(proc.grpc)
        assert client.infer("mlp", [_x()]).as_numpy("y").shape == (1, 3)  # still loaded and serving
        client.close()
    finally:
        assert proc.stop() == 0
