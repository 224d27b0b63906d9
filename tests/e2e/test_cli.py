"""The `firebox` command's client side: deploy, ls, rm against a running server."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from .helpers import FireboxServer, clean_env, function_arn, raises_aws, unique_name


def firebox(server: FireboxServer, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "firebox", "--endpoint", server.endpoint, *args],
        capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL,
        # A wide console: rich must not wrap or crop the tables the test reads.
        env=clean_env({"COLUMNS": "250", "AWS_ACCESS_KEY_ID": "", "AWS_SECRET_ACCESS_KEY": ""}),
    )


def ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, f"exit {result.returncode}\nstdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    return result.stdout


def write_function(folder: Path, greeting: str) -> None:
    (folder / "pkg").mkdir(parents=True, exist_ok=True)
    (folder / "app.py").write_text(f"from pkg import util\n\ndef handler(event, context):\n    return {greeting!r}\n")
    (folder / "pkg" / "__init__.py").write_text("")
    (folder / "pkg" / "util.py").write_text("X = 1\n")
    (folder / "run.sh").write_text("#!/bin/sh\necho hi\n")
    os.chmod(folder / "run.sh", 0o755)


def test_deploy_ls_rm(server: FireboxServer, lam: Any, tmp_path: Path) -> None:
    name = unique_name("cli")
    source = tmp_path / "src"
    write_function(source, "hello")

    deployed = ok(firebox(server, "deploy", str(source), "--name", name, "--runtime", "python3.11",
                          "--handler", "app.handler", "--memory", "256", "--timeout", "10", "--env", "MODE=test"))
    assert name in deployed and "created" in deployed
    config = lam.get_function_configuration(FunctionName=name)
    assert config["FunctionArn"] == function_arn(name)
    assert (config["Runtime"], config["Handler"], config["MemorySize"], config["Timeout"]) == (
        "python3.11", "app.handler", 256, 10)
    assert config["Environment"] == {"Variables": {"MODE": "test"}}
    assert config["State"] == "Active", "deploy waits until the function is Active"
    first_sha = config["CodeSha256"]
    assert first_sha in deployed

    listing = ok(firebox(server, "ls"))
    assert name in listing
    line = next(row for row in listing.splitlines() if name in row)
    assert "python3.11" in line and "Active" in line

    # Deploying the same folder again updates in place: same bytes, same CodeSha256.
    redeployed = ok(firebox(server, "deploy", str(source), "--name", name, "--runtime", "python3.11",
                            "--handler", "app.handler"))
    assert "updated" in redeployed
    assert lam.get_function_configuration(FunctionName=name)["CodeSha256"] == first_sha
    # A change in the folder is a new package.
    write_function(source, "changed")
    ok(firebox(server, "deploy", str(source), "--name", name, "--runtime", "python3.11", "--handler", "app.handler"))
    assert lam.get_function_configuration(FunctionName=name)["CodeSha256"] != first_sha

    removed = ok(firebox(server, "rm", name))
    assert name in removed
    with raises_aws("ResourceNotFoundException", 404):
        lam.get_function(FunctionName=name)
    assert name not in ok(firebox(server, "ls"))


def test_rm_one_version(server: FireboxServer, lam: Any, tmp_path: Path) -> None:
    name = unique_name("cli")
    source = tmp_path / "src"
    write_function(source, "v1")
    ok(firebox(server, "deploy", str(source), "--name", name, "--runtime", "python3.11", "--handler", "app.handler"))
    lam.publish_version(FunctionName=name)
    ok(firebox(server, "rm", name, "--qualifier", "1"))
    assert [v["Version"] for v in lam.list_versions_by_function(FunctionName=name)["Versions"]] == ["$LATEST"]
    lam.delete_function(FunctionName=name)


def test_client_errors_are_one_line_and_exit_1(server: FireboxServer, tmp_path: Path) -> None:
    missing = unique_name("cli")
    result = firebox(server, "rm", missing)
    assert result.returncode == 1
    assert "ResourceNotFoundException" in result.stderr
    assert "Traceback" not in result.stderr

    source = tmp_path / "src"
    write_function(source, "x")
    bad = firebox(server, "deploy", str(source), "--name", missing, "--runtime", "python9.9", "--handler", "app.handler")
    assert bad.returncode == 1
    assert "ValidationException" in bad.stderr and "Traceback" not in bad.stderr
