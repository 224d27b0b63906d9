"""Shared pieces of the execution-engine end-to-end tests (`test_invoke_*.py`, `test_isolation.py`).

Everything runs against the real server (`server` session fixture of conftest.py) on its default
backend, which on this machine must be the isolated (bubblewrap) one: `isolated_backend` checks
the server's start-up line and fails otherwise, so no test here silently runs unisolated.

Import what you use explicitly, e.g. `from .engine_fixtures import invoke, python_function`.
"""

from __future__ import annotations

import base64
import json
import re
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import boto3
import botocore.config
import pytest
from botocore.exceptions import ClientError

from .helpers import (
    POLL_S,
    FireboxServer,
    clean_env,
    create_active,
    make_zip,
    unique_name,
    wait_for,
)

# Deadlines (seconds): generous, they only bound a wait that normally ends much sooner.
INVOKE_DEADLINE_S = 60.0
LOG_DEADLINE_S = 20.0
TAIL_LIMIT = 4096
STREAM_RE = re.compile(r"^\d{4}/\d{2}/\d{2}/\[(\$LATEST|\d+)\][0-9a-f]{32}$")


# -- invoking ---------------------------------------------------------------------------------


@dataclass
class Invoked:
    """One Invoke's answer, taken apart."""

    status: int
    headers: dict[str, str]
    body: bytes
    function_error: str | None
    executed_version: str | None
    log: str | None  # the decoded X-Amz-Log-Result, when LogType=Tail
    log_result_b64: str | None

    @property
    def request_id(self) -> str:
        return self.headers.get("x-amzn-requestid", "")

    def json(self) -> Any:
        return json.loads(self.body)

    def report(self) -> dict[str, str]:
        """The REPORT line of the tail, as {field: value} (RequestId, Duration, Init Duration...)."""
        assert self.log is not None, "invoke with LogType='Tail' to read the REPORT"
        return parse_report(self.log)


def parse_report(log: str) -> dict[str, str]:
    lines = [line for line in log.splitlines() if line.startswith("REPORT ")]
    assert lines, f"no REPORT line in the log:\n{log}"
    fields: dict[str, str] = {}
    for part in lines[-1].split("\t"):
        part = part.strip()
        if not part:
            continue
        key, _, value = part.partition(": ")
        fields[key.removeprefix("REPORT ").strip()] = value.strip()
    return fields


def invoke(lam: Any, name: str, payload: Any = None, *, raw: bytes | None = None, **params: Any) -> Invoked:
    """boto3 Invoke; `payload` is JSON-encoded (None sends no payload), `raw` is sent as is."""
    args: dict[str, Any] = {"FunctionName": name, **params}
    if raw is not None:
        args["Payload"] = raw
    elif payload is not None:
        args["Payload"] = json.dumps(payload).encode()
    answer = lam.invoke(**args)
    meta = answer["ResponseMetadata"]
    body = answer["Payload"].read()
    log_b64 = answer.get("LogResult")
    return Invoked(
        status=answer["StatusCode"],
        headers={k.lower(): v for k, v in meta["HTTPHeaders"].items()},
        body=body,
        function_error=answer.get("FunctionError"),
        executed_version=answer.get("ExecutedVersion"),
        log=base64.b64decode(log_b64).decode("utf-8", errors="replace") if log_b64 is not None else None,
        log_result_b64=log_b64,
    )


def ok_json(result: Invoked) -> Any:
    """The result of an invocation that must have succeeded."""
    assert result.status == 200, result
    assert result.function_error is None, f"the function failed: {result.body[:2000]!r}\nlog:\n{result.log}"
    return result.json()


def failed(result: Invoked, error_type: str) -> dict[str, Any]:
    """The error body of an invocation that must have failed with `error_type` (HTTP 200 +
    X-Amz-Function-Error: Unhandled, as Lambda answers)."""
    assert result.status == 200, result
    assert result.function_error == "Unhandled", f"expected a function error, got {result.body[:2000]!r}"
    assert result.headers.get("x-amz-function-error") == "Unhandled", result.headers
    body = result.json()
    assert body.get("errorType") == error_type, f"expected errorType {error_type!r}, got {body}"
    return body


