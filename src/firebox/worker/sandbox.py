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
import functools
import json
import math
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

from firebox import hops
from firebox.logs.api import LogSink
from firebox.worker.api import InvokeOutcome
from firebox.worker.capture import CAPTURE_CHUNK_BYTES, CaptureState, Lines, iso_now, json_platform_lines, platform_json
from firebox.worker.pendingoutput import PendingOutput
from firebox.worker.runtimeapi import (Invocation, RuntimeApiServer, RuntimeChannel, RuntimeOutcome, new_outcome,
                                       serve)
from firebox.worker.sandbox_api import SandboxProcess, SandboxSpec

TAIL_BYTES = 4096
INIT_TIMEOUT_S = 10.0


class SandboxState(enum.Enum):
    STARTING = "starting"
    READY = "ready"
    BUSY = "busy"
    DEAD = "dead"

    # Members are singletons, equal only to themselves: hash them by identity, in C. (Enum's
    # own __hash__ is a Python function, and every move looks a pair of states up in _LEGAL.)
    __hash__ = object.__hash__


# The members the hot path names, read once: in Python 3.11 `SandboxState.READY` goes through
# the enum class's slow attribute path (~100 ns each; 4 per invocation).
_READY, _BUSY = SandboxState.READY, SandboxState.BUSY

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
        channel: RuntimeChannel | None = None,
    ) -> None:
        self.spec = spec
        self.process = process
        self.identity = identity
        self.state = SandboxState.STARTING
        # Initialised, alive and idle (state READY): an attribute kept with the state, not a
        # property, as the worker manager asks it several times per invocation.
        self.ready = False
        self.init_duration_ms: float | None = None
        self.invocations = 0
        self._logs = logs
        self._timeout_s = timeout_s
        # A specialised stem cell brings the channel (and server) it was already serving.
        self._channel = channel if channel is not None else RuntimeChannel()
        self._server: RuntimeApiServer | None = None
        self._readers: list[asyncio.Task[None]] = []
        self._exit: asyncio.Task[int] | None = None
        self._tail: str | None = None  # the invocation's last TAIL_BYTES characters, while it runs
        self._pending_output: PendingOutput | None = None
        self._init_error: Callable[[str], RuntimeOutcome] | None = None
        self._waiting: asyncio.Future[RuntimeOutcome] | None = None  # the running invocation's outcome
        self._deadline = 0.0  # the running invocation's timeout, in loop time
        # The timeout's timer: one at a time for the sandbox, not one per invocation (making and
        # cancelling a timer costs about 6,700 instructions). It is armed for the deadline of the
        # invocation running then, or of an earlier one (deadlines only grow): when it fires it
        # ends the invocation it was armed for if that one still runs, or else is armed again
        # for the one running now, if any (`_timer_fired`).
        self._timer: asyncio.TimerHandle | None = None
        self._on_death = on_death

    @property
    def id(self) -> str:
        return self.spec.sandbox_id

    def _move(self, target: SandboxState) -> None:
        if (self.state, target) not in _LEGAL:
            raise IllegalTransition(f"sandbox {self.id}: {self.state.value} -> {target.value}")
        self.state = target
        self.ready = target is _READY

    # -- start ---------------------------------------------------------------------------------

    async def start(
        self,
        started_at: float,
        init_timeout_s: float = INIT_TIMEOUT_S,
        *,
        server: RuntimeApiServer | None = None,
        exit_task: asyncio.Task[int] | None = None,
    ) -> bool:
        """Wait for init to finish: True when the runtime asked for its first event. A stem
        cell being specialised passes the Runtime API server and exit watch it already runs."""
        self._server = server if server is not None else await serve(
            self._channel, self.process.runtime_api, self.process.runtime_api_connection)
        self._readers = [
            asyncio.create_task(self._capture(self.process.stdout)),
            asyncio.create_task(self._capture(self.process.stderr)),
        ]
        self._exit = exit_task if exit_task is not None else asyncio.create_task(self.process.wait())
        waiters = {self._channel.ready, self._channel.init_error, self._exit}
        done, _ = await asyncio.wait(waiters, timeout=init_timeout_s, return_when=asyncio.FIRST_COMPLETED)
        self.init_duration_ms = (time.perf_counter() - started_at) * 1000
        if self._channel.ready in done and not self._channel.init_error.done():
            self._move(_READY)
            # Once for the sandbox's life, not per invocation: the runtime's exit ends the
            # invocation running then, if any.
            self._exit.add_done_callback(self._end_invocation_on_exit)
            return True
        if self._channel.init_error.done():
            error = self._channel.init_error.result()
            self._init_error = lambda request_id: error
        elif self._exit in done:
            status = self._exit.result()
            self._init_error = lambda request_id: self._exit_error(request_id, status)
        else:
            self._init_error = lambda request_id: init_error(
                "Runtime.InitTimeout", request_id, f"Init phase timed out after {init_timeout_s:.2f} seconds"
            )
        await self.destroy()
        return False

    def init_failure(self, request_id: str) -> InvokeOutcome:
        """The answer for the invocation that triggered a failed init (AWS reports it there)."""
        assert self._init_error is not None
        peak = self.process.memory_peak_bytes()
        return report_init_failure(self._logs, self.identity, self.spec, request_id, self._init_error(request_id), peak)

    # -- invoke --------------------------------------------------------------------------------

    async def invoke(self, invocation: Invocation) -> InvokeOutcome:
        # The moves READY -> BUSY -> READY written out (`_move` checks the others).
        if self.state is not _READY:
            self._move(_BUSY)  # raises IllegalTransition
        self.state, self.ready = _BUSY, False
        cold = self.invocations == 0
        self.invocations += 1
        request_id = invocation.request_id
        self._tail = ""
        self._record(f"START RequestId: {request_id} Version: {self.spec.version}\n")
        started = time.perf_counter()
        self._channel.deliver(invocation)
        hops.mark("delivered")
        # Wait for the runtime's outcome, the runtime's exit or the timeout, whichever comes
        # first: `ending` None, "exit" or "timeout". The outcome itself is awaited, and the exit
        # or the timer ends it with `_Ended` (the runtime can no longer complete it: the sandbox
        # dies). This is on every invocation: no waiter in between saves a callback and a
        # wake-up, about 10,000 instructions, and it is leaner than `asyncio.wait`'s sets; no
        # coroutine of its own either. The exit watch is the sandbox's one callback on its exit
        # task (`_end_invocation_on_exit`), not one added and removed per invocation.
        assert self._exit is not None
        waiting = invocation.outcome
        loop = asyncio.get_running_loop()
        if self._exit.done():  # it exited while idle: its callback found nothing to end then
            loop.call_soon(_end, waiting, "exit")
        self._waiting = waiting
        self._deadline = loop.time() + self._timeout_s
        if self._timer is None:
            self._timer = loop.call_at(self._deadline, self._timer_fired, waiting)
        try:
            await waiting
            ending = None
        except _Ended as ended:
            ending = ended.reason
        finally:
            self._waiting = None
        hops.mark("answered")
        duration_ms = (time.perf_counter() - started) * 1000
        status = None
        if ending is None:
            outcome = invocation.outcome.result()
            if (draining := self._drain_output()) is not None:
                await draining
            reusable = outcome.error_type != "Function.ResponseSizeTooLarge"
            if outcome.error_type is not None and outcome.error_type.startswith("Function."):
                self._record(f"{_error_line(outcome)}\n")
        elif ending == "exit":
            if (draining := self._drain_output()) is not None:
                await draining
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
            self._record(f"{iso_now()} {request_id} Task timed out after {timeout} seconds\n")
            reusable, status, duration_ms = False, "timeout", self._timeout_s * 1000
        if ending is not None:  # (an outcome that came left the channel then)
            self._channel.forget(request_id)
        self._record(f"END RequestId: {request_id}\n", self._report(request_id, duration_ms, init=cold, status=status))
        tail = self._tail.encode()[-TAIL_BYTES:]
        self._tail = None
        function_error = "Unhandled" if outcome.error_type is not None else None
        if reusable:
            if self.state is not _BUSY:  # (destroyed meanwhile)
                self._move(_READY)  # raises IllegalTransition
            self.state, self.ready = _READY, True
        else:
            await self.destroy()
        hops.mark("recorded")
        return new_outcome(InvokeOutcome, (outcome.payload, function_error, reusable, duration_ms, tail))

    def _timer_fired(self, armed_for: asyncio.Future[RuntimeOutcome]) -> None:
        self._timer = None
        if self._waiting is armed_for:
            _end(armed_for, "timeout")
        elif self._waiting is not None:  # a later invocation: its deadline is still to come
            self._timer = asyncio.get_running_loop().call_at(self._deadline, self._timer_fired, self._waiting)

    def _end_invocation_on_exit(self, _: asyncio.Future[int]) -> None:
        if self._waiting is not None:
            _end(self._waiting, "exit")

    def _report(self, request_id: str, duration_ms: float, *, init: bool = False, status: str | None = None) -> str:
        peak = self.process.take_memory_peak()  # and a new measurement starts
        used_mb = math.ceil(peak / (1024 * 1024)) if peak else 0
        # Tab-separated fields, each followed by a tab; one f-string, not a list joined (this
        # is on every invocation: about 2,700 fewer instructions).
        report = (f"REPORT RequestId: {request_id}\tDuration: {duration_ms:.2f} ms\t"
                  f"Billed Duration: {max(1, math.ceil(duration_ms))} ms\tMemory Size: {self.spec.memory_mb} MB\t"
                  f"Max Memory Used: {used_mb} MB\t")
        if init and self.init_duration_ms is not None:
            report += f"Init Duration: {self.init_duration_ms:.2f} ms\t"
        if status is not None:
            report += f"Status: {status}\t"
        return report + "\n"

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
    # Function output is read in chunks and cut into records at newlines (`capture.Lines`); a line
    # longer than logs.api.MAX_EVENT_BYTES becomes several records, never a truncated one. With
    # LogFormat=JSON the platform's START / END / REPORT become Lambda's JSON platform records
    # (`capture.platform_json`); the runtimes already write the function's own records as JSON.

    @functools.cached_property
    def _capture_state(self) -> CaptureState:
        return CaptureState(json=self.spec.environment.get("AWS_LAMBDA_LOG_FORMAT", "").upper() == "JSON")

    async def _capture(self, reader: asyncio.StreamReader) -> None:
        lines = Lines()
        self._capture_state.pipes.append(lines)
        while True:
            chunk = await reader.read(CAPTURE_CHUNK_BYTES)
            if not chunk:
                self._record_lines(lines.flush())
                return
            self._record_lines(lines.feed(chunk))

    def _drain_output(self, deadline_s: float = 0.05) -> Awaitable[None] | None:
        """Record the unfinished last line of each pipe, if any: it belongs to the invocation
        ending now. If the runtime wrote output not recorded yet, that is done after waiting
        (briefly) for it: the caller awaits what this returns then. (Usually nothing is pending:
        then no coroutine is made, and the clock is not read.)"""
        if self._pending_output is None or not self._pending_output.complete:
            self._pending_output = PendingOutput((self.process.stdout, self.process.stderr))
        if self._pending_output():
            return self._drain_pending_output(deadline_s)
        self._flush_partial_lines()
        return None

    async def _drain_pending_output(self, deadline_s: float) -> None:
        pending = self._pending_output
        assert pending is not None
        end = time.perf_counter() + deadline_s
        while True:
            await asyncio.sleep(0)
            if time.perf_counter() >= end:
                return  # still in flight: its lines are recorded when they come
            if not pending():
                break
        self._flush_partial_lines()

    def _flush_partial_lines(self) -> None:
        for lines in self._capture_state.pipes:
            if lines.partial:  # usually none: no call for nothing to record
                self._record_lines(lines.flush())

    def _record_lines(self, texts: Sequence[str], *, platform: bool = False) -> None:
        if not texts:
            return
        self._logs.append_lines(self.identity.group, self.identity.stream, int(time.time() * 1000), texts,
                                platform=platform)
        if self._tail is not None:
            # Only what the 4 KB tail of LogType=Tail can show, so memory stays flat in a flood:
            # the last TAIL_BYTES characters, which encode to at least TAIL_BYTES bytes. (One
            # string, not a list of encoded records trimmed one by one: about 11,000 fewer
            # instructions per invocation.)
            self._tail = (self._tail + "".join(texts))[-TAIL_BYTES:]

    def _record(self, *texts: str) -> None:
        """Platform lines (START, END, REPORT, an error or timeout line) of the invocation, as
        one segment (END and REPORT go together: one append instead of two)."""
        if self._capture_state.json:
            texts = tuple(line for text in texts for line in self._platform_json(text))
            if not texts:
                return
        # _record_lines(texts, platform=True), written out: twice per invocation.
        self._logs.append_lines(self.identity.group, self.identity.stream, int(time.time() * 1000), texts,
                                platform=True)
        if self._tail is not None:
            self._tail = (self._tail + "".join(texts))[-TAIL_BYTES:]

    def _platform_json(self, text: str) -> list[str]:
        return platform_json(text, self._capture_state)

    # -- end -----------------------------------------------------------------------------------

    async def destroy(self) -> None:
        """Kill the runtime and release everything; idempotent."""
        self.state = SandboxState.DEAD
        self.ready = False
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
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


