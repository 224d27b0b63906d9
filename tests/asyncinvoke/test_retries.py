"""Retries as Lambda does them (issue 4, item 3): a function error is retried
`MaximumRetryAttempts` times (default 2), `retry_base_s * attempt` after each failure, always
with the same request id; timeouts and crashes are function errors too.

The server's base delay is 0.2 s (conftest.FAST_ENV), so the retries come 0.2 s and 0.4 s after
the failures. A count "stays exact" once the failure is recorded in /_firebox/events and a log
barrier has flushed everything logged before it."""

from __future__ import annotations

from typing import Any

import pytest

from tests.e2e.helpers import FireboxServer

from .support import LogBarrier, create_worker, function_arn, runs, send_event, stats_of, wait_runs, wait_sink, wait_stats

BASE_MS = 200  # FIREBOX_ASYNC_RETRY_BASE_S of the session server, in ms
SLACK_MS = 30  # log timestamps are taken when the server reads the line


def _attempts_of(aserver: FireboxServer, lam: Any, logs: Any, barrier: LogBarrier, name: str,
                 request_id: str, expected: int) -> list[Any]:
    """Wait for the failure to be recorded, then return the RAN lines, checked exact."""
    wait_stats(aserver, name, failed=1)
    barrier.sync()
    found = runs(logs, name)
    assert len(found) == expected, (
        f"expected exactly {expected} invocation(s) of the event, saw {len(found)}: {found}"
    )
    assert {r.request_id for r in found} == {request_id}, f"request ids differ across attempts: {found}"
    stats = stats_of(aserver, name)
    assert (stats["failed"], stats["succeeded"], stats["queued"], stats["retrying"], stats["in_flight"]) == (
        1, 0, 0, 0, 0), stats
    return found


@pytest.mark.parametrize("retries", [0, 1, 2, None], ids=["retries-0", "retries-1", "retries-2", "default"])
def test_function_error_is_retried_maximum_retry_attempts_times(
    aserver: FireboxServer, lam: Any, logs: Any, barrier: LogBarrier, retries: int | None
) -> None:
    name = create_worker(lam, mode="raise")
    if retries is not None:
        lam.put_function_event_invoke_config(FunctionName=name, MaximumRetryAttempts=retries)
    expected = (2 if retries is None else retries) + 1
    request_id = send_event(lam, name, {"retries": retries})
    found = _attempts_of(aserver, lam, logs, barrier, name, request_id, expected)
    assert all(r.event == {"retries": retries} for r in found), found
    # Growing delays: attempt k+1 starts at least base * k after attempt k failed (so after it ran).
    for k in range(1, len(found)):
        gap = found[k].timestamp_ms - found[k - 1].timestamp_ms
        assert gap >= BASE_MS * k - SLACK_MS, f"retry {k} came {gap} ms after attempt {k}, before {BASE_MS * k} ms"


def test_timeout_counts_as_a_function_error(
    aserver: FireboxServer, lam: Any, logs: Any, barrier: LogBarrier, sink: str
) -> None:
    name = create_worker(lam, sleep=3, Timeout=1)
    lam.put_function_event_invoke_config(
        FunctionName=name, MaximumRetryAttempts=1,
        DestinationConfig={"OnFailure": {"Destination": function_arn(sink)}},
    )
    request_id = send_event(lam, name, {"kind": "timeout"})
    _attempts_of(aserver, lam, logs, barrier, name, request_id, 2)
    [record] = wait_sink(logs, sink, request_id)
    assert record["requestContext"]["condition"] == "RetriesExhausted", record
    assert record["requestContext"]["approximateInvokeCount"] == 2, record
    assert record["responseContext"].get("functionError") == "Unhandled", record


def test_crash_counts_as_a_function_error(
    aserver: FireboxServer, lam: Any, logs: Any, barrier: LogBarrier, sink: str
) -> None:
    name = create_worker(lam, mode="crash")
    lam.put_function_event_invoke_config(
        FunctionName=name, MaximumRetryAttempts=1,
        DestinationConfig={"OnFailure": {"Destination": function_arn(sink)}},
    )
    request_id = send_event(lam, name, {"kind": "crash"})
    _attempts_of(aserver, lam, logs, barrier, name, request_id, 2)
    [record] = wait_sink(logs, sink, request_id)
    assert record["requestContext"]["condition"] == "RetriesExhausted", record
    assert record["requestContext"]["approximateInvokeCount"] == 2, record
    assert record["responseContext"].get("functionError") == "Unhandled", record


def test_successful_event_runs_exactly_once(aserver: FireboxServer, lam: Any, logs: Any,
                                                    barrier: LogBarrier) -> None:
    """A function that succeeds runs exactly once: success is never retried."""
    name = create_worker(lam)
    request_id = send_event(lam, name, {"kind": "ok"})
    wait_stats(aserver, name, succeeded=1)
    barrier.sync()
    found = runs(logs, name)
    assert [r.request_id for r in found] == [request_id], found
    wait_runs(logs, name, 1, request_id=request_id)
