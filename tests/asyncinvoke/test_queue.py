"""The event queue's group commit, in process (queue.py): a lone write commits at once, writes
that arrive during a commit share the next one, only enqueues ask for an fsync, a completion
starts no commit but rides with the next enqueue's or claim's (or commits alone when none comes),
and an accepted event is in the database file when `enqueue` returns."""

from __future__ import annotations

import asyncio
import json
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest

from firebox.asyncinvoke import queue as queue_module
from firebox.asyncinvoke.api import QueuedEvent
from firebox.asyncinvoke.queue import EVENT, StoreEventQueue, _from_doc, _to_doc
from firebox.store.api import Tx
from firebox.store.sqlite import SqliteMetadataStore

T = TypeVar("T")


def _event(n: int, name: str = "f", due_ms: int = 1_000) -> QueuedEvent:
    return QueuedEvent(f"req-{n:04d}", name, None, b'{"n":%d}' % n, enqueued_at_ms=due_ms, due_ms=due_ms)


class GatedStore:
    """Runs units on a real store, but each commit first waits for `gate` (when set), and
    every call is recorded: whether it was durable (`commits`), and whether it asked for its
    fsync on the loop's thread (`synced_here`)."""

    def __init__(self, store: SqliteMetadataStore) -> None:
        self.store = store
        self.gate: asyncio.Event | None = None
        self.commits: list[bool] = []
        self.synced_here: list[bool] = []
        self.started = asyncio.Event()

    async def atomically(self, work: Callable[[Tx], T], *, durable: bool = True, sync_here: bool = False) -> T:
        self.commits.append(durable)
        self.synced_here.append(sync_here)
        self.started.set()
        if self.gate is not None:
            await self.gate.wait()
        return await self.store.atomically(work, durable=durable, sync_here=sync_here)

    async def read(self, work: Callable[[Tx], T]) -> T:
        return await self.store.read(work)


async def _open(tmp_path: Path) -> SqliteMetadataStore:
    store = SqliteMetadataStore(tmp_path / "firebox.db")
    await store.open()
    return store


def test_a_lone_event_commits_at_once_without_a_timer(tmp_path: Path) -> None:
    async def main() -> None:
        store = await _open(tmp_path)
        gated = GatedStore(store)
        gated.gate = asyncio.Event()
        queue = StoreEventQueue(gated)
        task = asyncio.create_task(queue.enqueue(_event(1)))
        # The commit starts with the event alone: nothing waits for a timer or for company.
        await asyncio.wait_for(gated.started.wait(), timeout=1)
        assert gated.commits == [True]
        gated.gate.set()
        await asyncio.wait_for(task, timeout=5)
        assert queue.commit_statistics().commits == 1
        await store.close()

    asyncio.run(main())


def test_events_arriving_during_a_commit_share_the_next_one(tmp_path: Path) -> None:
    async def main() -> None:
        store = await _open(tmp_path)
        gated = GatedStore(store)
        gated.gate = asyncio.Event()
        queue = StoreEventQueue(gated)
        first = asyncio.create_task(queue.enqueue(_event(0)))
        await asyncio.wait_for(gated.started.wait(), timeout=1)
        rest = [asyncio.create_task(queue.enqueue(_event(n))) for n in range(1, 21)]
        await asyncio.sleep(0)
        assert queue.commit_statistics().pending == 20
        gated.gate.set()
        await asyncio.wait_for(asyncio.gather(first, *rest), timeout=5)
        stats = queue.commit_statistics()
        assert (stats.commits, stats.units, stats.pending) == (2, 21, 0)
        assert gated.commits == [True, True]
        assert await store.read(lambda tx: tx.count(EVENT, "f")) == 21
        await store.close()

    asyncio.run(main())


def test_only_a_lone_write_while_quiet_asks_for_its_fsync_on_the_loops_thread(tmp_path: Path) -> None:
    """A batch of several writes, or any write while the platform is busy, leaves the fsync to
    the store's thread, so that the loop serves others meanwhile."""

    async def main() -> None:
        store = await _open(tmp_path)
        gated = GatedStore(store)
        quiet = True
        queue = StoreEventQueue(gated, quiet=lambda: quiet)
        await queue.enqueue(_event(0))  # alone, quiet
        quiet = False
        await queue.enqueue(_event(1))  # alone, busy
        quiet = True
        gated.gate = asyncio.Event()
        gated.started.clear()
        first = asyncio.create_task(queue.enqueue(_event(2)))  # alone: its commit starts at once
        await asyncio.wait_for(gated.started.wait(), timeout=1)
        rest = [asyncio.create_task(queue.enqueue(_event(n))) for n in (3, 4)]  # the next batch: two
        await asyncio.sleep(0)
        gated.gate.set()
        await asyncio.wait_for(asyncio.gather(first, *rest), timeout=5)
        assert gated.synced_here == [True, False, True, False]
        assert gated.commits == [True, True, True, True]
        assert await store.read(lambda tx: tx.count(EVENT, "f")) == 5
        await store.close()

    asyncio.run(main())


