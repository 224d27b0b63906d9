"""Fixtures of the asynchronous-invocation suite (issue 4).

- `aserver`: one `firebox serve` for the session, with a fast retry base
  (FIREBOX_ASYNC_RETRY_BASE_S=0.2: retries come 0.2 s then 0.4 s after a failure instead of
  Lambda's 1 and 2 minutes). Tests use unique function names so they do not see each other.
- `server_factory`: dedicated servers (same fast settings unless overridden) for the tests
  that kill and restart a server; stopped (SIGTERM) at teardown unless the test killed them.
- `lam` / `raw_lam` (no client-side validation) / `logs`: clients of `aserver`;
  `barrier`: a `LogBarrier` on `aserver`; `sink`: a fresh sink function on `aserver`.
A failing test's report carries the tail of the stderr of the servers it used.
"""

from __future__ import annotations

import signal
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.helpers import FireboxServer, start_server

from .support import LogBarrier, create_sink, logs_client

FAST_ENV = {"FIREBOX_ASYNC_RETRY_BASE_S": "0.2"}

_SERVERS = pytest.StashKey[list[FireboxServer]]()
_session: list[FireboxServer] = []


def _stop(handle: FireboxServer) -> None:
    code = handle.stop()
    assert code in (0, -signal.SIGTERM), f"{handle} exited with status {code}\n{handle.stderr(60)}"


@pytest.fixture(scope="session")
def aserver(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FireboxServer]:
    base = tmp_path_factory.mktemp("firebox-async")
    handle = start_server(base / "data", base, FAST_ENV)
    _session.append(handle)
    yield handle
    _stop(handle)


ServerFactory = Callable[..., FireboxServer]


@pytest.fixture
def server_factory(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ServerFactory]:
    """`start(data_dir=None, env=None)`: a new server with FAST_ENV plus `env`."""
    started: list[FireboxServer] = []
    request.node.stash[_SERVERS] = started

    def start(data_dir: Path | None = None, env: Mapping[str, str] | None = None) -> FireboxServer:
        handle = start_server(data_dir or tmp_path / f"data-{len(started)}", tmp_path / "logs",
                              {**FAST_ENV, **(env or {})})
        started.append(handle)
        return handle

    yield start
    failures = []
    for handle in started:
        if handle.alive:
            try:
                _stop(handle)
            except (AssertionError, pytest.fail.Exception) as exc:
                failures.append(str(exc))
    assert not failures, "\n".join(failures)


@pytest.fixture(scope="session")
def lam(aserver: FireboxServer) -> Any:
    return aserver.client()


@pytest.fixture(scope="session")
def raw_lam(aserver: FireboxServer) -> Any:
    return aserver.client(validate=False)


@pytest.fixture(scope="session")
def logs(aserver: FireboxServer) -> Any:
    return logs_client(aserver)


@pytest.fixture(scope="session")
def barrier(lam: Any, logs: Any) -> LogBarrier:
    return LogBarrier(lam, logs)


@pytest.fixture
def sink(lam: Any) -> str:
    return create_sink(lam)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    outcome = yield
    report = outcome.get_result()
    if not report.failed:
        return
    for handle in list(item.stash.get(_SERVERS, [])) + _session:
        report.sections.append((f"firebox stderr {handle.endpoint} (last 40 lines)", handle.stderr(40)))
