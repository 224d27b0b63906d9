"""What a sandbox's output becomes in its log stream: the bytes of its stdout/stderr cut into
records (`Lines`), and, with LoggingConfig.LogFormat=JSON, the platform's START / END / REPORT
lines as Lambda's JSON platform records (`platform_json`). Used by `sandbox.py`, which owns
the pipes, the stream and the invocation's tail."""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass, field

from firebox.logs.api import MAX_EVENT_BYTES

CAPTURE_CHUNK_BYTES = 256 * 1024
_LINE = re.compile(r"[^\n]*\n")


@dataclass
class CaptureState:
    json: bool
    pipes: list[Lines] = field(default_factory=list)
    pending_end: str | None = None  # JSON logs: END's time, until REPORT makes it runtimeDone


class Lines:
    """Cuts a pipe's bytes into records: one per line, each ending with a newline, the
    runtimes' `\\r` (a newline inside a multi-line record) turned back into `\\n`. A record is
    at most MAX_EVENT_BYTES of UTF-8 (its newline included): a longer line becomes several
    records, cut at character boundaries, the full-size ones emitted while the line still grows
    (so an endless line costs no more memory than one record)."""

    def __init__(self) -> None:
        self.partial = b""  # the unfinished last line

    def feed(self, chunk: bytes) -> list[str]:
        data = self.partial + chunk if self.partial else chunk
        cut = data.rfind(b"\n") + 1
        records = _records(data[:cut]) if cut else []
        rest = data[cut:]
        while len(rest) >= MAX_EVENT_BYTES:
            end = _char_boundary(rest, MAX_EVENT_BYTES - 1)
            records.append(_text(rest[:end]))
            rest = rest[end:]
        self.partial = rest
        return records

    def flush(self) -> list[str]:
        """The unfinished last line, as a record of its own."""
        if not self.partial:
            return []
        rest, self.partial = self.partial, b""
        return [_text(rest)]


def _records(complete: bytes) -> list[str]:
    """Records of `complete`, which ends with a newline."""
    if len(complete) <= MAX_EVENT_BYTES or max(map(len, complete.split(b"\n"))) < MAX_EVENT_BYTES:
        records = _LINE.findall(complete.decode("utf-8", "replace"))
        if complete.find(b"\r") >= 0:  # (not `in`: see runtimeapi's _take_up)
            records = [record.replace("\r", "\n") for record in records]
        return records
    records = []
    for line in complete[:-1].split(b"\n"):
        while len(line) >= MAX_EVENT_BYTES:
            end = _char_boundary(line, MAX_EVENT_BYTES - 1)
            records.append(_text(line[:end]))
            line = line[end:]
        records.append(_text(line))
    return records


def _text(line: bytes) -> str:
    """One record from a line without its newline."""
    return line.decode("utf-8", "replace").replace("\r", "\n") + "\n"


def _char_boundary(data: bytes, limit: int) -> int:
    """The largest index <= limit that does not split a UTF-8 character (limit < len(data))."""
    end = limit
    while end > limit - 4 and end > 0 and data[end] & 0xC0 == 0x80:
        end -= 1
    return end if end > 0 else limit


def json_platform_lines(lines: list[str]) -> list[str]:
    """One invocation's platform lines (START ... END, REPORT) as LoggingConfig.LogFormat=JSON
    records, for code that logs a whole invocation at once (a failed init)."""
    state = CaptureState(json=True)
    return [record for line in lines for record in platform_json(line, state)]


def platform_json(text: str, state: CaptureState) -> list[str]:
    """START -> platform.start; END is held until REPORT, which says the status, then becomes
    platform.runtimeDone; REPORT -> platform.report. Other lines are kept as they are."""
    if text.startswith("START RequestId: "):
        request_id, _, version = text[17:].strip().partition(" Version: ")
        return [_platform_record("platform.start", {"requestId": request_id, "version": version})]
    if text.startswith("END RequestId: "):
        state.pending_end = iso_now()
        return []
    if not text.startswith("REPORT RequestId: "):
        return [text]
    fields = dict(part.split(": ", 1) for part in text.strip().split("\t") if ": " in part)
    request_id = fields.get("REPORT RequestId", "")
    status, error_type = fields.get("Status", "success"), fields.get("Error Type")
    metrics: dict[str, float] = {
        "durationMs": _number(fields.get("Duration")),
        "billedDurationMs": _number(fields.get("Billed Duration")),
        "memorySizeMB": _number(fields.get("Memory Size")),
        "maxMemoryUsedMB": _number(fields.get("Max Memory Used")),
    }
    if "Init Duration" in fields:
        metrics["initDurationMs"] = _number(fields["Init Duration"])
    done: dict[str, object] = {"requestId": request_id, "status": status}
    report: dict[str, object] = {"requestId": request_id, "metrics": metrics, "status": status}
    if error_type:
        done["errorType"] = report["errorType"] = error_type
    done["metrics"] = {"durationMs": metrics["durationMs"]}
    done_time, state.pending_end = state.pending_end, None
    return [_platform_record("platform.runtimeDone", done, done_time), _platform_record("platform.report", report)]


def _platform_record(kind: str, record: dict[str, object], at: str | None = None) -> str:
    """Lambda's JSON platform record (LoggingConfig.LogFormat=JSON)."""
    document = {"time": at or iso_now(), "type": kind, "record": record}
    return json.dumps(document, separators=(",", ":")) + "\n"


def _number(text: str | None) -> float:
    """'1.22 ms' -> 1.22, '128 MB' -> 128 (an int when whole)."""
    try:
        value = float((text or "0").split()[0])
    except ValueError:
        return 0
    return int(value) if value.is_integer() else value


def iso_now() -> str:
    moment = time.time()
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(moment)) + f".{int(moment * 1000) % 1000:03d}Z"
