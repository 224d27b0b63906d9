"""Logs: log groups and streams, the records functions and the platform write to them.

Contract
--------
- A group per function (`/aws/lambda/<name>`, or the function's LoggingConfig.LogGroup), a stream
  per sandbox named `YYYY/MM/DD/[<version>]<32 hex>`.
- `append` never blocks an invocation on disk I/O: records are buffered and written in batches
  by the component's own task; when a function floods its output beyond the buffer, records are
  dropped and a notice saying how many is written in their place (never unbounded memory).
- Records keep the order in which one stream produced them; timestamps are epoch milliseconds.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True)
class LogRecord:
    timestamp_ms: int
    message: str


class LogSink(Protocol):
    def append(self, group: str, stream: str, records: Sequence[LogRecord]) -> None:
        """Queue records for writing; returns at once."""


@dataclass(frozen=True)
class LogEvent:
    """A stored record: `id` orders the records of a group as they were produced."""

    id: int
    stream: str
    timestamp_ms: int
    message: str


class LogReader(Protocol):
    async def query(
        self,
        group: str,
        *,
        start_ms: int | None = None,
        end_ms: int | None = None,
        after_id: int = 0,
        streams: Sequence[str] | None = None,
        limit: int = 10_000,
    ) -> list[LogEvent]: ...
