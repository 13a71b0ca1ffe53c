"""A large artifact uploaded over the control plane's REST API beside a local disk copy of the same file.

One run: a file of ``--size`` bytes (default 1 GiB, random content) is copied on the local disk
(read + write + fsync, what any durable store must at least do), then uploaded with httpx as the body of
``POST /api/v1/models/{name}/versions`` to a real ``lmaas control-plane --http-port 0`` process on the same
disk, which streams it to its artifact store, fsyncs and verifies the sha256 before it answers. The
client's sha256 (it must send one) is computed beforehand and not timed. Prints both rates and their
ratio (issue target: upload >= 0.5 x local copy)::

    python -m benchmarks.upload                    # 1 GiB, once (I/O heavy: ~3 GiB written)
    python -m benchmarks.upload --size 64M         # a short smoke run
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import httpx

__all__ = ["main"]

TOKEN = "lmaas_00000000be01_" + "upload-benchmark-token-not-a-secret-0000000"
_LISTENING = re.compile(r"listening grpc=\S+ metrics=\S+ http=(\S+)")
_CHUNK = 1 << 20


def _size(text: str) -> int:
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    return int(text[:-1]) * units[text[-1].upper()] if text[-1].upper() in units else int(text)


def _write_random(path: Path, size: int) -> str:
    digest = hashlib.sha256()
    block = os.urandom(_CHUNK)
    with path.open("wb") as f:
        for i in range(0, size, _CHUNK):
            piece = block[: min(_CHUNK, size - i)]
            piece = i.to_bytes(8, "little") + piece[8:]  # every block differs: no dedup anywhere
            digest.update(piece)
            f.write(piece)
    return digest.hexdigest()


def _copy(src: Path, dst: Path) -> float:
    start = time.perf_counter()
    with src.open("rb") as i, dst.open("wb") as o:
        while data := i.read(_CHUNK):
            o.write(data)
        o.flush()
        os.fsync(o.fileno())
    return time.perf_counter() - start


def _control_plane(tmp: Path) -> tuple[subprocess.Popen[str], str]:
    (tmp / "admin.token").write_text(TOKEN + "\n")
    (tmp / "admin.token").chmod(0o600)
    proc = subprocess.Popen(
        [sys.executable, "-m", "lmaas.cli", "control-plane", "--grpc-port", "0", "--metrics-port", "-1",
         "--http-port", "0", "--store", f"sqlite:///{tmp / 'control.db'}", "--artifact-dir", str(tmp / "artifacts"),
         "--bootstrap-token-file", str(tmp / "admin.token"), "--log-level", "warning"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    assert proc.stdout is not None
    deadline = time.monotonic() + 60
    for line in proc.stdout:
        match = _LISTENING.search(line)
        if match:
            threading.Thread(target=proc.stdout.read, daemon=True).start()  # keep draining its output
            return proc, match.group(1)
        if time.monotonic() > deadline:
            break
    proc.kill()
    raise RuntimeError("the control plane did not start")


def _upload(address: str, path: Path, digest: str) -> float:
    def body() -> Iterator[bytes]:
        with path.open("rb") as f:
            while data := f.read(_CHUNK):
                yield data

    headers = {"Authorization": f"Bearer {TOKEN}", "X-LMaaS-Format": "onnx", "X-LMaaS-Sha256": digest,
               "Content-Length": str(path.stat().st_size)}
    with httpx.Client(base_url=f"http://{address}", timeout=600) as client:
        start = time.perf_counter()
        reply = client.post("/api/v1/models/big/versions", content=body(), headers=headers)
        elapsed = time.perf_counter() - start
    if reply.status_code != 201:
        raise RuntimeError(f"upload failed: {reply.status_code} {reply.text}")
    if reply.json()["digest"] != digest:
        raise RuntimeError("the stored digest differs")
    return elapsed


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.upload", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", type=_size, default=1 << 30, help="artifact size: bytes, or with K/M/G (default 1G)")
    p.add_argument("--dir", type=Path, default=None, help="working directory (default: a temporary one)")
    p.add_argument("--json", type=Path, default=None, help="also write the result as JSON to this file")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory(dir=args.dir, prefix="lmaas-upload-") as name:
        tmp = Path(name)
        src = tmp / "artifact.bin"
        digest = _write_random(src, args.size)
        copy_s = _copy(src, tmp / "copy.bin")
        (tmp / "copy.bin").unlink()
        proc, address = _control_plane(tmp)
        try:
            upload_s = _upload(address, src, digest)
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(30)
    mib = args.size / (1 << 20)
    result = {"size_bytes": args.size, "copy_s": round(copy_s, 3), "upload_s": round(upload_s, 3),
              "copy_mib_s": round(mib / copy_s, 1), "upload_mib_s": round(mib / upload_s, 1),
              "ratio": round(copy_s / upload_s, 3)}
    print(f"{'artifact':>10} {'local copy':>16} {'HTTP upload':>16} {'upload/copy':>12}")
    print(f"{mib:>6.0f} MiB {copy_s:>7.2f} s {result['copy_mib_s']:>5} MiB/s {upload_s:>6.2f} s "
          f"{result['upload_mib_s']:>5} MiB/s {result['ratio']:>11.2f}x")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