def test_only_a_batch_holding_an_enqueue_asks_for_an_fsync(tmp_path: Path) -> None:
    async def main() -> None:
        store = await _open(tmp_path)
        gated = GatedStore(store)
        queue = StoreEventQueue(gated)
        await queue.enqueue(_event(1, due_ms=1_000))
        (claimed,) = await queue.claim("f", 2_000, 8, 60_000)
        await queue.finish(claimed)
        assert gated.commits == [True, False, False]

        # A claim and an enqueue in one batch: the batch is fsync'd.
        await queue.enqueue(_event(2, due_ms=1_000))
        gated.gate = asyncio.Event()
        gated.started.clear()
        blocker = asyncio.create_task(queue.enqueue(_event(3, due_ms=5_000)))
        await asyncio.wait_for(gated.started.wait(), timeout=1)
        together = [asyncio.create_task(queue.claim("f", 2_000, 8, 60_000)),
                    asyncio.create_task(queue.enqueue(_event(4, due_ms=5_000)))]
        await asyncio.sleep(0)
        gated.gate.set()
        await asyncio.wait_for(asyncio.gather(blocker, *together), timeout=5)
        assert gated.commits[-2:] == [True, True]
        assert [e.request_id for e in together[0].result()] == ["req-0002"]
        await store.close()

    asyncio.run(main())


def test_a_failing_write_fails_only_its_caller(tmp_path: Path) -> None:
    async def main() -> None:
        store = await _open(tmp_path)
        gated = GatedStore(store)
        gated.gate = asyncio.Event()
        queue = StoreEventQueue(gated)
        blocker = asyncio.create_task(queue.enqueue(_event(0)))
        await asyncio.wait_for(gated.started.wait(), timeout=1)

        def broken(tx: Tx) -> None:
            raise RuntimeError("boom")

        good = asyncio.create_task(queue.enqueue(_event(1)))
        bad = asyncio.create_task(queue._commit(broken, durable=True))
        await asyncio.sleep(0)
        gated.gate.set()
        await asyncio.wait_for(asyncio.gather(blocker, good, bad, return_exceptions=True), timeout=5)
        assert good.exception() is None
        assert isinstance(bad.exception(), RuntimeError)
        assert await store.read(lambda tx: tx.count(EVENT, "f")) == 2
        await store.close()

    asyncio.run(main())


def test_an_accepted_event_is_in_the_database_file_when_enqueue_returns(tmp_path: Path) -> None:
    async def main() -> None:
        store = await _open(tmp_path)
        queue = StoreEventQueue(store)
        for n in range(5):
            await queue.enqueue(_event(n))
            # A second connection, as a restarted server would open the file.
            other = sqlite3.connect(tmp_path / "firebox.db")
            try:
                rows = other.execute("SELECT doc FROM records WHERE kind = ? AND scope = 'f'", (EVENT,)).fetchall()
            finally:
                other.close()
            assert sorted(json.loads(doc)["request_id"] for (doc,) in rows) == [f"req-{i:04d}" for i in range(n + 1)]
        await store.close()

    asyncio.run(main())


async def _one_claimed(tmp_path: Path) -> tuple[Any, GatedStore, StoreEventQueue, QueuedEvent]:
    """A queue over a gated store, holding one event it has claimed (one fsync'd commit, one not)."""
    store = await _open(tmp_path)
    gated = GatedStore(store)
    queue = StoreEventQueue(gated)
    await queue.enqueue(_event(1))
    (claimed,) = await queue.claim("f", 2_000, 8, 60_000)
    return store, gated, queue, claimed


