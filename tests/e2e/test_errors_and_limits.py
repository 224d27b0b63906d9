"""Errors and limits: AWS's codes, HTTP statuses, messages and error shape, for bad values, bad
packages, malformed requests and oversized ones. After every rejected request, nothing changed."""

from __future__ import annotations

import base64
import functools
import io
import json
import os
import zipfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest

from .helpers import (
    MAX_REQUEST_BYTES,
    MAX_UNZIPPED_BYTES,
    ROLE,
    UNZIP_FAILED,
    HttpResult,
    assert_error_shape,
    create_active,
    create_function,
    function_names,
    handler_zip,
    http_request,
    make_zip,
    not_found_message,
    raises_aws,
    strip_meta,
    unique_name,
    wait_active,
)

FUNCTIONS = "/2015-03-31/functions"


@contextmanager
def nothing_created(lam: Any, name: str) -> Iterator[None]:
    """The block is a rejected CreateFunction of `name`: afterwards no function was added."""
    before = function_names(lam)
    yield
    assert function_names(lam) == before
    with raises_aws("ResourceNotFoundException", 404, message=not_found_message(name)):
        lam.get_function(FunctionName=name)


@contextmanager
def nothing_changed(lam: Any, name: str) -> Iterator[None]:
    """The block is a rejected change of `name`: its configuration (RevisionId included) stays."""
    before = strip_meta(lam.get_function_configuration(FunctionName=name))
    yield
    assert strip_meta(lam.get_function_configuration(FunctionName=name)) == before


def create_body(name: str, **overrides: Any) -> bytes:
    body: dict[str, Any] = {
        "FunctionName": name,
        "Runtime": "python3.11",
        "Role": ROLE,
        "Handler": "app.handler",
        "Code": {"ZipFile": base64.b64encode(handler_zip()).decode()},
    }
    body.update(overrides)
    return json.dumps(body).encode()


# -- the error shape ----------------------------------------------------------------------------


def test_missing_function(lam: Any, raw_http: Callable[..., HttpResult], fn_name: str) -> None:
    message = f"Function not found: arn:aws:lambda:us-east-1:000000000000:function:{fn_name}"
    result = raw_http("GET", f"{FUNCTIONS}/{fn_name}")
    assert assert_error_shape(result, "ResourceNotFoundException", 404) == message
    assert "message" not in result.json(), "ResourceNotFoundException spells it Message"
    assert result.headers.get("x-amzn-requestid")
    for call in (
        lambda: lam.get_function(FunctionName=fn_name),
        lambda: lam.get_function_configuration(FunctionName=fn_name),
        lambda: lam.update_function_configuration(FunctionName=fn_name, Timeout=5),
        lambda: lam.delete_function(FunctionName=fn_name),
        lambda: lam.list_versions_by_function(FunctionName=fn_name),
        lambda: lam.list_aliases(FunctionName=fn_name),
    ):
        with raises_aws("ResourceNotFoundException", 404, message=message):
            call()


@pytest.mark.parametrize(
    ("trigger", "code", "status"),
    [
        ("bad-memory", "ValidationException", 400),
        ("bad-runtime-for-host", "InvalidParameterValueException", 400),
        ("not-json", "InvalidRequestContentException", 400),
        ("exists", "ResourceConflictException", 409),
        ("stale-revision", "PreconditionFailedException", 412),
    ],
)
def test_error_shape_on_the_wire(lam: Any, raw_http: Callable[..., HttpResult], fn_name: str,
                                 trigger: str, code: str, status: int) -> None:
    """`x-amzn-ErrorType: <code>` and a JSON body {"Type": "User", "message": "..."}."""
    existing = create_active(lam, unique_name())
    requests: dict[str, tuple[str, str, bytes]] = {
        "bad-memory": ("POST", FUNCTIONS, create_body(fn_name, MemorySize=64)),
        "bad-runtime-for-host": ("POST", FUNCTIONS, create_body(fn_name, Runtime="java21")),
        "not-json": ("POST", FUNCTIONS, b"{not json"),
        "exists": ("POST", FUNCTIONS, create_body(existing["FunctionName"])),
        "stale-revision": ("PUT", f"{FUNCTIONS}/{existing['FunctionName']}/configuration",
                           json.dumps({"Timeout": 9, "RevisionId": "00000000-0000-0000-0000-000000000000"}).encode()),
    }
    method, path, body = requests[trigger]
    with nothing_created(lam, fn_name), nothing_changed(lam, existing["FunctionName"]):
        assert_error_shape(raw_http(method, path, body), code, status)


