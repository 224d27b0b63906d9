"""Logs: log groups and streams, the records functions and the platform write to them.

Contract
--------
- A group per function (`/aws/lambda/<name>`, or the function's LoggingConfig.LogGroup), a stream
  per sandbox named `YYYY/MM/DD/[<version>]<32 hex>`. A group and a stream exist (are listed by
  `describe_groups` / `describe_streams`) from their first record on, or from `create_group`.
- `LogSink.append` / `append_lines` never block an invocation on disk I/O: records are buffered
  and written in batches by the component's own task. When a function floods its output beyond
  the buffer, its records are dropped (never the platform's), and a notice saying how many (and
  how many bytes) is written in the stream at the place of the gap: memory stays bounded and
  the loss is stated, never silent.
- Records keep the order in which one stream produced them; timestamps are epoch milliseconds.
  A record is one event: its message keeps inner newlines (a traceback is ONE event) and ends
  with a newline, as Lambda's do.
- Retention: a group keeps its events forever unless `put_retention` sets `RETENTION_DAYS`; a
  periodic sweep owned by the store then deletes older events (and streams left empty).
- Reads (`LogReader`) see what is committed; a record appended a moment ago becomes visible
  within one writer batch (milliseconds unless the store is flooded).

Orders and tokens
-----------------
Events are ordered by (timestamp, id); `id` is unique for the life of the store and never
reused, so it serves as the `eventId` tail clients deduplicate on. `get_events` speaks AWS's
GetLogEvents tokens: `f/<position>` reads forward from after a position, `b/<position>` backward
from before it; when nothing is left in that direction the same token comes back unchanged,
which is how clients know they reached the end. Other `next_token`s are opaque.

Errors (all AWS-shaped, code in the body's `__type` as botocore's JSON parser reads it):
`LogGroupNotFound` / `LogStreamNotFound` (ResourceNotFoundException), `LogGroupExists`
(ResourceAlreadyExistsException), `InvalidLogParameter` (InvalidParameterException).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple, Protocol

from firebox.errors import ApiError

# The values AWS accepts for a group's RetentionInDays.
RETENTION_DAYS = (1, 3, 5, 7, 14, 30, 60, 90, 120, 150, 180, 365, 400, 545, 731, 1096, 1827, 2192, 2557,
                  2922, 3288, 3653)
# CloudWatch's largest event (262,144 bytes less its 26 bytes of per-event overhead): a longer
# line is stored as several events of at most this many bytes each, never truncated.
MAX_EVENT_BYTES = 262_144 - 26


class LogRecord(NamedTuple):
    """One record as produced."""

    timestamp_ms: int
    message: str


class LogSink(Protocol):
    def append(self, group: str, stream: str, records: Sequence[LogRecord]) -> None:
        """Queue records for writing; returns at once, never raises for a full buffer."""

    def append_lines(self, group: str, stream: str, timestamp_ms: int, messages: Sequence[str], *,
                     platform: bool = False) -> None:
        """The bulk form, for what one read of a pipe gave: `messages` all at `timestamp_ms`.
        `platform` records (START, END, REPORT, the timeout and crash lines) are never dropped:
        there are a few per invocation, and they are what tells the story of a flood."""


# -- values --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LogEvent:
    """A stored record. `id` orders records of equal timestamps as they were produced."""

    id: int
    stream: str
    timestamp_ms: int
    message: str
    ingestion_ms: int = 0


@dataclass(frozen=True)
class LogGroup:
    name: str
    creation_ms: int
    retention_days: int | None
    stored_bytes: int


@dataclass(frozen=True)
class LogStream:
    name: str
    creation_ms: int
    first_event_ms: int | None
    last_event_ms: int | None
    last_ingestion_ms: int | None
    stored_bytes: int


@dataclass(frozen=True)
class GroupsPage:
    groups: list[LogGroup]
    next_token: str | None


@dataclass(frozen=True)
class StreamsPage:
    streams: list[LogStream]
    next_token: str | None


@dataclass(frozen=True)
class EventsPage:
    """GetLogEvents' answer: events ascending, and the tokens to read on either way."""

    events: list[LogEvent]
    forward_token: str
    backward_token: str


