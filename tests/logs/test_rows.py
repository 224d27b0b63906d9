"""Rows of several events (logs/schema.py, writes.py, reads.py) against a reference model.

A row of `log_events` holds several events of one stream (one writer batch's, bounded by
schema.ROW_EVENTS, ROW_CHARS and ROW_SPAN_MS), yet the public behaviour is that of one event
per row: events in (timestamp, id) order everywhere, ids unique and increasing in production
order within a stream. The model: a seeded workload (several streams of one group; timestamps
mostly rising by 0-30 ms, now and then stepping back up to 200 ms or jumping seconds ahead;
segments of 1-5 messages sharing a timestamp, as `append_lines` takes them; some non-ASCII
messages and a few of 70,000 characters) is appended with a flush at random points, so that
batches, and so rows, differ. Ids cannot be known beforehand: they are learnt from one read
(`assign_ids`, which checks them), and every other read must agree on (id, stream, ts, message).

Covered: GetLogEvents paged forward and backward (tokens, limits, start/end inside rows),
FilterLogEvents (streams, prefix, patterns, time bounds, tiny search windows and no time
budget), `query(after_id=...)`, retention (bytes and streams), the migration of a version-1
file (one event per row), and rows themselves at the database level (`reads.split`).
Each test runs its own store on a fresh file.
"""

from __future__ import annotations

import contextlib
import random
import sqlite3
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from firebox.logs import reads, schema
from firebox.logs.api import DescribeGroups, DescribeStreams, FilterEvents, GetEvents, LogEvent
from firebox.logs.store import SqliteLogStore

from .support import Clock, run, started

DAY_MS = 86_400_000
T0 = 1_700_000_000_000  # 2023-11-14, in ms
GROUP = "/aws/lambda/fn"
PREFIX = "2023/11/14/"
STREAMS = (*(f"{PREFIX}[$LATEST]{i:032x}" for i in (1, 2, 3)), f"2023/11/15/[$LATEST]{4:032x}")
SEED = 21
NEEDLE = "needle"  # in about a tenth of the messages
WORDS = ("GET", "/api/items", "200", "ok", "INFO", "retry", "cache", "miss", "user=42", "latency=12ms")
NON_ASCII = "héllo wörld — 日本語 🙂"
LONG_CHARS = 70_000  # more than schema.ROW_CHARS: such an event has a row of its own
MANY = 1_000_000  # a limit no read here reaches


# -- the workload and its model ------------------------------------------------------------------

Segment = tuple[str, int, list[str]]  # (stream, timestamp, messages): one append_lines


def workload(seed: int = SEED, segments: int = 300, *, start: int = T0, streams: Sequence[str] = STREAMS,
             jumps: bool = True) -> list[Segment]:
    """`segments` appends of 1-5 messages each, to random `streams`, on a clock that mostly moves
    on by 1-30 ms (or not at all), sometimes steps back up to 200 ms, and with `jumps` pauses."""
    rng = random.Random(seed)
    clock, made = start, 0
    out: list[Segment] = []
    for _ in range(segments):
        roll = rng.random()
        if roll < 0.08:
            clock -= rng.randint(1, 200)  # the clock steps back
        elif jumps and roll < 0.11:
            clock += rng.randint(1_000, 5_000)  # a pause
        elif roll > 0.80:
            pass  # the same millisecond as the last segment
        else:
            clock += rng.randint(1, 30)
        messages = []
        for _ in range(rng.randint(1, 5)):
            messages.append(_message(rng, made))
            made += 1
        out.append((rng.choice(streams), clock, messages))
    return out


def _message(rng: random.Random, n: int) -> str:
    words = [rng.choice(WORDS) for _ in range(rng.randint(1, 8))]
    roll = rng.random()
    if roll < 0.10:
        words.insert(rng.randint(0, len(words)), NEEDLE)
    elif roll < 0.20:
        words.insert(rng.randint(0, len(words)), NON_ASCII)
    elif roll > 0.994:
        words.append("y" * LONG_CHARS)
    return f"ev{n:05d} {' '.join(words)}\n"  # unique: a message names its event