# -- values that break the model's constraints --------------------------------------------------


def constraint(value: Any, field: str, rule: str) -> str:
    return f"Value '{value}' at '{field}' failed to satisfy constraint: {rule}"


BAD_VALUES = [
    ({"MemorySize": 64}, constraint(64, "memorySize", "Member must have value greater than or equal to 128")),
    ({"MemorySize": 20000}, constraint(20000, "memorySize", "Member must have value less than or equal to 10240")),
    ({"Timeout": 0}, constraint(0, "timeout", "Member must have value greater than or equal to 1")),
    ({"Timeout": 901}, constraint(901, "timeout", "Member must have value less than or equal to 900")),
]


@pytest.mark.parametrize(("params", "problem"), BAD_VALUES, ids=lambda v: str(v)[:30])
def test_out_of_range_values_on_create(raw_lam: Any, fn_name: str, params: dict[str, Any], problem: str) -> None:
    with nothing_created(raw_lam, fn_name), \
            raises_aws("ValidationException", 400, message=f"1 validation error detected: {problem}"):
        create_function(raw_lam, fn_name, **params)


@pytest.mark.parametrize(("params", "problem"), BAD_VALUES, ids=lambda v: str(v)[:30])
def test_out_of_range_values_on_update(raw_lam: Any, fn_name: str, params: dict[str, Any], problem: str) -> None:
    create_active(raw_lam, fn_name)
    with nothing_changed(raw_lam, fn_name), \
            raises_aws("ValidationException", 400, message=f"1 validation error detected: {problem}"):
        raw_lam.update_function_configuration(FunctionName=fn_name, **params)


@pytest.mark.parametrize(
    ("memory", "timeout"),
    [(64, 0), (20000, 901), (64, 901)],
    ids=["both-below", "both-above", "mixed"],
)
def test_two_bad_values_are_reported_together(raw_lam: Any, fn_name: str, memory: int, timeout: int) -> None:
    memory_rule = "less than or equal to 10240" if memory > 128 else "greater than or equal to 128"
    timeout_rule = "less than or equal to 900" if timeout > 1 else "greater than or equal to 1"
    with nothing_created(raw_lam, fn_name), raises_aws(
        "ValidationException", 400,
        contains=(
            constraint(memory, "memorySize", f"Member must have value {memory_rule}"),
            constraint(timeout, "timeout", f"Member must have value {timeout_rule}"),
        ),
    ) as error:
        create_function(raw_lam, fn_name, MemorySize=memory, Timeout=timeout)
    assert error.message.startswith("2 validation errors detected: "), error.message


@pytest.mark.parametrize(
    ("params", "parts"),
    [
        ({"Runtime": "python9.9"}, ("Value 'python9.9' at 'runtime' failed to satisfy constraint: "
                                    "Member must satisfy enum value set",)),
        ({"Handler": "app handler"}, ("Value 'app handler' at 'handler' failed to satisfy constraint: "
                                      "Member must satisfy regular expression pattern",)),
        ({"Handler": "h" * 129}, ("at 'handler' failed to satisfy constraint: "
                                  "Member must have length less than or equal to 128",)),
        ({"Description": "d" * 257}, ("at 'description' failed to satisfy constraint: "
                                      "Member must have length less than or equal to 256",)),
        ({"EphemeralStorage": {"Size": 256}}, ("Value '256' at 'ephemeralStorage.size' failed to satisfy "
                                               "constraint: Member must have value greater than or equal to 512",)),
        ({"Architectures": ["sparc"]}, ("at 'architectures' failed to satisfy constraint",)),
    ],
    ids=["runtime-enum", "handler-space", "handler-long", "description-long", "ephemeral-small", "arch-enum"],
)
def test_model_constraints_are_validation_errors(raw_lam: Any, fn_name: str, params: dict[str, Any],
                                                 parts: tuple[str, ...]) -> None:
    with nothing_created(raw_lam, fn_name), raises_aws("ValidationException", 400, contains=parts) as error:
        create_function(raw_lam, fn_name, **params)
    assert error.message.startswith("1 validation error detected: "), error.message


