"""The runtimes' own cold-start cost: process start -> first `GET /next`, trivial handler.

Measured, never assumed: each test runs the bootstrap 10 times, prints the median next to the
bare interpreter's start (`python -S -c pass`, `node -e 0`) and fails only on a gross regression.
Run `pytest tests/runtimes/test_runtime_init_cost.py -q -s` to read the numbers.
"""

from __future__ import annotations

import statistics
import subprocess
import time
from pathlib import Path

import pytest

from firebox.runtimes.api import RUNTIME_DIR, bootstrap_command, precompile

from .conftest import NODE, PYTHON, write_files
from .fakeapi import FakeRuntimeAPI, RuntimeProcess, lambda_environment

RUNS = 10
LIMIT_MS = 1500  # a gross-regression guard; typical values are a few tens of ms
# The baseline runs with as little environment as the runtimes get (a host's NODE_EXTRA_CA_CERTS,
# for one, costs node tens of milliseconds at start).
BARE_ENV = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"}


def _bare_start_ms(argv: list[str]) -> float:
    samples = []
    for _ in range(RUNS):
        started = time.perf_counter()
        subprocess.run(argv, check=True, timeout=10, env=BARE_ENV)
        samples.append((time.perf_counter() - started) * 1000)
    return statistics.median(samples)


def _time_to_first_next_ms(runtime: str, interpreter: str, task_root: Path, handler: str) -> list[float]:
    api = FakeRuntimeAPI()
    samples = []
    try:
        for _ in range(RUNS):
            argv = bootstrap_command(runtime, interpreter, runtime_dir=RUNTIME_DIR)
            process = RuntimeProcess(argv, lambda_environment(api, task_root, handler), task_root)
            try:
                samples.append((api.wait_next() - process.started) * 1000)
            finally:
                process.stop()
    finally:
        api.close()
    return samples


def _report(name: str, samples: list[float], bare_ms: float, capsys: pytest.CaptureFixture[str]) -> float:
    median = statistics.median(samples)
    with capsys.disabled():
        print(
            f"\n{name}: start -> first GET /next median {median:.1f} ms over {len(samples)} runs "
            f"(min {min(samples):.1f}, max {max(samples):.1f}); bare interpreter start {bare_ms:.1f} ms; "
            f"the runtime's own init about {median - bare_ms:.1f} ms"
        )
    return median


def test_python_runtime_init_cost(task_root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write_files(task_root, {"app.py": "def handler(event, context):\n    return None\n"})
    precompile(PYTHON)  # as the worker does once per interpreter
    samples = _time_to_first_next_ms("python3.11", PYTHON, task_root, "app.handler")
    bare = _bare_start_ms([PYTHON, "-u", "-S", "-B", "-c", "pass"])
    assert _report(f"python ({PYTHON})", samples, bare, capsys) < LIMIT_MS


@pytest.mark.skipif(NODE is None, reason="node is not installed")
def test_nodejs_runtime_init_cost(task_root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert NODE is not None
    write_files(task_root, {"index.js": "exports.handler = async () => null;\n"})
    samples = _time_to_first_next_ms("nodejs20.x", NODE, task_root, "index.handler")
    bare = _bare_start_ms([NODE, "-e", "0"])
    assert _report(f"nodejs ({NODE})", samples, bare, capsys) < LIMIT_MS
