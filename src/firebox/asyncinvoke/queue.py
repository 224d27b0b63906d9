"""The durable event queue over the metadata store.

Layout: kind `async-event`, scope `<function name>`, key `<due ms, 15 digits>:<request id>`, so
a scope scanned in key order yields its events by due time. A claim moves an event to the key of
its lease end and stamps `claimed_by` with this queue's run id; finishing deletes it;
rescheduling moves it to its new due time, unclaimed. Succeeded and failed counts are kept per
function (kind `async-count`) for `statistics()`.

Durability at speed: every write (enqueue, claim, finish, reschedule) joins a group commit. The
first caller starts a commit; callers that arrive while it runs are committed together in the
next one; each returns when its own commit is durable. Throughput then grows with load while
every 202 still follows an fsync, and dispatching does not cost one fsync per step.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import uuid
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from firebox.asyncinvoke.api import FunctionEventStats, QueuedEvent
from firebox.store.api import MetadataStore, Tx

EVENT = "async-event"
COUNT = "async-count"


T = TypeVar("T")
_Pending = tuple[Callable[[Tx], Any], "asyncio.Future[Any]"]


def _key(event: QueuedEvent) -> str:
    return f"{event.due_ms:015d}:{event.request_id}"


def _due(key: str) -> int:
    return int(key.split(":", 1)[0])


def _to_doc(event: QueuedEvent) -> dict[str, Any]:
    doc = dataclasses.asdict(event)
    doc["payload"] = base64.b64encode(event.payload).decode()
    return doc


def _from_doc(doc: dict[str, Any]) -> QueuedEvent:
    return QueuedEvent(**{**doc, "payload": base64.b64decode(doc["payload"])})


class StoreEventQueue:
    def __init__(self, store: MetadataStore) -> None:
        self._store = store
        self.run_id = uuid.uuid4().hex
        self._pending: list[_Pending] = []
        self._committer: asyncio.Task[None] | None = None

    # -- group commit --------------------------------------------------------------------------

    async def _commit(self, work: Callable[[Tx], T]) -> T:
        """Run `work` in the next shared transaction and return its result once that is durable."""
        done: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending.append((work, done))
        if self._committer is None or self._committer.done():
            self._committer = asyncio.create_task(self._commit_pending())
        return await asyncio.shield(done)

    async def _commit_pending(self) -> None:
        while self._pending:
            batch, self._pending = self._pending, []

            def together(tx: Tx, batch: list[_Pending] = batch) -> list[Any]:
                return [work(tx) for work, _ in batch]

            try:
                results = await self._store.atomically(together)
            except Exception:
                # One unit failed and took the batch down with it: run each alone, so only the
                # failing one's caller gets the error.
                for work, done in batch:
                    try:
                        result = await self._store.atomically(work)
                    except Exception as exc:
                        if not done.done():
                            done.set_exception(exc)
                    else:
                        if not done.done():
                            done.set_result(result)
                continue
            for (_, done), result in zip(batch, results, strict=True):
                if not done.done():
                    done.set_result(result)

    async def enqueue(self, event: QueuedEvent) -> None:
        await self._commit(lambda tx: tx.put(EVENT, event.function_name, _key(event), _to_doc(event)))

    # -- dispatching ---------------------------------------------------------------------------

    async def due_functions(self, now_ms: int) -> list[str]:
        def work(tx: Tx) -> list[str]:
            due = []
            for scope in tx.scopes(EVENT):
                # A claimed event's key is its lease end, so any event whose key is due is
                # claimable: unclaimed, or claimed by a dispatcher whose lease expired.
                rows = tx.scan(EVENT, scope, limit=1)
                if rows and _due(rows[0][0]) <= now_ms:
                    due.append(scope)
            return due

        return await self._store.read(work)

    async def claim(self, function_name: str, now_ms: int, limit: int, lease_ms: int) -> list[QueuedEvent]:
        def work(tx: Tx) -> list[QueuedEvent]:
            claimed = []
            for key, doc in tx.scan(EVENT, function_name, limit=limit):
                if _due(key) > now_ms:
                    break
                event = dataclasses.replace(_from_doc(doc), due_ms=now_ms + lease_ms, claimed_by=self.run_id)
                tx.delete(EVENT, function_name, key)
                tx.put(EVENT, function_name, _key(event), _to_doc(event))
                claimed.append(event)
            return claimed

        return await self._commit(work)

    async def finish(self, event: QueuedEvent, *, succeeded: bool = True) -> None:
        def work(tx: Tx) -> None:
            tx.delete(EVENT, event.function_name, _key(event))
            counts = tx.get(COUNT, "", event.function_name) or {"succeeded": 0, "failed": 0}
            counts["succeeded" if succeeded else "failed"] += 1
            tx.put(COUNT, "", event.function_name, counts)

        await self._commit(work)

    async def reschedule(self, event: QueuedEvent, *, due_ms: int, attempts: int, system_retries: int) -> None:
        moved = dataclasses.replace(event, due_ms=due_ms, attempts=attempts, system_retries=system_retries,
                                    claimed_by=None)

        def work(tx: Tx) -> None:
            tx.delete(EVENT, event.function_name, _key(event))
            tx.put(EVENT, event.function_name, _key(moved), _to_doc(moved))

        await self._commit(work)

    async def next_due_ms(self) -> int | None:
        def work(tx: Tx) -> int | None:
            firsts = [rows[0][0] for scope in tx.scopes(EVENT) if (rows := tx.scan(EVENT, scope, limit=1))]
            return min((_due(k) for k in firsts), default=None)

        return await self._store.read(work)

    async def requeue_orphans(self, now_ms: int) -> int:
        def work(tx: Tx) -> int:
            moved = 0
            for scope in tx.scopes(EVENT):
                for key, doc in tx.scan(EVENT, scope):
                    if doc["claimed_by"] not in (None, self.run_id):
                        event = dataclasses.replace(_from_doc(doc), due_ms=now_ms, claimed_by=None)
                        tx.delete(EVENT, scope, key)
                        tx.put(EVENT, scope, _key(event), _to_doc(event))
                        moved += 1
            return moved

        return await self._store.atomically(work)

    async def statistics(self, now_ms: int) -> Mapping[str, FunctionEventStats]:
        def work(tx: Tx) -> dict[str, FunctionEventStats]:
            stats: dict[str, FunctionEventStats] = {}
            names = set(tx.scopes(EVENT)) | {key for key, _ in tx.scan(COUNT, "")}
            for name in sorted(names):
                queued = in_flight = retrying = 0
                for key, doc in tx.scan(EVENT, name):
                    if doc["claimed_by"] is not None:
                        in_flight += 1
                    elif _due(key) <= now_ms:
                        queued += 1
                    else:
                        retrying += 1
                counts = tx.get(COUNT, "", name) or {"succeeded": 0, "failed": 0}
                stats[name] = FunctionEventStats(queued, in_flight, retrying, counts["failed"], counts["succeeded"])
            return stats

        return await self._store.read(work)
