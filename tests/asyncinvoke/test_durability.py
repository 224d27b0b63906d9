"""Durability (issue 4, "Done means"): accept 1,000 events for a slow function, SIGKILL the server
about a third of the way through, restart it on the same data dir: every accepted event runs at
least once (none lost), and the test prints how many ran more than once (at-least-once).

And the log lines of events: an event counted done has its lines in the log, even when the
server dies while the log writer still holds records back (a long linger) and the handler
returns at once."""

from __future__ import annotations

import collections
import json
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from botocore.exceptions import ClientError

from .support import create_worker, logs_client, poll, runs, stats_of, wait_drained

EVENTS = 1000
SENDERS = 16
PER_FUNCTION = 8  # FIREBOX_ASYNC_PER_FUNCTION: 8 at a time x 0.2 s = ~40 events/s, a 25 s backlog
HANDLER_SLEEP_S = 0.2
DRAIN_DEADLINE_S = 120.0


def test_sigkill_mid_backlog_loses_no_accepted_event(server_factory: Any) -> None:
    env = {"FIREBOX_ASYNC_PER_FUNCTION": str(PER_FUNCTION)}
    srv = server_factory(env=env)
    lam = srv.client()
    name = create_worker(lam, sleep=HANDLER_SLEEP_S, prefix="durable")

    def send(i: int) -> tuple[int, str | None, str]:
        try:
            answer = lam.invoke(FunctionName=name, InvocationType="Event", Payload=json.dumps({"i": i}).encode())
        except ClientError as exc:
            return i, None, exc.response["Error"].get("Code", "?")
        request_id = answer["ResponseMetadata"]["HTTPHeaders"].get("x-amzn-requestid")
        return i, (request_id if answer["StatusCode"] == 202 else None), str(answer["StatusCode"])

    started = time.monotonic()
    with ThreadPoolExecutor(SENDERS) as pool:
        results = list(pool.map(send, range(EVENTS)))
    send_s = time.monotonic() - started
    accepted = {request_id: i for i, request_id, _ in results if request_id}
    refused = [(i, why) for i, request_id, why in results if not request_id]
    assert not refused, f"every event must be accepted (202): refused {refused[:10]}"
    assert len(accepted) == EVENTS, "request ids must be unique"

    # Kill once roughly a third has run.
    poll(lambda: stats_of(srv, name)["succeeded"] >= EVENTS // 3, deadline_s=DRAIN_DEADLINE_S,
             what=f"a third of the {EVENTS} events to run")
    before = stats_of(srv, name)
    srv.kill()

    again = server_factory(data_dir=srv.data_dir, env=env)
    logs = logs_client(again)
    seen: dict[str, int] = {}

    def all_ran() -> bool:
        seen.clear()
        seen.update(collections.Counter(r.request_id for r in runs(logs, name)))
        return set(accepted) <= set(seen)

    try:
        poll(all_ran, deadline_s=DRAIN_DEADLINE_S, what="every accepted event to run after the restart")
    finally:
        lost = sorted(set(accepted) - set(seen))
        print(f"\ndurability: {EVENTS} accepted in {send_s:.1f} s; killed at {before}; "
              f"{len(lost)} never ran" + (f" (e.g. {[accepted[r] for r in lost[:10]]})" if lost else ""))
    after = wait_drained(again, name, deadline_s=DRAIN_DEADLINE_S)
    twice = {r: n for r, n in seen.items() if n > 1}
    strangers = set(seen) - set(accepted)
    print(f"durability: all {EVENTS} ran at least once; {len(twice)} ran more than once "
          f"(max {max(twice.values(), default=1)} times); counts after restart {after}")
    assert not strangers, f"runs of request ids that were never accepted: {sorted(strangers)[:10]}"
    assert (after["failed"], after["succeeded"]) == (0, EVENTS), (
        f"each accepted event completes exactly once in the counts (a rerun replaces an unfinished run): {after}")


LINGERING_EVENTS = 12
LINGER_S = 1.0  # the log writer holds records 1 s (50 s when idle): a window no completion may use


def test_sigkill_keeps_the_log_lines_of_every_completed_event(server_factory: Any) -> None:
    env = {"FIREBOX_LOG_LINGER_S": str(LINGER_S)}
    srv = server_factory(env=env)
    lam = srv.client()
    name = create_worker(lam, prefix="logged")
    accepted = set()
    for i in range(LINGERING_EVENTS):
        answer = lam.invoke(FunctionName=name, InvocationType="Event", Payload=json.dumps({"i": i}).encode())
        assert answer["StatusCode"] == 202
        accepted.add(answer["ResponseMetadata"]["HTTPHeaders"]["x-amzn-requestid"])
    # Completions commit only once the log writer has written the lines before them, so this
    # waits out a linger; no log is read before the kill (a read would hurry the writer).
    poll(lambda: stats_of(srv, name)["succeeded"] >= 1, deadline_s=DRAIN_DEADLINE_S, what="a completed event")
    srv.kill()

    again = server_factory(data_dir=srv.data_dir)
    wait_drained(again, name, deadline_s=DRAIN_DEADLINE_S)
    ran = {r.request_id for r in runs(logs_client(again), name)}
    assert accepted <= ran, f"events done without a line in the log: {sorted(accepted - ran)}"
