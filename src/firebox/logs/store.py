"""Log records in their own SQLite database, written in batches off the invocation path.

    append_lines (event loop, never blocks) -> bounded buffer of segments -> writer task ->
    one transaction per batch: on the event loop's thread (a small batch, the loop busy) or
    the writer thread
    reads -> reader thread (own connection: WAL lets reads run while a batch is written)
    sweeper task -> writer thread (retention, the rest of deleted groups)

The buffer holds segments (the records of one read of a pipe, sharing a timestamp), so the
event loop spends a few operations per read, not per line, and a flood costs it little.

Back-pressure: the buffer holds at most `max_records` records and `max_bytes` characters, and one
stream at most half of each (so one flooding function cannot crowd out the others). What does not
fit is dropped from the end of a segment and counted against its stream; once a stream drops, it
keeps dropping until the buffer has drained below half of those bounds (a few large gaps rather
than many small ones). The next records of that stream that are accepted are preceded by a notice
at the place of the gap: `[firebox] 1234 log records (5678901 bytes) dropped: ...`. Drops still
pending when the writer has emptied the buffer get their notice then. Platform records (START,
END, REPORT...) are never dropped: they are a few per invocation.

Worked example (max_records=1000, one stream flooding 100-record segments while the writer is
busy): segments 1-5 are accepted (500 = the stream's half), segment 6 is dropped (100 counted),
and so are the following ones until the writer has taken enough to bring the stream under 250;
the next accepted segment comes after a notice "[firebox] N log records ... dropped".

Commit cadence: a transaction costs the writer thread (and the GIL it shares with the event loop)
far more than the rows in it, and a warm invocation adds only 3 records (START, END, REPORT). So
the writer lingers `linger_s` (10 ms) after the first record arrives before taking a batch: under
load one commit carries many invocations' records. When the event loop was not busy at the last
batch (see below), it lingers IDLE_LINGER_FACTOR times longer (500 ms): a batch written on the
writer thread still takes the GIL from the loop dozens of times, and a request that arrives
meanwhile waits, so fewer, larger batches leave fewer requests waiting. One client, warm
overhead p99: 50 ms against 10, 1.31 -> 0.92 ms and 1.42 -> 1.12 ms; 500 ms against 50 (12
alternated rounds of 500, three runs), 1.32 -> 0.96, 1.78 -> 1.59 and 1.43 -> 1.06 ms, the p50
unchanged. A busy loop keeps 10 ms, since its batches are written on its own thread, where five
times the records held it five times longer: 16 clients, p99 15.5 -> 20.5 ms. It does not
linger when the buffer passes `batch_records` / 4 or its bytes a quarter of `max_bytes` (a flood
is written as fast as before), nor when someone waits in `flush()`. The long linger goes in steps
of `linger_s` and ends at the first that finds the loop busy (`_linger_while_idle`): a load that
starts, or one idle reading under load, no longer piles up 5,000 records. What comes in during a
write waits for the next linger too, unless the writer is hurried, records were dropped, or more
than a batch was waiting already: written at once, it made a train of batches of a few records
each, every write ending as the next records came in (one client: 387 batches of 26 records on
the writer thread in 4 s; bench/cpu_ab.py, writer thread 28 -> 7 us per invocation, machine
-11%, throughput +8%; 16 clients unchanged).

Crash safety: what is buffered dies with the process. An asynchronous event's completion is
committed only once the records appended before it are written (`written()`, awaited by the
dispatcher), so a SIGKILL in the linger runs the event again rather than leaving it done without
its lines (tests/asyncinvoke/test_durability.py, with a 1 s linger and a handler that returns at
once). A synchronous invocation's lines still waiting are lost with the process: its caller has
its answer, and the window is the linger (half a second while the server is mostly idle). The
linger was 50 ms at most before events waited on their lines: a SIGKILL during a 500 ms linger
lost the output of events already done.

Visibility: a read first waits for the records appended before it (`_catch_up`: the writer is
hurried, at most READ_CATCH_UP_S), so that a log read right after an invocation shows its lines,
however long the writer lingers. Under a flood the read goes on with what is stored by then.
Records that nobody reads wait for the linger; AWS's take seconds to show.

Where a batch is written depends on how busy the event loop is. A batch of at most
INLINE_RECORDS records (the START/END/REPORT of warm invocations, a few lines of output) is
written by the writer task itself, on the event loop's thread, when the loop is busy: when it
took over BUSY_LOOP_S to come back to the writer task after a yield (`_loop_is_busy`) at any
of the last IDLE_READINGS batches (`_loop_stays_busy`: one reading under load is a coin flip).
About a millisecond for a batch of 17 invocations. On the writer thread, that batch would cost
a busy loop more: sqlite3 gives the GIL back around every statement and takes it again after,
so the thread and the loop hand the GIL to each other dozens of times per batch, and the loop
waits each time. A loop that mostly waits loses little to those handoffs, but everything to a batch
written in its place: a request arriving meanwhile waits for the whole batch. So then, and for
any larger batch (a flood), the writer thread writes. Measured (two servers at once,
alternated rounds):

    16 clients, rounds of 2,000 warm invokes (30): small batches all inline 1,798/s, p99 15.2
        ms; all on the thread 1,609/s, p99 19.9 ms; by the loop's busyness as here, 1,681/s
        against 1,620/s all inline in another run.
    1 client, warm overhead (client time minus Duration), 10 rounds of 500: all inline p50
        0.42 ms, p99 1.31 ms; all on the thread 0.45 / 0.90 ms; as here, against all inline
        in one run: 0.49 / 1.08 against 0.51 / 1.46 ms.

Every use of the writer's connection, wherever it runs, holds `_write_lock`: one at a time.

Checkpoints run on the writer thread, holding that lock: the connection's automatic one would
otherwise run at the end of an inline batch's commit, copying up to 40 MB on the loop's thread.
Every CHECKPOINT_RECORDS records written, the writer task runs one there; with no write
meanwhile it catches up with the writer, and the WAL starts over.

Lifecycle: `start` opens both connections (creating or migrating the file, see `schema.py`) and
starts the writer and the sweeper; `stop` flushes (5 s at most), stops both tasks, closes.
The sweeper runs `sweep` every `sweep_interval_s`: it finishes group deletions and applies
retention by `clock` (injectable: tests move time forward without waiting for it).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
import time
from bisect import bisect_right
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from itertools import accumulate
from pathlib import Path
from typing import Any, TypeVar

from firebox.errors import StoreError
from firebox.logs import reads, schema
from firebox.logs.api import (
    DescribeGroups,
    DescribeStreams,
    EventsPage,
    FilteredPage,
    FilterEvents,
    GetEvents,
    GroupsPage,
    LogEvent,
    LogRecord,
    StreamsPage,
)
from firebox.logs.writes import RawSegment, Segment, Writer

log = logging.getLogger("firebox.logs")

MAX_BUFFERED_RECORDS = 200_000
MAX_BUFFERED_BYTES = 64 * 1024 * 1024
BATCH_RECORDS = 20_000
BATCH_BYTES = 8 * 1024 * 1024
SWEEP_INTERVAL_S = 60.0
WRITE_LINGER_S = 0.010
IDLE_LINGER_FACTOR = 50  # ...times longer when the event loop was not busy at the last batch
READ_CATCH_UP_S = 0.5  # a read waits at most this long for the records appended before it
INLINE_RECORDS = 500  # a batch of at most this many records may be written on the event loop's thread
BUSY_LOOP_S = 0.00025  # ...when the loop takes longer than this to come back to a task that yields
IDLE_READINGS = 3  # ...and it is idle only after this many readings in a row found it so
CHECKPOINT_RECORDS = 20_000  # records written between checkpoints (about 10 MB of pages)

T = TypeVar("T")


@dataclass(frozen=True)
class LogStoreStatistics:
    written: int  # records committed, notices included
    dropped: int  # records dropped by back-pressure
    dropped_bytes: int
    buffered: int  # records waiting in the buffer
    buffered_bytes: int
    failed: int  # records lost to a failed write (disk full...)
    sweeps: int
    batches: int = 0  # transactions that wrote records


async def _loop_is_busy() -> bool:
    """Whether the event loop has a queue of other work: how long it takes to come back to a
    task that yields once. Measured between log batches: 6-18 us (p10-p90) with one client
    invoking in a loop, 0.7-3.3 ms with 16 clients."""
    start = time.perf_counter()
    await asyncio.sleep(0)
    return time.perf_counter() - start > BUSY_LOOP_S


def _checkpoint(conn: sqlite3.Connection) -> None:
    # PASSIVE, as the automatic one: it never waits for a reader. Nothing writes meanwhile (the
    # write lock is held), so it copies every frame no reader still needs, and the next write
    # starts the WAL over once no reader needs any.
    conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()


def _notice(count: int, size: int) -> str:
    """(Sizes are counted in characters, which are bytes for ASCII text.)"""
    return (f"[firebox] {count} log records ({size} bytes) dropped: the function wrote faster than its logs "
            "could be stored\n")


class SqliteLogStore:
    def __init__(
        self,
        path: Path,
        *,
        clock: Callable[[], float] = time.time,
        sweep_interval_s: float = SWEEP_INTERVAL_S,
        max_records: int = MAX_BUFFERED_RECORDS,
        max_bytes: int = MAX_BUFFERED_BYTES,
        batch_records: int = BATCH_RECORDS,
        linger_s: float = WRITE_LINGER_S,
    ) -> None:
        self._path = path
        self._clock = clock
        self._sweep_interval_s = sweep_interval_s
        self._max_records = max_records
        self._max_bytes = max_bytes
        self._max_stream_records = max(1, max_records // 2)
        self._max_stream_bytes = max(1, max_bytes // 2)
        self._batch_records = batch_records
        self._linger_s = linger_s
        self._hurry_records = max(1, min(batch_records, max_records) // 4)
        self._hurry_bytes = max(1, max_bytes // 4)
        self._write_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="firebox-logs-write")
        self._read_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="firebox-logs-read")
        self._writer: Writer | None = None
        self._reader: sqlite3.Connection | None = None
        self._segments: deque[RawSegment] = deque()  # (group, stream, ts, messages, size)
        self._buffered = self._buffered_bytes = 0
        # (group, stream) -> [records, characters] in the buffer
        self._stream_use: dict[tuple[str, str], list[int]] = {}
        # (group, stream) -> [records, characters, last timestamp] dropped and not yet noticed
        self._dropped: dict[tuple[str, str], list[int]] = {}
        self._wake = asyncio.Event()
        self._hurry = asyncio.Event()  # write now: a flush waits, or the buffer is filling
        self._progress = asyncio.Event()
        self._writing = False
        # Segments pushed into the buffer so far, taken from it by the writer, and settled:
        # the first `_settled` of them are written or lost to a failed write. `written()`
        # compares the first and the last (the buffer is first in, first out).
        self._pushed = self._taken = self._settled = 0
        self._write_lock = asyncio.Lock()  # the writer's connection: one use at a time
        self._idle_readings = 0  # readings in a row that found the event loop idle
        self._unchecked = 0  # records written since the last checkpoint
        self._tasks: list[asyncio.Task[None]] = []
        self._written = self._dropped_total = self._dropped_bytes = self._failed = self._sweeps = self._batches = 0

    # -- lifecycle -----------------------------------------------------------------------------

    async def start(self) -> None:
        conn = await self._on_writer(schema.open_database, self._path)
        await self._on_writer(conn.execute, "PRAGMA wal_autocheckpoint = 0")  # see the module doc
        self._writer = await self._on_writer(Writer, conn, self._now_ms)
        self._reader = await self._on_reader(schema.connect, self._path, readonly=True)
        self._tasks = [
            asyncio.create_task(self._write_forever(), name="firebox-log-writer"),
            asyncio.create_task(self._sweep_forever(), name="firebox-log-sweeper"),
        ]
        # A writer that died (a bug: it survives failed writes) writes nothing more: whoever
        # waits in written() must not wait for it.
        self._tasks[0].add_done_callback(self._writer_ended)

    async def stop(self) -> None:
        if self._tasks:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.flush(), timeout=5)
            for task in reversed(self._tasks):
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):  # a dead writer is logged
                    await task
            self._tasks = []
            self._progress.set()  # whoever waits in written() gives up: nothing will be written
        loop = asyncio.get_running_loop()
        if self._reader is not None:
            conn, self._reader = self._reader, None
            await loop.run_in_executor(self._read_thread, conn.close)
        if self._writer is not None:
            writer, self._writer = self._writer, None
            await loop.run_in_executor(self._write_thread, writer.conn.close)
        self._read_thread.shutdown(wait=True)
        self._write_thread.shutdown(wait=True)

    def statistics(self) -> LogStoreStatistics:
        return LogStoreStatistics(self._written, self._dropped_total, self._dropped_bytes, self._buffered,
                                  self._buffered_bytes, self._failed, self._sweeps, self._batches)

    def _now_ms(self) -> int:
        return int(self._clock() * 1000)

    # -- the sink ------------------------------------------------------------------------------

    def append(self, group: str, stream: str, records: Sequence[LogRecord]) -> None:
        for record in records:
            self.append_lines(group, stream, record.timestamp_ms, [record.message])

    def append_lines(self, group: str, stream: str, timestamp_ms: int, messages: Sequence[str], *,
                     platform: bool = False) -> None:
        count = len(messages)
        if not count:
            return
        key = (group, stream)
        use = self._stream_use.get(key)
        if use is None:
            use = self._stream_use[key] = [0, 0]
        size = len(messages[0]) if count == 1 else sum(map(len, messages))  # (START is one line)
        if not platform:  # platform records are never dropped
            accepted = self._room(key, use, messages, size)
            if accepted < count:
                kept = sum(map(len, messages[:accepted]))
                lost = self._dropped.setdefault(key, [0, 0, timestamp_ms])
                lost[0] += count - accepted
                lost[1] += size - kept
                lost[2] = timestamp_ms
                self._dropped_total += count - accepted
                self._dropped_bytes += size - kept
                if not accepted:
                    return
                messages, size, count = messages[:accepted], kept, accepted
        if self._dropped:
            gap = self._dropped.pop(key, None)
            if gap is not None:
                self._push(group, stream, gap[2], [_notice(gap[0], gap[1])], 0, use)
        # `_push` in line: two appends per warm invocation.
        self._segments.append((group, stream, timestamp_ms, messages, size))
        self._pushed += 1
        buffered = self._buffered = self._buffered + count
        buffered_bytes = self._buffered_bytes = self._buffered_bytes + size
        use[0] += count
        use[1] += size
        self._wake.set()
        if buffered >= self._hurry_records or buffered_bytes >= self._hurry_bytes:
            self._hurry.set()

    def _room(self, key: tuple[str, str], use: list[int], messages: Sequence[str], size: int) -> int:
        """How many of `messages` (from the first) fit in the buffer now."""
        if key in self._dropped and (2 * self._buffered > self._max_records
                                     or 2 * self._buffered_bytes > self._max_bytes
                                     or 2 * use[0] > self._max_stream_records
                                     or 2 * use[1] > self._max_stream_bytes):
            return 0  # still dropping: wait for the buffer to drain to half
        count = min(len(messages), self._max_records - self._buffered, self._max_stream_records - use[0])
        budget = min(self._max_bytes - self._buffered_bytes, self._max_stream_bytes - use[1])
        if count <= 0 or budget <= 0:
            return 0
        if count == len(messages) and size <= budget:
            return count
        return bisect_right(list(accumulate(map(len, messages[:count]))), budget)

    def _push(self, group: str, stream: str, ts: int, messages: Sequence[str], size: int, use: list[int]) -> None:
        self._segments.append((group, stream, ts, messages, size))
        self._pushed += 1
        self._buffered += len(messages)
        self._buffered_bytes += size
        use[0] += len(messages)
        use[1] += size

    async def flush(self) -> None:
        """Wait until everything appended so far is committed (or lost to a failed write)."""
        while (self._segments or self._dropped or self._writing) and self._writer_alive():
            self._wake.set()
            self._hurry.set()
            self._progress.clear()
            await self._progress.wait()

    async def written(self) -> None:
        """Wait until every record appended so far is written to the database (or lost to a
        failed write), without hurrying the writer: a completion that must not outlive its
        invocation's lines waits on this before it commits (see "Crash safety")."""
        target = self._pushed
        while self._settled < target and self._writer_alive():
            self._progress.clear()
            await self._progress.wait()

    def _writer_alive(self) -> bool:
        return bool(self._tasks) and not self._tasks[0].done()

    def _writer_ended(self, task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception() is not None:
            log.error("the log writer stopped: %r", task.exception())
        self._progress.set()

    def _take_batch(self) -> list[RawSegment]:
        # The whole buffer when it fits (the usual case): the loop of `_take_part` would take
        # every segment, and its accounting per stream would be cleared at the end anyway
        # (about 4,000 instructions per segment, 2 segments per warm invocation).
        fits = self._buffered <= self._batch_records and self._buffered_bytes < BATCH_BYTES
        batch = self._take_all() if fits else self._take_part()
        if not self._segments:
            self._stream_use.clear()
            # Streams still dropping: their notice closes this batch.
            for (group, stream), (records, dropped_bytes, ts) in self._dropped.items():
                batch.append(Segment(group, stream, ts, [_notice(records, dropped_bytes)], 0))
            self._dropped.clear()
        return batch

    def _take_all(self) -> list[RawSegment]:
        batch = list(self._segments)
        self._segments.clear()
        self._taken += len(batch)
        self._buffered = self._buffered_bytes = 0
        return batch

    def _take_part(self) -> list[RawSegment]:
        """The first segments, up to `batch_records` records or BATCH_BYTES characters."""
        batch: list[RawSegment] = []
        count = size = 0
        while self._segments and count < self._batch_records and size < BATCH_BYTES:
            segment = self._segments.popleft()
            self._taken += 1
            batch.append(segment)
            group, stream, _, messages, segment_size = segment
            count += len(messages)
            size += segment_size
            key = (group, stream)
            use = self._stream_use.get(key)
            if use is not None:
                use[0] -= len(messages)
                use[1] -= segment_size
                if use[0] <= 0:
                    del self._stream_use[key]
        self._buffered -= count
        self._buffered_bytes -= size
        return batch

    async def _write_forever(self) -> None:
        busy = True
        while True:
            await self._wake.wait()
            # Longer when the loop was not busy at the last batch: see the module doc.
            await (self._linger(self._linger_s) if busy else self._linger_while_idle())
            self._hurry.clear()
            self._wake.clear()
            while self._segments or self._dropped:
                # Asked before the batch is taken: what arrives during that yield joins it,
                # instead of making a batch of its own right after (the linger would be lost).
                busy = await self._loop_stays_busy()
                batch = self._take_batch()
                backlog = bool(self._segments)  # more than one batch was waiting
                taken = self._taken
                self._writing = True
                try:
                    self._written += await self._insert(batch, inline=busy)
                    self._batches += 1
                except Exception:  # the disk is full or the file broken: lose this batch, go on
                    lost = sum(len(messages) for _, _, _, messages, _ in batch)
                    self._failed += lost
                    log.exception("could not write %d log records", lost)
                finally:
                    self._settled = taken
                    self._writing = False
                    self._progress.set()
                if not (backlog or self._hurry.is_set() or self._dropped):
                    break  # what came in during that write waits for the next linger (module doc)
            self._progress.set()

    async def _linger(self, seconds: float) -> None:
        """Wait `seconds` for more records to join the batch, or until the writer is hurried."""
        if seconds > 0 and not self._hurry.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._hurry.wait(), seconds)

    async def _linger_while_idle(self) -> None:
        """The idle linger (IDLE_LINGER_FACTOR times `linger_s`), in steps of `linger_s`: it
        ends at the first step that finds the loop busy. One idle reading under load (by
        chance, between two bursts) otherwise let records pile up for the whole linger: at 16
        clients, batches of 5,000 records, written on the writer thread in 130-230 ms, each
        holding every request in flight for 10-20 ms (a scratch trace of the loop's lag)."""
        for _ in range(IDLE_LINGER_FACTOR):
            await self._linger(self._linger_s)
            if self._hurry.is_set():
                return
            if await _loop_is_busy():
                self._idle_readings = 0
                return

    async def _loop_stays_busy(self) -> bool:
        """Busy until IDLE_READINGS readings in a row have found the loop idle. One reading under
        load is a coin flip: the writer yields right after its linger, and finds the loop between
        two bursts of work as often as in one (at 16 clients, a third of the readings came back
        in 5 us, the rest in 0.5-1.2 ms; on Python 3.12 half of them under BUSY_LOOP_S), and each
        such batch went to the writer thread, whose GIL handoffs cost the machine more than the
        batch itself (Python 3.12 at 16 clients: 13 us per invocation on the thread, 6% of the
        machine's CPU)."""
        if await _loop_is_busy():
            self._idle_readings = 0
        else:
            self._idle_readings += 1
        return self._idle_readings < IDLE_READINGS

    async def _insert(self, batch: list[RawSegment], *, inline: bool) -> int:
        """Write `batch`: on the event loop's thread if `inline` and it is small, else on the
        writer thread."""
        writer = self._writer
        assert writer is not None
        records = sum(len(messages) for _, _, _, messages, _ in batch)
        async with self._write_lock:
            if inline and records <= INLINE_RECORDS:
                try:
                    written = writer.insert(batch)  # here, on the event loop's thread: see the module doc
                except sqlite3.Error as exc:
                    raise StoreError(f"log store: {exc}") from exc
            else:
                written = await self._run(self._write_thread, writer.insert, batch)
            self._unchecked += written
            if self._unchecked >= CHECKPOINT_RECORDS:
                self._unchecked = 0
                await self._run(self._write_thread, _checkpoint, writer.conn)
        return written

    # -- retention -----------------------------------------------------------------------------

    async def _sweep_forever(self) -> None:
        while True:
            await asyncio.sleep(self._sweep_interval_s)
            try:
                await self.sweep()
            except Exception:
                log.exception("log retention sweep failed")

    async def sweep(self) -> None:
        """Finish deleted groups and delete expired events, one chunk per transaction."""
        writer = self._writer
        assert writer is not None
        while await self._on_writer(writer.delete_orphans):
            pass
        while await self._on_writer(writer.expire):
            pass
        self._sweeps += 1

    # -- management ----------------------------------------------------------------------------

    async def create_group(self, name: str) -> None:
        assert self._writer is not None
        await self._on_writer(self._writer.create_group, name)

    async def delete_group(self, name: str) -> None:
        # Records still buffered for the group were written before the deletion: they go too.
        if any(segment[0] == name for segment in self._segments):
            self._segments = deque(segment for segment in self._segments if segment[0] != name)
            self._buffered = sum(len(messages) for _, _, _, messages, _ in self._segments)
            self._buffered_bytes = sum(size for _, _, _, _, size in self._segments)
            self._stream_use = {k: v for k, v in self._stream_use.items() if k[0] != name}
        self._dropped = {k: v for k, v in self._dropped.items() if k[0] != name}
        assert self._writer is not None
        await self._on_writer(self._writer.delete_group, name)
        while await self._on_writer(self._writer.delete_orphans):
            pass

    async def put_retention(self, name: str, days: int | None) -> None:
        assert self._writer is not None
        await self._on_writer(self._writer.put_retention, name, days)

    # -- reads ---------------------------------------------------------------------------------

    async def describe_groups(self, command: DescribeGroups) -> GroupsPage:
        return await self._read(reads.describe_groups, command)

    async def describe_streams(self, command: DescribeStreams) -> StreamsPage:
        return await self._read(reads.describe_streams, command)

    async def get_events(self, command: GetEvents) -> EventsPage:
        return await self._read(reads.get_events, command)

    async def filter_events(self, command: FilterEvents) -> FilteredPage:
        return await self._read(reads.filter_events, command)

    async def query(
        self,
        group: str,
        *,
        start_ms: int | None = None,
        end_ms: int | None = None,
        after_id: int = 0,
        streams: Sequence[str] | None = None,
        limit: int = 10_000,
    ) -> list[LogEvent]:
        return await self._read(reads.query, group, start_ms=start_ms, end_ms=end_ms, after_id=after_id,
                                streams=streams, limit=limit)

    # -- threads -------------------------------------------------------------------------------

    async def _read(self, function: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        assert self._reader is not None, "the log store is not started"
        await self._catch_up()
        return await self._on_reader(function, self._reader, *args, **kwargs)

    async def _catch_up(self) -> None:
        """Let the records appended so far be written before a read (see "Visibility")."""
        if self._segments or self._dropped or self._writing:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.flush(), READ_CATCH_UP_S)

    async def _on_reader(self, function: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        return await self._run(self._read_thread, function, *args, **kwargs)

    async def _on_writer(self, function: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        async with self._write_lock:
            return await self._run(self._write_thread, function, *args, **kwargs)

    @staticmethod
    async def _run(executor: ThreadPoolExecutor, function: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(executor, lambda: function(*args, **kwargs))
        except sqlite3.Error as exc:
            raise StoreError(f"log store: {exc}") from exc
