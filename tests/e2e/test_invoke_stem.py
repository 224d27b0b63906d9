"""Cold starts through stem cells (worker/stemcells.py): a Python function whose first invocation
finds a pre-started, unspecialised sandbox gets it, with the same results, context, environment
and isolation as a freshly started sandbox; a cell never serves two functions."""

from __future__ import annotations

import json
import urllib.parse
import urllib.request
from typing import Any

from .engine_fixtures import invoke, isolated_backend, node_function, ok_json, python_function  # noqa: F401
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


def _kinds(server: FireboxServer) -> dict[str, dict[str, int]]:
    """The stem cell statistics per kind of cell (`python3.11/plain`, `python3.11/boto3`...)."""
    with urllib.request.urlopen(f"{server.endpoint}/_firebox/stats", timeout=10) as answer:
        return json.loads(answer.read())["stem_cells"]["kinds"]  # type: ignore[no-any-return]


def _specialised(server: FireboxServer, kind: str) -> int:
    return int(_kinds(server).get(kind, {}).get("specialised", 0))


def _wait_for_ready_cell(server: FireboxServer, kind: str = "python3.11/plain") -> None:
    """The pool refills in the background after every cold start: wait until a cell is ready."""
    wait_for(lambda: _kinds(server).get(kind, {}).get("ready", 0), deadline_s=60, what=f"a ready {kind} stem cell")


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


BOTO3_SOURCE = """
import sys

import boto3


def handler(event, context):
    with open("/proc/self/cmdline", "rb") as f:
        cmdline = f.read().decode(errors="replace")
    return {"version": boto3.__version__, "file": boto3.__file__, "path0": sys.path[0], "cmdline": cmdline,
            "env": os.environ.get("OWN")}


import os
"""


def test_a_boto3_function_is_specialised_from_a_boto3_cell(lam: Any, isolated_backend: FireboxServer) -> None:  # noqa: F811
    import boto3

    _wait_for_ready_cell(isolated_backend, "python3.11/boto3")
    before = _specialised(isolated_backend, "python3.11/boto3")
    name = python_function(lam, BOTO3_SOURCE, prefix="stemb3", MemorySize=128,
                           Environment={"Variables": {"OWN": "b3"}})
    first = invoke(lam, name, {}, LogType="Tail")
    seen = ok_json(first)
    assert "Init Duration" in first.report()
    assert "/var/runtime/python/stem.py" in seen["cmdline"] and "boto3" in seen["cmdline"], seen
    assert seen["version"] == boto3.__version__ and seen["env"] == "b3", seen
    assert seen["file"] == "/var/lang/lib/firebox-python/boto3/__init__.py" and seen["path0"] == "/var/task"
    assert _specialised(isolated_backend, "python3.11/boto3") == before + 1
    assert ok_json(invoke(lam, name, {}))["version"] == boto3.__version__  # warm, same sandbox


def test_a_function_shipping_its_own_boto3_gets_its_own(lam: Any, isolated_backend: FireboxServer) -> None:  # noqa: F811
    _wait_for_ready_cell(isolated_backend, "python3.11/boto3")
    _wait_for_ready_cell(isolated_backend, "python3.11/plain")
    before = {kind: _specialised(isolated_backend, kind) for kind in ("python3.11/boto3", "python3.11/plain")}
    name = python_function(lam, BOTO3_SOURCE, prefix="stemown",
                           extra={"boto3/__init__.py": "__version__ = '0.0-own'\n"})
    seen = ok_json(invoke(lam, name, {}))
    assert seen["version"] == "0.0-own" and seen["file"] == "/var/task/boto3/__init__.py", seen
    assert "stem.py" in seen["cmdline"] and "boto3" not in seen["cmdline"].split("stem.py")[1], seen
    assert _specialised(isolated_backend, "python3.11/boto3") == before["python3.11/boto3"]
    assert _specialised(isolated_backend, "python3.11/plain") == before["python3.11/plain"] + 1


NODE_PROBE = """
const fs = require('fs');
const initEnv = { ...process.env };
exports.handler = async (event, context) => ({
  cmdline: fs.readFileSync('/proc/self/cmdline', 'utf8'),
  argv: process.argv,
  env: process.env,
  initOwn: initEnv.OWN,
  stream: context.logStreamName,
  memory: context.memoryLimitInMB,
  cwd: process.cwd(),
  paths: require('module').globalPaths,
  http: process.moduleLoadList.filter((name) => /http/.test(name)),
});
"""

NODE_PROBE_ESM = """
import fs from 'node:fs';
import { createRequire } from 'node:module';
const initOwn = process.env.OWN;
export const handler = async (event, context) => ({
  cmdline: fs.readFileSync('/proc/self/cmdline', 'utf8'),
  argv: process.argv,
  env: process.env,
  initOwn,
  stream: context.logStreamName,
  memory: context.memoryLimitInMB,
  cwd: process.cwd(),
  paths: createRequire(import.meta.url)('module').globalPaths,
  esm: typeof require === 'undefined',
});
"""


