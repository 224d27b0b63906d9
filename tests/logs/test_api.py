"""The CloudWatch Logs API with boto3's `logs` client against a real server: what a function
prints and logs, where the AWS tools look for it."""

from __future__ import annotations

import json
import re
import time
from typing import Any

import pytest

from tests.e2e.helpers import ACCOUNT, REGION, http_request, raises_aws, unique_name

from .conftest import Deploy, Invoke, WaitEvents
from .support import APP

STREAM_NAME = re.compile(r"\d{4}/\d{2}/\d{2}/\[(\$LATEST|\d+)\][0-9a-f]{32}")


def group_of(name: str) -> str:
    return f"/aws/lambda/{name}"


def test_groups_and_streams_are_listed_after_an_invoke(deploy: Deploy, invoke: Invoke, lam: Any, logs: Any,
                                                        wait_events: WaitEvents) -> None:
    name = deploy(APP)
    before = int(time.time() * 1000)
    invoke(name, {"tag": "one"})
    lam.publish_version(FunctionName=name)
    invoke(name, {"tag": "two"}, Qualifier="1")  # another version: another sandbox, another stream
    wait_events(group_of(name), "REPORT", count=2)

    groups = logs.describe_log_groups(logGroupNamePrefix=group_of(name))["logGroups"]
    assert [g["logGroupName"] for g in groups] == [group_of(name)]
    group = groups[0]
    arn = f"arn:aws:logs:{REGION}:{ACCOUNT}:log-group:{group_of(name)}"
    assert group["arn"] == f"{arn}:*" and group["logGroupArn"] == arn
    assert group["storedBytes"] > 0 and "retentionInDays" not in group
    assert before - 60_000 < group["creationTime"] <= int(time.time() * 1000)

    streams = logs.describe_log_streams(logGroupName=group_of(name))["logStreams"]
    assert len(streams) == 2
    assert all(STREAM_NAME.fullmatch(s["logStreamName"]) for s in streams)
    assert sorted(STREAM_NAME.fullmatch(s["logStreamName"]).group(1) for s in streams) == ["$LATEST", "1"]
    for stream in streams:
        assert stream["firstEventTimestamp"] <= stream["lastEventTimestamp"] <= stream["lastIngestionTime"]
        assert stream["storedBytes"] > 0
        assert stream["arn"] == f"{arn}:log-stream:{stream['logStreamName']}"
    newest_first = logs.describe_log_streams(logGroupName=group_of(name), orderBy="LastEventTime",
                                             descending=True)["logStreams"]
    assert "[1]" in newest_first[0]["logStreamName"]
    paged = [s["logStreamName"] for page in logs.get_paginator("describe_log_streams").paginate(
        logGroupName=group_of(name), PaginationConfig={"PageSize": 1}) for s in page["logStreams"]]
    assert paged == sorted(s["logStreamName"] for s in streams)
    by_prefix = logs.describe_log_streams(logGroupName=group_of(name), logStreamNamePrefix=paged[0][:12])
    assert len(by_prefix["logStreams"]) == 2
    # logGroupIdentifier takes the ARN too.
    assert len(logs.describe_log_streams(logGroupIdentifier=arn)["logStreams"]) == 2


def test_what_a_function_writes_in_order_with_the_platform_lines(deploy: Deploy, invoke: Invoke, logs: Any,
                                                                   wait_events: WaitEvents) -> None:
    name = deploy(APP)
    request_id, result = invoke(name, {"tag": "t1", "action": "warn"})
    assert result == {"tag": "t1"}
    wait_events(group_of(name), "REPORT")
    (stream,) = logs.describe_log_streams(logGroupName=group_of(name))["logStreams"]
    events = logs.get_log_events(logGroupName=group_of(name), logStreamName=stream["logStreamName"],
                                 startFromHead=True)["events"]
    messages = [e["message"] for e in events]
    assert messages[0] == "cold start\n"  # init output, before START
    assert messages[1] == f"START RequestId: {request_id} Version: $LATEST\n"
    assert messages[2] == "print t1\n"
    assert re.fullmatch(rf"\[INFO\]\t\S+Z\t{request_id}\tinfo t1\n", messages[3])
    assert re.fullmatch(rf"\[WARNING\]\t\S+Z\t{request_id}\tslow response 1200 ms t1\n", messages[4])
    assert messages[5] == f"END RequestId: {request_id}\n"
    assert messages[6].startswith(f"REPORT RequestId: {request_id}\tDuration: ")
    assert "\tInit Duration: " in messages[6]
    assert len(messages) == 7
    timestamps = [e["timestamp"] for e in events]
    assert timestamps == sorted(timestamps)
    assert all(e["ingestionTime"] >= e["timestamp"] for e in events)


