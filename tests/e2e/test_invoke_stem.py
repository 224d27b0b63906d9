"""Cold starts through stem cells (worker/stemcells.py): a Python function whose first invocation
finds a pre-started, unspecialised sandbox gets it, with the same results, context, environment
and isolation as a freshly started sandbox; a cell never serves two functions."""

from __future__ import annotations

import json
import urllib.parse
import urllib.request
from typing import Any

from .engine_fixtures import invoke, isolated_backend, ok_json, python_function  # noqa: F401
from .helpers import FireboxServer, wait_for

STEM_SOURCE = """
import os

LOADS = []
LOADS.append(1)
with open("/tmp/module-loads", "a") as f:
    f.write("x")


def handler(event, context):
    connected = {}
    for port in event["ports"]:
        s = socket_module().socket()
        s.settimeout(0.5)
        try:
            s.connect(("127.0.0.1", port))
            connected[str(port)] = "CONNECTED"
        except OSError as exc:
            connected[str(port)] = type(exc).__name__
        finally:
            s.close()
    with open("/proc/self/cmdline", "rb") as f:
        cmdline = f.read().decode(errors="replace")
    with open("/tmp/module-loads") as f:
        loads = f.read()
    return {
        "marker": MARKER,
        "task": sorted(os.listdir("/var/task")),
        "env": dict(os.environ),
        "uid": os.getuid(),
        "shadow": os.path.exists("/etc/shadow"),
        "connected": connected,
        "cmdline": cmdline,
        "loads": loads,
        "module_loads": len(LOADS),
        "context": {
            "function_name": context.function_name,
            "function_version": context.function_version,
            "memory_limit_in_mb": context.memory_limit_in_mb,
            "log_group_name": context.log_group_name,
            "log_stream_name": context.log_stream_name,
            "aws_request_id": context.aws_request_id,
            "remaining": context.get_remaining_time_in_millis(),
        },
    }


def socket_module():
    import socket
    return socket
"""


def _platform_port(server: FireboxServer) -> int:
    port = urllib.parse.urlsplit(server.endpoint).port
    assert port is not None
    return port


def _function(lam: Any, marker: str, **params: Any) -> str:
    source = f"MARKER = {marker!r}\n" + STEM_SOURCE
    return python_function(lam, source, prefix="stem", **params)


def _wait_for_ready_cell(server: FireboxServer) -> None:
    """The pool refills in the background after every cold start: wait until a cell is ready."""

    def ready() -> int:
        with urllib.request.urlopen(f"{server.endpoint}/_firebox/stats", timeout=10) as answer:
            return int(json.loads(answer.read())["stem_cells"]["ready"])

    wait_for(ready, deadline_s=30, what="a ready stem cell")


def test_cold_start_through_a_stem_cell(lam: Any, isolated_backend: FireboxServer) -> None:  # noqa: F811
    _wait_for_ready_cell(isolated_backend)
    name = _function(lam, "first", MemorySize=256, Environment={"Variables": {"OWN": "mine", "X_Y": "1"}})
    ports = [_platform_port(isolated_backend)]
    first = invoke(lam, name, {"ports": ports}, LogType="Tail")
    seen = ok_json(first)
    assert "Init Duration" in first.report(), first.report()
    assert "/var/runtime/python/stem.py" in seen["cmdline"], "the cold start did not use a stem cell"
    assert seen["marker"] == "first" and [t for t in seen["task"] if t != "__pycache__"] == ["app.py"]
    assert seen["uid"] != 0 and seen["shadow"] is False
    assert seen["connected"][str(ports[0])] != "CONNECTED"
    env = seen["env"]
    assert env["OWN"] == "mine" and env["X_Y"] == "1"
    assert env["AWS_LAMBDA_FUNCTION_NAME"] == name and env["AWS_LAMBDA_FUNCTION_MEMORY_SIZE"] == "256"
    assert env["_HANDLER"] == "app.handler" and env["LAMBDA_TASK_ROOT"] == "/var/task"
    assert env["AWS_LAMBDA_LOG_STREAM_NAME"] == seen["context"]["log_stream_name"]
    assert not any(k.startswith("FIREBOX_") and k != "FIREBOX_RUNTIME_LIBS" for k in env), env
    context = seen["context"]
    assert context["function_name"] == name and context["function_version"] == "$LATEST"
    assert context["memory_limit_in_mb"] == "256" and context["log_group_name"] == f"/aws/lambda/{name}"
    assert context["aws_request_id"] == first.request_id and 0 < context["remaining"] <= 10_000
    # Warm: the module's code ran once; no Init Duration.
    second = invoke(lam, name, {"ports": []}, LogType="Tail")
    again = ok_json(second)
    assert "Init Duration" not in second.report()
    assert again["module_loads"] == 1 and again["loads"] == "x"
    assert again["context"]["log_stream_name"] == context["log_stream_name"]


def test_two_functions_never_share_a_cell(lam: Any, isolated_backend: FireboxServer) -> None:  # noqa: F811
    names = [_function(lam, f"fn{i}") for i in range(3)]
    seen = [ok_json(invoke(lam, name, {"ports": []})) for name in names]
    streams = [s["context"]["log_stream_name"] for s in seen]
    assert len(set(streams)) == 3, streams
    for i, s in enumerate(seen):
        assert s["marker"] == f"fn{i}" and [t for t in s["task"] if t != "__pycache__"] == ["app.py"], s
        assert s["env"]["AWS_LAMBDA_FUNCTION_NAME"] == names[i]
    # And again, warm: each function still sees only its own code.
    for i, name in enumerate(names):
        assert ok_json(invoke(lam, name, {"ports": []}))["marker"] == f"fn{i}"


def test_function_setting_python_variables_gets_a_fresh_sandbox(lam: Any, isolated_backend: FireboxServer) -> None:  # noqa: F811
    name = _function(lam, "hashseed", Environment={"Variables": {"PYTHONHASHSEED": "0"}})
    seen = ok_json(invoke(lam, name, {"ports": []}))
    assert "/var/runtime/python/bootstrap.py" in seen["cmdline"] and "stem.py" not in seen["cmdline"]
    assert seen["env"]["PYTHONHASHSEED"] == "0"
