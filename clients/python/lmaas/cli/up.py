"""``lmaas up``: everything on one machine with one command.

A control plane on the embedded SQLite store runs in this process (gRPC and its
REST API); one worker runs as a subprocess (``lmaas worker``, gRPC and OIP v2
HTTP) synced to it; a demo model is pushed
and deployed through the public API, exactly as a user would. State lives in
``--state-dir``, so a second ``lmaas up`` finds its models and deployments again.

Authentication stays on: ``STATE/admin.token`` is the control plane's bootstrap
admin token and ``STATE/worker.token`` the worker's (role worker, handed over in
the worker's environment, not on its command line); both are created with mode
0600 on the first run and reused afterwards.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import sys
from pathlib import Path
from typing import Any

import click

from lmaas.cli._options import option as _opt
from lmaas.logs import setup_logging

__all__ = ["up"]

_LISTENING = re.compile(r"listening grpc=(\S+) metrics=(\S+)")
_HTTP = re.compile(r"\shttp=(\S+)")


@click.command()
@_opt("--state-dir", env="LMAAS_STATE_DIR", type=click.Path(file_okay=False, path_type=Path),
      default=Path(".lmaas/up"), help="Store, artifacts and worker cache of the local deployment.")
@_opt("--host", env="LMAAS_HOST", default="127.0.0.1", help="Address every server binds to.")
@_opt("--control-plane-port", env="LMAAS_CONTROL_PLANE_PORT", type=int, default=8090,
      help="Control-plane gRPC port (0 = any free port).")
@_opt("--control-plane-metrics-port", env="LMAAS_CONTROL_PLANE_METRICS_PORT", type=int, default=8091,
      help="Control-plane /metrics port.")
@_opt("--control-plane-http-port", env="LMAAS_CONTROL_PLANE_HTTP_PORT", type=int, default=8080,
      help="Control-plane REST API port (/api/v1, /openapi.json; 0 = any free port).")
@_opt("--worker-port", env="LMAAS_WORKER_PORT", type=int, default=8001, help="Worker OIP v2 gRPC port.")
@_opt("--worker-metrics-port", env="LMAAS_WORKER_METRICS_PORT", type=int, default=8002, help="Worker /metrics port.")
@_opt("--worker-http-port", env="LMAAS_WORKER_HTTP_PORT", type=int, default=8000,
      help="Worker OIP v2 HTTP/REST port (0 = any free port).")
@_opt("--demo/--no-demo", env="LMAAS_DEMO", default=True, help="Push and deploy the demo model 'demo' (y = 2x + 1).")
@_opt("--llm/--no-llm", env="LMAAS_LLM", default=False,
      help="Also serve SmolLM2-135M-Instruct as 'smollm2' (converted once into the state dir, pushed, deployed).")
@_opt("--log-level", env="LMAAS_LOG_LEVEL", default="warning",
      type=click.Choice(["debug", "info", "warning", "error"]))
def up(state_dir: Path, host: str, control_plane_port: int, control_plane_metrics_port: int,
       control_plane_http_port: int, worker_port: int, worker_metrics_port: int, worker_http_port: int, demo: bool,
       log_level: str, llm: bool) -> None:
    """Run LMaaS locally: a control plane (embedded store), one worker, and a demo model; Ctrl-C stops it all."""
    setup_logging(log_level)
    code = asyncio.run(_up(state_dir, host, control_plane_port, control_plane_metrics_port, worker_port,
                           worker_metrics_port, demo, log_level, cp_http=control_plane_http_port,
                           w_http=worker_http_port, llm=llm))
    sys.exit(code)


async def _up(state: Path, host: str, cp_port: int, cp_metrics: int, w_port: int, w_metrics: int, demo: bool,
              log_level: str, *, cp_http: int = 8080, w_http: int = 8000, llm: bool = False) -> int:
    from lmaas.control_plane.app import ControlPlane
    from lmaas.control_plane.settings import ControlPlaneSettings
    from lmaas.protos.serving import on_signals

    state = state.resolve()
    state.mkdir(parents=True, exist_ok=True)
    admin_file = state / "admin.token"
    settings = ControlPlaneSettings(
        store=f"sqlite:///{state / 'control.db'}", artifact_dir=state / "artifacts", host=host, grpc_port=cp_port,
        metrics_port=cp_metrics, http_port=cp_http, replica_id="up", auth=True, bootstrap_token_file=admin_file,
        bootstrap_token=None, tls_cert=None, tls_key=None, tls_client_ca=None,
    )
    plane = ControlPlane(settings)
    cp_grpc, cp_metrics_bound = await plane.start()
    cp_address = f"{host}:{cp_grpc}"
    admin_token = admin_file.read_text().strip()
    worker_token = await _worker_token(plane, state / "worker.token")
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    with on_signals(stop.set):  # Ctrl-C / SIGTERM: stop the worker, then the control plane
        worker = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "lmaas.cli", "worker", "--control-plane", cp_address, "--host", host,
            "--grpc-port", str(w_port), "--metrics-port", str(w_metrics), "--http-port", str(w_http),
            "--cache-dir", str(state / "cache"),
            "--worker-id", "up-worker", "--log-level", log_level,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT, start_new_session=True,
            env={**_worker_env(), "LMAAS_TOKEN": worker_token},
        )
        listening: asyncio.Future[tuple[str, str, str]] = loop.create_future()
        pump = asyncio.create_task(_pump(worker, listening))
        code = 0
        try:
            first_exit: asyncio.Future[Any] = asyncio.ensure_future(worker.wait())
            await asyncio.wait([listening, first_exit], return_when=asyncio.FIRST_COMPLETED)
            if not listening.done():
                click.echo(f"lmaas up: the worker exited with {worker.returncode}", err=True)
                return 1
            w_grpc, w_metrics_address, w_http_address = listening.result()
            if demo:
                await asyncio.to_thread(_deploy_demo, cp_address, state, admin_token)
            if llm:
                from lmaas.cli.llm import deploy_smollm2

                await asyncio.to_thread(deploy_smollm2, cp_address, state, admin_token)
            cp_http_address = f"{host}:{plane.http_port}"
            # Scripts read this line; fields are only ever appended.
            click.echo(f"lmaas up ready control-plane={cp_address} worker={w_grpc} control-plane-http={cp_http_address}"
                       f" worker-http={w_http_address}")
            click.echo(_instructions(cp_address, f"{host}:{cp_metrics_bound}", w_grpc, w_metrics_address, state, demo,
                                     admin_file, cp_http=cp_http_address, w_http=w_http_address))
            if llm:
                from lmaas.cli.llm import llm_instructions

                click.echo("\n".join(llm_instructions(w_grpc, w_http_address)))
            waiter: asyncio.Future[Any] = asyncio.ensure_future(stop.wait())
            await asyncio.wait([waiter, first_exit], return_when=asyncio.FIRST_COMPLETED)
            if first_exit.done() and not stop.is_set():
                click.echo(f"lmaas up: the worker exited with {worker.returncode}", err=True)
                code = 1
            waiter.cancel()
        except Exception as exc:
            click.echo(f"lmaas up failed: {exc}", err=True)
            code = 1
        finally:
            if worker.returncode is None:
                worker.send_signal(signal.SIGTERM)
                try:
                    await asyncio.wait_for(worker.wait(), 30)
                except TimeoutError:
                    worker.kill()
                    await worker.wait()
            pump.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await pump
            await plane.stop()
        return code


async def _pump(proc: asyncio.subprocess.Process, listening: asyncio.Future[tuple[str, str, str]]) -> None:
    assert proc.stdout is not None
    async for raw in proc.stdout:
        line = raw.decode(errors="replace").rstrip()
        match = _LISTENING.search(line)
        if match and not listening.done():
            http = _HTTP.search(line)
            listening.set_result((match.group(1), match.group(2), http.group(1) if http else ""))
        else:
            click.echo(f"[worker] {line}", err=True)


def _worker_env() -> dict[str, str]:
    """This process's environment without the TLS settings meant for a remote control plane."""
    return {k: v for k, v in os.environ.items() if not k.startswith("LMAAS_TLS_")}


