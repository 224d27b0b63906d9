"""The log writer's batches (logs/writes.py): rows go in as multi-row statements of 64, 32 ... 1
rows, and each stream's counters in one statement (or one per stream where SQLite is older than
3.33, without UPDATE ... FROM); what lands is the same either way."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from firebox.logs import reads, schema, writes
from firebox.logs.schema import ROW_SPAN_MS
from firebox.logs.writes import Segment, Writer

NOW = 1_700_000_000_000


def segment(group: str, stream: str, ts: int, *messages: str) -> Segment:
    return Segment(group, stream, ts, list(messages), sum(map(len, messages)))  # size: characters


def _events(conn: sqlite3.Connection, group: str = "group_id", stream: str = "stream_id") -> list[tuple[object, ...]]:
    """Every stored event, (id, group, stream, ts, ingested, message), in id order: rows expanded."""
    rows = conn.execute(f"SELECT id, ts, message, event_count, layout, {group}, {stream}, ingested FROM log_events "
                        "ORDER BY id")
    return [(event_id, *row[5:7], ts, row[7], message)
            for row in rows for event_id, ts, message in reads.split(*row[:5])]


def _stored(conn: sqlite3.Connection) -> tuple[list[tuple[object, ...]], ...]:
    events = _events(conn)
    streams = conn.execute(
        "SELECT name, first_event, last_event, last_ingestion, stored_bytes FROM log_streams ORDER BY name").fetchall()
    groups = conn.execute("SELECT name, stored_bytes FROM log_groups ORDER BY name").fetchall()
    return events, streams, groups


@pytest.mark.parametrize("update_from", [True, False])
def test_a_batch_lands_whole_with_every_stream_counted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                       update_from: bool) -> None:
    if update_from and not writes.UPDATE_FROM:
        pytest.skip(f"SQLite {sqlite3.sqlite_version} has no UPDATE ... FROM")
    monkeypatch.setattr(writes, "UPDATE_FROM", update_from)
    conn = schema.open_database(tmp_path / "logs.db")
    writer = Writer(conn, lambda: NOW)
    # 101 records (64 + 32 + 4 + 1 rows) over 3 streams of 2 groups; s1's timestamps out of order.
    batch = [segment("/g1", "s1", 500 - i, f"a{i}\n", f"b{i}\n") for i in range(40)]
    batch += [segment("/g1", "s2", 1000 + i, f"é{i}\n") for i in range(20)]
    batch += [segment("/g2", "s3", 7, "c0\n")]
    assert writer.insert(batch) == 101
    assert writer.insert([segment("/g1", "s1", 900, "late\n")]) == 1
    events, streams, groups = _stored(conn)
    assert [row[0] for row in events] == list(range(1, 103))  # every id once, in order
    assert [row[5] for row in events[:3]] == ["a0\n", "b0\n", "a1\n"] and events[-1][5] == "late\n"
    assert {row[4] for row in events} == {NOW}
    s1_bytes = sum(len(f"a{i}\nb{i}\n") for i in range(40)) + len("late\n")
    s2_bytes = sum(len(f"é{i}\n".encode()) for i in range(20))  # UTF-8 bytes, not characters
    assert streams == [("s1", 461, 900, NOW, s1_bytes), ("s2", 1000, 1019, NOW, s2_bytes), ("s3", 7, 7, NOW, 3)]
    assert groups == [("/g1", s1_bytes + s2_bytes), ("/g2", 3)]


def test_every_batch_size_lands_row_for_row(tmp_path: Path) -> None:
    """Rows of every chunk mix (0 to 140 rows: 64s, then 32, 16, 8 and the rest): each row keeps
    its own group, stream, timestamp and messages, ids follow one another across batches, and
    the ingestion time is the batch's."""
    conn = schema.open_database(tmp_path / "logs.db")
    clock = [NOW]
    writer = Writer(conn, lambda: clock[0])
    expected: list[tuple[object, ...]] = []
    for rows in range(141):
        clock[0] += 1
        # Timestamps further apart than a row spans: a row per segment.
        batch = [segment(f"/g{i % 3}", f"s{i % 5}", (200 * rows + i) * (ROW_SPAN_MS + 1), f"m{rows}.{i}\n")
                 for i in range(rows)]
        if rows % 2:  # segments of two records too, as END and REPORT are: rows of two events
            batch = [segment(s.group, s.stream, s.ts, *s.messages, f"{s.messages[0]}+") for s in batch[: rows // 2]]
        assert writer.insert(batch) == sum(len(s.messages) for s in batch)
        assert conn.execute("SELECT count(*) FROM log_events WHERE ingested = ?", clock).fetchone()[0] == len(batch)
        expected += [(s.group, s.stream, s.ts, clock[0], message) for s in batch for message in s.messages]
    stored = _events(conn, "(SELECT name FROM log_groups WHERE id = group_id)",
                     "(SELECT name FROM log_streams WHERE id = stream_id)")
    assert [row[0] for row in stored] == list(range(1, len(expected) + 1))
    assert [row[1:] for row in stored] == expected
    assert conn.execute("SELECT value FROM log_meta WHERE key = 'next_event_id'").fetchone()[0] == len(expected) + 1
