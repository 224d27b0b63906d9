"""Helpers for the end-to-end suite: starting `firebox serve`, clients, zips, polling, error checks.

Everything here waits by polling with a deadline, never by sleeping a fixed time, so the suite is
as fast as the server allows and fails loudly (with the server's stderr) when it is too slow.
"""

from __future__ import annotations

import base64
import hashlib
import http.client
import io
import json
import os
import queue
import select
import signal
import subprocess
import sys
import threading
import time
import urllib.parse
import uuid
import zipfile
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import boto3
import botocore.config
import pytest
from botocore.exceptions import ClientError

ACCOUNT = "000000000000"
REGION = "us-east-1"
ROLE = f"arn:aws:iam::{ACCOUNT}:role/lambda-role"
RUNTIME = "python3.11"
HANDLER = "app.handler"
READY_PREFIX = "Firebox ready at "
START_DEADLINE_S = 30.0
STOP_DEADLINE_S = 15.0
POLL_S = 0.02
# AWS's limit on a control-plane request body (50 MB of zip, base64-encoded, in JSON).
MAX_REQUEST_BYTES = 69_905_067
MAX_UNZIPPED_BYTES = 262_144_000
UNZIP_FAILED = "Could not unzip uploaded file. Please check your file, then try to upload again."

T = TypeVar("T")


def function_arn(name: str, qualifier: str | None = None, *, account: str = ACCOUNT, region: str = REGION) -> str:
    arn = f"arn:aws:lambda:{region}:{account}:function:{name}"
    return f"{arn}:{qualifier}" if qualifier else arn


def not_found_message(name: str, qualifier: str | None = None, **where: str) -> str:
    return f"Function not found: {function_arn(name, qualifier, **where)}"


def unique_name(prefix: str = "fn") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


# -- code packages ----------------------------------------------------------------------------

ZIP_EPOCH = (1980, 1, 1, 0, 0, 0)


def make_zip(files: Mapping[str, str | bytes], modes: Mapping[str, int] | None = None) -> bytes:
    """A zip built in memory, deterministically (same input, same bytes, same CodeSha256).
    `modes` gives unix permission bits per entry (default 0o644)."""
    modes = modes or {}
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, content in files.items():
            info = zipfile.ZipInfo(name, ZIP_EPOCH)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = (0o100000 | modes.get(name, 0o644)) << 16
            archive.writestr(info, content.encode() if isinstance(content, str) else content)
    return buffer.getvalue()


def handler_zip(marker: str = "v1") -> bytes:
    """A valid Python package; `marker` changes its bytes (hence its CodeSha256)."""
    return make_zip({"app.py": f"MARKER = {marker!r}\n\ndef handler(event, context):\n    return MARKER\n"})


def code_sha256(data: bytes) -> str:
    return base64.b64encode(hashlib.sha256(data).digest()).decode()


# -- polling ----------------------------------------------------------------------------------


def wait_for(probe: Callable[[], T | None], *, deadline_s: float, what: str) -> T:
    """Call `probe` every POLL_S until it returns something truthy; fail after `deadline_s`."""
    end = time.monotonic() + deadline_s
    last: T | None = None
    while True:
        last = probe()
        if last:
            return last
        if time.monotonic() > end:
            pytest.fail(f"timed out after {deadline_s} s waiting for {what}; last: {last!r}")
        time.sleep(POLL_S)


def wait_active(lam: Any, name: str, *, qualifier: str | None = None, deadline_s: float = 10.0) -> dict[str, Any]:
    """Poll GetFunctionConfiguration until State is Active and no update is in progress."""
    kwargs = {"FunctionName": name}
    if qualifier:
        kwargs["Qualifier"] = qualifier
    seen: list[tuple[str, str]] = []

    def probe() -> dict[str, Any] | None:
        config = lam.get_function_configuration(**kwargs)
        state, update = config.get("State"), config.get("LastUpdateStatus")
        if not seen or seen[-1] != (state, update):
            seen.append((state, update))
        assert state != "Failed", f"{name} failed: {config.get('StateReason')}"
        if state == "Active" and update != "InProgress":
            return config
        return None

    return wait_for(probe, deadline_s=deadline_s, what=f"{name} to become Active (states seen: {seen})")


# -- creating functions -----------------------------------------------------------------------


def create_function(lam: Any, name: str, *, zip_bytes: bytes | None = None, **params: Any) -> dict[str, Any]:
    """CreateFunction with sensible defaults (python3.11, app.handler, the test role)."""
    args: dict[str, Any] = {
        "FunctionName": name,
        "Runtime": RUNTIME,
        "Role": ROLE,
        "Handler": HANDLER,
        "Code": {"ZipFile": handler_zip() if zip_bytes is None else zip_bytes},
    }
    args.update(params)
    return lam.create_function(**args)


