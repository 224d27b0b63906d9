"""The Worker Manager over the local worker: warm pools, leases, scale-out, reaping, retiring.

Algorithm
---------
Pools are keyed by `FunctionSpec.key` (a fingerprint of one version's code and configuration),
so a sandbox is only ever reused for exactly what it was made for (invariant 1).

    lease(spec):  pop the most recently used idle sandbox of spec.key  -> warm start
                  none idle: create one on the worker (placement)      -> cold start
    release(lease, reusable):
                  reusable and spec.key still current -> push on the idle stack (MRU on top)
                  otherwise                           -> destroy

Worked example: two concurrent invocations of f find no idle sandbox and create S1 and S2 (scale
out); both finish, the idle stack is [S1, S2]; the next invocation takes S2 (most recent), so
S1 ages and is the first the reaper destroys after `keep_alive_s` without use.

When a lease arrives with a new key for a (function, version) that has pools under an older key
(code or configuration changed), the older pools are retired: idle sandboxes are destroyed now,
busy ones when they are released. `retire_function(name)` does the same on delete.

Known caveats: the keep-alive is a fixed timer (the performance issue replaces it with a learned
policy); creation is not bounded here: concurrency tokens (counter) bound it upstream.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field

from firebox.worker.api import FunctionSpec, InvokeOutcome, SandboxHandle, Worker
from firebox.workers.api import WorkersStatistics

log = logging.getLogger(__name__)


@dataclass
class Lease:
    sandbox: SandboxHandle
    spec: FunctionSpec
    cold: bool
    _released: bool = field(default=False, repr=False)


@dataclass
class _Idle:
    sandbox: SandboxHandle
    since: float


class LocalWorkerManager:
    def __init__(
        self,
        worker: Worker,
        *,
        keep_alive_s: float = 300.0,
        reap_interval_s: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._worker = worker
        self._keep_alive_s = keep_alive_s
        self._reap_interval_s = reap_interval_s
        self._clock = clock
        self._idle: dict[str, list[_Idle]] = defaultdict(list)
        self._busy: dict[str, set[SandboxHandle]] = defaultdict(set)
        self._current_key: dict[tuple[str, str], str] = {}
        self._starting = 0
        self._created = 0
        self._destroyed = 0
        self._reaper: asyncio.Task[None] | None = None
        self._pending_destroys: set[asyncio.Task[None]] = set()

    # -- lifecycle -----------------------------------------------------------------------------

    async def start(self) -> None:
        if self._reaper is None:
            self._reaper = asyncio.create_task(self._reap_forever(), name="firebox-reaper")

    async def stop(self) -> None:
        if self._reaper is not None:
            self._reaper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reaper
            self._reaper = None
        everything = [i.sandbox for pool in self._idle.values() for i in pool]
        everything += [s for busy in self._busy.values() for s in busy]
        self._idle.clear()
        self._busy.clear()
        await asyncio.gather(*(self._destroy(s) for s in everything), *self._pending_destroys,
                             return_exceptions=True)

    def statistics(self) -> WorkersStatistics:
        return WorkersStatistics(
            starting=self._starting,
            idle=sum(len(p) for p in self._idle.values()),
            busy=sum(len(b) for b in self._busy.values()),
            created=self._created,
            destroyed=self._destroyed,
        )

    def idle_count(self, key: str) -> int:
        return len(self._idle.get(key, ()))

    # -- leases --------------------------------------------------------------------------------

    async def lease(self, spec: FunctionSpec) -> Lease:
        self._retire_older(spec)
        pool = self._idle.get(spec.key)
        while pool:
            idle = pool.pop()
            if idle.sandbox.ready:
                self._busy[spec.key].add(idle.sandbox)
                return Lease(idle.sandbox, spec, cold=False)
            self._spawn_destroy(idle.sandbox)
        self._starting += 1
        try:
            sandbox = await self._worker.create_sandbox(spec)
        finally:
            self._starting -= 1
        self._created += 1
        self._busy[spec.key].add(sandbox)
        return Lease(sandbox, spec, cold=True)

    async def invoke(self, lease: Lease, **kwargs: object) -> InvokeOutcome:
        """Run one invocation in the leased sandbox (or report its failed init)."""
        if not lease.sandbox.ready:
            return lease.sandbox.init_failure(str(kwargs["request_id"]))
        return await self._worker.invoke(lease.sandbox, lease.spec, **kwargs)  # type: ignore[arg-type]

    async def release(self, lease: Lease) -> None:
        """Return the sandbox to its pool if it can serve again; destroy it otherwise. Idempotent."""
        if lease._released:
            return
        lease._released = True
        sandbox, key = lease.sandbox, lease.spec.key
        self._busy[key].discard(sandbox)
        if not self._busy[key]:
            self._busy.pop(key, None)
        current = self._current_key.get((lease.spec.name, lease.spec.version)) == key
        if sandbox.ready and current:
            self._idle[key].append(_Idle(sandbox, self._clock()))
        else:
            await self._destroy(sandbox)

    # -- retiring and reaping ------------------------------------------------------------------

    def _retire_older(self, spec: FunctionSpec) -> None:
        slot = (spec.name, spec.version)
        previous = self._current_key.get(slot)
        self._current_key[slot] = spec.key
        if previous is not None and previous != spec.key:
            for idle in self._idle.pop(previous, []):
                self._spawn_destroy(idle.sandbox)

    def retire_function(self, name: str, version: str | None = None) -> None:
        """A function (or one version) changed or was deleted: drop its idle sandboxes now;
        busy ones are destroyed when released (their spec is no longer current)."""
        for slot in [s for s in self._current_key if s[0] == name and version in (None, s[1])]:
            key = self._current_key.pop(slot)
            for idle in self._idle.pop(key, []):
                self._spawn_destroy(idle.sandbox)

    def reap(self) -> int:
        """Destroy sandboxes idle for longer than the keep-alive; returns how many."""
        deadline = self._clock() - self._keep_alive_s
        reaped = 0
        for key in list(self._idle):
            pool = self._idle[key]
            keep = [i for i in pool if i.since > deadline]
            for idle in pool:
                if idle.since <= deadline:
                    self._spawn_destroy(idle.sandbox)
                    reaped += 1
            if keep:
                self._idle[key] = keep
            else:
                del self._idle[key]
        return reaped

    async def _reap_forever(self) -> None:
        while True:
            await asyncio.sleep(self._reap_interval_s)
            try:
                self.reap()
            except Exception:  # keep reaping whatever one sandbox did
                log.exception("reaper failed")

    def _spawn_destroy(self, sandbox: SandboxHandle) -> None:
        task = asyncio.create_task(self._destroy(sandbox))
        self._pending_destroys.add(task)
        task.add_done_callback(self._pending_destroys.discard)

    async def _destroy(self, sandbox: SandboxHandle) -> None:
        try:
            await sandbox.destroy()
        except Exception:
            log.exception("destroying sandbox %s failed", sandbox.id)
        self._destroyed += 1
