"""The Python bootstrap, run for real against a fake Runtime API."""

from __future__ import annotations

import json
import re
import textwrap
import time
from pathlib import Path

from .conftest import Starter
from .fakeapi import ARN, FakeRuntimeAPI

APP = """
    import logging, os, sys, time

    INITS = []
    INITS.append(os.getpid())
    CALLS = 0

    def handler(event, context):
        global CALLS
        CALLS += 1
        return {"event": event, "calls": CALLS, "inits": len(INITS), "pid": os.getpid()}

    def nothing(event, context):
        pass

    def fail(event, context):
        raise ValueError("x")

    def unmarshallable(event, context):
        return {1, 2}

    def context_fields(event, context):
        return {
            "function_name": context.function_name,
            "function_version": context.function_version,
            "invoked_function_arn": context.invoked_function_arn,
            "memory_limit_in_mb": context.memory_limit_in_mb,
            "aws_request_id": context.aws_request_id,
            "log_group_name": context.log_group_name,
            "log_stream_name": context.log_stream_name,
            "remaining": context.get_remaining_time_in_millis(),
            "trace": os.environ.get("_X_AMZN_TRACE_ID"),
            "identity": [context.identity.cognito_identity_id, context.identity.cognito_identity_pool_id],
            "client_context": None if context.client_context is None else {
                "installation_id": context.client_context.client.installation_id,
                "app_title": context.client_context.client.app_title,
                "custom": context.client_context.custom,
                "env": context.client_context.env,
            },
        }

    def remaining(event, context):
        first = context.get_remaining_time_in_millis()
        until = time.time() + 0.03
        while time.time() < until:
            pass
        return [first, context.get_remaining_time_in_millis()]

    def logs(event, context):
        print("raw print line")
        logging.warning("warned %s", "here")
        logging.info("info is below the default level")
        logging.error("two\\nlines")
        return "logged"

    def paths(event, context):
        return sys.path

    def builtins_of_site(event, context):
        return [callable(exit), callable(quit), "site" in sys.modules]
"""


def started(start_python: Starter, handler: str, **env: str):
    return start_python(handler, {"app.py": APP}, **env)


def test_result_is_the_json_of_what_the_handler_returns(api: FakeRuntimeAPI, start_python: Starter) -> None:
    started(start_python, "app.handler")
    posted = api.call({"a": [1, "é"]})
    assert posted.kind == "response"
    assert posted.headers["content-type"] == "application/json"
    assert posted.json()["event"] == {"a": [1, "é"]}


def test_none_is_null(api: FakeRuntimeAPI, start_python: Starter) -> None:
    started(start_python, "app.nothing")
    posted = api.call({})
    assert (posted.kind, posted.body) == ("response", b"null")


def test_exception_is_posted_with_lambda_error_shape(api: FakeRuntimeAPI, start_python: Starter, task_root: Path) -> None:
    runtime = started(start_python, "app.fail")
    request_id = api.invoke({})
    posted = api.outcome(request_id)
    assert posted.kind == "error"
    assert posted.headers["lambda-runtime-function-error-type"] == "Unhandled"
    body = posted.json()
    assert set(body) == {"errorMessage", "errorType", "requestId", "stackTrace"}
    assert (body["errorMessage"], body["errorType"], body["requestId"]) == ("x", "ValueError", request_id)
    line_no = textwrap.dedent(APP).lstrip("\n").splitlines().index('    raise ValueError("x")') + 1
    assert body["stackTrace"] == [f'  File "{task_root}/app.py", line {line_no}, in fail\n    raise ValueError("x")\n']
    # One log record: AWS's "[ERROR] type: message" + traceback, inner newlines as \r.
    line = runtime.wait_line(lambda s: s.startswith("[ERROR] ValueError: x"))
    assert line.split("\r")[:2] == ["[ERROR] ValueError: x", "Traceback (most recent call last):"]
    assert f'File "{task_root}/app.py", line {line_no}, in fail' in line


def test_module_code_runs_once_per_sandbox(api: FakeRuntimeAPI, start_python: Starter) -> None:
    started(start_python, "app.handler")
    results = [api.call({"n": n}).json() for n in range(3)]
    assert [r["calls"] for r in results] == [1, 2, 3]
    assert {r["inits"] for r in results} == {1}
    assert len({r["pid"] for r in results}) == 1


