"""Sandbox.invoke (worker/sandbox.py) with a stand-in runtime on an in-memory Runtime API
connection: how an invocation ends (outcome, the runtime's exit while it runs or while the
sandbox is idle, timeout), what is logged, and `ready` through the sandbox's life."""

from __future__ import annotations

import asyncio
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from firebox.worker.runtimeapi import Invocation, RuntimeApiProtocol, RuntimeChannel
from firebox.worker.sandbox import Identity, Sandbox
from firebox.worker.sandbox_api import SandboxSpec

NEXT = b"GET /2018-06-01/runtime/invocation/next HTTP/1.1\r\nHost: x\r\n\r\n"
PEAK = 50_000_000  # bytes: Max Memory Used 48 MB


def _answer(request_id: str, body: bytes) -> bytes:
    return (f"POST /2018-06-01/runtime/invocation/{request_id}/response HTTP/1.1\r\nHost: x\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode() + body + NEXT


class _Transport:
    """The runtime's end: answers each event it is written (unless told to stay silent)."""

    def __init__(self) -> None:
        self.protocol: RuntimeApiProtocol | None = None
        self.silent = False
        self.delay = 0.0  # seconds before the runtime answers

    def write(self, data: bytes) -> None:
        if b"Lambda-Runtime-Aws-Request-Id: " in data and not self.silent:
            request_id = data.split(b"Lambda-Runtime-Aws-Request-Id: ")[1].split(b"\r\n")[0].decode()
            assert self.protocol is not None
            asyncio.get_running_loop().call_later(self.delay, self.protocol.data_received, _answer(request_id, b'"hi"'))

    def is_closing(self) -> bool:
        return False

    def close(self) -> None:
        pass


class _Logs:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def append_lines(self, group: str, stream: str, timestamp_ms: int, messages: Any, *, platform: bool = False) -> None:
        self.lines.extend(messages)


class _Process:
    def __init__(self, stdout: asyncio.StreamReader, stderr: asyncio.StreamReader) -> None:
        self.stdout, self.stderr = stdout, stderr
        self.killed = False
        self.exit: asyncio.Future[int] = asyncio.get_running_loop().create_future()

    def memory_peak_bytes(self) -> int:
        return PEAK

    def reset_memory_peak(self) -> None:
        pass

    def take_memory_peak(self) -> int:
        return PEAK

    def oom_kills(self) -> int:
        return 0

    def kill(self) -> None:
        self.killed = True
        if not self.exit.done():
            self.exit.set_result(-9)

    async def cleanup(self) -> None:
        pass


async def _reader(loop: asyncio.AbstractEventLoop) -> tuple[asyncio.StreamReader, int]:
    read, write = os.pipe()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), os.fdopen(read, "rb", 0))
    return reader, write


async def _started(timeout_s: float = 3.0) -> tuple[Sandbox, _Transport, _Logs, asyncio.Future[int], list[int]]:
    loop = asyncio.get_running_loop()
    (out, out_fd), (err, err_fd) = await _reader(loop), await _reader(loop)
    code = Path(tempfile.gettempdir())
    spec = SandboxSpec(sandbox_id="a" * 32, function_name="f", version="$LATEST", runtime="python3.11", code_dir=code,
                       runtime_dir=code, command=("/usr/bin/python3.11",), environment={}, memory_mb=128,
                       ephemeral_storage_mb=512)
    channel = RuntimeChannel()
    protocol = RuntimeApiProtocol(channel)
    transport = _Transport()
    transport.protocol = protocol
    protocol.connection_made(transport)  # type: ignore[arg-type]
    logs = _Logs()
    process = _Process(out, err)
    sandbox = Sandbox(spec, process, logs, Identity("g", "s"), timeout_s=timeout_s,  # type: ignore[arg-type]
                      channel=channel)
    assert not sandbox.ready
    protocol.data_received(NEXT)
    assert await sandbox.start(time.perf_counter(), server=_Server(), exit_task=process.exit)  # type: ignore[arg-type]
    assert sandbox.ready
    return sandbox, transport, logs, process.exit, [out_fd, err_fd]


class _Server:
    def close(self) -> None:
        pass


def _invocation(request_id: str) -> Invocation:
    return Invocation(request_id, b"{}", int(time.time() * 1000) + 3000, "arn:aws:lambda:us-east-1:0:function:f", "Root=1")