async def _worker_token(plane: Any, path: Path) -> str:
    """The worker's token from ``path`` (0600), created on the first run and imported with role worker."""
    from lmaas.control_plane.bootstrap import read_or_create_token_file
    from lmaas.protos.lmaas.control.v1 import resources_pb2 as pb

    token, _ = read_or_create_token_file(path)
    try:
        outcome = await plane.tokens.import_token(token, pb.ROLE_WORKER, "lmaas up worker")
    except ValueError:
        outcome = "revoked"  # not a token: replace it
    if outcome == "revoked":  # someone revoked it: make a new one
        path.unlink()
        token, _ = read_or_create_token_file(path)
        await plane.tokens.import_token(token, pb.ROLE_WORKER, "lmaas up worker")
    return token


def _deploy_demo(cp_address: str, state: Path, token: str) -> Any:
    from lmaas.cli._demo import DEMO_ONNX
    from lmaas.client.control import ControlPlaneClient
    from lmaas.protos.errors import NotFound

    path = state / "demo" / "model.onnx"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(DEMO_ONNX)
    with ControlPlaneClient(cp_address, token=token, tls=False) as client:
        version = client.push("demo", path, description="lmaas up demo: y = 2x + 1")
        try:
            current = client.get_deployment("demo").deployment.spec.stable_version
        except NotFound:
            current = 0
        if current != version.version:
            reply = client.deploy("demo", version.version)
            generation = reply.deployment.generation
        else:
            generation = 0
        return client.wait_rollout("demo", generation, timeout=120)


