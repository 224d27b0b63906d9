"""The embedded `MetadataStore`: one SQLite file in WAL mode; writes on the event loop's thread,
their fsyncs and the reads on threads of their own.

Why write units run on the event loop's thread: units of work are synchronous functions (see
`api.py`), so running each one there, whole, when `atomically` is called makes them serializable
without a lock. They used to run on a writer thread, and that cost more than the work: sqlite3
gives the GIL back around every statement and takes it again after, so each statement of the
writer thread waited for the event loop to let go of the GIL (measured: 45% of that thread's CPU
in futex calls, and each commit 2 thread hops, before and after it, 0.13-0.33 ms each). With the
units here, a backlog of async events drained at 1,214/s against 1,031-1,064/s, and 64
connections had 3,129 events/s accepted against 2,566 while they ran (medians of alternated
rounds against two servers at once). A unit's statements are page-cache work, tens of
microseconds; what may take long, the fsync, does not run here (below). `BEGIN IMMEDIATE`
takes the write lock up front, so another process on the same file (a CLI, a second server by
mistake) makes us wait `busy_timeout` rather than fail half-way through a unit: that wait would
block the loop, which only a second writer process can cause.

Why `read` units have their own thread and connection: in WAL mode a reader never blocks the
writer nor waits for it. A read sees every unit committed before it began (a snapshot, so
read-only units stay serializable), and a write, the fsync of an async event's commit above all,
no longer queues behind listings, dispatcher scans and statistics.

Durability: every unit commits at `synchronous=NORMAL`, and a durable one (the default) then
fdatasyncs the WAL file on the sync thread before `atomically` returns: together that is what
FULL does in WAL mode (the commit's frames are on disk before its caller hears of it; NORMAL
already syncs the WAL before each checkpoint and the database after it). NORMAL alone survives a
crash of the process (kill -9): commits are in the WAL file, in the OS page cache. But it can
lose the last commits to a power cut or kernel crash, and Firebox answers 202 to an async invoke
once the event is durable (ANATOMY invariant 6). The fsync is on its own thread because it takes
0.15-0.4 ms here; the loop meanwhile runs other units, whose frames the next fsync covers.

Except when the caller says nothing else needs the loop meanwhile (`sync_here`: the event queue
says so for a lone write while no caller waits on an invocation). The thread then costs more
than it saves: it has to be woken, and so does the loop after it, each a wake-up of an idle
CPU, about 0.1 ms apiece on the 2-core VM. Measured, sequential Event invokes with dispatching off, 8 alternated
rounds of 200: p50 0.94 -> 0.78 ms. The store honours it only while the last fsync took at most
SYNC_HERE_MAX_S and no fsync is running on the thread: a disk that has turned slow holds the
loop once, then the syncs go back to the thread until one is quick again.

The WAL is zero-filled up to its working size at open (`_presize_wal`), as PostgreSQL does
with `wal_init_zero`: SQLite writes the WAL from the start again after each checkpoint, so once
the file has its full size a commit's fsync only flushes data blocks. While it is still growing,
every fsync must also commit the file's new size to the filesystem journal: about 0.1 to 0.2 ms
more per commit here, for the first thousand commits after every start (the WAL is deleted at a
clean close). SQLite finds the valid frames by their salts and checksums, never by the file's
size, so zeros past them are never taken for a frame.

`atomically(work, durable=False)` skips the fsync: it survives kill -9 but not a power cut.
The WAL is written in order, so the next durable commit (or a checkpoint) makes it durable too.
It is for writes that may be lost to a power cut because losing them only repeats work, never
loses it: the event queue's claims and completions (an event whose completion is lost runs
again, which at-least-once allows).

Known caveats
-------------
- A durable unit is visible to other units and to readers from its commit, up to one fsync
  before it is on disk: a power cut in that window loses it, and its caller, still waiting, never
  heard that it was done.
- Cancelling the task that awaits `atomically` does not take its unit of work back: it has
  committed by then; only waiting for its fsync is cancelled.
- A write unit holds the event loop while it runs, and every read waits for the read before it:
  long units should page with `after`/`limit`.
- SQLite's automatic checkpoint (every 1,000 WAL pages) runs at the end of a commit, so on the
  event loop's thread too: a few milliseconds (4 MB copied into the database, two fsyncs) once
  per 1,000 pages written. A passive checkpoint on another thread would not hold the loop, but
  under steady writes it may never catch up with the writer, and the WAL would then grow
  without bound.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import os
import re
import sqlite3
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from firebox.errors import StoreError
from firebox.store.api import Document, Tx

T = TypeVar("T")

SCHEMA_VERSION = 1
_SCHEMA = (
    "CREATE TABLE records (kind TEXT NOT NULL, scope TEXT NOT NULL, key TEXT NOT NULL,"
    " doc TEXT NOT NULL, PRIMARY KEY (kind, scope, key)) WITHOUT ROWID",
    "CREATE TABLE sequences (name TEXT PRIMARY KEY, value INTEGER NOT NULL)",
)
# (A named parameter, bound from a mapping: Python 3.12.0 to 3.12.3 warn on `?1` bound from a
# sequence, once per parameter, on every dispatch pass: cpython#117995, fixed in 3.12.4.)
_SCOPES = (
    "WITH RECURSIVE s(scope) AS ("
    " SELECT MIN(scope) FROM records WHERE kind = :kind"
    " UNION ALL"
    " SELECT (SELECT MIN(scope) FROM records WHERE kind = :kind AND scope > s.scope) FROM s"
    " WHERE s.scope IS NOT NULL"
    ") SELECT scope FROM s WHERE scope IS NOT NULL"
)
_FIELD = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")  # what scan_values takes as a JSON path
_BUSY_TIMEOUT_MS = 5000  # how long another process's write lock is waited for
_PAGE_SIZE = 4096
_WAL_PAGES = 1000  # SQLite's wal_autocheckpoint default: the WAL starts over past this
_WAL_BYTES = 32 + _WAL_PAGES * (24 + _PAGE_SIZE)  # header + frames (frame header + page)


SYNC_HERE_MAX_S = 0.002  # a `sync_here` fsync runs on the caller's thread only after one this quick


class _WalFile:
    """A descriptor of the WAL file, for fdatasync; used by one thread at a time (the sync thread,
    or the event loop's for a `sync_here` while the sync thread has nothing to do). SQLite keeps
    the file while a connection is open (ours are), but it is checked by inode before each
    sync anyway: a WAL that was removed and made again would otherwise never be synced."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._fd: int | None = None

    def sync(self) -> None:
        if self._fd is not None and os.fstat(self._fd).st_ino != os.stat(self._path).st_ino:
            self.close()
        if self._fd is None:
            self._fd = os.open(self._path, os.O_RDONLY | os.O_CLOEXEC)
        os.fdatasync(self._fd)

    def close(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.close(fd)


@dataclass(frozen=True)
class SqliteStatistics:
    transactions_committed: int  # `atomically` units that committed
    transactions_rolled_back: int  # `atomically` units that did not commit (they raised)
    reads: int  # `read` units run, whatever their outcome


def _encode(doc: Document) -> str:
    if not isinstance(doc, dict):
        raise TypeError(f"a document is a dict, not {type(doc).__name__}")
    # Compact, ASCII-only (a lone surrogate can never fail to encode), strict JSON (no NaN).
    return json.dumps(doc, separators=(",", ":"), allow_nan=False)


class _SqliteTx:
    """The `Tx` handed to one unit of work. Lives on the store's thread, for that unit only."""

    def __init__(self, conn: sqlite3.Connection, *, writable: bool) -> None:
        self._conn = conn
        self._writable = writable
        self._live = True
        self.failed = False  # a statement failed: commit nothing, even if the unit carried on

    def end(self) -> None:
        self._live = False

    def _run(self, sql: str, params: tuple[Any, ...] | dict[str, Any]) -> tuple[list[Any], int]:
        if not self._live:
            raise StoreError("this Tx belongs to a unit of work that has already ended")
        try:
            cursor = self._conn.execute(sql, params)
            # A SELECT steps, and can fail, while its rows are fetched, not only in execute().
            return cursor.fetchall(), cursor.rowcount
        except sqlite3.Error as exc:
            self.failed = True
            raise StoreError(f"SQLite failed: {exc}") from exc

    def _read(self, sql: str, params: tuple[Any, ...] | dict[str, Any]) -> list[Any]:
        return self._run(sql, params)[0]

    def _write(self, sql: str, params: tuple[Any, ...]) -> int:
        if not self._writable:
            raise StoreError("a read() unit of work cannot write; use atomically()")
        return self._run(sql, params)[1]

    def get(self, kind: str, scope: str, key: str) -> Document | None:
        sql = "SELECT doc FROM records WHERE kind = ? AND scope = ? AND key = ?"
        rows = self._read(sql, (kind, scope, key))
        return json.loads(rows[0][0]) if rows else None

    def put(self, kind: str, scope: str, key: str, doc: Document) -> None:
        self._write(
            "INSERT INTO records (kind, scope, key, doc) VALUES (?, ?, ?, ?)"
            " ON CONFLICT (kind, scope, key) DO UPDATE SET doc = excluded.doc",
            (kind, scope, key, _encode(doc)),
        )

    def insert(self, kind: str, scope: str, key: str, doc: Document) -> bool:
        # DO NOTHING on the key conflict only (unlike INSERT OR IGNORE, which hides every error).
        return 1 == self._write(
            "INSERT INTO records (kind, scope, key, doc) VALUES (?, ?, ?, ?)"
            " ON CONFLICT (kind, scope, key) DO NOTHING",
            (kind, scope, key, _encode(doc)),
        )

    def delete(self, kind: str, scope: str, key: str) -> bool:
        sql = "DELETE FROM records WHERE kind = ? AND scope = ? AND key = ?"
        return self._write(sql, (kind, scope, key)) > 0

    def move(self, kind: str, scope: str, key: str, new_key: str, doc: Document) -> bool:
        sql = "UPDATE records SET key = ?, doc = ? WHERE kind = ? AND scope = ? AND key = ?"
        return self._write(sql, (new_key, _encode(doc), kind, scope, key)) > 0

    def delete_scope(self, kind: str, scope: str) -> int:
        return self._write("DELETE FROM records WHERE kind = ? AND scope = ?", (kind, scope))

    def scan(
        self, kind: str, scope: str, *, after: str | None = None, limit: int | None = None
    ) -> list[tuple[str, Document]]:
        if limit is not None and limit < 0:
            raise ValueError(f"limit must be >= 0, not {limit}")
        # Two statements rather than `(? IS NULL OR key > ?)`, which would defeat the index range.
        sql = "SELECT key, doc FROM records WHERE kind = ? AND scope = ?"
        params: tuple[Any, ...] = (kind, scope)
        if after is not None:
            sql, params = sql + " AND key > ?", params + (after,)
        # TEXT compares with the BINARY collation: memcmp of UTF-8, the byte order api.py promises.
        rows = self._read(sql + " ORDER BY key LIMIT ?", params + (-1 if limit is None else limit,))
        return [(key, json.loads(doc)) for key, doc in rows]

    def scan_values(self, kind: str, scope: str, field: str) -> list[tuple[str, Any]]:
        # json_extract in SQLite parses each document without the GIL, and builds no dict:
        # about half the time of json.loads for the event queue's documents.
        if not _FIELD.fullmatch(field):
            raise ValueError(f"not a field name: {field!r}")
        sql = "SELECT key, json_extract(doc, ?) FROM records WHERE kind = ? AND scope = ? ORDER BY key"
        return [(key, value) for key, value in self._read(sql, (f"$.{field}", kind, scope))]

    def scopes(self, kind: str) -> list[str]:
        # One index seek per scope (a loose index scan), not a walk over every record of the
        # kind as SELECT DISTINCT does: the event queue asks this on every dispatch pass,
        # with thousands of events in a handful of scopes.
        return [scope for (scope,) in self._read(_SCOPES, {"kind": kind})]

    def count(self, kind: str, scope: str | None = None) -> int:
        if scope is None:
            return self._read("SELECT COUNT(*) FROM records WHERE kind = ?", (kind,))[0][0]
        sql = "SELECT COUNT(*) FROM records WHERE kind = ? AND scope = ?"
        return self._read(sql, (kind, scope))[0][0]

    def next_sequence(self, name: str) -> int:
        # The row outlives every record numbered from it, so a number is never handed out twice.
        self._write(
            "INSERT INTO sequences (name, value) VALUES (?, 1)"
            " ON CONFLICT (name) DO UPDATE SET value = value + 1",
            (name,),
        )
        return self._read("SELECT value FROM sequences WHERE name = ?", (name,))[0][0]


def _execute(conn: sqlite3.Connection, sql: str) -> None:
    try:
        conn.execute(sql)
    except sqlite3.Error as exc:
        raise StoreError(f"SQLite failed on {sql}: {exc}") from exc


def _rollback(conn: sqlite3.Connection) -> None:
    if conn.in_transaction:
        with contextlib.suppress(sqlite3.Error):  # the error that made us roll back matters more
            conn.execute("ROLLBACK")


class SqliteMetadataStore:
    """`MetadataStore` over one SQLite file: `SqliteMetadataStore(path)`, `await open()`, any
    number of `atomically` / `read`, `await close()`. Outside that window they raise StoreError."""

    def __init__(self, path: Path) -> None:
        self._path = Path(path)
        self._executor: ThreadPoolExecutor | None = None  # the sync thread: open, fsyncs, close
        self._reader: ThreadPoolExecutor | None = None  # the reader's thread
        self._conn: sqlite3.Connection | None = None  # used on the event loop's thread
        self._read_conn: sqlite3.Connection | None = None  # touched only on the reader's thread
        self._wal = _WalFile(self._path.with_name(self._path.name + "-wal"))  # one thread at a time
        self._thread_sync: Future[None] | None = None  # the last fsync sent to the sync thread
        self._last_sync_s = 0.0  # how long the last fsync took, wherever it ran
        self._closing: Future[None] | None = None
        self._closed = False
        self._committed = 0
        self._rolled_back = 0
        self._reads = 0

    async def open(self) -> None:
        """Create the file (and its parent directories) and the schema when absent."""
        if self._executor is not None or self._closed:
            raise StoreError("open() may be called once, on a new store")
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="firebox-sqlite-sync")
        self._reader = ThreadPoolExecutor(max_workers=1, thread_name_prefix="firebox-sqlite-read")
        try:
            await self._submit(self._executor, self._open_sync)
            # After the writer: the schema exists (or the file was refused) by then.
            await self._submit(self._reader, self._open_reader_sync)
        except BaseException:
            # A store that failed to open is finished: release its threads, refuse further use.
            self._closed = True
            self._executor.submit(self._close_sync)
            self._executor.shutdown(wait=False)
            self._executor = None
            self._reader.shutdown(wait=False)
            self._reader = None
            raise

    async def atomically(self, work: Callable[[Tx], T], *, durable: bool = True, sync_here: bool = False) -> T:
        """Run `work` now, on this thread, and commit it; when `durable`, return once the WAL
        holding it is fsync'd: on the sync thread, or here when `sync_here` and the disk has
        been quick (see the module doc)."""
        if self._closed:
            raise StoreError("the metadata store is closed")
        if self._conn is None:
            raise StoreError("the metadata store is not open: await open() first")
        result = self._run_unit(self._conn, work, writable=True)
        if durable:
            if sync_here and self._may_sync_here():
                self._sync_wal()
            else:
                # Its own future, not asyncio's wrapper: that one is done as soon as its awaiter
                # is cancelled, while the fsync may still be running.
                self._thread_sync = self._start(self._executor, self._sync_wal)
                await asyncio.wrap_future(self._thread_sync)
        return result

    def _may_sync_here(self) -> bool:
        # The sync thread idle: the two never use the WAL's descriptor at once.
        thread_idle = self._thread_sync is None or self._thread_sync.done()
        return thread_idle and self._last_sync_s <= SYNC_HERE_MAX_S

    async def read(self, work: Callable[[Tx], T]) -> T:
        return await self._submit(self._reader, self._run_read, work)

    async def close(self) -> None:
        """Let already submitted units finish, then close the database. Idempotent."""
        self._closed = True
        if self._closing is None:
            if self._executor is None or self._reader is None:
                return
            # Each close job is the last one queued on its thread, which exits once it has run.
            reader_closed = self._reader.submit(self._close_reader_sync)
            self._reader.shutdown(wait=False)
            self._closing = self._executor.submit(self._close_sync, reader_closed)
            self._executor.shutdown(wait=False)
        await asyncio.wrap_future(self._closing)

    def statistics(self) -> SqliteStatistics:
        return SqliteStatistics(self._committed, self._rolled_back, self._reads)

    async def _submit(self, thread: ThreadPoolExecutor | None, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.wrap_future(self._start(thread, fn, *args))

    def _start(self, thread: ThreadPoolExecutor | None, fn: Callable[..., T], *args: Any) -> Future[T]:
        # No await between this check and the submission, so nothing is queued behind close().
        if self._closed:
            raise StoreError("the metadata store is closed")
        if thread is None:
            raise StoreError("the metadata store is not open: await open() first")
        return thread.submit(fn, *args)

    # Below: what runs on the sync thread, unless named *_reader_* / read (the reader's thread)
    # or *_unit (the caller's).

    def _open_sync(self) -> None:
        try:
            self._path.parent.mkdir(parents=True, exist_ok=True)
            # isolation_level=None: the module never opens transactions behind our back. Made
            # here, used on the event loop's thread (one at a time), closed here.
            conn = sqlite3.connect(self._path, isolation_level=None, check_same_thread=False)
        except (OSError, sqlite3.Error) as exc:
            raise StoreError(f"cannot open the metadata store {self._path}: {exc}") from exc
        try:
            _execute(conn, f"PRAGMA busy_timeout = {_BUSY_TIMEOUT_MS}")
            mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise StoreError(f"{self._path}: SQLite refused WAL mode (got {mode!r})")
            _execute(conn, "PRAGMA synchronous = NORMAL")  # and a durable unit's own fsync
            _execute(conn, "PRAGMA foreign_keys = ON")
            # Statement journals and sorts in memory, not in temporary files (see logs/schema.py).
            _execute(conn, "PRAGMA temp_store = MEMORY")
            self._migrate(conn)
            self._presize_wal(conn)
        except BaseException as exc:
            conn.close()
            if isinstance(exc, sqlite3.Error):
                raise StoreError(f"cannot open the metadata store {self._path}: {exc}") from exc
            raise
        self._conn = conn

    def _presize_wal(self, conn: sqlite3.Connection) -> None:
        """Zero-fill the WAL up to its working size, once, with one fsync (see the module doc)."""
        if conn.execute("PRAGMA page_size").fetchone()[0] != _PAGE_SIZE:
            return  # a file made elsewhere with other pages: leave its WAL as SQLite sizes it
        wal = self._path.with_name(self._path.name + "-wal")
        try:
            # SQLite made it when it entered WAL mode. It holds no POSIX lock on this file, so
            # closing our descriptor cannot drop one of its locks.
            with open(wal, "r+b") as handle:
                size = handle.seek(0, os.SEEK_END)
                if size >= _WAL_BYTES:
                    return
                chunk = bytes(256 * 1024)
                while size < _WAL_BYTES:
                    size += handle.write(chunk[: _WAL_BYTES - size])
                handle.flush()
                os.fsync(handle.fileno())
        except FileNotFoundError:
            return
        except OSError as exc:
            raise StoreError(f"cannot prepare the write-ahead log {wal}: {exc}") from exc

    def _migrate(self, conn: sqlite3.Connection) -> None:
        _execute(conn, "BEGIN IMMEDIATE")
        try:
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            if version == 0:
                for statement in _SCHEMA:
                    conn.execute(statement)
                conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            elif version != SCHEMA_VERSION:
                raise StoreError(f"{self._path} has schema version {version}; "
                                 f"this Firebox reads version {SCHEMA_VERSION}")
            conn.execute("COMMIT")
        except BaseException:
            _rollback(conn)
            raise

    def _open_reader_sync(self) -> None:
        try:
            conn = sqlite3.connect(self._path, isolation_level=None)
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open the metadata store {self._path}: {exc}") from exc
        try:
            _execute(conn, f"PRAGMA busy_timeout = {_BUSY_TIMEOUT_MS}")
            _execute(conn, "PRAGMA query_only = ON")
        except BaseException:
            conn.close()
            raise
        self._read_conn = conn

    def _sync_wal(self) -> None:
        started = time.perf_counter()
        try:
            self._wal.sync()
            self._last_sync_s = time.perf_counter() - started
        except OSError as exc:
            self._last_sync_s = float("inf")  # a failing disk: not on the loop's thread again soon
            raise StoreError(f"the metadata store could not make a write durable (fsync of its WAL): {exc}") from exc

    def _run_read(self, work: Callable[[Tx], T]) -> T:  # on the reader's thread
        conn = self._read_conn
        if conn is None:
            raise StoreError("the metadata store is not open")
        self._reads += 1
        return self._run_unit(conn, work, writable=False)

    def _run_unit(self, conn: sqlite3.Connection, work: Callable[[Tx], T], *, writable: bool) -> T:
        tx = _SqliteTx(conn, writable=writable)
        try:
            # A read's deferred BEGIN still pins one snapshot of the WAL for the whole unit.
            _execute(conn, "BEGIN IMMEDIATE" if writable else "BEGIN")
            result = work(tx)
            if inspect.isawaitable(result):
                if inspect.iscoroutine(result):
                    result.close()  # never to be awaited; spare the RuntimeWarning
                raise TypeError("a unit of work must be a plain function, not an async one")
            if tx.failed:
                raise StoreError("a statement of this unit of work failed; nothing was written")
            tx.end()
            # A read has nothing to commit: ending it is all that is left.
            _execute(conn, "COMMIT" if writable else "ROLLBACK")
        except BaseException:
            _rollback(conn)
            self._rolled_back += int(writable)
            raise
        finally:
            tx.end()
        self._committed += int(writable)
        return result

    def _close_reader_sync(self) -> None:
        conn, self._read_conn = self._read_conn, None
        if conn is not None:
            conn.close()

    def _close_sync(self, reader_closed: Future[None] | None = None) -> None:
        # The writer closes last: as the last connection it checkpoints and removes the WAL.
        reader_error = reader_closed.exception() if reader_closed is not None else None
        conn, self._conn = self._conn, None
        self._wal.close()
        if conn is not None:
            try:
                conn.close()
            except sqlite3.Error as exc:
                raise StoreError(f"closing the metadata store failed: {exc}") from exc
        if isinstance(reader_error, sqlite3.Error):
            raise StoreError(f"closing the metadata store failed: {reader_error}") from reader_error