def create_active(lam: Any, name: str, **kwargs: Any) -> dict[str, Any]:
    """Create a function and wait until it is Active; returns its current configuration."""
    create_function(lam, name, **kwargs)
    return wait_active(lam, name)


def function_names(lam: Any) -> list[str]:
    """Every function's name, through the paginator (for 'nothing changed' checks)."""
    names: list[str] = []
    for page in lam.get_paginator("list_functions").paginate():
        names += [f["FunctionName"] for f in page["Functions"]]
    return sorted(names)


def strip_meta(response: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in response.items() if k != "ResponseMetadata"}


# -- errors -----------------------------------------------------------------------------------


@dataclass
class RaisedError:
    code: str = ""
    message: str = ""
    status: int = 0
    response: dict[str, Any] = field(default_factory=dict)


@contextmanager
def raises_aws(
    code: str, status: int, message: str | None = None, contains: tuple[str, ...] | str = ()
) -> Iterator[RaisedError]:
    """Expect a botocore ClientError with this code, HTTP status and message (exact, or parts)."""
    raised = RaisedError()
    with pytest.raises(ClientError) as info:
        yield raised
    response = info.value.response
    raised.response = response
    raised.code = response["Error"].get("Code", "")
    raised.message = response["Error"].get("Message", "")
    raised.status = response["ResponseMetadata"]["HTTPStatusCode"]
    summary = f"got {raised.status} {raised.code}: {raised.message!r}"
    assert (raised.code, raised.status) == (code, status), f"expected {status} {code}, {summary}"
    if message is not None:
        assert raised.message == message, summary
    for part in (contains,) if isinstance(contains, str) else contains:
        assert part in raised.message, f"expected {part!r} in the message, {summary}"


# -- raw HTTP ---------------------------------------------------------------------------------


@dataclass
class HttpResult:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


def http_request(
    endpoint: str,
    method: str,
    path: str,
    body: bytes | None = None,
    headers: Mapping[str, str] | None = None,
    *,
    chunked: bool = False,
    timeout_s: float = 60.0,
) -> HttpResult:
    """One HTTP request with nothing in between (no client-side validation, no retries).
    A server may answer (413) before it has read a large body and close the connection; the
    answer is still read when it arrived. `chunked` sends the body with
    `Transfer-Encoding: chunked`, without a Content-Length."""
    url = urllib.parse.urlsplit(endpoint)
    conn = http.client.HTTPConnection(url.hostname, url.port, timeout=timeout_s)
    try:
        all_headers = {"Content-Type": "application/json"} if body is not None else {}
        all_headers.update(headers or {})
        if body is None or (len(body) <= _STREAM_ABOVE and not chunked):
            conn.request(method, path, body=body, headers=all_headers)
        else:
            _send_streaming(conn, method, path, body, all_headers, chunked=chunked)
        response = conn.getresponse()
        data = response.read()
        return HttpResult(response.status, {k.lower(): v for k, v in response.getheaders()}, data)
    finally:
        conn.close()


_STREAM_ABOVE = 1 << 20


def _send_streaming(conn: http.client.HTTPConnection, method: str, path: str, body: bytes,
                    headers: Mapping[str, str], *, chunked: bool) -> None:
    """Send a large body 1 MiB at a time, and stop as soon as the server has answered (a 413 is
    sent before the body is read): writing on would race the server's close of the socket."""
    conn.putrequest(method, path, skip_accept_encoding=True)
    framing = {"Transfer-Encoding": "chunked"} if chunked else {"Content-Length": str(len(body))}
    for key, value in {**headers, **framing}.items():
        conn.putheader(key, value)
    conn.endheaders()
    sock = conn.sock
    assert sock is not None
    view = memoryview(body)
    pieces = [view[i:i + _STREAM_ABOVE] for i in range(0, len(body), _STREAM_ABOVE)]
    for piece in [*pieces, None]:
        readable, _, _ = select.select([sock], [], [], 0)
        if readable:
            return
        if piece is None:
            data = b"0\r\n\r\n" if chunked else b""
        else:
            data = b"%x\r\n%s\r\n" % (len(piece), piece) if chunked else bytes(piece)
        try:
            sock.sendall(data)
        except (BrokenPipeError, ConnectionResetError):
            return  # the server answered and closed; the answer is read next


def assert_error_shape(result: HttpResult, code: str, status: int) -> str:
    """AWS's error shape: status, `x-amzn-ErrorType: <code>`, body {"Type": "User", "message"}
    (`Message` for ResourceNotFoundException). Returns the message."""
    assert result.status == status, (result.status, result.body[:500])
    assert result.headers.get("x-amzn-errortype", "").split(":")[0] == code, result.headers
    body = result.json()
    assert body.get("Type") == ("User" if status < 500 else body.get("Type")), body
    key = "Message" if code == "ResourceNotFoundException" else "message"
    assert isinstance(body.get(key), str) and body[key], f"expected a {key!r} field in {body}"
    return body[key]


