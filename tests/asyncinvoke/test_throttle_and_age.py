"""Throttles and event age (issue 4, items 3 and 5): a throttled event goes back to the queue with
backoff until capacity frees, never counted as an attempt and never lost; reserved concurrency 0
fails events at once with `ZeroReservedConcurrency`; an event older than
`MaximumEventAgeInSeconds` when it comes due ends with `EventAgeExceeded` without running."""

from __future__ import annotations

import json
import sqlite3
import threading
from typing import Any

from tests.e2e.helpers import FireboxServer, wait_for

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
    wait_runs,
    wait_sink,
    wait_stats,
)

# Throttled events back off 1, 2, 4, 8... s each (Lambda's backoff, not scaled by the test
# setting): five 1-second events behind a concurrency of 1 normally finish within ~20 s.
THROTTLE_DEADLINE_S = 90.0


def test_throttled_events_wait_for_capacity_and_all_run(
    aserver: FireboxServer, lam: Any, logs: Any, barrier: LogBarrier
) -> None:
    name = create_worker(lam, sleep=1.0, Timeout=10)
    lam.put_function_concurrency(FunctionName=name, ReservedConcurrentExecutions=1)
    # No retries at all: a throttle that counted as an attempt would fail the event.
    lam.put_function_event_invoke_config(FunctionName=name, MaximumRetryAttempts=0)
    request_ids = [send_event(lam, name, {"i": i}) for i in range(5)]

    def all_ran() -> list[Any] | None:
        found = runs(logs, name)
        return found if {r.request_id for r in found} >= set(request_ids) else None

    wait_for(all_ran, deadline_s=THROTTLE_DEADLINE_S, what=f"all 5 throttled events of {name} to run")
    stats = wait_stats(aserver, name, succeeded=5, deadline_s=THROTTLE_DEADLINE_S)
    assert stats["failed"] == 0, f"throttles must never fail an event: {stats}"
    barrier.sync()
    found = runs(logs, name)
    # A throttled event never reached the function, so nothing ran twice.
    assert sorted(r.request_id for r in found) == sorted(request_ids), found
    assert sorted(r.event["i"] for r in found) == list(range(5))
    # Concurrency 1: the runs never overlapped (each sleeps 1 s).
    stamps = sorted(r.timestamp_ms for r in found)
    print(f"\nthrottled runs started at +{[t - stamps[0] for t in stamps]} ms (5 x 1 s of work, concurrency 1)")
    assert all(b - a >= 900 for a, b in zip(stamps, stamps[1:])), stamps


def test_zero_reserved_concurrency_fails_at_once_then_delete_lets_events_run(
    aserver: FireboxServer, lam: Any, logs: Any, barrier: LogBarrier, sink: str
) -> None:
    name = create_worker(lam)
    lam.put_function_concurrency(FunctionName=name, ReservedConcurrentExecutions=0)
    lam.put_function_event_invoke_config(FunctionName=name,
                                         DestinationConfig={"OnFailure": {"Destination": function_arn(sink)}})
    request_id = send_event(lam, name, {"zero": True})
    [record] = wait_sink(logs, sink, request_id)
    assert record["requestContext"]["condition"] == "ZeroReservedConcurrency", record
    assert record["requestContext"]["functionArn"] == function_arn(name, "$LATEST"), record
    assert record["requestPayload"] == {"zero": True}, record
    assert "responseContext" not in record and "responsePayload" not in record, record
    wait_stats(aserver, name, failed=1)
    barrier.sync()
    assert runs(logs, name) == [], "an event for a function with reserved concurrency 0 must not run"

    lam.delete_function_concurrency(FunctionName=name)
    again = send_event(lam, name, {"zero": False})
    [ran] = wait_runs(logs, name, 1, request_id=again)
    assert ran.event == {"zero": False}
    wait_stats(aserver, name, succeeded=1)


def test_event_older_than_maximum_event_age_ends_with_event_age_exceeded(server_factory: Any) -> None:
    """How the event gets old without waiting 60 s (MaximumEventAgeInSeconds is at least 60):

    1. function F has reserved concurrency 1 and MaximumEventAgeInSeconds=60, OnFailure -> sink;
    2. a synchronous invoke keeps F's one slot busy (it sleeps 25 s, Timeout 30);
    3. an Event for F is accepted (202): the dispatcher is throttled and backs the event off, so
       it sits in the queue, `retrying` in /_firebox/events (it never ran);
    4. the server is killed (SIGKILL: a SIGTERM would wait for the busy invocation); the event
       is durable, so it is in `<data_dir>/firebox.db` (table `records`, kind `async-event`);
    5. with the server down, its `enqueued_at_ms` is moved 2 hours into the past;
    6. on restart the event is due at once (a backoff of a few seconds, or re-queued as an
       orphan if it was claimed at the kill): the dispatcher finds it too old, sends an
       `EventAgeExceeded` record to the sink, and F never runs it.
    """
    srv = server_factory()
    lam, logs = srv.client(), logs_client(srv)
    sink = create_sink(lam)
    name = create_worker(lam, Timeout=30)
    lam.put_function_concurrency(FunctionName=name, ReservedConcurrentExecutions=1)
    lam.put_function_event_invoke_config(FunctionName=name, MaximumEventAgeInSeconds=60,
                                         DestinationConfig={"OnFailure": {"Destination": function_arn(sink)}})

    def busy() -> None:
        try:
            lam.invoke(FunctionName=name, Payload=json.dumps({"sleep": 25, "busy": True}).encode())
        except Exception:  # the server is killed under it
            pass

    holder = threading.Thread(target=busy, daemon=True)
    holder.start()
    wait_for(lambda: any(r.event == {"sleep": 25, "busy": True} for r in runs(logs, name)),
             deadline_s=30, what="the busy invocation to start")
    request_id = send_event(lam, name, {"aged": True})
    wait_stats(srv, name, retrying=1, deadline_s=30)  # throttled, backing off, never ran
    srv.kill()

    db = sqlite3.connect(srv.data_dir / "firebox.db")
    try:
        rows = db.execute("SELECT key, doc FROM records WHERE kind = 'async-event' AND scope = ?", (name,)).fetchall()
        mine = [(key, json.loads(doc)) for key, doc in rows if json.loads(doc)["request_id"] == request_id]
        assert len(mine) == 1, f"the accepted event is not in the store after the kill: {rows}"
        key, doc = mine[0]
        assert doc["attempts"] == 0, f"a throttle must not count as an attempt: {doc}"
        doc["enqueued_at_ms"] -= 2 * 3600 * 1000
        db.execute("UPDATE records SET doc = ? WHERE kind = 'async-event' AND scope = ? AND key = ?",
                   (json.dumps(doc, separators=(",", ":")), name, key))
        db.commit()
    finally:
        db.close()

    again = server_factory(data_dir=srv.data_dir)
    lam2, logs2 = again.client(), logs_client(again)
    [record] = wait_sink(logs2, sink, request_id, deadline_s=60)
    assert record["requestContext"]["condition"] == "EventAgeExceeded", record
    assert record["requestContext"]["requestId"] == request_id, record
    assert record["requestContext"]["functionArn"] == function_arn(name, "$LATEST"), record
    assert record["requestContext"]["approximateInvokeCount"] == 0, record
    assert record["requestPayload"] == {"aged": True}, record
    assert "responseContext" not in record and "responsePayload" not in record, record
    wait_drained(again, name)
    stats = stats_of(again, name)
    assert stats["failed"] == 1, stats
    LogBarrier(lam2, logs2).sync()
    assert not [r for r in runs(logs2, name) if r.request_id == request_id], "an expired event must not run"