def test_context_has_aws_attributes(api: FakeRuntimeAPI, start_python: Starter) -> None:
    started(start_python, "app.context_fields")
    request_id = api.invoke({}, deadline_ms=int(time.time() * 1000) + 5000, trace_id="Root=1-abc;Sampled=0")
    fields = api.outcome(request_id).json()
    remaining = fields.pop("remaining")
    assert 3000 < remaining <= 5000
    assert fields == {
        "function_name": "fn",
        "function_version": "$LATEST",
        "invoked_function_arn": ARN,
        "memory_limit_in_mb": "256",
        "aws_request_id": request_id,
        "log_group_name": "/aws/lambda/fn",
        "log_stream_name": "2024/01/01/[$LATEST]0123456789abcdef0123456789abcdef",
        "trace": "Root=1-abc;Sampled=0",
        "identity": [None, None],  # AWS: always an identity object, empty without Cognito
        "client_context": None,
    }


def test_client_context_and_identity(api: FakeRuntimeAPI, start_python: Starter) -> None:
    started(start_python, "app.context_fields")
    client_context = {
        "client": {"installation_id": "inst-1", "app_title": "App"},
        "custom": {"k": "v"},
        "env": {"platform": "Android"},
    }
    identity = {"cognitoIdentityId": "us-east-1:id", "cognitoIdentityPoolId": "us-east-1:pool"}
    fields = api.call({}, client_context=json.dumps(client_context), identity=json.dumps(identity)).json()
    assert fields["identity"] == ["us-east-1:id", "us-east-1:pool"]
    assert fields["client_context"] == {
        "installation_id": "inst-1",
        "app_title": "App",
        "custom": {"k": "v"},
        "env": {"platform": "Android"},
    }


def test_remaining_time_follows_the_deadline_header(api: FakeRuntimeAPI, start_python: Starter) -> None:
    started(start_python, "app.remaining")
    first, second = api.call({}, deadline_ms=int(time.time() * 1000) + 10_000).json()
    assert 8000 < first <= 10_000
    assert first - second >= 25  # the handler spent 30 ms between the two
    assert api.call({}, deadline_ms=int(time.time() * 1000) - 1000).json() == [0, 0]  # past: 0


def test_logging_records_print_and_levels(api: FakeRuntimeAPI, start_python: Starter) -> None:
    runtime = started(start_python, "app.logs")
    request_id = api.invoke({})
    assert api.outcome(request_id).body == b'"logged"'
    assert runtime.wait_line(lambda s: s == "raw print line")
    stamp = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z"
    warned = runtime.wait_line(lambda s: s.startswith("[WARNING]"))
    assert re.fullmatch(rf"\[WARNING\]\t{stamp}\t{request_id}\twarned here", warned), warned
    error = runtime.wait_line(lambda s: s.startswith("[ERROR]"))
    assert error.endswith(f"\t{request_id}\ttwo\rlines")  # one record, one line
    # Python's default root level (WARNING) stands unless AWS_LAMBDA_LOG_LEVEL says otherwise.
    assert not any("info is below" in line for line in runtime.stdout)


def test_log_level_from_environment(api: FakeRuntimeAPI, start_python: Starter) -> None:
    runtime = started(start_python, "app.logs", AWS_LAMBDA_LOG_LEVEL="INFO")
    request_id = api.invoke({})
    api.outcome(request_id)
    assert runtime.wait_line(lambda s: s.startswith("[INFO]")).endswith(f"\t{request_id}\tinfo is below the default level")


def test_json_log_format(api: FakeRuntimeAPI, start_python: Starter) -> None:
    runtime = started(start_python, "app.logs", AWS_LAMBDA_LOG_FORMAT="JSON", AWS_LAMBDA_LOG_LEVEL="INFO")
    request_id = api.invoke({})
    api.outcome(request_id)
    record = json.loads(runtime.wait_line(lambda s: '"warned here"' in s))
    assert set(record) == {"timestamp", "level", "message", "logger", "requestId"}
    assert (record["level"], record["message"], record["logger"], record["requestId"]) == (
        "WARNING", "warned here", "root", request_id)
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", record["timestamp"])
    assert runtime.wait_line(lambda s: s == "raw print line")  # print stays raw


def test_unmarshallable_result_is_a_marshal_error(api: FakeRuntimeAPI, start_python: Starter) -> None:
    started(start_python, "app.unmarshallable")
    request_id = api.invoke({})
    posted = api.outcome(request_id)
    assert posted.kind == "error"
    assert posted.json() == {
        "errorMessage": "Unable to marshal response: Object of type set is not JSON serializable",
        "errorType": "Runtime.MarshalError",
        "requestId": request_id,
        "stackTrace": [],
    }


def test_invalid_event_json_is_an_unmarshal_error(api: FakeRuntimeAPI, start_python: Starter) -> None:
    started(start_python, "app.handler")
    posted = api.outcome(api.invoke(raw=b"{not json"))
    assert posted.json()["errorType"] == "Runtime.UnmarshalError"
    assert posted.json()["errorMessage"].startswith("Unable to unmarshal input: ")


