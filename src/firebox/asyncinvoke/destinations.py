"""Where the outcome of an asynchronous invocation goes: destinations and dead-letter targets.

A destination receives Lambda's destination record (below); a dead-letter target receives the
original event body only. Lambda functions are the targets so far: delivering to one means
accepting an asynchronous event for it, so its own retries and destinations apply. Queues and
topics plug in as more `Target`s when those services exist.

    {"version": "1.0", "timestamp": "2026-01-01T00:00:00.000Z",
     "requestContext": {"requestId", "functionArn", "condition", "approximateInvokeCount"},
     "requestPayload": <the event>,
     "responseContext": {"statusCode": 200, "executedVersion": "$LATEST", "functionError"?},
     "responsePayload": <what the function returned, or its error>}

`responseContext` and `responsePayload` are left out when the event never ran (its age was
exceeded, or the function has reserved concurrency 0).
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from dataclasses import dataclass
from typing import Any, Protocol

from firebox.arns import FunctionRef, Scope, parse_function_arn
from firebox.asyncinvoke.api import QueuedEvent
from firebox.errors import ApiError

log = logging.getLogger(__name__)


class Accept(Protocol):
    async def __call__(self, ref: FunctionRef, payload: bytes, request_id: str) -> None: ...


@dataclass(frozen=True)
class Response:
    """What the last invocation answered (None when the event never ran)."""

    payload: bytes
    executed_version: str
    function_error: str | None


def _json_or_text(data: bytes) -> Any:
    try:
        return json.loads(data) if data else None
    except ValueError:
        return data.decode(errors="replace")


def destination_record(
    event: QueuedEvent, function_arn: str, condition: str, invoke_count: int, response: Response | None
) -> bytes:
    moment = time.time()
    record: dict[str, Any] = {
        "version": "1.0",
        "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(moment)) + f".{int(moment * 1000) % 1000:03d}Z",
        "requestContext": {
            "requestId": event.request_id,
            "functionArn": function_arn,
            "condition": condition,
            "approximateInvokeCount": invoke_count,
        },
        "requestPayload": _json_or_text(event.payload),
    }
    if response is not None:
        context: dict[str, Any] = {"statusCode": 200, "executedVersion": response.executed_version}
        if response.function_error:
            context["functionError"] = response.function_error
        record["responseContext"] = context
        record["responsePayload"] = _json_or_text(response.payload)
    return json.dumps(record).encode()


class Targets:
    """Delivers records and dead letters to the ARNs configured for them."""

    def __init__(self, scope: Scope, accept: Accept) -> None:
        self._scope = scope
        self._accept = accept

    async def deliver(self, arn: str, body: bytes, *, what: str) -> bool:
        """Send `body` to `arn`; failures are logged, never raised (the event is done either way)."""
        try:
            ref = parse_function_arn(arn, self._scope)
            await self._accept(ref, body, str(uuid.uuid4()))
        except ApiError as exc:
            log.warning("could not deliver %s to %s: %s", what, arn, exc.message)
            return False
        return True
