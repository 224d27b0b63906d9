"""The read side of the log database, run on the store's reader thread (its own connection: WAL
lets reads run while a batch is being written).

Positions and tokens
--------------------
An event's position is `ts * 10**12 + id`: it orders events as (timestamp, id) do, in one
integer. GetLogEvents' tokens carry a position (`f/<25 digits>`, `b/<25 digits>`), as AWS's carry
theirs; the other tokens are opaque (base64 of a small JSON list) keyset bookmarks: the last name
(and last event time) listed, or the position a filter search stopped at.

GetLogEvents, worked example (events at positions 10, 20, 30; limit 2):
    no token, startFromHead=false -> [20, 30], forward f/30, backward b/20
    b/20                          -> [10],     forward f/10, backward b/10
    b/10                          -> [],       forward f/9,  backward b/10 (unchanged: the start)
    f/30                          -> [],       forward f/30 (unchanged: the end), backward b/31

FilterLogEvents searches for about `SEARCH_BUDGET_S` per call at most (in windows of at most
`WINDOW_ROWS` events): when that runs out it answers with what it found, possibly nothing, and
a `nextToken` to continue from, as CloudWatch does.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import sqlite3
import time
from collections.abc import Sequence
from typing import Any

from firebox.logs.api import (
    DescribeGroups,
    DescribeStreams,
    EventsPage,
    FilteredPage,
    FilterEvents,
    GetEvents,
    GroupsPage,
    InvalidLogParameter,
    LogEvent,
    LogGroup,
    LogGroupNotFound,
    LogStream,
    LogStreamNotFound,
    StreamsPage,
)
from firebox.logs.patterns import compile_pattern

SCALE = 10**12
# A page of events holds at most this much (AWS: 1 MB, counting 26 bytes per event).
MAX_PAGE_BYTES = 1_048_576
EVENT_OVERHEAD = 26
SEARCH_BUDGET_S = 2.0
# Search windows grow from FIRST to WINDOW_ROWS events (x4 each): frequent matches fill a page
# in the first small window, rare ones are searched in large strides.
FIRST_WINDOW_ROWS = 10_000
WINDOW_ROWS = 160_000
_STREAM_TOKEN = re.compile(r"([fb])/(\d{1,40})(?:/s)?")


def _bad_token() -> InvalidLogParameter:
    return InvalidLogParameter("The specified nextToken is invalid.")


def position(ts: int, event_id: int) -> int:
    return ts * SCALE + event_id


def encode(*values: Any) -> str:
    return base64.urlsafe_b64encode(json.dumps(list(values), separators=(",", ":")).encode()).decode()


def decode(token: str, arity: int) -> list[Any]:
    try:
        values = json.loads(base64.urlsafe_b64decode(token.encode()))
    except (ValueError, binascii.Error) as exc:
        raise _bad_token() from exc
    if not isinstance(values, list) or len(values) != arity:
        raise _bad_token()
    return values


def _group_id(conn: sqlite3.Connection, name: str) -> int:
    row = conn.execute("SELECT id FROM log_groups WHERE name = ?", (name,)).fetchone()
    if row is None:
        raise LogGroupNotFound()
    return int(row[0])


def _prefix_clause(column: str, prefix: str) -> tuple[str, list[Any]]:
    return f" AND substr({column}, 1, ?) = ?", [len(prefix), prefix]


# -- groups and streams --------------------------------------------------------------------------


def describe_groups(conn: sqlite3.Connection, command: DescribeGroups) -> GroupsPage:
    sql = "SELECT name, created, retention_days, stored_bytes FROM log_groups WHERE 1"
    args: list[Any] = []
    if command.prefix:
        clause, values = _prefix_clause("name", command.prefix)
        sql += clause
        args += values
    if command.pattern:
        sql += " AND instr(lower(name), lower(?)) > 0"
        args.append(command.pattern)
    if command.names is not None:
        sql += f" AND name IN ({', '.join('?' * len(command.names))})"
        args += command.names
    if command.token:
        (after,) = decode(command.token, 1)
        sql += " AND name > ?"
        args.append(str(after))
    sql += " ORDER BY name LIMIT ?"
    args.append(command.limit + 1)
    rows = conn.execute(sql, args).fetchall()
    groups = [LogGroup(name, created, days, size) for name, created, days, size in rows[: command.limit]]
    more = len(rows) > command.limit
    return GroupsPage(groups, encode(groups[-1].name) if more else None)


def describe_streams(conn: sqlite3.Connection, command: DescribeStreams) -> StreamsPage:
    group_id = _group_id(conn, command.group)
    by_time = command.order_by == "LastEventTime"
    if by_time and command.prefix:
        raise InvalidLogParameter("Cannot order by LastEventTime with a logStreamNamePrefix.")
    sql = ("SELECT name, created, first_event, last_event, last_ingestion, stored_bytes, "
           "coalesce(last_event, 0) AS t FROM log_streams WHERE group_id = ?")
    args: list[Any] = [group_id]
    if command.prefix:
        clause, values = _prefix_clause("name", command.prefix)
        sql += clause
        args += values
    after = ">" if not command.descending else "<"
    order = "DESC" if command.descending else ""
    if command.token:
        if by_time:
            last_time, last_name = decode(command.token, 2)
            sql += f" AND (t {after} ? OR (t = ? AND name {after} ?))"
            args += [last_time, last_time, last_name]
        else:
            (last_name,) = decode(command.token, 1)
            sql += f" AND name {after} ?"
            args.append(last_name)
    sql += f" ORDER BY t {order}, name {order}" if by_time else f" ORDER BY name {order}"
    sql += " LIMIT ?"
    args.append(command.limit + 1)
    rows = conn.execute(sql, args).fetchall()
    streams = [LogStream(*row[:6]) for row in rows[: command.limit]]
    token = None
    if len(rows) > command.limit:
        last = rows[command.limit - 1]
        token = encode(last[6], last[0]) if by_time else encode(last[0])
    return StreamsPage(streams, token)


# -- events --------------------------------------------------------------------------------------


def _take(rows: Sequence[tuple[int, int, int, str]], limit: int) -> list[tuple[int, int, int, str]]:
    """The first rows that fit in `limit` events and a page's bytes (always at least one)."""
    kept = []
    size = 0
    for row in rows[:limit]:
        size += len(row[3]) + EVENT_OVERHEAD
        if kept and size > MAX_PAGE_BYTES:
            break
        kept.append(row)
    return kept