@dataclass
class Event:
    seq: int  # production order, over the group
    stream: str
    ts: int
    message: str
    batch: int  # which flush wrote it
    id: int = 0  # the store's, learnt by assign_ids


Key = tuple[int, str, int, object]  # (id, stream, ts, seq): compact, for assertions


class Model:
    def __init__(self, group: str = GROUP) -> None:
        self.group = group
        self.events: list[Event] = []
        self.seq_of: dict[str, int] = {}

    def add(self, stream: str, ts: int, messages: Iterable[str], batch: int) -> None:
        for message in messages:
            assert message not in self.seq_of, "messages must be unique"
            self.seq_of[message] = len(self.events)
            self.events.append(Event(len(self.events), stream, ts, message, batch))

    def select(self, streams: Iterable[str] | None = None, start: int | None = None, end: int | None = None,
               *, end_inclusive: bool = True, match: Callable[[str], bool] = lambda m: True) -> list[Event]:
        """The events the store should return, in (ts, id) order."""
        wanted = set(STREAMS if streams is None else streams)
        chosen = [e for e in self.events if e.stream in wanted and match(e.message)
                  and (start is None or e.ts >= start)
                  and (end is None or (e.ts <= end if end_inclusive else e.ts < end))]
        return sorted(chosen, key=lambda e: (e.ts, e.id))

    def keys(self, events: Iterable[Event]) -> list[Key]:
        return [(e.id, e.stream, e.ts, e.seq) for e in events]

    def read(self, events: Iterable[LogEvent]) -> list[Key]:
        """What a read returned, as keys (a message the model does not know shows as itself)."""
        return [(e.id, e.stream, e.timestamp_ms, self.seq_of.get(e.message, e.message[:80])) for e in events]


async def load(store: SqliteLogStore, segments: Sequence[Segment], *, group: str = GROUP,
               seed: int = SEED) -> Model:
    """Append `segments`, flushing at random points (each flush ends a batch: nothing awaits in
    between, so the writer cannot take a batch of its own), then learn the ids."""
    rng = random.Random(seed + 1)
    model = Model(group)
    batch = 0
    for stream, ts, messages in segments:
        store.append_lines(group, stream, ts, messages)
        model.add(stream, ts, messages, batch)
        if rng.random() < 0.06:
            await store.flush()
            batch += 1
    await store.flush()
    stats = store.statistics()
    assert (stats.dropped, stats.failed) == (0, 0), "records dropped, or lost to a failed write (see the log)"
    await assign_ids(store, model)
    return model


async def assign_ids(store: SqliteLogStore, model: Model) -> None:
    """Learn each event's id from `query` of its stream (id order), checking that it is the
    production order, with every timestamp and message, and that ids are unique."""
    for stream in sorted({e.stream for e in model.events}):
        mine = [e for e in model.events if e.stream == stream]
        got = await store.query(model.group, streams=[stream], limit=MANY)
        assert [(e.stream, e.timestamp_ms, model.seq_of.get(e.message, e.message[:80])) for e in got] == [
            (stream, e.ts, e.seq) for e in mine], stream
        ids = [e.id for e in got]
        assert ids == sorted(ids) and len(set(ids)) == len(ids), f"ids of {stream} not increasing: {ids}"
        for event, read in zip(mine, got, strict=True):
            event.id = read.id
    assert len({e.id for e in model.events}) == len(model.events), "an id names two events"


@contextlib.asynccontextmanager
async def loaded(tmp_path: Path, segments: Sequence[Segment] | None = None,
                 **kwargs: Any) -> AsyncIterator[tuple[SqliteLogStore, Model]]:
    store = await started(tmp_path / "logs.db", **kwargs)
    try:
        yield store, await load(store, workload() if segments is None else segments)
    finally:
        await store.stop()


