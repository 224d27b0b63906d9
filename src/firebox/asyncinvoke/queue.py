"""The durable event queue over the metadata store.

Layout: kind `async-event`, scope `<function name>`, key `<due ms, 15 digits>:<request id>`, so
a scope scanned in key order yields its events by due time. A claim moves an event to the key of
its lease end and stamps `claimed_by` with this queue's run id; finishing deletes it;
rescheduling moves it to its new due time, unclaimed (a move is one UPDATE, not a delete and an
insert). Succeeded and failed counts are kept per function (kind `async-count`) for
`statistics()`: a commit adds up its batch's completions and writes each function's count once.

Durability at speed: every write (enqueue, claim, finish, reschedule) joins a group commit. A
write that finds no commit running starts one at once (no timer: a lone event is not kept
waiting for company); writes that arrive while it runs are committed together in the next one;
each caller returns when its own commit is done. Throughput then grows with load while every 202
still follows an fsync.

Only enqueues need that fsync. Claims, completions and reschedules commit without one
(`durable=False`, see store/sqlite.py): a power cut may undo them, which only makes an event run
again (at-least-once), and the next enqueue's fsync makes them durable anyway, the WAL being
written in order. So the dispatcher's writes cost no disk flush, and an enqueue that arrives
while one of them commits waits for microseconds, not for an fsync. A batch holding at least
one enqueue is fsync'd as a whole.

Completions start no commit of their own: a finished event waits up to DEFER_S for the next
enqueue's or claim's commit and rides along (the dispatcher has given its slot back already, so
nobody waits on it). Under load that halves the commits per event; a lone completion commits
after DEFER_S. That holds for completions that arrive while a commit runs, too: they are not
committed on their own right after it but wait for company again (a sequential client's events
made one such lone commit for every other event).

A lone write while no caller waits on an invocation (`quiet`: the invoker counts them; queued
events may run, nobody waits on those) asks the store to fsync on the event loop's own thread
(`sync_here`): nothing urgent needs the loop meanwhile, and the sync thread's two wake-ups would
cost more than they save (store/sqlite.py). A batch of several writes, or any write while a
synchronous invocation runs, keeps the sync thread, so that the loop goes on serving during the
fsync. Quiet while queued events run, not only when nothing runs: a sequential Event client
whose events run got its 202 in 1.40 -> 1.18, 1.50 -> 1.39 and 1.40 -> 1.24 ms (p50, three
runs of 8 alternated rounds of 200); 64 connections' accepted events/s, 3,558 -> 3,372 and
3,407 -> 3,431 (medians of 6 and 8 rounds: noise).

Known caveats: a lost completion also undoes its count in `statistics()`.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import uuid
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple, TypeVar

from firebox.asyncinvoke.api import (
    CommitStatistics,
    FunctionEventStats,
    QueuedEvent,
    QueueStore,
)
from firebox.store.api import Tx

EVENT = "async-event"
COUNT = "async-count"


T = TypeVar("T")
# How long a completion waits for another write's commit to join before committing alone.
DEFER_S = 0.005
# A completion's tally: (function name, succeeded), added to the counts by its batch.
_Tally = tuple[str, bool]


class _Pending(NamedTuple):
    work: Callable[[Tx], Any]
    done: asyncio.Future[Any]  # the work's result, once its batch committed
    durable: bool  # the batch is fsync'd
    deferred: bool  # starts no commit: waits for another write's (see `_join`)
    tally: _Tally | None


def _key(event: QueuedEvent) -> str:
    return f"{event.due_ms:015d}:{event.request_id}"


def _due(key: str) -> int:
    return int(key.split(":", 1)[0])


def _to_doc(event: QueuedEvent) -> dict[str, Any]:
    # By hand rather than dataclasses.asdict, which deep-copies every field: this runs per event.
    return {
        "request_id": event.request_id,
        "function_name": event.function_name,
        "qualifier": event.qualifier,
        "payload": base64.b64encode(event.payload).decode(),
        "enqueued_at_ms": event.enqueued_at_ms,
        "due_ms": event.due_ms,
        "attempts": event.attempts,
        "system_retries": event.system_retries,
        "claimed_by": event.claimed_by,
    }


def _from_doc(doc: dict[str, Any]) -> QueuedEvent:
    return QueuedEvent(**{**doc, "payload": base64.b64decode(doc["payload"])})


def _add_tallies(tx: Tx, tallies: list[_Tally]) -> None:
    """Add completions to their functions' counts: one read and one write per function, however
    many completions a batch holds (under load a commit carries dozens)."""
    totals: dict[str, dict[str, int]] = {}
    for name, succeeded in tallies:
        counts = totals.get(name)
        if counts is None:
            counts = totals[name] = tx.get(COUNT, "", name) or {"succeeded": 0, "failed": 0}
        counts["succeeded" if succeeded else "failed"] += 1
    for name, counts in totals.items():
        tx.put(COUNT, "", name, counts)


def _move(tx: Tx, old_key: str, event: QueuedEvent) -> None:
    tx.move(EVENT, event.function_name, old_key, _key(event), _to_doc(event))


def _alone(work: Callable[[Tx], T], tally: _Tally | None) -> Callable[[Tx], T]:
    """A unit of a failed batch, rerun alone with its own tally."""
    if tally is None:
        return work

    def with_tally(tx: Tx) -> T:
        result = work(tx)
        _add_tallies(tx, [tally])
        return result

    return with_tally


class StoreEventQueue:
    def __init__(self, store: QueueStore, *, quiet: Callable[[], bool] = lambda: False) -> None:
        """`quiet()`: whether nothing but this queue's commits may need the event loop now."""
        self._store = store
        self._quiet = quiet
        self.run_id = uuid.uuid4().hex
        self._pending: list[_Pending] = []
        self._committer: asyncio.Task[None] | None = None
        self._deferred: asyncio.TimerHandle | None = None
        self._overdue = False  # deferred writes have waited DEFER_S: commit them even alone
        self._commits = 0
        self._committed_units = 0

    # -- group commit --------------------------------------------------------------------------

    async def _commit(self, work: Callable[[Tx], T], *, durable: bool) -> T:
        """Run `work` in the next shared transaction and return its result once that committed
        (and, when `durable`, once it is on disk: a batch holding one durable write is fsync'd).
        Cancelling the caller does not take the work back: it may still commit."""
        return await self._join(work, durable=durable)  # type: ignore[no-any-return]

    def _join(
        self, work: Callable[[Tx], Any], *, durable: bool, defer: bool = False, tally: _Tally | None = None
    ) -> asyncio.Future[Any]:
        """`work` joins the next commit; the future resolves to its result once that is done.

        A write that finds no commit running starts one at once (no timer, no waiting for
        company); writes that arrive while it runs form the next batch. A `defer`red write
        starts none: it waits up to DEFER_S for another write's commit to ride along with. A
        `tally` is added to the counts by the same commit (see `_add_tallies`)."""
        loop = asyncio.get_running_loop()
        done: asyncio.Future[Any] = loop.create_future()
        self._pending.append(_Pending(work, done, durable, defer, tally))
        if self._committer is None:
            if not defer:
                self._start_commit()
            else:
                self._defer_commit()
        return done

    def _defer_commit(self) -> None:
        if self._deferred is None:
            self._deferred = asyncio.get_running_loop().call_later(DEFER_S, self._deferral_expired)

    def _deferral_expired(self) -> None:
        self._deferred = None
        self._overdue = True
        self._start_commit()

    def _start_commit(self) -> None:
        if self._deferred is not None:
            self._deferred.cancel()
            self._deferred = None
        if self._committer is None and self._pending:
            self._committer = asyncio.create_task(self._commit_pending(), name="firebox-async-commit")

    async def _commit_pending(self) -> None:
        try:
            # Deferred writes left alone after a commit keep waiting for company: committing
            # them at once would make the next enqueue wait behind a commit of their own.
            while self._pending and (self._overdue or not all(pending.deferred for pending in self._pending)):
                self._overdue = False
                batch, self._pending = self._pending, []
                await self._commit_batch(batch)
        finally:
            self._committer = None
            if self._pending:
                self._defer_commit()

    async def _commit_batch(self, batch: list[_Pending]) -> None:
        def together(tx: Tx) -> list[Any]:
            results = [pending.work(tx) for pending in batch]
            _add_tallies(tx, [pending.tally for pending in batch if pending.tally is not None])
            return results

        try:
            results = await self._store.atomically(together, durable=any(pending.durable for pending in batch),
                                                   sync_here=len(batch) == 1 and self._quiet())
        except Exception:
            # One unit failed and took the batch down with it: run each alone, so only the
            # failing one's caller gets the error.
            for work, done, durable, _, tally in batch:
                try:
                    result = await self._store.atomically(_alone(work, tally), durable=durable)
                except Exception as exc:
                    if not done.done():
                        done.set_exception(exc)
                else:
                    if not done.done():
                        done.set_result(result)
            return
        self._commits += 1
        self._committed_units += len(batch)
        for pending, result in zip(batch, results, strict=True):
            if not pending.done.done():
                pending.done.set_result(result)

    def commit_statistics(self) -> CommitStatistics:
        return CommitStatistics(self._commits, self._committed_units, len(self._pending))

    async def enqueue(self, event: QueuedEvent) -> None:
        await self.start_enqueue(event)

    def start_enqueue(self, event: QueuedEvent) -> asyncio.Future[None]:
        """Start storing `event` (claimed or not, as it is); the future resolves once it is
        durable. Awaiting it is `enqueue`; a caller that may be cancelled should shield it."""
        key, doc = _key(event), _to_doc(event)  # encoded here, off the store's busy thread
        return self._join(lambda tx: tx.put(EVENT, event.function_name, key, doc), durable=True)

    # -- dispatching ---------------------------------------------------------------------------

    async def due_functions(self, now_ms: int) -> tuple[list[str], int | None]:
        after = f"{now_ms:015d};"  # after every key due at or before now_ms (';' follows ':')

        def work(tx: Tx) -> tuple[list[str], int | None]:
            due, later = [], None
            for scope in tx.scopes(EVENT):
                # A claimed event's key is its lease end, so any event whose key is due is
                # claimable: unclaimed, or claimed by a dispatcher whose lease expired.
                rows = tx.scan(EVENT, scope, limit=1)
                if rows and _due(rows[0][0]) <= now_ms:
                    due.append(scope)
                    rows = tx.scan(EVENT, scope, after=after, limit=1)
                if rows:
                    later = _due(rows[0][0]) if later is None else min(later, _due(rows[0][0]))
            return due, later

        return await self._store.read(work)

    async def claim(self, function_name: str, now_ms: int, limit: int, lease_ms: int) -> list[QueuedEvent]:
        def work(tx: Tx) -> list[QueuedEvent]:
            claimed = []
            for key, doc in tx.scan(EVENT, function_name, limit=limit):
                if _due(key) > now_ms:
                    break
                event = dataclasses.replace(_from_doc(doc), due_ms=now_ms + lease_ms, claimed_by=self.run_id)
                _move(tx, key, event)
                claimed.append(event)
            return claimed

        return await self._commit(work, durable=False)

    async def finish(self, event: QueuedEvent, *, succeeded: bool = True) -> None:
        # Deferred: nobody waits on a completion but the dispatcher's bookkeeping (it holds no
        # slot for it), so it rides with the next enqueue's or claim's commit when one comes.
        def work(tx: Tx) -> None:
            tx.delete(EVENT, event.function_name, _key(event))

        await self._join(work, durable=False, defer=True, tally=(event.function_name, succeeded))

    async def reschedule(self, event: QueuedEvent, *, due_ms: int, attempts: int, system_retries: int) -> None:
        moved = dataclasses.replace(event, due_ms=due_ms, attempts=attempts, system_retries=system_retries,
                                    claimed_by=None)

        def work(tx: Tx) -> None:
            _move(tx, _key(event), moved)

        await self._commit(work, durable=False)

    async def requeue_orphans(self, now_ms: int) -> int:
        def work(tx: Tx) -> int:
            moved = 0
            for scope in tx.scopes(EVENT):
                # Only the orphans' documents are read whole (at a start, usually none).
                for key, owner in tx.scan_values(EVENT, scope, "claimed_by"):
                    if owner not in (None, self.run_id) and (doc := tx.get(EVENT, scope, key)) is not None:
                        event = dataclasses.replace(_from_doc(doc), due_ms=now_ms, claimed_by=None)
                        _move(tx, key, event)
                        moved += 1
            return moved

        return await self._store.atomically(work)

    async def statistics(self, now_ms: int) -> Mapping[str, FunctionEventStats]:
        def work(tx: Tx) -> dict[str, FunctionEventStats]:
            stats: dict[str, FunctionEventStats] = {}
            names = set(tx.scopes(EVENT)) | {key for key, _ in tx.scan(COUNT, "")}
            for name in sorted(names):
                queued = in_flight = retrying = 0
                for key, owner in tx.scan_values(EVENT, name, "claimed_by"):  # no payload decoded
                    if owner is not None:
                        in_flight += 1
                    elif _due(key) <= now_ms:
                        queued += 1
                    else:
                        retrying += 1
                counts = tx.get(COUNT, "", name) or {"succeeded": 0, "failed": 0}
                stats[name] = FunctionEventStats(queued, in_flight, retrying, counts["failed"], counts["succeeded"])
            return stats

        return await self._store.read(work)
