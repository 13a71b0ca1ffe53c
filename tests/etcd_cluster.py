"""Real etcd servers for tests: one member or a loopback cluster, started and stopped by PID.

Each member listens on free loopback ports (client and peer) and keeps its data in its own folder,
on tmpfs (``/dev/shm``) where available because etcd preallocates 64 MB WAL files and fsyncs every
write. A member can be stopped (SIGTERM, then SIGKILL), killed (SIGKILL), paused (SIGSTOP) and
started again on the same data dir, which is what watch-resume and fault tests need::

    with EtcdCluster(size=3) as cluster:
        store = EtcdStore(cluster.endpoints)
        cluster.members[cluster.leader_index()].kill()

Only the Debian ``etcd-server`` 3.4 binary is assumed (``etcd`` on PATH, or ``LMAAS_ETCD_BIN``).

Nothing outlives the test process, even when it is killed (``timeout``, Ctrl-C twice): members are
spawned from one long-lived thread through ``setpriv --pdeathsig SIGKILL``, so the kernel kills them
when that thread (the process) dies, and a scratch folder whose recorded owner PID is gone is
removed the next time a cluster is created.
"""

from __future__ import annotations

import atexit
import concurrent.futures
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType

__all__ = ["EtcdCluster", "EtcdMember", "etcd_binary", "free_port"]

_HOST = "127.0.0.1"
_PREFIX = "lmaas-etcd-"
_OWNER_FILE = "owner.pid"
_live: set[subprocess.Popen[bytes]] = set()
_live_lock = threading.Lock()
_handed_out: set[int] = set()


def etcd_binary() -> str | None:
    """Path of the etcd server binary, or None when it is not installed."""
    return os.environ.get("LMAAS_ETCD_BIN") or shutil.which("etcd")


def free_port() -> int:
    """A loopback TCP port that was free a moment ago and that this process has not handed out before."""
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind((_HOST, 0))
            port: int = sock.getsockname()[1]
        if port not in _handed_out:
            _handed_out.add(port)
            return port


def _kill_leftovers() -> None:
    with _live_lock:
        procs = list(_live)
    for proc in procs:
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGKILL)
        with contextlib.suppress(Exception):
            proc.wait(timeout=5)


atexit.register(_kill_leftovers)

# PR_SET_PDEATHSIG fires when the *thread* that forked the child exits, so every member is forked from
# this one thread, which lives as long as the process.
_spawner = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="etcd-spawner")
_SETPRIV = shutil.which("setpriv")


def _spawn(argv: list[str], log_path: Path) -> subprocess.Popen[bytes]:
    if _SETPRIV is not None:
        argv = [_SETPRIV, "--pdeathsig", "SIGKILL", "--", *argv]

    def popen() -> subprocess.Popen[bytes]:
        with open(log_path, "ab") as log:
            return subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True)

    return _spawner.submit(popen).result()


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _sweep_stale(root: Path) -> None:
    """Remove scratch folders of test processes that died without cleaning up (their members died with them)."""
    for folder in root.glob(f"{_PREFIX}*"):
        try:
            owner = int((folder / _OWNER_FILE).read_text())
        except (OSError, ValueError):
            continue  # not ours, or being created right now
        if not _pid_alive(owner):
            shutil.rmtree(folder, ignore_errors=True)


def _scratch_root() -> Path:
    shm = Path("/dev/shm")
    if shm.is_dir() and os.access(shm, os.W_OK):
        return shm
    return Path(tempfile.gettempdir())


