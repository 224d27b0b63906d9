"""Isolation (ANATOMY.md §3 invariant 7, §5): each test is a function that tries something it must
not be able to do and reports what it observed; the test asserts the failure AND that the
platform is healthy afterwards (GET /health and an ordinary function still invokes)."""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
import urllib.parse
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from .engine_fixtures import (
    assert_platform_healthy,
    failed,
    healthy_fn,  # noqa: F401  (fixture)
    invoke,
    isolated_backend,  # noqa: F401  (fixture)
    node_function,
    ok_json,
    python_function,
)
from .helpers import FireboxServer, create_active, make_zip, unique_name


@pytest.fixture
def healthy(isolated_backend: FireboxServer, lam: Any, healthy_fn: str) -> Iterator[None]:  # noqa: F811
    """Every isolation test ends by checking that the platform is still healthy."""
    assert_platform_healthy(isolated_backend, lam, healthy_fn)
    yield
    assert_platform_healthy(isolated_backend, lam, healthy_fn)


def _port(server: FireboxServer) -> int:
    port = urllib.parse.urlsplit(server.endpoint).port
    assert port is not None
    return port


def test_cannot_read_etc_shadow(lam: Any, healthy: None) -> None:
    assert Path("/etc/shadow").exists(), "the host has /etc/shadow: the probe is meaningful"
    name = python_function(lam, """
        import os

        def handler(event, context):
            seen = {"exists": os.path.exists("/etc/shadow"), "etc": sorted(os.listdir("/etc"))}
            for path in ("/etc/shadow", "/etc/gshadow", "/etc/sudoers", "/root/.bashrc", "/etc/ssh/ssh_host_rsa_key"):
                try:
                    with open(path) as f:
                        seen[path] = "READ: " + f.read(40)
                except OSError as exc:
                    seen[path] = type(exc).__name__
            return seen
    """, prefix="isoshadow")
    seen = ok_json(invoke(lam, name, {}))
    assert seen["exists"] is False, seen
    assert "shadow" not in seen["etc"] and "sudoers" not in seen["etc"], seen["etc"]
    for path in ("/etc/shadow", "/etc/gshadow", "/etc/sudoers", "/root/.bashrc", "/etc/ssh/ssh_host_rsa_key"):
        assert seen[path] in ("FileNotFoundError", "PermissionError"), (path, seen[path])


OTHER_SOURCE = """
def handler(event, context):
    with open("/tmp/" + event["secret_name"], "w") as f:
        f.write("the other function's secret")
    return "written"
"""

SNOOP_SOURCE = """
import os


def handler(event, context):
    secret_file, secret_tmp = event["secret_file"], event["secret_tmp"]
    seen = {"task": sorted(os.listdir("/var/task")), "tmp": sorted(os.listdir("/tmp"))}
    found = []
    for top in ("/", ):
        for root, dirs, files in os.walk(top, onerror=lambda e: None):
            if root in ("/", ) :
                dirs[:] = [d for d in dirs if d not in ("proc", "sys", "usr", "dev")]
            if secret_file in files or secret_tmp in files:
                found.append(root)
    seen["found"] = found
    for path in event["host_paths"]:
        try:
            seen[path] = {"exists": os.path.exists(path), "list": os.listdir(path)}
        except OSError as exc:
            seen[path] = {"exists": os.path.exists(path), "error": type(exc).__name__}
    return seen
"""


