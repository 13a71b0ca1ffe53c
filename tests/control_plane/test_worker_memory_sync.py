"""The sync protocol's memory and latency figures, over real gRPC to a real control plane and store: snapshots
say the control plane accepts Reports, an Ack's memory lands on the worker record (per held version too), a
Report's histograms do as well, and a malformed Report ends the stream with INVALID_ARGUMENT."""

from __future__ import annotations

import asyncio

import grpc
from cp_harness import WAIT, Stubs
from lmaas.protos.lmaas.control.v1 import workers_pb2
from lmaas.protos.lmaas.worker.v1 import sync_pb2

pytest_plugins = ["cp_fixtures"]  # cp, stubs

MIB = 1 << 20


def _histogram(counts: list[int], count: int) -> sync_pb2.Histogram:
    return sync_pb2.Histogram(bounds=[0.001, 0.01, 0.1][: len(counts)], counts=counts, count=count, sum=0.5)


async def _record(stubs: Stubs, worker_id: str):  # type: ignore[no-untyped-def]
    listed = await stubs.workers.ListWorkers(workers_pb2.ListWorkersRequest())
    return next((w for w in listed.workers if w.worker_id == worker_id), None)


async def _until(check) -> None:  # type: ignore[no-untyped-def]
    async with asyncio.timeout(WAIT):
        while not await check():
            await asyncio.sleep(0.02)


async def test_ack_and_report_figures_reach_the_worker_record(stubs: Stubs) -> None:
    outgoing: asyncio.Queue[sync_pb2.WorkerMessage | None] = asyncio.Queue()

    async def messages():  # type: ignore[no-untyped-def]
        while (m := await outgoing.get()) is not None:
            yield m

    held = [sync_pb2.Held(model="m", version=1, digest="d" * 64)]
    outgoing.put_nowait(sync_pb2.WorkerMessage(hello=sync_pb2.Hello(worker_id="w-fig", held=held)))
    call = stubs.sync.Sync(messages())
    try:
        async with asyncio.timeout(WAIT):
            snapshot = await call.read()
        assert isinstance(snapshot, sync_pb2.Snapshot) and snapshot.accepts_reports
        memory = sync_pb2.Memory(capacity_bytes=300 * MIB, used_bytes=120 * MIB,
                                 versions=[sync_pb2.VersionMemory(model="m", version=1, bytes=40 * MIB,
                                                                  peak_bytes=55 * MIB)])
        outgoing.put_nowait(sync_pb2.WorkerMessage(ack=sync_pb2.Ack(snapshot_revision=snapshot.revision, held=held,
                                                                    memory=memory)))

        async def acked() -> bool:
            w = await _record(stubs, "w-fig")
            return w is not None and w.memory_capacity_bytes == 300 * MIB
        await _until(acked)
        w = await _record(stubs, "w-fig")
        assert w.memory_used_bytes == 120 * MIB and w.reported_at_ms > 0
        assert [(h.model, h.version, h.memory_bytes, h.memory_peak_bytes) for h in w.held] == [
            ("m", 1, 40 * MIB, 55 * MIB)]

        latency = sync_pb2.VersionLatency(model="m", version=1, request_duration=_histogram([3, 9, 10], 10))
        memory.used_bytes = 130 * MIB
        outgoing.put_nowait(sync_pb2.WorkerMessage(report=sync_pb2.Report(memory=memory, latency=[latency])))

        async def reported() -> bool:
            w = await _record(stubs, "w-fig")
            return w is not None and len(w.latency) == 1
        await _until(reported)
        w = await _record(stubs, "w-fig")
        assert w.memory_used_bytes == 130 * MIB
        assert list(w.latency[0].request_duration.counts) == [3, 9, 10] and w.latency[0].request_duration.count == 10
        assert w.held[0].memory_bytes == 40 * MIB  # kept across the report

        bad = sync_pb2.VersionLatency(model="m", version=1, request_duration=sync_pb2.Histogram(bounds=[0.1],
                                                                                                counts=[1, 2]))
        outgoing.put_nowait(sync_pb2.WorkerMessage(report=sync_pb2.Report(latency=[bad])))
        try:
            async with asyncio.timeout(WAIT):
                while await call.read() is not grpc.aio.EOF:
                    pass
        except grpc.aio.AioRpcError as exc:
            assert exc.code() == grpc.StatusCode.INVALID_ARGUMENT, exc
            assert "one count per bound" in (exc.details() or "")
        else:
            raise AssertionError("a malformed report did not end the stream")
    finally:
        outgoing.put_nowait(None)
        call.cancel()
