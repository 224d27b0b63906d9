"""The isolated (bubblewrap) backend, with real sandboxes: every isolation promise of ANATOMY.md
section 3.7 that this layer owns, checked from inside by the agent (sandbox_helpers.py)."""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from firebox.worker.backends import IsolatedBackend, ProcessBackend, choose_backend
from firebox.worker.backends._common import pids_of_uid
from sandbox_helpers import TEST_UIDS, Agent, accept, describe, make_spec, run, world_dir

pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="the isolated backend needs root (netns, uid drop, cgroups)"),
    pytest.mark.skipif(shutil.which("bwrap") is None, reason="bubblewrap (bwrap) is not installed"),
]

SECRET = "FIREBOX_SECRET"


@pytest.fixture(scope="module")
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    loop = asyncio.new_event_loop()
    yield loop
    loop.close()


@pytest.fixture(scope="module")
def backend(loop: asyncio.AbstractEventLoop) -> Iterator[IsolatedBackend]:
    backend = IsolatedBackend(uid_range=TEST_UIDS)
    problem = backend.probe()
    assert problem is None, problem
    yield backend
    run(loop, backend.close())
    assert not backend.state_dir.exists()


@pytest.fixture(scope="module")
def runtime_is_pid_1() -> bool:
    """bubblewrap runs its own init as pid 1 and the command as pid 2 (the zygote backend's
    test module overrides this)."""
    return False


@pytest.fixture(scope="module")
def code() -> Iterator[Path]:
    files = {
        "oom.py": "data = b'x' * (300 * 1024 * 1024)\nprint('survived')\n",
        "forkbomb.py": FORK_BOMB,
        "exit3.py": "import sys\nsys.exit(3)\n",
    }
    with world_dir(files) as path:
        yield path


FORK_BOMB = r'''
import os, socket, time
host, port = os.environ["AWS_LAMBDA_RUNTIME_API"].rsplit(":", 1)
conn = socket.create_connection((host, int(port)))
count = 0
while count < 500:
    try:
        pid = os.fork()
    except OSError:
        break
    if pid == 0:
        time.sleep(3600)
        os._exit(0)
    count += 1
conn.sendall(f"{count}\n".encode())
time.sleep(3600)
'''


@pytest.fixture(scope="module")
def agent(loop: asyncio.AbstractEventLoop, backend: IsolatedBackend, code: Path) -> Iterator[Agent]:
    os.environ[SECRET] = "must-not-leak"
    try:
        agent = run(loop, Agent.start(backend, make_spec(code)))
    finally:
        del os.environ[SECRET]
    yield agent
    run(loop, agent.close())


def test_reaches_the_runtime_api_through_its_variable(loop, agent: Agent) -> None:
    assert agent.sandbox.runtime_api_address == "127.0.0.1:9001"
    assert run(loop, agent.run("import os; result = os.environ['AWS_LAMBDA_RUNTIME_API']")) == "127.0.0.1:9001"
    # bytes both ways on the accepted connection
    assert run(loop, agent.run("result = 'x' * 100000")) == "x" * 100000


def test_only_loopback_exists_and_host_services_are_unreachable(loop, agent: Agent) -> None:
    host_server = socket.create_server(("127.0.0.1", 0))
    port = host_server.getsockname()[1]
    try:
        answer = run(loop, agent.ask(f"import socket; socket.create_connection(('127.0.0.1', {port}), timeout=2)"))
        assert not answer["ok"] and "ConnectionRefused" in answer["error"]
        assert run(loop, agent.run("import socket; result = socket.if_nameindex()")) == [[1, "lo"]]
        # nothing but the platform's listener on the sandbox's loopback
        listening = run(loop, agent.run("result = open('/proc/net/tcp').read().split('\\n')[1:]"))
        assert [line.split()[1] for line in listening if line.strip() and line.split()[3] == "0A"] == ["0100007F:2329"]
    finally:
        host_server.close()


