"""A small OpenAI streaming client over raw asyncio streams, for the LLM benchmark.

The benchmark must measure the server, not its client: on two shared cores httpx's per-chunk work (h11 events,
``aiter_lines`` decoding, anyio layers) cost a visible part of the CPU the server needs, which showed up as
HTTP "losing" to gRPC. This client does the least a correct HTTP/1.1 client can do: one keep-alive connection
per stream, the request written in one ``write``, the response body decoded from chunked transfer-encoding (or a
Content-Length, or read to EOF) and split into server-sent events on blank lines. Each event's ``data`` payload
is handed over as bytes; parsing JSON is the caller's (only what it needs).

It is a benchmark tool, not a general client: no TLS, no redirects, no proxies, no compression.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, AsyncIterator

__all__ = ["HTTPError", "SSEConnection", "SSEPool"]


class HTTPError(RuntimeError):
    """A non-200 answer: its status and (the start of) its body."""

    def __init__(self, status: int, body: bytes) -> None:
        super().__init__(f"HTTP {status}: {body[:200]!r}")
        self.status = status
        self.body = body


class _Stale(Exception):
    """A kept-alive connection the server had closed before it read our request (retried once on a new one)."""


def _events(buffer: bytearray) -> list[bytes]:
    """Cut the complete events off the front of ``buffer``; return each event's data (its data lines joined)."""
    if b"\r" in buffer:  # SSE allows CRLF line ends (our server sends LF; others may not)
        buffer[:] = buffer.replace(b"\r\n", b"\n")
    out: list[bytes] = []
    start = 0
    while (end := buffer.find(b"\n\n", start)) >= 0:
        lines = [line[5:].removeprefix(b" ") for line in bytes(buffer[start:end]).split(b"\n")
                 if line.startswith(b"data:")]
        if lines:
            out.append(b"\n".join(lines))
        start = end + 2
    if start:
        del buffer[:start]
    return out


class SSEConnection:
    """One HTTP/1.1 keep-alive connection, one request at a time."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self.requests = 0  # requests answered on the current socket
        self.opened = 0  # sockets opened (1 when keep-alive held throughout)

    @property
    def is_open(self) -> bool:
        return self._writer is not None and not self._writer.is_closing()

    async def open(self) -> None:
        if not self.is_open:
            self._reader, self._writer = await asyncio.open_connection(self.host, self.port)
            self.requests = 0
            self.opened += 1

    async def close(self) -> None:
        writer, self._reader, self._writer = self._writer, None, None
        if writer is not None:
            writer.close()
            with contextlib.suppress(OSError, ConnectionError):
                await writer.wait_closed()

    async def post_events(self, path: str, body: bytes) -> AsyncGenerator[bytes, None]:
        """POST ``body`` (JSON) to ``path`` and yield each event's data as it arrives, through the end of the body.

        The connection stays open for the next request only if the body was read to its end; a consumer that
        stops early (``aclose``) or an error closes it."""
        if self._reader is not None and self._reader.at_eof():
            await self.close()  # the server closed it after the last answer (llama-server does, when it streamed)
        reused = self.is_open and self.requests > 0
        try:
            try:
                status, headers = await self._send(path, body)
            except _Stale:
                if not reused:
                    raise ConnectionError("the server closed the connection before answering") from None
                await self.close()
                status, headers = await self._send(path, body)
        except BaseException:
            await self.close()
            raise
        complete = False
        try:
            if status != 200:
                raw = bytearray()
                async for part in self._body(headers):
                    raw += part
                complete = True
                raise HTTPError(status, bytes(raw))
            buffer = bytearray()
            if "chunked" in headers.get("transfer-encoding", "").lower():
                # The hot path, inline: one read per arriving segment, the chunk framing parsed from our own
                # buffer (no await per chunk, no generator in between).
                assert self._reader is not None
                raw = bytearray()
                done = False
                while not done:
                    done = _dechunk(raw, buffer)
                    for data in _events(buffer):
                        yield data
                    if not done:
                        part = await self._reader.read(1 << 16)
                        if not part:
                            raise ConnectionError("the connection ended inside a chunked body")
                        raw += part
            else:
                async for part in self._body(headers):
                    buffer += part
                    for data in _events(buffer):
                        yield data
            complete = True
            if buffer.strip():
                yield _tail(buffer)
        finally:
            self.requests += 1
            if not complete or headers.get("connection", "").lower() == "close":
                await self.close()

    async def _send(self, path: str, body: bytes) -> tuple[int, dict[str, str]]:
        await self.open()
        assert self._reader is not None and self._writer is not None
        self._writer.write(
            f"POST {path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\nContent-Type: application/json\r\n"
            f"Accept: text/event-stream\r\nContent-Length: {len(body)}\r\n\r\n".encode("latin-1") + body)
        try:
            await self._writer.drain()
            head = await self._reader.readuntil(b"\r\n\r\n")
        except (asyncio.IncompleteReadError, ConnectionResetError, BrokenPipeError) as exc:
            if isinstance(exc, asyncio.IncompleteReadError) and exc.partial:
                raise ConnectionError(f"truncated response head: {exc.partial[:200]!r}") from exc
            raise _Stale from exc
        lines = head.decode("latin-1").split("\r\n")
        parts = lines[0].split(" ", 2)
        if len(parts) < 2 or not parts[0].startswith("HTTP/1.") or not parts[1].isdigit():
            raise ConnectionError(f"not an HTTP/1.x status line: {lines[0]!r}")
        headers: dict[str, str] = {}
        for line in lines[1:]:
            name, sep, value = line.partition(":")
            if sep:
                headers[name.strip().lower()] = value.strip()
        if parts[0] == "HTTP/1.0" and headers.get("connection", "").lower() != "keep-alive":
            headers["connection"] = "close"
        return int(parts[1]), headers

    async def _body(self, headers: dict[str, str]) -> AsyncIterator[bytes]:
        """The body's bytes as they arrive: chunked, Content-Length or (otherwise) up to EOF."""
        reader = self._reader
        assert reader is not None
        if "chunked" in headers.get("transfer-encoding", "").lower():
            while True:
                size_line = await reader.readuntil(b"\r\n")
                size = int(size_line.split(b";", 1)[0].strip(), 16)
                if size == 0:
                    while await reader.readuntil(b"\r\n") != b"\r\n":  # trailers, if any, up to the blank line
                        pass
                    return
                chunk = await reader.readexactly(size + 2)
                if chunk[-2:] != b"\r\n":
                    raise ConnectionError("malformed chunked encoding")
                yield chunk[:-2]
        elif "content-length" in headers:
            left = int(headers["content-length"])
            while left > 0:
                part = await reader.read(min(left, 1 << 16))
                if not part:
                    raise ConnectionError(f"the body ended {left} bytes short")
                left -= len(part)
                yield part
        else:
            headers["connection"] = "close"  # the body ends with the connection
            while part := await reader.read(1 << 16):
                yield part