def client_error(call: Callable[[], Any]) -> ClientError:
    with pytest.raises(ClientError) as info:
        call()
    return info.value


# -- building functions -----------------------------------------------------------------------


def py_zip(source: str, module: str = "app", extra: Mapping[str, str | bytes] | None = None) -> bytes:
    return make_zip({f"{module}.py": textwrap.dedent(source), **(extra or {})})


def python_function(lam: Any, source: str, *, prefix: str = "py", extra: Mapping[str, str | bytes] | None = None,
                    **params: Any) -> str:
    """Create an Active python3.11 function `app.handler` from `source`; returns its name."""
    name = unique_name(prefix)
    params.setdefault("Timeout", 10)
    create_active(lam, name, zip_bytes=py_zip(source, extra=extra), **params)
    return name


def node_function(lam: Any, files: Mapping[str, str], handler: str = "index.handler", *, prefix: str = "node",
                  **params: Any) -> str:
    name = unique_name(prefix)
    params.setdefault("Timeout", 10)
    params.setdefault("MemorySize", 256)
    zip_bytes = make_zip({path: textwrap.dedent(text) for path, text in files.items()})
    create_active(lam, name, zip_bytes=zip_bytes, Runtime="nodejs20.x", Handler=handler, **params)
    return name


# -- the platform ---------------------------------------------------------------------------


@pytest.fixture(scope="session")
def isolated_backend(server: FireboxServer) -> FireboxServer:
    """The session server, after checking that it runs sandboxes on the isolated backend."""
    line = wait_for(
        lambda: next((ln for ln in server.stderr().splitlines() if "firebox.worker.backends" in ln), None),
        deadline_s=10, what="the server's sandbox-backend line")
    assert "isolated: bubblewrap" in line and "WARNING" not in line, f"not the isolated backend: {line}"
    return server


HEALTHY_SOURCE = """
def handler(event, context):
    return {"healthy": True, "echo": event}
"""


@pytest.fixture(scope="session")
def healthy_fn(lam: Any, isolated_backend: FireboxServer) -> str:
    """An ordinary function that must keep working whatever the other tests did."""
    return python_function(lam, HEALTHY_SOURCE, prefix="healthy")


def assert_platform_healthy(server: FireboxServer, lam: Any, healthy: str) -> None:
    """GET /health answers 200 and an ordinary function still invokes."""
    assert server.alive, f"the server died\n{server.stderr(60)}"
    health = server.http("GET", "/health")
    assert health.status == 200, (health.status, health.body)
    probe = {"n": time.monotonic_ns()}
    assert ok_json(invoke(lam, healthy, probe)) == {"healthy": True, "echo": probe}


# -- awslambdaric -----------------------------------------------------------------------------

RIC_BOOTSTRAP = '#!/bin/sh\nexec /usr/bin/python3.11 -m awslambdaric "$_HANDLER"\n'
PIP = Path("/work/main/.venv/bin/pip")


@dataclass
class RicPackage:
    zip_bytes: bytes | None = None
    problem: str | None = None
    files: list[str] = field(default_factory=list)


