"""One sandbox: a runtime process, its Runtime API, its log stream, and its lifecycle.

    STARTING --(runtime's first /next)--> READY --invoke--> BUSY --outcome--> READY
        \\--(init error, exit, init timeout)--> DEAD        \\--(timeout, crash, OOM)--> DEAD

A sandbox belongs to one function version for its whole life and runs one invocation at a time
(the transitions above are checked). Code outside the handler runs once, during STARTING; the
first invocation after it reports `Init Duration`. Anything that leaves the runtime in an unknown
state (timeout, crash, out-of-memory, a response too large) kills the sandbox: it is never
handed out again.

Logs: every line the runtime writes to stdout/stderr is a record of the sandbox's stream (the
runtimes turn a multi-line record's inner newlines into `\\r`, so one line is one record); the
platform adds START / END / REPORT around each invocation. Before END, the output pipes are
drained so that what the function printed before returning is in its own invocation's log.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import enum
import fcntl
import json
import math
import struct
import termios
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from firebox.logs.api import LogRecord, LogSink
from firebox.worker.api import InvokeOutcome
from firebox.worker.runtimeapi import Invocation, RuntimeChannel, RuntimeOutcome, serve
from firebox.worker.sandbox_api import SandboxProcess, SandboxSpec

TAIL_BYTES = 4096
INIT_TIMEOUT_S = 10.0


class SandboxState(enum.Enum):
    STARTING = "starting"
    READY = "ready"
    BUSY = "busy"
    DEAD = "dead"


_LEGAL = {
    (SandboxState.STARTING, SandboxState.READY),
    (SandboxState.STARTING, SandboxState.DEAD),
    (SandboxState.READY, SandboxState.BUSY),
    (SandboxState.READY, SandboxState.DEAD),
    (SandboxState.BUSY, SandboxState.READY),
    (SandboxState.BUSY, SandboxState.DEAD),
}


class IllegalTransition(RuntimeError):
    """A bug: the platform asked a sandbox for something its state does not allow."""


@dataclass(frozen=True)
class Identity:
    """Where the sandbox's records go."""

    group: str
    stream: str


def _now_ms() -> int:
    return int(time.time() * 1000)


def _pending_bytes(reader: asyncio.StreamReader) -> int:
    """Bytes written by the runtime that we have not consumed yet (pipe + reader buffer)."""
    buffered = len(getattr(reader, "_buffer", b""))
    transport = getattr(reader, "_transport", None)
    pipe = transport.get_extra_info("pipe") if transport is not None else None
    if pipe is None:
        return buffered
    try:
        raw = fcntl.ioctl(pipe.fileno(), termios.FIONREAD, struct.pack("i", 0))
    except OSError:
        return buffered
    return buffered + struct.unpack("i", raw)[0]