def quantile_ts(events: Sequence[Event], fraction: float) -> int:
    return sorted(e.ts for e in events)[int(len(events) * fraction)]


# -- reads, paged --------------------------------------------------------------------------------

MAX_CALLS = 20_000  # a paging loop that does not end is a failure, not a hang


async def forward(store: SqliteLogStore, stream: str, limit: int, **window: Any) -> list[LogEvent]:
    """GetLogEvents from the head, then `f/` tokens until the token comes back unchanged."""
    page = await store.get_events(GetEvents(GROUP, stream, start_from_head=True, limit=limit, **window))
    got: list[LogEvent] = []
    for _ in range(MAX_CALLS):
        assert len(page.events) <= limit
        got += page.events
        token = page.forward_token
        assert token.startswith("f/"), token
        page = await store.get_events(GetEvents(GROUP, stream, token=token, limit=limit, **window))
        if page.forward_token == token:
            assert page.events == [], "events with an unchanged forward token"
            return got
    raise AssertionError("forward paging does not end")


async def backward(store: SqliteLogStore, stream: str, limit: int, **window: Any) -> list[LogEvent]:
    """GetLogEvents from the tail (no token), then `b/` tokens until it comes back unchanged."""
    page = await store.get_events(GetEvents(GROUP, stream, limit=limit, **window))
    pages: list[list[LogEvent]] = []
    for _ in range(MAX_CALLS):
        assert len(page.events) <= limit
        pages.append(page.events)
        token = page.backward_token
        assert token.startswith("b/"), token
        page = await store.get_events(GetEvents(GROUP, stream, token=token, limit=limit, **window))
        if page.backward_token == token:
            assert page.events == [], "events with an unchanged backward token"
            return [event for events in reversed(pages) for event in events]
    raise AssertionError("backward paging does not end")


async def filtered(store: SqliteLogStore, limit: int, **kwargs: Any) -> tuple[list[LogEvent], int]:
    """FilterLogEvents through every next_token: the events, and how many pages came back empty
    with a token (the search stopped at its budget)."""
    got: list[LogEvent] = []
    empty, token = 0, None
    for _ in range(MAX_CALLS):
        page = await store.filter_events(FilterEvents(GROUP, token=token, limit=limit, **kwargs))
        assert len(page.events) <= limit
        got += page.events
        if page.next_token is None:
            return got, empty
        assert page.next_token != token, "a token that does not move on"
        empty += not page.events
        token = page.next_token
    raise AssertionError("filter paging does not end")


# -- the workload has what the tests rely on ---------------------------------------------------------


@run
async def test_the_workload_has_what_the_tests_rely_on(tmp_path: Path) -> None:
    async with loaded(tmp_path) as (_, model):
        events = model.events
        assert len(events) > 600 and len({e.batch for e in events}) > 10
        assert 0.05 < sum(NEEDLE in e.message for e in events) / len(events) < 0.15
        assert sum(NON_ASCII in e.message for e in events) > 30
        assert sum(len(e.message) > schema.ROW_CHARS for e in events) >= 2
        # several events share a timestamp, within a stream and across streams
        assert len({(e.stream, e.ts) for e in events}) < len(events) * 0.6
        assert len({e.ts for e in events}) < len({(e.stream, e.ts) for e in events})
        # within one batch of one stream, the clock steps back: rows of one stream may interleave
        steps_back = 0
        for stream in STREAMS:
            latest: dict[int, int] = {}  # batch -> the stream's latest timestamp in it so far
            for e in (e for e in events if e.stream == stream):
                steps_back += e.ts < latest.get(e.batch, e.ts)
                latest[e.batch] = max(latest.get(e.batch, e.ts), e.ts)
        assert steps_back >= 5
        # and the rows of a batch span more than ROW_SPAN_MS (a pause)
        assert any(max(e.ts for e in events if e.batch == b) - min(e.ts for e in events if e.batch == b)
                   > schema.ROW_SPAN_MS for b in {e.batch for e in events})


