"""The log database: tables, indexes, and the one migration from the first layout.

    log_groups  (id, name UNIQUE, created, retention_days, stored_bytes)
    log_streams (id, group_id, name, created, first_event, last_event, last_ingestion,
                 stored_bytes; UNIQUE (group_id, name))
    log_events  (id, group_id, stream_id, ts, ingested, message, event_count, layout)
    log_meta    (key, value): next_event_id
    log_deletions (group_id)

Indexes, and the query each one serves:
    log_events (group_id, ts)      FilterLogEvents: a group in time order (the rowid, `id`, is the
                                   index's implicit last column, so (ts, id) order is free),
                                   and the retention sweep (`ts < cutoff`)
    log_events (stream_id, ts)     GetLogEvents: one stream in time order, either way
    log_streams (group_id, last_event)  DescribeLogStreams by LastEventTime
A row of log_events holds the events one stream produced in one writer batch (or part of
them, see ROW_EVENTS): the row's `id` is its first event's and the next `event_count - 1` ids
are the others', in the order they were produced; `ts` is the smallest of their timestamps;
`message` is their messages one after the other; `layout` (NULL for a row of one event) is
their lengths in characters, then `;`, then each one's timestamp less `ts`, comma-separated:
"22,96;0,1" is two events of 22 and 96 characters, at ts and ts + 1. One row per stream and
batch, not one per event: each row is an entry in both indexes, and the stream index takes a
busy server's 16 streams' rows in 16 places of it, so a batch of warm invocations costs the
writer less than half as much (ARCHITECTURE.md, Logs). The events of different rows can interleave in (ts, id)
order, within ROW_SPAN_MS: reads.py merges them.

Event ids are handed out by the writer from `log_meta.next_event_id`, which moves forward in the
same transaction as the rows: an id is never reused, even after the newest rows are deleted, so
an event id seen by a tail client never names another event later (AUTOINCREMENT would say the
same at twice the cost per row). `log_deletions` lists deleted groups whose events are still
being removed, chunk by chunk.

`PRAGMA user_version` says the layout: 0 is a fresh file or the first layout (one `events`
table keyed by group and stream names), which `migrate` moves into the tables above; 1 is these
tables with one event per row, which gains `event_count` and `layout` (its rows are rows of one
event as they are: no row is rewritten). There is no way back: code of version 1 would read a
row of several events as one.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

VERSION = 2
# A row holds at most ROW_EVENTS events and ROW_CHARS characters (one longer event has a row of
# its own), with timestamps at most ROW_SPAN_MS apart: a read looks back that far for rows that
# may hold events after a time (`ts >= start - ROW_SPAN_MS`) or an id (`id > after - ROW_EVENTS`),
# and the rows it expands stay the size of a page of events. A batch under load spans the
# writer's linger (10 ms), so the span bounds only the batches of an idle server (500 ms).
ROW_EVENTS = 256
ROW_CHARS = 65_536
ROW_SPAN_MS = 100

_TABLES = """
CREATE TABLE IF NOT EXISTS log_groups (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    name TEXT NOT NULL UNIQUE,
    created INTEGER NOT NULL,
    retention_days INTEGER,
    stored_bytes INTEGER NOT NULL DEFAULT 0);
CREATE TABLE IF NOT EXISTS log_streams (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    group_id INTEGER NOT NULL,
    name TEXT NOT NULL,
    created INTEGER NOT NULL,
    first_event INTEGER,
    last_event INTEGER,
    last_ingestion INTEGER,
    stored_bytes INTEGER NOT NULL DEFAULT 0,
    UNIQUE (group_id, name));
CREATE INDEX IF NOT EXISTS streams_by_last_event ON log_streams (group_id, last_event);
CREATE TABLE IF NOT EXISTS log_events (
    id INTEGER PRIMARY KEY,
    group_id INTEGER NOT NULL,
    stream_id INTEGER NOT NULL,
    ts INTEGER NOT NULL,
    ingested INTEGER NOT NULL,
    message TEXT NOT NULL,
    event_count INTEGER NOT NULL DEFAULT 1,
    layout TEXT);
