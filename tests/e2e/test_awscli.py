"""The AWS CLI (v1, `python -m awscli`) manages Firebox as it manages AWS."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from .helpers import ROLE, FireboxServer, code_sha256, create_active, function_arn, handler_zip, unique_name, wait_active


def aws(server: FireboxServer, tmp_path: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    env = {
        "PATH": "/usr/bin:/bin",
        "HOME": str(tmp_path),
        "AWS_ACCESS_KEY_ID": "test",
        "AWS_SECRET_ACCESS_KEY": "test",
        # Nothing from the host's AWS configuration may leak in.
        "AWS_CONFIG_FILE": str(tmp_path / "no-config"),
        "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "no-credentials"),
        "AWS_DEFAULT_OUTPUT": "json",
        "AWS_MAX_ATTEMPTS": "1",
    }
    result = subprocess.run(
        [sys.executable, "-m", "awscli", "--endpoint-url", server.endpoint, "--region", "us-east-1", "lambda", *args],
        capture_output=True, text=True, env=env, timeout=60, stdin=subprocess.DEVNULL,
    )
    if check:
        assert result.returncode == 0, f"aws {' '.join(args)} failed ({result.returncode}):\n{result.stderr}"
    return result


def test_list_functions_and_get_function(server: FireboxServer, lam: Any, fn_name: str, tmp_path: Path) -> None:
    created = create_active(lam, fn_name, Description="from boto3")
    listed = json.loads(aws(server, tmp_path, "list-functions").stdout)
    mine = [f for f in listed["Functions"] if f["FunctionName"] == fn_name]
    assert len(mine) == 1
    assert mine[0]["FunctionArn"] == function_arn(fn_name)
    assert mine[0]["CodeSha256"] == created["CodeSha256"]

    got = json.loads(aws(server, tmp_path, "get-function", "--function-name", fn_name).stdout)
    assert got["Configuration"]["FunctionName"] == fn_name
    assert got["Configuration"]["Description"] == "from boto3"
    assert got["Configuration"]["State"] == "Active"
    assert got["Configuration"]["RevisionId"] == created["RevisionId"]
    assert got["Code"]["Location"].startswith("http")


def test_create_and_delete_with_the_cli(server: FireboxServer, lam: Any, tmp_path: Path) -> None:
    name = unique_name("cli")
    package = tmp_path / "function.zip"
    package.write_bytes(handler_zip("from the cli"))
    created = json.loads(aws(
        server, tmp_path, "create-function", "--function-name", name, "--runtime", "python3.11",
        "--role", ROLE, "--handler", "app.handler", "--zip-file", f"fileb://{package}",
        "--environment", "Variables={COLOUR=blue}", "--timeout", "7",
    ).stdout)
    assert created["FunctionArn"] == function_arn(name)
    assert created["CodeSha256"] == code_sha256(package.read_bytes())
    config = lam.get_function_configuration(FunctionName=name)
    assert (config["Timeout"], config["Environment"]) == (7, {"Variables": {"COLOUR": "blue"}})

    wait_active(lam, name)  # then the CLI's waiter (5 s between polls) succeeds at its first poll
    aws(server, tmp_path, "wait", "function-active-v2", "--function-name", name)
    aws(server, tmp_path, "delete-function", "--function-name", name)
    missing = aws(server, tmp_path, "get-function", "--function-name", name, check=False)
    assert missing.returncode != 0
    assert "ResourceNotFoundException" in missing.stderr
    assert f"Function not found: {function_arn(name)}" in missing.stderr
