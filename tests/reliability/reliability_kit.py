"""What the reliability tests share: inference load that records every request, latency summaries, a throttling
TCP proxy for fault injection, Prometheus scraping, test models, and the results file of long runs.

Everything here is bounded: load threads stop at ``stop()`` or after ``max_seconds``/``max_requests``, the proxy
relays loopback connections only and closes them all in ``close()``.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import platform
import socket
import struct
import threading
import time
import urllib.request
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import grpc
import numpy as np
from lmaas.protos.inference import grpc_service_pb2 as pb
from lmaas.protos.inference import grpc_service_pb2_grpc as pb_grpc
from prometheus_client.parser import text_string_to_metric_families

from benchmarks.models import write_matmul_onnx

__all__ = [
    "RESULTS_DIR",
    "InferenceLoad",
    "Sample",
    "ThrottledProxy",
    "X",
    "fmt",
    "infer",
    "infer_request",
    "latency_summary",
    "metric",
    "model_state",
    "overlaps",
    "partial_size",
    "rss_mib",
    "save_results",
    "scale_of",
    "scrape",
    "size_of",
    "wait_until",
    "write_matmul_onnx",
    "write_scale_onnx",
]

RESULTS_DIR = Path(__file__).resolve().parents[2] / "benchmarks" / "results"
X = np.arange(8, dtype=np.float32).reshape(2, 4)


# -- models ----------------------------------------------------------------------------------------------------------


def write_scale_onnx(path: Path, scale: float) -> Path:
    """ONNX ``y = scale * x``, x FP32 [-1, 4]: versions that differ only in their outputs (tiny, loads in ms)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])
    k = numpy_helper.from_array(np.array([scale], dtype=np.float32), "k")
    graph = helper.make_graph([helper.make_node("Mul", ["x", "k"], ["y"])], "scale", [x], [y], [k])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


# -- inference -------------------------------------------------------------------------------------------------------


def infer_request(model: str, x: np.ndarray[Any, Any], version: str = "") -> pb.ModelInferRequest:
    """A raw-contents ModelInfer request with one FP32 input ``x``."""
    tensor = pb.ModelInferRequest.InferInputTensor(name="x", datatype="FP32", shape=list(x.shape))
    return pb.ModelInferRequest(
        model_name=model, model_version=version, inputs=[tensor], raw_input_contents=[x.astype(np.float32).tobytes()]
    )


def infer(address: str, model: str, x: np.ndarray[Any, Any] = X, *, timeout: float = 10.0) -> np.ndarray[Any, Any]:
    """One call, no retries: the output ``y`` as a float32 array (raises grpc.RpcError on failure)."""
    with grpc.insecure_channel(address) as channel:
        reply = pb_grpc.GRPCInferenceServiceStub(channel).ModelInfer(infer_request(model, x), timeout=timeout)
    return np.frombuffer(reply.raw_output_contents[0], dtype=np.float32).reshape(x.shape[0], -1)


def scale_of(address: str, model: str = "scale", *, timeout: float = 10.0) -> float:
    """Which version of a scale model answered: the factor it multiplied by."""
    y = infer(address, model, X, timeout=timeout)
    return float(y[0, 1] / X[0, 1])


@dataclass(slots=True)
class Sample:
    """One request: when it started (``time.monotonic``), how long it took, and how it ended."""

    start: float
    latency: float
    code: str  # grpc status name; "OK" on success
    value: float = math.nan  # the scale factor that answered (scale models)
    target: str = ""


