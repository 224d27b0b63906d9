"""Event invoke (issue 4, item 1): 202 only after the event is stored, then the function runs
with the request id of the 202; the deprecated InvokeAsync; the edge's refusals; `firebox events`."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

from tests.e2e.helpers import FireboxServer, clean_env, http_request, raises_aws, unique_name

from .support import create_worker, event_stats, send_event, wait_runs, wait_stats

ONE_MB = 1024 * 1024


def test_event_invoke_answers_202_then_runs_with_that_request_id(aserver: FireboxServer, lam: Any, logs: Any) -> None:
    name = create_worker(lam)
    event = {"hello": "event", "n": 1}
    raw = http_request(aserver.endpoint, "POST", f"/2015-03-31/functions/{name}/invocations",
                       json.dumps(event).encode(), {"X-Amz-Invocation-Type": "Event"})
    assert raw.status == 202, (raw.status, raw.body[:300])
    assert raw.body == b"", raw.body[:300]
    request_id = raw.headers.get("x-amzn-requestid", "")
    assert request_id, raw.headers
    [ran] = wait_runs(logs, name, 1, request_id=request_id)
    assert ran.event == event

    # The same through boto3: StatusCode 202, empty payload, and the run carries the 202's id.
    answer = lam.invoke(FunctionName=name, InvocationType="Event", Payload=json.dumps({"via": "boto3"}).encode())
    assert answer["StatusCode"] == 202
    assert answer["Payload"].read() == b""
    boto_id = answer["ResponseMetadata"]["HTTPHeaders"]["x-amzn-requestid"]
    [ran] = wait_runs(logs, name, 1, request_id=boto_id)
    assert ran.event == {"via": "boto3"}
    wait_stats(aserver, name, succeeded=2)


def test_empty_event_payload_runs_with_an_empty_object(lam: Any, logs: Any) -> None:
    name = create_worker(lam)
    answer = lam.invoke(FunctionName=name, InvocationType="Event")
    assert answer["StatusCode"] == 202
    request_id = answer["ResponseMetadata"]["HTTPHeaders"]["x-amzn-requestid"]
    [ran] = wait_runs(logs, name, 1, request_id=request_id)
    assert ran.event == {}


def test_deprecated_invoke_async_runs_the_function(lam: Any, logs: Any) -> None:
    name = create_worker(lam)
    marker = unique_name("async")
    answer = lam.invoke_async(FunctionName=name, InvokeArgs=json.dumps({"marker": marker}).encode())
    assert answer["Status"] == 202, answer
    request_id = answer["ResponseMetadata"]["HTTPHeaders"].get("x-amzn-requestid", "")
    found = wait_runs(logs, name, 1)
    assert [r.event for r in found] == [{"marker": marker}]
    if request_id:
        assert found[0].request_id == request_id


def test_event_payload_limit_is_one_megabyte(aserver: FireboxServer, lam: Any, logs: Any) -> None:
    name = create_worker(lam)
    # Over 1 MB: refused before anything is stored.
    too_big = json.dumps({"pad": "x" * ONE_MB}).encode()
    with raises_aws("RequestTooLargeException", 413):
        lam.invoke(FunctionName=name, InvocationType="Event", Payload=too_big)
    # Just under 1 MB: accepted and run (the handler prints the first 4000 characters of it).
    fits = json.dumps({"pad": "y" * (ONE_MB - 100)}).encode()
    assert len(fits) <= ONE_MB
    request_id = send_event(lam, name, json.loads(fits))
    wait_runs(logs, name, 1, request_id=request_id)
    stats = wait_stats(aserver, name, succeeded=1)
    assert stats["succeeded"] == 1 and stats["failed"] == 0, stats


def test_event_payload_must_be_json(aserver: FireboxServer, lam: Any) -> None:
    name = create_worker(lam)
    with raises_aws("InvalidRequestContentException", 400):
        lam.invoke(FunctionName=name, InvocationType="Event", Payload=b"{not json")
    assert name not in event_stats(aserver), "a refused event must not be queued"


def test_event_for_unknown_function_is_not_found_and_not_queued(aserver: FireboxServer, lam: Any) -> None:
    name = unique_name("missing")
    with raises_aws("ResourceNotFoundException", 404, contains=name):
        lam.invoke(FunctionName=name, InvocationType="Event", Payload=b"{}")
    with raises_aws("ResourceNotFoundException", 404, contains=name):
        lam.invoke_async(FunctionName=name, InvokeArgs=b"{}")
    assert name not in event_stats(aserver)


def test_event_for_unknown_qualifier_is_not_found(aserver: FireboxServer, lam: Any) -> None:
    name = create_worker(lam)
    with raises_aws("ResourceNotFoundException", 404):
        lam.invoke(FunctionName=name, InvocationType="Event", Payload=b"{}", Qualifier="7")
    assert name not in event_stats(aserver)


def test_firebox_events_cli_lists_functions(aserver: FireboxServer, lam: Any, logs: Any) -> None:
    ok = create_worker(lam, prefix="cliok")
    bad = create_worker(lam, mode="raise", prefix="clibad")
    lam.put_function_event_invoke_config(FunctionName=bad, MaximumRetryAttempts=0)
    send_event(lam, ok, {"cli": 1})
    send_event(lam, bad, {"cli": 2})
    wait_stats(aserver, ok, succeeded=1)
    wait_stats(aserver, bad, failed=1)
    done = subprocess.run(
        [sys.executable, "-m", "firebox", "--endpoint", aserver.endpoint, "events"],
        capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL,
        env=clean_env({"COLUMNS": "250"}),
    )
    assert done.returncode == 0, done.stderr
    assert any(ok in line for line in done.stdout.splitlines()), done.stdout
    assert any(bad in line for line in done.stdout.splitlines()), done.stdout
    for header in ("queued", "in flight", "retrying", "failed", "succeeded"):
        assert header in done.stdout, done.stdout
    # The counts on the rows: ok succeeded once, bad failed once.
    ok_cells = _cells(done.stdout, ok)
    bad_cells = _cells(done.stdout, bad)
    assert ok_cells[-2:] == ["0", "1"], (ok_cells, done.stdout)
    assert bad_cells[-2:] == ["1", "0"], (bad_cells, done.stdout)


def _cells(table: str, name: str) -> list[str]:
    """The cells of the row naming `name` in a rich table (box characters dropped)."""
    for line in table.splitlines():
        if name in line:
            return [c.strip() for c in line.replace("│", "|").replace("┃", "|").split("|") if c.strip()]
    raise AssertionError(f"no row for {name} in:\n{table}")
