"""Coalesce many small compare-and-swaps into few store requests (:meth:`Store.txn_batch`).

A thousand workers ACKing one rollout make a thousand small transactions; on
etcd each is a raft proposal, a gRPC call and a task here. :class:`TxnBatcher`
sends the first one at once and gathers the ones that arrive while it is in
flight into the next batch (no added delay when idle, large batches under
load), bounded by etcd's op limit. Each caller keeps its own compare-and-swap
result, exactly as with :meth:`Store.txn`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Sequence

from .base import MAX_TXN_OPS, Compare, Delete, LeaseNotFound, Put, Store, Txn, TxnResult, batch_width

__all__ = ["TxnBatcher"]

log = logging.getLogger(__name__)


class TxnBatcher:
    def __init__(self, store: Store, *, max_batch: int = 64) -> None:
        self._store = store
        self._max = max(1, min(max_batch, MAX_TXN_OPS - 1))
        self._pending: deque[tuple[Txn, asyncio.Future[TxnResult]]] = deque()
        self._drainer: asyncio.Task[None] | None = None
        self.requests = 0  # store requests made (tests, metrics)

    async def txn(
        self, compares: Sequence[Compare], success: Sequence[Put | Delete], failure: Sequence[Put | Delete] = ()
    ) -> TxnResult:
        """As :meth:`Store.txn`, but possibly sent together with other callers' transactions."""
        t = Txn(tuple(compares), tuple(success), tuple(failure))
        if batch_width(t) + 1 > MAX_TXN_OPS:
            self.requests += 1
            return await self._store.txn(t.compares, t.success, t.failure)
        future: asyncio.Future[TxnResult] = asyncio.get_running_loop().create_future()
        self._pending.append((t, future))
        if self._drainer is None or self._drainer.done():
            self._drainer = asyncio.get_running_loop().create_task(self._drain(), name="lmaas-txn-batcher")
        return await future

    async def close(self) -> None:
        drainer, self._drainer = self._drainer, None
        if drainer is not None:
            drainer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await drainer
        while self._pending:
            self._pending.popleft()[1].cancel()

    async def _drain(self) -> None:
        while self._pending:
            batch = self._take()
            if not batch:
                continue
            self.requests += 1
            try:
                results = await self._store.txn_batch([t for t, _ in batch])
            except asyncio.CancelledError:
                for _, future in batch:
                    future.cancel()
                raise
            except (ValueError, LeaseNotFound) as exc:
                if len(batch) == 1:
                    _settle(batch[0][1], exc)
                    continue
                # one bad transaction (or one naming a lease that expired) must not fail the others
                log.debug("batch of %d failed (%s); sending each alone", len(batch), exc)
                for t, future in batch:
                    try:
                        self.requests += 1
                        _settle(future, await self._store.txn(t.compares, t.success, t.failure))
                    except (ValueError, LeaseNotFound) as single:
                        _settle(future, single)
            except Exception as exc:
                for _, future in batch:
                    _settle(future, exc)
            else:
                for (_, future), result in zip(batch, results, strict=True):
                    _settle(future, result)

    def _take(self) -> list[tuple[Txn, asyncio.Future[TxnResult]]]:
        """The oldest pending transactions that fit in one batch; one touching a key already in it waits."""
        batch: list[tuple[Txn, asyncio.Future[TxnResult]]] = []
        waiting: list[tuple[Txn, asyncio.Future[TxnResult]]] = []
        points: set[str] = set()
        prefixes: list[str] = []
        width = 0
        while self._pending and len(batch) < self._max:
            t, future = self._pending.popleft()
            if future.done():  # its caller went away before it was sent
                continue
            new_width = max(width, batch_width(t))
            if len(batch) + 1 + new_width > MAX_TXN_OPS:
                self._pending.appendleft((t, future))
                break
            ops = (*t.success, *t.failure)
            own_points = {op.key for op in ops if not (isinstance(op, Delete) and op.prefix)}
            own_prefixes = [op.key for op in ops if isinstance(op, Delete) and op.prefix]
            if (own_points & points or any(k.startswith(p) for k in own_points for p in prefixes)
                    or any(k.startswith(p) for k in points for p in own_prefixes)
                    or any(a.startswith(b) or b.startswith(a) for a in own_prefixes for b in prefixes)):
                waiting.append((t, future))
                continue
            batch.append((t, future))
            points |= own_points
            prefixes.extend(own_prefixes)
            width = new_width
        self._pending.extendleft(reversed(waiting))
        return batch


def _settle(future: asyncio.Future[TxnResult], outcome: TxnResult | BaseException) -> None:
    if future.done():
        return
    if isinstance(outcome, BaseException):
        future.set_exception(outcome)
    else:
        future.set_result(outcome)
