"""How a sandbox's output becomes records (worker/sandbox.py `_Lines`): newlines, the runtimes'
`\\r` inside multi-line records, lines longer than an event, characters cut across reads."""

from __future__ import annotations

from firebox.logs.api import MAX_EVENT_BYTES
from firebox.worker.capture import Lines as _Lines


def feed_all(*chunks: bytes) -> list[str]:
    lines = _Lines()
    records: list[str] = []
    for chunk in chunks:
        records += lines.feed(chunk)
    return records + lines.flush()


def test_one_record_per_line_across_reads() -> None:
    assert feed_all(b"a\nb", b"c\n", b"d") == ["a\n", "bc\n", "d\n"]
    assert feed_all(b"\n\n") == ["\n", "\n"]
    assert feed_all() == []


def test_carriage_returns_are_newlines_inside_one_record() -> None:
    traceback = b"[ERROR] ValueError: boom\rTraceback (most recent call last):\r  File \"app.py\"\n"
    assert feed_all(traceback, b"next\n") == [
        '[ERROR] ValueError: boom\nTraceback (most recent call last):\n  File "app.py"\n', "next\n"]


def test_multibyte_characters_split_between_reads() -> None:
    data = "héllo wörld ✓\n".encode()
    assert feed_all(data[:2], data[2:13], data[13:]) == ["héllo wörld ✓\n"]


def test_long_lines_become_several_events_of_bounded_size() -> None:
    line = ("é" * MAX_EVENT_BYTES).encode() + b"\n"  # twice the event size in bytes
    chunks = [line[i:i + 65536] for i in range(0, len(line), 65536)]
    records = feed_all(*chunks, b"short\n")
    assert records[-1] == "short\n"
    pieces = records[:-1]
    assert len(pieces) >= 2
    assert all(len(p.encode()) <= MAX_EVENT_BYTES for p in pieces)
    assert "".join(p[:-1] for p in pieces) == "é" * MAX_EVENT_BYTES  # nothing lost, no character cut
    # A long line inside one read, too.
    big = b"x" * (3 * MAX_EVENT_BYTES) + b"\nend\n"
    records = feed_all(big)
    assert [len(r) for r in records[:-1]] == [MAX_EVENT_BYTES] * 3 + [4]
    assert records[-1] == "end\n"


def test_an_endless_line_is_emitted_while_it_grows() -> None:
    lines = _Lines()
    emitted = []
    for _ in range(20):
        emitted += lines.feed(b"y" * 65536)
    assert len(emitted) >= 4  # memory does not grow with the line
    assert all(len(r) == MAX_EVENT_BYTES for r in emitted)


def test_json_platform_records() -> None:
    """LogFormat=JSON: START -> platform.start; END + REPORT -> platform.runtimeDone + platform.report."""
    import json

    from firebox.worker.capture import json_platform_lines

    lines = json_platform_lines([
        "START RequestId: r1 Version: 3\n",
        "Runtime.ExitError: RequestId: r1 Error: Runtime exited with error: exit status 1\n",
        "END RequestId: r1\n",
        "REPORT RequestId: r1\tDuration: 12.50 ms\tBilled Duration: 13 ms\tMemory Size: 256 MB\t"
        "Max Memory Used: 40 MB\tInit Duration: 101.25 ms\tStatus: error\tError Type: Runtime.ExitError\t\n",
    ])
    assert lines[1].startswith("Runtime.ExitError: ")  # not a platform line: kept as it is
    start, done, report = (json.loads(line) for i, line in enumerate(lines) if i != 1)
    assert all(line.endswith("}\n") and ": " not in line for i, line in enumerate(lines) if i != 1)  # compact
    assert start["type"] == "platform.start" and start["record"] == {"requestId": "r1", "version": "3"}
    assert done["type"] == "platform.runtimeDone"
    assert done["record"] == {"requestId": "r1", "status": "error", "errorType": "Runtime.ExitError",
                              "metrics": {"durationMs": 12.5}}
    assert report["type"] == "platform.report"
    assert report["record"] == {
        "requestId": "r1", "status": "error", "errorType": "Runtime.ExitError",
        "metrics": {"durationMs": 12.5, "billedDurationMs": 13, "memorySizeMB": 256, "maxMemoryUsedMB": 40,
                    "initDurationMs": 101.25}}
    assert done["time"] <= report["time"] and len(start["time"]) == len("2024-01-01T00:00:00.000Z")
