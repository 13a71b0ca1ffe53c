#!/usr/bin/env python3
"""Train → save → serve, end to end, against a running LMaaS (``lmaas up`` is enough).

1. Trains the classic MLP (Dense 100→128 relu→64 relu→1 sigmoid, binary cross-entropy, Adam) with PyTorch on
   synthetic data: a fixed seed and a noisy linear rule, so held-out accuracy is well above 0.9.
2. Saves it twice: ONNX (dynamic batch dimension) and TorchScript (with the ``config.yaml`` a PyTorch model
   needs: its inputs and outputs).
3. Pushes both as versions of one model through the Python SDK, deploys the ONNX version and waits for every
   worker to ACK, then checks the served answers on held-out data: accuracy, and the same numbers as the local
   model.
4. Rolls to the TorchScript version (deploy, wait) and checks again.
5. Runs the same request from Node.js (``infer_node.js`` with ``clients/node/lmaas.js``) and compares it with
   the Python answer; then rolls back to the ONNX version.

::

    lmaas up &                                         # control plane 127.0.0.1:8090, worker 127.0.0.1:8001
    python clients/examples/train_serve.py             # --control-plane / LMAAS_CONTROL_PLANE to point elsewhere

Prints one line per step and a summary; exits 0 when every check passed, 1 otherwise. ``--report FILE``
writes the checks and figures as JSON. Needs ``pip install 'lmaas[torch]'``; the Node step also needs Node.js
and ``npm ci`` in ``clients/node`` (it is skipped without them unless ``--require-node``).
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
import torch
from lmaas.client import ControlPlaneClient, InferenceClient
from lmaas.client.control import phase_name
from lmaas.protos.lmaas.control.v1 import resources_pb2
from torch import nn

__all__ = ["Check", "Dataset", "Report", "build_model", "export", "main", "make_dataset", "train"]

HERE = Path(__file__).resolve().parent
NODE_SCRIPT = HERE / "infer_node.js"
NODE_MODULES = HERE.parent / "node" / "node_modules"
FEATURES = 100
INPUT, OUTPUT = "x", "y"
# Served answers against the local model: ONNX Runtime and TorchScript reorder float32 sums a little.
LOCAL_TOLERANCE = 1e-5
# Node against Python: the same request to the same version; anything but rounding would be a client bug.
CLIENT_TOLERANCE = 1e-6
MIN_ACCURACY = 0.9

Array = npt.NDArray[np.float32]
Status = Literal["passed", "failed", "skipped"]


# -- data and training ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Dataset:
    x_train: Array
    y_train: Array
    x_test: Array
    y_test: Array


def make_dataset(seed: int, train_size: int = 8000, test_size: int = 1000, noise: float = 0.05) -> Dataset:
    """Gaussian features labelled by a fixed random hyperplane, with a little noise on the score."""
    rng = np.random.default_rng(seed)
    n = train_size + test_size
    x = rng.standard_normal((n, FEATURES)).astype(np.float32)
    w = rng.standard_normal(FEATURES)
    score = x @ w / np.linalg.norm(w) + noise * rng.standard_normal(n)
    y = (score > 0).astype(np.float32).reshape(-1, 1)
    return Dataset(x[:train_size], y[:train_size], x[train_size:], y[train_size:])


def build_model() -> nn.Sequential:
    """Dense 100→128 relu → 64 relu → 1 sigmoid."""
    return nn.Sequential(
        nn.Linear(FEATURES, 128), nn.ReLU(), nn.Linear(128, 64), nn.ReLU(), nn.Linear(64, 1), nn.Sigmoid()
    )


def train(data: Dataset, seed: int, epochs: int = 5, batch_size: int = 64, lr: float = 1e-3) -> nn.Sequential:
    """Binary cross-entropy and Adam, mini-batches in a seeded order (one thread: faster for a model this small)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _train(data, seed, epochs, batch_size, lr)
    finally:
        torch.set_num_threads(threads)


def _train(data: Dataset, seed: int, epochs: int, batch_size: int, lr: float) -> nn.Sequential:
    torch.manual_seed(seed)
    model = build_model()
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    loss_fn = nn.BCELoss()
    x, y = torch.from_numpy(data.x_train), torch.from_numpy(data.y_train)
    order = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(epochs):
        permutation = torch.randperm(len(x), generator=order)
        for start in range(0, len(x), batch_size):
            idx = permutation[start : start + batch_size]
            optimizer.zero_grad()
            loss = loss_fn(model(x[idx]), y[idx])
            loss.backward()
            optimizer.step()
    return model.eval()


def predict_local(model: nn.Module, x: Array) -> Array:
    with torch.inference_mode():
        out: Array = model(torch.from_numpy(x)).numpy()
    return out


