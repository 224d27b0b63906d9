"""Preparation readies the worker's code cache while a function is Pending (an update
InProgress): once it is Active, its package is unpacked under `<data>/code/<sha256 hex>` and, for
Python, precompiled, so the first invoke neither unpacks nor compiles. The invoke path still
does both when the cache lost the package, and a host failure of the step fails the function
with StateReasonCode InternalError, as Lambda reports its own failures."""

from __future__ import annotations

import base64
import hashlib
import json
import shutil
import urllib.request
import uuid
from pathlib import Path
from typing import Any

from .engine_fixtures import client_error, invoke, ok_json
from .helpers import (
    FireboxServer,
    create_function,
    make_zip,
    unique_name,
    wait_active,
    wait_for,
)

PYTHON_TAG = "cpython-311"  # the tests' runtime, python3.11


def _package(marker: str) -> bytes:
    """A Python package of two modules, unique to this test run (a fresh CodeSha256)."""
    return make_zip({
        "app.py": f"from lib import helper\nMARKER = {marker!r}\n\ndef handler(event, context):\n"
                  "    return {'marker': MARKER, 'helper': helper.VALUE}\n",
        "lib/__init__.py": "",
        "lib/helper.py": "VALUE = 42\n",
    })


def _code_dir(server: FireboxServer, config: dict[str, Any]) -> Path:
    return server.data_dir / "code" / base64.b64decode(config["CodeSha256"]).hex()


def _cache_statistics(server: FireboxServer) -> dict[str, int]:
    with urllib.request.urlopen(f"{server.endpoint}/_firebox/stats", timeout=10) as answer:
        return json.loads(answer.read())["code_cache"]  # type: ignore[no-any-return]


def test_python_package_is_unpacked_and_compiled_before_active(lam: Any, server: FireboxServer) -> None:
    name, marker = unique_name("prep"), uuid.uuid4().hex
    create_function(lam, name, zip_bytes=_package(marker))
    config = wait_active(lam, name)
    code = _code_dir(server, config)
    assert (code / "app.py").is_file(), f"{code} was not unpacked before Active"
    assert (code / "__pycache__" / f"app.{PYTHON_TAG}.pyc").is_file()
    assert (code / "lib" / "__pycache__" / f"helper.{PYTHON_TAG}.pyc").is_file()

    before = _cache_statistics(server)
    assert ok_json(invoke(lam, name, {})) == {"marker": marker, "helper": 42}
    after = _cache_statistics(server)
    assert (after["unpacks"], after["compiles"]) == (before["unpacks"], before["compiles"]), (before, after)


def test_update_code_prepares_the_new_package_before_successful(lam: Any, server: FireboxServer) -> None:
    name = unique_name("prep")
    create_function(lam, name, zip_bytes=_package(uuid.uuid4().hex))
    first = wait_active(lam, name)
    marker = uuid.uuid4().hex
    lam.update_function_code(FunctionName=name, ZipFile=_package(marker))
    updated = wait_active(lam, name)
    assert updated["LastUpdateStatus"] == "Successful"
    assert updated["CodeSha256"] != first["CodeSha256"]
    assert (_code_dir(server, updated) / "__pycache__" / f"app.{PYTHON_TAG}.pyc").is_file()
    assert ok_json(invoke(lam, name, {}))["marker"] == marker


def test_node_and_custom_runtime_packages_are_unpacked_not_compiled(lam: Any, server: FireboxServer) -> None:
    runtimes = {"nodejs20.x": "index.handler", "provided.al2023": "function.handler"}
    for runtime, handler in runtimes.items():
        name = unique_name("prep")
        package = make_zip({"bootstrap": "#!/bin/sh\nexit 1\n", "index.js": "exports.handler = async () => 1;\n",
                            "tool.py": f"MARKER = {uuid.uuid4().hex!r}\n"}, modes={"bootstrap": 0o755})
        create_function(lam, name, zip_bytes=package, Runtime=runtime, Handler=handler)
        code = _code_dir(server, wait_active(lam, name))
        assert (code / "tool.py").is_file(), f"{runtime}: {code} was not unpacked before Active"
        assert (code / "bootstrap").stat().st_mode & 0o111, runtime
        assert not (code / "__pycache__").exists(), f"{runtime}: Python files compiled for a non-Python runtime"


def test_invoke_unpacks_again_when_the_cache_lost_the_package(lam: Any, server: FireboxServer) -> None:
    name, marker = unique_name("prep"), uuid.uuid4().hex
    create_function(lam, name, zip_bytes=_package(marker))
    code = _code_dir(server, wait_active(lam, name))
    shutil.rmtree(code)  # as a wiped or moved data directory would leave it
    before = _cache_statistics(server)
    assert ok_json(invoke(lam, name, {})) == {"marker": marker, "helper": 42}
    after = _cache_statistics(server)
    assert after["unpacks"] == before["unpacks"] + 1, (before, after)
    assert (code / "__pycache__" / f"app.{PYTHON_TAG}.pyc").is_file()


def test_a_host_failure_of_the_code_cache_fails_the_function(lam: Any, server: FireboxServer) -> None:
    name, package = unique_name("prep"), _package(uuid.uuid4().hex)
    # A file where the unpacked tree must go: publishing it fails on the host (ENOTDIR), which
    # is no fault of the package.
    blocker = server.data_dir / "code" / hashlib.sha256(package).hexdigest()
    blocker.write_text("not a directory")
    try:
        create_function(lam, name, zip_bytes=package)

        def failed_config() -> dict[str, Any] | None:
            config = lam.get_function_configuration(FunctionName=name)
            assert config["State"] in ("Pending", "Failed"), config
            return config if config["State"] == "Failed" else None

        config = wait_for(failed_config, deadline_s=10, what=f"{name} to fail")
        assert config["StateReasonCode"] == "InternalError", config
        assert config["StateReason"].startswith("The function's code package could not be unpacked"), config
        assert config["LastUpdateStatus"] == "Failed"
        error = client_error(lambda: lam.invoke(FunctionName=name, Payload=b"{}"))
        assert error.response["Error"]["Code"] == "ResourceConflictException"
        assert "Failed state" in error.response["Error"]["Message"]
    finally:
        blocker.unlink()
    # A new package gets a new chance (Failed -> Pending -> Active).
    marker = uuid.uuid4().hex
    lam.update_function_code(FunctionName=name, ZipFile=_package(marker))
    wait_active(lam, name)
    assert ok_json(invoke(lam, name, {}))["marker"] == marker
