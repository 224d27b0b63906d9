"""A function printing 100 MB in one invocation (1,000,000 lines of 100 bytes) on its own server:
the platform stays responsive (health checks and another function's invocations succeed while
it runs), the invocation's result is right, the server's memory stays bounded, and every line is
either stored or counted in a `[firebox] N log records ... dropped` line of the same stream."""

from __future__ import annotations

import json
import sqlite3
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from firebox.logs import reads
from tests.e2e.helpers import FireboxServer, create_active, make_zip, start_server, unique_name, wait_for

from .support import logs_client

LINES = 1_000_000
LINE = "x" * 99  # + the newline: 100 bytes
FLOOD = f'''
import sys

def handler(event, context):
    block = "{LINE}\\n" * 1000
    for _ in range({LINES // 1000}):
        sys.stdout.write(block)
    sys.stdout.flush()
    return {{"printed": {LINES}}}
'''
QUIET = "def handler(event, context):\n    print('quiet', event)\n    return event\n"
# Generous: what must hold is that the server answers at all while flooded, not how fast.
ANSWER_DEADLINE_S = 10.0
MAX_SERVER_RSS_MB = 1024


@pytest.fixture
def flood_server(tmp_path: Path) -> Iterator[FireboxServer]:
    handle = start_server(tmp_path / "data", tmp_path)
    yield handle
    handle.stop()


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def test_a_flood_leaves_the_platform_responsive_and_states_its_loss(flood_server: FireboxServer) -> None:
    lam = flood_server.client()
    flood, quiet = unique_name("flood"), unique_name("quiet")
    create_active(lam, flood, zip_bytes=make_zip({"app.py": FLOOD}), MemorySize=512, Timeout=60)
    create_active(lam, quiet, zip_bytes=make_zip({"app.py": QUIET}))
    lam.invoke(FunctionName=quiet, Payload=b'{"warm": 1}')

    result: dict[str, Any] = {}

    def run_flood() -> None:
        started = time.monotonic()
        answer = lam.invoke(FunctionName=flood, Payload=b"{}")
        result.update(payload=json.loads(answer["Payload"].read()), error=answer.get("FunctionError"),
                      seconds=time.monotonic() - started)

    flooding = threading.Thread(target=run_flood)
    flooding.start()
    health_s: list[float] = []
    invoke_s: list[float] = []
    try:
        while flooding.is_alive() or not health_s:
            started = time.monotonic()
            with urllib.request.urlopen(f"{flood_server.endpoint}/health", timeout=ANSWER_DEADLINE_S) as answer:
                assert answer.status == 200
            health_s.append(time.monotonic() - started)
            started = time.monotonic()
            answer = lam.invoke(FunctionName=quiet, Payload=json.dumps({"n": len(invoke_s)}).encode())
            assert json.loads(answer["Payload"].read()) == {"n": len(invoke_s)} and "FunctionError" not in answer
            invoke_s.append(time.monotonic() - started)
            time.sleep(0.05)
    finally:
        flooding.join(timeout=90)
    assert result.get("error") is None and result["payload"] == {"printed": LINES}, result
    assert max(health_s) < ANSWER_DEADLINE_S and max(invoke_s) < ANSWER_DEADLINE_S
    print(f"\nflood invocation {result['seconds']:.1f} s; during it {len(health_s)} health checks "
          f"(max {max(health_s) * 1000:.0f} ms) and {len(invoke_s)} invokes of another function "
          f"(max {max(invoke_s) * 1000:.0f} ms)")

    # Every line is stored, or counted as dropped in a notice of the same stream.
    logs = logs_client(flood_server.endpoint)
    group = f"/aws/lambda/{flood}"
    wait_for(lambda: logs.filter_log_events(logGroupName=group, filterPattern="REPORT")["events"],
             deadline_s=60, what="the flood's REPORT line")
    notices = [e["message"] for page in logs.get_paginator("filter_log_events").paginate(
        logGroupName=group, filterPattern='"[firebox]" dropped') for e in page["events"]]
    dropped = sum(int(n.split()[1]) for n in notices)
    with sqlite3.connect(flood_server.data_dir / "logs.db") as db:
        stored = sum(message == LINE + "\n" for row in db.execute(
            "SELECT id, ts, message, event_count, layout FROM log_events") for _, _, message in reads.split(*row))
    assert stored + dropped == LINES, (stored, dropped, notices[:3])
    assert (dropped > 0) == bool(notices)
    rss = peak_rss_mb(flood_server.process.pid)
    print(f"stored {stored} lines, dropped {dropped} in {len(notices)} notices; server peak RSS {rss:.0f} MB")
    assert rss < MAX_SERVER_RSS_MB
    # The platform still answers normally afterwards.
    assert json.loads(lam.invoke(FunctionName=quiet, Payload=b'{"after": 1}')["Payload"].read()) == {"after": 1}