def test_cannot_see_other_functions_code_tmp_or_data_dir(lam: Any, isolated_backend: FireboxServer,
                                                       healthy: None) -> None:
    secret_file = f"secret_{uuid.uuid4().hex}.txt"
    secret_tmp = f"tmp_secret_{uuid.uuid4().hex}"
    other = unique_name("isoother")
    create_active(lam, other, zip_bytes=make_zip({"app.py": OTHER_SOURCE, secret_file: "do not read me"}))
    assert ok_json(invoke(lam, other, {"secret_name": secret_tmp})) == "written"

    data_dir = isolated_backend.data_dir.resolve()
    assert (data_dir / "code").is_dir(), "the host's code cache exists (the probe is meaningful)"
    cached = [p for p in (data_dir / "code").rglob(secret_file)]
    assert cached, "the other function's code is unpacked on the host"
    host_paths = [str(data_dir), str(data_dir / "code"), str(cached[0].parent), str(data_dir / "firebox.db"),
                  str(Path.home()), "/work", "/root"]

    snoop = python_function(lam, SNOOP_SOURCE, prefix="isosnoop")
    seen = ok_json(invoke(lam, snoop, {"secret_file": secret_file, "secret_tmp": secret_tmp,
                                       "host_paths": host_paths}))
    own = {"app.py", "__pycache__"}
    assert set(seen["task"]) <= own, f"/var/task shows only the function's own files: {seen['task']}"
    assert secret_tmp not in seen["tmp"], seen["tmp"]
    assert seen["found"] == [], f"the other function's files are visible at {seen['found']}"
    for path in host_paths:
        assert seen[path]["exists"] is False, (path, seen[path])


def test_cannot_write_var_task(lam: Any, isolated_backend: FireboxServer, healthy: None) -> None:
    name = python_function(lam, """
        import os

        def handler(event, context):
            seen = {}
            for path, mode in (("/var/task/new_file.txt", "w"), ("/var/task/app.py", "a"),
                               ("/var/runtime/new_file", "w"), ("/usr/bin/evil", "w"), ("/etc/passwd", "a")):
                try:
                    with open(path, mode) as f:
                        f.write("TAMPER" + "ED-BY-THE-SANDBOX\\n")
                    seen[path] = "WROTE"
                except OSError as exc:
                    seen[path] = type(exc).__name__ + ":" + str(exc.errno)
            try:
                os.chmod("/var/task/app.py", 0o777)
                seen["chmod"] = "CHANGED"
            except OSError as exc:
                seen["chmod"] = type(exc).__name__
            with open("/tmp/ok.txt", "w") as f:  # /tmp is the writable place
                f.write("fine")
            seen["tmp"] = open("/tmp/ok.txt").read()
            return seen
    """, prefix="isowrite")
    seen = ok_json(invoke(lam, name, {}))
    for path in ("/var/task/new_file.txt", "/var/task/app.py", "/var/runtime/new_file", "/usr/bin/evil", "/etc/passwd"):
        assert seen[path] != "WROTE", (path, seen)
        assert seen[path].split(":")[0] in ("OSError", "PermissionError", "FileNotFoundError"), (path, seen[path])
    assert seen["chmod"] != "CHANGED"
    assert seen["tmp"] == "fine"
    # and the host's copy is untouched
    for app in (isolated_backend.data_dir / "code").rglob("app.py"):
        assert "TAMPERED-BY-THE-SANDBOX" not in app.read_text(errors="replace"), app


CONNECT_SOURCE = """
import socket


def handler(event, context):
    seen = {}
    for label, host, port in event["targets"]:
        try:
            with socket.create_connection((host, port), timeout=2) as s:
                s.sendall(b"GET /health HTTP/1.0\\r\\n\\r\\n")
                seen[label] = "CONNECTED: " + s.recv(100).decode(errors="replace")
        except OSError as exc:
            seen[label] = type(exc).__name__ + ": " + str(exc)
    return seen
"""


def _host_addresses() -> list[str]:
    """The host's own non-loopback IPv4 addresses (to try the platform through them too)."""
    try:
        out = subprocess.run(["hostname", "-I"], capture_output=True, text=True, timeout=5).stdout
    except OSError:
        return []
    return [a for a in out.split() if "." in a and not a.startswith("127.")]