def test_filesystem_is_read_only_minimal_and_sized(loop, agent: Agent, code: Path) -> None:
    result = run(loop, agent.run(r"""
import errno, os
def attempt(action):
    try:
        action()
        return "ok"
    except OSError as exc:
        return errno.errorcode[exc.errno]
def write(path, size=1):
    with open(path, "wb") as f:
        f.write(b"x" * size)
result = {
    "shadow": attempt(lambda: open("/etc/shadow").read()),
    "root": attempt(lambda: os.listdir("/root")),
    "home": attempt(lambda: os.listdir("/home")),
    "host_code_dir": attempt(lambda: os.listdir(HOST)),
    "task_write": attempt(lambda: write("/var/task/new.txt")),
    "task_modify": attempt(lambda: write("/var/task/agent.py")),
    "runtime_write": attempt(lambda: write("/var/runtime/new.txt")),
    "root_write": attempt(lambda: write("/new.txt")),
    "usr_write": attempt(lambda: write("/usr/new.txt")),
    "etc_write": attempt(lambda: write("/etc/passwd")),
    "tmp_write": attempt(lambda: write("/tmp/small", 1024 * 1024)),
    "tmp_too_big": attempt(lambda: write("/tmp/big", 20 * 1024 * 1024)),
    "etc": sorted(os.listdir("/etc")),
    "passwd": open("/etc/passwd").read(),
    "cwd": os.getcwd(),
    "ssl": os.path.isdir("/etc/ssl/certs"),
}
""".replace("HOST", repr(str(code)))))
    assert result["shadow"] == "ENOENT"
    assert result["root"] == "ENOENT"
    assert result["home"] == "ENOENT"
    assert result["host_code_dir"] == "ENOENT"
    for key in ("task_write", "task_modify", "runtime_write", "root_write", "usr_write", "etc_write"):
        assert result[key] == "EROFS", (key, result[key])
    assert result["tmp_write"] == "ok"
    assert result["tmp_too_big"] in ("ENOSPC", "EFBIG"), result["tmp_too_big"]
    assert "shadow" not in result["etc"] and "gshadow" not in result["etc"]
    assert "sbx_user1051:x:993:990:" in result["passwd"]
    assert result["cwd"] == "/var/task"
    assert result["ssl"]


def test_dev_is_minimal_with_ptys_of_its_own(loop, agent: Agent) -> None:
    listing, tty = run(loop, agent.run(
        "import os; m, s = os.openpty(); result = (sorted(os.listdir('/dev')), os.ttyname(s)); os.close(m); os.close(s)"))
    assert listing == ["core", "fd", "full", "null", "ptmx", "pts", "random", "shm", "stderr", "stdin", "stdout",
                       "tty", "urandom", "zero"]
    assert tty == "/dev/pts/0"  # a devpts instance of its own: no other sandbox's ptys


def test_unprivileged_identity_no_capabilities_no_new_privs_seccomp(loop, agent: Agent) -> None:
    status = run(loop, agent.run(
        "result = dict(l.split(':\\t', 1) for l in open('/proc/self/status').read().splitlines() if ':\\t' in l)"
    ))
    assert status["Uid"].split()[0] == "993" and status["Gid"].split()[0] == "990"
    for key in ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"):
        assert int(status[key], 16) == 0, (key, status[key])
    assert status["NoNewPrivs"] == "1"
    assert status["Seccomp"] == "2"
    # the host uid behind 993 is the sandbox's own, never root
    host_uid = os.stat(f"/proc/{agent.sandbox.pid}").st_uid
    assert host_uid in TEST_UIDS


def test_denied_syscalls_fail_with_eperm(loop, agent: Agent) -> None:
    result = run(loop, agent.run(r"""
import ctypes, errno, os
libc = ctypes.CDLL(None, use_errno=True)
def call(fn, *args):
    ctypes.set_errno(0)
    rc = fn(*args)
    return rc, errno.errorcode.get(ctypes.get_errno(), ctypes.get_errno())
result = {
    # unshare(0) is a no-op that succeeds without the filter; setns(-1) would be EBADF
    "unshare": call(libc.unshare, 0),
    "setns": call(libc.setns, -1, 0),
    "mount": call(libc.mount, b"none", b"/tmp", b"tmpfs", 0, None),
    "ptrace": call(libc.ptrace, 0, 0, None, None),
    "bpf": call(libc.syscall, 321, 0, None, 0),
    "personality": call(libc.personality, 0xFFFFFFFF),
}
"""))
    for name in ("unshare", "setns", "mount", "ptrace", "bpf"):
        assert result[name] == [-1, "EPERM"], (name, result[name])
    assert result["personality"][0] >= 0  # allowed