class EtcdMember:
    """One etcd process. Its ports and data dir stay the same across restarts."""

    def __init__(
        self,
        name: str,
        data_dir: Path,
        *,
        client_port: int | None = None,
        peer_port: int | None = None,
        heartbeat_ms: int = 100,
        election_ms: int = 1000,
    ) -> None:
        self.name = name
        self.data_dir = data_dir
        self.client_port = client_port or free_port()
        self.peer_port = peer_port or free_port()
        self.heartbeat_ms = heartbeat_ms
        self.election_ms = election_ms
        self.log_path = data_dir.parent / f"{name}.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.initial_cluster = f"{name}={self.peer_url}"
        self.cluster_token = "lmaas-test"

    @property
    def endpoint(self) -> str:
        """``host:port`` of the client listener, as the store takes it."""
        return f"{_HOST}:{self.client_port}"

    @property
    def client_url(self) -> str:
        return f"http://{_HOST}:{self.client_port}"

    @property
    def peer_url(self) -> str:
        return f"http://{_HOST}:{self.peer_port}"

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def command(self) -> list[str]:
        binary = etcd_binary()
        if binary is None:
            raise RuntimeError("etcd is not installed (apt-get install etcd-server)")
        return [
            binary,
            f"--name={self.name}",
            f"--data-dir={self.data_dir}",
            f"--listen-client-urls={self.client_url}",
            f"--advertise-client-urls={self.client_url}",
            f"--listen-peer-urls={self.peer_url}",
            f"--initial-advertise-peer-urls={self.peer_url}",
            f"--initial-cluster={self.initial_cluster}",
            "--initial-cluster-state=new",
            f"--initial-cluster-token={self.cluster_token}",
            f"--heartbeat-interval={self.heartbeat_ms}",
            f"--election-timeout={self.election_ms}",
            "--logger=zap",
            "--log-outputs=stderr",
            "--log-level=warn",
        ]

    def start(self, *, wait: bool = True, timeout: float = 15.0) -> None:
        """Start the process (on its existing data dir, if any); by default wait until /health is true."""
        if self.running:
            raise RuntimeError(f"etcd member {self.name} already runs as PID {self.pid}")
        self.data_dir.parent.mkdir(parents=True, exist_ok=True)
        self.proc = _spawn(self.command(), self.log_path)
        with _live_lock:
            _live.add(self.proc)
        if wait:
            self.wait_healthy(timeout)

    def health(self) -> bool:
        """True when the member answers /health with a leader known."""
        try:
            with urllib.request.urlopen(f"{self.client_url}/health", timeout=0.5) as resp:
                body = json.loads(resp.read())
        except (OSError, ValueError):
            return False
        return bool(body.get("health") == "true")

    def wait_healthy(self, timeout: float = 15.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"etcd member {self.name} exited with {self.proc.returncode}; see {self.log_path}")
            if self.health():
                return
            time.sleep(0.02)
        raise TimeoutError(f"etcd member {self.name} not healthy after {timeout} s; see {self.log_path}")

    def status(self) -> dict[str, str]:
        """The Maintenance.Status answer through the JSON gateway (``leader``, ``header.member_id``...)."""
        req = urllib.request.Request(f"{self.client_url}/v3/maintenance/status", data=b"{}", method="POST")
        with urllib.request.urlopen(req, timeout=1.0) as resp:
            body: dict[str, str] = json.loads(resp.read())
        return body

    def is_leader(self) -> bool:
        try:
            status = self.status()
        except (OSError, ValueError):
            return False
        header = status.get("header")
        member_id = header.get("member_id") if isinstance(header, dict) else None
        return member_id is not None and member_id == status.get("leader")

    def _signal(self, sig: signal.Signals) -> None:
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.proc.pid, sig)

    def stop(self, timeout: float = 5.0) -> None:
        """SIGTERM, wait up to ``timeout``, then SIGKILL. No-op when not running."""
        proc = self.proc
        if proc is None:
            return
        self._signal(signal.SIGCONT)  # a paused member cannot handle SIGTERM
        self._signal(signal.SIGTERM)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self._signal(signal.SIGKILL)
            proc.wait(timeout=timeout)
        self._forget()

    def kill(self) -> None:
        """SIGKILL: a crash, no clean shutdown."""
        proc = self.proc
        if proc is None:
            return
        self._signal(signal.SIGKILL)
        proc.wait(timeout=10)
        self._forget()

    def pause(self) -> None:
        """SIGSTOP: the process holds its sockets but answers nothing (a hung member)."""
        self._signal(signal.SIGSTOP)

    def resume(self) -> None:
        self._signal(signal.SIGCONT)

    def restart(self, *, wait: bool = True, timeout: float = 15.0) -> None:
        """Stop, then start again on the same data dir and ports."""
        self.stop()
        self.start(wait=wait, timeout=timeout)

    def _forget(self) -> None:
        with _live_lock:
            if self.proc is not None:
                _live.discard(self.proc)
        self.proc = None


