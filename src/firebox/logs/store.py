"""Log records in their own SQLite database, written in batches off the invocation path.

`append` only puts records in a bounded in-memory buffer and wakes the writer task; the writer
commits whatever accumulated in one transaction on the store's own thread. When the buffer is
full (a function flooding its output faster than the disk takes it), new records are dropped and
counted, and one notice record per stream says how many were lost: memory stays bounded and
nothing blocks the invocation.

Schema: `events(id INTEGER PRIMARY KEY, log_group, stream, ts, message)` with an index on
(log_group, ts) for time queries and (log_group, stream, id) for stream reads; `id` orders
records of one stream as they were produced.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from collections import defaultdict
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from firebox.logs.api import LogEvent, LogRecord

MAX_BUFFERED_RECORDS = 200_000
MAX_BUFFERED_BYTES = 64 * 1024 * 1024


@dataclass(frozen=True)
class LogStoreStatistics:
    written: int
    dropped: int
    buffered: int


class SqliteLogStore:
    def __init__(self, path: Path) -> None:
        self._path = path
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="firebox-logs")
        self._conn: sqlite3.Connection | None = None
        self._buffer: list[tuple[str, str, int, str]] = []
        self._buffered_bytes = 0
        self._dropped: dict[tuple[str, str], int] = defaultdict(int)
        self._wake = asyncio.Event()
        self._writer: asyncio.Task[None] | None = None
        self._written = 0
        self._dropped_total = 0
        self._flushed = asyncio.Event()

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._conn = await loop.run_in_executor(self._executor, self._open)
        self._writer = asyncio.create_task(self._write_forever(), name="firebox-log-writer")

    def _open(self) -> sqlite3.Connection:
        self._path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(self._path, check_same_thread=False, isolation_level=None)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")  # logs may lose the last batch on power loss
        conn.executescript(
            """
            CREATE TABLE IF NOT EXISTS events (
                id INTEGER PRIMARY KEY, log_group TEXT NOT NULL, stream TEXT NOT NULL,
                ts INTEGER NOT NULL, message TEXT NOT NULL);
            CREATE INDEX IF NOT EXISTS events_by_time ON events (log_group, ts);
            CREATE INDEX IF NOT EXISTS events_by_stream ON events (log_group, stream, id);
            """
        )
        return conn

    def statistics(self) -> LogStoreStatistics:
        return LogStoreStatistics(self._written, self._dropped_total, len(self._buffer))

    def append(self, group: str, stream: str, records: Sequence[LogRecord]) -> None:
        for record in records:
            size = len(record.message)
            if len(self._buffer) >= MAX_BUFFERED_RECORDS or self._buffered_bytes + size > MAX_BUFFERED_BYTES:
                self._dropped[(group, stream)] += 1
                self._dropped_total += 1
                continue
            self._buffer.append((group, stream, record.timestamp_ms, record.message))
            self._buffered_bytes += size
        self._wake.set()

    async def flush(self) -> None:
        """Wait until everything appended so far is committed."""
        while self._buffer or self._dropped:
            self._flushed.clear()
            self._wake.set()
            await self._flushed.wait()

    async def _write_forever(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self._wake.wait()
            self._wake.clear()
            batch, self._buffer, self._buffered_bytes = self._buffer, [], 0
            for (group, stream), count in self._dropped.items():
                ts = batch[-1][2] if batch else 0
                batch.append((group, stream, ts, f"[firebox] {count} log records dropped: the function wrote "
                                                 "faster than logs could be stored\n"))
            self._dropped.clear()
            if batch:
                await loop.run_in_executor(self._executor, self._insert, batch)
                self._written += len(batch)
            self._flushed.set()

    def _insert(self, batch: list[tuple[str, str, int, str]]) -> None:
        assert self._conn is not None
        with self._conn:
            self._conn.execute("BEGIN")
            self._conn.executemany("INSERT INTO events (log_group, stream, ts, message) VALUES (?, ?, ?, ?)", batch)

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
        """Records of `group` in id order (production order), after `after_id`, within the times."""
        sql = "SELECT id, stream, ts, message FROM events WHERE log_group = ? AND id > ?"
        args: list[object] = [group, after_id]
        if start_ms is not None:
            sql += " AND ts >= ?"
            args.append(start_ms)
        if end_ms is not None:
            sql += " AND ts <= ?"
            args.append(end_ms)
        if streams:
            sql += f" AND stream IN ({', '.join('?' for _ in streams)})"
            args.extend(streams)
        sql += " ORDER BY id LIMIT ?"
        args.append(limit)
        loop = asyncio.get_running_loop()
        rows = await loop.run_in_executor(self._executor, self._select, sql, args)
        return [LogEvent(id=r[0], stream=r[1], timestamp_ms=r[2], message=r[3]) for r in rows]

    def _select(self, sql: str, args: list[object]) -> list[tuple[int, str, int, str]]:
        assert self._conn is not None
        return self._conn.execute(sql, args).fetchall()

    async def stop(self) -> None:
        if self._writer is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.flush(), timeout=5)
            self._writer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._writer
            self._writer = None
        if self._conn is not None:
            conn, self._conn = self._conn, None
            await asyncio.get_running_loop().run_in_executor(self._executor, conn.close)
        self._executor.shutdown(wait=True)