# -- 1. GetLogEvents ---------------------------------------------------------------------------------


@run
async def test_get_events_pages_through_every_event_once_in_time_order(tmp_path: Path) -> None:
    async with loaded(tmp_path) as (store, model):
        for stream in STREAMS:
            expected = model.keys(model.select([stream]))
            assert len(expected) > 100
            for limit in (1, 2, 3, 7, 10_000):
                assert model.read(await forward(store, stream, limit)) == expected, (stream, limit)
                assert model.read(await backward(store, stream, limit)) == expected, (stream, limit)


@run
async def test_get_events_with_start_and_end_inside_rows(tmp_path: Path) -> None:
    """startTime inclusive, endTime exclusive, at timestamps of events (so inside rows, and
    each shared by several events often) and one past them."""
    async with loaded(tmp_path) as (store, model):
        for stream in STREAMS:
            mine = model.select([stream])
            low, high = quantile_ts(mine, 1 / 3), quantile_ts(mine, 2 / 3)
            windows: list[dict[str, int]] = [
                {"start_ms": low, "end_ms": high}, {"start_ms": low + 1, "end_ms": high + 1},
                {"start_ms": low}, {"end_ms": high}, {"start_ms": low, "end_ms": low}]
            for window in windows:
                expected = model.keys(model.select([stream], window.get("start_ms"), window.get("end_ms"),
                                                   end_inclusive=False))
                for limit in (1, 3, 10_000):
                    assert model.read(await forward(store, stream, limit, **window)) == expected, (window, limit)
                    assert model.read(await backward(store, stream, limit, **window)) == expected, (window, limit)


# -- 2. FilterLogEvents --------------------------------------------------------------------------


SCOPES: dict[str, tuple[dict[str, Any], tuple[str, ...]]] = {  # FilterEvents' arguments, and the streams meant
    "group": ({}, STREAMS),
    "two streams": ({"streams": (STREAMS[0], STREAMS[3])}, (STREAMS[0], STREAMS[3])),
    "one stream": ({"streams": (STREAMS[1],)}, (STREAMS[1],)),
    "prefix": ({"stream_prefix": PREFIX}, STREAMS[:3]),
}
PATTERNS: dict[str, Callable[[str], bool]] = {
    "": lambda m: True,
    NEEDLE: lambda m: NEEDLE in m,
    "?needle ?日本語": lambda m: NEEDLE in m or "日本語" in m,  # no term every match has: no pre-filter
}


@run
async def test_filter_events_pages_exactly_the_matching_events_in_time_order(tmp_path: Path) -> None:
    async with loaded(tmp_path) as (store, model):
        low, high = quantile_ts(model.events, 1 / 4), quantile_ts(model.events, 3 / 4)
        shared = max({e.ts for e in model.events}, key=lambda t: sum(e.ts == t for e in model.events))
        for scope, (kwargs, streams) in SCOPES.items():
            for pattern, match in PATTERNS.items():
                expected = model.keys(model.select(streams, match=match))
                for limit in ((7, 10_000) if not pattern else (1, 4, 10_000)):
                    got, _ = await filtered(store, limit, pattern=pattern, **kwargs)
                    assert model.read(got) == expected, (scope, pattern, limit)
                # startTime and endTime both inclusive
                for start, end in ((low, high), (low + 1, high - 1), (shared, shared), (None, low), (high, None)):
                    window = {k: v for k, v in (("start_ms", start), ("end_ms", end)) if v is not None}
                    got, _ = await filtered(store, 5, pattern=pattern, **window, **kwargs)
                    assert model.read(got) == model.keys(model.select(streams, start, end, match=match)), (
                        scope, pattern, start, end)
        assert sum(e.ts == shared for e in model.events) >= 3


