"""Triton's system shared-memory extension: tensors in POSIX shm regions, only offsets on the socket.

A client creates a POSIX shared-memory object (``shm_open``; tritonclient.utils.shared_memory does), registers
a region of it (name, key, offset, byte_size), and then names the region in an input's or requested output's
parameters (``shared_memory_region``, ``shared_memory_byte_size``, ``shared_memory_offset``). The worker maps
the object once at registration; inputs are read from it and outputs written into it. The client owns the
object: the worker never creates or unlinks one, it only maps and unmaps (on unregister and at shutdown).
"""

from __future__ import annotations

import mmap
import os
import re
import threading
from dataclasses import dataclass
from pathlib import Path

from lmaas.protos.errors import AlreadyExists, InvalidArgument, NotFound
from lmaas.protos.inference import grpc_service_pb2 as pb

__all__ = ["SHM_PARAMETERS", "Region", "SharedMemory"]

SHM_PARAMETERS = ("shared_memory_region", "shared_memory_byte_size", "shared_memory_offset")
_SHM_DIR = Path("/dev/shm")
_KEY = re.compile(r"/?[A-Za-z0-9._-]{1,250}")


@dataclass(slots=True)
class Region:
    name: str
    key: str
    offset: int
    byte_size: int
    mapping: mmap.mmap


def _param_int(params: object, key: str, where: str) -> int:
    p = params[key]  # type: ignore[index]
    which = p.WhichOneof("parameter_choice")
    if which not in ("int64_param", "uint64_param"):
        raise InvalidArgument(f"{where}: parameter '{key}' must be an integer")
    value: int = getattr(p, which)
    if value < 0:
        raise InvalidArgument(f"{where}: parameter '{key}' must not be negative")
    return value


def _location(params: object, where: str) -> tuple[str, int, int]:
    """(region, offset, byte size) that a tensor's parameters name."""
    region_p = params["shared_memory_region"]  # type: ignore[index]
    if region_p.WhichOneof("parameter_choice") != "string_param":
        raise InvalidArgument(f"{where}: parameter 'shared_memory_region' must be a string")
    if "shared_memory_byte_size" not in params:  # type: ignore[operator]
        raise InvalidArgument(f"{where}: shared_memory_region needs shared_memory_byte_size")
    size = _param_int(params, "shared_memory_byte_size", where)
    offset = _param_int(params, "shared_memory_offset", where) if "shared_memory_offset" in params else 0  # type: ignore[operator]
    return region_p.string_param, offset, size