def test_an_answered_invocation_is_logged_and_leaves_the_sandbox_ready() -> None:
    async def main() -> None:
        sandbox, _, logs, _, fds = await _started()
        for number in range(3):
            outcome = await sandbox.invoke(_invocation(f"r{number}"))
            assert (outcome.payload, outcome.function_error, outcome.reusable) == (b'"hi"', None, True)
            assert sandbox.ready and sandbox.state.value == "ready"
            assert outcome.log_tail.startswith(f"START RequestId: r{number} Version: $LATEST\n".encode())
        assert [line.split("\t")[0] for line in logs.lines[-3:]] == ["START RequestId: r2 Version: $LATEST\n",
                                                                    "END RequestId: r2\n", "REPORT RequestId: r2"]
        assert "\tMax Memory Used: 48 MB\t" in logs.lines[-1]
        assert "Init Duration" in logs.lines[2] and "Init Duration" not in logs.lines[-1]
        await sandbox.destroy()
        assert not sandbox.ready and sandbox.state.value == "dead"
        for fd in fds:
            os.close(fd)

    asyncio.run(main())


def test_the_runtime_exiting_while_idle_ends_the_next_invocation() -> None:
    async def main() -> None:
        sandbox, transport, _, exit_future, fds = await _started()
        assert (await sandbox.invoke(_invocation("r1"))).reusable
        transport.silent = True
        exit_future.set_result(1)
        await asyncio.sleep(0)  # the exit's callbacks run (call_soon) while the sandbox is idle
        outcome = await sandbox.invoke(_invocation("r2"))
        assert (outcome.function_error, outcome.reusable) == ("Unhandled", False)
        assert json.loads(outcome.payload) == {"errorType": "Runtime.ExitError",
                                               "errorMessage": "RequestId: r2 Error: Runtime exited with error: exit status 1"}
        assert not sandbox.ready and sandbox.state.value == "dead"
        for fd in fds:
            os.close(fd)

    asyncio.run(main())


def test_the_runtime_exiting_during_an_invocation_ends_it() -> None:
    async def main() -> None:
        sandbox, transport, logs, exit_future, fds = await _started()
        transport.silent = True
        asyncio.get_running_loop().call_later(0.02, exit_future.set_result, -9)
        outcome = await sandbox.invoke(_invocation("r1"))
        assert (outcome.function_error, outcome.reusable) == ("Unhandled", False)
        assert json.loads(outcome.payload)["errorMessage"] == "RequestId: r1 Error: Runtime exited with error: signal: killed"
        assert logs.lines[-1].endswith("\tStatus: error\tError Type: Runtime.ExitError\t\n")
        assert not sandbox.ready
        for fd in fds:
            os.close(fd)

    asyncio.run(main())


def test_an_invocation_that_outlives_its_timeout_kills_the_sandbox() -> None:
    async def main() -> None:
        sandbox, transport, logs, _, fds = await _started(timeout_s=0.05)
        assert (await sandbox.invoke(_invocation("r1"))).reusable
        transport.silent = True
        outcome = await sandbox.invoke(_invocation("r2"))
        assert (outcome.function_error, outcome.reusable, outcome.duration_ms) == ("Unhandled", False, 50.0)
        assert json.loads(outcome.payload)["errorType"] == "Sandbox.Timedout"
        assert "Task timed out after 0.05 seconds" in logs.lines[-3]
        assert logs.lines[-1].endswith("\tStatus: timeout\t\n")
        assert not sandbox.ready and sandbox.process.killed  # type: ignore[attr-defined]
        for fd in fds:
            os.close(fd)

    asyncio.run(main())


def test_each_invocation_has_its_whole_timeout() -> None:
    """The sandbox's timer, armed for an earlier invocation's deadline, neither ends a later one
    at that deadline nor lets it run past its own."""
    async def main() -> None:
        sandbox, transport, _, _, fds = await _started(timeout_s=0.3)
        assert (await sandbox.invoke(_invocation("r1"))).reusable
        await asyncio.sleep(0.2)
        transport.delay = 0.2  # answered after r1's deadline, before its own
        assert (await sandbox.invoke(_invocation("r2"))).reusable
        transport.silent = True
        started = time.perf_counter()
        outcome = await sandbox.invoke(_invocation("r3"))
        assert json.loads(outcome.payload)["errorType"] == "Sandbox.Timedout"
        assert 0.29 <= time.perf_counter() - started < 2
        for fd in fds:
            os.close(fd)

    asyncio.run(main())
