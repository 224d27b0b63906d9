"""firebox.hops: marks land in the trace of the task that runs the request; only whole traces
(every mark, in order) are kept; the summary covers the traces after a given count."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from time import perf_counter_ns

import pytest

from firebox import hops


@pytest.fixture(autouse=True)
def tracing(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setattr(hops, "_kept", type(hops._kept)(maxlen=hops.KEPT))
    monkeypatch.setattr(hops, "_finished", 0)
    hops.enable()
    yield
    hops.disable()


async def _request(marks: tuple[str, ...]) -> None:
    trace = hops.start(perf_counter_ns())
    for name in marks:
        await asyncio.sleep(0)
        hops.mark(name)
    hops.finish(trace)


WHOLE = hops.MARKS[2:-1]  # what the layers mark between the edge's start and finish


def test_a_whole_trace_is_kept_and_summarised_per_hop() -> None:
    asyncio.run(_request(WHOLE))
    summary = hops.summary()
    assert (summary["traces"], summary["last"]) == (1, 1)
    assert list(summary["hops"]) == list(hops.MARKS[1:])  # type: ignore[call-overload]
    assert all(row["p50_us"] >= 0 for row in summary["hops"].values())  # type: ignore[attr-defined]
    total = sum(row["mean_us"] for row in summary["hops"].values())  # type: ignore[attr-defined]
    assert total == pytest.approx(summary["server"]["mean_us"])  # type: ignore[index]


def test_partial_or_disordered_traces_are_left_out() -> None:
    async def main() -> None:
        await _request(WHOLE[:3])  # an Event invoke: no sandbox marks
        await _request(WHOLE[1:] + WHOLE[:1])
        await _request((*WHOLE, "delivered"))  # a mark twice
    asyncio.run(main())
    assert hops.summary()["traces"] == 0


def test_concurrent_requests_keep_their_own_marks() -> None:
    async def main() -> None:
        await asyncio.gather(*(asyncio.create_task(_request(WHOLE)) for _ in range(5)))
    asyncio.run(main())
    assert hops.summary()["traces"] == 5


def test_a_mark_after_the_trace_finished_changes_nothing() -> None:
    """A task started by the request (it holds the same trace) marks after the answer was
    written: the kept trace is not changed."""
    async def main() -> None:
        trace = hops.start(perf_counter_ns())
        late = asyncio.Event()

        async def spawned() -> None:
            await late.wait()
            hops.mark("delivered")

        task = asyncio.create_task(spawned())
        for name in WHOLE:
            hops.mark(name)
        hops.finish(trace)
        late.set()
        await task
        assert trace is not None and len(trace.names) == len(hops.MARKS)
    asyncio.run(main())
    assert hops.summary()["traces"] == 1


def test_the_summary_covers_the_traces_after_a_count() -> None:
    async def main() -> None:
        for _ in range(3):
            await _request(WHOLE)
    asyncio.run(main())
    assert hops.summary(after=2)["traces"] == 1
    assert hops.summary(after=3) == {"traces": 0, "last": 3, "hops": {}}


def test_off_by_default_nothing_is_traced() -> None:
    hops.disable()
    assert not hops.enabled() and not hops.tracing
    asyncio.run(_request(WHOLE))
    assert hops.start(0) is None
    assert hops.summary()["traces"] == 0


def test_marks_outside_a_trace_do_nothing_whether_on_or_off() -> None:
    """A mark with no trace running (an asynchronous invocation, tracing off) changes nothing."""
    for switch in (hops.disable, hops.enable):
        switch()
        for name in hops.MARKS:
            hops.mark(name)
        assert hops.summary()["traces"] == 0


def test_a_trace_started_while_on_sees_the_marks_after_it_is_switched_off_and_on() -> None:
    async def main() -> None:
        trace = hops.start(perf_counter_ns())
        assert trace is not None
        hops.disable()
        hops.mark("routed")  # off: not recorded
        hops.enable()
        for name in WHOLE:
            hops.mark(name)
        hops.finish(trace)
        assert trace.names == list(hops.MARKS)
    asyncio.run(main())
    assert hops.summary()["traces"] == 1


def test_every_layer_looks_mark_up_when_it_marks() -> None:
    """`mark` is rebound by enable/disable: a layer that imported the name itself would keep
    the one bound at its import (tracing would miss its marks)."""
    src = Path(hops.__file__).parent
    for module in src.rglob("*.py"):
        text = module.read_text()
        assert "from firebox.hops import" not in text, module
        assert "from firebox import hops as" not in text, module