def test_sees_only_its_own_processes_and_nothing_of_the_platform(loop, agent: Agent, runtime_is_pid_1: bool) -> None:
    result = run(loop, agent.run(r"""
import os
pids = sorted(int(p) for p in os.listdir("/proc") if p.isdigit())
def read(path):
    try:
        with open(path, "rb") as f:
            return f.read().decode(errors="replace")
    except OSError as exc:
        return f"<{type(exc).__name__}>"
try:
    os.kill(HOST_PID, 0)
    signal_host = "delivered"
except ProcessLookupError:
    signal_host = "ESRCH"
except PermissionError:
    signal_host = "EPERM"
result = {
    "pids": pids, "self": os.getpid(),
    "env1": read("/proc/1/environ"), "cmdline1": read("/proc/1/cmdline"),
    "envself": read("/proc/self/environ"), "environ": dict(os.environ),
    "signal_host": signal_host, "hostname": os.uname().nodename,
    "fds": {fd: os.readlink(f"/proc/self/fd/{fd}") for fd in os.listdir("/proc/self/fd") if os.path.exists(f"/proc/self/fd/{fd}")},
}
""".replace("HOST_PID", str(os.getpid()))))
    assert result["pids"] == ([1] if runtime_is_pid_1 else [1, result["self"]]), result["pids"]
    assert result["signal_host"] == "ESRCH"
    for text in (result["env1"], result["envself"], result["cmdline1"]):
        assert SECRET not in text and "must-not-leak" not in text
    assert "/tmp/firebox" not in result["cmdline1"]  # no host paths: options came through a memfd
    spec_env = dict(agent.sandbox.spec.environment)
    assert result["environ"] == {**spec_env, "AWS_LAMBDA_RUNTIME_API": "127.0.0.1:9001", "PWD": "/var/task"}
    assert result["hostname"].startswith("169.254.")
    # only stdio and the agent's own socket: no fd leaked from the platform or bwrap
    leaked = {fd: target for fd, target in result["fds"].items()
              if int(fd) > 2 and not target.startswith("socket:")}
    assert all(target.startswith("/proc/") for target in leaked.values()), leaked


def test_memory_peak_is_plausible_and_resets(loop, agent: Agent) -> None:
    sandbox = agent.sandbox
    run(loop, agent.run("result = len(b'x' * (64 * 1024 * 1024))"))  # freed right after
    peak = sandbox.memory_peak_bytes()
    assert peak is not None and peak > 64 * 1024 * 1024, peak
    sandbox.reset_memory_peak()
    run(loop, agent.run("result = 1"))
    after = sandbox.memory_peak_bytes()
    assert after is not None and 5 * 1024 * 1024 < after < 48 * 1024 * 1024, after
    # take_memory_peak (what each invocation's REPORT uses): the peak, then a new measurement.
    run(loop, agent.run("result = len(b'x' * (64 * 1024 * 1024))"))
    taken = sandbox.take_memory_peak()
    assert taken is not None and taken > 64 * 1024 * 1024, taken
    run(loop, agent.run("result = 1"))
    after = sandbox.take_memory_peak()
    assert after is not None and 5 * 1024 * 1024 < after < 48 * 1024 * 1024, after
    assert sandbox.oom_kills() == 0


def test_memory_limit_oom_kills(loop, backend: IsolatedBackend, code: Path) -> None:
    async def main() -> None:
        sandbox = await backend.spawn(make_spec(code, "oom.py", memory_mb=128))
        try:
            status = await asyncio.wait_for(sandbox.wait(), 30)
            output = await sandbox.stdout.read()
            assert status == -9, (status, output, await sandbox.stderr.read())
            assert b"survived" not in output
            assert sandbox.oom_kills() >= 1
        finally:
            await sandbox.cleanup()

    run(loop, main())