def test_cannot_reach_platform_port_or_other_loopback_services(lam: Any, isolated_backend: FireboxServer,
                                                               healthy: None) -> None:
    accepted: list[Any] = []
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    listener.settimeout(0.2)
    stop = threading.Event()

    def accept() -> None:
        while not stop.is_set():
            try:
                conn, peer = listener.accept()
            except OSError:
                continue
            accepted.append(peer)
            conn.sendall(b"HOST SECRET SERVICE\n")
            conn.close()

    thread = threading.Thread(target=accept, name="loopback-service", daemon=True)
    thread.start()
    try:
        service_port = listener.getsockname()[1]
        with socket.create_connection(("127.0.0.1", service_port), timeout=2) as s:  # the service works
            assert s.recv(100).startswith(b"HOST SECRET")
        accepted.clear()
        platform_port = _port(isolated_backend)
        targets = [("platform", "127.0.0.1", platform_port), ("service", "127.0.0.1", service_port),
                   ("platform-localhost", "localhost", platform_port)]
        targets += [(f"platform-{a}", a, platform_port) for a in _host_addresses()]
        targets += [(f"service-{a}", a, service_port) for a in _host_addresses()]
        name = python_function(lam, CONNECT_SOURCE, prefix="isonet", Timeout=20)
        seen = ok_json(invoke(lam, name, {"targets": targets}))
    finally:
        stop.set()
        thread.join(5)
        listener.close()
    for label, _, _ in targets:
        assert not seen[label].startswith("CONNECTED"), (label, seen[label])
    assert accepted == [], f"the host's loopback service accepted connections from the sandbox: {accepted}"


def test_cannot_see_or_signal_host_processes(lam: Any, isolated_backend: FireboxServer, healthy: None) -> None:
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"], stdin=subprocess.DEVNULL)
    try:
        name = python_function(lam, """
            import os
            import signal

            def handler(event, context):
                pids = sorted(int(p) for p in os.listdir("/proc") if p.isdigit())
                cmdlines = {}
                for pid in pids:
                    try:
                        with open("/proc/%d/cmdline" % pid, "rb") as f:
                            cmdlines[pid] = f.read().replace(b"\\0", b" ").decode(errors="replace")[:200]
                    except OSError as exc:
                        cmdlines[pid] = type(exc).__name__
                signals = {}
                for label, pid, sig in (("server", event["server_pid"], 0), ("server-term", event["server_pid"], signal.SIGTERM),
                                        ("sleeper", event["sleeper_pid"], signal.SIGKILL)):
                    try:
                        os.kill(pid, sig)
                        signals[label] = "SENT"
                    except OSError as exc:
                        signals[label] = type(exc).__name__
                return {"pids": pids, "cmdlines": cmdlines, "signals": signals, "me": os.getpid()}
        """, prefix="isoproc")
        seen = ok_json(invoke(lam, name, {"server_pid": isolated_backend.process.pid, "sleeper_pid": sleeper.pid}))
        assert len(seen["pids"]) <= 4, f"/proc shows only the sandbox's own few processes: {seen['cmdlines']}"
        assert all(pid < 100 for pid in seen["pids"]), seen["pids"]
        assert not any("firebox" in cmd and "serve" in cmd for cmd in seen["cmdlines"].values()), seen["cmdlines"]
        assert not any("time.sleep(120)" in cmd for cmd in seen["cmdlines"].values()), seen["cmdlines"]
        for label in ("server", "server-term", "sleeper"):
            assert seen["signals"][label] in ("ProcessLookupError", "PermissionError"), seen["signals"]
        assert sleeper.poll() is None, "the host process survived"
        assert isolated_backend.alive
    finally:
        sleeper.kill()
        sleeper.wait(10)


FORK_BOMB = """
import os
import time


def handler(event, context):
    made, error = 0, None
    while made < event["limit"]:
        try:
            pid = os.fork()
        except OSError as exc:
            error = type(exc).__name__ + ": " + str(exc)
            break
        if pid == 0:
            try:
                if event.get("exec"):
                    os.execv("/usr/bin/sleep", ["sleep", "60"])
                time.sleep(60)
            finally:
                os._exit(0)
        made += 1
    return {"made": made, "error": error}
"""


