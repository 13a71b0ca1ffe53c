"""Start, check and stop the servers under test: the LMaaS worker, the bare reference and the MLServer 1.7.1 peer.

Both run as subprocesses on loopback only. Every wait is bounded in time; every process started here is
stopped (SIGTERM, then SIGKILL of its process group) when its context exits.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import numpy as np

from benchmarks.models import MODELS, ModelSpec

__all__ = [
    "MLSERVER_VERSION",
    "Server",
    "bare_server",
    "ensure_mlserver_venv",
    "lmaas_worker",
    "mlserver_peer",
    "verify_infer",
    "wait_ready",
]

HERE = Path(__file__).resolve().parent
MLSERVER_VERSION = "1.7.1"
HOST = "127.0.0.1"
_BARE_LISTENING = re.compile(r"bare listening grpc=(?P<grpc>[\w.:\[\]]+)")
_LISTENING = re.compile(r"lmaas worker listening grpc=(?P<grpc>[\w.:\[\]]+)\s+metrics=(?P<metrics>[\w.:\[\]]+)")


@dataclass
class Server:
    """A running server under test."""

    name: str
    url: str  # host:port of its OIP v2 gRPC endpoint
    process: subprocess.Popen[bytes]
    log: Path
    info: dict[str, Any] = field(default_factory=dict)


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def _pump(stream: IO[bytes], log: IO[bytes], lines: queue.Queue[str]) -> None:
    """Copy a child's output into its log file (and the line queue) until it closes."""
    for raw in iter(stream.readline, b""):
        log.write(raw)
        log.flush()
        with contextlib.suppress(queue.Full):
            lines.put_nowait(raw.decode(errors="replace"))


@contextlib.contextmanager
def _process(
    command: Sequence[str], log_path: Path, *, env: dict[str, str] | None = None, cwd: Path | None = None
) -> Iterator[tuple[subprocess.Popen[bytes], queue.Queue[str]]]:
    log_path.parent.mkdir(parents=True, exist_ok=True)
    lines: queue.Queue[str] = queue.Queue(maxsize=10_000)
    with open(log_path, "wb") as log:
        log.write(("$ " + " ".join(command) + "\n").encode())
        log.flush()
        proc = subprocess.Popen(
            list(command),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            cwd=cwd,
            start_new_session=True,
        )
        assert proc.stdout is not None
        pump = threading.Thread(target=_pump, args=(proc.stdout, log, lines), daemon=True)
        pump.start()
        try:
            yield proc, lines
        finally:
            _stop(proc)
            pump.join(timeout=5)


def _stop(proc: subprocess.Popen[bytes], grace_s: float = 10) -> None:
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)


def _grpc_module() -> Any:
    import tritonclient.grpc as grpcclient

    return grpcclient


def wait_ready(server: Server, models: Sequence[str], timeout_s: float = 120) -> None:
    """Wait until the server answers ServerReady and ModelReady for every model (bounded)."""
    client = _grpc_module().InferenceServerClient(server.url)
    deadline = time.monotonic() + timeout_s
    last: Exception | None = None
    try:
        while time.monotonic() < deadline:
            if server.process.poll() is not None:
                raise RuntimeError(f"{server.name} exited with {server.process.returncode}; see {server.log}")
            try:
                if client.is_server_ready(client_timeout=2) and all(
                    client.is_model_ready(m, client_timeout=2) for m in models
                ):
                    return
            except Exception as exc:  # not up yet
                last = exc
            time.sleep(0.25)
    finally:
        client.close()
    raise TimeoutError(f"{server.name} not ready within {timeout_s} s (last error: {last}); see {server.log}")


def verify_infer(server: Server, spec: ModelSpec, expected: np.ndarray, x: np.ndarray) -> None:
    """One ModelInfer over gRPC with raw contents (as perf_analyzer sends); the answer must match in-process."""
    grpc = _grpc_module()
    client = grpc.InferenceServerClient(server.url)
    try:
        inp = grpc.InferInput(spec.input_name, list(x.shape), spec.datatype)
        inp.set_data_from_numpy(x)
        result = client.infer(
            spec.name, [inp], outputs=[grpc.InferRequestedOutput(spec.output_name)], client_timeout=30
        )
        got = result.as_numpy(spec.output_name)
    finally:
        client.close()
    if got is None or got.shape != expected.shape or not np.allclose(got, expected, rtol=1e-4, atol=1e-5):
        raise AssertionError(f"{server.name}/{spec.name}: answer differs from in-process ORT: {got} vs {expected}")