# -- the server process -----------------------------------------------------------------------


def clean_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """This process's environment without FIREBOX_* settings, plus `extra`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("FIREBOX_")}
    env.update(extra or {})
    return env


class FireboxServer:
    """A running `python -m firebox serve` process."""

    def __init__(self, process: subprocess.Popen[str], endpoint: str, data_dir: Path, stderr_path: Path,
                 region: str) -> None:
        self.process = process
        self.endpoint = endpoint
        self.data_dir = data_dir
        self.stderr_path = stderr_path
        self.region = region
        self._clients: dict[bool, Any] = {}

    def __repr__(self) -> str:
        return f"<FireboxServer {self.endpoint} pid={self.process.pid} data={self.data_dir}>"

    @property
    def alive(self) -> bool:
        return self.process.poll() is None

    def stderr(self, tail_lines: int | None = None) -> str:
        try:
            text = self.stderr_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-tail_lines:]) if tail_lines else text

    def client(self, *, validate: bool = True) -> Any:
        """A boto3 Lambda client for this server (no retries; `validate=False` sends what
        botocore would refuse client-side)."""
        if validate not in self._clients:
            self._clients[validate] = lambda_client(self.endpoint, region=self.region, validate=validate)
        return self._clients[validate]

    def http(self, method: str, path: str, body: bytes | None = None,
             headers: Mapping[str, str] | None = None) -> HttpResult:
        return http_request(self.endpoint, method, path, body, headers)

    def stop(self, *, deadline_s: float = STOP_DEADLINE_S) -> int:
        """SIGTERM, then require an exit within the deadline; returns the exit status
        (negative: killed by that signal). `test_persistence.py::test_sigterm_stops_cleanly`
        holds the server to exit status 0; fixtures' teardowns only require a timely exit so
        that this one defect is reported once, not after every test."""
        if self.alive:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout=deadline_s)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            pytest.fail(f"{self} did not exit within {deadline_s} s of SIGTERM\n{self.stderr(60)}")

    def kill(self) -> None:
        """SIGKILL: an unclean stop, as a crash or a power cut would be."""
        if self.alive:
            self.process.kill()
        self.process.wait(timeout=STOP_DEADLINE_S)


def lambda_client(endpoint: str, *, region: str = REGION, validate: bool = True) -> Any:
    return boto3.client(
        "lambda",
        endpoint_url=endpoint,
        region_name=region,
        aws_access_key_id="test",
        aws_secret_access_key="test",
        config=botocore.config.Config(
            retries={"max_attempts": 1},
            parameter_validation=validate,
            read_timeout=60,
            connect_timeout=5,
        ),
    )


def start_server(data_dir: Path, log_dir: Path, env: Mapping[str, str] | None = None) -> FireboxServer:
    """Start `python -m firebox serve --port 0` and wait (30 s at most) for its ready line."""
    log_dir.mkdir(parents=True, exist_ok=True)
    stderr_path = log_dir / f"firebox-{uuid.uuid4().hex[:8]}.stderr.log"
    full_env = clean_env(env)
    with open(stderr_path, "wb") as stderr:
        process = subprocess.Popen(
            [sys.executable, "-m", "firebox", "serve", "--port", "0", "--data-dir", str(data_dir)],
            stdout=subprocess.PIPE,
            stderr=stderr,
            stdin=subprocess.DEVNULL,
            env=full_env,
            cwd=log_dir,
            text=True,
        )
    lines: queue.Queue[str | None] = queue.Queue()

    def pump() -> None:  # reads stdout for the whole life of the process, so the pipe never fills
        assert process.stdout is not None
        for line in process.stdout:
            lines.put(line)
        lines.put(None)
        process.stdout.close()  # EOF: the server exited; nothing else reads this pipe

    threading.Thread(target=pump, name=f"firebox-stdout-{process.pid}", daemon=True).start()
    end = time.monotonic() + START_DEADLINE_S
    seen: list[str] = []
    while True:
        remaining = end - time.monotonic()
        if remaining <= 0:
            process.kill()
            process.wait()
            pytest.fail(f"firebox serve did not print {READY_PREFIX!r} within {START_DEADLINE_S} s; "
                        f"stdout: {''.join(seen)!r}\nstderr:\n{stderr_path.read_text(errors='replace')}")
        try:
            line = lines.get(timeout=min(remaining, 0.5))
        except queue.Empty:
            continue
        if line is None:
            code = process.wait()
            pytest.fail(f"firebox serve exited with status {code} before it was ready; "
                        f"stdout: {''.join(seen)!r}\nstderr:\n{stderr_path.read_text(errors='replace')}")
        seen.append(line)
        if line.startswith(READY_PREFIX):
            endpoint = line[len(READY_PREFIX):].strip()
            region = full_env.get("FIREBOX_REGION") or REGION
            return FireboxServer(process, endpoint, data_dir, stderr_path, region)