def test_fork_bomb_is_bounded(lam: Any, isolated_backend: FireboxServer, healthy: None) -> None:
    """A fork bomb at MemorySize 128 ends within the sandbox's limits (out of memory, the process
    limit or the timeout), cleanly; with the memory to spare (1024 MB, light children), the
    process limit itself stops it (Lambda allows 1024 processes/threads per environment)."""
    name = python_function(lam, FORK_BOMB, prefix="isofork", MemorySize=128, Timeout=20)
    result = invoke(lam, name, {"limit": 100_000}, LogType="Tail")
    if result.function_error is None:
        seen = result.json()
        assert seen["error"] is not None and seen["made"] <= 1024, f"forking must hit a bound: {seen}"
    else:  # ended as a Lambda error: out of memory or timeout
        body = result.json()
        assert body["errorType"] in ("Runtime.ExitError", "Sandbox.Timedout"), body
        # the sandbox was discarded with all its processes: a fresh one serves the next invoke
        assert ok_json(invoke(lam, name, {"limit": 2})) == {"made": 2, "error": None}

    light = python_function(lam, FORK_BOMB, prefix="isoforkpids", MemorySize=1024, Timeout=30)
    seen = ok_json(invoke(lam, light, {"limit": 100_000, "exec": True}))
    assert seen["error"] is not None and seen["error"].startswith("BlockingIOError"), seen
    assert 0 < seen["made"] <= 1024, seen
    lam.delete_function(FunctionName=light)  # retires the sandbox and its 1000 sleepers
    lam.delete_function(FunctionName=name)


def test_open_files_are_bounded(lam: Any, healthy: None) -> None:
    name = python_function(lam, """
        import errno

        def handler(event, context):
            handles, error = [], None
            try:
                while len(handles) < 1_000_000:
                    handles.append(open("/dev/null"))
            except OSError as exc:
                error = exc.errno
            count = len(handles)
            for h in handles:
                h.close()
            return {"opened": count, "errno": error, "EMFILE": errno.EMFILE}
    """, prefix="isofiles")
    seen = ok_json(invoke(lam, name, {}))
    assert seen["errno"] == seen["EMFILE"], seen
    assert 0 < seen["opened"] < 100_000, seen
    assert ok_json(invoke(lam, name, {}))["errno"] == seen["EMFILE"], "the sandbox serves on after EMFILE"


TMP_FILL = """
import errno
import os


def handler(event, context):
    chunk = b"\\x01" * (16 * 1024 * 1024)
    written, error, error_name = 0, None, None
    path = "/tmp/fill.bin"
    try:
        with open(path, "wb", buffering=0) as f:
            while written < event["target"]:
                n = f.write(chunk)
                written += n
    except OSError as exc:
        error, error_name = exc.errno, errno.errorcode.get(exc.errno)
    size = os.path.getsize(path) if os.path.exists(path) else None
    statvfs = os.statvfs("/tmp")
    try:
        os.remove(path)
    except OSError:
        pass
    return {"written": written, "size": size, "errno": error, "error": error_name,
            "tmp_total": statvfs.f_blocks * statvfs.f_frsize}
"""


def test_tmp_is_bounded_by_ephemeral_storage(lam: Any, isolated_backend: FireboxServer, healthy: None) -> None:
    """600 MB into a 512 MB /tmp: the write fails with ENOSPC (the disk is full, as on Lambda).
    /tmp is a tmpfs charged to the memory cgroup here, so MemorySize is 1024 to let /tmp fill first."""
    name = python_function(lam, TMP_FILL, prefix="isotmp", MemorySize=1024, Timeout=60,
                           EphemeralStorage={"Size": 512})
    result = invoke(lam, name, {"target": 600 * 1024 * 1024}, LogType="Tail")
    seen = ok_json(result)
    limit = 512 * 1024 * 1024
    assert seen["tmp_total"] <= limit, seen
    assert seen["written"] <= limit, f"wrote past EphemeralStorage: {seen}"
    assert seen["error"] == "ENOSPC", f"expected ENOSPC when /tmp is full, observed: {seen}"
    # /tmp was emptied by the function: the sandbox is fine for another round.
    again = ok_json(invoke(lam, name, {"target": 32 * 1024 * 1024}))
    assert again["error"] is None and again["written"] == 32 * 1024 * 1024, again


