"""Python handlers (python3.11) on the isolated backend: results, the context object, the Lambda
environment, boto3 in the runtime, init once per sandbox, errors, client context."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest

from .engine_fixtures import (
    STREAM_RE,
    failed,
    invoke,
    isolated_backend,  # noqa: F401  (fixture)
    ok_json,
    python_function,
)
from .helpers import REGION, FireboxServer, function_arn, wait_active

PROBE_SOURCE = """
import os


def handler(event, context):
    mode = event.get("mode") if isinstance(event, dict) else None
    if mode == "none":
        return None
    if mode == "echo":
        return event["value"]
    if mode == "raise":
        raise ValueError("boom: " + event.get("why", ""))
    if mode == "boto3":
        import boto3
        return {"version": boto3.__version__, "file": boto3.__file__,
                "session_region": boto3.session.Session().region_name}
    if mode == "client_context":
        cc = context.client_context
        return {
            "custom": getattr(cc, "custom", "<no client_context>") if cc is not None else None,
            "env": getattr(cc, "env", None) if cc is not None else None,
            "client_installation_id": getattr(getattr(cc, "client", None), "installation_id", None),
        }
    return {
        "function_name": context.function_name,
        "function_version": context.function_version,
        "invoked_function_arn": context.invoked_function_arn,
        "memory_limit_in_mb": context.memory_limit_in_mb,
        "aws_request_id": context.aws_request_id,
        "log_group_name": context.log_group_name,
        "log_stream_name": context.log_stream_name,
        "remaining_ms": context.get_remaining_time_in_millis(),
        "env": dict(os.environ),
    }
