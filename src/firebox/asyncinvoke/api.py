"""Asynchronous invocation (`InvocationType=Event`): a durable queue with Lambda's retries.

Contract
--------
- `AsyncInvoker.accept(ref, payload, request_id)` returns only after the event is durably stored
  (committed with fsync); the frontend answers 202 after that and never before. An accepted
  event is never lost, not by a crash of the sandbox, the worker or the whole server; it may run
  more than once (at-least-once), always with the same request id.
- Dispatchers claim due events and run them through the same synchronous path as `Invoke`
  (`invoker.api.Invoker`), then:
    success                  -> delete; the OnSuccess destination gets a `Success` record;
    function error (incl. timeout, crash)
                             -> retry up to `MaximumRetryAttempts` (default 2), after
                                `retry_base_s` x attempt (Lambda: about 1 then 2 minutes);
    throttle or system error -> back to the queue with exponential backoff (1 s doubling to
                                5 min), never counted as an attempt;
    older than `MaximumEventAgeInSeconds` (default 6 h) when due
                             -> `EventAgeExceeded`;
    retries exhausted        -> `RetriesExhausted`;
  a failed event goes to the OnFailure destination (Lambda's destination record) and to the
  function's dead-letter target (the original event body). Reserved concurrency 0 fails events
  at once with the `ZeroReservedConcurrency` condition.
- Fairness: each function has at most `per_function` events in flight, and the dispatcher
  visits functions with due events in rotation, so a flood of one function leaves room for the
  others (see `dispatcher.py` for the bound).
- The queue's interface fits PostgreSQL's `FOR UPDATE SKIP LOCKED`: a claim is a lease that
  expires, so events claimed by a dispatcher that died become due again; at start, a server
  re-queues at once what its previous run had claimed.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Protocol, TypeVar

from firebox.arns import FunctionRef
from firebox.store.api import Tx

T = TypeVar("T")


@dataclass(frozen=True)
class QueuedEvent:
    request_id: str
    function_name: str
    qualifier: str | None
    payload: bytes
    enqueued_at_ms: int
    due_ms: int
    attempts: int = 0  # invocations that ended in a function error
    system_retries: int = 0  # throttles and platform errors (not attempts)
    claimed_by: str | None = None

    @property
    def ref(self) -> FunctionRef:
        return FunctionRef(self.function_name, self.qualifier)


@dataclass(frozen=True)
class FunctionEventStats:
    queued: int  # due now, waiting for a dispatcher
    in_flight: int  # claimed: running, or ran and its outcome waits for its log lines to be written
    retrying: int  # waiting for a retry or a backoff
    failed: int  # sent to failure handling (destination / dead-letter / dropped)
    succeeded: int


@dataclass(frozen=True)
class CommitStatistics:
    commits: int  # group commits that landed (each one fsync)
    units: int  # queue writes (enqueue, claim, finish, reschedule) they carried
    pending: int  # writes waiting for the next commit


class QueueStore(Protocol):
    """What the queue needs of the metadata store: `store.api.MetadataStore`, plus commits
    without fsync for the writes whose loss to a power cut only repeats work (queue.py)."""

    async def atomically(self, work: Callable[[Tx], T], *, durable: bool = True, sync_here: bool = False) -> T:
        """`sync_here`: the caller knows nothing else needs the event loop during the fsync,
        which may then run on the loop's own thread (store/sqlite.py)."""
    async def read(self, work: Callable[[Tx], T]) -> T: ...


class EventQueue(Protocol):
    async def enqueue(self, event: QueuedEvent) -> None:
        """Durably store; returns after the commit."""

    async def due_functions(self, now_ms: int) -> tuple[list[str], int | None]:
        """Functions with at least one claimable event due at `now_ms`, and the earliest due
        time after `now_ms` of any event (claimed ones included: their lease end), or None."""

    async def claim(self, function_name: str, now_ms: int, limit: int, lease_ms: int) -> list[QueuedEvent]:
        """Up to `limit` due events of a function, oldest due first, leased for `lease_ms`."""

    async def finish(self, event: QueuedEvent) -> None:
        """Remove a claimed event (it succeeded or was handed to failure handling)."""

    async def reschedule(self, event: QueuedEvent, *, due_ms: int, attempts: int, system_retries: int) -> None:
        """Release a claimed event to become due again at `due_ms`."""

    async def requeue_orphans(self, now_ms: int) -> int:
        """Make events claimed by an earlier run of this queue due now; returns how many."""

    async def statistics(self, now_ms: int) -> Mapping[str, FunctionEventStats]: ...


class AsyncInvoker(Protocol):
    async def accept(self, ref: FunctionRef, payload: bytes, request_id: str) -> None:
        """Check the function exists, store the event durably, wake a dispatcher."""

    async def statistics(self) -> Mapping[str, FunctionEventStats]: ...
