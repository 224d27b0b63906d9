"""Fixtures: a fake Runtime API per test, a task root, and starters for the real bootstraps."""

from __future__ import annotations

import shutil
import sys
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from firebox.runtimes.api import RUNTIME_DIR, bootstrap_command

from .fakeapi import FakeRuntimeAPI, RuntimeProcess, lambda_environment

# The runtime runs in the sandbox's interpreter, not this virtualenv's.
PYTHON = "/usr/bin/python3.11" if Path("/usr/bin/python3.11").exists() else sys.executable
NODE = "/usr/bin/node" if Path("/usr/bin/node").exists() else shutil.which("node")

Starter = Callable[..., RuntimeProcess]


@pytest.fixture
def api() -> Iterator[FakeRuntimeAPI]:
    server = FakeRuntimeAPI()
    yield server
    server.close()


@pytest.fixture
def task_root(tmp_path: Path) -> Path:
    root = tmp_path / "task"
    root.mkdir()
    return root


def write_files(root: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text).lstrip("\n"), encoding="utf-8")


def _starter(runtime: str, interpreter: str | None, api: FakeRuntimeAPI, task_root: Path) -> Iterator[Starter]:
    started: list[RuntimeProcess] = []

    def start(handler: str, files: dict[str, str] | None = None, **env: str) -> RuntimeProcess:
        if interpreter is None:
            pytest.skip(f"no interpreter for {runtime}")
        write_files(task_root, files or {})
        argv = bootstrap_command(runtime, interpreter, runtime_dir=RUNTIME_DIR)
        process = RuntimeProcess(argv, lambda_environment(api, task_root, handler, **env), task_root)
        started.append(process)
        return process

    yield start
    for process in started:
        process.stop()


@pytest.fixture
def start_python(api: FakeRuntimeAPI, task_root: Path) -> Iterator[Starter]:
    """start_python(handler, {file: source}, **extra_env) -> the running Python runtime."""
    yield from _starter("python3.11", PYTHON, api, task_root)


@pytest.fixture
def start_node(api: FakeRuntimeAPI, task_root: Path) -> Iterator[Starter]:
    """start_node(handler, {file: source}, **extra_env) -> the running Node.js runtime."""
    if NODE is None:
        pytest.skip("node is not installed")
    yield from _starter("nodejs20.x", NODE, api, task_root)
