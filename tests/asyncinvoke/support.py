"""Shared pieces of the asynchronous-invocation suite: functions that report through their log,
reading those reports back, the statistics endpoint, and a log barrier.

Functions run sandboxed and cannot write host files, so every observation goes through the
function's log group (CloudWatch Logs' FilterLogEvents, as boto3 calls it):

- the worker function (`WORKER_SOURCE`) prints one `RAN <request id> <event json>` line per
  invocation, then sleeps / raises / crashes as its `MODE` and `SLEEP` variables (or the event's
  `sleep` key) say;
- a sink function (`SINK_SOURCE`) prints `SINK <event json>` for every record or dead letter it
  receives.

Every wait polls with a deadline (`tests.e2e.helpers.wait_for`); nothing sleeps a fixed time.
"""

from __future__ import annotations

import json
import re
import time
import uuid
from dataclasses import dataclass
from typing import Any

import boto3
import botocore.config
from botocore.exceptions import ClientError

from tests.e2e.helpers import (
    ACCOUNT,
    REGION,
    FireboxServer,
    create_active,
    http_request,
    make_zip,
    unique_name,
    wait_for,
)

# Deadlines (seconds): generous upper bounds on waits that normally end far sooner.
RUN_DEADLINE_S = 30.0
LOG_DEADLINE_S = 20.0

WORKER_SOURCE = """
import json, os, time

def handler(event, context):
    print("RAN", context.aws_request_id, json.dumps(event)[:4000], flush=True)
    pause = event.get("sleep") if isinstance(event, dict) else None
    pause = float(os.environ.get("SLEEP", "0")) if pause is None else float(pause)
    if pause:
        time.sleep(pause)
    mode = os.environ.get("MODE", "ok")
    if mode == "raise":
        raise RuntimeError("boom " + context.aws_request_id)
    if mode == "crash":
        os._exit(1)
    return {"ok": True, "echo": event}
"""

SINK_SOURCE = """
import json

def handler(event, context):
    print("SINK " + json.dumps(event), flush=True)
    return None
"""

BARRIER_SOURCE = """
def handler(event, context):
    print("BARRIER " + event["marker"], flush=True)
    return event["marker"]
"""

RAN_RE = re.compile(r"^RAN (\S+) (.*)$")


def function_arn(name: str, qualifier: str | None = None) -> str:
    arn = f"arn:aws:lambda:{REGION}:{ACCOUNT}:function:{name}"
    return f"{arn}:{qualifier}" if qualifier else arn


def logs_client(server: FireboxServer) -> Any:
    return boto3.client("logs", endpoint_url=server.endpoint, region_name=server.region,
                        aws_access_key_id="test", aws_secret_access_key="test",
                        config=botocore.config.Config(retries={"max_attempts": 1}, read_timeout=60))


def create_worker(lam: Any, *, mode: str = "ok", sleep: float = 0.0, prefix: str = "fn", name: str | None = None,
                  **params: Any) -> str:
    name = name or unique_name(prefix)
    env = {"MODE": mode, "SLEEP": str(sleep)}
    create_active(lam, name, zip_bytes=make_zip({"app.py": WORKER_SOURCE}),
                  Environment={"Variables": env}, **params)
    return name


def create_sink(lam: Any) -> str:
    name = unique_name("sink")
    create_active(lam, name, zip_bytes=make_zip({"app.py": SINK_SOURCE}))
    return name


# -- reading logs -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Line:
    timestamp_ms: int
    message: str


def log_lines(logs: Any, name: str) -> list[Line]:
    """Every line of the function's log group, all pages (an absent group reads as empty)."""
    kwargs: dict[str, Any] = {"logGroupName": f"/aws/lambda/{name}"}
    lines: list[Line] = []
    seen: set[str] = set()
    while True:
        try:
            page = logs.filter_log_events(**kwargs)
        except ClientError as exc:
            if exc.response["Error"].get("Code") == "ResourceNotFoundException":
                return []
            raise
        for event in page["events"]:
            if event["eventId"] in seen:
                continue
            seen.add(event["eventId"])
            for text in event["message"].rstrip("\n").split("\n"):
                lines.append(Line(event["timestamp"], text.strip()))
        token = page.get("nextToken")
        if not token or not page["events"]:
            return lines
        kwargs["nextToken"] = token


@dataclass(frozen=True)
class Ran:
    request_id: str
    event: Any
    timestamp_ms: int


def runs(logs: Any, name: str) -> list[Ran]:
    """The worker's RAN lines, in log order."""
    found = []
    for line in log_lines(logs, name):
        match = RAN_RE.match(line.message)
        if match:
            try:
                event = json.loads(match.group(2))
            except ValueError:
                event = match.group(2)
            found.append(Ran(match.group(1), event, line.timestamp_ms))
    return found


def sink_records(logs: Any, sink: str) -> list[dict[str, Any]]:
    return [json.loads(line.message[5:]) for line in log_lines(logs, sink) if line.message.startswith("SINK ")]


