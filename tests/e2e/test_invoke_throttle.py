"""Throttling with reserved concurrency: 0 = always throttled; 1 = one invocation at a time, a
second concurrent one gets 429 at once (never waits)."""

from __future__ import annotations

import json
import threading
import time
import uuid
from typing import Any

from botocore.exceptions import ClientError

from .engine_fixtures import (
    INVOKE_DEADLINE_S,
    invoke,
    isolated_backend,  # noqa: F401  (fixture)
    join_all,
    logs_client,
    ok_json,
    poll,
    python_function,
    single_attempt_client,
)
from .helpers import FireboxServer, raises_aws

RESERVED_REASON = "ReservedFunctionConcurrentInvocationLimitExceeded"

SLEEPY = """
import time


def handler(event, context):
    if "say" in event:
        print(event["say"], flush=True)
    time.sleep(event.get("seconds", 0))
    return {"slept": event.get("seconds", 0), "stream": context.log_stream_name}
"""


def _assert_throttle_body(result: Any) -> None:
    assert result.status == 429, (result.status, result.body)
    assert result.headers.get("x-amzn-errortype", "").split(":")[0] == "TooManyRequestsException", result.headers
    body = json.loads(result.body)
    assert body.get("Reason") == RESERVED_REASON, body
    assert body.get("message") == "Rate Exceeded.", body
    assert body.get("Type") == "User", body
    retry_after = result.headers.get("retry-after")
    assert retry_after is not None and retry_after.strip().isdigit(), result.headers


def test_reserved_zero_always_throttles(lam: Any, raw_http: Any, isolated_backend: FireboxServer) -> None:  # noqa: F811
    name = python_function(lam, SLEEPY, prefix="throttle0")
    assert ok_json(invoke(lam, name, {}))["slept"] == 0
    lam.put_function_concurrency(FunctionName=name, ReservedConcurrentExecutions=0)
    once = single_attempt_client(isolated_backend)
    for _ in range(3):
        with raises_aws("TooManyRequestsException", 429, message="Rate Exceeded.") as error:
            once.invoke(FunctionName=name, Payload=b"{}")
        assert error.response.get("Reason") == RESERVED_REASON, error.response
        assert "retry-after" in {k.lower() for k in error.response["ResponseMetadata"]["HTTPHeaders"]}
    _assert_throttle_body(raw_http("POST", f"/2015-03-31/functions/{name}/invocations", b"{}"))
    # Throttled at every entry point that runs code: qualified too.
    version = lam.publish_version(FunctionName=name)["Version"]
    with raises_aws("TooManyRequestsException", 429):
        once.invoke(FunctionName=name, Qualifier=version, Payload=b"{}")

    lam.delete_function_concurrency(FunctionName=name)
    assert ok_json(invoke(lam, name, {}))["slept"] == 0


def test_reserved_one_second_concurrent_invoke_is_throttled_at_once(
        lam: Any, raw_http: Any, isolated_backend: FireboxServer) -> None:  # noqa: F811
    """While one invocation holds the only slot (it has printed its start line and sleeps 2 s),
    a second one is answered 429 at once: the 429 comes back before the first one finishes."""
    name = python_function(lam, SLEEPY, prefix="throttle1")
    lam.put_function_concurrency(FunctionName=name, ReservedConcurrentExecutions=1)
    once = single_attempt_client(isolated_backend)
    logs = logs_client(isolated_backend)
    ok_json(invoke(once, name, {}))  # warm: the long invocation below does not pay a cold start

    def printed(marker: str) -> bool:
        try:
            # (no filterPattern: the Logs API is a later issue; filter here)
            found = logs.filter_log_events(logGroupName=f"/aws/lambda/{name}")
        except ClientError:
            return False
        return any(marker in event["message"] for event in found["events"])

    rounds: list[dict[str, Any]] = []
    deadline = time.monotonic() + INVOKE_DEADLINE_S
    while time.monotonic() < deadline and len(rounds) < 3:
        marker = f"long-started-{uuid.uuid4().hex}"
        order: list[str] = []
        lock = threading.Lock()
        long_result: dict[str, Any] = {}

        def note(what: str) -> None:
            with lock:
                order.append(what)

        def long_invoke(marker: str = marker) -> None:
            try:
                long_result["value"] = ok_json(invoke(once, name, {"seconds": 2, "say": marker}))
                note("long:ok")
            except ClientError as exc:
                long_result["error"] = exc.response["Error"]["Code"]
                note("long:" + long_result["error"])

        thread = threading.Thread(target=long_invoke, name="long-invoke")
        thread.start()
        try:
            poll(lambda: printed(marker) or not thread.is_alive(), deadline_s=INVOKE_DEADLINE_S,
                 what="the long invocation to start")
            if not thread.is_alive():  # its start line was not visible in time: try again
                rounds.append({"order": order, "skipped": True, "long": long_result})
                continue
            probe = raw_http("POST", f"/2015-03-31/functions/{name}/invocations", b"{}")
            note(f"probe:{probe.status}")
        finally:
            join_all([thread])
        rounds.append({"order": order, "probe": probe, "long": long_result})
        break
    last = rounds[-1] if rounds else {}
    assert "probe" in last, f"the long invocation was never seen running: {rounds}"
    assert last["long"].get("value", {}).get("slept") == 2, last
    _assert_throttle_body(last["probe"])
    assert last["order"] == ["probe:429", "long:ok"], (
        f"the 429 must come back while the other invocation still runs (never wait): {last['order']}")

    # The slot is free again once the running invocation is done (reserved is also a guarantee).
    poll(lambda: _runs(once, name), deadline_s=INVOKE_DEADLINE_S, what=f"{name} to run again after the throttle")


def _runs(lam: Any, name: str) -> bool:
    try:
        return ok_json(invoke(lam, name, {}))["slept"] == 0
    except ClientError as exc:
        if exc.response["Error"]["Code"] == "TooManyRequestsException":
            return False
        raise