@dataclass(frozen=True)
class FilteredPage:
    """FilterLogEvents' answer. `next_token` may come with few or no events: the search stopped
    at its budget (rows or time) and more remains to be searched."""

    events: list[LogEvent]
    next_token: str | None


# -- commands (parsed at the edge, frozen) ---------------------------------------------------------


@dataclass(frozen=True)
class DescribeGroups:
    prefix: str | None = None
    pattern: str | None = None  # case-insensitive substring (logGroupNamePattern)
    names: tuple[str, ...] | None = None  # exactly these (logGroupIdentifiers)
    token: str | None = None
    limit: int = 50


@dataclass(frozen=True)
class DescribeStreams:
    group: str
    prefix: str | None = None
    order_by: str = "LogStreamName"  # or "LastEventTime"
    descending: bool = False
    token: str | None = None
    limit: int = 50


@dataclass(frozen=True)
class GetEvents:
    group: str
    stream: str
    start_ms: int | None = None  # inclusive
    end_ms: int | None = None  # exclusive, as AWS's GetLogEvents
    token: str | None = None
    start_from_head: bool = False
    limit: int = 10_000


@dataclass(frozen=True)
class FilterEvents:
    group: str
    streams: tuple[str, ...] | None = None
    stream_prefix: str | None = None
    start_ms: int | None = None  # inclusive
    end_ms: int | None = None  # inclusive, as AWS's FilterLogEvents
    pattern: str = ""
    token: str | None = None
    limit: int = 10_000


class LogReader(Protocol):
    """What the Logs API serves: reads, and the management of groups and their retention."""

    async def create_group(self, name: str) -> None:
        """LogGroupExists if it exists."""

    async def delete_group(self, name: str) -> None:
        """The group, its streams and events; LogGroupNotFound if it does not exist."""

    async def put_retention(self, name: str, days: int | None) -> None:
        """Set (or, with None, remove) the group's retention; InvalidLogParameter for a value
        outside RETENTION_DAYS, LogGroupNotFound for a missing group."""

    async def describe_groups(self, command: DescribeGroups) -> GroupsPage: ...

    async def describe_streams(self, command: DescribeStreams) -> StreamsPage: ...

    async def get_events(self, command: GetEvents) -> EventsPage: ...

    async def filter_events(self, command: FilterEvents) -> FilteredPage:
        """Events matching the CloudWatch filter pattern, ascending; InvalidLogParameter for a
        pattern that does not parse."""

    async def query(
        self,
        group: str,
        *,
        start_ms: int | None = None,
        end_ms: int | None = None,
        after_id: int = 0,
        streams: Sequence[str] | None = None,
        limit: int = 10_000,
    ) -> list[LogEvent]:
        """Records of `group` in production (id) order after `after_id`; [] for no group."""


# -- errors ----------------------------------------------------------------------------------------


class LogsApiError(ApiError):
    """An error of the Logs API (JSON 1.1): status 400, and the code in the body's `__type`,
    which is where botocore's JSON parser looks for it."""

    status = 400

    def body(self) -> dict[str, object]:
        return {"__type": self.code, "message": self.message}


class LogGroupNotFound(LogsApiError):
    code = "ResourceNotFoundException"

    def __init__(self) -> None:
        super().__init__("The specified log group does not exist.")


class LogStreamNotFound(LogsApiError):
    code = "ResourceNotFoundException"

    def __init__(self) -> None:
        super().__init__("The specified log stream does not exist.")


class LogGroupExists(LogsApiError):
    code = "ResourceAlreadyExistsException"

    def __init__(self) -> None:
        super().__init__("The specified log group already exists")


class InvalidLogParameter(LogsApiError):
    code = "InvalidParameterException"


class LogsNotImplemented(LogsApiError):
    """A real Logs feature Firebox does not offer (yet): said plainly, never faked."""

    code, status = "NotImplementedException", 501
