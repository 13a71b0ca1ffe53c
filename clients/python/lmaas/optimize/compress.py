"""compress: the artifact xz-compressed for storage and transfer (format ``onnx.xz``); the worker unpacks it at
load and checks the original's sha256 (:mod:`lmaas.protos.compression`). Lossless: the gate is exact."""

from __future__ import annotations

from lmaas.optimize.base import Job, Made
from lmaas.protos.compression import pack, unpack

__all__ = ["compress"]


def compress(job: Job) -> Made:
    preset = int(job.options.get("preset", 6))
    header = pack(job.src, job.dst, preset=preset)
    check = unpack(job.dst, job.dst.with_name("unpacked.onnx"))  # what a worker will load, verified the same way
    return Made({"codec": "xz", "preset": preset, "original_sha256": header.sha256, "original_size": header.size},
                format="onnx.xz", measured=check)
