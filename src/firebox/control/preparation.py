"""Background preparation: what moves a function from Pending to Active (and an update from
InProgress to Successful).

Preparing a revision means checking that its code package is stored intact (the blob's bytes
hash to the recorded CodeSha256 and unzip safely) and then running the host-specific steps that
`wiring` plugs in: the worker's code cache (`LocalWorker.prepare_code`: unpack, precompile with
the runtime's interpreter, describe the package), so that the first invoke after Active finds
the package ready, as Lambda's does after its own Pending. The outcome is written back with
`functions.finish_preparation`, which ignores a result for a revision that is no longer current.

A failure is a `PrepareFailure` (AWS's StateReasonCode and StateReason): the package's fault
(missing, corrupt, a step's ApiError) is `InvalidZipFileException`; a step's `ServiceError`,
the host's own failure, is `InternalError`. Either moves the function to Failed (an update: to
LastUpdateStatus Failed). A step that raises anything else is a bug: it is logged, and the
function stays Pending until the next start re-enqueues it.

The `Preparer` owns its tasks: `start()` launches a supervisor that runs one task per job under
a bounded semaphore, `stop()` cancels them and waits. Jobs lost to a stop are not lost for good:
`Registry.start()` re-enqueues every function still Pending or InProgress.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import NamedTuple

from firebox import codezip
from firebox.control.api import FunctionVersion
from firebox.errors import ApiError, ServiceError
from firebox.settings import Limits
from firebox.store.api import BlobStore

log = logging.getLogger(__name__)


class PrepareFailure(NamedTuple):
    reason_code: str  # StateReasonCode / LastUpdateStatusReasonCode
    reason: str  # StateReason / LastUpdateStatusReason


# Host-specific preparation steps (the worker's code cache); raise ApiError to fail.
PrepareStep = Callable[[FunctionVersion], Awaitable[None]]
# Writes the outcome: (function name, revision id, failure or None).
Finish = Callable[[str, str, PrepareFailure | None], Awaitable[bool]]
_PACKAGE_FAULT = "InvalidZipFileException"


@dataclass(frozen=True)
class PreparerStatistics:
    queued: int
    running: int
    prepared: int
    failed: int


class Preparer:
    def __init__(
        self,
        blobs: BlobStore,
        limits: Limits,
        finish: Finish,
        *,
        steps: tuple[PrepareStep, ...] = (),
        delay_s: float = 0.0,
        concurrency: int = 4,
    ) -> None:
        self._blobs = blobs
        self._limits = limits
        self._finish = finish
        self._steps = steps
        self._delay_s = delay_s
        self._queue: asyncio.Queue[FunctionVersion] = asyncio.Queue()
        self._slots = asyncio.Semaphore(concurrency)
        self._supervisor: asyncio.Task[None] | None = None
        self._running = 0
        self._prepared = 0
        self._failed = 0

    def submit(self, version: FunctionVersion) -> None:
        self._queue.put_nowait(version)

    def statistics(self) -> PreparerStatistics:
        return PreparerStatistics(self._queue.qsize(), self._running, self._prepared, self._failed)

    async def start(self) -> None:
        if self._supervisor is None:
            self._supervisor = asyncio.create_task(self._supervise(), name="firebox-preparer")

    async def stop(self) -> None:
        if self._supervisor is not None:
            self._supervisor.cancel()
            try:
                await self._supervisor
            except asyncio.CancelledError:
                pass
            self._supervisor = None

    async def _supervise(self) -> None:
        async with asyncio.TaskGroup() as group:
            while True:
                version = await self._queue.get()
                await self._slots.acquire()
                group.create_task(self._run(version))

    async def _run(self, version: FunctionVersion) -> None:
        self._running += 1
        try:
            failure = await self._prepare(version)
            if failure is None:
                self._prepared += 1
            else:
                self._failed += 1
            await self._finish(version.name, version.revision_id, failure)
        except Exception:  # a bug here must not stop the supervisor: log it, the function stays busy
            log.exception("preparing %s failed unexpectedly", version.name)
        finally:
            self._running -= 1
            self._slots.release()

    async def _prepare(self, version: FunctionVersion) -> PrepareFailure | None:
        try:
            data = await self._blobs.get(version.code_sha256_hex)
        except KeyError:
            return PrepareFailure(_PACKAGE_FAULT, "The function's code package is missing from the blob store.")
        # A 50 MB package hashes in about 100 ms: off the event loop (hashlib releases the GIL).
        digest = await asyncio.to_thread(lambda: hashlib.sha256(data).hexdigest())
        if digest != version.code_sha256_hex:
            return PrepareFailure(
                _PACKAGE_FAULT, "The function's code package is corrupt (its SHA-256 does not match CodeSha256).")
        try:
            await asyncio.to_thread(
                codezip.inspect_zip,
                data,
                max_zip_bytes=self._limits.max_zip_bytes,
                max_unzipped_bytes=self._limits.max_unzipped_bytes,
                max_entries=self._limits.max_zip_entries,
            )
            for step in self._steps:
                await step(version)
        except ServiceError as exc:
            return PrepareFailure("InternalError", exc.message)
        except ApiError as exc:
            return PrepareFailure(_PACKAGE_FAULT, exc.message)
        if self._delay_s:
            await asyncio.sleep(self._delay_s)
        return None