def test_fork_bomb_is_bounded_and_killed(loop, backend: IsolatedBackend, code: Path) -> None:
    async def main() -> None:
        spec = make_spec(code, "forkbomb.py", max_processes=50)
        sandbox = await backend.spawn(spec)
        uid = os.stat(f"/proc/{sandbox.pid}").st_uid
        try:
            conn = await accept(sandbox)
            data = b""
            while not data.endswith(b"\n"):
                chunk = await asyncio.wait_for(asyncio.get_running_loop().sock_recv(conn, 64), 20)
                assert chunk, "the fork bomb closed the connection early"
                data += chunk
            conn.close()
            forked = int(data)
            assert 0 < forked < 50, forked
            assert len(pids_of_uid(uid)) >= forked
            sandbox.kill()
            assert await asyncio.wait_for(sandbox.wait(), 10) == -9
        finally:
            await sandbox.cleanup()
        assert pids_of_uid(uid) == []
        assert all(not d.exists() for d in sandbox.cgroup.dirs)

    run(loop, main())


def test_kill_ends_everything_and_cleanup_is_idempotent(loop, backend: IsolatedBackend, code: Path,
                                                        runtime_is_pid_1: bool) -> None:
    async def main() -> None:
        agent = await Agent.start(backend, make_spec(code))
        sandbox = agent.sandbox
        await agent.run("import subprocess; subprocess.Popen(['/usr/bin/sleep', '3600'], start_new_session=True); result = 1")
        uid = os.stat(f"/proc/{sandbox.pid}").st_uid
        # bwrap, its init, the agent, sleep (forked from a zygote: the agent, sleep)
        assert len(pids_of_uid(uid)) >= (2 if runtime_is_pid_1 else 3)
        dirs = sandbox.cgroup.dirs
        assert all(d.is_dir() for d in dirs)
        sandbox.kill()
        assert await asyncio.wait_for(sandbox.wait(), 10) == -9
        sandbox.kill()  # idempotent, safe after exit
        await sandbox.cleanup()
        await sandbox.cleanup()
        assert pids_of_uid(uid) == [], describe(pids_of_uid(uid))
        assert not any(d.exists() for d in dirs)
        assert sandbox.runtime_api.fileno() == -1
        assert sandbox.memory_peak_bytes() is None
        agent.conn.close()

    run(loop, main())
    stats = backend.statistics()
    assert stats["uids_in_use"] == stats["live"]


def test_exit_status_is_reported(loop, backend: IsolatedBackend, code: Path) -> None:
    async def main() -> None:
        sandbox = await backend.spawn(make_spec(code, "exit3.py"))
        try:
            assert await asyncio.wait_for(sandbox.wait(), 20) == 3
        finally:
            await sandbox.cleanup()

    run(loop, main())


def test_cleanup_of_a_running_sandbox_kills_it(loop, backend: IsolatedBackend, code: Path) -> None:
    async def main() -> None:
        sandbox = await backend.spawn(make_spec(code, "forkbomb.py", max_processes=20))
        uid = os.stat(f"/proc/{sandbox.pid}").st_uid
        started = time.monotonic()
        await sandbox.cleanup()
        assert time.monotonic() - started < 5
        assert pids_of_uid(uid) == []

    run(loop, main())


def test_choose_backend(tmp_path: Path) -> None:
    chosen = choose_backend(uid_range=TEST_UIDS)
    try:
        assert isinstance(chosen, IsolatedBackend) and chosen.isolated
        assert chosen.reason.startswith("isolated: bubblewrap")
    finally:
        asyncio.run(chosen.close())
    forced = choose_backend("process", uid_range=TEST_UIDS)
    try:
        assert isinstance(forced, ProcessBackend) and not forced.isolated
        assert "WARNING: NO ISOLATION" in forced.reason
    finally:
        asyncio.run(forced.close())
    with pytest.raises(ValueError):
        choose_backend("docker")


def test_no_fd_leak_and_protocols(loop, backend: IsolatedBackend, code: Path) -> None:
    from firebox.worker.sandbox_api import SandboxBackend, SandboxProcess

    assert isinstance(backend, SandboxBackend)

    async def cycle() -> None:
        agent = await Agent.start(backend, make_spec(code))
        assert isinstance(agent.sandbox, SandboxProcess)
        await agent.close()

    run(loop, cycle())  # warm-up: lazily created loop resources
    before = sorted(os.listdir("/proc/self/fd"))
    for _ in range(3):
        run(loop, cycle())
    assert sorted(os.listdir("/proc/self/fd")) == before


