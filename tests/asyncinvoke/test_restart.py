"""A clean stop (SIGTERM) with events queued, in flight and waiting for a retry: the server exits
with status 0 in time, and the restarted server finishes the work where it was: every event
runs at least once, and a retry's attempt count survives the restart (it is not reset)."""

from __future__ import annotations

from typing import Any

from tests.e2e.helpers import wait_for

from .support import (
    LogBarrier,
    create_sink,
    create_worker,
    function_arn,
    logs_client,
    runs,
    send_event,
    stats_of,
    wait_drained,
    wait_sink,
    wait_stats,
)

ENV = {"FIREBOX_ASYNC_RETRY_BASE_S": "3", "FIREBOX_ASYNC_PER_FUNCTION": "2"}
EVENTS = 20


def test_sigterm_with_a_backlog_and_a_pending_retry_then_restart(server_factory: Any) -> None:
    srv = server_factory(env=ENV)
    lam, logs = srv.client(), logs_client(srv)
    sink = create_sink(lam)
    slow = create_worker(lam, sleep=0.5, prefix="slow")
    failing = create_worker(lam, mode="raise", prefix="retry")
    lam.put_function_event_invoke_config(FunctionName=failing, MaximumRetryAttempts=1,
                                         DestinationConfig={"OnFailure": {"Destination": function_arn(sink)}})
    fail_id = send_event(lam, failing, {"retry": "across restart"})
    accepted = [send_event(lam, slow, {"i": i}) for i in range(EVENTS)]
    # The failing event ran once and waits 3 s for its retry; the slow backlog is being worked.
    wait_stats(srv, failing, retrying=1)
    wait_stats(srv, slow, succeeded=2)
    at_stop = {slow: stats_of(srv, slow), failing: stats_of(srv, failing)}
    code = srv.stop()  # checked at the end, so that the restart is checked either way
    stop_log = srv.stderr(15)

    again = server_factory(data_dir=srv.data_dir, env=ENV)
    lam2, logs2 = again.client(), logs_client(again)
    wait_for(lambda: set(accepted) <= {r.request_id for r in runs(logs2, slow)}, deadline_s=60,
             what=f"every one of the {EVENTS} events accepted before the SIGTERM to run")
    [record] = wait_sink(logs2, sink, fail_id)
    assert record["requestContext"]["condition"] == "RetriesExhausted", record
    assert record["requestContext"]["approximateInvokeCount"] == 2, (
        f"the attempt made before the restart must count: {record['requestContext']}")
    after = wait_drained(again, slow)
    assert after["failed"] == 0, after
    wait_stats(again, failing, failed=1)
    LogBarrier(lam2, logs2).sync()
    attempts = [r for r in runs(logs2, failing) if r.request_id == fail_id]
    assert len(attempts) == 2, f"MaximumRetryAttempts 1: two runs in all, across the restart; saw {attempts}"
    twice = len(runs(logs2, slow)) - EVENTS
    print(f"\nrestart: counts at SIGTERM {at_stop}; exit status {code}; {twice} of the slow events ran twice")
    assert code == 0, (
        f"SIGTERM with events in flight must stop cleanly (dispatcher stopped, store closed), exit status {code}"
        + (" (killed by the re-raised SIGTERM: the platform's shutdown never ran)" if code == -15 else "")
        + f"\n{stop_log}")
