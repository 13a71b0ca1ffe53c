"""Who used the CPU while a measurement ran: the server under test, the load generator, and everything else.

From /proc (Linux; elsewhere every value is None), over the measurement window, in cores (1.0 = one core
busy for the whole window):

* ``server_cores``: the server's process tree (its own threads, worker processes, reaped children);
* ``loadgen_cores``: this benchmark's other descendants, i.e. perf_analyzer (reaped, so in our cutime), minus
  the servers and minus this Python process itself;
* ``foreign``: all CPU time used on the host minus this whole process tree, as a fraction of the host's
  cores — the noise indicator for a shared machine.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

__all__ = ["CpuMeter"]


def _host_busy() -> tuple[int, int]:
    fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    total = sum(fields[:8])  # guest time is already in user
    return total - fields[3] - fields[4], total


def _proc_table() -> dict[int, tuple[int, int, int]]:
    """pid -> (ppid, own utime+stime, reaped children's cutime+cstime)."""
    table: dict[int, tuple[int, int, int]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            rest = Path(entry.path, "stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        table[int(entry.name)] = (int(rest[1]), int(rest[11]) + int(rest[12]), int(rest[13]) + int(rest[14]))
    return table


def _tree(table: dict[int, tuple[int, int, int]], root: int) -> int:
    children: dict[int, list[int]] = {}
    for pid, (ppid, _, _) in table.items():
        children.setdefault(ppid, []).append(pid)
    total, todo = 0, [root]
    while todo:
        pid = todo.pop()
        if pid in table:
            total += table[pid][1] + table[pid][2]
        todo.extend(children.get(pid, ()))
    return total


class CpuMeter:
    """``start()``, run the measurement, ``stop()`` -> {"foreign", "server_cores", "loadgen_cores"}."""

    def __init__(self, server_pid: int | None = None, other_server_pids: tuple[int, ...] = ()) -> None:
        self._server = server_pid
        self._others = other_server_pids
        self._cores = max(1, len(os.sched_getaffinity(0)))
        self._start: Mapping[str, int] | None = None

    def _snapshot(self) -> dict[str, int]:
        busy, total = _host_busy()
        table = _proc_table()
        me = os.getpid()
        snap = {"busy": busy, "total": total, "ours": _tree(table, me), "self": table.get(me, (0, 0, 0))[1]}
        snap["server"] = _tree(table, self._server) if self._server else 0
        snap["others"] = sum(_tree(table, p) for p in self._others)
        return snap

    def start(self) -> None:
        try:
            self._start = self._snapshot()
        except OSError:
            self._start = None

    def stop(self) -> dict[str, Any]:
        empty: dict[str, Any] = {"foreign": None, "server_cores": None, "loadgen_cores": None}
        if self._start is None:
            return empty
        try:
            end = self._snapshot()
        except OSError:
            return empty
        d = {k: end[k] - self._start[k] for k in end}
        if d["total"] <= 0:
            return empty
        wall = d["total"] / self._cores  # /proc/stat sums every CPU; per-process times are per thread-CPU
        loadgen = d["ours"] - d["server"] - d["others"] - d["self"]
        return {
            "foreign": round(max(0.0, min(1.0, (d["busy"] - d["ours"]) / d["total"])), 3),
            "server_cores": round(d["server"] / wall, 3) if self._server else None,
            "loadgen_cores": round(max(0, loadgen) / wall, 3),
        }
