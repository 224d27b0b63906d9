"""The sandbox lifecycle and the Invoke API around it: scale-out and reuse, timeouts, out-of-memory,
crashes, size limits, Tail logs and REPORT, DryRun / Event, qualifiers, aliases with weights, and
invoking a Pending function."""

from __future__ import annotations

import base64
import json
import threading
from typing import Any

import pytest
from botocore.exceptions import ClientError

from .engine_fixtures import (
    INVOKE_DEADLINE_S,
    LOG_DEADLINE_S,
    STREAM_RE,
    TAIL_LIMIT,
    assert_platform_healthy,
    failed,
    healthy_fn,  # noqa: F401  (fixture)
    invoke,
    isolated_backend,  # noqa: F401  (fixture)
    join_all,
    logs_client,
    ok_json,
    poll,
    py_zip,
    python_function,
)
from .helpers import (
    FireboxServer,
    create_function,
    function_arn,
    handler_zip,
    raises_aws,
    unique_name,
    wait_active,
)

LIFECYCLE_SOURCE = """
import os
import time

BIG = 6 * 1024 * 1024 + 1024


def handler(event, context):
    action = event.get("action") if isinstance(event, dict) else None
    if action == "sleep":
        time.sleep(event["seconds"])
    elif action == "exit":
        os._exit(event["status"])
    elif action == "big":
        return "x" * BIG
    elif action == "exact":  # a JSON string of exactly 6 MiB
        return "x" * (6 * 1024 * 1024 - 2)
    elif action == "print":
        for i in range(event.get("lines", 1)):
            print(event["text"] + (" %05d" % i if event.get("lines") else ""))
    return {"stream": context.log_stream_name, "pid": os.getpid()}
"""


@pytest.fixture(scope="module")
def life(lam: Any, isolated_backend: FireboxServer) -> str:  # noqa: F811
    return python_function(lam, LIFECYCLE_SOURCE, prefix="life", Timeout=15, MemorySize=256)


def _concurrent_streams(lam: Any, name: str, count: int, seconds: float) -> list[str]:
    streams: list[str | None] = [None] * count
    errors: list[BaseException] = []
    barrier = threading.Barrier(count)

    def run(index: int) -> None:
        try:
            barrier.wait(timeout=INVOKE_DEADLINE_S)
            streams[index] = ok_json(invoke(lam, name, {"action": "sleep", "seconds": seconds}))["stream"]
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,), name=f"invoke-{i}") for i in range(count)]
    for thread in threads:
        thread.start()
    join_all(threads)
    assert not errors, errors
    assert all(streams), streams
    return [s for s in streams if s]


def test_concurrent_invokes_scale_out_then_reuse(lam: Any, isolated_backend: FireboxServer) -> None:  # noqa: F811
    name = python_function(lam, LIFECYCLE_SOURCE, prefix="scale", Timeout=15)
    first = _concurrent_streams(lam, name, 4, 1.0)
    assert len(set(first)) == 4, f"4 concurrent invocations need 4 sandboxes: {first}"
    assert all(STREAM_RE.match(s) for s in first), first
    again = _concurrent_streams(lam, name, 4, 1.0)
    assert set(again) <= set(first), f"the warm sandboxes must be reused, new ones appeared: {set(again) - set(first)}"


def test_tail_log_and_init_duration_only_when_cold(lam: Any, isolated_backend: FireboxServer) -> None:  # noqa: F811
    name = python_function(lam, LIFECYCLE_SOURCE, prefix="tail", MemorySize=192)
    marker = f"marker-{unique_name()}"
    cold = invoke(lam, name, {"action": "print", "text": marker}, LogType="Tail")
    ok_json(cold)
    assert cold.log_result_b64 is not None and len(cold.log) <= TAIL_LIMIT
    lines = cold.log.splitlines()
    assert lines[0] == f"START RequestId: {cold.request_id} Version: $LATEST", lines
    assert marker in lines, lines
    assert f"END RequestId: {cold.request_id}" in lines, lines
    assert lines.index(marker) < lines.index(f"END RequestId: {cold.request_id}")
    report = cold.report()
    assert report["RequestId"] == cold.request_id
    for key in ("Duration", "Billed Duration", "Memory Size", "Max Memory Used", "Init Duration"):
        assert key in report, f"{key} missing from REPORT: {report}"
    assert report["Memory Size"] == "192 MB"
    assert report["Duration"].endswith(" ms") and report["Billed Duration"].endswith(" ms")
    assert report["Max Memory Used"].endswith(" MB") and int(report["Max Memory Used"].split()[0]) > 0
    assert report["Init Duration"].endswith(" ms")
    report_line = next(ln for ln in lines if ln.startswith("REPORT "))
    assert report_line.rstrip("\t").split("\t")[-1].startswith("Init Duration: "), "Init Duration comes last"

    warm = invoke(lam, name, {"action": "print", "text": marker}, LogType="Tail")
    ok_json(warm)
    assert "Init Duration" not in warm.report(), "only the cold invocation reports Init Duration"
    assert warm.log.splitlines()[0] == f"START RequestId: {warm.request_id} Version: $LATEST"
    assert cold.request_id not in warm.log, "each invocation's tail holds only its own log"

    without_tail = invoke(lam, name, {})
    assert without_tail.log_result_b64 is None and "x-amz-log-result" not in without_tail.headers