def test_without_cgroups_the_sandbox_runs_and_says_what_is_missing(loop, code: Path) -> None:
    backend = IsolatedBackend(uid_range=range(63200, 63210), use_cgroups=False)
    try:
        assert "WARNING" in backend.reason and "NOT enforced" in backend.reason

        async def main() -> None:
            agent = await Agent.start(backend, make_spec(code))
            try:
                assert agent.sandbox.memory_peak_bytes() is None
                assert agent.sandbox.oom_kills() == 0
                assert await agent.run("import os; result = os.getuid()") == 993
            finally:
                await agent.close()

        run(loop, main())
    finally:
        run(loop, backend.close())


def test_start_failures_are_clear(loop, backend: IsolatedBackend, code: Path) -> None:
    async def main() -> None:
        with pytest.raises(FileNotFoundError):
            await backend.spawn(make_spec(code, runtime_dir=code / "missing"))
        sandbox = await backend.spawn(make_spec(code, command=("/var/task/no-such-binary",)))
        try:
            assert await asyncio.wait_for(sandbox.wait(), 20) == 1
            assert b"no-such-binary" in await sandbox.stderr.read()
        finally:
            await sandbox.cleanup()

    before = backend.statistics()["uids_in_use"]
    run(loop, main())
    assert backend.statistics()["uids_in_use"] == before


def test_code_under_a_private_directory_is_bound_without_leaking_mounts(loop, backend: IsolatedBackend,
                                                                         tmp_path: Path) -> None:
    # pytest's tmp_path lives under a 0700 directory, like a data dir in a home directory
    private = tmp_path / "data" / "code"
    private.mkdir(parents=True)
    os.chmod(tmp_path / "data", 0o700)
    os.chmod(private, 0o755)
    (private / "agent.py").write_text(__import__("sandbox_helpers").AGENT)
    (private / "agent.py").chmod(0o644)
    mounts_before = Path("/proc/self/mountinfo").read_text()

    async def main() -> None:
        agent = await Agent.start(backend, make_spec(private))
        try:
            assert await agent.run("import os; result = sorted(os.listdir('/var/task'))") == ["agent.py"]
        finally:
            await agent.close()

    run(loop, main())
    assert Path("/proc/self/mountinfo").read_text() == mounts_before


def _test_uid_pids() -> list[int]:
    """Live processes owned by any uid of the test range (one /proc scan)."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if os.stat(f"/proc/{entry}").st_uid in TEST_UIDS:
                    found.append(int(entry))
            except OSError:
                pass
    return found


@pytest.mark.parametrize("turns", [0, 1, 2, 3, 5, 8, 13, 21])
def test_a_cancelled_spawn_leaves_nothing_behind(loop: asyncio.AbstractEventLoop, backend: IsolatedBackend,
                                                 code: Path, turns: int) -> None:
    """Cancelled at any point of its start (after `turns` turns of the event loop), a spawn
    raises CancelledError promptly, and no process, uid or live sandbox of it is left."""

    async def scenario() -> None:
        before, stats_before = set(_test_uid_pids()), backend.statistics()  # other tests' sandboxes
        spawning = asyncio.ensure_future(backend.spawn(make_spec(code, "exit3.py")))
        for _ in range(turns):
            await asyncio.sleep(0)
        spawning.cancel()
        done, _ = await asyncio.wait({spawning}, timeout=20)
        assert spawning in done, "the cancelled spawn hung"
        if not spawning.cancelled():  # it had finished before the cancel landed: stop it
            sandbox = spawning.result()
            sandbox.kill()
            await sandbox.wait()
            await sandbox.cleanup()
        deadline = time.monotonic() + 10
        while left := set(_test_uid_pids()) - before:
            assert time.monotonic() < deadline, describe(sorted(left))
            await asyncio.sleep(0.02)
        stats = backend.statistics()
        assert (stats["live"], stats["uids_in_use"]) == (stats_before["live"], stats_before["uids_in_use"]), stats

    run(loop, scenario())