def test_values_at_the_limits_are_accepted(lam: Any) -> None:
    """The boundaries themselves are legal: the checks above are not off by one."""
    high = create_function(lam, "x" * 52 + unique_name("")[:12], MemorySize=10240, Timeout=900,
                           EphemeralStorage={"Size": 10240}, Description="d" * 256, Handler="h" * 128)
    assert len(high["FunctionName"]) == 64
    assert (high["MemorySize"], high["Timeout"], high["EphemeralStorage"]) == (10240, 900, {"Size": 10240})
    low = create_function(lam, unique_name(), MemorySize=128, Timeout=1, EphemeralStorage={"Size": 512},
                          Description="", Environment={"Variables": {"BIG": "x" * 4086}})  # exactly 4 KB
    assert (low["MemorySize"], low["Timeout"]) == (128, 1)
    assert low["Environment"]["Variables"]["BIG"] == "x" * 4086


@pytest.mark.parametrize("bad_name", ["my function", "name/with/slash", "x" * 65])
def test_bad_function_names_are_validation_errors(raw_lam: Any, bad_name: str) -> None:
    before = function_names(raw_lam)
    with raises_aws("ValidationException", 400, contains="at 'functionName' failed to satisfy constraint"):
        create_function(raw_lam, bad_name)
    assert function_names(raw_lam) == before


# -- runtimes -----------------------------------------------------------------------------------


def test_runtime_the_host_cannot_run(raw_lam: Any, fn_name: str) -> None:
    with nothing_created(raw_lam, fn_name), raises_aws(
        "InvalidParameterValueException", 400, contains=("java21", "python3.11", "nodejs20.x", "provided.al2023")
    ):
        create_function(raw_lam, fn_name, Runtime="java21", Handler="example.Handler::handleRequest")


def test_deprecated_runtime(raw_lam: Any, fn_name: str) -> None:
    with nothing_created(raw_lam, fn_name), raises_aws(
        "InvalidParameterValueException", 400,
        contains="The runtime parameter of python2.7 is no longer supported for creating or updating AWS Lambda functions",
    ):
        create_function(raw_lam, fn_name, Runtime="python2.7")
    create_active(raw_lam, fn_name)
    with nothing_changed(raw_lam, fn_name), raises_aws("InvalidParameterValueException", 400, contains="python2.7"):
        raw_lam.update_function_configuration(FunctionName=fn_name, Runtime="python2.7")


def test_every_host_runtime_is_accepted(lam: Any) -> None:
    packages = {
        "python3.11": ("app.handler", make_zip({"app.py": "def handler(event, context):\n    return 1\n"})),
        "nodejs20.x": ("index.handler", make_zip({"index.js": "exports.handler = async () => 1;\n"})),
        "provided.al2023": ("bootstrap", make_zip({"bootstrap": "#!/bin/sh\nexit 0\n"}, modes={"bootstrap": 0o755})),
    }
    for runtime, (handler, package) in packages.items():
        name = unique_name(runtime.replace(".", "-"))
        assert create_function(lam, name, Runtime=runtime, Handler=handler, zip_bytes=package)["Runtime"] == runtime
        assert wait_active(lam, name)["Handler"] == handler


def test_runtime_and_handler_are_required_for_a_zip(raw_lam: Any, fn_name: str) -> None:
    for missing in ("Runtime", "Handler"):
        args = {"FunctionName": fn_name, "Runtime": "python3.11", "Role": ROLE, "Handler": "app.handler",
                "Code": {"ZipFile": handler_zip()}}
        del args[missing]
        with nothing_created(raw_lam, fn_name), raises_aws("InvalidParameterValueException", 400, contains=missing):
            raw_lam.create_function(**args)


# -- environment ----------------------------------------------------------------------------------


def test_environment_over_4kb(raw_lam: Any, fn_name: str) -> None:
    big = {"BIG": "x" * 4087}  # {"BIG":"xxx..."} is 4097 bytes as compact JSON
    with nothing_created(raw_lam, fn_name), raises_aws("InvalidParameterValueException", 400, contains="4KB"):
        create_function(raw_lam, fn_name, Environment={"Variables": big})
    create_active(raw_lam, fn_name, Environment={"Variables": {"BIG": "x" * 4000}})
    with nothing_changed(raw_lam, fn_name), raises_aws("InvalidParameterValueException", 400, contains="4KB"):
        raw_lam.update_function_configuration(FunctionName=fn_name, Environment={"Variables": big})