"""

TIMEOUT_S = 7
MEMORY = 256
OWN_VARIABLES = {"MY_SETTING": "hello world", "OTHER_ONE": "x=1;y=2"}


@pytest.fixture(scope="module")
def probe(lam: Any, isolated_backend: FireboxServer) -> str:  # noqa: F811
    return python_function(lam, PROBE_SOURCE, prefix="pyprobe", Timeout=TIMEOUT_S, MemorySize=MEMORY,
                           Environment={"Variables": OWN_VARIABLES})


def test_result_json_and_none_is_null(lam: Any, probe: str) -> None:
    value = {"a": [1, 2.5, "three", None, True], "nested": {"é": "ü"}}
    assert ok_json(invoke(lam, probe, {"mode": "echo", "value": value})) == value
    assert ok_json(invoke(lam, probe, {"mode": "echo", "value": "just a string"})) == "just a string"
    nothing = invoke(lam, probe, {"mode": "none"})
    assert nothing.function_error is None
    assert nothing.body == b"null"


def test_context_fields_unqualified(lam: Any, probe: str) -> None:
    result = invoke(lam, probe, {})
    ctx = ok_json(result)
    assert ctx["function_name"] == probe
    assert ctx["function_version"] == "$LATEST"
    assert ctx["invoked_function_arn"] == function_arn(probe)
    assert ctx["memory_limit_in_mb"] == str(MEMORY), "memory_limit_in_mb is a string in Python"
    assert result.request_id, result.headers
    assert ctx["aws_request_id"] == result.request_id
    assert ctx["log_group_name"] == f"/aws/lambda/{probe}"
    assert STREAM_RE.match(ctx["log_stream_name"]), ctx["log_stream_name"]
    assert ctx["log_stream_name"].split("/")[3].startswith("[$LATEST]")
    assert 0 < ctx["remaining_ms"] <= TIMEOUT_S * 1000


def test_context_fields_qualified(lam: Any, probe: str) -> None:
    version = lam.publish_version(FunctionName=probe)["Version"]
    result = invoke(lam, probe, {}, Qualifier=version)
    ctx = ok_json(result)
    assert result.executed_version == version
    assert ctx["function_version"] == version
    assert ctx["invoked_function_arn"] == function_arn(probe, version)
    assert ctx["log_stream_name"].split("/")[3].startswith(f"[{version}]")
    assert ctx["env"]["AWS_LAMBDA_FUNCTION_VERSION"] == version
    assert ctx["aws_request_id"] == result.request_id

    latest = invoke(lam, probe, {}, Qualifier="$LATEST")
    ctx = ok_json(latest)
    assert ctx["invoked_function_arn"] == function_arn(probe, "$LATEST")
    assert ctx["function_version"] == "$LATEST"


def test_lambda_environment_variables(lam: Any, probe: str) -> None:
    ctx = ok_json(invoke(lam, probe, {}))
    env = ctx["env"]
    expected = {
        "AWS_LAMBDA_FUNCTION_NAME": probe,
        "AWS_LAMBDA_FUNCTION_VERSION": "$LATEST",
        "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": str(MEMORY),
        "AWS_LAMBDA_LOG_GROUP_NAME": f"/aws/lambda/{probe}",
        "AWS_LAMBDA_LOG_STREAM_NAME": ctx["log_stream_name"],
        "AWS_LAMBDA_INITIALIZATION_TYPE": "on-demand",
        "_HANDLER": "app.handler",
        "LAMBDA_TASK_ROOT": "/var/task",
        "LAMBDA_RUNTIME_DIR": "/var/runtime",
        "AWS_REGION": REGION,
        "AWS_DEFAULT_REGION": REGION,
        "AWS_EXECUTION_ENV": "AWS_Lambda_python3.11",
        "TZ": ":UTC",
        **OWN_VARIABLES,
    }
    assert {k: env.get(k) for k in expected} == expected
    host, _, port = env.get("AWS_LAMBDA_RUNTIME_API", "").rpartition(":")
    assert host and port.isdigit(), f"AWS_LAMBDA_RUNTIME_API must be host:port, got {env.get('AWS_LAMBDA_RUNTIME_API')!r}"
    assert env.get("_X_AMZN_TRACE_ID", "").startswith("Root="), env.get("_X_AMZN_TRACE_ID")


def test_boto3_importable_without_bundling(lam: Any, probe: str) -> None:
    found = ok_json(invoke(lam, probe, {"mode": "boto3"}))
    assert found["version"] and found["version"][0].isdigit(), found
    assert not found["file"].startswith("/var/task"), "boto3 comes with the runtime, not the package"
    assert found["session_region"] == REGION


def test_unhandled_exception_shape(lam: Any, probe: str) -> None:
    result = invoke(lam, probe, {"mode": "raise", "why": "because"}, LogType="Tail")
    body = failed(result, "ValueError")
    assert body["errorMessage"] == "boom: because"
    assert body["requestId"] == result.request_id
    assert isinstance(body["stackTrace"], list) and body["stackTrace"], body
    assert any("app.py" in frame and "handler" in frame for frame in body["stackTrace"]), body["stackTrace"]
    assert not any("bootstrap" in frame for frame in body["stackTrace"]), body["stackTrace"]
    assert set(body) == {"errorMessage", "errorType", "requestId", "stackTrace"}
    assert result.log is not None and "[ERROR] ValueError: boom: because" in result.log
    # The sandbox survives a handled error: the next invocation is fine.
    assert ok_json(invoke(lam, probe, {"mode": "echo", "value": 1})) == 1


def test_import_error_is_runtime_import_module_error(lam: Any) -> None:
    name = python_function(lam, "import module_that_does_not_exist_xyz\n\ndef handler(e, c):\n    return 1\n",
                           prefix="pyimport")
    result = invoke(lam, name, {}, LogType="Tail")
    body = failed(result, "Runtime.ImportModuleError")
    assert body["errorMessage"] == "Unable to import module 'app': No module named 'module_that_does_not_exist_xyz'"
    # Reported again on the next invocation (each one pays a failed init): never a hang, never a 500.
    again = invoke(lam, name, {})
    assert failed(again, "Runtime.ImportModuleError")["errorMessage"] == body["errorMessage"]


def test_client_context_reaches_the_handler(lam: Any, probe: str) -> None:
    client_context = {
        "client": {"installation_id": "inst-1", "app_title": "t", "app_version_name": "1",
                   "app_version_code": "1", "app_package_name": "p"},
        "custom": {"tenant": "acme", "n": 7},
        "env": {"platform": "linux", "locale": "en_US"},
    }
    encoded = base64.b64encode(json.dumps(client_context).encode()).decode()
    seen = ok_json(invoke(lam, probe, {"mode": "client_context"}, ClientContext=encoded))
    assert seen["custom"] == {"tenant": "acme", "n": 7}
    assert seen["env"] == {"platform": "linux", "locale": "en_US"}
    assert seen["client_installation_id"] == "inst-1"
    without = ok_json(invoke(lam, probe, {"mode": "client_context"}))
    assert without["custom"] is None


COUNTER_SOURCE = """
import random

