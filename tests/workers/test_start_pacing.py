"""Start pacing in the worker manager: at most `start_slots` sandboxes start at once, the others
wait their turn in order, and a start that outlives `start_hold_s` gives its slot up."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from firebox.worker.api import FunctionSpec, InvokeOutcome
from firebox.workers.manager import LocalWorkerManager


@dataclass(eq=False)
class _Sandbox:
    id: str
    ready: bool = True

    def init_failure(self, request_id: str) -> InvokeOutcome:
        raise AssertionError("not used")

    async def destroy(self) -> None:
        self.ready = False


@dataclass
class _GatedWorker:
    """create_sandbox blocks until the test opens that start's gate."""

    started: list[str] = field(default_factory=list)
    gates: dict[str, asyncio.Event] = field(default_factory=dict)

    async def create_sandbox(self, spec: FunctionSpec) -> _Sandbox:
        self.started.append(spec.name)
        gate = self.gates.setdefault(spec.name, asyncio.Event())
        await gate.wait()
        return _Sandbox(spec.name)

    async def invoke(self, *args: object, **kwargs: object) -> InvokeOutcome:
        raise AssertionError("not used")


def _spec(name: str) -> FunctionSpec:
    return FunctionSpec(name=name, version="$LATEST", runtime="python3.11", handler="app.handler",
                        code_sha256_hex="00", memory_mb=128, timeout_s=3, ephemeral_storage_mb=512, environment={},
                        log_group=f"/aws/lambda/{name}", log_format="Text", application_log_level=None,
                        region="us-east-1", account_id="000000000000", key=name)


async def _until(condition, deadline_s: float = 5.0) -> None:  # type: ignore[no-untyped-def]
    loop = asyncio.get_running_loop()
    end = loop.time() + deadline_s
    while not condition():
        assert loop.time() < end, "timed out"
        await asyncio.sleep(0.001)


def test_starts_beyond_the_slots_wait_their_turn_in_order() -> None:
    async def scenario() -> None:
        worker = _GatedWorker()
        manager = LocalWorkerManager(worker, start_slots=2, start_hold_s=3600)  # type: ignore[arg-type]
        leases = [asyncio.create_task(manager.lease(_spec(f"f{i}"))) for i in range(5)]
        await _until(lambda: len(worker.started) == 2)
        for _ in range(20):
            await asyncio.sleep(0)
        assert worker.started == ["f0", "f1"]  # the other three wait for a slot
        worker.gates["f1"].set()
        await _until(lambda: len(worker.started) == 3)
        assert worker.started[2] == "f2"  # first come, first served
        for name in ("f0", "f2", "f3", "f4"):
            await _until(lambda name=name: name in worker.gates)
            worker.gates[name].set()
        assert [lease.sandbox.id for lease in await asyncio.gather(*leases)] == [f"f{i}" for i in range(5)]

    asyncio.run(asyncio.wait_for(scenario(), 30))


def test_a_slow_start_gives_its_slot_up_after_the_hold() -> None:
    async def scenario() -> None:
        worker = _GatedWorker()
        manager = LocalWorkerManager(worker, start_slots=1, start_hold_s=0.05)  # type: ignore[arg-type]
        slow = asyncio.create_task(manager.lease(_spec("slow")))
        await _until(lambda: worker.started == ["slow"])
        other = asyncio.create_task(manager.lease(_spec("other")))
        await _until(lambda: worker.started == ["slow", "other"])  # after the hold, not after "slow"
        worker.gates["other"].set()
        assert (await other).sandbox.id == "other"
        assert not slow.done()
        worker.gates["slow"].set()
        assert (await slow).sandbox.id == "slow"

    asyncio.run(asyncio.wait_for(scenario(), 30))
