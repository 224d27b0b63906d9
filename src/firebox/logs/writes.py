"""Everything that changes the log database, run on the store's single writer thread.

Batches: one transaction inserts the events of a batch, as a row per stream (schema.py), and
updates the counters of their streams and groups (first/last event, last ingestion, stored
bytes), creating a group and a stream the first time a record names them. Ids of groups and
streams are cached (the cache is forgotten on any failure and trimmed when large).

Long deletions never hold the write lock for long: a deleted group's events and expired events
are removed in chunks of `CHUNK` rows, one transaction each, so batches of new records are
written in between. A group deletion is recorded in `log_deletions` in the same transaction
that removes the group, and finished by the sweep if the server stopped half way.

Retention, worked example: a group with RetentionInDays=1 swept at 2024-01-03T00:00Z has the
cutoff 2024-01-02T00:00Z; events with timestamps before it are deleted (a row at once, when its
youngest event is: its oldest may stay up to ROW_SPAN_MS longer), their bytes subtracted
from their stream and group, a stream's firstEventTimestamp moves to its oldest remaining event,
and a stream with no event left and a last event before the cutoff is deleted.
"""

from __future__ import annotations

import sqlite3
from collections import defaultdict
from collections.abc import Callable, Sequence
from typing import NamedTuple

from firebox.logs.api import RETENTION_DAYS, InvalidLogParameter, LogGroupExists, LogGroupNotFound
from firebox.logs.schema import ROW_CHARS, ROW_EVENTS, ROW_SPAN_MS

CHUNK = 20_000
DAY_MS = 86_400_000
_CACHE_LIMIT = 50_000


class Segment(NamedTuple):
    """Records of one stream that share a timestamp (what one read of a pipe gave)."""

    group: str
    stream: str
    ts: int
    messages: Sequence[str]
    size: int  # characters: the buffer's measure; stored bytes are counted in UTF-8


# A Segment's fields in a plain tuple, which `Writer.insert` takes as well: what the store's
# buffer holds, as the event loop makes two per warm invocation and a NamedTuple costs ten times
# a tuple to make (its __new__ is Python): 6,600 instructions per invocation.
RawSegment = tuple[str, str, int, Sequence[str], int]


class _Row:
    """A row being made: the events of one stream in a batch (schema.py), in the order they
    were produced; `offsets` are their timestamps less `base`, the first one's."""

    __slots__ = ("group", "group_id", "stream_id", "base", "low", "high", "messages", "offsets", "chars")

    def __init__(self, group: str, group_id: int, stream_id: int, ts: int, messages: list[str], chars: int) -> None:
        self.group, self.group_id, self.stream_id = group, group_id, stream_id
        self.base = self.low = self.high = ts
        self.messages = messages
        self.offsets = [0] * len(messages)
        self.chars = chars


def _parts(messages: Sequence[str]) -> list[list[str]]:
    """`messages` in runs of at most ROW_EVENTS messages and ROW_CHARS characters (a longer
    message alone): the rows of a segment too large for one."""
    parts: list[list[str]] = [[]]
    chars = 0
    for message in messages:
        part = parts[-1]
        if part and (len(part) == ROW_EVENTS or chars + len(message) > ROW_CHARS):
            part = []
            parts.append(part)
            chars = 0
        part.append(message)
        chars += len(message)
    return parts


def utf8_size(messages: Sequence[str], chars: int) -> int:
    if all(map(str.isascii, messages)):
        return chars
    return sum(len(m.encode("utf-8", "surrogatepass")) for m in messages)


# Rows per statement: a batch's rows go in as statements of 64 rows each, then at most one each
# of 32, 16 and 8, then one of the 0-7 left (eleven texts per statement, all in the connection's
# cache). A warm invocation makes one or two rows: the batches of a few invocations a lightly
# loaded server writes take one INSERT, not two (a statement costs about 10,000 instructions).
_SIZES = (64, 32, 16, 8, 7, 6, 5, 4, 3, 2, 1)


class _Chunked:
    """One SQL statement that takes many rows at once, `head` + n x `row` + `tail`, run a chunk
    of rows at a time instead of once per row (executemany): sqlite3 gives the GIL back around
    every statement it steps and takes it again after, and on the writer thread, under a busy
    event loop, each retake waits for the loop to hand the GIL over, and the loop waits for the
    thread to be scheduled: one such wait was seen to hold every request in flight for 22 ms
    (the thread queued behind sandboxes on the other CPU, `perf sched`). A batch of 17 warm
    invocations to 16 streams was 71 statements, a backlog of 500 records 521; now 8 and 16."""

    def __init__(self, head: str, row: str, tail: str = "") -> None:
        self._texts = {n: head + ", ".join([row] * n) + tail for n in _SIZES}

    def run(self, conn: sqlite3.Connection, params: list[object], width: int, *extra: object) -> None:
        """Run for every row of `params` (the rows' parameters one after the other, `width` to a
        row); `extra`, parameters after each chunk's rows."""
        rows, done = len(params) // width, 0
        for size in _SIZES:
            while rows - done >= size:
                conn.execute(self._texts[size], [*params[done * width:(done + size) * width], *extra])
                done += size