def test_tail_log_is_the_last_4kb(lam: Any, life: str) -> None:
    result = invoke(lam, life, {"action": "print", "text": "y" * 100, "lines": 200}, LogType="Tail")
    ok_json(result)
    assert result.log_result_b64 is not None
    raw = base64.b64decode(result.log_result_b64)
    assert len(raw) <= TAIL_LIMIT, len(raw)
    assert len(raw) >= TAIL_LIMIT - 200, "20 KB of output: the tail should be (nearly) full"
    assert result.log.rstrip("\n").splitlines()[-1].startswith(f"REPORT RequestId: {result.request_id}")
    assert "y" * 100 + " 00199" in result.log, "the LAST 4 KB: the last printed line is in it"
    assert " 00000" not in result.log


def test_a_sandbox_that_outlived_its_lifetime_is_replaced_even_under_steady_use(
        server_factory: Any, isolated_backend: FireboxServer) -> None:  # noqa: F811
    # Lambda ends execution environments "every few hours ... even for functions that are
    # invoked continuously"; here the most a sandbox lives is 1 s (0.75-1 s, spread).
    lam = server_factory(env={"FIREBOX_MAX_SANDBOX_LIFETIME_S": "1"}).client()
    name = python_function(lam, LIFECYCLE_SOURCE, prefix="lifetime", Timeout=15)
    ok_json(invoke(lam, name, {}))
    # Whichever sandbox serves this, it is over 1.2 s old when the invocation ends.
    spanning = ok_json(invoke(lam, name, {"action": "sleep", "seconds": 1.2}))
    after = invoke(lam, name, {}, LogType="Tail")
    assert ok_json(after)["stream"] != spanning["stream"], "its lifetime ended during that invocation"
    assert "Init Duration" in after.report(), after.log


def test_timeout_kills_and_next_invoke_is_cold(lam: Any, isolated_backend: FireboxServer) -> None:  # noqa: F811
    name = python_function(lam, LIFECYCLE_SOURCE, prefix="timeout", Timeout=1)
    warmup = invoke(lam, name, {}, LogType="Tail")
    before = ok_json(warmup)["stream"]
    timed = invoke(lam, name, {"action": "sleep", "seconds": 5}, LogType="Tail")
    body = failed(timed, "Sandbox.Timedout")
    assert body["errorMessage"] == f"RequestId: {timed.request_id} Error: Task timed out after 1.00 seconds"
    assert "Task timed out after 1.00 seconds" in (timed.log or ""), timed.log

    after = invoke(lam, name, {}, LogType="Tail")
    assert ok_json(after)["stream"] != before, "a timed-out sandbox is discarded: the next invoke is cold"
    assert "Init Duration" in after.report(), after.log


def test_out_of_memory_is_runtime_exit_error(lam: Any, isolated_backend: FireboxServer,  # noqa: F811
                                             healthy_fn: str) -> None:  # noqa: F811
    name = python_function(lam, """
        def handler(event, context):
            hog = []
            for _ in range(25):  # 400 MB, every page touched
                hog.append(b"\\x01" * (16 * 1024 * 1024))
            return len(hog)
    """, prefix="oom", MemorySize=128, Timeout=20)
    result = invoke(lam, name, {}, LogType="Tail")
    body = failed(result, "Runtime.ExitError")
    assert "Runtime exited with error: signal: killed" in body["errorMessage"], body
    assert body["errorMessage"].startswith(f"RequestId: {result.request_id} Error: "), body
    report = result.report()
    assert int(report["Max Memory Used"].split()[0]) <= 128 + 8, report
    # The platform serves on, and the function itself gets a fresh sandbox.
    assert_platform_healthy(isolated_backend, lam, healthy_fn)
    again = invoke(lam, name, {})
    failed(again, "Runtime.ExitError")