# --------------------------------------------------------------------------------------------- LMaaS worker
def _wait_listening(
    proc: subprocess.Popen[bytes], lines: queue.Queue[str], pattern: re.Pattern[str], what: str, log_path: Path,
    timeout_s: float,
) -> re.Match[str]:
    """The first output line matching ``pattern`` (the server's 'listening' line); an error if it exits first."""
    deadline = time.monotonic() + timeout_s
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}; see {log_path}")
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError(f"{what} printed no 'listening' line within {timeout_s} s; see {log_path}")
        try:
            match = pattern.search(lines.get(timeout=min(left, 0.5)))
        except queue.Empty:
            continue
        if match is not None:
            return match


@contextlib.contextmanager
def lmaas_worker(
    repo: Path,
    log_path: Path,
    *,
    extra_args: Sequence[str] = (),
    start_timeout_s: float = 120,
    env: dict[str, str] | None = None,
) -> Iterator[Server]:
    """``lmaas worker --model-repository REPO --grpc-port 0 --metrics-port 0 --host 127.0.0.1``."""
    exe = Path(sys.executable).parent / "lmaas"
    command = [
        str(exe) if exe.exists() else "lmaas",
        "worker",
        "--model-repository",
        str(repo),
        "--grpc-port",
        "0",
        "--metrics-port",
        "0",
        "--host",
        HOST,
        *extra_args,
    ]
    with _process(command, log_path, env={**os.environ, **(env or {})}) as (proc, lines):
        match = _wait_listening(proc, lines, _LISTENING, "lmaas worker", log_path, start_timeout_s)
        yield Server("lmaas", match["grpc"], proc, log_path, {"metrics": match["metrics"], "command": command})


# -------------------------------------------------------------------------------------------- bare server
@contextlib.contextmanager
def bare_server(repo: Path, models: Sequence[str], log_path: Path, *, start_timeout_s: float = 120) -> Iterator[Server]:
    """``python -m benchmarks.bare_server REPO MODELS``: the reference (benchmarks/bare_server.py)."""
    command = [sys.executable, "-m", "benchmarks.bare_server", str(repo), ",".join(models), "--host", HOST]
    with _process(command, log_path, cwd=HERE.parent) as (proc, lines):
        match = _wait_listening(proc, lines, _BARE_LISTENING, "bare server", log_path, start_timeout_s)
        yield Server("bare", match["grpc"], proc, log_path, {"command": command})