def test_a_traceback_is_one_event(deploy: Deploy, invoke: Invoke, wait_events: WaitEvents) -> None:
    name = deploy(APP)
    invoke(name, {"tag": "tb", "action": "raise"})
    (event,) = wait_events(group_of(name), '"ValueError: boom tb"')
    message = event["message"]
    assert message.startswith("[ERROR] ValueError: boom tb\nTraceback (most recent call last):\n")
    assert 'File "/var/task/app.py"' in message and message.endswith("\n")
    assert message.count("\n") >= 3


def test_get_log_events_forward_and_backward_tokens(deploy: Deploy, invoke: Invoke, logs: Any,
                                                    wait_events: WaitEvents) -> None:
    name = deploy(APP)
    invoke(name, {"tag": "p", "action": "lines", "n": 40})
    wait_events(group_of(name), "REPORT")
    (stream,) = logs.describe_log_streams(logGroupName=group_of(name))["logStreams"]
    where = {"logGroupName": group_of(name), "logStreamName": stream["logStreamName"], "limit": 7}

    forward: list[str] = []
    page = logs.get_log_events(startFromHead=True, **where)
    while page["events"]:
        assert len(page["events"]) <= 7
        forward += [e["message"] for e in page["events"]]
        token = page["nextForwardToken"]
        page = logs.get_log_events(nextToken=token, **where)
    assert page["nextForwardToken"] == token  # the end: the same token comes back
    assert re.fullmatch(r"f/\d+", token)

    backward: list[str] = []
    page = logs.get_log_events(**where)  # no token: the newest events first
    while page["events"]:
        backward = [e["message"] for e in page["events"]] + backward
        token = page["nextBackwardToken"]
        page = logs.get_log_events(nextToken=token, **where)
    assert page["nextBackwardToken"] == token and re.fullmatch(r"b/\d+", token)

    assert forward == backward
    assert [m for m in forward if m.startswith("line ")] == [f"line {i} p\n" for i in range(40)]
    assert len(forward) == 40 + 6  # cold start, START, print, INFO, END, REPORT
    with raises_aws("InvalidParameterException", 400):
        logs.get_log_events(nextToken="garbage", **where)
    with raises_aws("ResourceNotFoundException", 400, "The specified log stream does not exist."):
        logs.get_log_events(logGroupName=group_of(name), logStreamName="no/such/stream")


def test_filter_patterns(deploy: Deploy, invoke: Invoke, logs: Any, wait_events: WaitEvents) -> None:
    name = deploy(APP)
    ids = {}
    for tag, action in [("a", "error"), ("b", "warn"), ("c", "raise"), ("d", None)]:
        ids[tag], _ = invoke(name, {"tag": tag, "action": action})
    wait_events(group_of(name), "REPORT", count=4)

    def messages(pattern: str, **kwargs: Any) -> list[str]:
        pages = logs.get_paginator("filter_log_events").paginate(logGroupName=group_of(name),
                                                                 filterPattern=pattern, **kwargs)
        return [e["message"] for page in pages for e in page["events"]]

    assert len(messages("")) == 1 + 4 * 5 + 3  # cold start; 5 lines each; a warning, an error, a traceback
    errors = messages("ERROR")
    assert len(errors) == 2 and "database unreachable a" in errors[0] and "ValueError: boom c" in errors[1]
    assert messages("error") == []  # case-sensitive
    assert messages("ERROR database") == [m for m in errors if "database" in m]
    assert len(messages('"slow response 1200 ms"')) == 1
    assert len(messages(f'"{ids["d"]}"')) == 4  # START, INFO, END, REPORT of that request
    either = messages("?WARNING ?ValueError")
    assert len(either) == 2 and "slow response" in either[0] and "boom c" in either[1]
    assert messages("ERROR -database") == [m for m in errors if "database" not in m]
    assert len(messages("%info [a-d]%")) == 4
    # With the time range and stream restrictions, and pages of one event.
    stream = logs.describe_log_streams(logGroupName=group_of(name))["logStreams"][0]["logStreamName"]
    assert len(messages("REPORT", logStreamNames=[stream], PaginationConfig={"PageSize": 1})) == 4
    assert len(messages("REPORT", logStreamNamePrefix=stream[:10])) == 4
    assert messages("REPORT", startTime=int(time.time() * 1000) + 60_000) == []
    events = logs.filter_log_events(logGroupName=group_of(name), filterPattern="REPORT")["events"]
    assert all(set(e) == {"logStreamName", "timestamp", "message", "ingestionTime", "eventId"} for e in events)
    assert len({e["eventId"] for e in events}) == 4
    with raises_aws("InvalidParameterException", 400, contains="Invalid filter pattern"):
        logs.filter_log_events(logGroupName=group_of(name), filterPattern='"unterminated')
    with raises_aws("InvalidParameterException", 400):
        logs.filter_log_events(logGroupName=group_of(name), logStreamNames=[stream], logStreamNamePrefix="x")


