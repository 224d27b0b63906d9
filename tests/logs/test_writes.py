"""The log writer's batches (logs/writes.py): rows go in as multi-row statements of 64, 32 ... 1
rows, and each stream's counters in one statement (or one per stream where SQLite is older than
3.33, without UPDATE ... FROM); what lands is the same either way."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from firebox.logs import schema, writes
from firebox.logs.writes import Segment, Writer

NOW = 1_700_000_000_000


def segment(group: str, stream: str, ts: int, *messages: str) -> Segment:
    return Segment(group, stream, ts, list(messages), sum(map(len, messages)))  # size: characters


def _stored(conn: sqlite3.Connection) -> tuple[list[tuple[object, ...]], ...]:
    events = conn.execute("SELECT id, group_id, stream_id, ts, ingested, message FROM log_events ORDER BY id").fetchall()
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


@pytest.mark.parametrize("numbered", [True, False])
def test_every_batch_size_lands_row_for_row(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, numbered: bool) -> None:
    """Rows of every chunk mix (0 to 140 rows: 64s, then 32, 16, 8 and the rest): each row keeps
    its own group, stream, timestamp and message, ids follow one another across batches, and the
    ingestion time is the batch's; with the statements of numbered parameters and with plain ones
    (Python 3.12 and later)."""
    if numbered and not writes._INSERT_EVENTS.numbered:
        pytest.skip("numbered parameters are for Python 3.11 only (writes.NUMBERED_PARAMETERS)")
    monkeypatch.setattr(writes, "_INSERT_EVENTS", writes._EventRows(numbered=numbered))
    conn = schema.open_database(tmp_path / "logs.db")
    clock = [NOW]
    writer = Writer(conn, lambda: clock[0])
    expected: list[tuple[object, ...]] = []
    for rows in range(141):
        clock[0] += 1
        batch = [segment(f"/g{i % 3}", f"s{i % 5}", 1000 * rows + i, f"m{rows}.{i}\n") for i in range(rows)]
        if rows % 2:  # segments of two records too, as END and REPORT are
            batch = [segment(s.group, s.stream, s.ts, *s.messages, f"{s.messages[0]}+") for s in batch[: rows // 2]]
        assert writer.insert(batch) == sum(len(s.messages) for s in batch)
        expected += [(s.group, s.stream, s.ts, clock[0], message) for s in batch for message in s.messages]
    stored = conn.execute("""SELECT e.id, g.name, s.name, e.ts, e.ingested, e.message FROM log_events e
                             JOIN log_groups g ON g.id = e.group_id JOIN log_streams s ON s.id = e.stream_id
                             ORDER BY e.id""").fetchall()
    assert [row[0] for row in stored] == list(range(1, len(expected) + 1))
    assert [row[1:] for row in stored] == expected
    assert conn.execute("SELECT value FROM log_meta WHERE key = 'next_event_id'").fetchone()[0] == len(expected) + 1
