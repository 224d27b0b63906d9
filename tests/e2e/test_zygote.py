"""A function in a sandbox forked from a zygote sees what it would see in a sandbox started by
bubblewrap: the same command line, environment, sys.path, logging set-up, working directory and
identity, and nothing of the zygote's rehearsal (runtimes/python/zygote.py `rehearse`)."""

from __future__ import annotations

from typing import Any

from .engine_fixtures import invoke, ok_json, python_function
from .helpers import wait_for

FINGERPRINT = """
import builtins, logging, os, signal, sys

# Values that differ between two functions, or two sandboxes, of one platform.
OWN = ("_X_AMZN_TRACE_ID", "AWS_LAMBDA_FUNCTION_NAME", "AWS_LAMBDA_LOG_GROUP_NAME", "AWS_LAMBDA_LOG_STREAM_NAME")

def c_environ():
    pairs = dict(line.partition("=")[::2] for line in os.popen("env").read().splitlines() if "=" in line)
    return {name: value for name, value in pairs.items() if name not in ("_", "SHLVL", "PWD")}

def handler(event, context):
    root = logging.getLogger()
    with open("/tmp/arrived_at_run_time.py", "w") as module:
        module.write("X = 1\\n")
    sys.path.append("/tmp")
    try:
        import arrived_at_run_time
    finally:
        sys.path.remove("/tmp")
    return {
        "cmdline": open("/proc/self/cmdline", "rb").read().rstrip(b"\\0").decode().split("\\0"),
        "environ": sorted((name, "" if name in OWN else value) for name, value in os.environ.items()),
        "c_environ": sorted(line.partition("=")[0] for line in os.popen("env").read().splitlines() if "=" in line),
        # What a program the function starts inherits (libc's environment) against os.environ.
        "c_environ_differs": sorted(set(c_environ().items()) ^ {(k, v) for k, v in os.environ.items() if k != "PWD"}),
        "signals": [signal.getsignal(signal.SIGCHLD) == signal.SIG_DFL, signal.getsignal(signal.SIGINT) is signal.default_int_handler],
        "imported": arrived_at_run_time.X,
        "path": sys.path,
        "cwd": os.getcwd(),
        "uid": [os.getuid(), os.getgid()],
        "handlers": [type(h).__name__ for h in root.handlers],
        "level": root.level,
        "converter": logging.Formatter.converter.__name__,
        "builtins": [name for name in ("exit", "quit", "help") if hasattr(builtins, name)],
        "rehearsal": [name for name in sys.modules if "rehearsal" in name] + [p for p in sys.path if p.startswith("/tmp")],
        "tmp": sorted(set(os.listdir("/tmp")) - {"arrived_at_run_time.py", "__pycache__"}),
        "argv": sys.argv,
    }
"""


def _backend_line(server: Any) -> str:
    return wait_for(lambda: next((ln for ln in server.stderr().splitlines() if "firebox.worker.backends" in ln), None),
                    deadline_s=10, what="the server's sandbox-backend line")


def test_a_forked_runtime_looks_like_a_bubblewrap_one(lam: Any, server: Any, server_factory: Any) -> None:
    assert "forked from pre-imported zygotes" in _backend_line(server)
    bubblewrap = server_factory(env={"FIREBOX_SANDBOX_BACKEND": "isolated"})
    assert "zygotes" not in _backend_line(bubblewrap)
    seen = []
    for client in (lam, bubblewrap.client()):
        name = python_function(client, FINGERPRINT, prefix="zyg", Environment={"Variables": {"MINE": "1"}})
        seen.append(ok_json(invoke(client, name, {})))
    forked, started = seen
    assert forked["rehearsal"] == [] and forked["tmp"] == []
    assert forked["handlers"] == ["LambdaLoggerHandler"]
    assert forked["signals"] == [True, True] and forked["imported"] == 1
    assert forked["c_environ_differs"] == [] and started["c_environ_differs"] == []
    assert {name for name, _ in forked["environ"]} | {"_", "SHLVL"} >= set(forked["c_environ"]) - {"PWD"}
    for key in ("cmdline", "environ", "c_environ", "path", "cwd", "uid", "handlers", "level", "converter", "builtins",
                "argv", "signals", "imported"):
        assert forked[key] == started[key], (key, forked[key], started[key])


CONNECTIONS = """
import json, os, socket, urllib.error, urllib.request

def established_to_runtime_api():
    # This sandbox's network namespace holds only the Runtime API's 127.0.0.1:9001 (0x2329).
    with open("/proc/net/tcp") as table:
        rows = [line.split() for line in table.readlines()[1:]]
    return sum(1 for row in rows if row[3] == "01" and row[2].endswith(":2329"))

def handler(event, context):
    api = socket.socket(fileno=os.dup(3))
    try:
        family, kind = api.family.name, api.type.name
    finally:
        api.close()
    tcp_before = established_to_runtime_api()
    try:
        urllib.request.urlopen("http://%s/2018-06-01/runtime/nowhere" % os.environ["AWS_LAMBDA_RUNTIME_API"], timeout=5)
        listener = "no error"
    except urllib.error.HTTPError as exc:
        listener = [exc.code, json.loads(exc.read())["errorType"]]
    return {"fd3": [family, kind], "inherited": os.get_inheritable(3), "tcp_before": tcp_before,
            "listener": listener}
"""


def test_a_forked_runtime_talks_to_the_platform_on_its_own_socket(lam: Any) -> None:
    """The zygote hands our runtime a connected AF_UNIX socket (fd 3, close-on-exec) for the
    Runtime API, cold and warm: it never connects to 127.0.0.1:9001, which still answers for
    anything else inside that wants AWS_LAMBDA_RUNTIME_API."""
    name = python_function(lam, CONNECTIONS, prefix="zygsock")
    for _ in ("cold", "warm"):
        seen = ok_json(invoke(lam, name, {}))
        assert seen == {"fd3": ["AF_UNIX", "SOCK_STREAM"], "inherited": False, "tcp_before": 0,
                        "listener": [404, "InvalidRequest"]}, seen


LOGGING = """
import logging

def handler(event, context):
    root = logging.getLogger()
    logging.debug("debug-line")
    logging.warning("warning-line")
    return {"handlers": [[type(h).__name__, type(h.formatter).__name__] for h in root.handlers], "level": root.level}
"""


def test_a_forked_runtime_logs_as_its_function_asks_though_its_zygote_set_up_text_logs(lam: Any) -> None:
    """The zygote sets up the runtime's logging before it forks (bootstrap.prepare_init), for
    text at the root's own level; a JSON function at DEBUG gets exactly its own set-up."""
    text = python_function(lam, LOGGING, prefix="zyglog")
    json_debug = python_function(lam, LOGGING, prefix="zyglog", LoggingConfig={
        "LogFormat": "JSON", "ApplicationLogLevel": "DEBUG", "SystemLogLevel": "INFO"})
    for name, formatter, level in ((text, "TextFormatter", 30), (json_debug, "JsonFormatter", 10)):
        for _ in ("cold", "warm"):
            result = invoke(lam, name, {}, LogType="Tail")
            assert ok_json(result) == {"handlers": [["LambdaLoggerHandler", formatter]], "level": level}
            log = result.log or ""
            assert "warning-line" in log and ("debug-line" in log) == (level == 10), log