def test_reserved_environment_keys(raw_lam: Any, fn_name: str) -> None:
    with nothing_created(raw_lam, fn_name), raises_aws(
        "InvalidParameterValueException", 400, contains=("reserved keys", "AWS_REGION")
    ):
        create_function(raw_lam, fn_name, Environment={"Variables": {"AWS_REGION": "mars-1", "OK": "1"}})
    create_active(raw_lam, fn_name)
    with nothing_changed(raw_lam, fn_name), raises_aws("InvalidParameterValueException", 400,
                                                       contains="AWS_LAMBDA_FUNCTION_NAME"):
        raw_lam.update_function_configuration(
            FunctionName=fn_name, Environment={"Variables": {"AWS_LAMBDA_FUNCTION_NAME": "other"}}
        )


# -- code packages ------------------------------------------------------------------------------


def test_code_from_s3_is_refused_clearly(raw_lam: Any, fn_name: str) -> None:
    with nothing_created(raw_lam, fn_name), raises_aws("InvalidParameterValueException", 400, contains="S3"):
        create_function(raw_lam, fn_name, Code={"S3Bucket": "my-bucket", "S3Key": "code.zip"})
    create_active(raw_lam, fn_name)
    with nothing_changed(raw_lam, fn_name), raises_aws("InvalidParameterValueException", 400, contains="S3"):
        raw_lam.update_function_code(FunctionName=fn_name, S3Bucket="my-bucket", S3Key="code.zip")


def test_no_code_at_all(raw_lam: Any, fn_name: str) -> None:
    with nothing_created(raw_lam, fn_name), raises_aws("InvalidParameterValueException", 400):
        create_function(raw_lam, fn_name, Code={})


def test_not_a_zip(raw_lam: Any, fn_name: str) -> None:
    with nothing_created(raw_lam, fn_name), raises_aws("InvalidParameterValueException", 400, message=UNZIP_FAILED):
        create_function(raw_lam, fn_name, zip_bytes=b"this is not a zip file at all")
    create_active(raw_lam, fn_name)
    with nothing_changed(raw_lam, fn_name), \
            raises_aws("InvalidParameterValueException", 400, message=UNZIP_FAILED):
        raw_lam.update_function_code(FunctionName=fn_name, ZipFile=b"PK\x03\x04 truncated")


@pytest.mark.parametrize("entry", ["../evil.py", "/etc/evil.py", "lib/../../evil.py"])
def test_zip_entries_outside_the_package(raw_lam: Any, fn_name: str, entry: str) -> None:
    bad = make_zip({"app.py": "def handler(e, c):\n    return 1\n", entry: "print('escaped')\n"})
    with nothing_created(raw_lam, fn_name), \
            raises_aws("InvalidParameterValueException", 400, contains="Could not unzip uploaded file"):
        create_function(raw_lam, fn_name, zip_bytes=bad)


@functools.cache
def zip_bomb() -> bytes:
    """260 MiB of zeros, deflated to a few hundred KiB, written in streaming 1 MiB chunks."""
    buffer = io.BytesIO()
    chunk = bytes(1 << 20)
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        with archive.open("zeros.bin", "w", force_zip64=True) as entry:
            for _ in range(260):
                entry.write(chunk)
    data = buffer.getvalue()
    assert len(data) < 2 << 20
    return data


def test_zip_bomb(raw_lam: Any, fn_name: str) -> None:
    message = f"Unzipped size must be smaller than {MAX_UNZIPPED_BYTES} bytes"
    with nothing_created(raw_lam, fn_name), raises_aws("InvalidParameterValueException", 400, message=message):
        create_function(raw_lam, fn_name, zip_bytes=zip_bomb())
    create_active(raw_lam, fn_name)
    with nothing_changed(raw_lam, fn_name), raises_aws("InvalidParameterValueException", 400, message=message):
        raw_lam.update_function_code(FunctionName=fn_name, ZipFile=zip_bomb())


# -- malformed requests -------------------------------------------------------------------------


def test_malformed_json(lam: Any, raw_http: Callable[..., HttpResult], fn_name: str) -> None:
    for body in (b'{"FunctionName": "' + fn_name.encode() + b'", ', b"[1, 2, 3]", b"\xff\xfe not utf-8"):
        with nothing_created(lam, fn_name):
            result = raw_http("POST", FUNCTIONS, body)
            assert_error_shape(result, "InvalidRequestContentException", 400)