def accuracy(probabilities: Array, labels: Array) -> float:
    return float(((probabilities > 0.5) == (labels > 0.5)).mean())


# -- saving --------------------------------------------------------------------------------------------------------


def torchscript_config(max_batch_size: int) -> dict[str, Any]:
    """What the worker needs beside a TorchScript file: the tensors (dims without the batch dimension)."""
    return {
        "backend": "pytorch",
        "max_batch_size": max_batch_size,
        "inputs": [{"name": INPUT, "datatype": "FP32", "dims": [FEATURES]}],
        "outputs": [{"name": OUTPUT, "datatype": "FP32", "dims": [1]}],
    }


def export(model: nn.Module, directory: Path, max_batch_size: int) -> tuple[Path, Path, Path]:
    """``onnx/model.onnx`` (dynamic batch), ``torchscript/model.pt`` and ``torchscript/config.yaml``."""
    example = torch.zeros(2, FEATURES)
    onnx_path = directory / "onnx" / "model.onnx"
    onnx_path.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        # The TorchScript-based exporter needs nothing beyond torch; the dynamo one would need onnxscript.
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(
            model, (example,), str(onnx_path), input_names=[INPUT], output_names=[OUTPUT],
            dynamic_axes={INPUT: {0: "batch"}, OUTPUT: {0: "batch"}}, opset_version=17, dynamo=False,
        )
    ts_dir = directory / "torchscript"
    ts_dir.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        traced = torch.jit.trace(model, example)  # type: ignore[no-untyped-call]
    ts_path = ts_dir / "model.pt"
    traced.save(str(ts_path))
    config_path = ts_dir / "config.yaml"
    config_path.write_text(json.dumps(torchscript_config(max_batch_size), indent=2) + "\n")  # JSON is YAML
    return onnx_path, ts_path, config_path


# -- checks and report ---------------------------------------------------------------------------------------------


@dataclass
class Check:
    name: str
    status: Status
    detail: str


@dataclass
class Report:
    """What the run found: one entry per check, plus figures (versions, accuracies, timings)."""

    checks: list[Check] = field(default_factory=list)
    figures: dict[str, Any] = field(default_factory=dict)

    def check(self, name: str, ok: bool, detail: str) -> bool:
        self.checks.append(Check(name, "passed" if ok else "failed", detail))
        say(f"  [{'ok' if ok else 'FAILED'}] {name}: {detail}")
        return ok

    def skip(self, name: str, why: str) -> None:
        self.checks.append(Check(name, "skipped", why))
        say(f"  [skipped] {name}: {why}")

    @property
    def ok(self) -> bool:
        return all(c.status != "failed" for c in self.checks)

    def to_json(self) -> dict[str, Any]:
        return {"ok": self.ok, "checks": [asdict(c) for c in self.checks], "figures": self.figures}


def say(line: str) -> None:
    print(line, flush=True)


@contextmanager
def step(title: str, report: Report, key: str) -> Iterator[None]:
    say(title)
    started = time.perf_counter()
    yield
    report.figures.setdefault("seconds", {})[key] = round(time.perf_counter() - started, 3)


# -- serving -------------------------------------------------------------------------------------------------------


def deploy(cp: ControlPlaneClient, name: str, version: int, timeout: float) -> resources_pb2.Rollout:
    """Deploy ``version`` and wait until every worker ACKed it (or one NACKed)."""
    reply = cp.deploy(name, version)
    return cp.wait_rollout(name, reply.deployment.generation, timeout=timeout)


def rollback(cp: ControlPlaneClient, name: str, timeout: float) -> resources_pb2.Rollout:
    reply = cp.rollback(name)
    return cp.wait_rollout(name, reply.deployment.generation, timeout=timeout)


def wait_for_worker(cp: ControlPlaneClient, timeout: float) -> None:
    """Return once a worker is connected (a rollout with none would succeed and serve nothing)."""
    deadline = time.monotonic() + timeout
    while not cp.workers():
        if time.monotonic() > deadline:
            raise RuntimeError(f"no worker connected to the control plane at {cp.address} in {timeout:.0f} s")
        time.sleep(0.2)


def worker_address(cp: ControlPlaneClient, name: str) -> str:
    """The inference address of a worker that acknowledged ``name`` (wildcard hosts → the control plane's)."""
    workers = cp.workers()
    holding = [w for w in workers if any(m.model == name and m.ok for m in w.models)] or workers
    if not holding:
        raise RuntimeError("no worker is connected to the control plane; start one (or use `lmaas up`)")
    host, _, port = holding[0].inference_address.rpartition(":")
    if host in ("0.0.0.0", "[::]", "::", ""):
        host = cp.address.rpartition(":")[0] or "127.0.0.1"
    return f"{host}:{port}"