def test_json_log_format(deploy: Deploy, invoke: Invoke, logs: Any, wait_events: WaitEvents) -> None:
    name = deploy(APP, LoggingConfig={"LogFormat": "JSON"})
    request_id, _ = invoke(name, {"tag": "j1", "action": "json", "latency": 12})
    invoke(name, {"tag": "j2", "action": "error"})
    events = wait_events(group_of(name), '{ $.type = "platform.report" }', count=2)
    report = json.loads(events[0]["message"])
    assert set(report) == {"time", "type", "record"}
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", report["time"])
    assert report["record"]["requestId"] == request_id and report["record"]["status"] == "success"
    metrics = report["record"]["metrics"]
    assert set(metrics) == {"durationMs", "billedDurationMs", "memorySizeMB", "maxMemoryUsedMB", "initDurationMs"}
    assert metrics["memorySizeMB"] == 128 and metrics["billedDurationMs"] >= 1
    assert "initDurationMs" not in json.loads(events[1]["message"])["record"]["metrics"]  # warm

    def records(pattern: str) -> list[dict[str, Any]]:
        found = logs.filter_log_events(logGroupName=group_of(name), filterPattern=pattern)["events"]
        return [json.loads(e["message"]) for e in found]

    (start,) = records(f'{{ $.type = "platform.start" && $.record.requestId = "{request_id}" }}')
    assert start["record"] == {"requestId": request_id, "version": "$LATEST"}
    done = records('{ $.type = "platform.runtimeDone" }')
    assert [d["record"]["status"] for d in done] == ["success", "success"]
    # No text START / END / REPORT lines in JSON format; print() output stays plain text.
    plain = [e["message"] for e in logs.filter_log_events(logGroupName=group_of(name))["events"]
             if not e["message"].startswith("{")]
    assert plain == ["cold start\n", "print j1\n", "print j2\n"]
    (error,) = records('{ $.level = "ERROR" }')
    assert error["message"] == "database unreachable j2" and error["requestId"]
    (structured,) = records("{ $.latency > 10 }")
    assert structured["tag"] == "j1" and structured["level"] == "INFO"
    assert records("{ $.latency > 12 }") == []
    assert len(records('{ $.message = "*unreachable*" || $.latency = 12 }')) == 2
    assert len(records("{ $.record.metrics.durationMs >= 0 }")) == 4  # runtimeDone and report, twice


def test_timeout_and_crash_lines(deploy: Deploy, invoke: Invoke, wait_events: WaitEvents) -> None:
    name = deploy(APP, Timeout=1)
    request_id, result = invoke(name, {"action": "sleep", "seconds": 5})
    assert result["errorType"] == "Sandbox.Timedout"
    (timed_out,) = wait_events(group_of(name), '"Task timed out after 1.00 seconds"')
    assert request_id in timed_out["message"]
    (report,) = wait_events(group_of(name), f'REPORT "{request_id}"')
    assert "\tStatus: timeout" in report["message"]


def test_an_unfinished_line_is_recorded_before_end(deploy: Deploy, invoke: Invoke, logs: Any,
                                                   wait_events: WaitEvents) -> None:
    name = deploy(APP)
    request_id, _ = invoke(name, {"tag": "x", "action": "partial"})
    wait_events(group_of(name), "REPORT")
    messages = [e["message"] for e in logs.filter_log_events(logGroupName=group_of(name))["events"]]
    end = messages.index(f"END RequestId: {request_id}\n")
    assert messages[end - 1] == "no newline x\n"