CREATE INDEX IF NOT EXISTS events_by_group_time ON log_events (group_id, ts);
CREATE INDEX IF NOT EXISTS events_by_stream_time ON log_events (stream_id, ts);
CREATE TABLE IF NOT EXISTS log_meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS log_deletions (group_id INTEGER PRIMARY KEY);
"""


def connect(path: Path, *, readonly: bool = False) -> sqlite3.Connection:
    """A connection in autocommit mode (transactions are explicit `BEGIN`s)."""
    conn = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
    conn.execute("PRAGMA busy_timeout=10000")
    # Temporary data in memory, not in files. Every statement of a batch's transaction that
    # inserts many rows keeps a statement journal (the pages it changes, as they were, to undo
    # that statement alone), and SQLite keeps it in a temporary file by default: measured, a
    # batch of 500 warm invocations to 16 streams wrote 7.2 KB per invocation to files, 1.0 KB
    # with this (the WAL alone), and its CPU per invocation went from 12.0 to 7.6 us.
    conn.execute("PRAGMA temp_store=MEMORY")
    if readonly:
        conn.execute("PRAGMA query_only=1")
    return conn


def open_database(path: Path) -> sqlite3.Connection:
    """The writer's connection: the file created or migrated to VERSION."""
    path.parent.mkdir(parents=True, exist_ok=True)
    conn = connect(path)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")  # logs may lose the last batch on power loss
    conn.execute("PRAGMA wal_autocheckpoint=10000")  # checkpoint every ~40 MB, not every 4 MB
    migrate(conn)
    return conn


def migrate(conn: sqlite3.Connection) -> None:
    version = conn.execute("PRAGMA user_version").fetchone()[0]
    if version == VERSION:
        return
    conn.execute("BEGIN IMMEDIATE")
    try:
        if version == 1:
            conn.execute("ALTER TABLE log_events ADD COLUMN event_count INTEGER NOT NULL DEFAULT 1")
            conn.execute("ALTER TABLE log_events ADD COLUMN layout TEXT")
        for statement in _TABLES.split(";"):
            if statement.strip():
                conn.execute(statement)
        if _has_table(conn, "events"):
            _from_first_layout(conn)
        conn.execute("INSERT OR IGNORE INTO log_meta (key, value) "
                     "SELECT 'next_event_id', coalesce(max(id), 0) + 1 FROM log_events")
        conn.execute(f"PRAGMA user_version={VERSION}")
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise


def _has_table(conn: sqlite3.Connection, name: str) -> bool:
    return conn.execute("SELECT 1 FROM sqlite_master WHERE type='table' AND name=?", (name,)).fetchone() is not None


def _from_first_layout(conn: sqlite3.Connection) -> None:
    """events(id, log_group, stream, ts, message) -> the three tables; ingestion = timestamp."""
    conn.execute(
        """INSERT OR IGNORE INTO log_groups (name, created, stored_bytes)
           SELECT log_group, min(ts), sum(length(CAST(message AS BLOB))) FROM events GROUP BY log_group"""
    )
    conn.execute(
        """INSERT OR IGNORE INTO log_streams
               (group_id, name, created, first_event, last_event, last_ingestion, stored_bytes)
           SELECT g.id, e.stream, min(e.ts), min(e.ts), max(e.ts), max(e.ts),
                  sum(length(CAST(e.message AS BLOB)))
           FROM events e JOIN log_groups g ON g.name = e.log_group GROUP BY g.id, e.stream"""
    )
    conn.execute(
        """INSERT INTO log_events (group_id, stream_id, ts, ingested, message)
           SELECT s.group_id, s.id, e.ts, e.ts, e.message
           FROM events e JOIN log_groups g ON g.name = e.log_group
                JOIN log_streams s ON s.group_id = g.id AND s.name = e.stream
           ORDER BY e.id"""
    )
    conn.execute("DROP TABLE events")