def _dechunk(raw: bytearray, out: bytearray) -> bool:
    """Move the payload of every complete chunk at the front of ``raw`` (chunked transfer-encoding) to ``out``;
    True once the last chunk (size 0) and the trailer section have arrived."""
    pos = 0
    try:
        while (eol := raw.find(b"\r\n", pos)) >= 0:
            size = int(bytes(raw[pos:eol]).split(b";", 1)[0].strip(), 16)
            if size == 0:
                end = raw.find(b"\r\n\r\n", eol)  # trailers, if any, up to the blank line
                if end < 0:
                    return False
                pos = end + 4
                return True
            start, stop = eol + 2, eol + 2 + size
            if len(raw) < stop + 2:
                return False
            if raw[stop:stop + 2] != b"\r\n":
                raise ConnectionError("malformed chunked encoding")
            out += raw[start:stop]
            pos = stop + 2
        return False
    finally:
        del raw[:pos]


def _tail(buffer: bytearray) -> bytes:
    """The data of a last event the server did not terminate with a blank line."""
    events = _events(buffer + b"\n\n")
    return events[0] if events else b""


class SSEPool:
    """Idle keep-alive connections to one server: a request takes one (or opens one) and gives it back after, so
    at concurrency C exactly C connections carry the load, each reused request after request."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self._idle: list[SSEConnection] = []
        self._all: list[SSEConnection] = []

    async def prime(self, n: int) -> None:
        """Open up to ``n`` idle connections now, so that no measured request pays for a connect."""
        while len(self._idle) < n:
            conn = SSEConnection(self.host, self.port)
            await conn.open()
            self._all.append(conn)
            self._idle.append(conn)

    async def events(self, path: str, body: bytes) -> AsyncGenerator[bytes, None]:
        """Like :meth:`SSEConnection.post_events`, on a pooled connection."""
        if self._idle:
            conn = self._idle.pop()
        else:
            conn = SSEConnection(self.host, self.port)
            self._all.append(conn)
        try:
            # aclosing: a consumer that stops early must close the connection's generator (which drops the
            # half-read socket) before the connection goes back to the pool, not whenever it is collected.
            async with contextlib.aclosing(conn.post_events(path, body)) as events:
                async for data in events:
                    yield data
        finally:
            self._idle.append(conn)

    @property
    def sockets_opened(self) -> int:
        return sum(c.opened for c in self._all)

    @property
    def connections(self) -> int:
        return len(self._all)

    async def close(self) -> None:
        for conn in self._all:
            await conn.close()
        self._idle.clear()
        self._all.clear()
