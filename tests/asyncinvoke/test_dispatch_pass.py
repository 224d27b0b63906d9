"""The dispatcher in process (dispatcher.py), over fake queues: what a pass reads and how long
the loop then sleeps (a pass with no room must not touch the store; due events that lack room
must not make the loop spin: a finishing run wakes it; a pass woken only by finished runs claims
for the functions left waiting without listing the queue again), admission (an event accepted
with room runs without a pass or a claim, never ahead of events waiting for room), and
completions (a run gives its slot back before its removal from the queue commits, which waits
for the log records appended before it; `stop` waits for such removals)."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Callable
from typing import Any

import pytest

from firebox.arns import FunctionRef, Scope
from firebox.asyncinvoke.api import QueuedEvent
from firebox.asyncinvoke.dispatcher import LEASE_MS, Dispatcher, DispatchSettings
from firebox.asyncinvoke.service import AsyncInvokeService
from firebox.control.api import State

NOW_S = 1_000.0


class FakeQueue:
    def __init__(self, due: list[str], later_ms: int | None) -> None:
        self.due, self.later_ms = due, later_ms
        self.reads = 0
        self.claims: list[tuple[str, int]] = []

    async def due_functions(self, now_ms: int) -> tuple[list[str], int | None]:
        self.reads += 1
        return self.due, self.later_ms

    async def claim(self, function_name: str, now_ms: int, limit: int, lease_ms: int) -> list[QueuedEvent]:
        self.claims.append((function_name, limit))
        return []


class FakeRegistry:
    async def get_function(self, ref: Any) -> Any:
        class Details:
            reserved_concurrency = None

        return Details()


def _dispatcher(queue: FakeQueue, **settings: Any) -> Dispatcher:
    return Dispatcher(queue, None, FakeRegistry(), None, Scope("000000000000", "us-east-1"),  # type: ignore[arg-type]
                      DispatchSettings(**settings), clock=lambda: NOW_S)


def test_a_dispatcher_without_room_does_not_read_the_queue() -> None:
    queue = FakeQueue(["f"], None)
    dispatcher = _dispatcher(queue, concurrency=0, idle_poll_s=1.0)
    assert asyncio.run(dispatcher._pass()) == 1.0
    assert queue.reads == 0


def test_due_events_that_lack_room_do_not_make_the_loop_spin() -> None:
    # f is due but already runs its per-function share: the pass claims nothing and the loop
    # waits to be woken (by a finishing run), not 0 s.
    queue = FakeQueue(["f"], None)
    dispatcher = _dispatcher(queue, per_function=1, idle_poll_s=1.0)
    dispatcher._in_flight["f"] = 1
    assert asyncio.run(dispatcher._pass()) == 1.0
    assert (queue.reads, queue.claims) == (1, [])


def test_the_loop_sleeps_until_the_next_later_due_time() -> None:
    queue = FakeQueue(["f", "g"], int(NOW_S * 1000) + 250)
    dispatcher = _dispatcher(queue, per_function=3, concurrency=4, idle_poll_s=1.0)
    assert asyncio.run(dispatcher._pass()) == 0.25
    # The rotation starts at f; each function is offered its share within the global room.
    assert queue.claims == [("f", 3), ("g", 3)]


# -- admission: accepted events that start without a pass -----------------------------------


class RunningQueue(FakeQueue):
    run_id = "this-run"

    def __init__(self, due: list[str]) -> None:
        super().__init__(due, None)
        self.finished: list[str] = []

    async def requeue_orphans(self, now_ms: int) -> int:
        return 0

    async def finish(self, event: QueuedEvent, *, succeeded: bool = True) -> None:
        self.finished.append(event.request_id)


class RecordingInvoker:
    def __init__(self) -> None:
        self.invoked: list[str] = []
        self.queued: list[bool] = []  # each request's `queued`: the dispatcher's say so

    async def invoke(self, request: Any) -> Any:
        self.invoked.append(request.request_id)
        self.queued.append(request.queued)

        class Result:
            payload, executed_version, function_error = b"null", "$LATEST", None

        return Result()


class ConfigRegistry(FakeRegistry):
    async def find_event_invoke_config(self, ref: Any) -> None:
        return None


def _accepted(n: int, name: str = "f") -> QueuedEvent:
    now_ms = int(NOW_S * 1000)
    return QueuedEvent(f"req-{n}", name, None, b"{}", enqueued_at_ms=now_ms, due_ms=now_ms)


async def _started(queue: RunningQueue, invoker: RecordingInvoker, **settings: Any) -> Dispatcher:
    dispatcher = Dispatcher(queue, invoker, ConfigRegistry(), None, Scope("000000000000", "us-east-1"),  # type: ignore[arg-type]
                            DispatchSettings(**settings), clock=lambda: NOW_S)
    assert dispatcher.admit(_accepted(0), None) is None  # not running yet
    await dispatcher.start()
    for _ in range(10):  # the first pass (nothing due) tells it there is no backlog
        await asyncio.sleep(0)
    return dispatcher


def test_an_event_accepted_with_room_is_admitted_claimed_and_run_once_stored() -> None:
    async def main() -> None:
        queue, invoker = RunningQueue([]), RecordingInvoker()
        dispatcher = await _started(queue, invoker, per_function=1)
        claimed = dispatcher.admit(_accepted(1), None)
        assert claimed is not None
        assert (claimed.claimed_by, claimed.due_ms) == ("this-run", int(NOW_S * 1000) + LEASE_MS)
        assert dispatcher.in_flight == 1
        assert dispatcher.admit(_accepted(2), None) is None  # f's share is taken
        stored: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        dispatcher.run_admitted(claimed, stored)
        await asyncio.sleep(0.01)
        assert invoker.invoked == []  # not before its commit
        reads = queue.reads
        stored.set_result(None)
        for _ in range(50):
            await asyncio.sleep(0)
        assert (invoker.invoked, queue.finished, dispatcher.in_flight) == (["req-1"], ["req-1"], 0)
        assert invoker.queued == [True]  # nobody waits on it: the queue's fsync may hold the loop
        # No event waited for room: the finished run does not send the loop to read the queue.
        assert queue.reads == reads
        await dispatcher.stop()

    asyncio.run(main())


def test_an_admitted_event_whose_commit_failed_gives_its_slot_back_unrun() -> None:
    async def main() -> None:
        queue, invoker = RunningQueue([]), RecordingInvoker()
        dispatcher = await _started(queue, invoker)
        claimed = dispatcher.admit(_accepted(1), None)
        assert claimed is not None
        stored: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        dispatcher.run_admitted(claimed, stored)
        stored.set_exception(RuntimeError("disk full"))
        for _ in range(10):
            await asyncio.sleep(0)
        assert (invoker.invoked, dispatcher.in_flight) == ([], 0)
        stored.exception()  # the accepting caller's to report
        await dispatcher.stop()

    asyncio.run(main())


def test_nothing_is_admitted_while_due_events_wait_for_room() -> None:
    async def main() -> None:
        # g is due and its share is full: the pass leaves it waiting, so a new event of f
        # queues behind it (fairness) instead of taking a slot first.
        queue, invoker = RunningQueue(["g"]), RecordingInvoker()
        dispatcher = await _started(queue, invoker, per_function=0)
        assert dispatcher.admit(_accepted(1, "f"), None) is None
        assert dispatcher.admit(_accepted(2, "g"), None) is None
        await dispatcher.stop()

    asyncio.run(main())


def test_reserved_concurrency_bounds_admission() -> None:
    async def main() -> None:
        queue, invoker = RunningQueue([]), RecordingInvoker()
        dispatcher = await _started(queue, invoker)
        assert dispatcher.admit(_accepted(1), 1) is not None
        assert dispatcher.admit(_accepted(2), 1) is None
        await dispatcher.stop()

    asyncio.run(main())


async def _until(probe: Callable[[], bool], what: str, deadline_s: float = 5.0) -> None:
    end = time.monotonic() + deadline_s
    while not probe():
        assert time.monotonic() < end, f"timed out after {deadline_s} s waiting for {what}"
        await asyncio.sleep(0)


# -- a backlog drained by finished runs --------------------------------------------------------


class BacklogQueue(RunningQueue):
    """`n` due events of f, handed out by claims `limit` at a time (f stays listed as due)."""

    def __init__(self, n: int) -> None:
        super().__init__(["f"])
        self.events = [_accepted(i) for i in range(n)]

    async def claim(self, function_name: str, now_ms: int, limit: int, lease_ms: int) -> list[QueuedEvent]:
        self.claims.append((function_name, limit))
        taken, self.events = self.events[:limit], self.events[limit:]
        return [dataclasses.replace(e, due_ms=now_ms + lease_ms, claimed_by=self.run_id) for e in taken]


class HeldInvoker(RecordingInvoker):
    """Each invocation waits until the test releases it."""

    def __init__(self) -> None:
        super().__init__()
        self.started: list[str] = []
        self.gates: dict[str, asyncio.Future[None]] = {}

    def _gate(self, request_id: str) -> asyncio.Future[None]:
        return self.gates.setdefault(request_id, asyncio.get_running_loop().create_future())

    def release(self, request_id: str) -> None:
        self._gate(request_id).set_result(None)

    async def invoke(self, request: Any) -> Any:
        self.started.append(request.request_id)
        await self._gate(request.request_id)
        return await super().invoke(request)


def test_a_pass_woken_by_finished_runs_claims_for_the_waiting_functions_without_a_read() -> None:
    async def main() -> None:
        # f has 4 due events and room for one at a time; the idle poll is long, so no timer
        # expires: only finished runs (and the one notify) wake the loop.
        queue, invoker = BacklogQueue(4), HeldInvoker()
        dispatcher = await _started(queue, invoker, per_function=1, idle_poll_s=60.0)
        await _until(lambda: invoker.started == ["req-0"], "the first claimed event to start")
        assert (queue.reads, queue.claims) == (1, [("f", 1)])  # the first pass lists the queue

        invoker.release("req-0")
        await _until(lambda: invoker.started == ["req-0", "req-1"], "the next event to start")
        # Woken by the finished run alone: it claims for f straight away, listing nothing.
        assert (queue.reads, queue.claims) == (1, [("f", 1), ("f", 1)])
        await _until(lambda: queue.finished == ["req-0"], "the first completion")

        # Something was accepted: the next pass lists the queue again (f has no room yet).
        dispatcher.notify()
        await _until(lambda: queue.reads == 2, "a pass that lists the queue after notify")
        assert len(queue.claims) == 2

        invoker.release("req-1")
        await _until(lambda: invoker.started == ["req-0", "req-1", "req-2"], "the third event to start")
        assert (queue.reads, len(queue.claims)) == (2, 3)  # again no read
        invoker.release("req-2")
        await _until(lambda: invoker.started[-1:] == ["req-3"], "the last event to start")
        invoker.release("req-3")
        # The pass woken by the last run claims for f once more, finds nothing and leaves the
        # loop idle (stopped only then: a wake racing the stop would delay it).
        await _until(lambda: len(queue.claims) == 5 and len(queue.finished) == 4, "the pass after the last run")
        assert (queue.reads, queue.finished, dispatcher.in_flight) == (2, ["req-0", "req-1", "req-2", "req-3"], 0)
        await dispatcher.stop()

    asyncio.run(asyncio.wait_for(main(), 30))


# -- completions that commit after the slot is given back ----------------------------------------


class HeldFinishQueue(RunningQueue):
    """A queue whose completions wait until the test resolves `committed`."""

    def __init__(self) -> None:
        super().__init__([])
        self.committed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.finishing: list[str] = []
        self.cancelled: list[str] = []

    async def finish(self, event: QueuedEvent, *, succeeded: bool = True) -> None:
        self.finishing.append(event.request_id)
        try:
            await self.committed
        except asyncio.CancelledError:
            self.cancelled.append(event.request_id)
            raise
        await super().finish(event, succeeded=succeeded)


def test_a_run_gives_its_slot_back_before_its_completion_commits_and_stop_waits_for_it() -> None:
    async def main() -> None:
        queue, invoker = HeldFinishQueue(), RecordingInvoker()
        dispatcher = await _started(queue, invoker, per_function=1)
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        done.set_result(None)
        first = dispatcher.admit(_accepted(1), None)
        assert first is not None
        dispatcher.run_admitted(first, done)
        await _until(lambda: queue.finishing == ["req-1"], "the first completion to start")
        # The outcome is known: f's only slot is free while the completion is still pending.
        assert (dispatcher.in_flight, queue.finished) == (0, [])
        second = dispatcher.admit(_accepted(2), None)
        assert second is not None
        dispatcher.run_admitted(second, done)
        await _until(lambda: queue.finishing == ["req-1", "req-2"], "the second completion to start")
        assert (invoker.invoked, dispatcher.in_flight, queue.finished) == (["req-1", "req-2"], 0, [])

        # stop() neither returns before the pending completions land nor cancels them.
        stopping = asyncio.create_task(dispatcher.stop())
        for _ in range(50):
            await asyncio.sleep(0)
        assert not stopping.done()
        assert (queue.finished, queue.cancelled) == ([], [])
        queue.committed.set_result(None)
        await asyncio.wait_for(stopping, timeout=5)
        assert (queue.finished, queue.cancelled) == (["req-1", "req-2"], [])

    asyncio.run(asyncio.wait_for(main(), 30))


class FailingInvoker(RecordingInvoker):
    async def invoke(self, request: Any) -> Any:
        self.invoked.append(request.request_id)

        class Result:
            payload, executed_version, function_error = b"{}", "$LATEST", "Unhandled"

        return Result()


class RetryingQueue(RunningQueue):
    def __init__(self) -> None:
        super().__init__([])
        self.rescheduled: list[tuple[str, int]] = []

    async def reschedule(self, event: QueuedEvent, *, due_ms: int, attempts: int, system_retries: int) -> None:
        self.rescheduled.append((event.request_id, attempts))


@pytest.mark.parametrize("fails", [False, True])
def test_an_outcome_commits_only_once_the_log_records_before_it_are_written(fails: bool) -> None:
    """The crash-safety of logs: an event's removal, or its retry after a function error,
    waits on the log barrier (a removal without holding its slot meanwhile)."""

    async def main() -> None:
        queue = RetryingQueue()
        invoker = FailingInvoker() if fails else RecordingInvoker()
        logs_written: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        barriers = []

        async def written() -> None:
            barriers.append(len(invoker.invoked))
            await logs_written

        dispatcher = Dispatcher(queue, invoker, ConfigRegistry(), None,  # type: ignore[arg-type]
                                Scope("000000000000", "us-east-1"), DispatchSettings(per_function=1),
                                clock=lambda: NOW_S, logs_written=written)
        await dispatcher.start()
        for _ in range(10):
            await asyncio.sleep(0)
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        done.set_result(None)
        claimed = dispatcher.admit(_accepted(1), None)
        assert claimed is not None
        dispatcher.run_admitted(claimed, done)
        await _until(lambda: barriers == [1], "the outcome to wait on the log barrier")
        for _ in range(50):
            await asyncio.sleep(0)
        assert (invoker.invoked, queue.finished, queue.rescheduled) == (["req-1"], [], [])
        assert dispatcher.in_flight == (1 if fails else 0)  # a retry is committed before the slot goes
        logs_written.set_result(None)
        if fails:
            await _until(lambda: queue.rescheduled == [("req-1", 1)], "the retry once the logs are written")
        else:
            await _until(lambda: queue.finished == ["req-1"], "the completion once the logs are written")
        await dispatcher.stop()

    asyncio.run(asyncio.wait_for(main(), 30))


# -- the 202 of an admitted event goes out before the event starts --------------------------------


class StoringQueue(RunningQueue):
    """Admitted events are stored by `start_enqueue`: the test decides when that commit lands."""

    def __init__(self) -> None:
        super().__init__([])
        self.stored: asyncio.Future[None] | None = None

    def start_enqueue(self, event: QueuedEvent) -> asyncio.Future[None]:
        self.stored = asyncio.get_running_loop().create_future()
        return self.stored


class ActiveRegistry(ConfigRegistry):
    async def get_function(self, ref: Any) -> Any:
        class Config:
            state = State.ACTIVE

        class Details:
            config, reserved_concurrency = Config(), None

        return Details()


def test_an_admitted_events_202_goes_out_before_the_event_starts() -> None:
    """Both the accepting request and the run wait on the same commit; the request registered
    first (`accept` shields the commit before the run's task first steps), so it resumes first
    and its whole answer (the 202) is written before the event's invocation begins."""

    async def main() -> None:
        queue, order = StoringQueue(), []

        class OrderedInvoker(RecordingInvoker):
            async def invoke(self, request: Any) -> Any:
                order.append("invoke")
                return await super().invoke(request)

        dispatcher = await _started(queue, OrderedInvoker())
        service = AsyncInvokeService(queue, ActiveRegistry())  # type: ignore[arg-type]
        service.attach(dispatcher)

        async def request() -> None:
            await service.accept(FunctionRef("f"), b"{}", "req-1")
            order.append("202")  # what the handler does next, in the same step: answer

        answering = asyncio.create_task(request())
        await _until(lambda: queue.stored is not None, "the event's commit to start")
        assert queue.stored is not None
        for _ in range(5):  # loop turns (FIFO), not time: the run's task takes its first step
            await asyncio.sleep(0)  # and waits on the commit, as it has long done when one lands
        queue.stored.set_result(None)
        await answering
        await _until(lambda: len(order) == 2, "the event to run")
        assert order == ["202", "invoke"]
        await _until(lambda: dispatcher.in_flight == 0, "the run to end")
        await dispatcher.stop()

    asyncio.run(asyncio.wait_for(main(), 30))
