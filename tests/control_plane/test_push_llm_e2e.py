"""SmolLM2 as a directory version, end to end with real processes: ``lmaas model push NAME DIR`` to a control
plane → deploy → a worker downloads, verifies, materialises and loads it and streams greedy tokens to stock
``tritonclient.grpc`` → broken versions (tokenizer.json missing, weights truncated) are NACKed while the good
version keeps serving → rollback. The converted directory comes from ``llm_support`` (converted once)."""

from __future__ import annotations

import json
import os
import queue
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as tc
from cp_harness import lmaas, start_control_plane
from llm_support import SMOLLM2_FILES, smollm2_dir
from lmaas.client.control import ControlPlaneClient
from lmaas.protos.lmaas.control.v1 import resources_pb2 as pb
from processes import ServerProcess, start_worker, wait_for_workers

PROMPT = "The capital of France is"


def greedy(address: str, max_tokens: int = 8) -> tuple[str, str]:
    """A short greedy stream in Triton's decoupled shape; returns (text, the version that answered)."""
    results: queue.Queue[tuple[object, object]] = queue.Queue()
    inputs = []
    for name, datatype, value in (
        ("text_input", "BYTES", np.array([PROMPT.encode()], dtype=object)),
        ("stream", "BOOL", np.array([True])),
        ("sampling_parameters", "BYTES",
         np.array([json.dumps({"temperature": 0, "max_tokens": max_tokens}).encode()], dtype=object)),
    ):
        item = tc.InferInput(name, list(value.shape), datatype)
        item.set_data_from_numpy(value)
        inputs.append(item)
    client = tc.InferenceServerClient(address)
    try:
        client.start_stream(callback=lambda result, error: results.put((result, error)))
        client.async_stream_infer("smollm2", inputs, request_id="e2e", enable_empty_final_response=True)
        text, version = [], ""
        while True:
            result, error = results.get(timeout=120)
            assert error is None, error
            response = result.get_response()  # type: ignore[attr-defined]
            version = response.model_version or version
            out = result.as_numpy("text_output")  # type: ignore[attr-defined]
            if out is not None:
                text += [x.decode() if isinstance(x, bytes) else str(x) for x in out.reshape(-1)]
            final = response.parameters.get("triton_final_response")
            if final is not None and final.bool_param:
                break
        client.stop_stream()
    finally:
        client.close()
    return "".join(text), version


def variant(root: Path, name: str, *, drop: str = "", truncate: str = "", generation_max: int = 0) -> Path:
    """A copy of the SmolLM2 directory (hard links, so no 540 MB copy) with one change."""
    source, dest = smollm2_dir(), root / name
    dest.mkdir(parents=True)
    for f in SMOLLM2_FILES:
        if f == drop:
            continue
        if f == truncate:
            with (source / f).open("rb") as src:
                (dest / f).write_bytes(src.read((source / f).stat().st_size // 2))
        elif f == "generation_config.json" and generation_max:
            config = json.loads((source / f).read_text())
            (dest / f).write_text(json.dumps({**config, "max_new_tokens": generation_max}))
        else:
            os.link(source / f, dest / f)
    return dest


@pytest.fixture()
def processes(tmp_path: Path) -> Iterator[tuple[ServerProcess, ServerProcess]]:
    smollm2_dir()  # convert (once per session) before any clock starts
    control = start_control_plane(tmp_path)
    try:
        w = start_worker(None, "--control-plane", control.grpc, "--worker-id", "w1", "--cache-dir",
                         str(tmp_path / "cache"), "--drain-timeout", "5", env={"HF_HUB_OFFLINE": "1"})
        try:
            wait_for_workers(control.grpc)
            yield control, w
        finally:
            w.stop()
    finally:
        control.stop()


def test_smollm2_pushed_deployed_streamed_nacked_and_rolled_back(
    processes: tuple[ServerProcess, ServerProcess], tmp_path: Path
) -> None:
    control, w = processes
    cp = control.grpc
    started = time.perf_counter()
    assert lmaas("model", "push", "smollm2", str(smollm2_dir()), "-q", address=cp).stdout.strip() == "1"
    pushed = time.perf_counter() - started
    started = time.perf_counter()
    lmaas("deploy", "smollm2", "1", "--wait", address=cp, timeout=300)
    deployed = time.perf_counter() - started
    text, version = greedy(w.grpc)
    assert text.strip() and version == "1", (text, version)

    # v2 differs only in generation_config.json: one new blob, the weights are not sent again
    v2 = variant(tmp_path, "v2", generation_max=64)
    started = time.perf_counter()
    assert lmaas("model", "push", "smollm2", str(v2), "-q", address=cp).stdout.strip() == "2"
    repushed = time.perf_counter() - started
    lmaas("deploy", "smollm2", "2", "--wait", address=cp, timeout=300)
    assert greedy(w.grpc) == (text, "2")  # the same weights answer the same greedy text

    for number, broken in ((3, variant(tmp_path, "no-tokenizer", drop="tokenizer.json")),
                           (4, variant(tmp_path, "truncated", truncate="model.safetensors"))):
        assert lmaas("model", "push", "smollm2", str(broken), "-q", address=cp).stdout.strip() == str(number)
        failed = lmaas("deploy", "smollm2", str(number), "--wait", address=cp, check=False, timeout=300)
        assert failed.returncode == 1, failed.stderr
        with ControlPlaneClient(cp) as client:
            got = client.get_deployment("smollm2")
        assert got.rollout.phase == pb.ROLLOUT_PHASE_FAILED and got.deployment.spec.stable_version == 2
        print(f"\nNACK of {broken.name}: {got.rollout.message}")
        assert greedy(w.grpc) == (text, "2")  # the good version never stopped serving

    lmaas("rollback", "smollm2", "--to", "1", "--wait", address=cp, timeout=300)
    assert greedy(w.grpc) == (text, "1")
    print(f"SmolLM2 directory (541 MB): push {pushed:.1f} s, deploy→ACK {deployed:.1f} s, "
          f"push of a version sharing the weights {repushed:.1f} s")
