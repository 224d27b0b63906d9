"""Asynchronous invocation (`InvocationType=Event`): a durable queue with Lambda's retries.

Contract
--------
- `enqueue(event)` returns only after the event is durably stored; the frontend answers 202
  after that and never before. An accepted event is never lost, not by a crash of the sandbox,
  the worker or the whole server; it may run more than once (at-least-once).
- Dispatchers claim due events, run them through the same synchronous path as `Invoke`
  (`invoker.api.Invoker`), and then: delete them on success; on a function error, schedule a
  retry (up to `MaximumRetryAttempts`, default 2, after about 1 then 2 minutes) with the same
  request id; on a throttle or system error, back off (1 s growing to 5 min) without counting an
  attempt; past `MaximumEventAgeInSeconds` (default 6 h), or when retries are exhausted, hand the
  event to the failure destination / dead-letter target.
- The queue's interface fits PostgreSQL's `FOR UPDATE SKIP LOCKED`: claims are leases with an
  expiry, so events claimed by a dispatcher that died become due again.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True)
class QueuedEvent:
    request_id: str
    function_name: str
    qualifier: str | None
    payload: bytes
    enqueued_at_ms: int
    attempts: int = 0


class EventQueue(Protocol):
    async def enqueue(self, event: QueuedEvent) -> None: ...