class Sandbox:
    def __init__(
        self,
        spec: SandboxSpec,
        process: SandboxProcess,
        logs: LogSink,
        identity: Identity,
        *,
        timeout_s: float,
        on_death: Callable[[Sandbox], Awaitable[None]] | None = None,
    ) -> None:
        self.spec = spec
        self.process = process
        self.identity = identity
        self.state = SandboxState.STARTING
        self.init_duration_ms: float | None = None
        self.invocations = 0
        self._logs = logs
        self._timeout_s = timeout_s
        self._channel = RuntimeChannel()
        self._server: asyncio.AbstractServer | None = None
        self._readers: list[asyncio.Task[None]] = []
        self._exit: asyncio.Task[int] | None = None
        self._tail: list[bytes] | None = None
        self._init_error: RuntimeOutcome | None = None
        self._on_death = on_death

    @property
    def id(self) -> str:
        return self.spec.sandbox_id

    @property
    def ready(self) -> bool:
        return self.state is SandboxState.READY

    def _move(self, target: SandboxState) -> None:
        if (self.state, target) not in _LEGAL:
            raise IllegalTransition(f"sandbox {self.id}: {self.state.value} -> {target.value}")
        self.state = target

    # -- start ---------------------------------------------------------------------------------

    async def start(self, started_at: float, init_timeout_s: float = INIT_TIMEOUT_S) -> bool:
        """Wait for init to finish: True when the runtime asked for its first event."""
        self._server = await serve(self._channel, self.process.runtime_api)
        self._readers = [
            asyncio.create_task(self._capture(self.process.stdout)),
            asyncio.create_task(self._capture(self.process.stderr)),
        ]
        self._exit = asyncio.create_task(self.process.wait())
        waiters = {self._channel.ready, self._channel.init_error, self._exit}
        done, _ = await asyncio.wait(waiters, timeout=init_timeout_s, return_when=asyncio.FIRST_COMPLETED)
        self.init_duration_ms = (time.perf_counter() - started_at) * 1000
        if self._channel.ready in done and not self._channel.init_error.done():
            self._move(SandboxState.READY)
            return True
        if self._channel.init_error.done():
            self._init_error = self._channel.init_error.result()
        elif self._exit in done:
            self._init_error = self._exit_error("", self._exit.result())
        else:
            self._init_error = RuntimeOutcome(
                json.dumps({"errorType": "Runtime.InitTimeout",
                            "errorMessage": f"Init phase timed out after {init_timeout_s:.2f} seconds"}).encode(),
                "Runtime.InitTimeout",
            )
        await self.destroy()
        return False

    def init_failure(self, request_id: str) -> InvokeOutcome:
        """The answer for the invocation that triggered a failed init (AWS reports it there)."""
        assert self._init_error is not None
        tail = [self._line(f"START RequestId: {request_id} Version: {self.spec.version}\n")]
        error = self._init_error
        tail.append(self._line(f"{_error_line(error)}\n"))
        tail.append(self._line(f"END RequestId: {request_id}\n"))
        tail.append(self._line(self._report(request_id, 0.0, status=f"error\tError Type: {error.error_type}")))
        self._emit_platform(tail)
        return InvokeOutcome(error.payload, "Unhandled", False, 0.0, b"".join(tail)[-TAIL_BYTES:])

    # -- invoke --------------------------------------------------------------------------------

    async def invoke(self, invocation: Invocation) -> InvokeOutcome:
        self._move(SandboxState.BUSY)
        cold = self.invocations == 0
        self.invocations += 1
        request_id = invocation.request_id
        self._tail = []
        self._record(f"START RequestId: {request_id} Version: {self.spec.version}\n")
        started = time.perf_counter()
        self._channel.deliver(invocation)
        assert self._exit is not None
        done, _ = await asyncio.wait({invocation.outcome, self._exit}, timeout=self._timeout_s,
                                     return_when=asyncio.FIRST_COMPLETED)
        duration_ms = (time.perf_counter() - started) * 1000
        status = None
        if invocation.outcome in done:
            outcome = invocation.outcome.result()
            await self._drain_output()
            reusable = outcome.error_type != "Function.ResponseSizeTooLarge"
            if outcome.error_type is not None and outcome.error_type.startswith("Function."):
                self._record(f"{_error_line(outcome)}\n")
        elif self._exit in done:
            await self._drain_output()
            outcome = self._exit_error(request_id, self._exit.result())
            self._record(f"{_error_line(outcome)}\n")
            reusable, status = False, f"error\tError Type: {outcome.error_type}"
        else:
            timeout = f"{self._timeout_s:.2f}"
            outcome = RuntimeOutcome(
                json.dumps({"errorType": "Sandbox.Timedout",
                            "errorMessage": f"RequestId: {request_id} Error: Task timed out after {timeout} seconds"}).encode(),
                "Sandbox.Timedout",
            )
            self._record(f"{_iso_now()} {request_id} Task timed out after {timeout} seconds\n")
            reusable, status, duration_ms = False, "timeout", self._timeout_s * 1000
        self._channel.forget(request_id)
        self._record(f"END RequestId: {request_id}\n")
        self._record(self._report(request_id, duration_ms, init=cold, status=status))
        tail = b"".join(self._tail)[-TAIL_BYTES:]
        self._tail = None
        function_error = "Unhandled" if outcome.error_type is not None else None
        if reusable:
            self._move(SandboxState.READY)
        else:
            await self.destroy()
        return InvokeOutcome(outcome.payload, function_error, reusable, duration_ms, tail)

    def _report(self, request_id: str, duration_ms: float, *, init: bool = False, status: str | None = None) -> str:
        peak = self.process.memory_peak_bytes()
        self.process.reset_memory_peak()
        used_mb = math.ceil(peak / (1024 * 1024)) if peak else 0
        fields = [
            f"REPORT RequestId: {request_id}",
            f"Duration: {duration_ms:.2f} ms",
            f"Billed Duration: {max(1, math.ceil(duration_ms))} ms",
            f"Memory Size: {self.spec.memory_mb} MB",
            f"Max Memory Used: {used_mb} MB",
        ]
        if init and self.init_duration_ms is not None:
            fields.append(f"Init Duration: {self.init_duration_ms:.2f} ms")
        if status is not None:
            fields.append(f"Status: {status}")
        return "\t".join(fields) + "\t\n"

    def _exit_error(self, request_id: str, status: int) -> RuntimeOutcome:
        prefix = f"RequestId: {request_id} Error: " if request_id else "Error: "
        if self.process.oom_kills() > 0 or status == -9:
            reason = "Runtime exited with error: signal: killed"
        elif status < 0:
            reason = f"Runtime exited with error: signal: {_signal_name(-status)}"
        elif status > 0:
            reason = f"Runtime exited with error: exit status {status}"
        else:
            reason = "Runtime exited without providing a reason"
        body = {"errorType": "Runtime.ExitError", "errorMessage": prefix + reason}
        return RuntimeOutcome(json.dumps(body).encode(), "Runtime.ExitError")

    # -- logs ----------------------------------------------------------------------------------

    async def _capture(self, reader: asyncio.StreamReader) -> None:
        while True:
            try:
                line = await reader.readuntil(b"\n")
            except asyncio.IncompleteReadError as exc:
                if exc.partial:
                    self._record_bytes(exc.partial + b"\n")
                return
            except asyncio.LimitOverrunError as exc:
                # A line longer than the reader's buffer: keep it in pieces rather than lose it.
                self._record_bytes(await reader.readexactly(exc.consumed))
                continue
            self._record_bytes(line)

    async def _drain_output(self, deadline_s: float = 0.05) -> None:
        end = time.perf_counter() + deadline_s
        while time.perf_counter() < end:
            if not any(_pending_bytes(r) for r in (self.process.stdout, self.process.stderr)):
                return
            await asyncio.sleep(0)

    def _record_bytes(self, line: bytes) -> None:
        text = line.decode("utf-8", errors="replace").replace("\r", "\n")
        if not text.endswith("\n"):
            text += "\n"
        self._record(text)

    def _record(self, text: str) -> None:
        self._logs.append(self.identity.group, self.identity.stream, [LogRecord(_now_ms(), text)])
        if self._tail is not None:
            self._tail.append(text.encode())

    def _line(self, text: str) -> bytes:
        return text.encode()

    def _emit_platform(self, lines: list[bytes]) -> None:
        for line in lines:
            self._logs.append(self.identity.group, self.identity.stream, [LogRecord(_now_ms(), line.decode())])

    # -- end -----------------------------------------------------------------------------------

    async def destroy(self) -> None:
        """Kill the runtime and release everything; idempotent."""
        if self.state is not SandboxState.DEAD:
            self.state = SandboxState.DEAD
        self.process.kill()
        if self._exit is not None:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await asyncio.wait_for(asyncio.shield(self._exit), timeout=5)
        if self._server is not None:
            self._server.close()
        for reader in self._readers:
            reader.cancel()
        with contextlib.suppress(Exception):
            await self.process.cleanup()
        if self._on_death is not None:
            callback, self._on_death = self._on_death, None
            await callback(self)


def _error_line(outcome: RuntimeOutcome) -> str:
    try:
        body = json.loads(outcome.payload)
        return f"{body.get('errorType', outcome.error_type)}: {body.get('errorMessage', '')}".strip()
    except (ValueError, AttributeError):
        return f"{outcome.error_type}"


def _iso_now() -> str:
    moment = time.time()
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(moment)) + f".{int(moment * 1000) % 1000:03d}Z"


def _signal_name(number: int) -> str:
    import signal

    try:
        return signal.Signals(number).name.removeprefix("SIG").lower()
    except ValueError:
        return str(number)


def encode_tail(tail: bytes) -> str:
    return base64.b64encode(tail).decode()