# Python 3.12 and later check every parameter bound from a sequence for a name (to warn of named
# placeholders), and SQLite finds a numbered parameter's name by a walk over the statement's list
# of them: a quadratic cost. So the statements have plain `?` placeholders only.
_INSERT_ROWS = _Chunked(
    "INSERT INTO log_events (id, group_id, stream_id, ts, ingested, message, event_count, layout) VALUES ",
    "(?, ?, ?, ?, ?, ?, ?, ?)")
_ROW_WIDTH = 8


# UPDATE ... FROM needs SQLite 3.33 (2020): Debian 12 has 3.40, Ubuntu 22.04 3.37; an older
# library updates the streams one statement each (_UPDATE_STREAM).
UPDATE_FROM = sqlite3.sqlite_version_info >= (3, 33, 0)
_UPDATE_STREAM = """UPDATE log_streams SET first_event = min(coalesce(first_event, ?), ?),
                        last_event = max(coalesce(last_event, ?), ?), last_ingestion = ?,
                        stored_bytes = stored_bytes + ? WHERE id = ?"""
_UPDATE_STREAMS = _Chunked(
    "WITH batch (id, first, last, size) AS (VALUES ", "(?, ?, ?, ?)",
    """) UPDATE log_streams SET first_event = min(coalesce(first_event, batch.first), batch.first),
           last_event = max(coalesce(last_event, batch.last), batch.last), last_ingestion = ?,
           stored_bytes = stored_bytes + batch.size FROM batch WHERE log_streams.id = batch.id""")