def wait_runs(logs: Any, name: str, count: int, *, deadline_s: float = RUN_DEADLINE_S,
              request_id: str | None = None) -> list[Ran]:
    """Wait until the worker has at least `count` RAN lines (of `request_id`, when given)."""
    def probe() -> list[Ran] | None:
        found = [r for r in runs(logs, name) if request_id is None or r.request_id == request_id]
        return found if len(found) >= count else None

    return wait_for(probe, deadline_s=deadline_s,
                    what=f"{count} RAN line(s) of {name}" + (f" for {request_id}" if request_id else ""))


def wait_sink(logs: Any, sink: str, request_id: str | None = None, *, count: int = 1,
              deadline_s: float = RUN_DEADLINE_S) -> list[dict[str, Any]]:
    """Wait for `count` records in the sink (destination records of `request_id`, when given)."""
    def probe() -> list[dict[str, Any]] | None:
        found = [r for r in sink_records(logs, sink)
                 if request_id is None or (r.get("requestContext") or {}).get("requestId") == request_id]
        return found if len(found) >= count else None

    return wait_for(probe, deadline_s=deadline_s, what=f"{count} record(s) in sink {sink} for {request_id}")


class LogBarrier:
    """Everything logged before `sync()` is readable after it returns.

    Firebox's log store has one FIFO buffer written by one task, so when a line printed *now*
    by a synchronous invocation is readable, every line appended before it is too. Used to check
    that a count "stays exact" without sleeping a fixed time."""

    def __init__(self, lam: Any, logs: Any) -> None:
        self._lam, self._logs = lam, logs
        self.name = unique_name("barrier")
        create_active(lam, self.name, zip_bytes=make_zip({"app.py": BARRIER_SOURCE}))

    def sync(self) -> None:
        marker = uuid.uuid4().hex
        answer = self._lam.invoke(FunctionName=self.name, Payload=json.dumps({"marker": marker}).encode())
        assert "FunctionError" not in answer, answer["Payload"].read()
        wait_for(lambda: any(line.message == f"BARRIER {marker}" for line in log_lines(self._logs, self.name)),
                 deadline_s=LOG_DEADLINE_S, what="the log barrier's line")


# -- invoking and statistics ------------------------------------------------------------------


def send_event(lam: Any, name: str, event: Any, qualifier: str | None = None) -> str:
    """An Event invoke that must be accepted: returns the request id of the 202."""
    kwargs: dict[str, Any] = {"FunctionName": name, "InvocationType": "Event", "Payload": json.dumps(event).encode()}
    if qualifier:
        kwargs["Qualifier"] = qualifier
    answer = lam.invoke(**kwargs)
    assert answer["StatusCode"] == 202, answer
    request_id = answer["ResponseMetadata"]["HTTPHeaders"].get("x-amzn-requestid", "")
    assert request_id, answer["ResponseMetadata"]
    return request_id


def event_stats(server: FireboxServer) -> dict[str, dict[str, int]]:
    result = http_request(server.endpoint, "GET", "/_firebox/events", timeout_s=30)
    assert result.status == 200, (result.status, result.body[:300])
    return result.json()


ZERO = {"queued": 0, "in_flight": 0, "retrying": 0, "failed": 0, "succeeded": 0}


def stats_of(server: FireboxServer, name: str) -> dict[str, int]:
    return event_stats(server).get(name, ZERO)


def wait_stats(server: FireboxServer, name: str, *, deadline_s: float = RUN_DEADLINE_S, **expected: int) -> dict[str, int]:
    """Wait until the function's counters reach at least `expected` (e.g. failed=1)."""
    def probe() -> dict[str, int] | None:
        stats = stats_of(server, name)
        return stats if all(stats[k] >= v for k, v in expected.items()) else None

    return wait_for(probe, deadline_s=deadline_s, what=f"/_firebox/events of {name} to reach {expected}")


def wait_drained(server: FireboxServer, name: str, *, deadline_s: float = RUN_DEADLINE_S) -> dict[str, int]:
    def probe() -> dict[str, int] | None:
        stats = stats_of(server, name)
        return stats if stats["queued"] + stats["in_flight"] + stats["retrying"] == 0 else None

    return wait_for(probe, deadline_s=deadline_s, what=f"the queue of {name} to drain")


def now_ms() -> int:
    return int(time.time() * 1000)


def poll(probe: Any, *, deadline_s: float, what: str, every_s: float = 0.25) -> Any:
    """`wait_for` for heavy probes (whole log groups, queue statistics that scan the queue):
    polls every `every_s` so that the observer does not slow down what it observes."""
    end = time.monotonic() + deadline_s
    while True:
        last = probe()
        if last:
            return last
        if time.monotonic() > end:
            import pytest

            pytest.fail(f"timed out after {deadline_s} s waiting for {what}; last: {last!r}")
        time.sleep(every_s)