COUNT = 0
TOKEN = random.random()


def handler(event, context):
    global COUNT
    COUNT += 1
    return {"count": COUNT, "token": TOKEN, "stream": context.log_stream_name}
"""


def test_init_once_per_sandbox_and_reset_on_new_sandbox(lam: Any) -> None:
    name = python_function(lam, COUNTER_SOURCE, prefix="pycount", Environment={"Variables": {"GEN": "1"}})
    first = ok_json(invoke(lam, name, {}))
    second = ok_json(invoke(lam, name, {}))
    third = ok_json(invoke(lam, name, {}))
    assert [first["count"], second["count"], third["count"]] == [1, 2, 3]
    assert first["token"] == second["token"] == third["token"]
    assert first["stream"] == second["stream"] == third["stream"]

    # A configuration change retires the sandboxes: the next invocation inits a new one.
    lam.update_function_configuration(FunctionName=name, Environment={"Variables": {"GEN": "2"}})
    wait_active(lam, name)
    fresh = ok_json(invoke(lam, name, {}))
    assert fresh["count"] == 1, fresh
    assert fresh["token"] != first["token"]
    assert fresh["stream"] != first["stream"]
    assert ok_json(invoke(lam, name, {}))["count"] == 2


THREADS_SOURCE = """
import concurrent.futures
import logging
import os
import random
import threading


def handler(event, context):
    seen = []
    worker = threading.Thread(target=lambda: seen.append(threading.get_native_id()))
    worker.start()
    worker.join()
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        squares = list(pool.map(lambda n: n * n, range(5)))
    logging.getLogger("app").warning("logged from the handler")
    return {"main": threading.current_thread() is threading.main_thread(),
            "main_native_id": threading.main_thread().native_id, "native_id": threading.get_native_id(),
            "pid": os.getpid(), "worker_native_id": seen[0], "squares": squares,
            "threads_after": threading.active_count(), "random": random.random()}
"""


def test_threads_logging_and_random_work_in_a_forked_sandbox(lam: Any) -> None:
    # Python sandboxes are forked from a zygote without os.fork()'s after-fork hooks
    # (zygote.py `fork_plain`): what those would have reset must still hold.
    name = python_function(lam, THREADS_SOURCE, prefix="pythreads")
    first = ok_json(invoke(lam, name, {}))
    assert first["main"] and first["main_native_id"] == first["native_id"] == first["pid"], first
    assert first["worker_native_id"] not in (first["native_id"], None), first
    assert first["squares"] == [0, 1, 4, 9, 16] and first["threads_after"] == 1, first
    other = ok_json(invoke(lam, python_function(lam, THREADS_SOURCE, prefix="pythreads"), {}))
    assert other["random"] != first["random"]  # two sandboxes of one zygote: two random streams


BOTO3_RANDOM_SOURCE = """
import random

import boto3


def handler(event, context):
    return {"random": random.random(), "boto3": boto3.__version__}
"""


def test_sandboxes_forked_from_a_zygote_that_imported_random_draw_different_numbers(lam: Any) -> None:
    # The boto3 zygote has imported `random` (botocore does): each fork must reseed it, or every
    # sandbox of that zygote would draw the same numbers.
    drawn = {ok_json(invoke(lam, python_function(lam, BOTO3_RANDOM_SOURCE, prefix="pyrandom"), {}))["random"]
             for _ in range(3)}
    assert len(drawn) == 3, drawn
