"""uvicorn (httptools) inside the worker's running event loop, beside grpc.aio.

We bind the socket ourselves (port 0, SO_REUSEPORT for ``--processes``) and
drive uvicorn's ``startup``/``shutdown`` directly rather than ``serve()``:
``serve()`` installs its own SIGTERM/SIGINT handlers, and the worker owns
those (one drain for both transports).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import socket
import ssl
from pathlib import Path

import uvicorn
from lmaas.server.http.asgi import App

__all__ = ["HttpServer", "bind_socket"]



def bind_socket(host: str, port: int, *, reuse_port: bool) -> socket.socket:
    """A listening TCP socket on host:port (0 = any free port)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # proto=IPPROTO_TCP, not 0: asyncio sets TCP_NODELAY only on sockets that say they are TCP, and without it
    # Nagle holds the response body back until the client's delayed ACK (40 ms per request).
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host.strip("[]"), port))
        sock.listen(2048)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


class HttpServer:
    """``start()`` binds and returns the port; ``stop()`` stops accepting and lets in-flight requests finish."""

    def __init__(
        self,
        app: App,
        host: str,
        port: int,
        *,
        reuse_port: bool = False,
        drain_timeout: float = 30,
        tls_cert: Path | None = None,
        tls_key: Path | None = None,
        tls_client_ca: Path | None = None,
    ) -> None:
        """With ``tls_cert``/``tls_key`` the port speaks HTTPS (as the gRPC port then speaks TLS); with
        ``tls_client_ca`` clients must present a certificate it signed."""
        self.host, self.port, self.reuse_port = host, port, reuse_port
        self.config = uvicorn.Config(
            app,
            http="httptools",
            loop="none",  # the worker's loop is already running
            lifespan="off",
            access_log=False,  # the hot path writes no log line per request
            log_config=None,
            proxy_headers=False,
            server_header=False,
            timeout_graceful_shutdown=math.ceil(drain_timeout),  # uvicorn takes whole seconds
            ssl_certfile=str(tls_cert) if tls_cert else None,
            ssl_keyfile=str(tls_key) if tls_key else None,
            ssl_ca_certs=str(tls_client_ca) if tls_client_ca else None,
            ssl_cert_reqs=ssl.CERT_REQUIRED if tls_client_ca else ssl.CERT_NONE,
        )
        self._server: uvicorn.Server | None = None
        self._ticker: asyncio.Task[None] | None = None
        self._socket: socket.socket | None = None

    def bind(self) -> int:
        """Bind now (a port conflict shows before models load); serving starts with :meth:`start`."""
        if self._socket is None:
            self._socket = bind_socket(self.host, self.port, reuse_port=self.reuse_port)
            self.port = self._socket.getsockname()[1]
        return self.port

    async def start(self) -> int:
        self.bind()
        sock = self._socket
        assert sock is not None
        server = uvicorn.Server(self.config)
        self.config.load()
        server.lifespan = self.config.lifespan_class(self.config)
        await server.startup(sockets=[sock])
        # main_loop refreshes the Date header once a second and returns once should_exit is set.
        self._ticker = asyncio.create_task(server.main_loop())
        self._server = server
        return self.port

    async def stop(self) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        server.should_exit = True
        if self._ticker is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._ticker
        await server.shutdown()
