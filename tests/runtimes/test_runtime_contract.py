"""`firebox.runtimes.api`: how the platform starts a runtime, and the component's isolation."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

import firebox.runtimes
from firebox.runtimes import api
from firebox.runtimes.api import RUNTIME_DIR, bootstrap_command, precompile, runtime_family

from .conftest import PYTHON, Starter
from .fakeapi import FakeRuntimeAPI, RuntimeProcess, lambda_environment


def test_runtime_dir_holds_the_bootstraps() -> None:
    assert (RUNTIME_DIR / "python" / "bootstrap.py").is_file()
    assert (RUNTIME_DIR / "nodejs" / "bootstrap.mjs").is_file()
    assert firebox.runtimes.RUNTIME_DIR == RUNTIME_DIR


def test_commands_inside_a_sandbox() -> None:
    python = bootstrap_command("python3.12", "/usr/bin/python3.12")
    assert python[0] == "/usr/bin/python3.12" and python[-1] == "/var/runtime/python/bootstrap.py"
    assert {"-u", "-S", "-B"} <= set(python)
    assert bootstrap_command("nodejs20.x", "/usr/bin/node") == ["/usr/bin/node", "/var/runtime/nodejs/bootstrap.mjs"]
    assert bootstrap_command("provided.al2023", "") == ["/var/task/bootstrap"]
    assert bootstrap_command("provided.al2", "", task_root="/opt") == ["/opt/bootstrap"]
    assert bootstrap_command("nodejs18.x", "node", runtime_dir=RUNTIME_DIR)[1] == str(RUNTIME_DIR / "nodejs/bootstrap.mjs")


def test_runtime_families() -> None:
    assert [runtime_family(r) for r in ("python3.9", "nodejs22.x", "provided")] == ["python", "nodejs", "provided"]
    with pytest.raises(ValueError, match="unknown runtime 'java21'"):
        runtime_family("java21")


def test_package_forwards_the_contract() -> None:
    assert firebox.runtimes.bootstrap_command is bootstrap_command
    assert firebox.runtimes.precompile is precompile
    with pytest.raises(AttributeError):
        firebox.runtimes.nothing_here  # noqa: B018


def test_bootstraps_import_only_the_standard_library() -> None:
    for path in sorted(RUNTIME_DIR.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                assert node.level == 0, f"{path}: relative import"
                names = [node.module or ""]
            for name in names:
                assert name.split(".")[0] in sys.stdlib_module_names, f"{path}: imports {name}"
    source = (RUNTIME_DIR / "nodejs" / "bootstrap.mjs").read_text(encoding="utf-8")
    imported = [line.split("from", 1)[1].strip(" ';") for line in source.splitlines() if line.startswith("import ")]
    assert imported and all(name.startswith("node:") for name in imported), imported


def test_precompile_writes_the_bytecode_cache() -> None:
    assert precompile(PYTHON)
    tag = subprocess.run([PYTHON, "-c", "import sys; print(sys.implementation.cache_tag)"],
                         capture_output=True, text=True, check=True).stdout.strip()
    assert (RUNTIME_DIR / "python" / "__pycache__" / f"bootstrap.{tag}.pyc").is_file()
    assert not precompile("/nonexistent/python")


def test_python_bootstrap_runs_as_a_plain_script(api: FakeRuntimeAPI, task_root: Path) -> None:
    (task_root / "app.py").write_text("import sys\ndef handler(e, c):\n    return sys.path[0]\n")
    argv = [PYTHON, str(RUNTIME_DIR / "python" / "bootstrap.py")]
    process = RuntimeProcess(argv, lambda_environment(api, task_root, "app.handler"), task_root)
    try:
        assert api.call({}).json() == str(task_root)
    finally:
        process.stop()


def test_python_keeps_one_connection(api: FakeRuntimeAPI, start_python: Starter) -> None:
    start_python("app.handler", {"app.py": "def handler(e, c):\n    return 1\n"})
    for _ in range(3):
        assert api.call({}).json() == 1
    assert api.connections == 1


def test_node_keeps_one_connection(api: FakeRuntimeAPI, start_node: Starter) -> None:
    start_node("index.handler", {"index.js": "exports.handler = async () => 1;\n"})
    for _ in range(3):
        assert api.call({}).json() == 1
    assert api.connections == 1


def test_api_module_is_the_contract() -> None:
    assert "GET /2018-06-01/runtime/invocation/next" in (api.__doc__ or "")


@pytest.mark.parametrize("runtime", ["python", "node"])
def test_chunked_next_and_connections_dropped_by_the_server(
    runtime: str, api: FakeRuntimeAPI, request: pytest.FixtureRequest
) -> None:
    api.chunked_next = True
    api.drop_after_post = True
    if runtime == "python":
        request.getfixturevalue("start_python")("app.handler", {"app.py": "def handler(e, c):\n    return e\n"})
    else:
        request.getfixturevalue("start_node")("index.handler", {"index.js": "exports.handler = async (e) => e;\n"})
    events = [{"n": n, "pad": "x" * 1000} for n in range(3)]
    assert [api.call(event).json() for event in events] == events
