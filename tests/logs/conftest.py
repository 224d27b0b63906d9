"""Fixtures of the logs suite.

- `server`: one `firebox serve` for the session (functions get unique names, so tests do not see
  each other's log groups); stopped with SIGTERM at the end.
- `lam` / `logs`: boto3 Lambda and CloudWatch Logs clients for it (no retries).
- `deploy(code, **config)`: a Python function from the source of its `app.py`, Active, named
  uniquely; `invoke(name, event)` returns (request id, parsed result).
- `wait_events(group, pattern, count)`: FilterLogEvents until that many events match.
A failing test's report carries the tail of the server's stderr.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tests.e2e.helpers import FireboxServer, create_active, make_zip, start_server, unique_name, wait_for

from .support import logs_client

_session: list[FireboxServer] = []


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FireboxServer]:
    base = tmp_path_factory.mktemp("firebox-logs")
    handle = start_server(base / "data", base)
    _session.append(handle)
    yield handle
    handle.stop()


@pytest.fixture(scope="session")
def lam(server: FireboxServer) -> Any:
    return server.client()


@pytest.fixture(scope="session")
def logs(server: FireboxServer) -> Any:
    return logs_client(server.endpoint)


Deploy = Callable[..., str]


@pytest.fixture
def deploy(lam: Any) -> Deploy:
    def make(code: str, **config: Any) -> str:
        name = unique_name("logs")
        create_active(lam, name, zip_bytes=make_zip({"app.py": code}), **config)
        return name

    return make


Invoke = Callable[..., tuple[str, Any]]


@pytest.fixture
def invoke(lam: Any) -> Invoke:
    def call(name: str, event: dict[str, Any] | None = None, **kwargs: Any) -> tuple[str, Any]:
        answer = lam.invoke(FunctionName=name, Payload=json.dumps(event or {}).encode(), **kwargs)
        return answer["ResponseMetadata"]["RequestId"], json.loads(answer["Payload"].read() or b"null")

    return call


WaitEvents = Callable[..., list[dict[str, Any]]]


@pytest.fixture
def wait_events(logs: Any) -> WaitEvents:
    def wait(group: str, pattern: str = "", count: int = 1, deadline_s: float = 10.0) -> list[dict[str, Any]]:
        def probe() -> list[dict[str, Any]] | None:
            try:
                events = [e for page in logs.get_paginator("filter_log_events").paginate(
                    logGroupName=group, filterPattern=pattern) for e in page["events"]]
            except logs.exceptions.ResourceNotFoundException:
                return None
            return events if len(events) >= count else None

        return wait_for(probe, deadline_s=deadline_s, what=f"{count} events matching {pattern!r} in {group}")

    return wait


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    outcome = yield
    report = outcome.get_result()
    if report.failed:
        for handle in _session:
            report.sections.append((f"firebox stderr {handle.endpoint} (last 40 lines)", handle.stderr(40)))