def predict_served(client: InferenceClient, name: str, x: Array, batch_size: int,
                   version: str = "") -> tuple[Array, set[str]]:
    """The model's outputs for every row of ``x`` (requests of ``batch_size`` rows) and the versions that answered."""
    outputs: list[Array] = []
    versions: set[str] = set()
    for start in range(0, len(x), batch_size):
        result = client.infer(name, {INPUT: x[start : start + batch_size]}, version=version)
        outputs.append(np.asarray(result[OUTPUT], dtype=np.float32))
        versions.add(result.model_version)
    return np.concatenate(outputs), versions


def max_diff(a: Array, b: Array) -> float:
    return float(np.max(np.abs(a.astype(np.float64) - b.astype(np.float64)))) if a.shape == b.shape else float("inf")


def node_infer(node: str, address: str, name: str, x: Array, api_key: str | None,
               timeout: float) -> tuple[Array, str]:
    """One request from Node.js (``infer_node.js``): the output and the version that answered."""
    request = {
        "address": address, "model": name, "apiKey": api_key or "",
        "inputs": [{"name": INPUT, "datatype": "FP32", "shape": list(x.shape),
                    "raw": base64.b64encode(np.ascontiguousarray(x, dtype="<f4").tobytes()).decode()}],
    }
    proc = subprocess.run([node, str(NODE_SCRIPT)], input=json.dumps(request), capture_output=True, text=True,
                          timeout=timeout, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"node exited with {proc.returncode}: {proc.stderr.strip() or proc.stdout.strip()}")
    reply = json.loads(proc.stdout)
    tensor = reply["outputs"][OUTPUT]
    if tensor["datatype"] != "FP32":
        raise RuntimeError(f"node got output '{OUTPUT}' as {tensor['datatype']}, not FP32")
    data = np.frombuffer(base64.b64decode(tensor["raw"]), dtype="<f4").reshape(tensor["shape"])
    return data.astype(np.float32), str(reply["model_version"])


def node_command(explicit: str | None) -> tuple[str | None, str]:
    """The node binary to use, or None and why the Node step cannot run."""
    node = explicit or shutil.which("node")
    if node is None:
        return None, "Node.js is not installed"
    if not (NODE_MODULES / "@grpc" / "grpc-js").is_dir():
        return None, f"run `npm ci` in {NODE_MODULES.parent}"
    return node, ""


# -- the run -------------------------------------------------------------------------------------------------------


