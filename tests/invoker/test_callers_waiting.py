"""LocalInvoker.callers_waiting: the invocations in progress whose caller waits on the answer,
which the asynchronous queue reads to decide where a lone enqueue is fsync'd. Queued events are
not counted; a failed invocation stops counting too."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from firebox.arns import FunctionRef, Scope
from firebox.errors import ResourceNotFound
from firebox.invoker.api import InvocationType, InvokeRequest
from firebox.invoker.invoker import LocalInvoker


class HeldRegistry:
    """get_function waits until the test releases it, then answers or fails."""

    def __init__(self) -> None:
        self.release: asyncio.Future[Any] = asyncio.get_running_loop().create_future()

    async def get_function(self, ref: FunctionRef) -> Any:
        return await self.release


def _dry_run(*, queued: bool) -> InvokeRequest:
    return InvokeRequest(FunctionRef("f"), b"{}", "req-1", InvocationType.DRY_RUN, queued=queued)


class Active:
    class config:  # noqa: N801 - the shape of FunctionDetails.config
        state = None
        version = "$LATEST"


@pytest.mark.parametrize("queued", [False, True])
def test_a_caller_waits_while_its_invocation_runs_and_a_queued_event_has_none(queued: bool) -> None:
    async def main() -> None:
        registry = HeldRegistry()
        invoker = LocalInvoker(registry, None, None, Scope("000000000000", "us-east-1"))  # type: ignore[arg-type]
        running = asyncio.create_task(invoker.invoke(_dry_run(queued=queued)))
        await asyncio.sleep(0)
        assert invoker.callers_waiting == (0 if queued else 1)
        registry.release.set_result(Active())
        assert (await running).executed_version == "$LATEST"
        assert invoker.callers_waiting == 0

    asyncio.run(main())


def test_a_failed_invocation_stops_counting() -> None:
    async def main() -> None:
        registry = HeldRegistry()
        invoker = LocalInvoker(registry, None, None, Scope("000000000000", "us-east-1"))  # type: ignore[arg-type]
        running = asyncio.create_task(invoker.invoke(_dry_run(queued=False)))
        await asyncio.sleep(0)
        registry.release.set_exception(ResourceNotFound("Function not found: f"))
        with pytest.raises(ResourceNotFound):
            await running
        assert invoker.callers_waiting == 0

    asyncio.run(main())