@pytest.mark.parametrize(
    ("override", "mentions"),
    [
        ({"Timeout": "abc"}, "Timeout"),
        ({"MemorySize": 1.5}, "MemorySize"),
        ({"Environment": {"Variables": ["A=1"]}}, "Variables"),
        ({"Publish": "yes"}, "Publish"),
        ({"Code": {"ZipFile": "***not base64***"}}, "ZipFile"),
    ],
    ids=["timeout-string", "memory-float", "variables-list", "publish-string", "zip-not-base64"],
)
def test_wrong_types(lam: Any, raw_http: Callable[..., HttpResult], fn_name: str,
                     override: dict[str, Any], mentions: str) -> None:
    with nothing_created(lam, fn_name):
        message = assert_error_shape(raw_http("POST", FUNCTIONS, create_body(fn_name, **override)),
                                     "InvalidRequestContentException", 400)
    assert message.startswith("Could not parse request body into json"), message
    assert mentions in message, message


@pytest.mark.parametrize("where", ["top", "nested"])
def test_unknown_fields(lam: Any, raw_http: Callable[..., HttpResult], fn_name: str, where: str) -> None:
    if where == "top":
        body = create_body(fn_name, Frobnicate=True)
        field = "Frobnicate"
    else:
        body = create_body(fn_name, TracingConfig={"Mode": "Active", "Colour": "blue"})
        field = "Colour"
    with nothing_created(lam, fn_name):
        message = assert_error_shape(raw_http("POST", FUNCTIONS, body), "InvalidRequestContentException", 400)
    assert field in message, message


def test_request_body_over_the_limit(lam: Any, raw_http: Callable[..., HttpResult], fn_name: str) -> None:
    """AWS: 413 RequestEntityTooLargeException, "Request must be smaller than 69905067 bytes for
    the CreateFunction operation"."""
    with nothing_created(lam, fn_name):
        result = raw_http("POST", FUNCTIONS, b" " * (MAX_REQUEST_BYTES + 1))
        message = assert_error_shape(result, "RequestEntityTooLargeException", 413)
    assert message == f"Request must be smaller than {MAX_REQUEST_BYTES} bytes for the CreateFunction operation"


def test_request_body_over_the_limit_without_content_length(lam: Any, server: Any, fn_name: str) -> None:
    """A chunked body declares no length: the server counts what it reads and stops at the limit."""
    with nothing_created(lam, fn_name):
        result = http_request(server.endpoint, "POST", FUNCTIONS, b" " * (MAX_REQUEST_BYTES + 1), chunked=True)
        message = assert_error_shape(result, "RequestEntityTooLargeException", 413)
    assert message == f"Request must be smaller than {MAX_REQUEST_BYTES} bytes for the CreateFunction operation"


def test_request_body_at_the_limit_is_read(lam: Any, raw_http: Callable[..., HttpResult], fn_name: str) -> None:
    """Exactly 69905067 bytes is not too large: it is parsed (and refused as not JSON)."""
    with nothing_created(lam, fn_name):
        result = raw_http("POST", FUNCTIONS, b"x" * MAX_REQUEST_BYTES)
        assert_error_shape(result, "InvalidRequestContentException", 400)


def test_oversized_zip_through_boto3(raw_lam: Any, fn_name: str) -> None:
    """A 53 MB package is a ~71 MB request once base64-encoded in JSON."""
    with nothing_created(raw_lam, fn_name), raises_aws(
        "RequestEntityTooLargeException", 413,
        message=f"Request must be smaller than {MAX_REQUEST_BYTES} bytes for the CreateFunction operation",
    ):
        create_function(raw_lam, fn_name, zip_bytes=os.urandom(53 * 1024 * 1024))


def test_unknown_path(lam: Any, raw_http: Callable[..., HttpResult]) -> None:
    before = function_names(lam)
    for method, path in (("GET", "/2015-03-31/nothing-here"), ("GET", "/"), ("POST", "/2099-01-01/functions"),
                         ("GET", "/2015-03-31/functions/a/b/c/d")):
        result = raw_http(method, path)
        assert result.status == 404, (method, path, result.status, result.body[:300])
        assert result.headers.get("x-amzn-errortype"), result.headers
    # A known path with a method it does not take is not an operation either.
    assert raw_http("PATCH", FUNCTIONS).status in (404, 405)
    assert function_names(lam) == before


def test_unimplemented_operation_is_501(lam: Any, raw_http: Callable[..., HttpResult]) -> None:
    result = raw_http("GET", "/2018-10-31/layers")
    message = assert_error_shape(result, "NotImplementedException", 501)
    assert "ListLayers" in message, message
    with raises_aws("NotImplementedException", 501, contains="ListLayers"):
        lam.list_layers()