def test_create_describe_delete_groups_and_errors(logs: Any, deploy: Deploy, invoke: Invoke,
                                                  wait_events: WaitEvents) -> None:
    group = f"/firebox/test/{unique_name('g')}"
    logs.create_log_group(logGroupName=group)
    with raises_aws("ResourceAlreadyExistsException", 400, "The specified log group already exists"):
        logs.create_log_group(logGroupName=group)
    (created,) = logs.describe_log_groups(logGroupNamePrefix=group)["logGroups"]
    assert created["storedBytes"] == 0 and created["logGroupClass"] == "STANDARD"
    assert logs.describe_log_streams(logGroupName=group)["logStreams"] == []
    assert logs.filter_log_events(logGroupName=group)["events"] == []
    assert [g["logGroupName"] for g in logs.describe_log_groups(logGroupNamePattern=group[-8:].upper())[
        "logGroups"]] == [group]
    logs.delete_log_group(logGroupName=group)
    assert logs.describe_log_groups(logGroupNamePrefix=group)["logGroups"] == []
    missing = "The specified log group does not exist."
    with raises_aws("ResourceNotFoundException", 400, missing):
        logs.delete_log_group(logGroupName=group)
    with raises_aws("ResourceNotFoundException", 400, missing):
        logs.filter_log_events(logGroupName=group)
    with raises_aws("ResourceNotFoundException", 400, missing):
        logs.describe_log_streams(logGroupName=group)
    with raises_aws("InvalidParameterException", 400):
        logs.describe_log_groups(logGroupNamePrefix="/a", logGroupNamePattern="b")

    # A function's group, deleted, comes back with its next line (as Lambda recreates it).
    name = deploy(APP)
    invoke(name, {"tag": "before"})
    wait_events(group_of(name), "REPORT")
    logs.delete_log_group(logGroupName=group_of(name))
    assert logs.describe_log_groups(logGroupNamePrefix=group_of(name))["logGroups"] == []
    invoke(name, {"tag": "after"})
    events = wait_events(group_of(name), "REPORT")
    assert len(events) == 1
    assert logs.filter_log_events(logGroupName=group_of(name), filterPattern='"print before"')["events"] == []


def test_retention_policy(logs: Any, deploy: Deploy, invoke: Invoke, wait_events: WaitEvents) -> None:
    name = deploy(APP)
    invoke(name)
    wait_events(group_of(name), "REPORT")
    logs.put_retention_policy(logGroupName=group_of(name), retentionInDays=14)
    (group,) = logs.describe_log_groups(logGroupNamePrefix=group_of(name))["logGroups"]
    assert group["retentionInDays"] == 14
    assert len(wait_events(group_of(name), "REPORT")) == 1  # recent events stay
    with raises_aws("InvalidParameterException", 400, contains="Member must satisfy enum value set: [1, 3, 5"):
        logs.put_retention_policy(logGroupName=group_of(name), retentionInDays=2)
    with raises_aws("ResourceNotFoundException", 400, "The specified log group does not exist."):
        logs.put_retention_policy(logGroupName="/no/such/group", retentionInDays=1)
    logs.delete_retention_policy(logGroupName=group_of(name))
    (group,) = logs.describe_log_groups(logGroupNamePrefix=group_of(name))["logGroups"]
    assert "retentionInDays" not in group


def test_error_wire_shape(server: Any) -> None:
    """JSON 1.1 errors: the code in the body's `__type` (what botocore reads) and in the header."""
    result = http_request(server.endpoint, "POST", "/", json.dumps({"logGroupName": "/no/such"}).encode(), {
        "X-Amz-Target": "Logs_20140328.DeleteLogGroup", "Content-Type": "application/x-amz-json-1.1"})
    assert result.status == 400
    assert result.headers["x-amzn-errortype"] == "ResourceNotFoundException"
    assert result.json() == {"__type": "ResourceNotFoundException",
                             "message": "The specified log group does not exist."}
    tail = http_request(server.endpoint, "POST", "/", json.dumps({"logGroupIdentifiers": ["/x"]}).encode(), {
        "X-Amz-Target": "Logs_20140328.StartLiveTail", "Content-Type": "application/x-amz-json-1.1"})
    assert tail.status == 501 and "FilterLogEvents" in tail.json()["message"]


@pytest.mark.parametrize("days", [1, 3653])
def test_retention_bounds_accepted(logs: Any, days: int) -> None:
    group = f"/firebox/test/{unique_name('r')}"
    logs.create_log_group(logGroupName=group)
    logs.put_retention_policy(logGroupName=group, retentionInDays=days)
    assert logs.describe_log_groups(logGroupNamePrefix=group)["logGroups"][0]["retentionInDays"] == days
    logs.delete_log_group(logGroupName=group)


def test_a_line_longer_than_an_event_is_split_not_truncated(deploy: Deploy, invoke: Invoke,
                                                            wait_events: WaitEvents) -> None:
    code = ("def handler(event, context):\n"
            "    print('<' + 'y' * 600_000 + '>')\n"
            "    return 'done'\n")
    name = deploy(code)
    assert invoke(name)[1] == "done"
    wait_events(group_of(name), "REPORT")
    pieces = [e["message"] for e in wait_events(group_of(name), "yyyyyyyy")]
    assert len(pieces) == 3 and all(len(p.encode()) <= 262_118 for p in pieces)
    assert "".join(p.removesuffix("\n") for p in pieces) == "<" + "y" * 600_000 + ">"