@pytest.mark.parametrize(("first", "window", "budget"), [(1, 1, 0.0), (2, 2, 0.0), (1, 2, 2.0)])
@run
async def test_filter_events_in_tiny_search_windows(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                    first: int, window: int, budget: float) -> None:
    """With no time budget each call searches one window of a row or two and answers with what
    it found, often nothing, and a token; with a budget, one call goes through many windows."""
    monkeypatch.setattr(reads, "FIRST_WINDOW_ROWS", first)
    monkeypatch.setattr(reads, "WINDOW_ROWS", window)
    monkeypatch.setattr(reads, "SEARCH_BUDGET_S", budget)
    async with loaded(tmp_path) as (store, model):
        low, high = quantile_ts(model.events, 1 / 4), quantile_ts(model.events, 3 / 4)
        for scope, (kwargs, streams) in SCOPES.items():
            expected = model.keys(model.select(streams, match=PATTERNS[NEEDLE]))
            for limit in (1, 10_000):
                got, empty = await filtered(store, limit, pattern=NEEDLE, **kwargs)
                assert model.read(got) == expected, (scope, limit)
                if budget == 0.0:
                    assert empty > 0, "no call stopped at its budget"
            got, _ = await filtered(store, 3, pattern=NEEDLE, start_ms=low, end_ms=high, **kwargs)
            assert model.read(got) == model.keys(model.select(streams, low, high, match=PATTERNS[NEEDLE])), scope
            got, _ = await filtered(store, 10_000, **kwargs)  # no pattern: no search window either
            assert model.read(got) == model.keys(model.select(streams)), scope


# -- 3. query by id --------------------------------------------------------------------------------


