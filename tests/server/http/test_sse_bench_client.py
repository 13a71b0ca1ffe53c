"""The LLM benchmark's own SSE client (``benchmarks/sse_client.py``) against real servers on loopback: the
worker's HTTP stack (uvicorn + our ASGI toolkit, chunked transfer-encoding) and a plain asyncio server for the
framings uvicorn does not produce here (Content-Length, HTTP/1.0 to EOF, a kept-alive socket the server closed).
What it must get right: every event's data exactly, however the bytes are cut into chunks; one socket for many
requests; an error status with its body; a consumer that stops early never leaves bytes for the next request."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator

import pytest
from lmaas.protos.errors import InvalidArgument
from lmaas.server.http.asgi import App, Request, Response, Route, StreamingResponse
from lmaas.server.http.serve import HttpServer

from benchmarks.sse_client import HTTPError, SSEConnection, SSEPool, _dechunk

HOST = "127.0.0.1"


async def _events(request: Request) -> Response:
    """Streams the events the request lists, each one cut in two chunks (and a comment line between), so the
    client must join an event across chunk boundaries; with ``"crlf"`` the lines end in CRLF."""
    spec = await request.json()
    newline = "\r\n" if spec.get("crlf") else "\n"

    async def body() -> AsyncIterator[bytes]:
        for data in spec["events"]:
            event = "".join(f"data: {line}{newline}" for line in data.split("\n")) + newline
            raw = event.encode()
            yield raw[: len(raw) // 2]
            yield raw[len(raw) // 2:] + f": keep-alive comment{newline}{newline}".encode()
        yield b"data: [DONE]\n\n"

    return StreamingResponse(body())


async def _fail(request: Request) -> Response:
    raise InvalidArgument("max_tokens must be positive")


@pytest.fixture()
async def http_server() -> AsyncIterator[int]:
    server = HttpServer(App([Route("POST", "/events", _events), Route("POST", "/fail", _fail)]), HOST, 0)
    port = await server.start()
    try:
        yield port
    finally:
        await server.stop()


async def _collect(pool: SSEPool | SSEConnection, path: str, body: dict[str, object]) -> list[bytes]:
    payload = json.dumps(body).encode()
    events = pool.events(path, payload) if isinstance(pool, SSEPool) else pool.post_events(path, payload)
    return [data async for data in events]


async def test_events_are_whole_across_chunks_and_one_socket_serves_every_request(http_server: int) -> None:
    pool = SSEPool(HOST, http_server)
    try:
        events = ['{"choices":[{"text":"Hello"}]}', "first line\nsecond line", '{"text":"naïve café ☕"}']
        for crlf in (False, True, False, True, False):
            got = await _collect(pool, "/events", {"events": events, "crlf": crlf})
            assert [g.decode() for g in got] == [*events, "[DONE]"]
        assert pool.connections == 1 and pool.sockets_opened == 1  # keep-alive held for all five
    finally:
        await pool.close()


async def test_an_error_status_raises_with_its_body_and_keeps_the_connection(http_server: int) -> None:
    pool = SSEPool(HOST, http_server)
    try:
        with pytest.raises(HTTPError) as caught:
            await _collect(pool, "/fail", {})
        assert caught.value.status == 400
        assert json.loads(caught.value.body) == {"error": "max_tokens must be positive"}
        assert await _collect(pool, "/events", {"events": ["x"]}) == [b"x", b"[DONE]"]
        assert pool.sockets_opened == 1
    finally:
        await pool.close()


async def test_a_consumer_that_stops_early_leaves_nothing_for_the_next_request(http_server: int) -> None:
    pool = SSEPool(HOST, http_server)
    try:
        body = json.dumps({"events": [f"event {i}" for i in range(50)]}).encode()
        async with contextlib.aclosing(pool.events("/events", body)) as events:
            async for data in events:
                assert data == b"event 0"
                break
        # The half-read socket was dropped, not pooled: the next answer is whole and its own.
        assert await _collect(pool, "/events", {"events": ["after"]}) == [b"after", b"[DONE]"]
        assert pool.connections == 1 and pool.sockets_opened == 2
    finally:
        await pool.close()


class _PlainServer:
    """An asyncio HTTP server answering each request with the next canned response; ``close_after`` closes the
    connection after that many answers (``closed`` is set once it has)."""

    def __init__(self, responses: list[bytes], close_after: int = 0) -> None:
        self.responses = responses
        self.close_after = close_after
        self.closed = asyncio.Event()
        self.connections = 0

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        answered = 0
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = next(int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                              if line.lower().startswith(b"content-length:"))
                await reader.readexactly(length)
                writer.write(self.responses.pop(0))
                await writer.drain()
                answered += 1
                if answered == self.close_after:
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()
            self.closed.set()


@contextlib.asynccontextmanager
async def _plain(server: _PlainServer) -> AsyncIterator[int]:
    listener = await asyncio.start_server(server.handle, HOST, 0)
    try:
        yield int(listener.sockets[0].getsockname()[1])
    finally:
        listener.close()
        await listener.wait_closed()


def _sse(body: bytes, *head: bytes, version: bytes = b"HTTP/1.1") -> bytes:
    return b"\r\n".join([version + b" 200 OK", b"content-type: text/event-stream", *head, b"", body])


async def test_content_length_and_a_last_event_without_its_blank_line() -> None:
    body = b"data: one\n\ndata: two"
    server = _PlainServer([_sse(body, b"content-length: %d" % len(body))] * 2)
    async with _plain(server) as port:
        conn = SSEConnection(HOST, port)
        try:
            assert await _collect(conn, "/", {}) == [b"one", b"two"]
            assert await _collect(conn, "/", {}) == [b"one", b"two"]
            assert conn.opened == 1
        finally:
            await conn.close()


async def test_a_kept_alive_socket_the_server_closed_is_reopened_once() -> None:
    body = b"data: ok\n\n"
    server = _PlainServer([_sse(body, b"content-length: %d" % len(body))] * 2, close_after=1)
    async with _plain(server) as port:
        pool = SSEPool(HOST, port)
        try:
            assert await _collect(pool, "/", {}) == [b"ok"]
            await server.closed.wait()  # the server has closed the idle connection the pool holds
            assert await _collect(pool, "/", {}) == [b"ok"]
            assert server.connections == 2 and pool.sockets_opened == 2
        finally:
            await pool.close()


async def test_a_body_without_length_or_chunking_ends_with_the_connection() -> None:
    server = _PlainServer([_sse(b"data: a\n\ndata: b\n\n", version=b"HTTP/1.0")], close_after=1)
    async with _plain(server) as port:
        conn = SSEConnection(HOST, port)
        try:
            assert await _collect(conn, "/", {}) == [b"a", b"b"]
            assert not conn.is_open  # read to EOF: nothing left to reuse
        finally:
            await conn.close()


def test_chunk_framing_split_anywhere_between_reads() -> None:
    """Fed one byte per read, the chunk decoder still yields exactly the payload (a chunk extension ignored), and
    is done only after the last chunk's trailer section."""
    payload = b"data: one\n\ndata: two\n\n"
    framed = (b"5\r\n" + payload[:5] + b"\r\n" + b"%x;ext=1\r\n" % (len(payload) - 5) + payload[5:] + b"\r\n"
              + b"0\r\nX-Trailer: 1\r\n\r\n")
    raw, out = bytearray(), bytearray()
    done = []
    for byte in framed:
        raw.append(byte)
        done.append(_dechunk(raw, out))
    assert bytes(out) == payload
    assert done[-1] and not any(done[:-1]) and raw == b""
