"""``lmaas model optimize`` end to end: a real control plane (and a real worker for the canary), the CLI and the
SDK, every recipe on small models built here.

Timings are short (``--seconds 0.05``): the tests check that speed-ups are measured and recorded, never their size.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from cp_harness import lmaas, write_scale_onnx
from lmaas.client.control import ControlPlaneClient
from lmaas.optimize import optimize
from lmaas.protos.compression import pack, unpack
from lmaas.protos.errors import DataLoss, FailedPrecondition, InvalidArgument
from lmaas.protos.lmaas.control.v1 import resources_pb2 as pb
from models import write_mlp_onnx, write_mlp_torchscript
from onnx import numpy_helper
from processes import ServerProcess, start_worker

FAST = ("--seconds", "0.05")


def write_cnn_onnx(path: Path) -> Path:
    """A small conv net: x FP32 [-1, 3, 16, 16] → logits [-1, 5]."""
    import torch

    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3, stride=2, padding=1), torch.nn.ReLU(),
        torch.nn.Conv2d(8, 16, 3, stride=2, padding=1), torch.nn.ReLU(),
        torch.nn.Flatten(), torch.nn.Linear(16 * 4 * 4, 5),
    ).eval()
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.onnx.export(net, (torch.zeros(1, 3, 16, 16),), str(path), input_names=["x"], output_names=["y"],
                      dynamic_axes={"x": {0: "batch"}, "y": {0: "batch"}}, dynamo=False)
    return path


def write_wide_mlp_onnx(path: Path) -> Path:
    """An MLP big enough for dynamic int8 (about 300k weights): x FP32 [-1, 64] → y [-1, 8]."""
    import torch

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(64, 512), torch.nn.ReLU(), torch.nn.Linear(512, 512), torch.nn.ReLU(),
                              torch.nn.Linear(512, 8)).eval()
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.onnx.export(net, (torch.zeros(1, 64),), str(path), input_names=["x"], output_names=["y"],
                      dynamic_axes={"x": {0: "batch"}, "y": {0: "batch"}}, dynamo=False)
    return path


def push(cp: ControlPlaneClient, name: str, path: Path, **kw: object) -> int:
    return cp.push(name, path, **kw).version  # type: ignore[arg-type]


def weights(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    return {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}


def derived(out: str, name: str) -> int:
    match = re.search(rf"^{name}: derived version (\d+) ", out, re.M)
    assert match, out
    return int(match.group(1))


def test_int8_dynamic_through_the_cli_with_lineage_and_figures(cp: ControlPlaneClient, plane: ServerProcess,
                                                                 tmp_path: Path) -> None:
    parent = push(cp, "mlp8", write_wide_mlp_onnx(tmp_path / "wide.onnx"))
    run = lmaas("model", "optimize", "mlp8", str(parent), "--recipe", "int8-dynamic", *FAST, address=plane.grpc)
    n = derived(run.stdout, "mlp8")
    assert "x at batch 1" in run.stdout and "max rel error" in run.stdout
    v = cp.get_version("mlp8", n)
    d = v.derivation
    assert v.parent_version == parent and d.recipe == "int8-dynamic"
    assert json.loads(d.params["weight_type"]) == "QInt8" and "onnxruntime" in d.tool_versions
    assert [m.batch for m in d.speed] == [1, 8] and all(m.speedup > 0 and m.parent_samples_per_s > 0 for m in d.speed)
    assert d.parent_size_bytes == cp.get_version("mlp8", parent).size_bytes and d.size_bytes == v.size_bytes
    assert d.accuracy.max_abs_error > 0 and d.accuracy.max_rel_error <= d.max_error == 0.05
    assert d.accuracy.reference == "sampled-parent" and d.accuracy.samples == 64

    import httpx

    body = httpx.get(f"{plane.http_url}/api/v1/models/mlp8/versions/{n}",
                     headers={"authorization": f"Bearer {cp.metadata[0][1].split()[1]}"}).json()
    assert body["parent_version"] == parent and body["derivation"]["recipe"] == "int8-dynamic"
    assert body["derivation"]["accuracy"]["max_abs_error"] == pytest.approx(d.accuracy.max_abs_error)

    tree = lmaas("model", "versions", "mlp8", address=plane.grpc).stdout
    assert re.search(rf"v{parent}\b.*\n.*v{n} int8-dynamic \d+\.\d\dx@b1 \d+\.\d\dx@b8 err \d", tree), tree


def write_mlp_onnx_at(path: Path, seed: int = 0) -> Path:
    write_mlp_onnx(path, seed=seed)
    return path


def test_int8_static_on_a_cnn_with_eval_and_calibration_files(cp: ControlPlaneClient, plane: ServerProcess,
                                                               tmp_path: Path) -> None:
    model = write_cnn_onnx(tmp_path / "cnn.onnx")
    parent = push(cp, "cnn", model)
    rng = np.random.default_rng(1)
    x = rng.standard_normal((32, 3, 16, 16)).astype(np.float32)
    expected = ort.InferenceSession(str(model)).run(None, {"x": x})[0]
    np.savez(tmp_path / "eval.npz", x=x, y=expected)
    np.savez(tmp_path / "calib.npz", x=rng.standard_normal((48, 3, 16, 16)).astype(np.float32))
    # a tiny net, so the worst element is far off (the gate is on max |diff| / max |ref|): a loose bound
    run = lmaas("model", "optimize", "cnn", str(parent), "--recipe", "int8-static", "--eval",
                str(tmp_path / "eval.npz"), "--calibration", str(tmp_path / "calib.npz"), "--max-error", "0.5",
                *FAST, address=plane.grpc)
    d = cp.get_version("cnn", derived(run.stdout, "cnn")).derivation
    assert d.accuracy.reference == "eval" and d.accuracy.samples == 32 and d.max_error == 0.5
    assert 0 < d.accuracy.max_rel_error <= 0.5 and d.accuracy.mean_rel_error < 0.1
    assert d.accuracy.HasField("top1_agreement")
    assert json.loads(d.params["per_channel"]) is True and json.loads(d.params["quant_format"]) == "QDQ"
    assert json.loads(d.params["calibration_samples"]) == 48
    assert json.loads(d.params["calibration_source"]) == "eval-parent"  # the calibration file has no outputs

    # dynamic int8 does not suit a conv net (ConvInteger is slower than fp32): refused, naming recipe and model
    before = len(cp.list_versions("cnn"))
    with pytest.raises(FailedPrecondition, match=r"recipe 'int8-dynamic' does not suit model 'cnn' version 1: .*Conv"):
        optimize(cp, "cnn", parent, "int8-dynamic", seconds=0.05)
    assert len(cp.list_versions("cnn")) == before


def test_fp16_and_ort_optimize_through_the_sdk(cp: ControlPlaneClient, tmp_path: Path) -> None:
    parent = push(cp, "mlp16", write_mlp_onnx_at(tmp_path / "mlp.onnx"))
    half = optimize(cp, "mlp16", parent, "fp16", seconds=0.05)
    assert half.version is not None and half.version.parent_version == parent
    assert half.derivation.accuracy.max_abs_error <= 1e-2 and half.derivation.max_error == 0.01
    cp.download("mlp16", half.version.version, tmp_path / "half.onnx")
    types = {i.data_type for i in onnx.load(str(tmp_path / "half.onnx")).graph.initializer}
    assert onnx.TensorProto.FLOAT16 in types

    opt = optimize(cp, "mlp16", parent, "ort-optimize", seconds=0.05)
    assert opt.version is not None and opt.derivation.accuracy.max_abs_error <= 1e-5
    assert json.loads(opt.derivation.params["level"]) == "extended"


def test_the_gate_refuses_and_registers_nothing(cp: ControlPlaneClient, plane: ServerProcess,
                                                tmp_path: Path) -> None:
    parent = push(cp, "gated", write_wide_mlp_onnx(tmp_path / "wide.onnx"))
    before = cp.list_versions("gated")
    run = lmaas("model", "optimize", "gated", str(parent), "--recipe", "int8-dynamic", "--max-error", "1e-9",
                *FAST, address=plane.grpc, check=False)
    assert run.returncode == 1, run.stdout
    assert "FAILED_PRECONDITION" in run.stderr and "over the accuracy gate" in run.stderr
    assert re.search(r"max rel error \d", run.stderr) and "no version registered" in run.stderr
    assert cp.list_versions("gated") == before


def test_unknown_recipe_and_unsupported_model_name_both(cp: ControlPlaneClient, plane: ServerProcess,
                                                        tmp_path: Path) -> None:
    parent = push(cp, "plain", write_mlp_onnx_at(tmp_path / "mlp.onnx"))
    run = lmaas("model", "optimize", "plain", str(parent), "--recipe", "distil-magic", address=plane.grpc,
                check=False)
    assert run.returncode == 1 and "INVALID_ARGUMENT" in run.stderr
    assert "'distil-magic'" in run.stderr and "model 'plain'" in run.stderr and "int8-static" in run.stderr

    write_mlp_torchscript(tmp_path / "ts")
    ts = push(cp, "scripted", tmp_path / "ts" / "1" / "model.pt", config={
        "inputs": [{"name": "x", "datatype": "FP32", "dims": [4]}],
        "outputs": [{"name": "y", "datatype": "FP32", "dims": [3]}]})
    with pytest.raises(FailedPrecondition, match=r"recipe 'fp16' does not suit model 'scripted' version 1: .*"
                                                 r"'torchscript'"):
        optimize(cp, "scripted", ts, "fp16")
    with pytest.raises(FailedPrecondition, match=r"recipe 'int8-dynamic' does not suit model 'plain' version 1: .*"
                                                 r"too small"):
        optimize(cp, "plain", parent, "int8-dynamic")
    with pytest.raises(InvalidArgument, match=r"prune --sparsity 1.5"):
        optimize(cp, "plain", parent, "prune", options={"sparsity": 1.5})


def test_prune_zeroes_the_smallest_weights(cp: ControlPlaneClient, tmp_path: Path) -> None:
    parent = push(cp, "pruned", write_mlp_onnx_at(tmp_path / "mlp.onnx"))
    result = optimize(cp, "pruned", parent, "prune", options={"sparsity": 0.5}, seconds=0.05)
    assert result.version is not None and json.loads(result.derivation.params["measured_sparsity"]) >= 0.5
    cp.download("pruned", result.version.version, tmp_path / "p.onnx")
    before, after = weights(onnx.load(str(tmp_path / "mlp.onnx"))), weights(onnx.load(str(tmp_path / "p.onnx")))
    for name, w in after.items():
        if w.ndim >= 2:  # half zero, and the kept ones are the largest in magnitude, unchanged
            kept = w != 0
            assert kept.sum() == w.size - round(0.5 * w.size)
            assert np.abs(before[name][~kept]).max() <= np.abs(before[name][kept]).min()
            np.testing.assert_array_equal(w[kept], before[name][kept])
        else:
            np.testing.assert_array_equal(w, before[name])
    assert result.derivation.accuracy.max_abs_error > 0


def test_merge_identical_versions_gives_identical_weights_and_averages_others(cp: ControlPlaneClient,
                                                                              plane: ServerProcess,
                                                                              tmp_path: Path) -> None:
    a = write_mlp_onnx_at(tmp_path / "a.onnx", seed=0)
    b = write_mlp_onnx_at(tmp_path / "b.onnx", seed=1)
    v1 = push(cp, "soup", a)
    v2 = push(cp, "soup", a, parent_version=v1)  # the same weights again, as a version of its own
    v3 = push(cp, "soup", b)
    run = lmaas("model", "optimize", "soup", str(v1), "--recipe", "merge", "--with", str(v2), *FAST,
                address=plane.grpc)
    same = derived(run.stdout, "soup")
    cp.download("soup", same, tmp_path / "same.onnx")
    original, merged = weights(onnx.load(str(a))), weights(onnx.load(str(tmp_path / "same.onnx")))
    assert original.keys() == merged.keys()
    for name, w in original.items():
        np.testing.assert_array_equal(merged[name], w)
    d = cp.get_version("soup", same).derivation
    assert list(d.merged_versions) == [v2] and d.accuracy.max_abs_error == 0

    soup = optimize(cp, "soup", v1, "merge", with_versions=[v3], seconds=0.05)
    assert soup.version is not None and list(soup.derivation.merged_versions) == [v3]
    cp.download("soup", soup.version.version, tmp_path / "soup.onnx")
    averaged, other = weights(onnx.load(str(tmp_path / "soup.onnx"))), weights(onnx.load(str(b)))
    for name, w in original.items():
        np.testing.assert_allclose(averaged[name], (w + other[name]) / 2, rtol=1e-6)

    v4 = push(cp, "soup", write_scale_onnx(tmp_path / "scale.onnx", 2.0))
    with pytest.raises(FailedPrecondition, match=rf"recipe 'merge' does not suit model 'soup' version {v1}: "
                                                 rf"version {v4} has a different architecture"):
        optimize(cp, "soup", v1, "merge", with_versions=[v4])


def test_tune_records_the_best_config_and_keeps_the_artifact(cp: ControlPlaneClient, tmp_path: Path) -> None:
    parent = push(cp, "tuned", write_mlp_onnx_at(tmp_path / "mlp.onnx"))
    result = optimize(cp, "tuned", parent, "tune", options={"tune_seconds": 0.05, "cores": 2}, seconds=0.05)
    assert result.version is not None
    config = json.loads(result.version.config_json)
    params = {k: json.loads(v) for k, v in result.derivation.params.items()}
    assert config["instance_count"] == params["best_instance_count"]
    assert config["parameters"]["intra_op_threads"] == params["best_intra_op_threads"]
    assert set(params["grid"]) >= {"1x1", "2x1", "1x2"}
    assert result.version.digest == cp.get_version("tuned", parent).digest
    assert result.derivation.speed[0].speedup == pytest.approx(
        params["best_samples_per_s"] / params["base_samples_per_s"], rel=1e-6)


def test_deploy_canary_serves_the_derived_version_to_about_w_percent(cp: ControlPlaneClient, plane: ServerProcess,
                                                                     tmp_path: Path) -> None:
    import tritonclient.grpc as tc

    model = write_mlp_onnx_at(tmp_path / "mlp.onnx")
    parent = push(cp, "canaried", model)
    worker = start_worker(None, "--control-plane", plane.grpc, "--worker-id", "opt-w1",
                          "--cache-dir", str(tmp_path / "cache"))
    try:
        cp.deploy("canaried", parent)
        cp.wait_rollout("canaried", timeout=60)
        run = lmaas("model", "optimize", "canaried", str(parent), "--recipe", "prune", "--sparsity", "0.5",
                    "--deploy-canary", "30", *FAST, address=plane.grpc)
        n = derived(run.stdout, "canaried")
        spec = cp.get_deployment("canaried").deployment.spec
        assert (spec.stable_version, spec.canary_version, spec.canary_weight) == (parent, n, 30)
        x = np.arange(8, dtype=np.float32).reshape(2, 4)
        stable = ort.InferenceSession(str(model)).run(None, {"x": x})[0]
        with tc.InferenceServerClient(worker.grpc) as client:
            inp = tc.InferInput("x", [2, 4], "FP32")
            inp.set_data_from_numpy(x)
            outs = [client.infer("canaried", [inp]).as_numpy("y") for _ in range(200)]
        canary = sum(not np.allclose(y, stable, atol=1e-6) for y in outs) / len(outs)
        print(f"\ncanary 30%: {canary:.1%} of 200 requests went to derived version {n}")
        assert 0.15 <= canary <= 0.45

        # a compressed version: stored and sent as onnx.xz, unpacked and verified by the worker, same outputs
        packed = optimize(cp, "canaried", parent, "compress", seconds=0.05)
        assert packed.version is not None and packed.version.format == "onnx.xz"
        assert packed.derivation.accuracy.max_abs_error == 0
        assert json.loads(packed.derivation.params["original_sha256"]) == cp.get_version("canaried", parent).digest
        cp.deploy("canaried", packed.version.version)
        assert cp.wait_rollout("canaried", timeout=60).phase == pb.ROLLOUT_PHASE_SUCCEEDED
        with tc.InferenceServerClient(worker.grpc) as client:
            np.testing.assert_array_equal(client.infer("canaried", [inp]).as_numpy("y"), stable)
    finally:
        worker.stop()


def test_a_compressed_artifact_round_trips_and_a_corrupted_one_is_rejected(tmp_path: Path) -> None:
    src = write_mlp_onnx_at(tmp_path / "mlp.onnx")
    header = pack(src, tmp_path / "m.onnx.xz")
    out = unpack(tmp_path / "m.onnx.xz", tmp_path / "model.onnx")
    assert out.read_bytes() == src.read_bytes() and header.size == src.stat().st_size

    data = bytearray((tmp_path / "m.onnx.xz").read_bytes())
    start = data.index(b"\n") + 1
    flipped = bytearray(data)
    flipped[start + (len(data) - start) // 2] ^= 0xFF  # a flipped byte inside the xz stream
    (tmp_path / "bad.xz").write_bytes(flipped)
    with pytest.raises(DataLoss, match=r"corrupt compressed stream|decompressed to sha256"):
        unpack(tmp_path / "bad.xz", tmp_path / "bad.onnx")
    assert not (tmp_path / "bad.onnx").exists()

    # a valid stream of other bytes under this header: caught by the original's sha256
    other = pack(write_scale_onnx(tmp_path / "scale.onnx", 2.0), tmp_path / "other.xz")
    swapped = (tmp_path / "other.xz").read_bytes().replace(other.sha256.encode(), header.sha256.encode(), 1)
    (tmp_path / "swapped.xz").write_bytes(swapped)
    with pytest.raises(DataLoss, match=rf"declares sha256:{header.sha256}"):
        unpack(tmp_path / "swapped.xz", tmp_path / "swapped.onnx")
    with pytest.raises(DataLoss, match="not a compressed LMaaS artifact"):
        unpack(src, tmp_path / "x.onnx")