def test_exit_status_is_runtime_exit_error(lam: Any, life: str) -> None:
    before = ok_json(invoke(lam, life, {}))["stream"]
    result = invoke(lam, life, {"action": "exit", "status": 3})
    body = failed(result, "Runtime.ExitError")
    assert body["errorMessage"] == f"RequestId: {result.request_id} Error: Runtime exited with error: exit status 3"
    assert ok_json(invoke(lam, life, {}))["stream"] != before, "the crashed sandbox is not reused"


def test_init_failures_are_reported_on_the_triggering_invocation(lam: Any,
                                                                isolated_backend: FireboxServer) -> None:  # noqa: F811
    exits = python_function(lam, "import os\nos._exit(2)\n\ndef handler(e, c):\n    return 1\n", prefix="initexit")
    result = invoke(lam, exits, {}, LogType="Tail")
    body = failed(result, "Runtime.ExitError")
    assert body["errorMessage"] == f"RequestId: {result.request_id} Error: Runtime exited with error: exit status 2", body

    raises = python_function(lam, "raise RuntimeError('init boom')\n\ndef handler(e, c):\n    return 1\n",
                             prefix="initraise")
    result = invoke(lam, raises, {}, LogType="Tail")
    body = failed(result, "RuntimeError")
    assert body["errorMessage"] == "init boom", body
    assert "init boom" in (result.log or ""), result.log


def test_response_too_large(lam: Any, life: str) -> None:
    """AWS's limit is 6 MiB of response body (the whole limit is usable), and its message says
    6291556 bytes (sic: AWS's own figure, see LAMBDA.md's sources)."""
    fits = invoke(lam, life, {"action": "exact"})
    assert fits.function_error is None and len(fits.body) == 6 * 1024 * 1024, (fits.function_error, len(fits.body))
    result = invoke(lam, life, {"action": "big"})
    body = failed(result, "Function.ResponseSizeTooLarge")
    assert body["errorMessage"] == "Response payload size exceeded maximum allowed payload size (6291556 bytes).", body
    assert ok_json(invoke(lam, life, {}))["stream"]


def test_payload_not_json(lam: Any, life: str) -> None:
    with raises_aws("InvalidRequestContentException", 400) as error:
        lam.invoke(FunctionName=life, Payload=b"this is { not json")
    assert error.message, error.response
    with raises_aws("InvalidRequestContentException", 400):
        lam.invoke(FunctionName=life, Payload=b"{\"unterminated\": ")


def test_payload_over_6mb(lam: Any, raw_http: Any, life: str) -> None:
    message = "Request must be smaller than 6291456 bytes for the InvokeFunction operation"
    too_big = b'"' + b"z" * (6 * 1024 * 1024) + b'"'
    result = raw_http("POST", f"/2015-03-31/functions/{life}/invocations", too_big)
    assert result.status == 413, (result.status, result.body[:300])
    assert result.headers.get("x-amzn-errortype", "").split(":")[0] == "RequestTooLargeException", result.headers
    assert json.loads(result.body).get("message") == message, result.body
    with raises_aws("RequestTooLargeException", 413, message=message):
        lam.invoke(FunctionName=life, Payload=too_big)
    # Exactly 6 MiB of JSON is still accepted.
    fits = b'"' + b"z" * (6 * 1024 * 1024 - 2) + b'"'
    assert ok_json(invoke(lam, life, raw=fits))["stream"]


def test_dry_run(lam: Any, life: str) -> None:
    dry = lam.invoke(FunctionName=life, InvocationType="DryRun")
    assert dry["StatusCode"] == 204
    assert dry["Payload"].read() == b""
    with raises_aws("ResourceNotFoundException", 404):
        lam.invoke(FunctionName=unique_name("missing"), InvocationType="DryRun")


