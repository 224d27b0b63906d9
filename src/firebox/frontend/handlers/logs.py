"""CloudWatch Logs (JSON 1.1, `X-Amz-Target: Logs_20140328.*`): FilterLogEvents so far, so that
`firebox logs` and boto3's `logs` client read function logs. The rest of the Logs API, filter
patterns and retention come with the logs issue."""

from __future__ import annotations

from typing import Any

from firebox.errors import InvalidParameterValue, NotImplementedYet
from firebox.frontend.api import Handler, Reply, Request, Services

DEFAULT_LIMIT = 10_000


def _group(params: dict[str, Any]) -> str:
    group = params.get("logGroupName") or params.get("logGroupIdentifier")
    if not group:
        raise InvalidParameterValue("Either logGroupName or logGroupIdentifier must be specified.")
    return str(group).rsplit(":log-group:", 1)[-1]


async def filter_log_events(services: Services, request: Request) -> Reply:
    p = request.params
    if p.get("filterPattern"):
        raise NotImplementedYet("Firebox does not support filterPattern in FilterLogEvents yet.")
    if p.get("logStreamNamePrefix"):
        raise NotImplementedYet("Firebox does not support logStreamNamePrefix in FilterLogEvents yet.")
    after = 0
    if p.get("nextToken"):
        if not str(p["nextToken"]).isdigit():
            raise InvalidParameterValue("The specified nextToken is invalid.")
        after = int(p["nextToken"])
    limit = p.get("limit") or DEFAULT_LIMIT
    events = await services.logs.query(
        _group(p), start_ms=p.get("startTime"), end_ms=p.get("endTime"), after_id=after,
        streams=p.get("logStreamNames"), limit=limit + 1,
    )
    body: dict[str, Any] = {
        "events": [
            {"logStreamName": e.stream, "timestamp": e.timestamp_ms, "message": e.message,
             "ingestionTime": e.timestamp_ms, "eventId": str(e.id)}
            for e in events[:limit]
        ],
        "searchedLogStreams": [],
    }
    if len(events) > limit:
        body["nextToken"] = str(events[limit - 1].id)
    return Reply(body)


HANDLERS: dict[str, Handler] = {"FilterLogEvents": filter_log_events}
