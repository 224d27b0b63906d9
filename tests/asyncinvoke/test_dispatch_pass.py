"""One dispatch pass, in process (dispatcher.py): what it reads and how long the loop then
sleeps. A pass with no room must not touch the store, and due events that lack room must not
make the loop spin: a finishing run wakes it."""

from __future__ import annotations

import asyncio
from typing import Any

from firebox.arns import Scope
from firebox.asyncinvoke.api import QueuedEvent
from firebox.asyncinvoke.dispatcher import Dispatcher, DispatchSettings

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
