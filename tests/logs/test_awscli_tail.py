"""`aws logs tail` (AWS CLI v2) against Firebox: the past lines, then new ones with --follow.

The CLI v2 is Debian's `awscli` package (PyPI has only v1, which has no `logs tail`);
`bin/test` installs it when it can, and this module is skipped, saying why, when it could not.
"""

from __future__ import annotations

import os
import queue
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.helpers import FireboxServer

AWS_V2 = Path("/usr/bin/aws")


def _cli_v2() -> bool:
    try:
        out = subprocess.run([str(AWS_V2), "--version"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return False
    return out.stdout.startswith("aws-cli/2")


pytestmark = pytest.mark.skipif(not _cli_v2(), reason="the AWS CLI v2 (/usr/bin/aws, Debian's awscli) is not installed")

CODE = "def handler(event, context):\n    print('tail-me', event['n'])\n    return event['n']\n"


def _aws(server: FireboxServer, *args: str) -> tuple[list[str], dict[str, str]]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(AWS_ACCESS_KEY_ID="test", AWS_SECRET_ACCESS_KEY="test", AWS_DEFAULT_REGION="us-east-1",
               AWS_PAGER="")
    return [str(AWS_V2), "--endpoint-url", server.endpoint, *args], env


def test_tail_prints_past_lines(server: FireboxServer, deploy: Any, invoke: Any, wait_events: Any) -> None:
    name = deploy(CODE)
    request_id, _ = invoke(name, {"n": 1})
    wait_events(f"/aws/lambda/{name}", "REPORT")
    argv, env = _aws(server, "logs", "tail", f"/aws/lambda/{name}", "--since", "10m")
    out = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert f"START RequestId: {request_id}" in out.stdout
    assert "tail-me 1" in out.stdout
    assert f"REPORT RequestId: {request_id}" in out.stdout


def test_tail_follow_shows_new_invocations(server: FireboxServer, deploy: Any, invoke: Any, wait_events: Any) -> None:
    name = deploy(CODE)
    invoke(name, {"n": 1})
    wait_events(f"/aws/lambda/{name}", "REPORT")
    argv, env = _aws(server, "logs", "tail", f"/aws/lambda/{name}", "--follow", "--since", "10m")
    tail = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines: queue.Queue[str] = queue.Queue()

    def pump() -> None:
        assert tail.stdout is not None
        for line in tail.stdout:
            lines.put(line)

    threading.Thread(target=pump, daemon=True).start()
    try:
        def wait_for(text: str, deadline_s: float = 30.0) -> None:
            end = time.monotonic() + deadline_s
            while time.monotonic() < end:
                try:
                    if text in lines.get(timeout=max(0.0, end - time.monotonic())):
                        return
                except queue.Empty:
                    break
            pytest.fail(f"aws logs tail --follow never printed {text!r}")

        wait_for("tail-me 1")  # the past
        request_id, _ = invoke(name, {"n": 2})
        wait_for("tail-me 2")  # the future, found by the CLI's own polling
        wait_for(f"REPORT RequestId: {request_id}")
    finally:
        tail.terminate()
        tail.wait(timeout=10)
