"""Shared helpers of the sandbox tests (a plain module: imported by the test files).

The tests talk to a small "agent" that runs inside the sandbox: it connects to the Runtime API
address it finds in AWS_LAMBDA_RUNTIME_API, then executes the Python snippets the test sends
(one JSON line each) and answers with the value of `result` (or the error). So one sandbox
serves many checks, through the very socket the platform will use.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import shutil
import socket
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from firebox.worker.sandbox_api import SandboxBackend, SandboxProcess, SandboxSpec

PYTHON = "/usr/bin/python3.11"
DEADLINE_S = 20.0
# Tests use their own uid range so a platform running on the same host keeps its own.
TEST_UIDS = range(63000, 63200)

AGENT = r'''
import json, os, socket, sys, traceback
host, port = os.environ["AWS_LAMBDA_RUNTIME_API"].rsplit(":", 1)
conn = socket.create_connection((host, int(port)))
conn.sendall(b"hello\n")
stream = conn.makefile("rb")
for line in stream:
    scope = {"conn": conn}
    try:
        exec(json.loads(line)["code"], scope)
        answer = {"ok": True, "result": scope.get("result")}
    except BaseException as exc:
        answer = {"ok": False, "error": f"{type(exc).__name__}: {exc}", "trace": traceback.format_exc()}
    conn.sendall(json.dumps(answer, default=repr).encode() + b"\n")
'''


@contextmanager
def world_dir(files: dict[str, str] | None = None) -> Iterator[Path]:
    """A temporary directory that a per-sandbox uid can traverse and read (pytest's tmp_path
    lives under a 0700 directory), holding `agent.py` and `files`."""
    path = Path(tempfile.mkdtemp(prefix="firebox-test-code-", dir="/tmp"))
    try:
        os.chmod(path, 0o755)
        for name, text in {"agent.py": AGENT, **(files or {})}.items():
            (path / name).write_text(text)
            (path / name).chmod(0o644)
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def make_spec(code_dir: Path, script: str = "agent.py", **overrides: Any) -> SandboxSpec:
    values: dict[str, Any] = dict(
        sandbox_id=secrets.token_hex(16), function_name="test-fn", version="1", runtime="python3.11",
        code_dir=code_dir, runtime_dir=code_dir, command=(PYTHON, f"/var/task/{script}"),
        environment={"LANG": "C.UTF-8", "AWS_LAMBDA_FUNCTION_NAME": "test-fn", "CUSTOM": "value"},
        memory_mb=256, ephemeral_storage_mb=16,
    )
    values.update(overrides)
    return SandboxSpec(**values)


async def accept(sandbox: SandboxProcess, timeout: float = DEADLINE_S) -> socket.socket:
    loop = asyncio.get_running_loop()
    conn, _ = await asyncio.wait_for(loop.sock_accept(sandbox.runtime_api), timeout)
    conn.setblocking(False)
    return conn


class Agent:
    """The test's end of the agent protocol."""

    def __init__(self, sandbox: SandboxProcess, conn: socket.socket) -> None:
        self.sandbox = sandbox
        self.conn = conn
        self._buffer = b""

    @classmethod
    async def start(cls, backend: SandboxBackend, spec: SandboxSpec) -> Agent:
        sandbox = await backend.spawn(spec)
        try:
            conn = await accept(sandbox)
            agent = cls(sandbox, conn)
            assert await agent._line() == b"hello"
        except BaseException:
            await sandbox.cleanup()
            raise
        return agent

    async def _line(self, timeout: float = DEADLINE_S) -> bytes:
        loop = asyncio.get_running_loop()
        while b"\n" not in self._buffer:
            chunk = await asyncio.wait_for(loop.sock_recv(self.conn, 65536), timeout)
            if not chunk:
                raise EOFError("the agent closed the connection")
            self._buffer += chunk
        line, _, self._buffer = self._buffer.partition(b"\n")
        return line

    async def run(self, code: str, timeout: float = DEADLINE_S) -> Any:
        """Execute `code` inside; the value of its `result`; AssertionError if it raised."""
        answer = await self.ask(code, timeout)
        assert answer["ok"], answer["error"] + "\n" + answer.get("trace", "")
        return answer["result"]

    async def ask(self, code: str, timeout: float = DEADLINE_S) -> dict[str, Any]:
        loop = asyncio.get_running_loop()
        await loop.sock_sendall(self.conn, json.dumps({"code": code}).encode() + b"\n")
        return json.loads(await self._line(timeout))

    async def close(self) -> None:
        self.conn.close()
        await self.sandbox.cleanup()


def run(loop: asyncio.AbstractEventLoop, coro: Any, timeout: float = 60.0) -> Any:
    return loop.run_until_complete(asyncio.wait_for(coro, timeout))


def describe(pids: list[int]) -> list[str]:
    """What those processes are (for assertion messages)."""
    out = []
    for pid in pids:
        try:
            cmd = open(f"/proc/{pid}/cmdline", "rb").read().replace(b"\0", b" ").decode(errors="replace")
            state = [l for l in open(f"/proc/{pid}/status").read().splitlines() if l.startswith(("State", "PPid", "NSpid"))]
        except OSError as exc:
            cmd, state = f"<{exc}>", []
        out.append(f"{pid} {cmd[:80]} {state}")
    return out


def process_state(pid: int) -> str:
    """A process's state letter (/proc/<pid>/stat): "Z" for a zombie, "X" once it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            return stat.read().rpartition(b")")[2].split()[0].decode()
    except OSError:
        return "X"


# Child watchers are gone from Python 3.14: the tests that use one skip there, and this module
# must still import.
_ChildWatcher: Any = getattr(asyncio, "AbstractChildWatcher", object)


class HeldWatcher(_ChildWatcher):  # type: ignore[misc]
    """A child watcher that reaps a process only when told (`release`): one that has exited
    stays a zombie meanwhile, as it does for a moment under asyncio's own watcher thread."""

    def __init__(self) -> None:
        self._callbacks: dict[int, tuple[Any, tuple[Any, ...]]] = {}

    def add_child_handler(self, pid: int, callback: Any, *args: Any) -> None:
        self._callbacks[pid] = (callback, args)

    def remove_child_handler(self, pid: int) -> bool:
        return self._callbacks.pop(pid, None) is not None

    def attach_loop(self, loop: Any) -> None:
        pass

    def close(self) -> None:
        pass

    def is_active(self) -> bool:
        return True

    def __enter__(self) -> HeldWatcher:
        return self

    def __exit__(self, *exc_info: object) -> None:
        pass

    def release(self, pid: int) -> None:
        callback, args = self._callbacks.pop(pid)
        try:
            code = os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
        except ChildProcessError:
            code = 255  # what asyncio's watchers report when someone else reaped the process
        callback(pid, code, *args)
