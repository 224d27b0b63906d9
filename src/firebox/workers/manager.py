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

How long an idle sandbox lives, and whether one is pre-warmed, is the keep-alive policy's call
(`keepalive.py`; `FixedKeepAlive(keep_alive_s)` unless another is given). The manager tells it
every start and end per (name, version); a released sandbox is kept until
`policy.keep_until(fn, now, level)` (level = 1 + the function's sandboxes still busy) or
unloaded at once when `policy.release_after_end(fn, level)`; when the last invocation ends,
`policy.prewarm_at(fn, now)` schedules one sandbox, which the reaper creates from the last spec
seen unless an idle sandbox is already there or the spec is no longer current. (`release` reads
all three off one `policy.decision(fn, level)`: they are the `Decision`'s own readings.)

Lifetime: as AWS Lambda "terminates execution environments every few hours ... even for
functions that are invoked continuously", a sandbox serves for at most `max_lifetime_s` (0:
for ever), less a random part of up to `LIFETIME_SPREAD` of it, so that sandboxes started
together do not all end together: past it, a released sandbox is destroyed instead of kept, and
an idle one is reaped even if the keep-alive policy would keep it longer. What this bounds is
whatever a long-lived process accumulates: a function's own leaks, and a runtime's (both
runtimes kept ~110-140 bytes per invocation while they set `_X_AMZN_TRACE_ID` with setenv, whose
glibc keeps every distinct value; bench/warm_memory.py measures it).

Start pacing: at most `start_slots` sandboxes are in the first `start_hold_s` of their start at
once; the others wait for a slot (first come, first served). Starting a sandbox is CPU-bound (an
interpreter starting in bubblewrap, ~70 ms of CPU here; a fork from a zygote, ~15 ms), so 100
simultaneous cold starts on 2 cores sharing the CPU would all finish together, after ~4-5 s;
paced, they finish one after another, the first after about one start's time, the last about as
late as before. 4 slots per core: a forked start also waits (a network namespace made on a
thread, the zygote's answer), and measured with 100 simultaneous first invokes it made 101
sandboxes/s against 85/s with 2 per core, the first answer as early. A start still running
after `start_hold_s` (an init that sleeps or waits on the network) gives its slot up, so a slow
init never holds others back longer.

Known caveats: creation is not bounded here: concurrency tokens (counter) bound it upstream, but
pre-warms take no token (the reaper creates at most one per function per due time).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field

from firebox.worker.api import FunctionSpec, InvokeOutcome, SandboxHandle, Worker
from firebox.workers.api import WorkersStatistics
from firebox.workers.keepalive import FixedKeepAlive, KeepAlivePolicy

log = logging.getLogger(__name__)

LIFETIME_SPREAD = 0.25  # a sandbox's lifetime is max_lifetime_s less up to this share of it


# Lease and _Idle are made once per invocation each: with slots, no instance dictionary.


@dataclass(slots=True)
class Lease:
    sandbox: SandboxHandle
    spec: FunctionSpec
    cold: bool
    _released: bool = field(default=False, repr=False)


@dataclass(slots=True)
class _Idle:
    sandbox: SandboxHandle
    since: float
    until: float  # reap at (the policy's keep_until)


class LocalWorkerManager:
    def __init__(
        self,
        worker: Worker,
        *,
        keep_alive_s: float = 300.0,
        policy: KeepAlivePolicy | None = None,
        reap_interval_s: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
        start_slots: int = 4 * (os.cpu_count() or 1),
        start_hold_s: float = 0.2,
        max_lifetime_s: float = 0.0,
        spread: Callable[[], float] = random.random,
    ) -> None:
        self._worker = worker
        self._policy: KeepAlivePolicy = policy if policy is not None else FixedKeepAlive(keep_alive_s)
        self._reap_interval_s = reap_interval_s
        self._clock = clock
        self._idle: dict[str, list[_Idle]] = defaultdict(list)
        self._busy: dict[str, set[SandboxHandle]] = defaultdict(set)
        self._current_key: dict[tuple[str, str], str] = {}
        self._last_spec: dict[tuple[str, str], FunctionSpec] = {}
        self._prewarm: dict[tuple[str, str], tuple[float, float]] = {}  # fn -> (at, idle_since)
        self._prewarming: set[asyncio.Task[None]] = set()
        self._starting = 0
        self._start_slots = asyncio.Semaphore(start_slots)
        self._start_hold_s = start_hold_s
        self._created = 0
        self._destroyed = 0
        self._reaper: asyncio.Task[None] | None = None
        self._pending_destroys: set[asyncio.Task[None]] = set()
        self._max_lifetime_s = max_lifetime_s
        self._spread = spread  # [0, 1): which share of LIFETIME_SPREAD a new sandbox's lifetime loses
        self._retire_at: dict[SandboxHandle, float] = {}  # (only with a max lifetime)

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
        for task in list(self._prewarming):
            task.cancel()
        await asyncio.gather(*self._prewarming, return_exceptions=True)
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
        key = spec.key
        fn = (spec.name, spec.version)
        if self._current_key.get(fn) != key:
            self._retire_older(spec)
        self._last_spec[fn] = spec
        if self._prewarm:
            self._prewarm.pop(fn, None)
        self._policy.observe_arrival(fn, self._clock())
        pool = self._idle.get(key)
        while pool:
            sandbox = pool.pop().sandbox
            if sandbox.ready:
                self._busy[key].add(sandbox)
                return Lease(sandbox, spec, False)
            self._spawn_destroy(sandbox)
        self._starting += 1
        try:
            sandbox = await self._create(spec)
        except BaseException:
            self._policy.observe_end(fn, self._clock())  # no lease, so no release will end it
            raise
        finally:
            self._starting -= 1
        self._created += 1
        self._born(sandbox)
        self._busy[key].add(sandbox)
        return Lease(sandbox, spec, True)

    async def invoke(
        self, lease: Lease, *, request_id: str, payload: bytes, invoked_arn: str, client_context: str | None
    ) -> InvokeOutcome:
        """Run one invocation in the leased sandbox (or report its failed init)."""
        sandbox = lease.sandbox
        if not sandbox.ready:
            return sandbox.init_failure(request_id)
        # Named one by one, not passed on as **kwargs: no dict is built and unpacked per invocation.
        return await self._worker.invoke(sandbox, lease.spec, request_id=request_id, payload=payload,
                                         invoked_arn=invoked_arn, client_context=client_context)

    async def release(self, lease: Lease) -> None:
        """Return the sandbox to its pool if it can serve again; destroy it otherwise. Idempotent."""
        if lease._released:
            return
        lease._released = True
        sandbox, spec, now = lease.sandbox, lease.spec, self._clock()
        key = spec.key
        fn = (spec.name, spec.version)
        busy = self._busy[key]
        busy.discard(sandbox)
        level = len(busy) + 1  # 1: the function's last running invocation ended
        if not busy:
            del self._busy[key]
        policy = self._policy
        policy.observe_end(fn, now)
        current = self._current_key.get(fn) == key
        # One decision, read three ways: asking the policy for each reading looked it up three
        # times (5,500 instructions per invocation).
        decision = policy.decision(fn, level)
        if level == 1 and current and (at := decision.prewarm_at(now)) is not None:
            self._prewarm[fn] = (at, now)
        if sandbox.ready and current and not decision.release_after_end:
            until = decision.keep_until(now)
            retire_at = self._retire_at.get(sandbox) if self._retire_at else None
            if retire_at is None:
                self._idle[key].append(_Idle(sandbox, now, until))
            elif retire_at > now:
                self._idle[key].append(_Idle(sandbox, now, min(until, retire_at)))
            else:  # its lifetime is over: destroyed aside, not before this invocation's answer
                self._spawn_destroy(sandbox)
        else:
            await self._destroy(sandbox)

    async def _create(self, spec: FunctionSpec) -> SandboxHandle:
        """`worker.create_sandbox` in a start slot (see "Start pacing" above)."""
        await self._start_slots.acquire()
        held = True

        def give_up_slot() -> None:
            nonlocal held
            if held:
                held = False
                self._start_slots.release()

        timer = asyncio.get_running_loop().call_later(self._start_hold_s, give_up_slot)
        try:
            return await self._worker.create_sandbox(spec)
        finally:
            timer.cancel()
            give_up_slot()

    # -- retiring and reaping ------------------------------------------------------------------

    def _retire_older(self, spec: FunctionSpec) -> None:
        slot = (spec.name, spec.version)
        previous = self._current_key.get(slot)
        self._current_key[slot] = spec.key
        if previous is not None and previous != spec.key:
            for idle in self._idle.pop(previous, []):
                self._spawn_destroy(idle.sandbox)
            self._prewarm.pop(slot, None)

    def retire_function(self, name: str, version: str | None = None) -> None:
        """A function (or one version) changed or was deleted: drop its idle sandboxes now;
        busy ones are destroyed when released (their spec is no longer current)."""
        for slot in [s for s in self._current_key if s[0] == name and version in (None, s[1])]:
            key = self._current_key.pop(slot)
            for idle in self._idle.pop(key, []):
                self._spawn_destroy(idle.sandbox)
            self._prewarm.pop(slot, None)
            self._last_spec.pop(slot, None)
            self._policy.forget(slot)

    def reap(self) -> int:
        """Destroy sandboxes the policy no longer keeps, start due pre-warms; returns how many
        sandboxes were destroyed."""
        now = self._clock()
        reaped = 0
        for key in list(self._idle):
            pool = self._idle[key]
            keep = [i for i in pool if i.until > now]
            for idle in pool:
                if idle.until <= now:
                    self._spawn_destroy(idle.sandbox)
                    reaped += 1
            if keep:
                self._idle[key] = keep
            else:
                del self._idle[key]
        for fn, (at, idle_since) in list(self._prewarm.items()):
            if at <= now:
                del self._prewarm[fn]
                spec = self._last_spec.get(fn)
                if spec is not None and self._current_key.get(fn) == spec.key and not self._idle.get(spec.key):
                    task = asyncio.create_task(self._prewarm_one(spec, idle_since), name="firebox-prewarm")
                    self._prewarming.add(task)
                    task.add_done_callback(self._prewarming.discard)
        return reaped

    async def _prewarm_one(self, spec: FunctionSpec, idle_since: float) -> None:
        """Create one sandbox ahead of the next expected invocation; keep it as the policy says."""
        fn = (spec.name, spec.version)
        self._starting += 1
        try:
            sandbox = await self._create(spec)
        except Exception:
            log.exception("pre-warming %s:%s failed", *fn)
            return
        finally:
            self._starting -= 1
        self._created += 1
        self._born(sandbox)
        until = min(self._policy.keep_until(fn, idle_since, 1), self._retire_at.get(sandbox, float("inf")))
        if sandbox.ready and self._current_key.get(fn) == spec.key and until > self._clock():
            self._idle[spec.key].append(_Idle(sandbox, self._clock(), until))
        else:
            await self._destroy(sandbox)

    async def _reap_forever(self) -> None:
        while True:
            await asyncio.sleep(self._reap_interval_s)
            try:
                self.reap()
            except Exception:  # keep reaping whatever one sandbox did
                log.exception("reaper failed")

    def _born(self, sandbox: SandboxHandle) -> None:
        """Note when a new sandbox is to end (see "Lifetime" above)."""
        if self._max_lifetime_s > 0:
            lifetime = self._max_lifetime_s * (1 - LIFETIME_SPREAD * self._spread())
            self._retire_at[sandbox] = self._clock() + lifetime

    def _spawn_destroy(self, sandbox: SandboxHandle) -> None:
        task = asyncio.create_task(self._destroy(sandbox))
        self._pending_destroys.add(task)
        task.add_done_callback(self._pending_destroys.discard)

    async def _destroy(self, sandbox: SandboxHandle) -> None:
        self._retire_at.pop(sandbox, None)
        try:
            await sandbox.destroy()
        except Exception:
            log.exception("destroying sandbox %s failed", sandbox.id)
        self._destroyed += 1
