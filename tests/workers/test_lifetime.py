"""A sandbox's lifetime in the worker manager: past `max_lifetime_s` (less its random part), a
released sandbox is destroyed instead of kept and an idle one is reaped, whatever the keep-alive
policy says; 0 keeps sandboxes for ever. A fake worker, an injected clock and spread."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from firebox.worker.api import FunctionSpec, InvokeOutcome
from firebox.workers.keepalive import FixedKeepAlive
from firebox.workers.manager import LIFETIME_SPREAD, LocalWorkerManager


@dataclass(eq=False)
class _Sandbox:
    id: str
    ready: bool = True
    destroyed: bool = False

    def init_failure(self, request_id: str) -> InvokeOutcome:
        raise AssertionError("not used")

    async def destroy(self) -> None:
        self.ready, self.destroyed = False, True


@dataclass
class _Worker:
    made: list[_Sandbox] = field(default_factory=list)

    async def create_sandbox(self, spec: FunctionSpec) -> _Sandbox:
        self.made.append(_Sandbox(f"s{len(self.made)}"))
        return self.made[-1]

    async def invoke(self, *args: object, **kwargs: object) -> InvokeOutcome:
        raise AssertionError("not used")


class _Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


SPEC = FunctionSpec(name="f", version="$LATEST", runtime="python3.11", handler="app.handler",
                    code_sha256_hex="00", memory_mb=128, timeout_s=3, ephemeral_storage_mb=512, environment={},
                    log_group="/aws/lambda/f", log_format="Text", application_log_level=None,
                    region="us-east-1", account_id="000000000000", key="f")


def _manager(worker: _Worker, clock: _Clock, max_lifetime_s: float, spread: float = 0.0) -> LocalWorkerManager:
    return LocalWorkerManager(worker, policy=FixedKeepAlive(600.0), clock=clock,  # type: ignore[arg-type]
                              max_lifetime_s=max_lifetime_s, spread=lambda: spread)


async def _settle() -> None:
    for _ in range(5):  # the destroys the manager spawned
        await asyncio.sleep(0)


def test_a_busy_sandbox_past_its_lifetime_is_destroyed_when_released() -> None:
    async def scenario() -> None:
        worker, clock = _Worker(), _Clock()
        manager = _manager(worker, clock, max_lifetime_s=100.0)
        lease = await manager.lease(SPEC)
        await manager.release(lease)
        clock.now += 99.0  # still within its life: warm
        lease = await manager.lease(SPEC)
        assert not lease.cold and lease.sandbox is worker.made[0]
        clock.now += 2.0  # it ends during this invocation
        await manager.release(lease)
        assert manager.idle_count("f") == 0
        await _settle()  # (destroyed aside: the invocation's answer does not wait for it)
        assert worker.made[0].destroyed
        lease = await manager.lease(SPEC)
        assert lease.cold and lease.sandbox is worker.made[1]  # a new sandbox, a new life
        await manager.release(lease)
        assert manager.idle_count("f") == 1

    asyncio.run(scenario())


def test_an_idle_sandbox_is_reaped_at_its_lifetime_before_its_keep_alive_ends() -> None:
    async def scenario() -> None:
        worker, clock = _Worker(), _Clock()
        manager = _manager(worker, clock, max_lifetime_s=100.0)
        await manager.release(await manager.lease(SPEC))
        clock.now += 99.0
        assert manager.reap() == 0
        clock.now += 1.0  # the keep-alive (600 s) would keep it, its lifetime does not
        assert manager.reap() == 1
        await _settle()
        assert worker.made[0].destroyed and manager.statistics().destroyed == 1

    asyncio.run(scenario())


def test_lifetimes_are_spread_so_sandboxes_started_together_do_not_end_together() -> None:
    async def scenario() -> None:
        worker, clock = _Worker(), _Clock()
        manager = _manager(worker, clock, max_lifetime_s=100.0, spread=1.0)  # the shortest life it gives
        await manager.release(await manager.lease(SPEC))
        clock.now += 100.0 * (1 - LIFETIME_SPREAD) - 0.001
        assert manager.reap() == 0
        clock.now += 0.002
        assert manager.reap() == 1

    asyncio.run(scenario())


def test_no_lifetime_keeps_sandboxes_as_long_as_the_policy_does() -> None:
    async def scenario() -> None:
        worker, clock = _Worker(), _Clock()
        manager = _manager(worker, clock, max_lifetime_s=0.0)
        for _ in range(3):
            clock.now += 500.0  # within the keep-alive each time, for 1,500 s in all
            await manager.release(await manager.lease(SPEC))
        assert len(worker.made) == 1 and manager.reap() == 0
        clock.now += 600.0
        assert manager.reap() == 1

    asyncio.run(scenario())
