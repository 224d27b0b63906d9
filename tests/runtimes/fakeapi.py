"""A small Runtime API server and a runtime-process driver for testing the real bootstraps.

`FakeRuntimeAPI` serves `/2018-06-01/runtime/...` on 127.0.0.1 (HTTP/1.1, keep-alive) in a
thread: `invoke()` queues an event for the runtime's next `GET /next`; `outcome()` waits for the
runtime's `/response` or `/error` for that request; `init_error()` waits for `/init/error`.
`RuntimeProcess` runs a bootstrap as a subprocess and collects its stdout/stderr lines.
Every wait has a deadline; nothing sleeps for a fixed time.
"""

from __future__ import annotations

import json
import os
import queue
import re
import subprocess
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

WAIT_S = 10.0
PREFIX = "/2018-06-01/runtime"
ARN = "arn:aws:lambda:us-east-1:123456789012:function:fn"


@dataclass
class Event:
    request_id: str
    body: bytes
    headers: dict[str, str]


@dataclass
class Posted:
    """What the runtime POSTed: `kind` is `response`, `error` or `init-error`."""

    kind: str
    request_id: str
    headers: dict[str, str]  # lower-cased names
    body: bytes
    arrived_ms: float = field(default_factory=lambda: time.time() * 1000)

    def json(self) -> Any:
        return json.loads(self.body)


class FakeRuntimeAPI:
    def __init__(self) -> None:
        self.events: queue.Queue[Event] = queue.Queue()
        self.next_calls: queue.Queue[float] = queue.Queue()  # perf_counter() of each GET /next
        self.init_errors: queue.Queue[Posted] = queue.Queue()
        self._posted: dict[str, queue.Queue[Posted]] = {}
        self._lock = threading.Lock()
        self.closed = threading.Event()
        self.connections = 0
        self.chunked_next = False  # answer /next with Transfer-Encoding: chunked
        self.drop_after_post = False  # close the connection after each POST, unannounced
        api = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def setup(self) -> None:
                super().setup()
                with api._lock:
                    api.connections += 1

            def _reply(self, status: int, body: bytes = b'{"status":"OK"}', headers: dict[str, str] | None = None,
                       chunked: bool = False) -> None:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                if chunked:
                    self.send_header("Transfer-Encoding", "chunked")
                else:
                    self.send_header("Content-Length", str(len(body)))
                for name, value in (headers or {}).items():
                    self.send_header(name, value)
                self.end_headers()
                if chunked:
                    half = len(body) // 2
                    for part in (body[:half], body[half:]):
                        if part:
                            self.wfile.write(b"%x\r\n%s\r\n" % (len(part), part))
                    self.wfile.write(b"0\r\n\r\n")
                else:
                    self.wfile.write(body)

            def do_GET(self) -> None:  # noqa: N802
                if self.path != f"{PREFIX}/invocation/next":
                    self._reply(404, b'{"errorType":"InvalidRequest"}')
                    return
                api.next_calls.put(time.perf_counter())
                while True:
                    if api.closed.is_set():
                        self.close_connection = True
                        return  # drop the connection unanswered: the platform went away
                    try:
                        event = api.events.get(timeout=0.05)
                    except queue.Empty:
                        continue
                    break
                self._reply(200, event.body, event.headers, chunked=api.chunked_next)

            def do_POST(self) -> None:  # noqa: N802
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                headers = {k.lower(): v for k, v in self.headers.items()}
                if self.path == f"{PREFIX}/init/error":
                    api.init_errors.put(Posted("init-error", "", headers, body))
                    self._reply(202)
                    return
                found = re.fullmatch(PREFIX + r"/invocation/([^/]+)/(response|error)", self.path)
                if not found:
                    self._reply(404, b'{"errorType":"InvalidRequest"}')
                    return
                request_id, kind = found.groups()
                api._queue_for(request_id).put(Posted(kind, request_id, headers, body))
                self._reply(202)
                if api.drop_after_post:
                    self.close_connection = True  # without saying so: the client finds out

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.address = f"127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()

    def _queue_for(self, request_id: str) -> queue.Queue[Posted]:
        with self._lock:
            return self._posted.setdefault(request_id, queue.Queue())

    def invoke(
        self,
        event: Any = None,
        *,
        raw: bytes | None = None,
        request_id: str | None = None,
        deadline_ms: int | None = None,
        arn: str = ARN,
        trace_id: str | None = "Root=1-5759e988-bd862e3fe1be46a994272793;Sampled=1",
        client_context: str | None = None,
        identity: str | None = None,
    ) -> str:
        """Queue an event for the runtime; its request id."""
        request_id = request_id or str(uuid.uuid4())
        headers = {
            "Lambda-Runtime-Aws-Request-Id": request_id,
            "Lambda-Runtime-Deadline-Ms": str(deadline_ms if deadline_ms is not None else int(time.time() * 1000) + 30_000),
            "Lambda-Runtime-Invoked-Function-Arn": arn,
        }
        if trace_id is not None:
            headers["Lambda-Runtime-Trace-Id"] = trace_id
        if client_context is not None:
            headers["Lambda-Runtime-Client-Context"] = client_context
        if identity is not None:
            headers["Lambda-Runtime-Cognito-Identity"] = identity
        body = raw if raw is not None else json.dumps(event).encode()
        self.events.put(Event(request_id, body, headers))
        return request_id

    def outcome(self, request_id: str, timeout: float = WAIT_S) -> Posted:
        """The runtime's `/response` or `/error` for `request_id`."""
        try:
            return self._queue_for(request_id).get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"no response or error for {request_id} within {timeout} s") from None

    def call(self, event: Any = None, **kwargs: Any) -> Posted:
        return self.outcome(self.invoke(event, **kwargs))

    def init_error(self, timeout: float = WAIT_S) -> Posted:
        try:
            return self.init_errors.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"no init error within {timeout} s") from None

    def wait_next(self, timeout: float = WAIT_S) -> float:
        """The perf_counter() time at which a runtime's GET /next arrived."""
        try:
            return self.next_calls.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"no GET /next within {timeout} s") from None

    def close(self) -> None:
        """Go away: stop listening, then drop the connections of pending `GET /next`s."""
        self.server.shutdown()
        self.server.server_close()
        self.closed.set()


