"""The raw-ASGI toolkit on a real uvicorn server (port 0): routing, errors, bodies, compression, SSE streams."""

from __future__ import annotations

import asyncio
import gzip
import json
import zlib
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from lmaas.protos.errors import FailedPrecondition, ModelNotFound
from lmaas.server.auth import ApiKeys
from lmaas.server.http.asgi import App, Request, Response, Route, StreamingResponse, json_response, sse_event
from lmaas.server.http.serve import HttpServer


class Probe:
    """What the test routes saw: the streams' lifecycle."""

    def __init__(self) -> None:
        self.started = asyncio.Event()
        self.closed = asyncio.Event()
        self.sent = 0


def _routes(probe: Probe) -> list[Route]:
    async def echo(request: Request) -> Response:
        body = await request.body()
        return json_response(
            {"size": len(body), "params": request.params, "query": request.query, "body": body.decode()}
        )

    async def parse(request: Request) -> Response:
        return json_response({"value": await request.json()})

    async def missing(request: Request) -> Response:
        raise ModelNotFound(request.params["model"])

    async def refused(request: Request) -> Response:
        raise FailedPrecondition("managed by the control plane")

    async def crash(request: Request) -> Response:
        raise RuntimeError("secret detail")

    async def big(request: Request) -> Response:
        return Response(b"x" * 10_000, media_type="text/plain")

    async def forever(request: Request) -> Response:
        async def events() -> AsyncIterator[bytes]:
            try:
                probe.started.set()
                while True:
                    probe.sent += 1
                    yield sse_event({"n": probe.sent})
                    await asyncio.sleep(0.001)
            finally:
                probe.closed.set()

        return StreamingResponse(events())

    async def stalls(request: Request) -> Response:
        async def events() -> AsyncIterator[bytes]:
            try:
                yield sse_event("first", event="token")
                probe.started.set()
                await asyncio.Event().wait()  # e.g. waiting for a token that never comes
                yield b"never"
            finally:
                probe.closed.set()

        return StreamingResponse(events())

    async def finite(request: Request) -> Response:
        async def events() -> AsyncIterator[bytes]:
            for i in range(3):
                yield sse_event(f"line {i}\nsecond", id=str(i))

        return StreamingResponse(events())

    return [
        Route("POST", "/echo/{model}/versions/{version}", echo),
        Route("POST", "/json", parse),
        Route("GET", "/models/{model}", missing),
        Route("POST", "/refused", refused),
        Route("GET", "/crash", crash),
        Route("GET", "/big", big),
        Route("GET", "/open", big, public=True),
        Route("GET", "/forever", forever),
        Route("GET", "/stalls", stalls),
        Route("GET", "/finite", finite),
    ]


@pytest.fixture()
async def served() -> AsyncIterator[tuple[str, Probe, list[tuple[str, str, int]]]]:
    probe = Probe()
    seen: list[tuple[str, str, int]] = []
    app = App(_routes(probe), max_body=1000, observe=lambda r, m, s: seen.append((r, m, s)))
    server = HttpServer(app, "127.0.0.1", 0, drain_timeout=5)
    port = await server.start()
    yield f"http://127.0.0.1:{port}", probe, seen
    await server.stop()


async def test_path_params_query_and_body(served: Any) -> None:
    url, _, seen = served
    async with httpx.AsyncClient(base_url=url) as client:
        r = await client.post("/echo/m%20one/versions/7?x=1&y=two", content=b"hello")
    assert r.status_code == 200
    assert r.json() == {"size": 5, "params": {"model": "m one", "version": "7"}, "query": {"x": "1", "y": "two"},
                        "body": "hello"}
    assert seen == [("/echo/{model}/versions/{version}", "POST", 200)]


async def test_errors_map_to_status_and_oip_body(served: Any) -> None:
    url, _, seen = served
    async with httpx.AsyncClient(base_url=url) as client:
        r = await client.get("/models/absent")
        assert (r.status_code, r.json()) == (404, {"error": "model 'absent' is not found or not ready"})
        r = await client.post("/refused")
        assert (r.status_code, r.json()) == (409, {"error": "managed by the control plane"})
        r = await client.get("/crash")
        assert (r.status_code, r.json()) == (500, {"error": "internal server error"})  # no detail leaks
        r = await client.get("/nowhere")
        assert r.status_code == 404 and "no route" in r.json()["error"]
        r = await client.delete("/models/x")
        assert r.status_code == 405 and r.headers["allow"] == "GET"
        r = await client.post("/json", content=b"{not json")
        assert r.status_code == 400 and r.json()["error"].startswith("malformed JSON body")
        r = await client.post("/json", content=b'{"a": [1, 2]}')  # the server still serves
        assert (r.status_code, r.json()) == (200, {"value": {"a": [1, 2]}})
    assert ("unmatched", "GET", 404) in seen and ("/crash", "GET", 500) in seen


