"""Triton's request tracing (``TraceSetting``): sampled requests write timestamp records to a JSON trace file.

Settings, with Triton's names and defaults, globally and per model (a model's own value wins; a value cleared
with an empty list falls back to the global one, a cleared global one to the default):

- ``trace_level``: ``["OFF"]`` or ``["TIMESTAMPS"]`` (``TENSORS`` is not implemented: UNIMPLEMENTED).
- ``trace_rate``: trace every N-th request (default 1000).
- ``trace_count``: traces still to collect, then tracing stops (-1, the default: no limit).
- ``log_frequency``: 0 writes the collected traces to ``trace_file`` when a setting changes, when
  ``trace_count`` runs out and at shutdown; N > 0 writes every N traces to ``<trace_file>.<index>``, as Triton.
- ``trace_file``: fixed when the worker starts (``--trace-file``): as Triton since 24.01, a remote client may
  not choose a path the server writes to. Without one, turning tracing on is FAILED_PRECONDITION.

A record (Triton's trace file format: a JSON array of objects)::

    {"id": 1, "model_name": "m", "model_version": 1, "request_id": "", "timestamps": [
        {"name": "REQUEST_START", "ns": ...}, {"name": "QUEUE_START", "ns": ...}, {"name": "COMPUTE_START", ...},
        {"name": "COMPUTE_INPUT_END", ...}, {"name": "COMPUTE_OUTPUT_START", ...}, {"name": "COMPUTE_END", ...},
        {"name": "REQUEST_END", ...}]}

Timestamps are ``time.monotonic_ns()`` (a steady clock, as Triton's). A file is one valid JSON array after every
write: later writes replace its closing bracket. OpenTelemetry export is not wired (the SDK is not installed).
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import threading
import time
from pathlib import Path
from typing import Any

from lmaas.protos.errors import FailedPrecondition, InvalidArgument, Unimplemented

__all__ = ["TRACE_DEFAULTS", "Trace", "Tracer"]

log = logging.getLogger("lmaas.worker")

TRACE_DEFAULTS: dict[str, list[str]] = {
    "trace_level": ["OFF"],
    "trace_rate": ["1000"],
    "trace_count": ["-1"],
    "log_frequency": ["0"],
}
_LEVELS = frozenset({"OFF", "TIMESTAMPS"})


class Trace:
    """The timestamps of one sampled request; :meth:`finish` hands it to the tracer."""

    __slots__ = ("_tracer", "id", "model", "request_id", "stamps", "version")

    def __init__(self, tracer: Tracer, trace_id: int, model: str, request_id: str) -> None:
        self._tracer, self.id, self.model, self.request_id = tracer, trace_id, model, request_id
        self.version = -1
        self.stamps: list[tuple[str, int]] = [("REQUEST_START", time.monotonic_ns())]

    def stamp(self, name: str) -> None:
        self.stamps.append((name, time.monotonic_ns()))

    def finish(self) -> None:
        self.stamp("REQUEST_END")
        self._tracer._collect(self)

    def record(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "model_name": self.model,
            "model_version": self.version,
            "request_id": self.request_id,
            "timestamps": [{"name": name, "ns": ns} for name, ns in self.stamps],
        }


class _Scope:
    """One set of settings in force (global, or one model's), parsed once after each change, and its sampling
    state: requests seen and traces left."""

    __slots__ = ("frequency", "left", "on", "rate", "seen")

    def __init__(self, settings: dict[str, list[str]]) -> None:
        self.on = settings["trace_level"] == ["TIMESTAMPS"]
        self.rate = int(settings["trace_rate"][0])
        self.left = int(settings["trace_count"][0])
        self.frequency = int(settings["log_frequency"][0])
        self.seen = 0


class Tracer:
    """One per worker (the DataPlane's); :meth:`start` is the request path's only call and costs one check when off."""

    def __init__(self, trace_file: Path | None = None) -> None:
        self.trace_file = trace_file
        self._global: dict[str, list[str]] = dict(TRACE_DEFAULTS)
        self._models: dict[str, dict[str, list[str]]] = {}
        self._scopes: dict[str, _Scope] = {}
        self._ids = itertools.count(1)
        self._collected: list[dict[str, Any]] = []
        self._index = 0  # next <trace_file>.<index> when log_frequency > 0
        self._lock = threading.Lock()  # file writes come from the loop and from shutdown
        self._on = False

    # ---- settings (TraceSetting RPC and HTTP route) ----

    def effective(self, model: str = "") -> dict[str, list[str]]:
        merged = {**self._global, **self._models.get(model, {})}
        return {**merged, "trace_file": [str(self.trace_file) if self.trace_file else ""]}

    def settings(self, updates: dict[str, list[str]], model: str = "") -> dict[str, list[str]]:
        """Apply ``updates`` (Triton's keys; an empty list clears), then answer the settings in force."""
        if updates:
            current = self.effective(model)
            checked = {key: self._check(key, values, current) for key, values in updates.items()}
            self.flush()  # traces collected under the old settings go out first, as Triton does
            target = self._models.setdefault(model, {}) if model else self._global
            for key, values in checked.items():
                if key == "trace_file":
                    continue
                if values:
                    target[key] = values
                elif model:
                    target.pop(key, None)
                else:
                    target[key] = TRACE_DEFAULTS[key]
            if model and not target:
                self._models.pop(model, None)
            self._scopes.clear()  # parsed again at their next use: a new count and rate start now
            self._on = any(self.effective(m)["trace_level"] == ["TIMESTAMPS"] for m in ["", *self._models])
        return self.effective(model)

    def _check(self, key: str, values: list[str], current: dict[str, list[str]]) -> list[str]:
        if key not in current:
            raise InvalidArgument(f"unknown trace setting '{key}': this server has {sorted(current)}")
        if key == "trace_file":
            if values and values != current["trace_file"]:
                raise InvalidArgument(
                    "trace setting 'trace_file' cannot be changed through the API: start the worker with --trace-file"
                )
            return values
        if key == "trace_level":
            unknown = set(values) - _LEVELS - {"TENSORS"}
            if unknown:
                raise InvalidArgument(f"trace_level {sorted(unknown)} is not one of OFF, TIMESTAMPS, TENSORS")
            if "TENSORS" in values:
                raise Unimplemented("trace level TENSORS is not supported by this worker: use TIMESTAMPS")
            if "OFF" in values and len(values) > 1:
                raise InvalidArgument("trace_level OFF cannot be combined with another level")
            if "TIMESTAMPS" in values and self.trace_file is None:
                raise FailedPrecondition("tracing needs a trace file: start the worker with --trace-file")
            return values
        if not values:
            return values
        lowest = {"trace_rate": 1, "trace_count": -1, "log_frequency": 0}[key]
        try:
            number = int(values[0])
        except ValueError:
            number = lowest - 1
        if len(values) != 1 or number < lowest:
            raise InvalidArgument(f"trace setting '{key}' must be one integer >= {lowest}, got {values}")
        return [str(number)]

    # ---- the request path ----

    def start(self, model: str, request_id: str = "") -> Trace | None:
        """A trace if this request is sampled, else None."""
        if not self._on:
            return None
        scope = self._scope(model)
        if not scope.on or scope.left == 0:
            return None
        scope.seen += 1
        if (scope.seen - 1) % scope.rate:
            return None
        if scope.left > 0:
            scope.left -= 1
        return Trace(self, next(self._ids), model, request_id)

    def _scope(self, model: str) -> _Scope:
        """The settings in force for ``model`` (its own, else the global ones), parsed at their first use."""
        key = model if model in self._models else ""
        scope = self._scopes.get(key)
        if scope is None:
            scope = self._scopes[key] = _Scope(self.effective(key))
        return scope

    def _collect(self, trace: Trace) -> None:
        self._collected.append(trace.record())
        scope = self._scope(trace.model)
        if (scope.frequency and len(self._collected) >= scope.frequency) or scope.left == 0:
            self.flush(scope.frequency)

    # ---- output ----

    def flush(self, frequency: int | None = None) -> None:
        """Write what was collected: to ``<trace_file>.<index>`` (log_frequency > 0) or appended to trace_file."""
        with self._lock:
            records, self._collected = self._collected, []
            if not records or self.trace_file is None:
                return
            if frequency is None:
                frequency = int(self._global["log_frequency"][0])
            if frequency:
                path = self.trace_file.with_name(f"{self.trace_file.name}.{self._index}")
                self._index += 1
            else:
                path = self.trace_file
            try:
                _append_json_array(path, records)
            except OSError as exc:  # tracing must never fail a request or the shutdown
                log.error("trace file %s not written: %s", path, exc)


def _append_json_array(path: Path, records: list[dict[str, Any]]) -> None:
    """Keep ``path`` one JSON array: a new file gets ``[...]``, an existing one loses its ``]`` and gains ``,...]``."""
    body = ",".join(json.dumps(r, separators=(",", ":")) for r in records)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    with os.fdopen(fd, "r+b") as f:
        size = f.seek(0, os.SEEK_END)
        if size >= 2:
            f.seek(size - 1)
            f.write(f",{body}]".encode())
        else:
            f.seek(0)
            f.write(f"[{body}]".encode())
            f.truncate()
