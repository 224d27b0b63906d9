"""The asynchronous invoker: accept events durably, and dispatch them (see api.py)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping

from firebox.arns import FunctionRef
from firebox.asyncinvoke.api import FunctionEventStats, QueuedEvent
from firebox.asyncinvoke.dispatcher import Dispatcher
from firebox.asyncinvoke.queue import StoreEventQueue
from firebox.control.api import Registry, State
from firebox.errors import RequestTooLarge, ResourceConflict

MAX_ASYNC_PAYLOAD = 1024 * 1024


class AsyncInvokeService:
    def __init__(self, queue: StoreEventQueue, registry: Registry) -> None:
        self._queue = queue
        self._registry = registry
        self._dispatcher: Dispatcher | None = None

    def attach(self, dispatcher: Dispatcher) -> None:
        """The dispatcher needs `accept` (destinations) and `accept` wakes the dispatcher."""
        self._dispatcher = dispatcher

    async def start(self) -> None:
        if self._dispatcher is not None:
            await self._dispatcher.start()

    async def stop(self) -> None:
        if self._dispatcher is not None:
            await self._dispatcher.stop()

    async def accept(self, ref: FunctionRef, payload: bytes, request_id: str) -> None:
        if len(payload) > MAX_ASYNC_PAYLOAD:
            raise RequestTooLarge(
                f"Request must be smaller than {MAX_ASYNC_PAYLOAD} bytes for the InvokeFunction operation"
            )
        # ResourceNotFound before 202. The registry serves this from its cache until the next
        # write, as it does for synchronous invokes: no store round trip on the accept path.
        details = await self._registry.get_function(ref)
        if details.config.state is State.PENDING:
            raise ResourceConflict(
                "The operation cannot be performed at this time. The function is currently in the following state: Pending"
            )
        now_ms = int(time.time() * 1000)
        event = QueuedEvent(request_id, ref.name, ref.qualifier, payload or b"{}", enqueued_at_ms=now_ms, due_ms=now_ms)
        dispatcher = self._dispatcher
        claimed = dispatcher.admit(event, details.reserved_concurrency) if dispatcher is not None else None
        if claimed is None:
            await self._queue.enqueue(event)
            if dispatcher is not None:
                dispatcher.notify()
            return
        # The dispatcher has room now: the event is stored already claimed, and runs as soon
        # as that commit is durable, whether or not this caller is still there to see it.
        stored = self._queue.start_enqueue(claimed)
        dispatcher.run_admitted(claimed, stored)
        # Shielded here, before the run's task takes its first step: this request then resumes
        # first when the commit lands, and its 202 is written before the event starts running.
        await asyncio.shield(stored)

    async def statistics(self) -> Mapping[str, FunctionEventStats]:
        return await self._queue.statistics(int(time.time() * 1000))
