"""Custom runtimes (provided.al2023): a shell `bootstrap` speaking the Runtime API with curl, and
AWS's own Python runtime interface client (`awslambdaric`, from PyPI), both unmodified."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest

from .engine_fixtures import (
    RicPackage,
    awslambdaric_package,  # noqa: F401  (fixture)
    failed,
    invoke,
    isolated_backend,  # noqa: F401  (fixture)
    ok_json,
)
from .helpers import FireboxServer, create_active, function_arn, make_zip, unique_name

# The tutorial bootstrap of AWS's custom-runtime docs, in POSIX sh.
SHELL_BOOTSTRAP = """#!/bin/sh
set -eu
API="http://${AWS_LAMBDA_RUNTIME_API}/2018-06-01/runtime"
echo "shell runtime starting for ${_HANDLER}"
COUNT=0
while true; do
  HEADERS="$(mktemp)"
  EVENT="$(/usr/bin/curl -sS -D "$HEADERS" "$API/invocation/next")"
  REQUEST_ID="$(grep -Fi Lambda-Runtime-Aws-Request-Id "$HEADERS" | tr -d '[:space:]' | cut -d: -f2)"
  ARN="$(grep -Fi Lambda-Runtime-Invoked-Function-Arn "$HEADERS" | tr -d '[:space:]' | cut -d: -f2-)"
  DEADLINE="$(grep -Fi Lambda-Runtime-Deadline-Ms "$HEADERS" | tr -d '[:space:]' | cut -d: -f2)"
  rm -f "$HEADERS"
  COUNT=$((COUNT + 1))
  echo "shell runtime handling $REQUEST_ID"
  if [ "$EVENT" = '"fail"' ]; then
    /usr/bin/curl -sS -X POST "$API/invocation/$REQUEST_ID/error" \\
      -H "Lambda-Runtime-Function-Error-Type: Custom.ShellError" \\
      -d '{"errorMessage":"asked to fail","errorType":"Custom.ShellError"}' >/dev/null
    continue
  fi
  RESPONSE="{\\"event\\":$EVENT,\\"requestId\\":\\"$REQUEST_ID\\",\\"arn\\":\\"$ARN\\",\\"deadline\\":\\"$DEADLINE\\",\\"count\\":$COUNT,\\"handler\\":\\"$_HANDLER\\"}"
  /usr/bin/curl -sS -X POST "$API/invocation/$REQUEST_ID/response" -d "$RESPONSE" >/dev/null
done
"""


def test_curl_is_in_the_host_usr() -> None:
    """The sandbox's /usr is the host's, read-only: the shell bootstrap needs curl there."""
    assert Path("/usr/bin/curl").is_file(), "install curl on the host (Debian package curl)"
    assert shutil.which("curl") is not None


def test_shell_bootstrap_with_curl(lam: Any, isolated_backend: FireboxServer) -> None:  # noqa: F811
    name = unique_name("shell")
    code = make_zip({"bootstrap": SHELL_BOOTSTRAP, "README": "a shell runtime\n"}, modes={"bootstrap": 0o755})
    create_active(lam, name, zip_bytes=code, Runtime="provided.al2023", Handler="function.handler", Timeout=10)
    first = invoke(lam, name, {"x": [1, 2, 3]}, LogType="Tail")
    one = ok_json(first)
    assert one["event"] == {"x": [1, 2, 3]}
    assert one["requestId"] == first.request_id
    assert one["arn"] == function_arn(name)
    assert one["deadline"].isdigit() and int(one["deadline"]) > 0
    assert one["handler"] == "function.handler"
    assert first.log is not None
    assert f"shell runtime handling {first.request_id}" in first.log
    assert "Init Duration" in first.report()

    second = invoke(lam, name, "second", LogType="Tail")
    two = ok_json(second)
    assert two["event"] == "second" and two["count"] == 2, "the same runtime process serves warm invokes"
    assert "Init Duration" not in second.report()

    error = failed(invoke(lam, name, "fail"), "Custom.ShellError")
    assert error["errorMessage"] == "asked to fail"
    assert ok_json(invoke(lam, name, 3))["count"] == 4


def test_bad_bootstrap_is_runtime_invalid_entrypoint(lam: Any, isolated_backend: FireboxServer) -> None:  # noqa: F811
    """AWS answers a bootstrap it cannot start with `Runtime.InvalidEntrypoint`: not executable
    ("fork/exec /var/task/bootstrap: permission denied"), or missing ("Couldn't find valid
    bootstrap(s): [/var/task/bootstrap /opt/bootstrap]"); never a hang or a 5xx."""
    cases = {
        "fork/exec /var/task/bootstrap: permission denied":
            make_zip({"bootstrap": SHELL_BOOTSTRAP}, modes={"bootstrap": 0o644}),
        "Couldn't find valid bootstrap(s): [/var/task/bootstrap /opt/bootstrap]":
            make_zip({"not_a_bootstrap.sh": SHELL_BOOTSTRAP}, modes={"not_a_bootstrap.sh": 0o755}),
    }
    observed = {}
    for expected, code in cases.items():
        name = unique_name("badboot")
        create_active(lam, name, zip_bytes=code, Runtime="provided.al2023", Handler="x", Timeout=5)
        result = invoke(lam, name, {})
        assert result.status == 200 and result.function_error == "Unhandled", (result.status, result.body)
        observed[expected] = result.json()
    for expected, body in observed.items():
        assert body.get("errorType") == "Runtime.InvalidEntrypoint" and expected in body.get("errorMessage", ""), (
            f"expected Runtime.InvalidEntrypoint / {expected!r}; observed: {observed}")


def test_awslambdaric_unmodified(lam: Any, isolated_backend: FireboxServer,  # noqa: F811
                                 awslambdaric_package: RicPackage) -> None:  # noqa: F811
    if awslambdaric_package.problem:
        pytest.skip(awslambdaric_package.problem)
    assert awslambdaric_package.zip_bytes
    assert any(f.startswith("runtime_client") and f.endswith(".so") for f in awslambdaric_package.files), (
        "awslambdaric's C extension should be in the package")
    name = unique_name("ric")
    create_active(lam, name, zip_bytes=awslambdaric_package.zip_bytes, Runtime="provided.al2023",
                  Handler="ric_app.handler", Timeout=10, MemorySize=256,
                  Environment={"Variables": {"PYTHONPATH": "/var/task"}})
    first = invoke(lam, name, {"from": "test"}, LogType="Tail")
    one = ok_json(first)
    assert one["event"] == {"from": "test"}
    assert one["request_id"] == first.request_id
    assert one["function_name"] == name
    assert one["memory"] == "256"
    assert 0 < one["remaining_ms"] <= 10_000
    assert one["ric_path"].startswith("/var/task/awslambdaric/"), one["ric_path"]
    assert one["handler_env"] == "ric_app.handler"
    assert "Init Duration" in first.report()

    second = ok_json(invoke(lam, name, [1, 2]))
    assert second["event"] == [1, 2]
    assert second["init_token"] == one["init_token"], "awslambdaric keeps its process across warm invokes"