class _Ended(Exception):
    """An invocation's outcome that never came: the runtime exited or timed out first."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _end(outcome: asyncio.Future[RuntimeOutcome], reason: str, *_: object) -> None:
    if not outcome.done():
        outcome.set_exception(_Ended(reason))


def init_error(error_type: str, request_id: str, reason: str) -> RuntimeOutcome:
    body = {"errorType": error_type, "errorMessage": f"RequestId: {request_id} Error: {reason}"}
    return RuntimeOutcome(json.dumps(body).encode(), error_type)


def report_init_failure(
    logs: LogSink, identity: Identity, spec: SandboxSpec, request_id: str, error: RuntimeOutcome,
    peak_bytes: int | None = None,
) -> InvokeOutcome:
    """Log and answer the invocation that found its sandbox's init failed."""
    used_mb = math.ceil(peak_bytes / (1024 * 1024)) if peak_bytes else 0
    lines = [
        f"START RequestId: {request_id} Version: {spec.version}\n",
        f"{_error_line(error)}\n",
        f"END RequestId: {request_id}\n",
        "\t".join([f"REPORT RequestId: {request_id}", "Duration: 0.00 ms", "Billed Duration: 0 ms",
                   f"Memory Size: {spec.memory_mb} MB", f"Max Memory Used: {used_mb} MB",
                   f"Status: error\tError Type: {error.error_type}"]) + "\t\n",
    ]
    logged = json_platform_lines(lines) if spec.environment.get("AWS_LAMBDA_LOG_FORMAT") == "JSON" else lines
    logs.append_lines(identity.group, identity.stream, _now_ms(), logged, platform=True)
    return InvokeOutcome(error.payload, "Unhandled", False, 0.0, "".join(lines).encode()[-TAIL_BYTES:])


