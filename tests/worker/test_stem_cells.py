"""Stem cells (worker/stemcells.py) with real isolated sandboxes: a LocalWorker specialises a
pre-started Python sandbox for one function, refills its pool in the background, drops cells
that die, never hands a cell to two functions, and leaves nothing behind when stopped."""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sandbox_helpers import PYTHON, run

from firebox.worker.api import FunctionSpec, HostRuntimes
from firebox.worker.backends import IsolatedBackend
from firebox.worker.local import LocalWorker, stem_eligible
from firebox.worker.runtimeapi import Invocation, RuntimeChannel
from firebox.worker.sandbox import Sandbox

pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="the isolated backend needs root (netns, uid drop, cgroups)"),
    pytest.mark.skipif(shutil.which("bwrap") is None, reason="bubblewrap (bwrap) is not installed"),
]

UIDS = range(63300, 63400)
SOURCE = "import os\nLOADS = [1]\n\ndef handler(event, context):\n    return {'marker': MARKER, 'env': os.environ.get('OWN'), 'loads': len(LOADS)}\n"


class Logs:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def append_lines(self, group: str, stream: str, timestamp_ms: int, messages: Any, *, platform: bool = False) -> None:
        self.lines.extend(messages)


class Codes:
    """A code cache stand-in: one world-readable directory per 'hash'."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.trees: dict[str, Path] = {}

    def add(self, sha: str, marker: str) -> None:
        tree = self.root / sha
        tree.mkdir(mode=0o755)
        (tree / "app.py").write_text(f"MARKER = {marker!r}\n" + SOURCE)
        (tree / "app.py").chmod(0o644)
        self.trees[sha] = tree

    async def ensure(self, sha: str, python: object = None) -> Path:
        return self.trees[sha]


def spec(name: str, sha: str, **overrides: Any) -> FunctionSpec:
    values: dict[str, Any] = dict(
        name=name, version="$LATEST", runtime="python3.11", handler="app.handler", code_sha256_hex=sha,
        memory_mb=192, timeout_s=10, ephemeral_storage_mb=512, environment={"OWN": name},
        log_group=f"/aws/lambda/{name}", log_format="Text", application_log_level=None, region="us-east-1",
        account_id="000000000000", key=f"{name}-{sha}",
    )
    values.update(overrides)
    return FunctionSpec(**values)


@pytest.fixture(scope="module")
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    loop = asyncio.new_event_loop()
    yield loop
    loop.close()


@pytest.fixture
def world(loop: asyncio.AbstractEventLoop) -> Iterator[tuple[LocalWorker, IsolatedBackend, Codes]]:
    base = Path(tempfile.mkdtemp(prefix="firebox-test-stem-", dir="/tmp"))
    os.chmod(base, 0o755)
    backend = IsolatedBackend(uid_range=UIDS)
    codes = Codes(base)
    for index in range(3):
        codes.add(f"{index:064x}", f"code{index}")
    worker = LocalWorker(backend, codes, Logs(), HostRuntimes({"python3.11": Path(PYTHON)}, "x86_64"),  # type: ignore[arg-type]
                         stem_cells=2)
    run(loop, worker.start())
    try:
        yield worker, backend, codes
    finally:
        run(loop, worker.stop())
        run(loop, backend.close())
        shutil.rmtree(base, ignore_errors=True)


async def _until(check: Any, what: str, deadline_s: float = 15.0) -> None:
    end = time.monotonic() + deadline_s
    while not check():
        assert time.monotonic() < end, f"timed out waiting for {what}"
        await asyncio.sleep(0.02)


async def _full(worker: LocalWorker) -> None:
    await _until(lambda: worker.stem_statistics()["ready"] == 2, "a full pool")


async def _invoke(sandbox: Sandbox, request_id: str = "r1") -> bytes:
    invocation = Invocation(request_id=request_id, payload=b"{}", deadline_ms=int(time.time() * 1000) + 10_000,
                            invoked_function_arn="arn", trace_id="Root=1")
    outcome = await sandbox.invoke(invocation)
    assert outcome.function_error is None, outcome
    return outcome.payload


def test_cold_start_specialises_a_cell_for_one_function(loop, world) -> None:
    worker, backend, codes = world

    async def scenario() -> None:
        await _full(worker)
        sandbox = await worker.create_sandbox(spec("alpha", f"{0:064x}"))
        assert isinstance(sandbox, Sandbox) and sandbox.ready
        assert worker.stem_statistics()["specialised"] == 1
        assert sandbox.spec.function_name == "alpha" and sandbox.spec.memory_mb == 192
        assert sandbox.spec.code_dir.parent == codes.root / ".cells"
        assert (sandbox.spec.code_dir / "app.py").stat().st_ino == (codes.trees[f"{0:064x}"] / "app.py").stat().st_ino
        cgroup = sandbox.process.cgroup  # type: ignore[attr-defined]
        if cgroup is not None:
            limit_file = "memory.limit_in_bytes" if cgroup.version == 1 else "memory.max"
            assert int((cgroup.dirs[0] / limit_file).read_text()) == 192 * 1024 * 1024
        assert b'"marker": "code0"' in await _invoke(sandbox)
        assert b'"env": "alpha"' in await _invoke(sandbox, "r2")
        assert sandbox.init_duration_ms is not None
        task_dir = sandbox.spec.code_dir
        await sandbox.destroy()
        assert not task_dir.exists(), "a dead cell's copy of the code stays behind"
        await _full(worker)  # refilled in the background

    run(loop, scenario())


def test_functions_never_share_a_cell(loop, world) -> None:
    worker, _, _ = world

    async def scenario() -> None:
        await _full(worker)
        sandboxes = [await worker.create_sandbox(spec(f"fn{i}", f"{i:064x}")) for i in range(3)]
        assert len({s.id for s in sandboxes}) == 3
        for i, sandbox in enumerate(sandboxes):
            assert isinstance(sandbox, Sandbox)
            assert f'"marker": "code{i}"'.encode() in await _invoke(sandbox)
            assert sorted(p.name for p in sandbox.spec.code_dir.iterdir()) == ["app.py"]
            await sandbox.destroy()

    run(loop, scenario())


def test_a_dead_cell_is_dropped_and_replaced(loop, world) -> None:
    worker, _, _ = world

    async def scenario() -> None:
        await _full(worker)
        pool = worker._stems._pools[("python3.11", 512)]  # type: ignore[union-attr]
        victim = pool.ready[0]
        victim.process.kill()
        await _until(lambda: victim not in pool.ready, "the dead cell to be dropped")
        await _full(worker)
        sandbox = await worker.create_sandbox(spec("after", f"{1:064x}"))
        assert isinstance(sandbox, Sandbox) and sandbox.id != victim.id
        assert b"code1" in await _invoke(sandbox)
        await sandbox.destroy()

    run(loop, scenario())


def test_startup_sensitive_variables_take_the_usual_path(loop, world) -> None:
    worker, _, _ = world
    assert not stem_eligible(spec("p", "0", environment={"PYTHONPATH": "/x"}))
    assert not stem_eligible(spec("p", "0", environment={"LD_PRELOAD": "/x.so"}))
    assert stem_eligible(spec("p", "0", environment={"MY_PYTHON": "x"}))

    async def scenario() -> None:
        await _full(worker)
        sandbox = await worker.create_sandbox(spec("hs", f"{2:064x}", environment={"PYTHONHASHSEED": "0"}))
        assert isinstance(sandbox, Sandbox)
        assert worker.stem_statistics()["specialised"] == 0
        assert sandbox.spec.code_dir == Path(f"{worker._code_cache.root}/{2:064x}")
        await sandbox.destroy()

    run(loop, scenario())


def test_stop_leaves_nothing_behind(loop) -> None:
    base = Path(tempfile.mkdtemp(prefix="firebox-test-stem-", dir="/tmp"))
    os.chmod(base, 0o755)
    backend = IsolatedBackend(uid_range=UIDS)
    worker = LocalWorker(backend, Codes(base), Logs(), HostRuntimes({"python3.11": Path(PYTHON)}, "x86_64"),  # type: ignore[arg-type]
                         stem_cells=2)

    async def scenario() -> None:
        await worker.start()
        await _full(worker)
        await worker.stop()
        assert backend.statistics()["live"] == 0
        assert not (base / ".cells").exists()
        await backend.close()

    try:
        run(loop, scenario())
    finally:
        shutil.rmtree(base, ignore_errors=True)


def test_specialize_route_is_one_shot_and_stem_only(loop) -> None:
    async def scenario() -> None:
        plain = RuntimeChannel()
        assert await plain.specialization() is None
        stem = RuntimeChannel(stem=True)
        stem.specialize(b'{"A": "1"}')
        assert await stem.specialization() == b'{"A": "1"}'
        assert stem.stem_waiting is not None and stem.stem_waiting.done()
        assert await stem.specialization() is None
        with pytest.raises(RuntimeError):
            stem.specialize(b"{}")

    run(loop, scenario())
