"""The process backend: the same contract with no isolation (real processes)."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from firebox.worker.backends import ProcessBackend
from firebox.worker.backends._common import pids_of_uid
from firebox.worker.backends.process import _Rewriter
from sandbox_helpers import TEST_UIDS, Agent, HeldWatcher, make_spec, process_state, run, world_dir


@pytest.fixture(scope="module")
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    loop = asyncio.new_event_loop()
    yield loop
    loop.close()


@pytest.fixture(scope="module")
def backend(loop: asyncio.AbstractEventLoop) -> Iterator[ProcessBackend]:
    backend = ProcessBackend(uid_range=TEST_UIDS)
    yield backend
    run(loop, backend.close())
    assert not backend.state_dir.exists()


@pytest.fixture(scope="module")
def code() -> Iterator[Path]:
    with world_dir({"exit3.py": "import sys\nsys.exit(3)\n"}) as path:
        (path / "lib").mkdir(mode=0o755)
        yield path


def test_contract_and_path_rewriting(loop, backend: ProcessBackend, code: Path) -> None:
    assert "WARNING: NO ISOLATION" in backend.reason and not backend.isolated
    spec = make_spec(code, environment={"LANG": "C.UTF-8", "PYTHONPATH": "/var/runtime:/var/task/lib",
                                        "URL": "http://example.com:80/var/task"})

    async def main() -> None:
        agent = await Agent.start(backend, spec)
        try:
            address = agent.sandbox.runtime_api_address
            assert address.startswith("127.0.0.1:") and address != "127.0.0.1:0"
            result = await agent.run(r"""
import os, sys, tempfile
with tempfile.NamedTemporaryFile(dir=None) as f:
    tmp = f.name
result = {"env": dict(os.environ), "cwd": os.getcwd(), "argv": sys.argv, "uid": os.getuid(),
          "tmp": tmp, "sid": os.getsid(0) == os.getpid()}
""")
            env = result["env"]
            assert env["AWS_LAMBDA_RUNTIME_API"] == address
            assert env["PYTHONPATH"] == f"{code}:{code}/lib"
            assert env["URL"] == "http://example.com:80/var/task"  # not a path component
            assert result["cwd"] == str(code)
            assert result["argv"] == [f"{code}/agent.py"]
            assert result["tmp"].startswith(env["TMPDIR"]) and env["TMPDIR"].startswith(str(backend.state_dir))
            assert result["sid"]  # its own session
            if os.geteuid() == 0:
                assert result["uid"] in TEST_UIDS
            assert "FIREBOX" not in " ".join(env)
            peak = agent.sandbox.memory_peak_bytes()
            assert peak is None or peak > 1024 * 1024
        finally:
            await agent.close()
        assert not Path(env["TMPDIR"]).exists()

    run(loop, main())


def test_kill_ends_the_process_group_and_cleanup_releases(loop, backend: ProcessBackend, code: Path) -> None:
    async def main() -> None:
        agent = await Agent.start(backend, make_spec(code))
        sandbox = agent.sandbox
        child = await agent.run("import subprocess; result = subprocess.Popen(['/usr/bin/sleep', '3600']).pid")
        sandbox.kill()
        assert await asyncio.wait_for(sandbox.wait(), 10) == -9
        await sandbox.cleanup()
        await sandbox.cleanup()
        sandbox.kill()
        agent.conn.close()
        assert sandbox.runtime_api.fileno() == -1
        deadline = asyncio.get_running_loop().time() + 5
        while os.path.exists(f"/proc/{child}") and process_state(child) not in ("Z", "X"):
            assert asyncio.get_running_loop().time() < deadline, "the grandchild survived kill()"
            await asyncio.sleep(0.01)
        if sandbox.uid is not None:
            assert pids_of_uid(sandbox.uid) == []

    run(loop, main())
    assert backend.statistics()["live"] == 0


def test_exit_status(loop, backend: ProcessBackend, code: Path) -> None:
    async def main() -> None:
        sandbox = await backend.spawn(make_spec(code, "exit3.py"))
        try:
            assert await asyncio.wait_for(sandbox.wait(), 20) == 3
        finally:
            await sandbox.cleanup()

    run(loop, main())


def test_rewriter_maps_sandbox_paths_component_by_component(code: Path) -> None:
    spec = make_spec(code, runtime_dir=Path("/srv/rt"), extra_ro_binds=((Path("/srv/boto"), "/opt/python"),))
    rewrite = _Rewriter(spec)
    assert rewrite.value("/var/task") == str(code)
    assert rewrite.value("/var/taskforce") == "/var/taskforce"
    assert rewrite.value("/var/runtime/python/bootstrap.py") == "/srv/rt/python/bootstrap.py"
    assert rewrite.value("/opt/python:/usr/lib") == "/srv/boto:/usr/lib"


@pytest.mark.skipif(not hasattr(asyncio, "set_child_watcher"), reason="no child watchers (Python 3.14+)")
def test_a_kill_after_the_exit_leaves_the_status_to_the_watcher(loop, backend: ProcessBackend, code: Path) -> None:
    """kill() between a sandbox's exit and asyncio reaping it must not reap it itself
    (Popen.kill polls, that is waitpid, first): the watcher would then find no child and
    report 255 instead of the exit status."""
    watcher = HeldWatcher()
    previous = asyncio.get_child_watcher()
    asyncio.set_child_watcher(watcher)

    async def main() -> None:
        sandbox = await backend.spawn(make_spec(code, "exit3.py"))
        try:
            deadline = asyncio.get_running_loop().time() + 10
            while process_state(sandbox.pid) != "Z":
                assert asyncio.get_running_loop().time() < deadline, "the sandbox did not exit"
                await asyncio.sleep(0.01)
            sandbox.kill()
            watcher.release(sandbox.pid)
            assert await asyncio.wait_for(sandbox.wait(), 10) == 3
        finally:
            await sandbox.cleanup()

    try:
        run(loop, main())
    finally:
        asyncio.set_child_watcher(previous)