def get_events(conn: sqlite3.Connection, command: GetEvents) -> EventsPage:
    group_id = _group_id(conn, command.group)
    row = conn.execute("SELECT id FROM log_streams WHERE group_id = ? AND name = ?",
                       (group_id, command.stream)).fetchone()
    if row is None:
        raise LogStreamNotFound()
    direction, mark = None, 0
    if command.token:
        found = _STREAM_TOKEN.fullmatch(command.token)
        if found is None:
            raise _bad_token()
        direction, mark = found.group(1), int(found.group(2))
    forward = direction == "f" or (direction is None and command.start_from_head)
    sql = "SELECT id, ts, ingested, message FROM log_events WHERE stream_id = ?"
    args: list[Any] = [row[0]]
    if command.start_ms is not None:
        sql += " AND ts >= ?"
        args.append(command.start_ms)
    if command.end_ms is not None:
        sql += " AND ts < ?"
        args.append(command.end_ms)
    if direction is not None:
        ts, event_id = divmod(mark, SCALE)
        if forward:
            sql += " AND ts >= ? AND (ts > ? OR id > ?)"
        else:
            sql += " AND ts <= ? AND (ts < ? OR id < ?)"
        args += [ts, ts, event_id]
    sql += " ORDER BY ts, id LIMIT ?" if forward else " ORDER BY ts DESC, id DESC LIMIT ?"
    args.append(command.limit)
    rows = _take(conn.execute(sql, args).fetchall(), command.limit)
    if not forward:
        rows.reverse()
    events = [LogEvent(event_id, command.stream, ts, message, ingested) for event_id, ts, ingested, message in rows]
    if events:
        first, last = events[0], events[-1]
        return EventsPage(events, f"f/{position(last.timestamp_ms, last.id):025d}",
                          f"b/{position(first.timestamp_ms, first.id):025d}")
    if direction == "f":
        return EventsPage([], command.token or "", f"b/{mark + 1:025d}")
    if direction == "b":
        return EventsPage([], f"f/{max(mark - 1, 0):025d}", command.token or "")
    base = position(command.start_ms, 0) if command.start_ms else 0
    return EventsPage([], f"f/{max(base - 1, 0):025d}", f"b/{base:025d}")


