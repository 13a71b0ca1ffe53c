"""uvicorn inside the control plane's event loop: one HTTP stack, no signal handlers of its own.

The control plane owns the process's signals (SIGTERM drains gRPC and HTTP together), so uvicorn's
``capture_signals`` is disabled; the socket is bound here, so port 0 works and the bound port is known
before the first request. Lifespan events are off: the app needs no start-up of its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import uvicorn

__all__ = ["RestServer"]

log = logging.getLogger("lmaas.rest")


class _Server(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


class RestServer:
    def __init__(
        self, app: Any, host: str, port: int, *, grace: float = 10.0, tls_cert: Path | None = None,
        tls_key: Path | None = None,
    ) -> None:
        self._config = uvicorn.Config(
            app, host=host, port=port, lifespan="off", http="httptools", log_config=None, access_log=False,
            server_header=False, proxy_headers=False, timeout_graceful_shutdown=max(1, int(grace + 0.999)),
            ssl_certfile=str(tls_cert) if tls_cert else None, ssl_keyfile=str(tls_key) if tls_key else None,
        )
        self._host, self._port = host, port
        self._server = _Server(self._config)
        self._task: asyncio.Task[None] | None = None
        self._socket: socket.socket | None = None
        self.port = 0

    async def start(self) -> int:
        """Bind, start serving, and return the bound port."""
        family = socket.AF_INET6 if ":" in self._host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((self._host, self._port))
        except OSError:
            sock.close()
            raise
        sock.set_inheritable(True)
        self._socket = sock
        self.port = sock.getsockname()[1]
        self._task = asyncio.create_task(self._server.serve(sockets=[sock]), name="lmaas-rest")
        while not self._server.started:
            if self._task.done():
                self._task.result()  # raises what failed the start
                raise RuntimeError("the REST server stopped during start-up")
            await asyncio.sleep(0.01)
        return self.port

    async def stop(self) -> None:
        """Stop accepting, let requests finish (up to the grace period), close streams."""
        if self._task is None:
            return
        self._server.should_exit = True
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        self._task = None
