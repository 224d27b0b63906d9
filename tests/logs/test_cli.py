"""The command lines: the AWS CLI (v1) and `firebox logs`, against a real server.

The installed AWS CLI is v1, which has no `aws logs tail` (a v2-only command, not on PyPI):
`firebox logs --follow` is tested instead; it polls FilterLogEvents with a startTime and
de-duplicates event ids, exactly as `aws logs tail --follow` does.
"""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from tests.e2e.helpers import FireboxServer, clean_env, wait_for

from .conftest import Deploy, Invoke, WaitEvents
from .support import APP


def aws(server: FireboxServer, tmp_path: Path, *args: str) -> Any:
    env = {
        "PATH": "/usr/bin:/bin",
        "HOME": str(tmp_path),
        "AWS_ACCESS_KEY_ID": "test",
        "AWS_SECRET_ACCESS_KEY": "test",
        "AWS_CONFIG_FILE": str(tmp_path / "no-config"),
        "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "no-credentials"),
        "AWS_DEFAULT_OUTPUT": "json",
        "AWS_MAX_ATTEMPTS": "1",
    }
    result = subprocess.run(
        [sys.executable, "-m", "awscli", "--endpoint-url", server.endpoint, "--region", "us-east-1", "logs", *args],
        capture_output=True, text=True, env=env, timeout=60, stdin=subprocess.DEVNULL,
    )
    assert result.returncode == 0, f"aws logs {' '.join(args)} failed ({result.returncode}):\n{result.stderr}"
    return json.loads(result.stdout)


def firebox_env() -> dict[str, str]:
    # A wide console, and no colour codes in captured output.
    return clean_env({"COLUMNS": "250", "NO_COLOR": "1", "AWS_ACCESS_KEY_ID": "", "AWS_SECRET_ACCESS_KEY": ""})


def firebox_logs(server: FireboxServer, *args: str) -> str:
    result = subprocess.run([sys.executable, "-m", "firebox", "--endpoint", server.endpoint, "logs", *args],
                            capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL, env=firebox_env())
    assert result.returncode == 0, f"exit {result.returncode}\n{result.stdout}\n{result.stderr}"
    assert "Traceback" not in result.stderr
    return result.stdout


def test_aws_cli_filter_and_get_log_events(server: FireboxServer, deploy: Deploy, invoke: Invoke, logs: Any,
                                           wait_events: WaitEvents, tmp_path: Path) -> None:
    name = deploy(APP)
    group = f"/aws/lambda/{name}"
    request_id, _ = invoke(name, {"tag": "cli", "action": "error"})
    invoke(name, {"tag": "cli2", "action": "lines", "n": 30})
    wait_events(group, "REPORT", count=2)

    errors = aws(server, tmp_path, "filter-log-events", "--log-group-name", group, "--filter-pattern", "ERROR")
    assert [e["message"].split("\t")[-1] for e in errors["events"]] == ["database unreachable cli\n"]
    # The v1 CLI pages through nextToken by itself: 1-event pages, every event.
    everything = aws(server, tmp_path, "filter-log-events", "--log-group-name", group, "--page-size", "1")
    assert len(everything["events"]) == 1 + 6 + 5 + 30

    (stream,) = logs.describe_log_streams(logGroupName=group)["logStreams"]
    page = aws(server, tmp_path, "get-log-events", "--log-group-name", group, "--log-stream-name",
               stream["logStreamName"], "--start-from-head", "--limit", "5")
    assert [e["message"] for e in page["events"]][:3] == [
        "cold start\n", f"START RequestId: {request_id} Version: $LATEST\n", "print cli\n"]
    assert len(page["events"]) == 5
    assert page["nextForwardToken"].startswith("f/") and page["nextBackwardToken"].startswith("b/")


def test_firebox_logs_filter_and_request_id(server: FireboxServer, deploy: Deploy, invoke: Invoke,
                                            wait_events: WaitEvents) -> None:
    name = deploy(APP)
    first, _ = invoke(name, {"tag": "first", "action": "error"})
    second, _ = invoke(name, {"tag": "second", "action": "raise"})
    wait_events(f"/aws/lambda/{name}", "REPORT", count=2)

    everything = firebox_logs(server, name, "--since", "10m")
    assert "cold start" in everything and "print first" in everything and "print second" in everything
    assert everything.count("REPORT RequestId: ") == 2
    assert "Traceback (most recent call last):" in everything  # the traceback's lines, all printed

    errors = firebox_logs(server, name, "--filter", "ERROR")
    assert "database unreachable first" in errors and "ValueError: boom second" in errors
    assert "print first" not in errors and "START" not in errors

    only = firebox_logs(server, name, "--request-id", second)
    lines = only.strip().splitlines()
    assert f"START RequestId: {second}" in lines[0] and f"REPORT RequestId: {second}" in lines[-1]
    assert "print second" in only and "ValueError: boom second" in only
    assert first not in only and "print first" not in only and "cold start" not in only

    missing = subprocess.run([sys.executable, "-m", "firebox", "--endpoint", server.endpoint, "logs", "never-ran-fn"],
                             capture_output=True, text=True, timeout=60, env=firebox_env())
    assert missing.returncode == 0 and "no log group /aws/lambda/never-ran-fn" in missing.stderr


def test_firebox_logs_follow_shows_new_lines(server: FireboxServer, deploy: Deploy, invoke: Invoke,
                                             wait_events: WaitEvents) -> None:
    name = deploy(APP)
    invoke(name, {"tag": "old"})
    wait_events(f"/aws/lambda/{name}", "REPORT")
    process = subprocess.Popen(
        [sys.executable, "-m", "firebox", "--endpoint", server.endpoint, "logs", name, "--follow", "--since", "10m"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL, env=firebox_env(),
        start_new_session=True,
    )
    lines: queue.Queue[str] = queue.Queue()
    seen: list[str] = []
    threading.Thread(target=lambda: [lines.put(line) for line in process.stdout], daemon=True).start()  # type: ignore[union-attr]

    def saw(text: str) -> bool:
        while True:
            try:
                seen.append(lines.get_nowait())
            except queue.Empty:
                return any(text in line for line in seen)

    try:
        wait_for(lambda: saw("print old"), deadline_s=20, what="the existing lines")
        for tag in ("new1", "new2"):
            request_id, _ = invoke(name, {"tag": tag})
            wait_for(lambda: saw(f"print {tag}") and saw(f"REPORT RequestId: {request_id}"), deadline_s=20,
                     what=f"the lines of {tag} to be followed")
        time.sleep(1.5)  # a few more polls: nothing is printed twice
        saw("")
        assert sum("print old" in line for line in seen) == 1
        assert sum("print new1" in line for line in seen) == 1
        assert process.poll() is None, "--follow keeps running"
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=10)