def test_a_completion_starts_no_commit_but_rides_with_the_next_enqueues(tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    # A long deferral, so that nothing but the enqueue can start the completion's commit.
    monkeypatch.setattr(queue_module, "DEFER_S", 60.0)

    async def main() -> None:
        store, gated, queue, claimed = await _one_claimed(tmp_path)
        before = queue.commit_statistics()
        finishing = asyncio.create_task(queue.finish(claimed))
        for _ in range(20):  # a commit started at once would have reached the store by now
            await asyncio.sleep(0)
        assert (gated.commits, queue.commit_statistics().pending, finishing.done()) == ([True, False], 1, False)
        # The enqueue starts a commit, and the completion lands in it: one fsync'd commit, not two.
        await asyncio.wait_for(queue.enqueue(_event(2)), timeout=5)
        await asyncio.wait_for(finishing, timeout=5)
        after = queue.commit_statistics()
        assert (after.commits - before.commits, after.units - before.units, after.pending) == (1, 2, 0)
        assert gated.commits == [True, False, True]
        assert [key.split(":")[1] for key, _ in await store.read(lambda tx: tx.scan(EVENT, "f"))] == ["req-0002"]
        assert (await queue.statistics(2_000))["f"].succeeded == 1
        await store.close()

    asyncio.run(main())


def test_a_completion_rides_with_the_next_claims_commit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(queue_module, "DEFER_S", 60.0)

    async def main() -> None:
        store = await _open(tmp_path)
        gated = GatedStore(store)
        queue = StoreEventQueue(gated)
        await queue.enqueue(_event(1))
        await queue.enqueue(_event(2))
        (first,) = await queue.claim("f", 2_000, 1, 60_000)
        before = queue.commit_statistics()
        finishing = asyncio.create_task(queue.finish(first, succeeded=False))
        for _ in range(20):
            await asyncio.sleep(0)
        assert (len(gated.commits), queue.commit_statistics().pending) == (3, 1)
        claimed = await asyncio.wait_for(queue.claim("f", 2_000, 8, 60_000), timeout=5)
        await asyncio.wait_for(finishing, timeout=5)
        after = queue.commit_statistics()
        assert (after.commits - before.commits, after.units - before.units, after.pending) == (1, 2, 0)
        assert gated.commits == [True, True, False, False]  # neither asks for an fsync
        assert [e.request_id for e in claimed] == ["req-0002"]
        assert (await queue.statistics(2_000))["f"].failed == 1
        await store.close()

    asyncio.run(main())


async def _until(condition: Callable[[], bool]) -> None:
    while not condition():
        await asyncio.sleep(0)


async def _completing_during_a_commit(
        tmp_path: Path) -> tuple[Any, GatedStore, StoreEventQueue, asyncio.Task[None], asyncio.Task[None]]:
    """A claimed event's completion, started while an enqueue's commit waits at the gate."""
    store, gated, queue, claimed = await _one_claimed(tmp_path)
    gated.gate = asyncio.Event()
    gated.started.clear()
    running = asyncio.create_task(queue.enqueue(_event(2)))
    await asyncio.wait_for(gated.started.wait(), timeout=1)
    finishing = asyncio.create_task(queue.finish(claimed))
    return store, gated, queue, running, finishing


def test_a_completion_that_arrives_during_a_commit_waits_for_the_next_write(tmp_path: Path,
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    # Committed on its own right after the running commit, it would hold up the next enqueue.
    monkeypatch.setattr(queue_module, "DEFER_S", 60.0)

    async def main() -> None:
        store, gated, queue, running, finishing = await _completing_during_a_commit(tmp_path)
        await asyncio.wait_for(_until(lambda: queue.commit_statistics().pending == 1), timeout=5)
        gated.gate.set()
        await asyncio.wait_for(running, timeout=5)
        for _ in range(20):  # a commit started for the completion would have reached the store
            await asyncio.sleep(0)
        assert (gated.commits, queue.commit_statistics().pending, finishing.done()) == ([True, False, True], 1, False)
        await asyncio.wait_for(queue.enqueue(_event(3)), timeout=5)
        await asyncio.wait_for(finishing, timeout=5)
        assert gated.commits == [True, False, True, True]
        assert (await queue.statistics(2_000))["f"].succeeded == 1
        await store.close()

    asyncio.run(main())


def test_a_completion_left_waiting_after_a_commit_still_commits_when_no_write_comes(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(queue_module, "DEFER_S", 0.0)

    async def main() -> None:
        store, gated, queue, running, finishing = await _completing_during_a_commit(tmp_path)
        # The completion waits out the running commit, then DEFER_S (0 here) for company, and
        # commits alone when none comes.
        await asyncio.wait_for(_until(lambda: queue.commit_statistics().pending == 1), timeout=5)
        gated.gate.set()
        await asyncio.wait_for(asyncio.gather(running, finishing), timeout=5)
        assert gated.commits == [True, False, True, False]
        assert (await queue.statistics(2_000))["f"].succeeded == 1
        await store.close()

    asyncio.run(main())


def test_a_lone_completion_commits_alone(tmp_path: Path) -> None:
    async def main() -> None:
        store, gated, queue, claimed = await _one_claimed(tmp_path)
        before = queue.commit_statistics()
        # No other write comes: it commits by itself (after DEFER_S) rather than wait forever.
        await asyncio.wait_for(queue.finish(claimed), timeout=5)
        after = queue.commit_statistics()
        assert (after.commits - before.commits, after.units - before.units, after.pending) == (1, 1, 0)
        assert gated.commits == [True, False, False]
        assert await store.read(lambda tx: tx.count(EVENT, "f")) == 0
        assert (await queue.statistics(2_000))["f"].succeeded == 1
        await store.close()

    asyncio.run(main())


class CountingTx:
    """A Tx that records the documents written under the count kind."""

    def __init__(self, tx: Tx, writes: list[str]) -> None:
        self._tx, self._writes = tx, writes

    def put(self, kind: str, scope: str, key: str, doc: Any) -> None:
        if kind == queue_module.COUNT:
            self._writes.append(key)
        self._tx.put(kind, scope, key, doc)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._tx, name)


def test_a_batchs_completions_write_each_functions_count_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(queue_module, "DEFER_S", 60.0)

    async def main() -> None:
        store = await _open(tmp_path)
        gated = GatedStore(store)
        count_writes: list[str] = []
        real_atomically = gated.atomically

        async def counting(work: Callable[[Tx], T], *, durable: bool = True, sync_here: bool = False) -> T:
            return await real_atomically(lambda tx: work(CountingTx(tx, count_writes)),  # type: ignore[arg-type]
                                         durable=durable, sync_here=sync_here)

        gated.atomically = counting  # type: ignore[method-assign]
        queue = StoreEventQueue(gated)
        for n in range(5):
            await queue.enqueue(_event(n, "f"))
        for n in range(5, 7):
            await queue.enqueue(_event(n, "g"))
        claimed = await queue.claim("f", 2_000, 8, 60_000) + await queue.claim("g", 2_000, 8, 60_000)
        outcomes = [True, True, False, True, False, True, True]  # f: 3 succeeded, 2 failed; g: 2 succeeded
        finishing = [asyncio.create_task(queue.finish(e, succeeded=ok)) for e, ok in zip(claimed, outcomes, strict=True)]
        await asyncio.wait_for(_until(lambda: queue.commit_statistics().pending == 7), timeout=5)
        await asyncio.wait_for(queue.enqueue(_event(7, "f")), timeout=5)  # the completions ride along
        await asyncio.wait_for(asyncio.gather(*finishing), timeout=5)
        assert sorted(count_writes) == ["f", "g"]  # one write per function for seven completions
        stats = await queue.statistics(2_000)
        assert (stats["f"].succeeded, stats["f"].failed, stats["f"].queued) == (3, 2, 1)
        assert (stats["g"].succeeded, stats["g"].failed, stats["g"].queued) == (2, 0, 0)

        # A batch that fails reruns each unit alone: every completion still counts, once.
        (left,) = await queue.claim("f", 2_000, 8, 60_000)

        def broken(tx: Tx) -> None:
            raise RuntimeError("boom")

        bad = asyncio.create_task(queue._commit(broken, durable=False))
        done = asyncio.create_task(queue.finish(left, succeeded=False))
        await asyncio.wait_for(asyncio.gather(bad, done, return_exceptions=True), timeout=5)
        assert isinstance(bad.exception(), RuntimeError) and done.exception() is None
        stats = await queue.statistics(2_000)
        assert (stats["f"].succeeded, stats["f"].failed, stats["f"].queued, stats["f"].in_flight) == (3, 3, 0, 0)
        await store.close()

    asyncio.run(main())


def test_due_functions_lists_due_scopes_and_the_next_later_due_time(tmp_path: Path) -> None:
    async def main() -> None:
        store = await _open(tmp_path)
        queue = StoreEventQueue(store)
        assert await queue.due_functions(1_000) == ([], None)
        await queue.enqueue(_event(1, "a", due_ms=500))
        await queue.enqueue(_event(2, "a", due_ms=1_000))
        await queue.enqueue(_event(3, "a", due_ms=9_000))
        await queue.enqueue(_event(4, "b", due_ms=4_000))
        await queue.enqueue(_event(5, "c", due_ms=7_000))
        assert await queue.due_functions(1_000) == (["a"], 4_000)
        assert await queue.due_functions(4_000) == (["a", "b"], 7_000)
        assert await queue.due_functions(10_000) == (["a", "b", "c"], None)
        # A claimed event's lease end counts as a later due time.
        await queue.claim("b", 4_000, 8, 60_000)
        assert await queue.due_functions(4_000) == (["a"], 7_000)
        assert await queue.due_functions(10_000) == (["a", "c"], 64_000)
        await store.close()

    asyncio.run(main())


def test_event_documents_round_trip() -> None:
    event = QueuedEvent("r", "f", "live", b"\x00\xff{}", 1, 2, attempts=3, system_retries=4, claimed_by="run")
    doc: dict[str, Any] = _to_doc(event)
    assert set(doc) == set(QueuedEvent.__dataclass_fields__)
    assert _from_doc(json.loads(json.dumps(doc))) == event
