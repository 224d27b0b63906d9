"""The registry's read cache (control/registry.py): a read that was in flight while a write
committed must not be cached, or the invoke path (and GetFunction) would see the state before
that write until the next one, e.g. a function Pending forever. A write forgets the cached reads
of its own function only, and the end of preparation leaves the Active function's details in
the cache, so its first invoke reads nothing from the store."""

from __future__ import annotations

import asyncio
import contextlib
import io
import zipfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from firebox.arns import FunctionRef, Scope
from firebox.control.api import CodeInput, CreateFunction, EventInvokeConfig, State
from firebox.control.registry import Registry
from firebox.settings import Limits
from firebox.store.blobs import LocalBlobStore
from firebox.store.sqlite import SqliteMetadataStore


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
        in_flight = asyncio.create_task(registry._cached("f", ("f",), state))
        await asyncio.wait_for(store.read_done.wait(), 5)  # it has read "Pending"

        def activate(tx: GatedStore) -> None:
            tx.value = "Active"

        await registry._write(activate, "g")  # even another function's write
        store.gate.set()
        assert await in_flight == "Pending"  # what it read, before the write: fine to answer
        store.gate = None
        assert await registry._cached("f", ("f",), state) == "Active"
        assert await registry._cached("f", ("f",), state) == "Active"

    asyncio.run(asyncio.wait_for(scenario(), 30))


def test_a_write_forgets_the_cached_reads_of_its_own_function_only() -> None:
    async def scenario() -> None:
        store = GatedStore()
        registry = _registry(store)
        state = lambda tx: tx.value
        assert await registry._cached("f", ("details", "f", ""), state) == "Pending"
        assert await registry._cached("g", ("details", "g", ""), state) == "Pending"

        def activate(tx: GatedStore) -> None:
            tx.value = "Active"

        await registry._write(activate, "g")
        assert await registry._cached("f", ("details", "f", ""), state) == "Pending"  # kept
        assert await registry._cached("g", ("details", "g", ""), state) == "Active"  # forgotten, read again
        await registry._write(lambda tx: None)  # no name: forget everything
        assert await registry._cached("f", ("details", "f", ""), state) == "Active"

    asyncio.run(asyncio.wait_for(scenario(), 30))


class CountingStore(SqliteMetadataStore):
    reads = 0

    async def read(self, work: Any) -> Any:
        self.reads += 1
        return await super().read(work)


def _hello_zip() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("app.py", "def handler(event, context):\n    return 1\n")
    return buffer.getvalue()


@contextlib.asynccontextmanager
async def _counted_registry(tmp_path: Path) -> AsyncIterator[tuple[Registry, CountingStore]]:
    """A started Registry over a store that counts its reads."""
    store = CountingStore(tmp_path / "firebox.db")
    await store.open()
    registry = Registry(store, LocalBlobStore(tmp_path / "blobs"), Scope("000000000000", "us-east-1"), Limits(),
                        runtimes=frozenset({"python3.11"}), architecture="x86_64")
    await registry.start()
    try:
        yield registry, store
    finally:
        await registry.stop()
        await store.close()


async def _create_active(registry: Registry, name: str) -> None:
    await registry.create_function(CreateFunction(
        name=name, role="arn:aws:iam::000000000000:role/r", code=CodeInput(zip_file=_hello_zip()),
        runtime="python3.11", handler="app.handler"))
    # Preparation ends with a write of the function, which forgets its cached reads: wait for it.
    while (await registry.get_configuration(FunctionRef(name)))[0].state is State.PENDING:
        await asyncio.sleep(0.005)  # polls the store (uncached), as GetFunction does
    # ...to the end: the poll can see Active before that write's own continuation has run, and
    # a cached read that overlaps it is not kept (so a test counting reads would see one more).
    while registry.statistics().running:  # type: ignore[attr-defined]
        await asyncio.sleep(0.005)


def test_an_active_function_is_read_from_the_cache_by_its_first_invoke(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with _counted_registry(tmp_path) as (registry, store):
            for name in ("first", "second"):  # the second's writes keep the first's entry
                await _create_active(registry, name)
            reads = store.reads
            for name in ("first", "second"):
                details = await registry.get_function(FunctionRef(name))  # what Invoke reads
                assert details.config.state is State.ACTIVE
            assert store.reads == reads

    asyncio.run(asyncio.wait_for(scenario(), 30))


def test_the_event_invoke_config_is_read_from_the_cache_until_it_is_written(tmp_path: Path) -> None:
    # The dispatcher asks for it before every event it runs: a second ask reads nothing, and
    # a put or a delete of the function's configuration is seen by the next ask.
    async def scenario() -> None:
        async with _counted_registry(tmp_path) as (registry, store):
            await _create_active(registry, "f")
            ref = FunctionRef("f")

            reads = store.reads
            assert await registry.find_event_invoke_config(ref) is None
            assert store.reads == reads + 1
            assert await registry.find_event_invoke_config(ref) is None  # "none" is cached too
            assert store.reads == reads + 1

            await registry.put_event_invoke_config(ref, EventInvokeConfig(maximum_retry_attempts=1), merge=False)
            reads = store.reads
            found = await registry.find_event_invoke_config(ref)
            assert found is not None and found.maximum_retry_attempts == 1
            assert store.reads == reads + 1
            found = await registry.find_event_invoke_config(ref)
            assert found is not None and found.maximum_retry_attempts == 1
            assert store.reads == reads + 1

            await registry.put_event_invoke_config(ref, EventInvokeConfig(maximum_event_age_s=60), merge=True)
            found = await registry.find_event_invoke_config(ref)
            assert found is not None and (found.maximum_retry_attempts, found.maximum_event_age_s) == (1, 60)

            await registry.delete_event_invoke_config(ref)
            reads = store.reads
            assert await registry.find_event_invoke_config(ref) is None
            assert store.reads == reads + 1
            assert await registry.find_event_invoke_config(ref) is None
            assert store.reads == reads + 1

    asyncio.run(asyncio.wait_for(scenario(), 30))