def filter_events(conn: sqlite3.Connection, command: FilterEvents) -> FilteredPage:
    """Search in windows of events (in (ts, id) order, FIRST_WINDOW_ROWS growing to WINDOW_ROWS):
    each window is one SQL scan that pre-filters with the pattern's literal terms (`instr`);
    between windows the time spent is checked, so a search for a rare term over millions of lines answers within about
    SEARCH_BUDGET_S with a token to continue from, instead of scanning everything in one call."""
    group_id = _group_id(conn, command.group)
    if command.streams and command.stream_prefix:
        raise InvalidLogParameter("logStreamNames and logStreamNamePrefix are mutually exclusive.")
    pattern = compile_pattern(command.pattern)
    table = "log_events"
    scope = "group_id = ?"
    scope_args: list[Any] = [group_id]
    names: dict[int, str] = {}
    if command.streams or command.stream_prefix:
        names = _stream_ids(conn, group_id, command.streams, command.stream_prefix)
        if not names:
            return FilteredPage([], None)
        scope += f" AND stream_id IN ({', '.join('?' * len(names))})"
        scope_args += list(names)
        # One stream reads its own index in order; several share the group's index.
        table += " INDEXED BY " + ("events_by_stream_time" if len(names) == 1 else "events_by_group_time")
    if command.start_ms is not None:
        scope += " AND ts >= ?"
        scope_args.append(command.start_ms)
    if command.end_ms is not None:
        scope += " AND ts <= ?"
        scope_args.append(command.end_ms)
    lower: tuple[int, int] | None = None  # exclusive (ts, id)
    if command.token:
        (mark,) = decode(command.token, 1)
        if not isinstance(mark, int) or mark < 0:
            raise _bad_token()
        lower = divmod(mark, SCALE)
    terms = "".join(" AND instr(message, ?) > 0" for _ in pattern.required_terms)
    deadline = time.monotonic() + SEARCH_BUDGET_S
    found: list[tuple[int, int, int, int, str]] = []
    size = 0
    window = min(FIRST_WINDOW_ROWS, WINDOW_ROWS)
    while True:
        after, after_args = _after(lower)
        upper = None
        if not pattern.matches_all:  # a search: bound this scan (no pattern: the limit bounds it)
            upper = conn.execute(f"SELECT ts, id FROM {table} WHERE {scope}{after} ORDER BY ts, id LIMIT 1 OFFSET ?",
                                 [*scope_args, *after_args, window - 1]).fetchone()
            window = min(window * 4, WINDOW_ROWS)
        until, until_args = ("", []) if upper is None else (" AND ts <= ? AND (ts < ? OR id <= ?)",
                                                            [upper[0], upper[0], upper[1]])
        rows = conn.execute(
            f"SELECT id, stream_id, ts, ingested, message FROM {table} WHERE {scope}{after}{until}{terms} "
            "ORDER BY ts, id", [*scope_args, *after_args, *until_args, *pattern.required_terms])
        for row in rows:
            if not pattern.matches(row[4]):
                continue
            size += len(row[4]) + EVENT_OVERHEAD
            if found and size > MAX_PAGE_BYTES:
                return _page(conn, found, names, position(found[-1][2], found[-1][0]))
            found.append(row)
            if len(found) >= command.limit:
                return _page(conn, found, names, position(row[2], row[0]))
        if upper is None:
            return _page(conn, found, names, None)
        lower = (upper[0], upper[1])
        if time.monotonic() > deadline:
            return _page(conn, found, names, position(*lower))


def _after(lower: tuple[int, int] | None) -> tuple[str, list[int]]:
    if lower is None:
        return "", []
    return " AND ts >= ? AND (ts > ? OR id > ?)", [lower[0], lower[0], lower[1]]


def _page(conn: sqlite3.Connection, found: list[tuple[int, int, int, int, str]], names: dict[int, str],
          next_mark: int | None) -> FilteredPage:
    missing = {row[1] for row in found} - names.keys()
    if missing:
        marks = ", ".join("?" * len(missing))
        names.update(conn.execute(f"SELECT id, name FROM log_streams WHERE id IN ({marks})", list(missing)).fetchall())
    events = [LogEvent(event_id, names.get(stream_id, ""), ts, message, ingested)
              for event_id, stream_id, ts, ingested, message in found]
    return FilteredPage(events, encode(next_mark) if next_mark is not None else None)


def _stream_ids(conn: sqlite3.Connection, group_id: int, streams: Sequence[str] | None,
                prefix: str | None) -> dict[int, str]:
    if streams:
        marks = ", ".join("?" * len(streams))
        rows = conn.execute(f"SELECT id, name FROM log_streams WHERE group_id = ? AND name IN ({marks})",
                            [group_id, *streams]).fetchall()
    else:
        assert prefix is not None
        rows = conn.execute("SELECT id, name FROM log_streams WHERE group_id = ? AND substr(name, 1, ?) = ?",
                            (group_id, len(prefix), prefix)).fetchall()
    return dict(rows)


def query(conn: sqlite3.Connection, group: str, *, start_ms: int | None, end_ms: int | None, after_id: int,
          streams: Sequence[str] | None, limit: int) -> list[LogEvent]:
    row = conn.execute("SELECT id FROM log_groups WHERE name = ?", (group,)).fetchone()
    if row is None:
        return []
    sql = ("SELECT e.id, s.name, e.ts, e.message, e.ingested FROM log_events e JOIN log_streams s ON s.id = e.stream_id"
           " WHERE e.group_id = ? AND e.id > ?")
    args: list[Any] = [row[0], after_id]
    if start_ms is not None:
        sql += " AND e.ts >= ?"
        args.append(start_ms)
    if end_ms is not None:
        sql += " AND e.ts <= ?"
        args.append(end_ms)
    if streams:
        sql += f" AND s.name IN ({', '.join('?' * len(streams))})"
        args += list(streams)
    sql += " ORDER BY e.id LIMIT ?"
    args.append(limit)
    return [LogEvent(*r) for r in conn.execute(sql, args).fetchall()]
