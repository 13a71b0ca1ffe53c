"""Two ``lmaas worker`` processes on one ``--cache-dir`` (issue 12's defect: they used to download into one
partial file, one rename failed and the rollout NACKed). Real control plane, real workers, tritonclient: every
deploy succeeds on both, each artifact is published once, and with ``--cache-size`` an artifact neither
worker uses any more is evicted, while the ones they serve stay."""

from __future__ import annotations

import hashlib
import time
from pathlib import Path

import numpy as np
import tritonclient.grpc as grpcclient
from cp_harness import ADMIN_TOKEN, start_control_plane, write_scale_onnx
from lmaas.client.control import ControlPlaneClient
from lmaas.protos.lmaas.control.v1 import resources_pb2 as pb
from processes import start_worker, wait_for_workers

WAIT = 60.0


def wait_for(check) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + WAIT  # a bound against hangs, never a measured time
    while not check():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.05)


def test_two_workers_share_one_bounded_cache(tmp_path: Path) -> None:
    control = start_control_plane(tmp_path)
    cache = tmp_path / "shared-cache"
    files = [write_scale_onnx(tmp_path / f"v{i}.onnx", float(i)) for i in (1, 2, 3)]
    size = max(f.stat().st_size for f in files)
    args = ("--control-plane", control.grpc, "--token", ADMIN_TOKEN, "--cache-dir", str(cache), "--no-autotune",
            "--cache-size", str(2 * size + size // 2))  # two versions fit, not three
    workers = [start_worker(None, *args, "--worker-id", f"w{i}") for i in (1, 2)]
    try:
        wait_for_workers(control.grpc, 2)
        with ControlPlaneClient(control.grpc, token=ADMIN_TOKEN) as client:
            digests = [client.push("m", f).digest for f in files]
            for version in (1, 2, 3):
                reply = client.deploy("m", version)
                rollout = client.wait_rollout("m", reply.deployment.generation, timeout=WAIT)
                assert rollout.phase == pb.ROLLOUT_PHASE_SUCCEEDED, rollout  # both ACKed, no NACK
                assert len(rollout.workers) == 2
        x = grpcclient.InferInput("x", [1, 4], "FP32")
        x.set_data_from_numpy(np.ones((1, 4), dtype=np.float32))
        for w in workers:
            y = grpcclient.InferenceServerClient(w.grpc).infer("m", [x]).as_numpy("y")
            assert float(y[0, 0]) == 3.0

        def cached(digest: str) -> Path:
            return cache / "sha256" / digest[:2] / digest / "model.onnx"

        def leftovers() -> list[Path]:  # an eviction renames a folder aside, then deletes it
            return [p for p in cache.rglob("*") if ".partial" in p.name or ".deleting" in p.name]

        # v1 is neither served nor the previous version any more: both workers let it go, and it is evicted.
        wait_for(lambda: not cached(digests[0]).parent.exists() and not leftovers())
        for digest, data in ((digests[1], files[1]), (digests[2], files[2])):
            assert hashlib.sha256(cached(digest).read_bytes()).hexdigest() == digest == hashlib.sha256(
                data.read_bytes()).hexdigest()
        for w in workers:
            assert "No such file or directory" not in w.output(), w.output()
    finally:
        for w in workers:
            w.stop()
        control.stop()
