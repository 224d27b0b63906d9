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

Rows and events
---------------
A row holds the events of one stream from one writer batch (schema.py), with timestamps from
the row's `ts` to at most ROW_SPAN_MS later, so the events of different rows can interleave in
(ts, id) order. The queries select rows in the order of their first event, look ROW_SPAN_MS
back for rows that may hold events after a bound, and `_merge` expands them (`split`) into
events in order: read forward, no row still unread holds an event before the first event of
the row just read (its ts and ids are the smallest of its own), so the events before that are
final; read backward, no row still unread holds an event later than the row just read's
ts + ROW_SPAN_MS.

Worked example, ROW_SPAN_MS 100 (ts:id): rows A = [10:1, 40:2, 90:3] and B = [30:4, 35:5]
read forward give 10:1 when B is read (B starts at 30:4), then 30:4, 35:5, 40:2, 90:3 at the
end; read backward, B is read first, nothing is final until A (ts 10: only events after 110
are), and the end gives 90:3, 40:2, 35:5, 30:4, 10:1.

FilterLogEvents searches for about `SEARCH_BUDGET_S` per call at most (in windows of at most
`WINDOW_ROWS` rows): when that runs out it answers with what it found, possibly nothing, and
a `nextToken` to continue from, as CloudWatch does.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import sqlite3
import time
from bisect import bisect_right
from collections.abc import Callable, Iterable, Iterator, Sequence
from heapq import heappop, heappush
from itertools import accumulate
from itertools import count as numbers
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
from firebox.logs.schema import ROW_EVENTS, ROW_SPAN_MS

SCALE = 10**12
# A page of events holds at most this much (AWS: 1 MB, counting 26 bytes per event).
MAX_PAGE_BYTES = 1_048_576
EVENT_OVERHEAD = 26
SEARCH_BUDGET_S = 2.0
# Search windows grow from FIRST to WINDOW_ROWS rows (x4 each): frequent matches fill a page
# in the first small window, rare ones are searched in large strides. (A busy server's rows
# hold about ten events each.)
FIRST_WINDOW_ROWS = 1_000
WINDOW_ROWS = 16_000
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


# A row as the queries select it: id, stream id, ts, ingested, message, event_count, layout.
Row = tuple[int, int, int, int, str, int, str | None]
_ROW = "id, stream_id, ts, ingested, message, event_count, layout"
# An event as `_merge` gives it: (position, or its negation read backward), id, ts, stream id,
# ingested, message.
Event = tuple[int, int, int, int, int, str]


def split(first_id: int, ts: int, message: str, count: int, layout: str | None) -> list[tuple[int, int, str]]:
    """A row's events, (id, ts, message) each, in the order they were produced."""
    if count == 1:
        return [(first_id, ts, message)]
    lengths, offsets = (layout or ";").split(";")
    events = []
    start = 0
    for event_id, length, offset in zip(numbers(first_id), map(int, lengths.split(",")), map(int, offsets.split(","))):
        events.append((event_id, ts + offset, message[start:start + length]))
        start += length
    return events


def split_with(term: str, first_id: int, ts: int, message: str, count: int,
               layout: str | None) -> list[tuple[int, int, str]]:
    """The row's events whose message contains `term`, as `split` gives them: found with
    `str.find` in the row's text and the event at each place by bisection, so that a row whose
    events mostly do not match is not split into all of them. bench/logs.py, a search for a
    term in 1% of 500,000 lines, 1,000 matches: 155 ms p50 splitting every row, 30 ms this
    way; 102 ms when a row was an event."""
    if count == 1 or term not in message:
        return [(first_id, ts, message)] if term in message else []
    lengths, offsets = (layout or ";").split(";")
    ends = list(accumulate(map(int, lengths.split(","))))
    deltas: list[str] = []
    events = []
    at = message.find(term)
    while at >= 0:
        k = bisect_right(ends, at)  # the event the place is in
        start, end = ends[k - 1] if k else 0, ends[k]
        if at + len(term) > end:  # across two events' messages: look on from the next one
            at = message.find(term, end)
            continue
        deltas = deltas or offsets.split(",")
        events.append((first_id + k, ts + int(deltas[k]), message[start:end]))
        at = message.find(term, end)
    return events