def run(args: argparse.Namespace, workdir: Path, report: Report) -> None:
    name, timeout = args.model, args.wait_timeout
    with step(f"1. training the MLP on synthetic data (seed {args.seed})", report, "train"):
        data = make_dataset(args.seed)
        model = train(data, args.seed, epochs=args.epochs)
        local = predict_local(model, data.x_test)
        local_accuracy = accuracy(local, data.y_test)
        report.figures["local_accuracy"] = round(local_accuracy, 4)
        report.check("local accuracy", local_accuracy > MIN_ACCURACY,
                     f"{local_accuracy:.3f} on {len(data.x_test)} held-out rows (needs > {MIN_ACCURACY})")

    with step(f"2. saving to ONNX and TorchScript in {workdir}", report, "export"):
        onnx_path, ts_path, config_path = export(model, workdir, args.batch_size)
        say(f"  {onnx_path} ({onnx_path.stat().st_size} bytes), {ts_path} ({ts_path.stat().st_size} bytes)")

    with ControlPlaneClient(args.control_plane, token=args.token) as cp:
        with step(f"3. pushing both as versions of '{name}' to {cp.address}", report, "push"):
            v_onnx = cp.push(name, onnx_path, config={"max_batch_size": args.batch_size},
                             description="train_serve.py: the MLP as ONNX").version
            v_ts = cp.push(name, ts_path, config=config_path,
                           description="train_serve.py: the MLP as TorchScript").version
            report.figures["versions"] = {"onnx": v_onnx, "torchscript": v_ts}
            say(f"  ONNX is version {v_onnx}, TorchScript is version {v_ts}")

        with step(f"4. deploying version {v_onnx} (ONNX) and waiting for the workers", report, "deploy_onnx"):
            wait_for_worker(cp, timeout)
            rollout = deploy(cp, name, v_onnx, timeout)
            if not report.check("deploy ONNX", rollout.phase == resources_pb2.ROLLOUT_PHASE_SUCCEEDED,
                                f"rollout {phase_name(rollout.phase)} {rollout.message}".strip()):
                return
            address = args.worker or worker_address(cp, name)

        with InferenceClient(address, api_key=args.api_key, timeout=30) as client:
            with step(f"5. inference from Python at {address}", report, "infer_onnx"):
                served, versions = predict_served(client, name, data.x_test, args.batch_size)
                served_accuracy = accuracy(served, data.y_test)
                report.figures["onnx_accuracy"] = round(served_accuracy, 4)
                report.check("ONNX answered", versions == {str(v_onnx)}, f"versions {sorted(versions)}")
                report.check("ONNX accuracy", served_accuracy > MIN_ACCURACY, f"{served_accuracy:.3f}")
                diff = max_diff(served, local)
                report.check("ONNX matches the local model", diff <= LOCAL_TOLERANCE, f"max |diff| {diff:.2e}")

            with step(f"6. rolling to version {v_ts} (TorchScript)", report, "deploy_torchscript"):
                rollout = deploy(cp, name, v_ts, timeout)
                if not report.check("deploy TorchScript", rollout.phase == resources_pb2.ROLLOUT_PHASE_SUCCEEDED,
                                    f"rollout {phase_name(rollout.phase)} {rollout.message}".strip()):
                    return
                served_ts, versions = predict_served(client, name, data.x_test, args.batch_size)
                served_accuracy = accuracy(served_ts, data.y_test)
                report.figures["torchscript_accuracy"] = round(served_accuracy, 4)
                report.check("TorchScript answered", versions == {str(v_ts)}, f"versions {sorted(versions)}")
                report.check("TorchScript accuracy", served_accuracy > MIN_ACCURACY, f"{served_accuracy:.3f}")
                diff = max_diff(served_ts, local)
                report.check("TorchScript matches the local model", diff <= LOCAL_TOLERANCE,
                             f"max |diff| {diff:.2e}")

            with step("7. the same request from Node.js", report, "node"):
                node, why = node_command(args.node)
                if node is None:
                    if args.require_node:
                        report.check("Node matches Python", False, why)
                    else:
                        report.skip("Node matches Python", why)
                else:
                    rows = data.x_test[: args.batch_size]
                    from_node, node_version = node_infer(node, address, name, rows, args.api_key, timeout)
                    diff = max_diff(from_node, served_ts[: len(rows)])
                    report.check("Node answered", node_version == str(v_ts), f"version {node_version}")
                    report.check("Node matches Python", diff <= CLIENT_TOLERANCE,
                                 f"{len(rows)} rows, max |diff| {diff:.2e}")

            with step(f"8. rolling back to version {v_onnx}", report, "rollback"):
                rollout = rollback(cp, name, timeout)
                _, versions = predict_served(client, name, data.x_test[: args.batch_size], args.batch_size)
                report.check("rollback", rollout.phase == resources_pb2.ROLLOUT_PHASE_SUCCEEDED
                             and versions == {str(v_onnx)},
                             f"rollout {phase_name(rollout.phase)}, versions {sorted(versions)}")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    env = os.environ.get
    parser.add_argument("--control-plane", default=env("LMAAS_CONTROL_PLANE", "127.0.0.1:8090"),
                        help="control-plane address (LMAAS_CONTROL_PLANE; default %(default)s)")
    parser.add_argument("--worker", default=env("LMAAS_WORKER") or None,
                        help="worker inference address (LMAAS_WORKER; default: one the control plane lists)")
    parser.add_argument("--token", default=env("LMAAS_TOKEN") or None, help="control-plane bearer token (LMAAS_TOKEN)")
    parser.add_argument("--api-key", default=env("LMAAS_API_KEY") or None, help="worker API key (LMAAS_API_KEY)")
    parser.add_argument("--model", default="train-serve-mlp", help="model name (default %(default)s)")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=64, help="rows per request and max_batch_size")
    parser.add_argument("--wait-timeout", type=float, default=300.0, help="seconds to wait for each rollout")
    parser.add_argument("--workdir", type=Path, help="where the model files go (default: a temporary directory)")
    parser.add_argument("--node", help="the node binary (default: node on PATH)")
    parser.add_argument("--require-node", action="store_true", help="fail, not skip, when Node.js cannot run")
    parser.add_argument("--report", type=Path, help="write the checks and figures to this file as JSON")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    report = Report()
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="lmaas-train-serve-") as tmp:
        workdir = args.workdir or Path(tmp)
        try:
            run(args, workdir, report)
        except Exception as exc:  # a failed call or step is a failed check, reported like the others
            report.check("run", False, f"{type(exc).__name__}: {exc}")
    report.figures["seconds_total"] = round(time.perf_counter() - started, 3)
    passed = sum(c.status == "passed" for c in report.checks)
    failed = [c.name for c in report.checks if c.status == "failed"]
    skipped = [c.name for c in report.checks if c.status == "skipped"]
    say(f"summary: {passed} passed, {len(failed)} failed, {len(skipped)} skipped "
        f"in {report.figures['seconds_total']:.1f} s" + (f"; failed: {', '.join(failed)}" if failed else "")
        + (f"; skipped: {', '.join(skipped)}" if skipped else ""))
    if args.report:
        args.report.write_text(json.dumps(report.to_json(), indent=2) + "\n")
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