@dataclass
class InferenceLoad:
    """``threads`` client threads, each on its own channel to one of ``targets`` (round-robin), sending ``model``
    requests back to back without retries until :meth:`stop` (or ``max_seconds`` / ``max_requests``).

    Every request becomes a :class:`Sample`; ``expected`` (when given) lists the answers that count as correct.
    """

    targets: Sequence[str]
    model: str = "scale"
    threads: int = 4
    timeout: float = 10.0
    max_seconds: float = 900.0
    max_requests: int = 5_000_000
    samples: list[Sample] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _threads: list[threading.Thread] = field(default_factory=list)

    def start(self) -> InferenceLoad:
        deadline = time.monotonic() + self.max_seconds
        for i in range(self.threads):
            target = self.targets[i % len(self.targets)]
            t = threading.Thread(target=self._run, args=(target, deadline), name=f"load-{i}", daemon=True)
            t.start()
            self._threads.append(t)
        return self

    def _run(self, target: str, deadline: float) -> None:
        request = infer_request(self.model, X)
        with grpc.insecure_channel(target) as channel:
            stub = pb_grpc.GRPCInferenceServiceStub(channel)
            while not self._stop.is_set() and time.monotonic() < deadline and len(self.samples) < self.max_requests:
                started = time.monotonic()
                try:
                    reply = stub.ModelInfer(request, timeout=self.timeout)
                except grpc.RpcError as exc:
                    code = exc.code().name if isinstance(exc, grpc.Call) else "UNKNOWN"
                    self.samples.append(Sample(started, time.monotonic() - started, code, target=target))
                    continue
                latency = time.monotonic() - started
                y = np.frombuffer(reply.raw_output_contents[0], dtype=np.float32)
                self.samples.append(Sample(started, latency, "OK", float(y[1] / X[0, 1]), target))

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=30)

    def __enter__(self) -> InferenceLoad:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def failed(self) -> list[Sample]:
        return [s for s in self.samples if s.code != "OK"]

    def errors(self, limit: int = 5) -> list[str]:
        return [f"{s.code} from {s.target} at {s.start:.3f}" for s in self.failed[:limit]]


def latency_summary(latencies: Iterable[float]) -> dict[str, float]:
    """n, p50, p90, p99, max in milliseconds (NaN when empty)."""
    values = np.array(sorted(latencies), dtype=np.float64) * 1000
    if values.size == 0:
        return {"n": 0, "p50_ms": math.nan, "p90_ms": math.nan, "p99_ms": math.nan, "max_ms": math.nan}
    return {
        "n": int(values.size),
        "p50_ms": round(float(np.percentile(values, 50)), 2),
        "p90_ms": round(float(np.percentile(values, 90)), 2),
        "p99_ms": round(float(np.percentile(values, 99)), 2),
        "max_ms": round(float(values[-1]), 2),
    }


def fmt(summary: dict[str, float]) -> str:
    return (
        f"n={summary['n']} p50={summary['p50_ms']:.1f} ms p99={summary['p99_ms']:.1f} ms "
        f"max={summary['max_ms']:.1f} ms"
    )


def overlaps(sample: Sample, windows: Sequence[tuple[float, float]]) -> bool:
    """Whether a request was in flight during one of ``windows`` ((start, end) in ``time.monotonic``)."""
    end = sample.start + sample.latency
    return any(sample.start < w_end and end > w_start for w_start, w_end in windows)


# -- processes and metrics --------------------------------------------------------------------------------------------


def model_state(address: str, model: str) -> str:
    """The model's state in a worker's repository index (LOADING, READY...), "" when it is not listed."""
    with grpc.insecure_channel(address) as channel:
        index = pb_grpc.GRPCInferenceServiceStub(channel).RepositoryIndex(pb.RepositoryIndexRequest(), timeout=2)
    return next((m.state for m in index.models if m.name == model), "")


def size_of(path: Path) -> int:
    """A file's size; 0 when it does not exist (yet)."""
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def partial_size(final: Path) -> int:
    """Bytes of the download in progress of ``final`` (its downloader's ``<name>.partial-<pid>``); 0 if none."""
    return max((size_of(p) for p in final.parent.glob(final.name + ".partial*")), default=0)


def rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:")) / 1024