@pytest.fixture(scope="session")
def awslambdaric_package(tmp_path_factory: pytest.TempPathFactory) -> RicPackage:
    """AWS's own Python runtime interface client from PyPI, installed once per session with the
    venv's pip (python 3.11, the sandbox's interpreter version) into a tmp dir. When pip cannot
    get it, `problem` holds pip's error (the test skips with it); nothing is ever faked."""
    target = tmp_path_factory.mktemp("awslambdaric") / "site"
    pip = PIP if PIP.exists() else Path(sys.executable).with_name("pip")
    try:
        done = subprocess.run(
            [str(pip), "install", "--disable-pip-version-check", "--no-input", "--target", str(target), "awslambdaric"],
            capture_output=True, text=True, timeout=240, stdin=subprocess.DEVNULL, env=clean_env(),
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return RicPackage(problem=f"pip could not run: {exc}")
    if done.returncode != 0:
        return RicPackage(problem=f"pip install awslambdaric failed ({done.returncode}): {(done.stderr or done.stdout)[-1500:]}")
    files: dict[str, str | bytes] = {}
    for path in sorted(target.rglob("*")):
        if path.is_file() and "__pycache__" not in path.parts:
            files[path.relative_to(target).as_posix()] = path.read_bytes()
    if not any(name.startswith("awslambdaric/") for name in files):
        return RicPackage(problem=f"pip install awslambdaric installed no awslambdaric package: {sorted(files)[:20]}")
    return _ric_zip(files)


RIC_HANDLER = '''
import os
import random

INIT_TOKEN = random.random()


def handler(event, context):
    import awslambdaric
    return {
        "event": event,
        "request_id": context.aws_request_id,
        "function_name": context.function_name,
        "memory": context.memory_limit_in_mb,
        "remaining_ms": context.get_remaining_time_in_millis(),
        "init_token": INIT_TOKEN,
        "ric_path": awslambdaric.__file__,
        "handler_env": os.environ.get("_HANDLER"),
    }
'''


def _ric_zip(files: dict[str, str | bytes]) -> RicPackage:
    entries = dict(files)
    entries["bootstrap"] = RIC_BOOTSTRAP
    entries["ric_app.py"] = textwrap.dedent(RIC_HANDLER)
    return RicPackage(zip_bytes=make_zip(entries, modes={"bootstrap": 0o755}), files=sorted(entries))


# -- threads ----------------------------------------------------------------------------------


def join_all(threads: list[Any], deadline_s: float = INVOKE_DEADLINE_S) -> None:
    end = time.monotonic() + deadline_s
    for thread in threads:
        thread.join(max(0.0, end - time.monotonic()))
    alive = [t.name for t in threads if t.is_alive()]
    assert not alive, f"threads still running after {deadline_s} s: {alive}"


def poll(probe: Callable[[], Any], *, deadline_s: float, what: str) -> Any:
    return wait_for(probe, deadline_s=deadline_s, what=what)


def single_attempt_client(server: FireboxServer) -> Any:
    """A Lambda client that sends each request exactly once. (`helpers.lambda_client` passes
    `retries={"max_attempts": 1}`, which in botocore's legacy retry mode means ONE RETRY: a 429
    is retried after its Retry-After, which would hide "throttled at once".)"""
    return boto3.client("lambda", endpoint_url=server.endpoint, region_name=server.region,
                        aws_access_key_id="test", aws_secret_access_key="test",
                        config=botocore.config.Config(retries={"mode": "standard", "total_max_attempts": 1},
                                                      read_timeout=60, connect_timeout=5))


def logs_client(server: FireboxServer) -> Any:
    """A boto3 CloudWatch Logs client for the server (what `firebox logs` uses)."""
    return boto3.client("logs", endpoint_url=server.endpoint, region_name=server.region,
                        aws_access_key_id="test", aws_secret_access_key="test",
                        config=botocore.config.Config(retries={"mode": "standard", "total_max_attempts": 1}))


def firebox_cli(server: FireboxServer, *args: str, timeout_s: float = 60) -> subprocess.CompletedProcess[str]:
    """`python -m firebox --endpoint URL ARGS...` with a wide console and dummy credentials."""
    return subprocess.run(
        [sys.executable, "-m", "firebox", "--endpoint", server.endpoint, *args],
        capture_output=True, text=True, timeout=timeout_s, stdin=subprocess.DEVNULL,
        env=clean_env({"COLUMNS": "250", "AWS_ACCESS_KEY_ID": "", "AWS_SECRET_ACCESS_KEY": ""}),
    )


__all__ = [
    "INVOKE_DEADLINE_S", "LOG_DEADLINE_S", "POLL_S", "STREAM_RE", "TAIL_LIMIT", "Invoked", "RicPackage",
    "assert_platform_healthy", "awslambdaric_package", "client_error", "failed", "firebox_cli",
    "healthy_fn", "invoke", "isolated_backend", "join_all", "logs_client", "node_function", "ok_json", "parse_report",
    "poll", "py_zip", "python_function", "single_attempt_client",
]