class RuntimeProcess:
    """A bootstrap running as a subprocess, its output lines collected by reader threads."""

    def __init__(self, argv: list[str], env: dict[str, str], cwd: Path) -> None:
        self.started = time.perf_counter()
        self.proc = subprocess.Popen(argv, env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self.stdout: list[str] = []
        self.stderr: list[str] = []
        self._changed = threading.Condition()
        self._readers = [
            threading.Thread(target=self._read, args=(self.proc.stdout, self.stdout), daemon=True),
            threading.Thread(target=self._read, args=(self.proc.stderr, self.stderr), daemon=True),
        ]
        for reader in self._readers:
            reader.start()

    def _read(self, stream: Any, lines: list[str]) -> None:
        for raw in iter(stream.readline, b""):
            with self._changed:
                lines.append(raw.decode("utf-8", errors="replace").rstrip("\n"))
                self._changed.notify_all()
        stream.close()

    def wait_line(self, predicate: Callable[[str], bool], stream: str = "stdout", timeout: float = WAIT_S) -> str:
        """The first line of `stream` satisfying `predicate`, waiting for it up to `timeout`."""
        lines = self.stdout if stream == "stdout" else self.stderr
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                for line in lines:
                    if predicate(line):
                        return line
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"no matching {stream} line within {timeout} s; got {lines!r}")
                self._changed.wait(left)

    def wait_exit(self, timeout: float = WAIT_S) -> int:
        code = self.proc.wait(timeout=timeout)
        for reader in self._readers:
            reader.join(timeout)
        return code

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.wait_exit()


def lambda_environment(api: FakeRuntimeAPI, task_root: Path, handler: str, **extra: str) -> dict[str, str]:
    """The variables a Firebox worker gives a sandbox (LAMBDA.md), pointed at `api`."""
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "LANG": "C.UTF-8",
        "TZ": ":UTC",
        "AWS_LAMBDA_RUNTIME_API": api.address,
        "_HANDLER": handler,
        "LAMBDA_TASK_ROOT": str(task_root),
        "LAMBDA_RUNTIME_DIR": "/var/runtime",
        "AWS_LAMBDA_FUNCTION_NAME": "fn",
        "AWS_LAMBDA_FUNCTION_VERSION": "$LATEST",
        "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": "256",
        "AWS_LAMBDA_LOG_GROUP_NAME": "/aws/lambda/fn",
        "AWS_LAMBDA_LOG_STREAM_NAME": "2024/01/01/[$LATEST]0123456789abcdef0123456789abcdef",
        "AWS_LAMBDA_INITIALIZATION_TYPE": "on-demand",
        "AWS_REGION": "us-east-1",
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    env.update(extra)
    return env