def _node_cell_case(lam: Any, server: FireboxServer, files: dict[str, str]) -> dict[str, Any]:
    _wait_for_ready_cell(server, "nodejs20.x/plain")
    before = _specialised(server, "nodejs20.x/plain")
    name = node_function(lam, files, prefix="stemnode", Environment={"Variables": {"OWN": "mine", "X_Y": "1"}})
    first = invoke(lam, name, {}, LogType="Tail")
    seen = ok_json(first)
    assert "Init Duration" in first.report()
    assert "/var/runtime/nodejs/stem.mjs" in seen["cmdline"], "the cold start did not use a Node.js stem cell"
    assert _specialised(server, "nodejs20.x/plain") == before + 1
    # What the function sees is what a bootstrap-started runtime shows.
    assert seen["argv"] == ["/usr/bin/node", "/var/runtime/nodejs/bootstrap.mjs"], seen["argv"]
    env = seen["env"]
    assert env["OWN"] == "mine" and env["X_Y"] == "1" and seen["initOwn"] == "mine"
    assert env["AWS_LAMBDA_FUNCTION_NAME"] == name and env["_HANDLER"] == "index.handler"
    assert env["AWS_LAMBDA_LOG_STREAM_NAME"] == seen["stream"] and seen["memory"] == "256"
    assert env["NODE_PATH"] == "/opt/nodejs/node20/node_modules:/opt/nodejs/node_modules:/var/task"
    assert "/var/task" in seen["paths"] and seen["cwd"] == "/var/task"
    assert not any(k.startswith("FIREBOX_") for k in env), env
    again = ok_json(invoke(lam, name, {}))
    assert again["stream"] == seen["stream"]  # warm: the same sandbox
    return seen  # type: ignore[no-any-return]


def test_a_commonjs_node_function_is_served_by_a_node_cell(lam: Any, isolated_backend: FireboxServer) -> None:  # noqa: F811
    seen = _node_cell_case(lam, isolated_backend, {"index.js": NODE_PROBE})
    # The cell spoke HTTP over node:net only: node:http is the function's to load, as on AWS.
    assert seen["http"] == [], seen["http"]


def test_an_es_module_node_function_is_served_by_a_node_cell(lam: Any, isolated_backend: FireboxServer) -> None:  # noqa: F811
    seen = _node_cell_case(lam, isolated_backend, {"index.mjs": NODE_PROBE_ESM})
    assert seen["esm"] is True


def test_a_node_function_with_node_options_gets_a_fresh_sandbox(lam: Any, isolated_backend: FireboxServer) -> None:  # noqa: F811
    _wait_for_ready_cell(isolated_backend, "nodejs20.x/plain")
    before = _specialised(isolated_backend, "nodejs20.x/plain")
    name = node_function(lam, {"index.js": NODE_PROBE}, prefix="stemnodeopt",
                         Environment={"Variables": {"NODE_OPTIONS": "--max-old-space-size=100", "OWN": "opt"}})
    seen = ok_json(invoke(lam, name, {}))
    assert "/var/runtime/nodejs/bootstrap.mjs" in seen["cmdline"] and "stem.mjs" not in seen["cmdline"]
    assert seen["env"]["NODE_OPTIONS"] == "--max-old-space-size=100" and seen["env"]["OWN"] == "opt"
    assert _specialised(isolated_backend, "nodejs20.x/plain") == before


LOGGING_SOURCE = """
import logging, os, sys

def handler(event, context):
    root = logging.getLogger()
    logging.debug("debug-line")
    logging.warning("warning-line")
    with open("/proc/self/cmdline", "rb") as f:
        cmdline = f.read().decode(errors="replace")
    return {"handlers": [(type(h).__name__, type(h.formatter).__name__) for h in root.handlers],
            "level": root.level, "path0": sys.path[0], "cwd": os.getcwd(), "cmdline": cmdline}
"""


def test_a_cell_set_up_for_text_logs_serves_a_json_function_as_a_fresh_runtime_would(
        lam: Any, isolated_backend: FireboxServer) -> None:  # noqa: F811
    """A cell sets up logging before it has a function (bootstrap.prepare_init); a function
    whose log format or level differs gets them set up again, with nothing of the first left."""
    _wait_for_ready_cell(isolated_backend)
    text = python_function(lam, LOGGING_SOURCE, prefix="stemlog")
    json_debug = python_function(lam, LOGGING_SOURCE, prefix="stemlog", LoggingConfig={
        "LogFormat": "JSON", "ApplicationLogLevel": "DEBUG", "SystemLogLevel": "INFO"})
    seen = {}
    for name in (text, json_debug):
        _wait_for_ready_cell(isolated_backend)
        result = invoke(lam, name, {}, LogType="Tail")
        seen[name] = (ok_json(result), result.log or "")
        assert "/var/runtime/python/stem.py" in seen[name][0]["cmdline"], "the cold start did not use a stem cell"
    (text_seen, text_log), (json_seen, json_log) = seen[text], seen[json_debug]
    assert text_seen["handlers"] == [["LambdaLoggerHandler", "TextFormatter"]] and text_seen["level"] == 30
    assert json_seen["handlers"] == [["LambdaLoggerHandler", "JsonFormatter"]] and json_seen["level"] == 10
    for result in (text_seen, json_seen):
        assert result["path0"] == "/var/task" and result["cwd"] == "/var/task"
    assert "[WARNING]" in text_log and "warning-line" in text_log and "debug-line" not in text_log
    records = [json.loads(line) for line in json_log.splitlines() if line.startswith("{")]
    assert [(r["level"], r["message"]) for r in records if r.get("message", "").endswith("-line")] == [
        ("DEBUG", "debug-line"), ("WARNING", "warning-line")], json_log