def _instructions(cp: str, cp_metrics: str, worker: str, w_metrics: str, state: Path, demo: bool,
                  admin_file: Path, *, cp_http: str = "", w_http: str = "") -> str:
    lines = [
        "",
        "LMaaS is up.",
        f"  control plane  {cp}   metrics http://{cp_metrics}/metrics   state {state}",
        f"  worker         {worker}   metrics http://{w_metrics}/metrics",
    ]
    if cp_http:
        lines.append(f"  REST API       http://{cp_http}/api/v1   OpenAPI http://{cp_http}/openapi.json")
        lines.append(f"  web console    http://{cp_http}/   (sign in with the token in {admin_file})")
    if w_http:
        lines.append(f"  worker HTTP    http://{w_http}/v2   (OIP v2 REST: tritonclient.http, curl)")
    if demo:
        lines += [
            "  model          demo (ONNX, y = 2x + 1, input x FP32 [-1, 4])",
            "",
            "Call it (Open Inference Protocol v2 over gRPC: tritonclient, perf_analyzer, grpcurl, any stub):",
            "  python -c \"import numpy as np; from lmaas.client import InferenceClient; "
            f"print(InferenceClient('{worker}').infer('demo', "
            "{'x': np.arange(4, dtype=np.float32).reshape(1, 4)})['y'])\"",
            f"  grpcurl -plaintext {worker} list",
        ]
        if w_http:
            lines.append(f"  curl -s http://{w_http}/v2/models/demo/infer -H 'Content-Type: application/json' "
                         "-d '{\"inputs\": [{\"name\": \"x\", \"shape\": [1, 4], \"datatype\": \"FP32\", "
                         "\"data\": [0, 1, 2, 3]}]}'")
    lines += [
        "",
        "Manage it:",
        f"  export LMAAS_CONTROL_PLANE={cp}",
        f"  export LMAAS_TOKEN=$(cat {admin_file})   # the admin token (mode 0600)",
        "  lmaas status",
        "  lmaas model push NAME model.onnx          # prints the new version",
        "  lmaas deploy NAME VERSION --wait          # --canary V --weight 30 for a canary",
        "  lmaas rollback NAME --wait",
        "  lmaas token create --role deployer        # tokens for others: reader, deployer, worker, admin",
        *([f"  curl -s -H \"Authorization: Bearer $LMAAS_TOKEN\" http://{cp_http}/api/v1/deployments/demo"]
          if cp_http else []),
        "",
        "Ctrl-C stops everything.",
    ]
    return "\n".join(lines)