async def test_body_limit_before_and_after_decompression(served: Any) -> None:
    url, *_ = served
    async with httpx.AsyncClient(base_url=url) as client:
        r = await client.post("/echo/m/versions/1", content=b"x" * 1001)
        assert r.status_code == 413 and "exceeds the limit of 1000" in r.json()["error"]

        async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: counted while reading
            for _ in range(11):
                yield b"y" * 100

        r = await client.post("/echo/m/versions/1", content=chunks())
        assert r.status_code == 413
        bomb = gzip.compress(b"z" * 100_000)  # small on the wire, too big once decoded
        r = await client.post("/echo/m/versions/1", content=bomb, headers={"content-encoding": "gzip"})
        assert r.status_code == 413 and "decompressed" in r.json()["error"]
        r = await client.post("/echo/m/versions/1", content=b"not gzip", headers={"content-encoding": "gzip"})
        assert r.status_code == 400 and "not valid gzip" in r.json()["error"]
        r = await client.post("/echo/m/versions/1", content=b"x", headers={"content-encoding": "br"})
        assert r.status_code == 400 and "not supported" in r.json()["error"]
        r = await client.post("/echo/m/versions/1", content=b"x" * 1000)
        assert r.status_code == 200 and r.json()["size"] == 1000


@pytest.mark.parametrize(
    ("encoding", "compress"),
    [("gzip", gzip.compress), ("deflate", zlib.compress), ("deflate", lambda b: zlib.compress(b, wbits=-15))],
)
async def test_compressed_request_bodies(served: Any, encoding: str, compress: Any) -> None:
    url, *_ = served
    async with httpx.AsyncClient(base_url=url) as client:
        body = compress(b"abc" * 100)
        r = await client.post("/echo/m/versions/1", content=body, headers={"content-encoding": encoding})
    assert r.status_code == 200 and r.json()["body"] == "abc" * 100


@pytest.mark.parametrize(
    ("accept", "expected"),
    [("gzip", "gzip"), ("deflate", "deflate"), ("br, deflate;q=0.5", "deflate"), ("gzip;q=0, deflate", "deflate"),
     ("identity", None), ("", None)],
)
async def test_responses_compressed_as_the_client_asks(served: Any, accept: str, expected: str | None) -> None:
    url, *_ = served
    async with (
        httpx.AsyncClient(base_url=url) as client,
        client.stream("GET", "/big", headers={"accept-encoding": accept}) as r,
    ):
        raw = b"".join([chunk async for chunk in r.aiter_raw()])
    assert r.headers.get("content-encoding") == expected
    decoded = {None: lambda b: b, "gzip": gzip.decompress, "deflate": zlib.decompress}[expected](raw)
    assert decoded == b"x" * 10_000
    if expected:
        assert len(raw) < 1000 and int(r.headers["content-length"]) == len(raw)


async def test_tiny_responses_are_not_compressed(served: Any) -> None:
    url, *_ = served
    async with httpx.AsyncClient(base_url=url) as client:
        r = await client.get("/models/m", headers={"accept-encoding": "gzip"})
    assert r.status_code == 404 and "content-encoding" not in r.headers


async def test_sse_stream_ends_cleanly(served: Any) -> None:
    url, *_ = served
    async with httpx.AsyncClient(base_url=url) as client:
        r = await client.get("/finite")
    assert r.headers["content-type"] == "text/event-stream" and r.headers["cache-control"] == "no-cache"
    assert r.text == "".join(f"id: {i}\ndata: line {i}\ndata: second\n\n" for i in range(3))


async def _read_some_then_leave(url: str, path: str, until: bytes) -> bytes:
    host, port = url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    await writer.drain()
    got = b""
    while until not in got:
        got += await reader.read(4096)
    writer.close()  # the client goes away mid-stream
    await writer.wait_closed()
    return got


@pytest.mark.parametrize("path", ["/forever", "/stalls"])
async def test_client_disconnect_closes_the_stream_iterator(served: Any, path: str) -> None:
    """A stream that never ends (busy, or stalled in an await) is closed once its client leaves."""
    url, probe, _ = served
    got = await _read_some_then_leave(url, path, b"\n\n")
    assert b"text/event-stream" in got
    await asyncio.wait_for(probe.closed.wait(), 30)  # never set if the server kept streaming
    if path == "/forever":
        sent = probe.sent
        await asyncio.sleep(0.1)
        assert probe.sent == sent  # nothing pulled after the close
    async with httpx.AsyncClient(base_url=url) as client:  # and the server still serves
        assert (await client.get("/finite")).status_code == 200


async def test_api_key_check_spares_public_routes() -> None:
    app = App(_routes(Probe()), check_key=ApiKeys(["k1"]).check_headers)
    server = HttpServer(app, "127.0.0.1", 0)
    port = await server.start()
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
            r = await client.get("/big")
            assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
            assert "API key is required" in r.json()["error"]
            r = await client.get("/big", headers={"authorization": "Bearer nope"})
            assert (r.status_code, r.json()) == (401, {"error": "the API key is not valid"})
            assert (await client.get("/big", headers={"authorization": "Bearer k1"})).status_code == 200
            assert (await client.get("/big", headers={"x-api-key": "k1"})).status_code == 200
            assert (await client.get("/open")).status_code == 200
    finally:
        await server.stop()


def test_sse_event_format() -> None:
    assert sse_event({"a": 1}) == b'data: {"a":1}\n\n'
    assert sse_event("x\ny", event="e", id="3") == b"event: e\nid: 3\ndata: x\ndata: y\n\n"
    assert json.loads(sse_event([1, 2])[6:]) == [1, 2]