ENV_PROBE = """
import os


def handler(event, context):
    environs = {}
    for pid in [p for p in os.listdir("/proc") if p.isdigit()] + ["self", "1"]:
        try:
            with open("/proc/%s/environ" % pid, "rb") as f:
                environs[pid] = f.read().decode(errors="replace")
        except OSError as exc:
            environs[pid] = "<" + type(exc).__name__ + ">"
    try:
        with open("/proc/1/cmdline", "rb") as f:
            cmdline = f.read().decode(errors="replace")
    except OSError as exc:
        cmdline = "<" + type(exc).__name__ + ">"
    return {"env": dict(os.environ), "environs": environs, "cmdline1": cmdline}
"""

# What a Lambda sandbox may show (LAMBDA.md's variables, what AWS's runtimes and the OS add,
# Firebox's documented runtime contract variable).
ALLOWED_VARIABLES = {
    "AWS_LAMBDA_FUNCTION_NAME", "AWS_LAMBDA_FUNCTION_VERSION", "AWS_LAMBDA_FUNCTION_MEMORY_SIZE",
    "AWS_LAMBDA_LOG_GROUP_NAME", "AWS_LAMBDA_LOG_STREAM_NAME", "AWS_LAMBDA_RUNTIME_API",
    "AWS_LAMBDA_INITIALIZATION_TYPE", "_HANDLER", "LAMBDA_TASK_ROOT", "LAMBDA_RUNTIME_DIR", "AWS_REGION",
    "AWS_DEFAULT_REGION", "AWS_EXECUTION_ENV", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN",
    "TZ", "_X_AMZN_TRACE_ID", "AWS_LAMBDA_LOG_FORMAT", "AWS_LAMBDA_LOG_LEVEL", "AWS_XRAY_CONTEXT_MISSING",
    "AWS_XRAY_DAEMON_ADDRESS", "_AWS_XRAY_DAEMON_ADDRESS", "_AWS_XRAY_DAEMON_PORT",
    "LANG", "PATH", "LD_LIBRARY_PATH", "PWD", "SHLVL", "LC_CTYPE", "PYTHONPATH", "NODE_PATH",
    "FIREBOX_RUNTIME_LIBS",
}


def test_no_platform_environment_leaks(server_factory: Any) -> None:
    secret = f"s3cr3t-{uuid.uuid4().hex}"
    server = server_factory(env={"FIREBOX_TEST_SECRET": secret, "PLATFORM_DB_PASSWORD": secret + "-db"})
    client = server.client()
    name = unique_name("isoenv")
    create_active(client, name, zip_bytes=make_zip({"app.py": ENV_PROBE}),
                  Environment={"Variables": {"FUNCTION_OWN": "mine"}}, Timeout=10)
    seen = ok_json(invoke(client, name, {}))
    env = seen["env"]
    assert env.get("FUNCTION_OWN") == "mine"
    assert "FIREBOX_TEST_SECRET" not in env and "PLATFORM_DB_PASSWORD" not in env, env
    assert all(secret not in value for value in env.values()), env
    unexpected = set(env) - ALLOWED_VARIABLES - {"FUNCTION_OWN"}
    assert not unexpected, f"variables that are neither Lambda's nor the function's: {sorted(unexpected)}"
    for pid, text in seen["environs"].items():
        assert secret not in text, f"/proc/{pid}/environ shows the platform's secret"
        assert "FIREBOX_TEST_SECRET" not in text, f"/proc/{pid}/environ: {text[:300]}"
    assert "1" in seen["environs"]
    assert secret not in seen["cmdline1"] and str(server.data_dir) not in seen["cmdline1"], seen["cmdline1"]
    assert server.http("GET", "/health").status == 200