def test_sys_path_task_root_first_runtime_libs_last_no_site(api: FakeRuntimeAPI, start_python: Starter, task_root: Path) -> None:
    started(start_python, "app.paths", FIREBOX_RUNTIME_LIBS="/var/lang/lib/firebox-python:/x")
    path = api.call({}).json()
    assert path[0] == str(task_root)
    assert re.fullmatch(r"/opt/python/lib/python3\.\d+/site-packages", path[1]) and path[2] == "/opt/python"
    assert path[-2:] == ["/var/lang/lib/firebox-python", "/x"]
    assert not any(p.endswith("runtimes/python") for p in path)  # the bootstrap's own folder
    assert not any("dist-packages" in p or "site-packages" in p for p in path if not p.startswith("/opt/"))


def test_exit_and_quit_exist_without_site(api: FakeRuntimeAPI, start_python: Starter) -> None:
    started(start_python, "app.builtins_of_site")
    assert api.call({}).json() == [True, True, False]


def test_nested_handler_paths(api: FakeRuntimeAPI, start_python: Starter, task_root: Path) -> None:
    start_python("dir/file.handler", {"dir/file.py": "def handler(e, c):\n    return 'slash'\n"})
    assert api.call({}).json() == "slash"


def test_dotted_module_handler(api: FakeRuntimeAPI, start_python: Starter) -> None:
    start_python("pkg.module.handler", {"pkg/__init__.py": "", "pkg/module.py": "def handler(e, c):\n    return 'dotted'\n"})
    assert api.call({}).json() == "dotted"


# --- init errors ------------------------------------------------------------------------------


def assert_init_error(api: FakeRuntimeAPI, runtime, error_type: str, message: str) -> dict:
    posted = api.init_error()
    assert posted.headers["lambda-runtime-function-error-type"] == error_type
    body = posted.json()
    assert (body["errorType"], body["requestId"]) == (error_type, "")
    assert body["errorMessage"].startswith(message), body["errorMessage"]
    assert runtime.wait_exit() == 1
    assert runtime.wait_line(lambda s: s.startswith(f"[ERROR] {error_type}: {message}"))
    assert api.next_calls.empty()  # never asked for an event
    return body


def test_import_error(api: FakeRuntimeAPI, start_python: Starter) -> None:
    runtime = start_python("missing.handler")
    body = assert_init_error(api, runtime, "Runtime.ImportModuleError",
                             "Unable to import module 'missing': No module named 'missing'")
    assert body["stackTrace"] == []


def test_missing_handler(api: FakeRuntimeAPI, start_python: Starter) -> None:
    runtime = started(start_python, "app.nope")
    assert_init_error(api, runtime, "Runtime.HandlerNotFound", "Handler 'nope' missing on module 'app'")


def test_syntax_error(api: FakeRuntimeAPI, start_python: Starter) -> None:
    runtime = start_python("bad.handler", {"bad.py": "def handler(e, c)\n    return 1\n"})
    body = assert_init_error(api, runtime, "Runtime.UserCodeSyntaxError", "Syntax error in module 'bad': ")
    assert "bad.py" in body["stackTrace"][0]


def test_malformed_handler_name(api: FakeRuntimeAPI, start_python: Starter) -> None:
    runtime = start_python("nodot")
    assert_init_error(api, runtime, "Runtime.MalformedHandlerName",
                      "Bad handler 'nodot': not enough values to unpack (expected 2, got 1)")


def test_exception_in_module_code(api: FakeRuntimeAPI, start_python: Starter) -> None:
    runtime = start_python("boom.handler", {"boom.py": "raise RuntimeError('at import')\n"})
    body = assert_init_error(api, runtime, "RuntimeError", "at import")
    assert any("boom.py" in frame for frame in body["stackTrace"])


def test_exits_quietly_when_the_runtime_api_goes_away(api: FakeRuntimeAPI, start_python: Starter) -> None:
    runtime = started(start_python, "app.handler")
    api.wait_next()
    api.close()
    assert runtime.wait_exit() == 1
    assert runtime.stderr == []


def test_a_request_id_is_escaped_in_the_path_it_is_posted_to(api: FakeRuntimeAPI, start_python: Starter) -> None:
    started(start_python, "app.handler")
    for request_id, in_path in (("0f8fad5b-d9cb-469f-a165-70867728950e", "0f8fad5b-d9cb-469f-a165-70867728950e"),
                                ("a b/é~.", "a%20b%2F%C3%A9~.")):
        api.invoke({}, request_id=request_id)
        assert api.outcome(in_path).kind == "response"
