"""The dispatcher in process (dispatcher.py), over fake queues: what a pass reads and how long
the loop then sleeps (a pass with no room must not touch the store; due events that lack room
must not make the loop spin: a finishing run wakes it), and admission (an event accepted with
room runs without a pass or a claim, never ahead of events waiting for room)."""

from __future__ import annotations

import asyncio
from typing import Any

from firebox.arns import Scope
from firebox.asyncinvoke.api import QueuedEvent
from firebox.asyncinvoke.dispatcher import LEASE_MS, Dispatcher, DispatchSettings

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

    async def invoke(self, request: Any) -> Any:
        self.invoked.append(request.request_id)

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