class EtcdCluster:
    """``size`` members on loopback, one data dir each under a scratch folder removed by :meth:`close`.

    ``heartbeat_ms``/``election_ms`` default to 50/500 for one member (a lease may then have a
    1 s TTL: etcd's minimum TTL is 1.5 x the election timeout, rounded up) and to etcd's defaults,
    100/1000, for a cluster, where a short election timeout on a busy 2-core machine would flap.
    """

    def __init__(
        self,
        size: int = 1,
        *,
        base_dir: Path | None = None,
        heartbeat_ms: int | None = None,
        election_ms: int | None = None,
    ) -> None:
        if size < 1:
            raise ValueError("size must be >= 1")
        single = size == 1
        heartbeat = heartbeat_ms if heartbeat_ms is not None else (50 if single else 100)
        election = election_ms if election_ms is not None else (500 if single else 1000)
        self._own_dir = base_dir is None
        if base_dir is None:
            root = _scratch_root()
            _sweep_stale(root)
            base_dir = Path(tempfile.mkdtemp(prefix=_PREFIX, dir=root))
            (base_dir / _OWNER_FILE).write_text(str(os.getpid()))
        self.base_dir = base_dir
        token = f"lmaas-test-{uuid.uuid4().hex[:8]}"
        self.members = [
            EtcdMember(f"m{i}", self.base_dir / f"m{i}.etcd", heartbeat_ms=heartbeat, election_ms=election)
            for i in range(size)
        ]
        initial = ",".join(f"{m.name}={m.peer_url}" for m in self.members)
        for member in self.members:
            member.initial_cluster = initial
            member.cluster_token = token

    @property
    def endpoints(self) -> list[str]:
        return [m.endpoint for m in self.members]

    @property
    def url(self) -> str:
        """The store URL for every member: ``etcd://host:port,host:port``."""
        return "etcd://" + ",".join(self.endpoints)

    def start(self, timeout: float = 20.0) -> None:
        """Start every member that is not running, all at once (a cluster needs a quorum), and wait for health."""
        for member in self.members:
            if not member.running:
                member.start(wait=False)
        for member in self.members:
            member.wait_healthy(timeout)

    def stop(self) -> None:
        for member in self.members:
            member.stop()

    def leader_index(self, timeout: float = 10.0) -> int:
        """Index in :attr:`members` of the current leader, waiting for an election if there is none."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for i, member in enumerate(self.members):
                if member.running and member.is_leader():
                    return i
            time.sleep(0.05)
        raise TimeoutError(f"no etcd leader after {timeout} s")

    def follower_indexes(self) -> list[int]:
        leader = self.leader_index()
        return [i for i, m in enumerate(self.members) if i != leader and m.running]

    def close(self) -> None:
        """Stop every member and remove the scratch folder (when this object created it)."""
        self.stop()
        if self._own_dir:
            shutil.rmtree(self.base_dir, ignore_errors=True)

    def logs(self) -> Iterator[tuple[str, str]]:
        for member in self.members:
            with contextlib.suppress(OSError):
                yield member.name, member.log_path.read_text(errors="replace")

    def __enter__(self) -> EtcdCluster:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