def scrape(metrics_address: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every sample of a /metrics page, keyed by (name, labels)."""
    with urllib.request.urlopen(f"http://{metrics_address}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    out: dict[tuple[str, frozenset[tuple[str, str]]], float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[s.name, frozenset(s.labels.items())] = s.value
    return out


def metric(samples: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str) -> float:
    """Sum of the samples of ``name`` whose labels include ``labels`` (0 when none)."""
    want = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and want <= ls)


def wait_until(check: Callable[[], object], timeout: float = 30.0, interval: float = 0.05, what: str = "") -> float:
    """Poll ``check`` until it returns a true value (exceptions count as false); the seconds it took."""
    started = time.monotonic()
    last: BaseException | None = None
    while True:
        try:
            if check():
                return time.monotonic() - started
        except Exception as exc:
            last = exc
        if time.monotonic() - started > timeout:
            raise AssertionError(f"not true after {timeout} s: {what or check}; last error: {last!r}")
        time.sleep(interval)


# -- results of long runs ---------------------------------------------------------------------------------------------


def save_results(name: str, figures: dict[str, Any]) -> Path:
    """Write ``benchmarks/results/reliability-<name>.json`` (figures plus when and where they were measured)."""
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    path = RESULTS_DIR / f"reliability-{name}.json"
    doc = {
        "test": name,
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
        "figures": figures,
    }
    path.write_text(json.dumps(doc, indent=2, default=_json_default) + "\n")
    print(f"figures written to {path}")
    return path


def _json_default(value: object) -> object:
    if isinstance(value, Sample):
        return asdict(value)
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"cannot write {type(value).__name__} as JSON")


# -- a throttling TCP proxy --------------------------------------------------------------------------------------------


class ThrottledProxy:
    """A loopback TCP relay to ``upstream`` that paces what flows back (upstream → client) at ``rate`` bytes/s.

    Put it between a worker and the control plane to make an artifact download take seconds. Counts the bytes it
    relayed back, in total and per connection, so a test can tell how much a (resumed) download transferred.
    ``rate=None`` relays at full speed. ``drop_connections()`` resets the open connections (the listener stays),
    ``close()`` stops accepting and closes every connection.
    """

    _CHUNK = 64 << 10

    def __init__(self, upstream: str, rate: float | None = None) -> None:
        host, port = upstream.rsplit(":", 1)
        self.upstream = (host, int(port))
        self.rate = rate
        self.bytes_down = 0
        self.per_connection: list[int] = []
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._sockets: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._closed = False
        self._accepter = threading.Thread(target=self._accept, name="proxy-accept", daemon=True)
        self._accepter.start()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self._listener.getsockname()[1]}"

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            try:
                server = socket.create_connection(self.upstream, timeout=5)
            except OSError:
                client.close()
                continue
            server.settimeout(None)
            with self._lock:
                self._sockets.update((client, server))
                index = len(self.per_connection)
                self.per_connection.append(0)
            threading.Thread(target=self._pump, args=(client, server, None), daemon=True).start()
            threading.Thread(target=self._pump, args=(server, client, index), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, down_index: int | None) -> None:
        started, sent = time.monotonic(), 0
        try:
            while data := src.recv(self._CHUNK):
                dst.sendall(data)
                if down_index is None:
                    continue
                sent += len(data)
                with self._lock:
                    self.bytes_down += len(data)
                    self.per_connection[down_index] += len(data)
                rate = self.rate
                if rate:
                    ahead = sent / rate - (time.monotonic() - started)
                    if ahead > 0:
                        time.sleep(min(ahead, 1.0))
                else:
                    started, sent = time.monotonic(), 0
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)
                s.close()
            with self._lock:
                self._sockets.discard(src)
                self._sockets.discard(dst)

    def drop_connections(self) -> int:
        """Reset every relayed connection (a network fault); new ones are still accepted. How many were open."""
        with self._lock:
            sockets = list(self._sockets)
        for s in sockets:
            with contextlib.suppress(OSError):
                s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # RST, not FIN
                s.shutdown(socket.SHUT_RDWR)
        return len(sockets) // 2

    def close(self) -> None:
        self._closed = True
        with contextlib.suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)  # wakes the accept() of the accepting thread
        self._listener.close()
        with self._lock:
            sockets = list(self._sockets)
        for s in sockets:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            s.close()

    def __enter__(self) -> ThrottledProxy:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