@run
async def test_query_after_an_id_returns_the_later_events_in_id_order(tmp_path: Path) -> None:
    async with loaded(tmp_path) as (store, model):
        by_id = sorted(model.events, key=lambda e: e.id)
        ids = [e.id for e in by_id]
        rng = random.Random(SEED)
        marks = {0, ids[0] - 1, ids[0], ids[-1] - 1, ids[-1], ids[-1] + 1}
        for at in (len(ids) // 3, len(ids) // 2, 2 * len(ids) // 3):  # every id of a run of events
            marks.update(ids[at:at + 12])
        for event_id in rng.sample(ids, 30):
            marks.update((event_id - 1, event_id, event_id + 1))
        for n, after in enumerate(sorted(marks)):
            limit = (1, 5, MANY)[n % 3]
            got = await store.query(GROUP, after_id=after, limit=limit)
            assert model.read(got) == model.keys([e for e in by_id if e.id > after][:limit]), (after, limit)
        stream = STREAMS[2]
        for after in rng.sample(ids, 10):
            got = await store.query(GROUP, after_id=after, streams=[stream], limit=7)
            assert model.read(got) == model.keys([e for e in by_id if e.id > after and e.stream == stream][:7])


# -- 4. retention ------------------------------------------------------------------------------------


@run
async def test_retention_expires_the_old_events_and_keeps_the_bytes_of_the_rest(tmp_path: Path) -> None:
    """Old events (well before the cutoff: more than ROW_SPAN_MS, so no row holds both) go; the
    rest stay, with their streams' and group's storedBytes the UTF-8 bytes of what remains. The
    stream with only old events goes too; "mixed" gets an old segment after its new ones."""
    clock = Clock(T0 + DAY_MS)
    cutoff = T0  # RetentionInDays=1
    old_stream, mixed, new_stream = "old", "mixed", "new"
    margin = 2 * schema.ROW_SPAN_MS
    segments = (workload(SEED + 2, 100, start=cutoff - 60_000, streams=(old_stream, mixed), jumps=False)
                + workload(SEED + 3, 100, start=cutoff + 5_000, streams=(mixed, new_stream), jumps=False)
                + [(mixed, cutoff - 30_000, ["late but old\n", "late é\n"])])
    old_ts = [ts for _, ts, _ in segments if ts < cutoff]
    new_ts = [ts for _, ts, _ in segments if ts >= cutoff]
    assert max(old_ts) < cutoff - margin and min(new_ts) >= cutoff + margin
    async with loaded(tmp_path, segments, clock=clock) as (store, model):
        store.append_lines("/keep", "s", cutoff - 60_000, ["kept forever\n"])
        await store.put_retention(GROUP, 1)
        await store.sweep()
        await store.sweep()  # a second sweep finds nothing more
        kept = [e for e in model.events if e.ts >= cutoff]
        assert len(kept) < len(model.events)
        got = await store.query(GROUP, limit=MANY)
        assert model.read(got) == model.keys(sorted(kept, key=lambda e: e.id))
        assert model.read(await forward(store, mixed, 4)) == model.keys(model.select([mixed], cutoff))
        assert model.read((await filtered(store, 10_000, streams=(mixed, new_stream)))[0]) == model.keys(
            model.select([mixed, new_stream], cutoff))
        streams = (await store.describe_streams(DescribeStreams(GROUP))).streams
        assert [s.name for s in streams] == [mixed, new_stream]  # "old" is gone, emptied
        for stream in streams:
            remaining = [e for e in kept if e.stream == stream.name]
            assert stream.stored_bytes == sum(len(e.message.encode()) for e in remaining), stream.name
            assert stream.first_event_ms == min(e.ts for e in remaining)
            assert stream.last_event_ms == max(e.ts for e in model.events if e.stream == stream.name)
        (group,) = (await store.describe_groups(DescribeGroups(prefix=GROUP))).groups
        assert group.stored_bytes == sum(len(e.message.encode()) for e in kept)
        assert [e.message for e in await store.query("/keep")] == ["kept forever\n"]


# -- 5. a version-1 file ---------------------------------------------------------------------------

# The version-1 tables (git show dcebfa1:src/firebox/logs/schema.py): one event per row.
V1_TABLES = """
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
    message TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS events_by_group_time ON log_events (group_id, ts);
CREATE INDEX IF NOT EXISTS events_by_stream_time ON log_events (stream_id, ts);
CREATE TABLE IF NOT EXISTS log_meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS log_deletions (group_id INTEGER PRIMARY KEY);
"""


@run
async def test_a_version_1_file_is_migrated_and_its_rows_read_as_they_are(tmp_path: Path) -> None:
    path = tmp_path / "logs.db"
    stream = STREAMS[0]
    # ids 3, 4, 7 (7 earlier: the clock stepped back); 8-11 were handed out, then expired
    old = [(3, T0 + 10, "old a\n"), (4, T0 + 10, "old b é\n"), (7, T0, "old c\n")]
    old_bytes = sum(len(m.encode()) for _, _, m in old)
    conn = sqlite3.connect(path)
    conn.executescript(V1_TABLES)
    conn.execute("INSERT INTO log_groups (id, name, created, stored_bytes) VALUES (1, ?, ?, ?)",
                 (GROUP, T0, old_bytes))
    conn.execute("""INSERT INTO log_streams (id, group_id, name, created, first_event, last_event, last_ingestion,
                                             stored_bytes) VALUES (1, 1, ?, ?, ?, ?, ?, ?)""",
                 (stream, T0, T0, T0 + 10, T0 + 10, old_bytes))
    conn.executemany("INSERT INTO log_events (id, group_id, stream_id, ts, ingested, message) "
                     "VALUES (?, 1, 1, ?, ?, ?)", [(i, ts, ts, m) for i, ts, m in old])
    conn.execute("INSERT INTO log_meta (key, value) VALUES ('next_event_id', 12)")
    conn.execute("PRAGMA user_version=1")
    conn.commit()
    conn.close()

    def keys(events: Iterable[LogEvent]) -> list[tuple[int, int, str]]:
        return [(e.id, e.timestamp_ms, e.message) for e in events]

    by_time = [(7, T0, "old c\n"), (3, T0 + 10, "old a\n"), (4, T0 + 10, "old b é\n")]
    store = await started(path)
    try:
        assert keys(await forward(store, stream, 1)) == by_time
        assert keys(await backward(store, stream, 2)) == by_time
        new = [(T0 + 10, ["new a\n", "new b\n"]), (T0 + 5, ["new c\n"]), (T0 + 30, ["new d\n", "new é\n"])]
        for ts, messages in new:
            store.append_lines(GROUP, stream, ts, messages)
        await store.flush()
        got = await store.query(GROUP, after_id=7)
        assert [(e.timestamp_ms, e.message) for e in got] == [(ts, m) for ts, ms in new for m in ms]
        new_ids = [e.id for e in got]
        assert new_ids[0] >= 12 and new_ids == sorted(set(new_ids))  # after every id handed out
        everything = sorted([*old, *((e.id, e.timestamp_ms, e.message) for e in got)], key=lambda e: (e[1], e[0]))
        assert [e[0] for e in everything[:4]] == [7, new_ids[2], 3, 4]
        for limit in (1, 2, 10_000):
            assert keys(await forward(store, stream, limit)) == everything
            assert keys(await backward(store, stream, limit)) == everything
            assert keys((await filtered(store, limit))[0]) == everything
        assert keys((await filtered(store, 1, pattern="old"))[0]) == by_time
        assert keys(await store.query(GROUP, after_id=3, limit=3)) == [old[1], old[2], (new_ids[0], T0 + 10, "new a\n")]
        (described,) = (await store.describe_streams(DescribeStreams(GROUP))).streams
        assert described.stored_bytes == old_bytes + sum(len(m.encode()) for _, ms in new for m in ms)
    finally:
        await store.stop()

    conn = sqlite3.connect(path)
    try:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == schema.VERSION
        columns = [row[1] for row in conn.execute("PRAGMA table_info(log_events)")]
        assert columns[-2:] == ["event_count", "layout"]
        assert conn.execute("SELECT id, ts, message, event_count, layout FROM log_events WHERE id < 12 ORDER BY id"
                            ).fetchall() == [(i, ts, m, 1, None) for i, ts, m in old]  # as they were
    finally:
        conn.close()
    store = await started(path)  # and opened again, as it is
    try:
        assert keys(await forward(store, stream, 3)) == everything
    finally:
        await store.stop()


# -- 6. the rows themselves --------------------------------------------------------------------------


def stored_rows(path: Path) -> list[tuple[str, int, int, str, int, str | None]]:
    """(stream name, id, ts, message, event_count, layout) of every row, in id order."""
    conn = sqlite3.connect(path)
    try:
        return conn.execute("""SELECT s.name, e.id, e.ts, e.message, e.event_count, e.layout
                               FROM log_events e JOIN log_streams s ON s.id = e.stream_id ORDER BY e.id""").fetchall()
    finally:
        conn.close()


def expand(rows: Sequence[tuple[str, int, int, str, int, str | None]]) -> dict[str, list[tuple[int, int, str]]]:
    """Every row split into its events, checked against the row bounds: stream -> [(id, ts,
    message)] in id order."""
    events: dict[str, list[tuple[int, int, str]]] = {}
    for stream, first_id, ts, message, count, layout in rows:
        part = reads.split(first_id, ts, message, count, layout)
        where = f"row {first_id} of {count} events"
        assert [event_id for event_id, _, _ in part] == list(range(first_id, first_id + count)), where
        assert "".join(m for _, _, m in part) == message, where
        assert min(t for _, t, _ in part) == ts and max(t for _, t, _ in part) - ts <= schema.ROW_SPAN_MS, where
        assert count <= schema.ROW_EVENTS and (count == 1 or len(message) <= schema.ROW_CHARS), where
        assert (layout is None) == (count == 1), where
        events.setdefault(stream, []).extend(part)
    return events


@run
async def test_rows_expand_to_exactly_the_appended_events(tmp_path: Path) -> None:
    async with loaded(tmp_path) as (_, model):
        pass
    rows = stored_rows(tmp_path / "logs.db")
    assert len(rows) < len(model.events) / 2
    expanded = expand(rows)
    for stream in STREAMS:
        assert [(i, ts, model.seq_of.get(m, m[:80])) for i, ts, m in expanded[stream]] == [
            (e.id, e.ts, e.seq) for e in model.events if e.stream == stream], stream
    ids = [i for events in expanded.values() for i, _, _ in events]
    assert len(set(ids)) == len(ids) == len(model.events)


@run
async def test_a_batch_of_invocations_takes_a_row_per_stream(tmp_path: Path) -> None:
    """50 warm invocations over 4 sandboxes (START; some output; END and REPORT), written in
    one batch: each stream's events fit one row's bounds, so a row per stream."""
    streams = STREAMS
    model = Model()
    store = await started(tmp_path / "logs.db")
    try:
        for i in range(50):
            stream, start, request = streams[i % 4], T0 + i, f"{i:08x}-0000-4000-8000-{i:012x}"
            end = start + i % 3  # a sandbox's next invocation starts 4 ms later
            segments = [(start, [f"START RequestId: {request} Version: $LATEST\n"], True)]
            if i % 5 == 0:
                segments.append((start, [f"output {i}\n", f"more output {i} é\n"], False))
            segments.append((end, [f"END RequestId: {request}\n",
                                   f"REPORT RequestId: {request}\tDuration: 1.00 ms\tBilled Duration: 1 ms\t"
                                   "Memory Size: 128 MB\tMax Memory Used: 40 MB\t\n"], True))
            for ts, messages, platform in segments:
                store.append_lines(GROUP, stream, ts, messages, platform=platform)
                model.add(stream, ts, messages, 0)
        await store.flush()
    finally:
        await store.stop()
    for stream in streams:  # what one row holds
        mine = [e for e in model.events if e.stream == stream]
        assert max(e.ts for e in mine) - min(e.ts for e in mine) <= schema.ROW_SPAN_MS
        assert len(mine) <= schema.ROW_EVENTS and sum(len(e.message) for e in mine) <= schema.ROW_CHARS
    rows = stored_rows(tmp_path / "logs.db")
    assert len(rows) <= len(streams), f"{len(rows)} rows for {len(model.events)} events"
    for stream, events in expand(rows).items():
        assert [(ts, m) for _, ts, m in events] == [(e.ts, e.message) for e in model.events if e.stream == stream]


def test_a_term_is_found_in_the_events_of_a_row_never_across_two() -> None:
    """`reads.split_with` (a search's pre-filter inside rows): only the events whose own message
    holds the term, with their ids and timestamps, never a match across two messages."""
    messages = ["abc\n", "ne", "edle\n", "needle x\n", "xneedle needle\n", "none\n"]
    layout = ",".join(str(len(m)) for m in messages) + ";" + ",".join(str(k) for k in range(len(messages)))
    row = (10, T0, "".join(messages), len(messages), layout)
    assert reads.split_with("needle", *row) == [(13, T0 + 3, "needle x\n"), (14, T0 + 4, "xneedle needle\n")]
    assert reads.split_with("needle", *row) == [e for e in reads.split(*row) if "needle" in e[2]]
    assert reads.split_with("zzz", *row) == []
    assert reads.split_with("needle", 7, T0, "a needle\n", 1, None) == [(7, T0, "a needle\n")]
    assert reads.split_with("needle", 7, T0, "a pin\n", 1, None) == []