# ----------------------------------------------------------------------------------------------- MLServer
def ensure_mlserver_venv(venv: Path) -> Path:
    """MLServer 1.7.1 in its own venv (it pins protobuf<7 and an old FastAPI); returns its python."""
    import onnxruntime

    python = venv / "bin" / "python"
    # uvloop 0.22+ raises from asyncio.get_event_loop() without a running loop, which MLServer 1.7.1's
    # inference-pool workers call at start: every worker dies and no model loads. 0.21.0 is the last that works.
    want = {"mlserver": MLSERVER_VERSION, "onnxruntime": onnxruntime.__version__, "uvloop": "0.21.0"}
    stamp = venv / ".lmaas-bench.json"
    if python.exists() and stamp.is_file() and json.loads(stamp.read_text()) == want:
        return python
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv)], check=True, timeout=300)
    pins = [f"{k}=={v}" for k, v in want.items()]
    subprocess.run(
        [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", *pins, "numpy"],
        check=True,
        timeout=1800,
    )
    stamp.write_text(json.dumps(want))
    return python


def _descriptor_set() -> bytes:
    """The Triton ``inference`` protos (from LMaaS's generated code) as a serialized FileDescriptorSet."""
    from google.protobuf import descriptor_pb2
    from lmaas.protos.inference import grpc_service_pb2

    fds = descriptor_pb2.FileDescriptorSet()
    seen: set[str] = set()

    def add(fd: Any) -> None:
        if fd.name in seen:
            return
        for dep in fd.dependencies:
            add(dep)
        seen.add(fd.name)
        fd.CopyToProto(fds.file.add())

    add(grpc_service_pb2.DESCRIPTOR)
    return bytes(fds.SerializeToString())


def _triton_config(spec: ModelSpec, max_batch_size: int) -> dict[str, Any]:
    return {
        "config": {
            "name": spec.name,
            "platform": "onnxruntime_onnx",
            "backend": "onnxruntime",
            "max_batch_size": max_batch_size,
            "input": [{"name": spec.input_name, "data_type": f"TYPE_{spec.datatype}", "dims": list(spec.shape)}],
            "output": [{"name": spec.output_name, "data_type": "TYPE_FP32", "dims": list(spec.output_shape)}],
        }
    }


def write_mlserver_workspace(
    workspace: Path,
    repo: Path,
    models: Sequence[str],
    *,
    grpc_port: int,
    http_port: int,
    metrics_port: int,
    intra_op_threads: int,
    parallel_workers: int | None = None,
) -> None:
    """settings.json, ``<model>/model-settings.json`` and ``triton/`` for the launcher."""
    workspace.mkdir(parents=True, exist_ok=True)
    settings: dict[str, Any] = {
        "debug": False,  # MLServer's default (True) logs every request; off is the peer's faster setting
        "host": HOST,
        "grpc_port": grpc_port,
        "http_port": http_port,
        "metrics_port": metrics_port,
        "metrics_dir": str(workspace / ".metrics"),
        "environments_dir": str(workspace / ".envs"),
        "load_models_at_startup": True,
    }
    if parallel_workers is not None:
        settings["parallel_workers"] = parallel_workers
    (workspace / "settings.json").write_text(json.dumps(settings, indent=2))
    extras = workspace / "triton"
    extras.mkdir(exist_ok=True)
    (extras / "descriptors.pb").write_bytes(_descriptor_set())
    for name in models:
        spec = MODELS[name]
        folder = workspace / name
        folder.mkdir(exist_ok=True)
        model_settings = {
            "name": name,
            "implementation": "onnx_runtime.OnnxModel",
            "inputs": [{"name": spec.input_name, "datatype": spec.datatype, "shape": [-1, *spec.shape]}],
            "outputs": [{"name": spec.output_name, "datatype": "FP32", "shape": [-1, *spec.output_shape]}],
            "parameters": {
                "uri": str((repo / name / "1" / "model.onnx").resolve()),
                "version": "1",
                "extra": {"intra_op_threads": intra_op_threads, "inter_op_threads": 1, "allow_spinning": False},
            },
        }
        (folder / "model-settings.json").write_text(json.dumps(model_settings, indent=2))
        (extras / f"{name}.json").write_text(json.dumps(_triton_config(spec, max_batch_size=64)))


@contextlib.contextmanager
def mlserver_peer(
    venv: Path,
    workspace: Path,
    repo: Path,
    models: Sequence[str],
    log_path: Path,
    *,
    intra_op_threads: int,
    parallel_workers: int | None = None,
    start_timeout_s: float = 180,
) -> Iterator[Server]:
    venv, workspace = venv.absolute(), workspace.absolute()
    python = ensure_mlserver_venv(venv)
    grpc_port, http_port, metrics_port = free_port(), free_port(), free_port()
    write_mlserver_workspace(
        workspace,
        repo,
        models,
        grpc_port=grpc_port,
        http_port=http_port,
        metrics_port=metrics_port,
        intra_op_threads=intra_op_threads,
        parallel_workers=parallel_workers,
    )
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME")}
    env["PYTHONPATH"] = str(HERE / "peer_mlserver")
    env["PATH"] = f"{venv / 'bin'}:{env.get('PATH', '')}"
    command = [str(python), str(HERE / "peer_mlserver" / "launch.py"), str(workspace)]
    with _process(command, log_path, env=env, cwd=workspace) as (proc, _lines):
        server = Server(
            "mlserver",
            f"{HOST}:{grpc_port}",
            proc,
            log_path,
            {"version": MLSERVER_VERSION, "command": command, "parallel_workers": parallel_workers},
        )
        wait_ready(server, models, timeout_s=start_timeout_s)
        yield server
