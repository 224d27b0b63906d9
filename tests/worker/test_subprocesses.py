"""`subprocesses.sigkill`: SIGKILL for an asyncio subprocess that never reaps it (the timeouts
of precompiling and of a zygote's stop, a failed bubblewrap start)."""

from __future__ import annotations

import asyncio
import signal
import sys
from collections.abc import Iterator

import pytest

from firebox.worker.subprocesses import sigkill
from sandbox_helpers import HeldWatcher, process_state, run

pytestmark = pytest.mark.skipif(not hasattr(asyncio, "set_child_watcher"), reason="no child watchers (Python 3.14+)")


@pytest.fixture()
def watcher() -> Iterator[HeldWatcher]:
    held = HeldWatcher()
    previous = asyncio.get_child_watcher()
    asyncio.set_child_watcher(held)
    try:
        yield held
    finally:
        asyncio.set_child_watcher(previous)


@pytest.fixture()
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    loop = asyncio.new_event_loop()
    yield loop
    loop.close()


async def _until_zombie(pid: int) -> None:
    deadline = asyncio.get_running_loop().time() + 10
    while process_state(pid) != "Z":
        assert asyncio.get_running_loop().time() < deadline, f"process {pid} did not exit"
        await asyncio.sleep(0.01)


def test_a_kill_after_the_exit_leaves_the_status_to_the_watcher(loop: asyncio.AbstractEventLoop,
                                                                 watcher: HeldWatcher) -> None:
    """Between the exit and asyncio's reaping, Process.kill() (Popen.kill: a waitpid first)
    would reap the process itself, and the watcher would report 255, not 3."""

    async def main() -> None:
        proc = await asyncio.create_subprocess_exec(sys.executable, "-c", "raise SystemExit(3)")
        await _until_zombie(proc.pid)
        sigkill(proc)
        assert process_state(proc.pid) == "Z"  # still there for the watcher to reap
        watcher.release(proc.pid)
        assert await asyncio.wait_for(proc.wait(), 10) == 3

    run(loop, main())


def test_it_kills_a_running_process(loop: asyncio.AbstractEventLoop, watcher: HeldWatcher) -> None:
    async def main() -> None:
        proc = await asyncio.create_subprocess_exec(sys.executable, "-c", "import time; time.sleep(60)")
        sigkill(proc)
        await _until_zombie(proc.pid)
        watcher.release(proc.pid)
        assert await asyncio.wait_for(proc.wait(), 10) == -signal.SIGKILL

    run(loop, main())


def test_a_reaped_process_is_left_alone(loop: asyncio.AbstractEventLoop, watcher: HeldWatcher) -> None:
    async def main() -> None:
        proc = await asyncio.create_subprocess_exec(sys.executable, "-c", "pass")
        await _until_zombie(proc.pid)
        watcher.release(proc.pid)
        assert await asyncio.wait_for(proc.wait(), 10) == 0
        sigkill(proc)  # returncode is set: no signal, no error
        assert proc.returncode == 0

    run(loop, main())