class SharedMemory:
    """The registered regions of one worker (registration is rare; lookups take a lock held for a dict read)."""

    def __init__(self) -> None:
        self._regions: dict[str, Region] = {}
        self._lock = threading.Lock()

    # ---- registration ----

    def register(self, name: str, key: str, offset: int, byte_size: int) -> None:
        if not name:
            raise InvalidArgument("a shared-memory region needs a name")
        if not _KEY.fullmatch(key):
            raise InvalidArgument(f"shared-memory key '{key}' is not a POSIX shared-memory name like '/input0'")
        if byte_size <= 0:
            raise InvalidArgument(f"shared-memory region '{name}': byte_size must be positive")
        with self._lock:
            if name in self._regions:
                raise AlreadyExists(f"shared memory region '{name}' already in manager")
        path = _SHM_DIR / key.lstrip("/")
        try:
            fd = os.open(path, os.O_RDWR)
        except FileNotFoundError:
            raise InvalidArgument(f"unable to open shared-memory key '{key}': no such object") from None
        except OSError as exc:
            raise InvalidArgument(f"unable to open shared-memory key '{key}': {exc.strerror}") from None
        try:
            size = os.fstat(fd).st_size
            if offset + byte_size > size:
                raise InvalidArgument(
                    f"shared-memory region '{name}': offset {offset} + byte_size {byte_size} exceeds the "
                    f"{size}-byte object '{key}'"
                )
            mapping = mmap.mmap(fd, offset + byte_size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        finally:
            os.close(fd)
        with self._lock:
            if name in self._regions:  # registered meanwhile
                mapping.close()
                raise AlreadyExists(f"shared memory region '{name}' already in manager")
            self._regions[name] = Region(name, key, offset, byte_size, mapping)

    def unregister(self, name: str = "") -> None:
        """One region, or every region when ``name`` is empty; an unknown name is not an error (as Triton)."""
        with self._lock:
            gone = list(self._regions.values()) if not name else [r for r in [self._regions.get(name)] if r]
            for region in gone:
                del self._regions[region.name]
        for region in gone:
            region.mapping.close()

    def status(self, name: str = "") -> list[Region]:
        with self._lock:
            if not name:
                return list(self._regions.values())
            region = self._regions.get(name)
        if region is None:
            raise NotFound(f"Unable to find system shared memory region: '{name}'")
        return [region]

    def close(self) -> None:
        self.unregister()

    # ---- the inference path ----

    def _span(self, name: str, offset: int, size: int, where: str) -> tuple[Region, int]:
        with self._lock:
            region = self._regions.get(name)
        if region is None:
            raise InvalidArgument(f"{where}: Unable to find shared memory region: '{name}'")
        if offset + size > region.byte_size:
            raise InvalidArgument(
                f"{where}: offset {offset} + byte size {size} is past the end of the {region.byte_size}-byte "
                f"shared-memory region '{name}'"
            )
        return region, region.offset + offset

    def resolve_inputs(self, request: pb.ModelInferRequest) -> None:
        """Put each shared-memory input's bytes where ``raw_input_contents`` expects them (in place)."""
        if not any("shared_memory_region" in t.parameters for t in request.inputs):
            return
        given = iter(list(request.raw_input_contents))
        raw: list[bytes] = []
        for tensor in request.inputs:
            where = f"input '{tensor.name}'"
            if "shared_memory_region" in tensor.parameters:
                name, offset, size = _location(tensor.parameters, where)
                region, start = self._span(name, offset, size, where)
                raw.append(region.mapping[start : start + size])
                for key in SHM_PARAMETERS:
                    tensor.parameters.pop(key, None)
            elif tensor.HasField("contents"):
                raise InvalidArgument(f"{where}: typed contents cannot travel beside shared-memory inputs; send it raw")
            else:
                chunk = next(given, None)
                if chunk is None:
                    raise InvalidArgument(f"{where} has no data (neither shared memory nor raw_input_contents)")
                raw.append(chunk)
        if next(given, None) is not None:
            raise InvalidArgument("raw_input_contents has more entries than the inputs without shared memory")
        del request.raw_input_contents[:]
        request.raw_input_contents.extend(raw)

    def output_targets(self, request: pb.ModelInferRequest) -> dict[str, tuple[str, int, int]]:
        """Requested outputs that go to shared memory: name → (region, offset, byte size), checked now."""
        targets = {}
        for out in request.outputs:
            if "shared_memory_region" in out.parameters:
                where = f"output '{out.name}'"
                name, offset, size = _location(out.parameters, where)
                self._span(name, offset, size, where)
                targets[out.name] = (name, offset, size)
        return targets

    def write_outputs(self, response: pb.ModelInferResponse, targets: dict[str, tuple[str, int, int]]) -> None:
        """Move the named outputs' bytes into their regions; the response keeps the tensor with parameters."""
        for i, tensor in enumerate(response.outputs):
            if tensor.name not in targets:
                continue
            name, offset, size = targets[tensor.name]
            data = response.raw_output_contents[i]
            where = f"output '{tensor.name}'"
            if len(data) > size:
                raise InvalidArgument(
                    f"{where}: {len(data)} bytes do not fit the {size} bytes given in shared-memory region '{name}'"
                )
            region, start = self._span(name, offset, len(data), where)
            region.mapping[start : start + len(data)] = data
            response.raw_output_contents[i] = b""
            tensor.parameters["shared_memory_region"].string_param = name
            tensor.parameters["shared_memory_byte_size"].int64_param = len(data)
            if offset:
                tensor.parameters["shared_memory_offset"].int64_param = offset