class Writer:
    def __init__(self, conn: sqlite3.Connection, now_ms: Callable[[], int]) -> None:
        self.conn = conn
        self._now_ms = now_ms
        self._groups: dict[str, int] = {}
        self._streams: dict[tuple[int, str], int] = {}
        self._next_id = conn.execute("SELECT value FROM log_meta WHERE key = 'next_event_id'").fetchone()[0]

    # -- batches -------------------------------------------------------------------------------

    def insert(self, batch: Sequence[RawSegment]) -> int:
        """Write the batch in one transaction; the number of records written."""
        now = self._now_ms()
        conn = self.conn
        conn.execute("BEGIN IMMEDIATE")
        try:
            first_id = next_id = self._next_id
            # The rows' parameters, flat, and each stream's counters: stream id -> [first ts,
            # last ts, bytes, group id], the bytes counted as characters first, then again in
            # UTF-8 in the rare batch that is not all ASCII (one test per batch).
            params: list[object] = []
            stats: dict[int, list[int]] = {}
            for row in self._rows(batch, now):
                messages, low = row.messages, row.low
                count = len(messages)
                if count == 1:
                    params += (next_id, row.group_id, row.stream_id, low, now, messages[0], 1, None)
                else:
                    offsets = row.offsets
                    if low < row.base:  # a clock that went back: offsets from the row's smallest ts
                        offsets = [offset + row.base - low for offset in offsets]
                    layout = ",".join(map(str, map(len, messages))) + ";" + ",".join(map(str, offsets))
                    params += (next_id, row.group_id, row.stream_id, low, now, "".join(messages), count, layout)
                next_id += count
                current = stats.get(row.stream_id)
                if current is None:
                    stats[row.stream_id] = [low, row.high, row.chars, row.group_id]
                    continue
                if low < current[0]:
                    current[0] = low
                if row.high > current[1]:
                    current[1] = row.high
                current[2] += row.chars
            if not all(map(str.isascii, params[5::_ROW_WIDTH])):  # the messages
                self._count_utf8(batch, stats, now)
            _INSERT_ROWS.run(conn, params, _ROW_WIDTH)
            if UPDATE_FROM:
                _UPDATE_STREAMS.run(conn, [value for sid, (first, last, size, _) in stats.items()
                                           for value in (sid, first, last, size)], 4, now)
            else:
                conn.executemany(_UPDATE_STREAM, [(first, first, last, last, now, size, sid)
                                                  for sid, (first, last, size, _) in stats.items()])
            group_bytes: dict[int, int] = defaultdict(int)
            for first, last, size, gid in stats.values():
                group_bytes[gid] += size
            conn.executemany("UPDATE log_groups SET stored_bytes = stored_bytes + ? WHERE id = ?",
                             [(size, gid) for gid, size in group_bytes.items()])
            conn.execute("UPDATE log_meta SET value = ? WHERE key = 'next_event_id'", (next_id,))
            conn.execute("COMMIT")
        except BaseException:
            self._rollback()
            raise
        self._next_id = next_id
        return next_id - first_id

    def _rows(self, batch: Sequence[RawSegment], now: int) -> list[_Row]:
        """The batch's rows in the order they were opened: a stream's segments join its open
        row while it has room (schema.ROW_EVENTS, ROW_CHARS, ROW_SPAN_MS), so each stream's
        events keep the order they were produced in, and so do their ids. (Open rows are found
        by stream name, then checked for their group: no ids to look up for a segment that
        joins one, the usual case.)"""
        rows: list[_Row] = []
        open_rows: dict[str, _Row] = {}  # stream name -> its row being filled
        groups, streams = self._groups, self._streams
        for group, stream, ts, messages, size in batch:
            row = open_rows.get(stream)
            if (row is not None and row.high - ROW_SPAN_MS <= ts <= row.low + ROW_SPAN_MS and row.group == group
                    and len(row.messages) + len(messages) <= ROW_EVENTS and row.chars + size <= ROW_CHARS):
                row.messages += messages
                row.offsets += [ts - row.base] * len(messages)
                row.chars += size
                if ts < row.low:
                    row.low = ts
                elif ts > row.high:
                    row.high = ts
                continue
            if not messages:
                continue
            # The ids from the caches in line; `_ids` when one is missing (1,600 instructions per invocation)
            group_id = groups.get(group)
            stream_id = streams.get((group_id, stream))
            if stream_id is None:
                group_id, stream_id = self._ids(group, stream, now)
            if len(messages) <= ROW_EVENTS and size <= ROW_CHARS:
                row = open_rows[stream] = _Row(group, group_id, stream_id, ts, list(messages), size)
                rows.append(row)
                continue
            for part in _parts(messages):
                row = open_rows[stream] = _Row(group, group_id, stream_id, ts, part, sum(map(len, part)))
                rows.append(row)
        return rows

    def _count_utf8(self, batch: Sequence[RawSegment], stats: dict[int, list[int]], now: int) -> None:
        """Count the bytes of `stats` again, in UTF-8 (a segment's size counts characters)."""
        for current in stats.values():
            current[2] = 0
        for group, stream, _, messages, size in batch:
            stats[self._ids(group, stream, now)[1]][2] += utf8_size(messages, size)

    def _ids(self, group: str, stream: str, now: int) -> tuple[int, int]:
        group_id = self._groups.get(group)
        if group_id is None:
            self.conn.execute("INSERT INTO log_groups (name, created) VALUES (?, ?) ON CONFLICT (name) DO NOTHING",
                              (group, now))
            group_id = self.conn.execute("SELECT id FROM log_groups WHERE name = ?", (group,)).fetchone()[0]
            if len(self._groups) > _CACHE_LIMIT:
                self._groups.clear()
            self._groups[group] = group_id
        stream_id = self._streams.get((group_id, stream))
        if stream_id is None:
            self.conn.execute(
                "INSERT INTO log_streams (group_id, name, created) VALUES (?, ?, ?) ON CONFLICT DO NOTHING",
                (group_id, stream, now),
            )
            stream_id = self.conn.execute(
                "SELECT id FROM log_streams WHERE group_id = ? AND name = ?", (group_id, stream)
            ).fetchone()[0]
            if len(self._streams) > _CACHE_LIMIT:
                self._streams.clear()
            self._streams[(group_id, stream)] = stream_id
        return group_id, stream_id

    def _rollback(self) -> None:
        self._groups.clear()
        self._streams.clear()
        if self.conn.in_transaction:
            self.conn.execute("ROLLBACK")

    # -- groups --------------------------------------------------------------------------------

    def create_group(self, name: str) -> None:
        cursor = self.conn.execute("INSERT INTO log_groups (name, created) VALUES (?, ?) ON CONFLICT (name) DO NOTHING",
                                   (name, self._now_ms()))
        if cursor.rowcount == 0:
            raise LogGroupExists()

    def delete_group(self, name: str) -> None:
        """Removes the group and its streams at once; its events go chunk by chunk in
        `delete_orphans`, which the caller runs until it returns False."""
        conn = self.conn
        conn.execute("BEGIN IMMEDIATE")
        try:
            row = conn.execute("SELECT id FROM log_groups WHERE name = ?", (name,)).fetchone()
            if row is None:
                raise LogGroupNotFound()
            conn.execute("INSERT OR IGNORE INTO log_deletions (group_id) VALUES (?)", row)
            conn.execute("DELETE FROM log_streams WHERE group_id = ?", row)
            conn.execute("DELETE FROM log_groups WHERE id = ?", row)
            conn.execute("COMMIT")
        except BaseException:
            self._rollback()
            raise
        self._groups.pop(name, None)
        self._streams = {key: sid for key, sid in self._streams.items() if key[0] != row[0]}

    def delete_orphans(self) -> bool:
        """Delete one chunk of the events of deleted groups; True while more remain."""
        row = self.conn.execute("SELECT group_id FROM log_deletions LIMIT 1").fetchone()
        if row is None:
            return False
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            cursor = self.conn.execute(
                "DELETE FROM log_events WHERE id IN (SELECT id FROM log_events WHERE group_id = ? LIMIT ?)",
                (row[0], CHUNK),
            )
            if cursor.rowcount < CHUNK:
                self.conn.execute("DELETE FROM log_deletions WHERE group_id = ?", row)
            self.conn.execute("COMMIT")
        except BaseException:
            self._rollback()
            raise
        return True

    def put_retention(self, name: str, days: int | None) -> None:
        if days is not None and days not in RETENTION_DAYS:
            values = ", ".join(map(str, RETENTION_DAYS))
            raise InvalidLogParameter(
                f"1 validation error detected: Value '{days}' at 'retentionInDays' failed to satisfy constraint: "
                f"Member must satisfy enum value set: [{values}]"
            )
        cursor = self.conn.execute("UPDATE log_groups SET retention_days = ? WHERE name = ?", (days, name))
        if cursor.rowcount == 0:
            raise LogGroupNotFound()

    # -- retention -----------------------------------------------------------------------------

    def expire(self) -> bool:
        """Delete one chunk of events older than their group's retention; True while more remain."""
        now = self._now_ms()
        groups = self.conn.execute(
            "SELECT id, retention_days FROM log_groups WHERE retention_days IS NOT NULL"
        ).fetchall()
        for group_id, days in groups:
            cutoff = now - days * DAY_MS
            # Rows whose every event is older (a row's span ROW_SPAN_MS at most): a younger
            # event is never deleted, an older one up to that much later.
            rows = self.conn.execute(
                """SELECT id, stream_id, ts, length(CAST(message AS BLOB)) FROM log_events
                   WHERE group_id = ? AND ts < ? ORDER BY ts, id LIMIT ?""",
                (group_id, cutoff - ROW_SPAN_MS, CHUNK),
            ).fetchall()
            if rows:
                self._expire_rows(group_id, cutoff, rows)
                if len(rows) == CHUNK:
                    return True
            elif self._expired_streams(group_id, cutoff):
                self.conn.execute("BEGIN IMMEDIATE")
                self._drop_expired_streams(group_id, cutoff)
                self.conn.execute("COMMIT")
        return False

    def _expire_rows(self, group_id: int, cutoff: int, rows: list[tuple[int, int, int, int]]) -> None:
        last_id, _, last_ts, _ = rows[-1]
        freed: dict[int, int] = defaultdict(int)
        for _, stream_id, _, size in rows:
            freed[stream_id] += size
        conn = self.conn
        conn.execute("BEGIN IMMEDIATE")
        try:
            conn.execute(
                "DELETE FROM log_events WHERE group_id = ? AND ts <= ? AND (ts < ? OR id <= ?)",
                (group_id, last_ts, last_ts, last_id),
            )
            for stream_id, size in freed.items():
                conn.execute(
                    """UPDATE log_streams SET stored_bytes = max(0, stored_bytes - ?),
                           first_event = (SELECT min(ts) FROM log_events WHERE stream_id = ?) WHERE id = ?""",
                    (size, stream_id, stream_id),
                )
            conn.execute("UPDATE log_groups SET stored_bytes = max(0, stored_bytes - ?) WHERE id = ?",
                         (sum(freed.values()), group_id))
            self._drop_expired_streams(group_id, cutoff)
            conn.execute("COMMIT")
        except BaseException:
            self._rollback()
            raise

    def _expired_streams(self, group_id: int, cutoff: int) -> list[tuple[int, str]]:
        """Streams left without events whose last event is older than the cutoff."""
        return self.conn.execute(
            "SELECT id, name FROM log_streams WHERE group_id = ? AND first_event IS NULL AND last_event < ?",
            (group_id, cutoff),
        ).fetchall()

    def _drop_expired_streams(self, group_id: int, cutoff: int) -> None:
        """(Inside the caller's transaction.)"""
        gone = self._expired_streams(group_id, cutoff)
        self.conn.executemany("DELETE FROM log_streams WHERE id = ?", [(sid,) for sid, _ in gone])
        for _, name in gone:
            self._streams.pop((group_id, name), None)
