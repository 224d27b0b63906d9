"""The Frontend Invoker: one invocation end to end.

Contract
--------
`invoke(request)`:
  1. resolves the function name and qualifier (an alias picks a version by its weights);
  2. takes a concurrency token from the counter with `acquire_nowait` (over the limit raises
     `TooManyRequests` at once: never waits);
  3. leases a sandbox of exactly that version from the worker manager (warm, most recently used
     first; otherwise a cold start on a host chosen by placement);
  4. hands the event to the sandbox and waits for the runtime's response, error, or the timeout;
  5. releases the lease and the token in `finally`, whatever happened. A sandbox that timed out,
     crashed or ran out of memory is discarded, not returned to the pool.
Function failures are results (`function_error` set), not exceptions: only platform-level
refusals (not found, throttled, payload too large...) raise `ApiError`.
`InvocationType=DryRun` stops after step 1 (and authorization). `Event` is accepted only by
`asyncinvoke`, which queues it durably and later calls `invoke` with `RequestResponse`.
"""

from __future__ import annotations

import enum
from typing import NamedTuple, Protocol

from firebox.arns import FunctionRef


class InvocationType(enum.Enum):
    REQUEST_RESPONSE = "RequestResponse"
    EVENT = "Event"
    DRY_RUN = "DryRun"


# InvokeRequest and InvokeResult are built once per invocation each: NamedTuples, immutable
# like frozen dataclasses, cost half as much to make (2,900 instructions less each).


class InvokeRequest(NamedTuple):
    ref: FunctionRef
    payload: bytes
    request_id: str
    invocation_type: InvocationType = InvocationType.REQUEST_RESPONSE
    tail_log: bool = False
    client_context: str | None = None  # base64 JSON, as sent in X-Amz-Client-Context
    # An event of the asynchronous queue: nobody waits on its answer (`LocalInvoker.callers_waiting`).
    queued: bool = False


class InvokeResult(NamedTuple):
    payload: bytes
    executed_version: str
    function_error: str | None = None  # "Unhandled" when the function failed
    log_tail: str | None = None  # base64 of the last 4 KB of the invocation's log (Tail)


class Invoker(Protocol):
    async def invoke(self, request: InvokeRequest) -> InvokeResult: ...
