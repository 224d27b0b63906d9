"""The function's log through the CLI: `firebox logs NAME` and `firebox invoke NAME`."""

from __future__ import annotations

import json
import subprocess
from typing import Any

from .engine_fixtures import (
    LOG_DEADLINE_S,
    firebox_cli,
    invoke,
    isolated_backend,  # noqa: F401  (fixture)
    ok_json,
    poll,
    python_function,
)
from .helpers import FireboxServer, unique_name

PRINTER = """
import logging

logging.getLogger().setLevel(logging.INFO)
print("init line of the printer")


def handler(event, context):
    print(event.get("say", "nothing to say"))
    logging.info("logged %s", event.get("say"))
    return event
"""


def _ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, f"exit {result.returncode}\nstdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    return result.stdout


def test_firebox_logs_prints_the_invocation(lam: Any, isolated_backend: FireboxServer) -> None:  # noqa: F811
    name = python_function(lam, PRINTER, prefix="logs")
    marker = f"printed-{unique_name()}"
    result = invoke(lam, name, {"say": marker})
    ok_json(result)
    request_id = result.request_id

    def complete() -> str | None:
        out = _ok(firebox_cli(isolated_backend, "logs", name))
        wanted = (f"START RequestId: {request_id}", marker, f"END RequestId: {request_id}",
                  f"REPORT RequestId: {request_id}")
        return out if all(w in out for w in wanted) else None

    out = poll(complete, deadline_s=LOG_DEADLINE_S, what=f"`firebox logs {name}` to show the invocation")
    lines = out.splitlines()
    report = next(ln for ln in lines if f"REPORT RequestId: {request_id}" in ln)
    for key in ("Duration:", "Billed Duration:", "Memory Size:", "Max Memory Used:"):
        assert key in report, report
    # (the console expands the record's tabs)
    assert any("[INFO]" in ln and request_id in ln and ln.rstrip().endswith(f"logged {marker}") for ln in lines), out
    position = {key: next(i for i, ln in enumerate(lines) if key in ln)
                for key in (f"START RequestId: {request_id}", marker, f"REPORT RequestId: {request_id}")}
    assert list(position.values()) == sorted(position.values()), f"START, output, REPORT in order:\n{out}"
    assert "init line of the printer" in out, "init output goes to the sandbox's stream too"


def test_firebox_invoke_prints_the_result(lam: Any, isolated_backend: FireboxServer) -> None:  # noqa: F811
    name = python_function(lam, PRINTER, prefix="cliinv")
    out = _ok(firebox_cli(isolated_backend, "invoke", name, "--payload", '{"a":1}'))
    result_line = next((ln for ln in out.splitlines() if ln.strip().startswith("{")), None)
    assert result_line is not None, out
    assert json.loads(result_line) == {"a": 1}
    assert "Duration" in out, f"the REPORT figures are printed too:\n{out}"

    failing = python_function(lam, "def handler(e, c):\n    raise KeyError('nope')\n", prefix="cliinvfail")
    failed = firebox_cli(isolated_backend, "invoke", failing)
    assert failed.returncode != 0, failed
    assert "KeyError" in failed.stdout + failed.stderr