def test_event_is_a_clear_error_or_really_runs(lam: Any, isolated_backend: FireboxServer) -> None:  # noqa: F811
    """Issue 3: until asynchronous invocation exists, `Event` gets a clear error, never a fake 202.
    Once it exists (the async issue), 202 is right only if the event is really run: its output
    must reach the function's log."""
    name = python_function(lam, LIFECYCLE_SOURCE, prefix="event")
    marker = f"event-ran-{unique_name()}"
    try:
        answer = lam.invoke(FunctionName=name, InvocationType="Event",
                            Payload=json.dumps({"action": "print", "text": marker}).encode())
    except ClientError as error:
        status = error.response["ResponseMetadata"]["HTTPStatusCode"]
        message = error.response["Error"].get("Message", "")
        assert status >= 400, error.response
        assert "Event" in message or "async" in message.lower(), f"not a clear message: {message!r}"
        return
    assert answer["StatusCode"] == 202
    assert answer["Payload"].read() == b""
    logs = logs_client(isolated_backend)

    def ran() -> bool:
        try:
            events = logs.filter_log_events(logGroupName=f"/aws/lambda/{name}")["events"]
        except ClientError:
            return False
        return any(marker in event["message"] for event in events)

    poll(ran, deadline_s=LOG_DEADLINE_S, what=f"the Event invocation of {name} to run (202 must not be fake)")


VERSIONED_SOURCE = """
import os

MARK = {mark!r}


def handler(event, context):
    return {{"mark": MARK, "version": context.function_version, "arn": context.invoked_function_arn,
            "env_version": os.environ["AWS_LAMBDA_FUNCTION_VERSION"]}}
"""


def test_qualifiers_aliases_and_weights(lam: Any, isolated_backend: FireboxServer) -> None:  # noqa: F811
    name = python_function(lam, VERSIONED_SOURCE.format(mark="one"), prefix="alias")
    v1 = lam.publish_version(FunctionName=name)["Version"]
    lam.update_function_code(FunctionName=name, ZipFile=py_zip(VERSIONED_SOURCE.format(mark="two")))
    wait_active(lam, name)
    v2 = lam.publish_version(FunctionName=name)["Version"]
    assert (v1, v2) == ("1", "2")

    latest = invoke(lam, name, {})
    assert latest.executed_version == "$LATEST" and latest.headers["x-amz-executed-version"] == "$LATEST"
    assert ok_json(latest)["mark"] == "two"
    by_version = invoke(lam, name, {}, Qualifier="1")
    assert by_version.executed_version == "1"
    assert ok_json(by_version) == {"mark": "one", "version": "1", "arn": f"{function_arn(name)}:1", "env_version": "1"}
    by_arn = invoke(lam, f"{function_arn(name)}:2", {})
    assert by_arn.executed_version == "2" and ok_json(by_arn)["mark"] == "two"

    lam.create_alias(FunctionName=name, Name="live", FunctionVersion="1")
    by_alias = invoke(lam, name, {}, Qualifier="live")
    assert by_alias.executed_version == "1"
    assert ok_json(by_alias) == {"mark": "one", "version": "1", "arn": f"{function_arn(name)}:live", "env_version": "1"}
    assert invoke(lam, f"{name}:live", {}).executed_version == "1"

    lam.update_alias(FunctionName=name, Name="live", RoutingConfig={"AdditionalVersionWeights": {"2": 0.5}})
    seen: dict[str, int] = {}
    for _ in range(100):
        result = invoke(lam, name, {}, Qualifier="live")
        body = ok_json(result)
        assert body["version"] == result.executed_version, "X-Amz-Executed-Version is the version that ran"
        assert body["mark"] == {"1": "one", "2": "two"}[result.executed_version]
        seen[result.executed_version] = seen.get(result.executed_version, 0) + 1
    assert set(seen) == {"1", "2"}, f"weights {{'2': 0.5}} route to both versions: {seen}"

    with raises_aws("ResourceNotFoundException", 404):
        lam.invoke(FunctionName=name, Qualifier="9")
    with raises_aws("ResourceNotFoundException", 404):
        lam.invoke(FunctionName=name, Qualifier="nosuchalias")


def test_invoke_pending_function_conflicts(server_factory: Any) -> None:
    slow = server_factory(env={"FIREBOX_ACTIVATION_DELAY_S": "30"})
    client = slow.client()
    name = unique_name("pending")
    created = create_function(client, name, zip_bytes=handler_zip())
    assert created["State"] == "Pending"
    with raises_aws("ResourceConflictException", 409,
                    contains="The function is currently in the following state: Pending") as error:
        client.invoke(FunctionName=name, Payload=b"{}")
    assert error.response["Error"]["Message"] == (
        "The operation cannot be performed at this time. The function is currently in the following state: Pending")
    with raises_aws("ResourceConflictException", 409):
        client.invoke(FunctionName=name, InvocationType="DryRun")
