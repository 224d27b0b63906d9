"""The log store (logs/store.py + reads.py + writes.py): groups and streams from the first
record, tokens, pagination, retention with an injected clock, deletion, back-pressure, and the
indexes its queries use. Each test runs its own store on a fresh file."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from firebox.logs import reads
from firebox.logs import store as store_module
from firebox.logs.api import (
    DescribeGroups,
    DescribeStreams,
    FilterEvents,
    GetEvents,
    InvalidLogParameter,
    LogGroupExists,
    LogGroupNotFound,
    LogRecord,
    LogStreamNotFound,
)
from firebox.logs.schema import ROW_SPAN_MS
from firebox.logs.store import SqliteLogStore
from firebox.logs.writes import Writer

from .support import Clock, run, started

DAY_MS = 86_400_000
T0 = 1_700_000_000_000  # 2023-11-14, in ms
GROUP = "/aws/lambda/fn"
STREAM = "2023/11/14/[$LATEST]0123456789abcdef0123456789abcdef"


def records(start_ms: int, count: int, text: str = "line") -> list[LogRecord]:
    return [LogRecord(start_ms + i, f"{text} {i}\n") for i in range(count)]


async def wait_until(probe: Callable[[], Any], deadline_s: float = 10.0) -> None:
    end = time.monotonic() + deadline_s
    while not await probe():
        assert time.monotonic() < end, "timed out"
        await asyncio.sleep(0.02)


@run
async def test_first_record_creates_group_and_stream(tmp_path: Path) -> None:
    clock = Clock(T0 + 5000)
    store = await started(tmp_path / "logs.db", clock=clock)
    try:
        store.append(GROUP, STREAM, [LogRecord(T0, "héllo\n"), LogRecord(T0 + 10, "world\n")])
        await store.flush()
        (group,) = (await store.describe_groups(DescribeGroups())).groups
        assert (group.name, group.creation_ms, group.retention_days) == (GROUP, T0 + 5000, None)
        assert group.stored_bytes == len("héllo\n".encode()) + len("world\n")
        (stream,) = (await store.describe_streams(DescribeStreams(GROUP))).streams
        assert (stream.name, stream.creation_ms, stream.first_event_ms, stream.last_event_ms,
                stream.last_ingestion_ms) == (STREAM, T0 + 5000, T0, T0 + 10, T0 + 5000)
        assert stream.stored_bytes == group.stored_bytes
        with pytest.raises(LogGroupExists):
            await store.create_group(GROUP)
    finally:
        await store.stop()


@run
async def test_get_events_tokens_forward_and_backward(tmp_path: Path) -> None:
    store = await started(tmp_path / "logs.db")
    try:
        store.append(GROUP, STREAM, records(T0, 5))
        await store.flush()

        def get(**kwargs: Any) -> Any:
            return store.get_events(GetEvents(GROUP, STREAM, limit=2, **kwargs))

        def messages(page: Any) -> list[str]:
            return [e.message.split()[1] for e in page.events]

        tail = await get()  # no token: the newest events
        assert messages(tail) == ["3", "4"]
        assert tail.forward_token.startswith("f/") and tail.backward_token.startswith("b/")
        older = await get(token=tail.backward_token)
        assert messages(older) == ["1", "2"]
        oldest = await get(token=older.backward_token)
        assert messages(oldest) == ["0"]
        start = await get(token=oldest.backward_token)
        assert start.events == [] and start.backward_token == oldest.backward_token  # unchanged: the start
        end = await get(token=tail.forward_token)
        assert end.events == [] and end.forward_token == tail.forward_token  # unchanged: the end
        # New events appear after the end token.
        store.append(GROUP, STREAM, [LogRecord(T0 + 100, "line 5\n")])
        await store.flush()
        assert messages(await get(token=end.forward_token)) == ["5"]
        # From the head, forward through everything.
        head = await get(start_from_head=True)
        assert messages(head) == ["0", "1"]
        assert messages(await get(token=head.forward_token)) == ["2", "3"]
        # A time window: startTime inclusive, endTime exclusive.
        window = await store.get_events(GetEvents(GROUP, STREAM, start_ms=T0 + 1, end_ms=T0 + 3, start_from_head=True))
        assert messages(window) == ["1", "2"]
        with pytest.raises(InvalidLogParameter):
            await get(token="x/123")
        with pytest.raises(LogStreamNotFound):
            await store.get_events(GetEvents(GROUP, "nope"))
        with pytest.raises(LogGroupNotFound):
            await store.get_events(GetEvents("/nope", STREAM))
    finally:
        await store.stop()


@run
async def test_equal_timestamps_keep_production_order(tmp_path: Path) -> None:
    store = await started(tmp_path / "logs.db")
    try:
        store.append(GROUP, STREAM, [LogRecord(T0, f"same {i}\n") for i in range(7)])
        await store.flush()
        seen: list[str] = []
        page = await store.get_events(GetEvents(GROUP, STREAM, start_from_head=True, limit=3))
        while page.events:
            seen += [e.message for e in page.events]
            page = await store.get_events(GetEvents(GROUP, STREAM, token=page.forward_token, limit=3))
        assert seen == [f"same {i}\n" for i in range(7)]
    finally:
        await store.stop()


@run
async def test_describe_pagination_prefix_and_order(tmp_path: Path) -> None:
    store = await started(tmp_path / "logs.db")
    try:
        for i in range(7):
            store.append(f"/aws/lambda/f{i}", "s", [LogRecord(T0, "x\n")])
        for i, name in enumerate(["b", "a", "c", "d"]):
            store.append(GROUP, name, [LogRecord(T0 + (10 - i), "x\n")])  # b newest ... d oldest
        await store.flush()
        names: list[str] = []
        token = None
        while True:
            page = await store.describe_groups(DescribeGroups(prefix="/aws/lambda/f", token=token, limit=3))
            names += [g.name for g in page.groups]
            token = page.next_token
            if token is None:
                break
        assert names == [*(f"/aws/lambda/f{i}" for i in range(7)), GROUP]
        pattern = await store.describe_groups(DescribeGroups(pattern="LAMBDA/F3"))
        assert [g.name for g in pattern.groups] == ["/aws/lambda/f3"]

        async def streams(**kwargs: Any) -> list[str]:
            found, token = [], None
            while True:
                page = await store.describe_streams(DescribeStreams(GROUP, token=token, limit=2, **kwargs))
                found += [s.name for s in page.streams]
                if page.next_token is None:
                    return found
                token = page.next_token

        assert await streams() == ["a", "b", "c", "d"]
        assert await streams(descending=True) == ["d", "c", "b", "a"]
        assert await streams(order_by="LastEventTime") == ["d", "c", "a", "b"]
        assert await streams(order_by="LastEventTime", descending=True) == ["b", "a", "c", "d"]
        assert await streams(prefix="c") == ["c"]
        with pytest.raises(InvalidLogParameter, match="Cannot order by LastEventTime"):
            await streams(order_by="LastEventTime", prefix="a")
        with pytest.raises(InvalidLogParameter, match="nextToken"):
            await store.describe_groups(DescribeGroups(token="not-a-token"))
    finally:
        await store.stop()


@run
async def test_filter_events_patterns_streams_and_pages(tmp_path: Path) -> None:
    store = await started(tmp_path / "logs.db")
    try:
        store.append(GROUP, "s1", [LogRecord(T0 + i, f"{'ERROR' if i % 3 == 0 else 'INFO'} s1 {i}\n")
                                   for i in range(30)])
        store.append(GROUP, "s2", [LogRecord(T0 + i, f"{'ERROR' if i % 3 == 0 else 'INFO'} s2 {i}\n")
                                   for i in range(30)])
        await store.flush()

        async def all_pages(**kwargs: Any) -> list[str]:
            found, token = [], None
            while True:
                page = await store.filter_events(FilterEvents(GROUP, token=token, **kwargs))
                found += [e.message.strip() for e in page.events]
                if page.next_token is None:
                    return found
                token = page.next_token

        everything = await all_pages(limit=7)
        assert len(everything) == 60
        # Interleaved by timestamp, production order within equal timestamps.
        assert everything[:4] == ["ERROR s1 0", "ERROR s2 0", "INFO s1 1", "INFO s2 1"]
        errors = await all_pages(pattern="ERROR", limit=4)
        assert len(errors) == 20 and all(m.startswith("ERROR") for m in errors)
        assert await all_pages(pattern="ERROR", streams=("s2",), start_ms=T0 + 20) == [
            "ERROR s2 21", "ERROR s2 24", "ERROR s2 27"]
        assert await all_pages(pattern="?s2 -INFO", stream_prefix="s", end_ms=T0 + 3) == ["ERROR s2 0", "ERROR s2 3"]
        assert await all_pages(streams=("nope",)) == []
        with pytest.raises(InvalidLogParameter):
            await store.filter_events(FilterEvents(GROUP, streams=("s1",), stream_prefix="s"))
        with pytest.raises(LogGroupNotFound):
            await store.filter_events(FilterEvents("/nope"))
    finally:
        await store.stop()


@pytest.mark.parametrize("per_row", [1, 3])
def test_a_search_is_bounded_and_resumable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, per_row: int) -> None:
    """Out of time, FilterLogEvents answers with what it found (maybe nothing) and a token; with
    rows of one event, and of three (a window ends with a whole row, its token at the row's last)."""
    monkeypatch.setattr(reads, "WINDOW_ROWS", 10)
    monkeypatch.setattr(reads, "SEARCH_BUDGET_S", 0.0)
    lines = [f"{'needle' if i % 25 == 0 else 'hay'} {i}\n" for i in range(100)]

    async def scenario() -> None:
        store = await started(tmp_path / "logs.db")
        try:
            for start in range(0, 100, per_row):  # a row per segment: further apart than a row spans
                store.append_lines(GROUP, "a", T0 + start * (ROW_SPAN_MS + 1), lines[start:start + per_row])
            await store.flush()
            found, calls, token = [], 0, None
            while True:
                page = await store.filter_events(FilterEvents(GROUP, pattern="needle", token=token))
                calls += 1
                found += [e.message for e in page.events]
                if page.next_token is None:
                    break
                token = page.next_token
            assert found == [f"needle {i}\n" for i in range(0, 100, 25)]
            assert calls >= 100 // (10 * per_row)  # one window of 10 rows per call
        finally:
            await store.stop()

    asyncio.run(scenario())


@run
async def test_retention_sweep_task_with_injected_clock(tmp_path: Path) -> None:
    clock = Clock(T0)
    store = await started(tmp_path / "logs.db", clock=clock, sweep_interval_s=0.05)
    try:
        store.append(GROUP, "old", records(T0 - 3 * DAY_MS, 4, "old"))
        store.append(GROUP, "mixed", records(T0 - 3 * DAY_MS, 2, "old") + records(T0, 3, "new"))
        store.append("/keep", "old", records(T0 - 3 * DAY_MS, 2, "old"))
        await store.flush()
        with pytest.raises(InvalidLogParameter, match="enum value set"):
            await store.put_retention(GROUP, 2)
        with pytest.raises(LogGroupNotFound):
            await store.put_retention("/nope", 1)
        await store.put_retention(GROUP, 7)
        await asyncio.sleep(0.2)  # a few sweeps: nothing is 7 days old
        assert len(await store.query(GROUP)) == 9

        await store.put_retention(GROUP, 1)

        async def expired() -> bool:
            return len(await store.query(GROUP)) == 3

        await wait_until(expired)  # the sweeper task, not a direct call
        assert [e.message.split()[0] for e in await store.query(GROUP)] == ["new"] * 3
        page = await store.describe_streams(DescribeStreams(GROUP))
        assert [s.name for s in page.streams] == ["mixed"]  # the emptied, expired stream is gone
        (mixed,) = page.streams
        assert mixed.first_event_ms == T0 and mixed.stored_bytes == sum(len(f"new {i}\n") for i in range(3))
        (group,) = (await store.describe_groups(DescribeGroups(prefix=GROUP))).groups
        assert group.retention_days == 1 and group.stored_bytes == mixed.stored_bytes
        assert len(await store.query("/keep")) == 2  # no retention: kept forever

        # Moving the clock on expires the rest; removing the policy stops it.
        await store.put_retention("/keep", None)
        clock.ms += 2 * DAY_MS
        await store.sweep()
        assert await store.query(GROUP) == []
        assert len(await store.query("/keep")) == 2
        assert store.statistics().sweeps > 0
    finally:
        await store.stop()


@run
async def test_delete_group_removes_everything_and_ids_are_never_reused(tmp_path: Path) -> None:
    store = await started(tmp_path / "logs.db")
    try:
        store.append(GROUP, STREAM, records(T0, 3))
        await store.flush()
        before = await store.query(GROUP)
        store.append(GROUP, STREAM, records(T0 + 10, 2))  # still buffered: goes with the group
        await store.delete_group(GROUP)
        await store.flush()
        assert (await store.describe_groups(DescribeGroups())).groups == []
        with pytest.raises(LogGroupNotFound):
            await store.delete_group(GROUP)
        with pytest.raises(LogGroupNotFound):
            await store.describe_streams(DescribeStreams(GROUP))
        await store.create_group(GROUP)
        assert (await store.describe_streams(DescribeStreams(GROUP))).streams == []
        store.append(GROUP, STREAM, records(T0, 1))
        await store.flush()
        (after,) = await store.query(GROUP)
        assert after.id > max(e.id for e in before)
    finally:
        await store.stop()


@run
async def test_flood_drops_with_a_notice_and_memory_stays_bounded(tmp_path: Path) -> None:
    store = await started(tmp_path / "logs.db", max_records=1000, max_bytes=1 << 20)
    try:
        for i in range(100):
            store.append_lines(GROUP, "flood", T0 + i, [f"{'x' * 100} {i} {j}\n" for j in range(100)])
            store.append_lines(GROUP, "quiet", T0 + i, [f"quiet {i}\n"])
            if i == 50:
                store.append_lines(GROUP, "flood", T0 + i, [f"START RequestId: {i}\n"], platform=True)
            assert store.statistics().buffered <= 1000 + 10  # bounded (notices and platform lines aside)
            if i % 10 == 9:
                await asyncio.sleep(0)  # now and then, the writer gets to run
        await store.flush()
        stats = store.statistics()
        flood = [e.message for e in await store.query(GROUP, streams=["flood"], limit=100_000)]
        notices = [m for m in flood if m.startswith("[firebox] ")]
        assert stats.dropped > 0 and notices
        dropped = sum(int(n.split()[1]) for n in notices)
        assert dropped == stats.dropped
        assert sum(int(n.split()[4].strip("(")) for n in notices) == stats.dropped_bytes
        assert "START RequestId: 50\n" in flood  # the platform's records are never dropped
        assert len(flood) - len(notices) - 1 + dropped == 100 * 100  # every record kept or counted
        # Gaps are few and large (hysteresis), each notice sits where its records were lost.
        assert len(notices) <= 12
        first_gap = flood.index(notices[0])
        assert flood[first_gap - 1].split()[1:3] == ["4", "99"]  # the stream's half of the buffer
        # The quiet stream shares the buffer but is not crowded out by the flooding one.
        assert len(await store.query(GROUP, streams=["quiet"])) == 100
    finally:
        await store.stop()


@run
async def test_first_layout_is_migrated(tmp_path: Path) -> None:
    path = tmp_path / "logs.db"
    conn = sqlite3.connect(path)
    conn.executescript(
        """CREATE TABLE events (id INTEGER PRIMARY KEY, log_group TEXT NOT NULL, stream TEXT NOT NULL,
                                ts INTEGER NOT NULL, message TEXT NOT NULL);
           INSERT INTO events (log_group, stream, ts, message) VALUES
               ('/g', 's1', 10, 'a\n'), ('/g', 's2', 20, 'b\n'), ('/g', 's1', 30, 'c\n');"""
    )
    conn.close()
    store = await started(path)
    try:
        assert [e.message for e in await store.query("/g")] == ["a\n", "b\n", "c\n"]
        streams = (await store.describe_streams(DescribeStreams("/g"))).streams
        assert [(s.name, s.first_event_ms, s.last_event_ms, s.stored_bytes) for s in streams] == [
            ("s1", 10, 30, 4), ("s2", 20, 20, 2)]
    finally:
        await store.stop()


def test_queries_use_the_indexes(tmp_path: Path) -> None:
    """No full scan of log_events and no sort in a temporary b-tree for the queries' shapes."""

    async def make() -> None:
        store = await started(tmp_path / "logs.db")
        await store.stop()

    asyncio.run(make())
    conn = sqlite3.connect(tmp_path / "logs.db")
    shapes = [
        # GetLogEvents, forward and backward
        "SELECT id FROM log_events WHERE stream_id = 1 AND ts >= 5 AND ts < 9 ORDER BY ts, id",
        "SELECT id FROM log_events WHERE stream_id = 1 AND ts >= 5 AND ts <= 9 ORDER BY ts DESC, id DESC",
        "SELECT id FROM log_events INDEXED BY events_by_group_time WHERE group_id = 1 AND stream_id IN (1, 2) "
        "ORDER BY ts, id",
        "SELECT id FROM log_events WHERE group_id = 1 AND ts < 5 ORDER BY ts, id LIMIT 10",
        # a FilterLogEvents window: its end, then its scan
        "SELECT ts, id FROM log_events WHERE group_id = 1 AND ts >= 5 AND (ts > 5 OR id > 3) "
        "ORDER BY ts, id LIMIT 1 OFFSET 99999",
        "SELECT id FROM log_events WHERE group_id = 1 AND ts >= 5 AND ts <= 9 "
        "AND (ts < 9 OR id <= 7) AND instr(message, 'x') > 0 ORDER BY ts, id",
    ]
    for sql in shapes:
        plan = " | ".join(row[3] for row in conn.execute("EXPLAIN QUERY PLAN " + sql))
        assert "USING" in plan and "INDEX" in plan and "TEMP B-TREE" not in plan, (sql, plan)
    assert reads.position(1, 2) < reads.position(1, 3) < reads.position(2, 1)


@run
async def test_writer_lingers_so_one_batch_carries_many_appends(tmp_path: Path) -> None:
    """Records appended over several turns of the event loop (as invocations end one by one)
    go into one transaction; with no linger the writer would have taken the first alone."""
    store = await started(tmp_path / "logs.db", linger_s=30)
    try:
        for i in range(5):
            store.append(GROUP, STREAM, [LogRecord(T0 + i, f"line {i}\n")])
            await asyncio.sleep(0)
        await store.flush()
        stats = store.statistics()
        assert (stats.written, stats.batches, stats.buffered) == (5, 1, 0)
    finally:
        await store.stop()


@run
async def test_lingering_records_are_written_without_a_flush(tmp_path: Path) -> None:
    store = await started(tmp_path / "logs.db", linger_s=0.05)
    try:
        store.append(GROUP, STREAM, records(T0, 2))

        async def written() -> bool:
            return store.statistics().written == 2

        await wait_until(written)
    finally:
        await store.stop()


@run
async def test_flush_does_not_wait_for_the_linger(tmp_path: Path) -> None:
    store = await started(tmp_path / "logs.db", linger_s=3600)
    try:
        store.append(GROUP, STREAM, records(T0, 3))
        await asyncio.wait_for(store.flush(), timeout=10)
        assert store.statistics().written == 3
    finally:
        await store.stop()


@run
async def test_a_read_sees_the_records_appended_before_it_however_long_the_linger(tmp_path: Path) -> None:
    store = await started(tmp_path / "logs.db", linger_s=3600)
    try:
        store.append(GROUP, STREAM, records(T0, 3))
        page = await asyncio.wait_for(store.get_events(GetEvents(GROUP, STREAM, start_from_head=True)), timeout=10)
        assert [event.message for event in page.events] == ["line 0\n", "line 1\n", "line 2\n"]
        store.append(GROUP, STREAM, records(T0 + 3, 1, "more"))
        found = await asyncio.wait_for(store.filter_events(FilterEvents(GROUP, pattern="more")), timeout=10)
        assert [event.message for event in found.events] == ["more 0\n"]
    finally:
        await store.stop()


@run
async def test_a_read_waits_for_a_stuck_writer_only_so_long(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Under a flood (here: a writer that cannot finish) a read goes on with what is stored."""
    monkeypatch.setattr(store_module, "BUSY_LOOP_S", 3600.0)  # never busy: batches on the writer thread
    monkeypatch.setattr(store_module, "IDLE_READINGS", 1)  # one idle reading is enough
    monkeypatch.setattr(store_module, "READ_CATCH_UP_S", 0.05)
    release = threading.Event()
    real_insert = Writer.insert

    def stuck_insert(self: Writer, batch: Any) -> int:
        release.wait(30)
        return real_insert(self, batch)

    monkeypatch.setattr(Writer, "insert", stuck_insert)
    store = await started(tmp_path / "logs.db", linger_s=3600)
    try:
        store.append(GROUP, STREAM, records(T0, 2))
        groups = await asyncio.wait_for(store.describe_groups(DescribeGroups()), timeout=10)
        assert [group.name for group in groups.groups] == []  # nothing stored yet, and no wait for it
        release.set()
        await store.flush()
        page = await store.get_events(GetEvents(GROUP, STREAM, start_from_head=True))
        assert len(page.events) == 2
    finally:
        release.set()
        await store.stop()


@run
async def test_written_waits_for_the_records_appended_before_it_and_not_after(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The barrier an async event's completion waits on: it resolves once every record appended
    before the call is written, whatever is appended after."""
    monkeypatch.setattr(store_module, "BUSY_LOOP_S", 3600.0)  # never busy: batches on the writer thread
    monkeypatch.setattr(store_module, "IDLE_READINGS", 1)  # one idle reading is enough
    gate = threading.Semaphore(0)  # one release lets one batch be written
    real_insert = Writer.insert

    def gated_insert(self: Writer, batch: Any) -> int:
        gate.acquire(timeout=30)
        return real_insert(self, batch)

    monkeypatch.setattr(Writer, "insert", gated_insert)
    store = await started(tmp_path / "logs.db", linger_s=0)
    try:
        store.append(GROUP, STREAM, records(T0, 2))

        async def taken() -> bool:
            return store.statistics().buffered == 0

        await wait_until(taken)  # the first batch is being written, held at the gate
        first = asyncio.create_task(store.written())
        await asyncio.sleep(0)  # the call is made (its task has started)
        store.append(GROUP, STREAM, records(T0 + 2, 1, "later"))
        second = asyncio.create_task(store.written())
        for _ in range(20):
            await asyncio.sleep(0)
        assert not first.done() and not second.done()
        gate.release()
        await asyncio.wait_for(first, timeout=10)
        assert store.statistics().written == 2
        await asyncio.sleep(0.05)
        assert not second.done()  # the record appended after the first call is still held
        gate.release()
        await asyncio.wait_for(second, timeout=10)
        assert store.statistics().written == 3
    finally:
        gate.release()
        gate.release()
        await store.stop()


@run
async def test_written_returns_when_a_batch_could_not_be_written(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def failing_insert(self: Writer, batch: Any) -> int:
        raise sqlite3.OperationalError("disk I/O error")

    monkeypatch.setattr(Writer, "insert", failing_insert)
    store = await started(tmp_path / "logs.db", linger_s=0)
    try:
        store.append(GROUP, STREAM, records(T0, 2))
        await asyncio.wait_for(store.written(), timeout=10)
        assert store.statistics().failed == 2
    finally:
        await store.stop()


@run
async def test_written_does_not_wait_for_a_writer_that_died(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The writer survives failed writes; should it die all the same, the async completions
    waiting on written() go on (their events stay at-least-once) instead of hanging."""
    store = await started(tmp_path / "logs.db", linger_s=0)

    def broken_take() -> Any:
        raise RuntimeError("a bug in the writer")

    monkeypatch.setattr(store, "_take_batch", broken_take)
    try:
        waiting = asyncio.create_task(store.written())
        await asyncio.sleep(0)
        store.append(GROUP, STREAM, records(T0, 1))  # wakes the writer, which dies on it
        late = asyncio.create_task(store.written())
        await asyncio.wait_for(asyncio.gather(waiting, late), timeout=10)
    finally:
        monkeypatch.undo()
        await store.stop()


@run
async def test_a_filling_buffer_does_not_wait_for_the_linger(tmp_path: Path) -> None:
    store = await started(tmp_path / "logs.db", linger_s=3600, batch_records=40)
    try:
        store.append_lines(GROUP, STREAM, T0, [f"line {i}\n" for i in range(10)])  # a quarter of a batch

        async def written() -> bool:
            return store.statistics().written == 10

        await wait_until(written)
    finally:
        await store.stop()


def _record_insert_threads(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, bool]]:
    """(records, written on this event loop's thread) of each batch written from now on."""
    threads: list[tuple[int, bool]] = []
    real_insert = Writer.insert
    loop_thread = threading.get_ident()

    def recording_insert(self: Writer, batch: Any) -> int:
        written = real_insert(self, batch)
        threads.append((written, threading.get_ident() == loop_thread))
        return written

    monkeypatch.setattr(Writer, "insert", recording_insert)
    return threads


@run
async def test_with_a_busy_loop_small_batches_are_written_on_its_thread_and_a_flood_on_the_writer_thread(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    threads = _record_insert_threads(monkeypatch)
    monkeypatch.setattr(store_module, "BUSY_LOOP_S", 0.0)  # any time to come back is "busy"
    store = await started(tmp_path / "logs.db", linger_s=3600)
    try:
        store.append_lines(GROUP, STREAM, T0, [f"line {i}\n" for i in range(3)])
        await store.flush()
        store.append_lines(GROUP, STREAM, T0 + 1, [f"flood {i}\n" for i in range(store_module.INLINE_RECORDS + 1)])
        await store.flush()
        assert threads == [(3, True), (store_module.INLINE_RECORDS + 1, False)]
        page = await store.get_events(GetEvents(GROUP, STREAM, limit=10_000, start_from_head=True))
        assert len(page.events) == store_module.INLINE_RECORDS + 4
    finally:
        await store.stop()


@run
async def test_with_an_idle_loop_small_batches_are_written_on_the_writer_thread(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    threads = _record_insert_threads(monkeypatch)
    monkeypatch.setattr(store_module, "BUSY_LOOP_S", 3600.0)  # never busy
    monkeypatch.setattr(store_module, "IDLE_READINGS", 1)  # one idle reading is enough
    store = await started(tmp_path / "logs.db", linger_s=3600)
    try:
        store.append_lines(GROUP, STREAM, T0, [f"line {i}\n" for i in range(3)])
        await store.flush()
        assert threads == [(3, False)]
    finally:
        await store.stop()


@run
async def test_the_loop_counts_as_idle_only_after_several_idle_readings_in_a_row(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """One reading under load finds the loop between two bursts of work as often as in one: a
    batch goes to the writer thread only once IDLE_READINGS readings in a row found it idle."""
    threads = _record_insert_threads(monkeypatch)
    readings = iter([True, False, False, False, False, True, False])  # busy?

    async def reading() -> bool:
        return next(readings)

    monkeypatch.setattr(store_module, "_loop_is_busy", reading)
    monkeypatch.setattr(store_module, "IDLE_READINGS", 3)
    store = await started(tmp_path / "logs.db", linger_s=0)
    try:
        for i in range(7):
            store.append_lines(GROUP, STREAM, T0 + i, [f"line {i}\n"])
            await store.flush()
        # inline (on this thread) while busy or fewer than 3 idle readings in a row
        assert [on_loop for _, on_loop in threads] == [True, True, True, False, False, True, True]
    finally:
        await store.stop()


def record_lingers(store: SqliteLogStore, monkeypatch: pytest.MonkeyPatch,
                   on_step: Callable[[int], None] = lambda step: None) -> list[float]:
    """What the writer waits for before each batch, one entry per `_linger` (white box: the
    wait itself is asyncio's); `on_step(n)` runs as the nth starts."""
    lingers: list[float] = []
    real_linger = store._linger

    async def recording_linger(seconds: float) -> None:
        lingers.append(seconds)
        on_step(len(lingers))
        await real_linger(seconds)

    monkeypatch.setattr(store, "_linger", recording_linger)
    return lingers


@pytest.mark.parametrize("busy", [True, False])
@run
async def test_the_writer_lingers_longer_after_a_batch_of_an_idle_loop(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, busy: bool) -> None:
    monkeypatch.setattr(store_module, "BUSY_LOOP_S", 0.0 if busy else 3600.0)
    monkeypatch.setattr(store_module, "IDLE_READINGS", 1)  # one idle reading is enough
    store = await started(tmp_path / "logs.db", linger_s=0.001)
    lingers = record_lingers(store, monkeypatch)
    try:
        for i in range(2):
            store.append_lines(GROUP, STREAM, T0 + i, [f"line {i}\n"])
            await store.written()  # unlike flush(), it does not hurry the writer
        # The first batch lingers as after a busy loop; the next by what the last one saw: after
        # an idle loop, IDLE_LINGER_FACTOR steps of linger_s.
        factor = 1 if busy else store_module.IDLE_LINGER_FACTOR
        assert lingers == [0.001] * (1 + factor)
    finally:
        await store.stop()


@run
async def test_the_long_linger_ends_at_the_first_step_that_finds_the_loop_busy(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(store_module, "BUSY_LOOP_S", 3600.0)  # idle: the first batch sees it so
    monkeypatch.setattr(store_module, "IDLE_READINGS", 1)  # one idle reading is enough
    store = await started(tmp_path / "logs.db", linger_s=0.001)

    def load_starts(step: int) -> None:
        if step == 3:  # the long linger's second step
            monkeypatch.setattr(store_module, "BUSY_LOOP_S", 0.0)

    lingers = record_lingers(store, monkeypatch, load_starts)
    try:
        for i in range(2):
            store.append_lines(GROUP, STREAM, T0 + i, [f"line {i}\n"])
            await store.written()
        assert lingers == [0.001] * 3
    finally:
        await store.stop()


@run
async def test_records_that_come_in_during_a_write_wait_for_the_next_linger(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Not a batch of their own right after: at one client that made a train of batches of a
    few records each, every write ending as the next records came in."""
    monkeypatch.setattr(store_module, "BUSY_LOOP_S", 0.0)  # busy: inline batches, short lingers
    store = await started(tmp_path / "logs.db", linger_s=0.001)
    events: list[str] = []
    real_insert = Writer.insert

    def insert_while_a_record_comes_in(self: Writer, batch: Any) -> int:
        written = real_insert(self, batch)
        events.append(f"insert {written}")
        if len(events) < 4:
            store.append_lines(GROUP, STREAM, T0 + len(events), ["arrived during the write\n"])
        return written

    monkeypatch.setattr(Writer, "insert", insert_while_a_record_comes_in)
    record_lingers(store, monkeypatch, lambda step: events.append("linger"))
    try:
        store.append_lines(GROUP, STREAM, T0, ["first\n"])
        while events.count("insert 1") < 2:
            await store.written()
        assert events[:4] == ["linger", "insert 1", "linger", "insert 1"]
    finally:
        await store.stop()


@run
async def test_a_flush_during_a_write_gets_what_came_in_meanwhile_written_at_once(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The writer going back to its linger after a write must not keep a waiting reader waiting:
    a flush hurries it (the linger here is an hour)."""
    store = await started(tmp_path / "logs.db", linger_s=3600)
    real_insert = Writer.insert
    flushes: list[asyncio.Task[None]] = []

    def insert_then_a_record_and_a_flush(self: Writer, batch: Any) -> int:
        written = real_insert(self, batch)
        if not flushes:
            store.append_lines(GROUP, STREAM, T0 + 1, ["arrived during the write\n"])
            flushes.append(asyncio.ensure_future(store.flush()))
        return written

    monkeypatch.setattr(Writer, "insert", insert_then_a_record_and_a_flush)
    try:
        store.append_lines(GROUP, STREAM, T0, ["first\n"])
        await asyncio.wait_for(store.flush(), 5)  # an hour's linger otherwise
        await asyncio.wait_for(flushes[0], 5)
        assert store.statistics().written == 2
    finally:
        await store.stop()


@run
async def test_a_loop_with_work_queued_is_busy_and_one_without_is_not(monkeypatch: pytest.MonkeyPatch) -> None:
    loop = asyncio.get_running_loop()
    monkeypatch.setattr(store_module, "BUSY_LOOP_S", 0.002)
    loop.call_soon(time.sleep, 0.005)  # queued before the yield: the loop runs it first
    assert await store_module._loop_is_busy()
    monkeypatch.setattr(store_module, "BUSY_LOOP_S", 1.0)  # a bound, not a guess at the speed
    assert not await store_module._loop_is_busy()


@run
async def test_checkpoints_run_on_the_writer_thread_every_so_many_records(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    checkpoints: list[bool] = []  # on the event loop's thread?
    real_checkpoint = store_module._checkpoint

    def recording_checkpoint(conn: sqlite3.Connection) -> None:
        checkpoints.append(threading.get_ident() == loop_thread)
        real_checkpoint(conn)

    loop_thread = threading.get_ident()
    monkeypatch.setattr(store_module, "CHECKPOINT_RECORDS", 10)
    monkeypatch.setattr(store_module, "_checkpoint", recording_checkpoint)
    store = await started(tmp_path / "logs.db", linger_s=3600)
    try:
        writer = store._writer  # white box: the connection's own checkpoint is off
        assert writer is not None
        assert writer.conn.execute("PRAGMA wal_autocheckpoint").fetchone()[0] == 0
        for i in range(6):  # batches of 4 records: a checkpoint after the 3rd and the 6th
            store.append_lines(GROUP, STREAM, T0 + i, [f"line {i}.{j}\n" for j in range(4)])
            await store.flush()
        assert checkpoints == [False, False]
        # Everything is in the database file itself now: a copy without the WAL has it all.
        copy = tmp_path / "copy.db"
        copy.write_bytes((tmp_path / "logs.db").read_bytes())
        conn = sqlite3.connect(copy)
        try:
            assert conn.execute("SELECT sum(event_count) FROM log_events").fetchone()[0] == 24
        finally:
            conn.close()
    finally:
        await store.stop()