def test_unprivileged_uid_and_no_capabilities(lam: Any, healthy: None) -> None:
    name = python_function(lam, """
        import ctypes
        import os

        LIBC = ctypes.CDLL(None, use_errno=True)
        CLONE_NEWUSER, CLONE_NEWNS, CLONE_NEWNET = 0x10000000, 0x00020000, 0x40000000


        def libc(name, *args):
            if getattr(LIBC, name)(*args) != 0:
                err = ctypes.get_errno()
                raise OSError(err, os.strerror(err))


        def handler(event, context):
            status = {}
            with open("/proc/self/status") as f:
                for line in f:
                    key, _, value = line.partition(":")
                    status[key] = value.strip()
            attempts = {}
            for label, call in (("setuid0", lambda: os.setuid(0)), ("setgid0", lambda: os.setgid(0)),
                                ("chroot", lambda: os.chroot("/tmp")),
                                ("unshare_user", lambda: libc("unshare", CLONE_NEWUSER)),
                                ("unshare_mount", lambda: libc("unshare", CLONE_NEWNS)),
                                ("unshare_net", lambda: libc("unshare", CLONE_NEWNET)),
                                ("sethostname", lambda: libc("sethostname", b"evil", 4)),
                                ("mount_tmpfs", lambda: libc("mount", b"none", b"/tmp", b"tmpfs", 0, None))):
                try:
                    call()
                    attempts[label] = "SUCCEEDED"
                except Exception as exc:
                    attempts[label] = type(exc).__name__ + ": " + str(exc)
            return {"uid": os.getuid(), "euid": os.geteuid(), "gid": os.getgid(), "egid": os.getegid(),
                    "groups": os.getgroups(), "status": status, "attempts": attempts}
    """, prefix="isocaps")
    seen = ok_json(invoke(lam, name, {}))
    assert 0 not in (seen["uid"], seen["euid"], seen["gid"], seen["egid"]), seen
    assert 0 not in seen["groups"], seen["groups"]
    status = seen["status"]
    for cap in ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"):
        assert int(status[cap], 16) == 0, f"{cap} = {status[cap]}"
    assert status.get("NoNewPrivs") == "1", status.get("NoNewPrivs")
    assert status.get("Seccomp") == "2", f"a seccomp filter is on: {status.get('Seccomp')}"
    for label, outcome in seen["attempts"].items():
        assert outcome != "SUCCEEDED", (label, seen["attempts"])


SCHED_BATCH = 3  # <sched.h>; field 41 of /proc/<pid>/stat


def test_sandboxes_never_preempt_the_platform_when_woken(lam: Any, healthy: None) -> None:
    """Every process of a sandbox, and what it starts, runs under SCHED_BATCH (see
    `backends/_common.py:yield_to_platform`): the Python runtime forked from a zygote, and
    the Node.js one started by bubblewrap."""
    python = python_function(lam, """
        import subprocess


        def policy(stat):
            return int(stat.rpartition(")")[2].split()[38])


        def handler(event, context):
            with open("/proc/self/stat") as f:
                own = policy(f.read())
            child = policy(subprocess.run(["cat", "/proc/self/stat"], capture_output=True, text=True).stdout)
            return {"own": own, "child": child}
    """, prefix="isosched")
    node = node_function(lam, {"index.js": """
        const fs = require("fs");
        const { execFileSync } = require("child_process");
        const policy = (stat) => Number(stat.slice(stat.lastIndexOf(")") + 1).trim().split(" ")[38]);
        exports.handler = async () => ({
            own: policy(fs.readFileSync("/proc/self/stat", "utf8")),
            child: policy(execFileSync("cat", ["/proc/self/stat"], { encoding: "utf8" })),
        });
    """}, prefix="isosched")
    for name in (python, node):
        assert ok_json(invoke(lam, name, {})) == {"own": SCHED_BATCH, "child": SCHED_BATCH}, name


def test_memory_limit_holds_and_platform_survives(lam: Any, healthy: None) -> None:
    """Exceeding MemorySize ends the invocation (Runtime.ExitError), never the platform."""
    name = python_function(lam, """
        def handler(event, context):
            hog = [b"\\x02" * (32 * 1024 * 1024) for _ in range(20)]
            return len(hog)
    """, prefix="isomem", MemorySize=128, Timeout=20)
    body = failed(invoke(lam, name, {}), "Runtime.ExitError")
    assert "signal: killed" in body["errorMessage"], body
