"""Fixtures of the end-to-end suite.

- `server`: one `firebox serve` process for the whole session (tests use unique function names,
  from `fn_name`, so they do not see each other's functions); stopped with SIGTERM at the end,
  and it must be gone within 15 s (`test_persistence.py::test_sigterm_stops_cleanly` holds the
  server to a clean exit, status 0, once).
- `server_factory`: starts extra servers with their own data dir or environment (restarts,
  `FIREBOX_ACTIVATION_DELAY_S`, another account or region); each is stopped the same way at
  teardown unless the test stopped or killed it.
- `lam` / `raw_lam`: boto3 Lambda clients for `server` (no retries; `raw_lam` skips botocore's
  client-side validation); `raw_http`: one raw HTTP request to `server`.
A failing test's report carries the tail of the stderr of the servers it used.
"""

from __future__ import annotations

import signal
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from .helpers import FireboxServer, HttpResult, start_server, unique_name

_SERVERS = pytest.StashKey[list[FireboxServer]]()
_session_server: list[FireboxServer] = []


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FireboxServer]:
    base = tmp_path_factory.mktemp("firebox-session")
    handle = start_server(base / "data", base)
    _session_server.append(handle)
    yield handle
    _stop_in_teardown(handle)


def _stop_in_teardown(handle: FireboxServer) -> None:
    """SIGTERM; the server must be gone within 15 s, exiting normally or by that very signal
    (a status other than those means it crashed on the way out)."""
    code = handle.stop()
    assert code in (0, -signal.SIGTERM), f"{handle} exited with status {code}\n{handle.stderr(60)}"


ServerFactory = Callable[..., FireboxServer]


@pytest.fixture
def server_factory(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ServerFactory]:
    """`start(data_dir=None, env=None)`: a new server; data_dir defaults to a fresh folder."""
    started: list[FireboxServer] = []
    request.node.stash[_SERVERS] = started

    def start(data_dir: Path | None = None, env: Mapping[str, str] | None = None) -> FireboxServer:
        handle = start_server(data_dir or tmp_path / f"data-{len(started)}", tmp_path / "logs", env)
        started.append(handle)
        return handle

    yield start
    failures = []
    for handle in started:
        if handle.alive:
            try:
                _stop_in_teardown(handle)
            except (AssertionError, pytest.fail.Exception) as exc:
                failures.append(str(exc))
    assert not failures, "\n".join(failures)


@pytest.fixture(scope="session")
def lam(server: FireboxServer) -> Any:
    return server.client()


@pytest.fixture(scope="session")
def raw_lam(server: FireboxServer) -> Any:
    return server.client(validate=False)


@pytest.fixture(scope="session")
def raw_http(server: FireboxServer) -> Callable[..., HttpResult]:
    """`raw_http(method, path, body=None, headers=None)` against the session server."""
    return server.http


@pytest.fixture
def fn_name() -> str:
    return unique_name()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    outcome = yield
    report = outcome.get_result()
    if not report.failed:
        return
    servers = list(item.stash.get(_SERVERS, [])) + _session_server
    for handle in servers:
        state = "running" if handle.alive else f"EXITED with status {handle.process.returncode}"
        report.sections.append((f"firebox {handle.endpoint} ({state}): stderr, last 40 lines", handle.stderr(40)))
