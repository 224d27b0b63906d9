"""CloudWatch Logs events: GetLogEvents and FilterLogEvents (with filter patterns).

Live tails: StartLiveTail is an HTTP/2 event stream that botocore (v1) cannot drive; tail
clients (`aws logs tail --follow`, `firebox logs --follow`) poll FilterLogEvents with a
`startTime` and drop the `eventId`s they have already shown, which works here as on AWS.
StartLiveTail itself is answered with NotImplementedException saying so.
"""

from __future__ import annotations

from typing import Any

from firebox.frontend.api import Handler, Reply, Request, Services
from firebox.frontend.handlers.logs import group_name
from firebox.logs.api import FilterEvents, GetEvents, LogsNotImplemented

DEFAULT_LIMIT = 10_000


async def get_log_events(services: Services, request: Request) -> Reply:
    p = request.params
    command = GetEvents(
        group_name(services, p), p["logStreamName"], start_ms=p.get("startTime"), end_ms=p.get("endTime"),
        token=p.get("nextToken"), start_from_head=bool(p.get("startFromHead")), limit=p.get("limit", DEFAULT_LIMIT),
    )
    page = await services.logs.get_events(command)
    return Reply({
        "events": [{"timestamp": e.timestamp_ms, "message": e.message, "ingestionTime": e.ingestion_ms}
                   for e in page.events],
        "nextForwardToken": page.forward_token,
        "nextBackwardToken": page.backward_token,
    })


async def filter_log_events(services: Services, request: Request) -> Reply:
    p = request.params
    streams = p.get("logStreamNames")
    command = FilterEvents(
        group_name(services, p), streams=tuple(streams) if streams else None,
        stream_prefix=p.get("logStreamNamePrefix"), start_ms=p.get("startTime"), end_ms=p.get("endTime"),
        pattern=p.get("filterPattern") or "", token=p.get("nextToken"), limit=p.get("limit", DEFAULT_LIMIT),
    )
    page = await services.logs.filter_events(command)
    body: dict[str, Any] = {
        "events": [
            {"logStreamName": e.stream, "timestamp": e.timestamp_ms, "message": e.message,
             "ingestionTime": e.ingestion_ms, "eventId": str(e.id)}
            for e in page.events
        ],
        "searchedLogStreams": [],
    }
    if page.next_token:
        body["nextToken"] = page.next_token
    return Reply(body)


async def start_live_tail(services: Services, request: Request) -> Reply:
    raise LogsNotImplemented(
        "Firebox does not offer StartLiveTail (an HTTP/2 event stream); poll FilterLogEvents with a startTime "
        "instead, as `aws logs tail --follow` and `firebox logs NAME --follow` do."
    )


HANDLERS: dict[str, Handler] = {
    "GetLogEvents": get_log_events,
    "FilterLogEvents": filter_log_events,
    "StartLiveTail": start_live_tail,
}