def _merge(rows: Iterable[Row], *, forward: bool, keep: Callable[[int, int, str], bool],
           term: str = "") -> Iterator[Event]:
    """The events of `rows` (read in (ts, id) order, or its reverse) that `keep(position, ts,
    message)`, and contain `term`, in that order: each as soon as no row still unread can hold
    one before it (the module doc)."""
    heap: list[Event] = []
    for first_id, stream_id, ts, ingested, message, count, layout in rows:
        final = position(ts, first_id) if forward else -position(ts + ROW_SPAN_MS + 1, 0)
        while heap and heap[0][0] < final:
            yield heappop(heap)
        events = (split_with(term, first_id, ts, message, count, layout) if term
                  else split(first_id, ts, message, count, layout))
        for event_id, event_ts, text in events:
            at = position(event_ts, event_id)
            if keep(at, event_ts, text):
                heappush(heap, (at if forward else -at, event_id, event_ts, stream_id, ingested, text))
    while heap:
        yield heappop(heap)


def _page_of(events: Iterator[Event], limit: int) -> list[Event]:
    """The first events that fit in `limit` and a page's bytes (always at least one)."""
    kept: list[Event] = []
    size = 0
    for event in events:
        size += len(event[5]) + EVENT_OVERHEAD
        if kept and size > MAX_PAGE_BYTES:
            break
        kept.append(event)
        if len(kept) >= limit:
            break
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
    start, end = command.start_ms, command.end_ms  # events: start <= ts < end
    # The rows that may hold events in range: from ROW_SPAN_MS before the first time wanted.
    sql = f"SELECT {_ROW} FROM log_events WHERE stream_id = ?"
    args: list[Any] = [row[0]]
    if forward:
        lowest = max(start if start is not None else 0, mark // SCALE if direction else 0)
        sql += " AND ts >= ?"
        args.append(lowest - ROW_SPAN_MS)
        if end is not None:
            sql += " AND ts < ?"
            args.append(end)
        sql += " ORDER BY ts, id"
    else:
        if start is not None:
            sql += " AND ts >= ?"
            args.append(start - ROW_SPAN_MS)
        highest = [mark // SCALE] if direction else []
        if end is not None:
            highest.append(end - 1)
        if highest:
            sql += " AND ts <= ?"
            args.append(min(highest))
        sql += " ORDER BY ts DESC, id DESC"

    def keep(at: int, ts: int, _: str) -> bool:
        if (start is not None and ts < start) or (end is not None and ts >= end):
            return False
        return not direction or (at > mark if forward else at < mark)

    page = _page_of(_merge(conn.execute(sql, args), forward=forward, keep=keep), command.limit)
    if not forward:
        page.reverse()
    events = [LogEvent(event_id, command.stream, ts, message, ingested)
              for _, event_id, ts, _, ingested, message in page]
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
    """Search in windows of rows (in (ts, id) order, FIRST_WINDOW_ROWS growing to WINDOW_ROWS):
    each window is one SQL scan that pre-filters with the pattern's literal terms (`instr`);
    between windows the time spent is checked, so a search for a rare term over millions of
    lines answers within about SEARCH_BUDGET_S with a token to continue from, instead of
    scanning everything in one call. A window ends with a row: its events, and those before
    it, are searched; events after it in the window's rows (the module doc) are searched again
    by the next window, which looks ROW_SPAN_MS back."""
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
    start, end = command.start_ms, command.end_ms  # both inclusive
    if start is not None:
        scope += " AND ts >= ?"
        scope_args.append(start - ROW_SPAN_MS)
    if end is not None:
        scope += " AND ts <= ?"
        scope_args.append(end)
    searched = -1  # the position of the last event searched
    if command.token:
        (searched,) = decode(command.token, 1)
        if not isinstance(searched, int) or searched < 0:
            raise _bad_token()
    terms = "".join(" AND instr(message, ?) > 0" for _ in pattern.required_terms)
    term = max(pattern.required_terms, key=len, default="")  # inside rows: the longest, the fewest places
    deadline = time.monotonic() + SEARCH_BUDGET_S
    found: list[Event] = []
    size = 0
    window = min(FIRST_WINDOW_ROWS, WINDOW_ROWS)
    while True:
        upper: tuple[int, int] | None = None
        if not pattern.matches_all:  # a search: bound this scan (no pattern: the limit bounds it)
            upper = conn.execute(
                f"SELECT ts, id FROM {table} WHERE {scope} AND ts >= ? AND (ts > ? OR id > ?) "
                "ORDER BY ts, id LIMIT 1 OFFSET ?",
                [*scope_args, *_row_after(searched), window - 1]).fetchone()
            window = min(window * 4, WINDOW_ROWS)
        last = position(*upper) if upper is not None else None
        lowest = searched // SCALE if searched >= 0 else 0
        until, until_args = ("", []) if upper is None else (" AND ts <= ? AND (ts < ? OR id <= ?)",
                                                            [upper[0], upper[0], upper[1]])
        rows = conn.execute(
            f"SELECT {_ROW} FROM {table} WHERE {scope} AND ts >= ?{until}{terms} ORDER BY ts, id",
            [*scope_args, lowest - ROW_SPAN_MS, *until_args, *pattern.required_terms])

        def keep(at: int, ts: int, message: str) -> bool:  # (used up within this window)
            return (searched < at and (last is None or at <= last) and (start is None or ts >= start)
                    and (end is None or ts <= end) and pattern.matches(message))

        for event in _merge(rows, forward=True, keep=keep, term=term):
            size += len(event[5]) + EVENT_OVERHEAD
            if found and size > MAX_PAGE_BYTES:
                return _page(conn, found, names, found[-1][0])
            found.append(event)
            if len(found) >= command.limit:
                return _page(conn, found, names, event[0])
        if last is None:
            return _page(conn, found, names, None)
        searched = last
        if time.monotonic() > deadline:
            return _page(conn, found, names, searched)


def _row_after(at: int) -> list[int]:
    """Parameters of `ts >= ? AND (ts > ? OR id > ?)`: rows whose first event is after `at`."""
    ts, event_id = divmod(at, SCALE) if at >= 0 else (0, -1)
    return [ts, ts, event_id]


def _page(conn: sqlite3.Connection, found: list[Event], names: dict[int, str], next_mark: int | None) -> FilteredPage:
    missing = {event[3] for event in found} - names.keys()
    if missing:
        marks = ", ".join("?" * len(missing))
        names.update(conn.execute(f"SELECT id, name FROM log_streams WHERE id IN ({marks})", list(missing)).fetchall())
    events = [LogEvent(event_id, names.get(stream_id, ""), ts, message, ingested)
              for _, event_id, ts, stream_id, ingested, message in found]
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
    # Rows in id order hold ids in order (a row's are its own run of them): no merge needed.
    sql = ("SELECT e.id, s.name, e.ts, e.message, e.ingested, e.event_count, e.layout FROM log_events e "
           "JOIN log_streams s ON s.id = e.stream_id WHERE e.group_id = ? AND e.id > ? AND e.id + e.event_count - 1 > ?")
    args: list[Any] = [row[0], after_id - ROW_EVENTS, after_id]
    if start_ms is not None:
        sql += " AND e.ts >= ?"
        args.append(start_ms - ROW_SPAN_MS)
    if end_ms is not None:
        sql += " AND e.ts <= ?"
        args.append(end_ms)
    if streams:
        sql += f" AND s.name IN ({', '.join('?' * len(streams))})"
        args += list(streams)
    sql += " ORDER BY e.id"
    events: list[LogEvent] = []
    for first_id, stream, row_ts, text, ingested, count, layout in conn.execute(sql, args):
        for event_id, ts, message in split(first_id, row_ts, text, count, layout):
            if (event_id > after_id and (start_ms is None or ts >= start_ms)
                    and (end_ms is None or ts <= end_ms)):
                events.append(LogEvent(event_id, stream, ts, message, ingested))
                if len(events) >= limit:
                    return events
    return events
