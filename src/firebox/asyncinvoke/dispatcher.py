"""Dispatchers: drain the event queue through the synchronous invoke path, with Lambda's retries.

Scheduling
----------
One loop owns all dispatching. Each pass lists the functions that have due events, starting the
list one further along each pass (rotation), and claims for each function at most
`per_function - in_flight(function)` events while the global `concurrency` has room. Each claimed
event runs as its own task in the dispatcher's task group. The loop is woken by what can give a
pass something to do: an event enqueued, an event rescheduled (its new due time may come before
the loop's), and a finished run while due events wait for room (the backlog). Otherwise it
sleeps until the next due time (a retry, a backoff, a lease's end), or `idle_poll_s` at most.
A pass with no room at all reads nothing. A pass woken only by finished runs (nothing accepted
or rescheduled since the last read, no timer expired) claims straight away for the functions
the last pass left waiting, without listing the queue: draining a backlog costs one claim
commit per pass, not a read and a commit.

A run gives its slot back as soon as its outcome is known; the event's removal from the queue
commits after that (see `_finish`), so a slot never waits on the store.

Admission: an event accepted while the dispatcher has room and no backlog (no due event left
waiting by the last pass) skips the queue's round trip: `admit` takes its slot and it is stored
already claimed, so its durable enqueue doubles as its claim, and it starts once that commit is
on disk. Without admission each event cost a dispatch pass (a read) and a claim (a commit)
besides its enqueue and its completion. With a backlog, accepted events queue behind it.

Fairness bound (what the fairness test checks): a function g with an event due while another
function f floods the queue waits for at most one pass, provided fewer than `concurrency`
events are in flight: f can never hold more than `per_function` of the `concurrency` slots,
admitted or claimed, and once f's events wait for room nothing is admitted ahead of them.
A pass costs a few store reads (milliseconds), so g's event starts within ~tens of ms of being
accepted, plus its own cold start, however deep f's backlog is.

Retry arithmetic (Lambda's): function errors are retried `retry_base_s * attempt` after the
failure (60 s then 120 s by default); throttles and platform errors back off
`min(1 s * 2^(n-1), 300 s)` and do not count as attempts.

Crash safety of logs: an invocation's log lines are buffered by the log store for a few
milliseconds before they are written. An event's outcome (its removal, or its retry after a
function error, which counts an attempt) is committed only once every log record appended
before it is written (`logs_written`), so a crash in between runs the event again rather than
leaving it done without its lines. A throttle's backoff ran nothing and does not wait.

Known caveats: events are at-least-once. An event whose invocation finished but whose
completion was not yet committed when the server died runs again after restart.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from firebox.arns import LATEST, FunctionRef, Scope
from firebox.asyncinvoke.api import QueuedEvent
from firebox.asyncinvoke.destinations import Response, Targets, destination_record
from firebox.asyncinvoke.queue import StoreEventQueue
from firebox.control.api import EventInvokeConfig, Registry
from firebox.errors import ApiError, ResourceNotFound, TooManyRequests
from firebox.invoker.api import InvocationType, Invoker, InvokeRequest

log = logging.getLogger(__name__)

DEFAULT_RETRIES = 2
DEFAULT_MAX_AGE_S = 21600
# A claim outlives the longest invocation (900 s) so that a live dispatcher never loses its
# events to another; a dead one's are re-queued at the next start.
LEASE_MS = 930_000


@dataclass(frozen=True)
class DispatchSettings:
    retry_base_s: float = 60.0
    max_backoff_s: float = 300.0
    concurrency: int = 32
    per_function: int = 8
    idle_poll_s: float = 1.0


class Dispatcher:
    def __init__(
        self,
        queue: StoreEventQueue,
        invoker: Invoker,
        registry: Registry,
        targets: Targets,
        scope: Scope,
        settings: DispatchSettings,
        *,
        clock: Callable[[], float] = time.time,
        logs_written: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        """`logs_written`: waits until the log records appended so far are written (the log
        store's `written`); None when nothing logs."""
        self._queue = queue
        self._logs_written = logs_written
        self._invoker = invoker
        self._registry = registry
        self._targets = targets
        self._scope = scope
        self._settings = settings
        self._clock = clock
        self._wake = asyncio.Event()
        self._in_flight: dict[str, int] = defaultdict(int)
        self._rotation = 0
        self._loop_task: asyncio.Task[None] | None = None
        self._runs: set[asyncio.Task[None]] = set()
        self._finishing: set[asyncio.Future[None]] = set()  # completions not yet committed
        # A pass left due events unclaimed for want of room (or has not looked yet): accepted
        # events then queue behind them rather than start at once (see `admit`).
        self._backlog = True
        # The functions the last pass left waiting for room, and whether the queue may hold
        # due events it has not seen (an event accepted or rescheduled, a timer expired): while
        # it may not, a pass woken by finished runs claims for those functions without
        # reading the queue first.
        self._waiting: list[str] = []
        self._fresh = True
        self._next_due: int | None = None

    def _now_ms(self) -> int:
        return int(self._clock() * 1000)

    def notify(self) -> None:
        self._fresh = True
        self._wake.set()

    def admit(self, event: QueuedEvent, reserved: int | None) -> QueuedEvent | None:
        """Take a slot for an event being accepted, if it may start at once: returns the event
        claimed by this dispatcher, to be stored so and handed to `run_admitted` with its commit;
        or None, and the caller enqueues it as it is and calls `notify`.

        At once means the loop runs, no queued event waits for room (they go first: the
        fairness bound above holds), and the function has room by the rules of a pass
        (`reserved`: the function's reserved concurrency). An admitted event costs the store
        no dispatch pass and no claim: its durable enqueue is its claim. If the server dies
        before it finishes, the next start re-queues it like any event claimed by a dead run."""
        if self._loop_task is None or self._backlog:
            return None
        if self._room(event.function_name, reserved) <= 0:
            return None
        self._in_flight[event.function_name] += 1
        return dataclasses.replace(event, due_ms=event.due_ms + LEASE_MS, claimed_by=self._queue.run_id)

    def run_admitted(self, event: QueuedEvent, stored: asyncio.Future[None]) -> None:
        """Run an admitted event once `stored`, the commit that stores it, resolves (a failed
        commit gives its slot back: the caller of accept got the error)."""
        self._spawn(event, stored)

    @property
    def in_flight(self) -> int:
        return sum(self._in_flight.values())

    async def start(self) -> None:
        if self._loop_task is None:
            await self._queue.requeue_orphans(self._now_ms())
            self._loop_task = asyncio.create_task(self._run_forever(), name="firebox-dispatcher")

    async def stop(self) -> None:
        """Stop claiming; cancel running events (they stay claimed and are re-queued at the
        next start, so nothing accepted is lost)."""
        if self._loop_task is not None:
            self._loop_task.cancel()
            # wait() rather than awaiting the task under suppress(CancelledError): a
            # cancellation of stop()'s own caller must still reach it.
            await asyncio.wait([self._loop_task])
            self._loop_task = None
        for task in list(self._runs):
            task.cancel()
        await asyncio.gather(*self._runs, return_exceptions=True)
        await asyncio.gather(*self._finishing, return_exceptions=True)

    async def _run_forever(self) -> None:
        while True:
            self._wake.clear()
            try:
                timeout = await self._pass()
            except Exception:  # the store hiccuped: try again shortly, never die
                log.exception("dispatch pass failed")
                self._fresh = True
                timeout = self._settings.idle_poll_s
            # A timer rather than asyncio.wait_for: on Python 3.11, wait_for drops a
            # cancellation that arrives as the wait ends, and stop() would then wait forever.
            timer = asyncio.get_running_loop().call_later(timeout, self._time_is_up)
            try:
                await self._wake.wait()
            finally:
                timer.cancel()

    def _time_is_up(self) -> None:
        self._fresh = True  # a retry, a backoff or a lease may have come due
        self._wake.set()

    async def _pass(self) -> float:
        """Claim what there is room for; returns how long to sleep unless woken first."""
        if self.in_flight >= self._settings.concurrency:
            # No room at all: reading the queue would find nothing to do. A finishing run
            # wakes the loop, so a full dispatcher costs the store nothing per accepted event.
            self._backlog = True
            return self._settings.idle_poll_s
        now = self._now_ms()
        if self._fresh or not self._waiting:
            self._fresh = False  # before the read: what is accepted during it makes it fresh again
            functions, self._next_due = await self._queue.due_functions(now)
        else:
            # Woken by finished runs, nothing new accepted: only the functions left waiting can
            # have due events, and a claim finds out how many (the read would cost as much).
            functions = self._waiting
        waiting = []
        if functions:
            start = self._rotation % len(functions)
            self._rotation += 1
            for name in functions[start:] + functions[:start]:
                if await self._claim(name, now):
                    waiting.append(name)
        self._waiting = waiting
        self._backlog = bool(waiting)
        # Due events left unclaimed lack room, and a finishing run wakes the loop; so sleep
        # until the next event that is not yet due (a retry, a backoff, an expiring lease).
        if self._next_due is None:
            return self._settings.idle_poll_s
        return max(0.0, min(self._settings.idle_poll_s, (self._next_due - self._now_ms()) / 1000))

    async def _claim(self, name: str, now: int) -> bool:
        """Claim due events of `name` it has room for; True when some may be left waiting."""
        if self._room(name, None) <= 0:
            return True
        room = self._room(name, await self._reserved(name))
        if room <= 0:
            return True
        claimed = await self._queue.claim(name, now, room, LEASE_MS)
        for event in claimed:
            self._in_flight[name] += 1
            self._spawn(event, None)
        return len(claimed) == room

    def _room(self, name: str, reserved: int | None) -> int:
        running = self._in_flight.get(name, 0)
        room = min(self._settings.per_function - running, self._settings.concurrency - self.in_flight)
        if reserved:
            # Claiming more than the reservation only throttles the extra events into
            # growing backoffs while capacity frees up; reserved 0 still claims, so its
            # events fail at once with ZeroReservedConcurrency.
            room = min(room, reserved - running)
        return room

    def _spawn(self, event: QueuedEvent, stored: asyncio.Future[None] | None) -> None:
        task = asyncio.create_task(self._run(event, stored))
        self._runs.add(task)
        task.add_done_callback(self._runs.discard)

    # -- one event -----------------------------------------------------------------------------

    async def _run(self, event: QueuedEvent, stored: asyncio.Future[None] | None) -> None:
        try:
            if stored is not None:
                try:
                    await asyncio.shield(stored)  # shielded: the accepting caller awaits it too
                except Exception:  # noqa: BLE001 - reported to the caller of accept
                    return  # not stored, so not accepted: nothing to run
            await self._attempt(event)
        except asyncio.CancelledError:
            raise
        except Exception:  # leave it claimed: it is re-queued at the next start
            log.exception("event %s of %s failed unexpectedly", event.request_id, event.function_name)
        finally:
            self._in_flight[event.function_name] -= 1
            if not self._in_flight[event.function_name]:
                del self._in_flight[event.function_name]
            if self._backlog:  # its slot can take a waiting event; else a pass finds nothing
                self._wake.set()

    async def _attempt(self, event: QueuedEvent) -> None:
        config = await self._config(event.ref)
        max_age_ms = (config.maximum_event_age_s or DEFAULT_MAX_AGE_S) * 1000
        retries = DEFAULT_RETRIES if config.maximum_retry_attempts is None else config.maximum_retry_attempts
        if self._now_ms() - event.enqueued_at_ms > max_age_ms:
            await self._fail(event, config, "EventAgeExceeded", None)
            return
        try:
            result = await self._invoker.invoke(
                InvokeRequest(event.ref, event.payload, event.request_id, InvocationType.REQUEST_RESPONSE,
                              queued=True)
            )
        except ResourceNotFound:
            log.warning("dropping event %s: function %s no longer exists", event.request_id, event.function_name)
            self._finish(event, succeeded=False)
            return
        except TooManyRequests:
            if await self._zero_reserved(event.function_name):
                await self._fail(event, config, "ZeroReservedConcurrency", None)
            else:
                await self._back_off(event)
            return
        except ApiError as exc:  # Pending, a platform error: not the function's fault
            log.info("event %s of %s: %s; backing off", event.request_id, event.function_name, exc.message)
            await self._back_off(event)
            return
        response = Response(result.payload, result.executed_version, result.function_error)
        if result.function_error is None:
            if config.on_success:
                record = destination_record(event, self._arn(event), "Success", event.attempts + 1, response)
                await self._targets.deliver(config.on_success, record, what="a success record")
            self._finish(event, succeeded=True)
            return
        attempts = event.attempts + 1
        if attempts <= retries:
            due = self._now_ms() + int(self._settings.retry_base_s * attempts * 1000)
            await self._after_logs()  # the attempt counts: its lines first
            await self._reschedule(event, due_ms=due, attempts=attempts, system_retries=event.system_retries)
            return
        await self._fail(dataclasses.replace(event, attempts=attempts), config, "RetriesExhausted", response)

    def _finish(self, event: QueuedEvent, *, succeeded: bool) -> None:
        """Remove a finished event from the queue without holding its slot until that commits:
        the slot is given back as soon as the outcome is known. Losing this write to a crash
        only runs the event again (at-least-once), and no claim can take the event meanwhile,
        its key being its lease end."""
        write = asyncio.ensure_future(self._complete(event, succeeded))
        self._finishing.add(write)
        write.add_done_callback(self._finished)

    async def _complete(self, event: QueuedEvent, succeeded: bool) -> None:
        await self._after_logs()
        await self._queue.finish(event, succeeded=succeeded)

    async def _after_logs(self) -> None:
        """Wait until the lines of the invocation just ended are written (see "Crash safety")."""
        if self._logs_written is not None:
            await self._logs_written()

    def _finished(self, write: asyncio.Future[None]) -> None:
        self._finishing.discard(write)
        if not write.cancelled() and write.exception() is not None:
            log.error("could not remove a finished event (it will run again after a restart): %s", write.exception())

    async def _back_off(self, event: QueuedEvent) -> None:
        retries = event.system_retries + 1
        delay_s = min(self._settings.max_backoff_s, 2 ** (retries - 1))
        await self._reschedule(
            event, due_ms=self._now_ms() + int(delay_s * 1000), attempts=event.attempts, system_retries=retries
        )

    async def _reschedule(self, event: QueuedEvent, *, due_ms: int, attempts: int, system_retries: int) -> None:
        await self._queue.reschedule(event, due_ms=due_ms, attempts=attempts, system_retries=system_retries)
        self.notify()  # the next pass reads the new due time, which may come before the loop's

    async def _fail(self, event: QueuedEvent, config: EventInvokeConfig, condition: str, response: Response | None) -> None:
        if config.on_failure:
            record = destination_record(event, self._arn(event), condition, event.attempts, response)
            await self._targets.deliver(config.on_failure, record, what=f"a {condition} record")
        dead_letter = await self._dead_letter_target(event.ref)
        if dead_letter:
            await self._targets.deliver(dead_letter, event.payload, what="a dead letter")
        if not config.on_failure and not dead_letter:
            log.warning("event %s of %s dropped: %s", event.request_id, event.function_name, condition)
        self._finish(event, succeeded=False)

    async def _config(self, ref: FunctionRef) -> EventInvokeConfig:
        try:
            return await self._registry.find_event_invoke_config(ref) or EventInvokeConfig()
        except ApiError:
            return EventInvokeConfig()

    async def _reserved(self, name: str) -> int | None:
        try:
            return (await self._registry.get_function(FunctionRef(name))).reserved_concurrency
        except ApiError:
            return None

    async def _zero_reserved(self, name: str) -> bool:
        try:
            return await self._registry.get_reserved_concurrency(FunctionRef(name)) == 0
        except ApiError:
            return False

    async def _dead_letter_target(self, ref: FunctionRef) -> str | None:
        try:
            config, _ = await self._registry.get_configuration(ref)
        except ApiError:
            return None
        return config.dead_letter_target_arn

    def _arn(self, event: QueuedEvent) -> str:
        return self._scope.function_arn(event.function_name, event.qualifier or LATEST)