class FailedInit:
    """A sandbox that could not even start (e.g. no valid bootstrap): it holds the error for the
    invocation that asked for it, as a dead sandbox whose init failed does."""

    def __init__(self, spec: SandboxSpec, logs: LogSink, identity: Identity, error_type: str, reason: str) -> None:
        self.spec = spec
        self._logs = logs
        self._identity = identity
        self._error_type = error_type
        self._reason = reason

    @property
    def id(self) -> str:
        return self.spec.sandbox_id

    @property
    def ready(self) -> bool:
        return False

    def init_failure(self, request_id: str) -> InvokeOutcome:
        error = init_error(self._error_type, request_id, self._reason)
        return report_init_failure(self._logs, self._identity, self.spec, request_id, error)

    async def destroy(self) -> None:
        return None


def _error_line(outcome: RuntimeOutcome) -> str:
    try:
        body = json.loads(outcome.payload)
        return f"{body.get('errorType', outcome.error_type)}: {body.get('errorMessage', '')}".strip()
    except (ValueError, AttributeError):
        return f"{outcome.error_type}"


def _signal_name(number: int) -> str:
    import signal

    try:
        return signal.Signals(number).name.removeprefix("SIG").lower()
    except ValueError:
        return str(number)


def encode_tail(tail: bytes) -> str:
    return base64.b64encode(tail).decode()
