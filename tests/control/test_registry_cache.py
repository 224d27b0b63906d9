"""The registry's read cache (control/registry.py): a read that was in flight while a write
committed must not be cached, or the invoke path (and GetFunction) would see the state before
that write until the next one, e.g. a function Pending forever."""

from __future__ import annotations

import asyncio
from typing import Any

from firebox.arns import Scope
from firebox.control.registry import Registry
from firebox.settings import Limits


class GatedStore:
    """A metadata store of one value whose reads can be held after reading it."""

    def __init__(self) -> None:
        self.value = "Pending"
        self.gate: asyncio.Event | None = None
        self.read_done = asyncio.Event()

    async def read(self, work: Any) -> Any:
        value = work(self)
        self.read_done.set()
        if self.gate is not None:
            await self.gate.wait()
        return value

    async def atomically(self, work: Any) -> Any:
        return work(self)


def _registry(store: GatedStore) -> Registry:
    return Registry(store, None, Scope("000000000000", "us-east-1"), Limits(),  # type: ignore[arg-type]
                    runtimes=frozenset({"python3.11"}), architecture="x86_64")


def test_a_read_overlapping_a_write_is_not_cached() -> None:
    async def scenario() -> None:
        store = GatedStore()
        registry = _registry(store)
        state = lambda tx: tx.value

        store.gate = asyncio.Event()
        in_flight = asyncio.create_task(registry._cached(("f",), state))
        await asyncio.wait_for(store.read_done.wait(), 5)  # it has read "Pending"

        def activate(tx: GatedStore) -> None:
            tx.value = "Active"

        await registry._write(activate)
        store.gate.set()
        assert await in_flight == "Pending"  # what it read, before the write: fine to answer
        store.gate = None
        assert await registry._cached(("f",), state) == "Active"
        assert await registry._cached(("f",), state) == "Active"

    asyncio.run(asyncio.wait_for(scenario(), 30))
