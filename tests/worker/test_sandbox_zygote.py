"""The zygote backend: sandboxes forked from a pre-imported interpreter keep every isolation
promise of the bubblewrap backend (the same checks, imported from test_sandbox_isolated.py and
run against this backend), plus what is particular to forking."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sandbox_helpers import PYTHON, TEST_UIDS, Agent, make_spec, run

# Fixtures and checks, run here against zygotes (pytest resolves their fixtures in this module).
from test_sandbox_isolated import (  # noqa: F401, F811
    agent,
    code,
    loop,
    test_a_cancelled_spawn_leaves_nothing_behind,
    test_cleanup_of_a_running_sandbox_kills_it,
    test_code_under_a_private_directory_is_bound_without_leaking_mounts,
    test_denied_syscalls_fail_with_eperm,
    test_dev_is_minimal_with_ptys_of_its_own,
    test_exit_status_is_reported,
    test_filesystem_is_read_only_minimal_and_sized,
    test_fork_bomb_is_bounded_and_killed,
    test_kill_ends_everything_and_cleanup_is_idempotent,
    test_memory_limit_oom_kills,
    test_memory_peak_is_plausible_and_resets,
    test_no_fd_leak_and_protocols,
    test_only_loopback_exists_and_host_services_are_unreachable,
    test_reaches_the_runtime_api_through_its_variable,
    test_sees_only_its_own_processes_and_nothing_of_the_platform,
    test_unprivileged_identity_no_capabilities_no_new_privs_seccomp,
)

from firebox.runtimes.api import RUNTIME_DIR, bootstrap_command, stem_command
from firebox.worker.backends import ZygoteBackend, choose_backend
from firebox.worker.backends._common import pids_of_uid
from firebox.worker.backends.zygote import plan

pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="the isolated backend needs root (netns, uid drop, cgroups)"),
    pytest.mark.skipif(shutil.which("bwrap") is None, reason="bubblewrap (bwrap) is not installed"),
]


@pytest.fixture(scope="module")
def runtime_is_pid_1() -> bool:
    return True


@pytest.fixture(scope="module")
def backend(loop: asyncio.AbstractEventLoop) -> Iterator[ZygoteBackend]:
    backend = ZygoteBackend(uid_range=TEST_UIDS)
    problem = backend.probe()
    assert problem is None, problem
    assert backend.zygote_problem is None, backend.zygote_problem
    yield backend
    forked = backend.statistics()["forked"]
    run(loop, backend.close())
    assert not backend.state_dir.exists()
    assert forked >= 15  # every check above ran in a forked sandbox, not in a bubblewrap fallback


def _spawn_agent(loop: asyncio.AbstractEventLoop, backend: ZygoteBackend, code: Path, **overrides: object) -> Agent:
    before = backend.statistics()["forked"]
    sandbox_agent = run(loop, Agent.start(backend, make_spec(code, **overrides)))
    assert backend.statistics()["forked"] == before + 1, "not forked from a zygote"
    return sandbox_agent


def test_plan_recognises_the_runtime_commands_and_nothing_else(code: Path) -> None:
    bootstrap = make_spec(code, command=tuple(bootstrap_command("python3.11", PYTHON)))
    stem = make_spec(code, command=tuple(stem_command("python3.11", PYTHON, flavour="boto3")))
    assert (plan(bootstrap).kind, plan(bootstrap).key.flavour) == ("bootstrap", "plain")  # type: ignore[union-attr]
    assert (plan(stem).kind, plan(stem).key.flavour) == ("stem", "boto3")  # type: ignore[union-attr]
    assert plan(make_spec(code)).kind == "script"  # type: ignore[union-attr]
    assert plan(make_spec(code, command=("/usr/bin/node", "/var/runtime/nodejs/bootstrap.mjs"), runtime="nodejs20.x")) is None
    assert plan(make_spec(code, command=(PYTHON, "-m", "http.server"))) is None
    assert plan(make_spec(code, command=(PYTHON, "-c", "print(1)"))) is None
    # the start-up environment is part of the key; the rest of the environment is not
    a = plan(make_spec(code, environment={"LANG": "C.UTF-8", "A": "1"}))
    b = plan(make_spec(code, environment={"LANG": "C.UTF-8", "A": "2"}))
    c = plan(make_spec(code, environment={"LANG": "C.UTF-8", "PYTHONHASHSEED": "0"}))
    assert a is not None and b is not None and c is not None
    assert a.key == b.key != c.key


def test_shows_its_own_command_and_environment(loop, backend: ZygoteBackend, code: Path) -> None:
    sandbox_agent = _spawn_agent(loop, backend, code)
    try:
        shown = run(loop, sandbox_agent.run(
            "result = [open(f'/proc/{p}/{n}', 'rb').read().rstrip(b'\\0').decode().split('\\0') "
            "for p in ('self', '1') for n in ('cmdline', 'environ')]"
        ))
        spec = sandbox_agent.sandbox.spec
        environment = {**spec.environment, "AWS_LAMBDA_RUNTIME_API": "127.0.0.1:9001"}
        expected = [list(spec.command), sorted(f"{k}={v}" for k, v in environment.items())]
        for cmdline, environ in (shown[0:2], shown[2:4]):
            assert cmdline == expected[0]
            assert sorted(environ) == expected[1]
    finally:
        run(loop, sandbox_agent.close())


def test_new_user_namespaces_are_refused(loop, agent: Agent) -> None:
    result = run(loop, agent.run(r"""
import ctypes, errno
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
def call(*args):
    ctypes.set_errno(0)
    rc = libc.syscall(*args)
    return rc, errno.errorcode.get(ctypes.get_errno(), ctypes.get_errno())
CLONE_NEWUSER = 0x10000000
SIGCHLD = 17
result = {
    "clone_newuser": call(56, CLONE_NEWUSER | SIGCHLD, 0, 0, 0, 0),
    "clone3": call(435, 0, 0),
}
"""))
    assert result["clone_newuser"] == [-1, "EPERM"]
    assert result["clone3"] == [-1, "ENOSYS"]
    # ordinary process creation still works (clone without namespace flags)
    assert run(loop, agent.run("import subprocess; result = subprocess.run(['/usr/bin/true']).returncode")) == 0


def test_siblings_of_one_zygote_share_nothing(loop, backend: ZygoteBackend, code: Path) -> None:
    first = _spawn_agent(loop, backend, code)
    second = _spawn_agent(loop, backend, code)
    try:
        assert run(loop, first.run("open('/tmp/mine', 'w').write('first'); open('/dev/shm/mine', 'w').write('x'); result = 1"))
        seen = run(loop, second.run(
            "import os; result = (os.listdir('/tmp'), os.listdir('/dev/shm'), sorted(int(p) for p in os.listdir('/proc') if p.isdigit()), os.uname().nodename)"
        ))
        assert seen[0] == [] and seen[1] == [] and seen[2] == [1]
        assert seen[3] != run(loop, first.run("import os; result = os.uname().nodename"))
        uids = {os.stat(f"/proc/{sandbox_agent.sandbox.pid}").st_uid for sandbox_agent in (first, second)}
        assert len(uids) == 2 and uids <= set(TEST_UIDS)
    finally:
        run(loop, first.close())
        run(loop, second.close())


def test_start_up_variables_get_their_own_zygote(loop, backend: ZygoteBackend, code: Path) -> None:
    sandbox_agent = _spawn_agent(loop, backend, code, environment={"LANG": "C.UTF-8", "PYTHONDONTWRITEBYTECODE": "1"})
    try:
        assert run(loop, sandbox_agent.run("import sys; result = sys.flags.dont_write_bytecode")) == 1
    finally:
        run(loop, sandbox_agent.close())
    plain = _spawn_agent(loop, backend, code)
    try:
        assert run(loop, plain.run("import sys; result = sys.flags.dont_write_bytecode")) == 0
    finally:
        run(loop, plain.close())


def test_a_dead_zygote_is_replaced_and_its_sandboxes_are_still_seen_to_exit(loop, backend: ZygoteBackend,
                                                                             code: Path) -> None:
    sandbox_agent = _spawn_agent(loop, backend, code)
    zygote = next(z for z in backend._zygotes.values() if z.live_children)
    assert zygote._proc is not None
    zygote._proc.kill()
    run(loop, zygote._proc.wait())
    deadline = time.monotonic() + 10
    while not zygote.dead:
        assert time.monotonic() < deadline
        run(loop, asyncio.sleep(0.01))
    try:
        assert run(loop, sandbox_agent.run("result = 42")) == 42  # the sandbox does not depend on it
        sandbox_agent.sandbox.kill()
        assert run(loop, asyncio.wait_for(sandbox_agent.sandbox.wait(), 10)) == -signal.SIGKILL
    finally:
        run(loop, sandbox_agent.close())
    replacement = _spawn_agent(loop, backend, code)
    run(loop, replacement.close())


def test_a_zygote_whose_platform_is_gone_kills_its_sandboxes(loop, backend: ZygoteBackend, code: Path) -> None:
    sandbox_agent = _spawn_agent(loop, backend, code)
    uid = os.stat(f"/proc/{sandbox_agent.sandbox.pid}").st_uid
    zygote = next(z for z in backend._zygotes.values() if z.live_children)
    try:
        assert zygote._sock is not None
        zygote._sock.shutdown(socket.SHUT_RDWR)  # what the zygote sees when the platform dies
        deadline = time.monotonic() + 10
        while pids_of_uid(uid):
            assert time.monotonic() < deadline, "the sandbox outlived its platform"
            run(loop, asyncio.sleep(0.02))
    finally:
        backend._zygotes.pop(zygote.key, None)
        run(loop, zygote.close())
        run(loop, sandbox_agent.close())


def test_choose_backend_prefers_zygotes(tmp_path: Path) -> None:
    chosen = choose_backend(uid_range=TEST_UIDS)
    try:
        assert isinstance(chosen, ZygoteBackend) and chosen.zygote_problem is None
        assert "zygotes" in chosen.reason
    finally:
        asyncio.run(chosen.close())
    bubblewrap_only = choose_backend("isolated", uid_range=TEST_UIDS)
    try:
        assert not isinstance(bubblewrap_only, ZygoteBackend)
    finally:
        asyncio.run(bubblewrap_only.close())
    required = choose_backend("zygote", uid_range=TEST_UIDS)
    try:
        assert isinstance(required, ZygoteBackend) and required.zygote_problem is None
    finally:
        asyncio.run(required.close())


def test_a_sandbox_holds_nothing_of_the_environment_of_those_forked_before_it(loop, backend: ZygoteBackend,
                                                                               code: Path) -> None:
    """The zygote never reads a sandbox's environment (it goes to the child alone), so no trace
    of one function's variables is in the memory a later sibling inherits. (The search runs
    from here, as root, so the token never enters the second sandbox.)"""
    token = os.urandom(12).hex().encode()
    # values of many sizes (every allocator size class), so that no later allocation of the
    # zygote could have overwritten them all by chance
    secrets = {f"SECRET_{n}": token.decode() + "x" * (n * 37) for n in range(40)}
    first = _spawn_agent(loop, backend, code, environment={"LANG": "C.UTF-8", "SECRET_OF_THE_FIRST": token.decode(),
                                                           **secrets})
    try:
        assert run(loop, first.run("import os; result = os.environ['SECRET_OF_THE_FIRST']")) == token.decode()
        assert _occurrences(first.sandbox.pid, token) > 0  # the search finds what is there
        second = _spawn_agent(loop, backend, code)
        try:
            assert _occurrences(second.sandbox.pid, token) == 0
        finally:
            run(loop, second.close())
    finally:
        run(loop, first.close())


def _occurrences(pid: int, needle: bytes) -> int:
    found = 0
    with open(f"/proc/{pid}/maps") as maps, open(f"/proc/{pid}/mem", "rb", 0) as mem:
        for line in maps:
            addresses, perms = line.split()[:2]
            if "r" not in perms or line.rstrip().endswith(("[vvar]", "[vsyscall]", "[vvar_vclock]")):
                continue
            start, end = (int(x, 16) for x in addresses.split("-"))
            try:
                mem.seek(start)
                found += mem.read(end - start).count(needle)
            except OSError:
                pass
    return found


def test_a_failed_fork_starts_the_sandbox_in_bubblewrap(loop, backend: ZygoteBackend, code: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    import firebox.worker.backends.zygote as zygote_module

    # a hostname the kernel refuses (over 64 bytes): the fork fails inside its set-up
    monkeypatch.setattr(zygote_module, "_hostname", lambda sandbox_id: "h" * 100)
    spec = make_spec(code, environment={"LANG": "C.UTF-8", "PYTHONFAULTHANDLER": "1"})  # a zygote of its own
    key = plan(spec).key  # type: ignore[union-attr]
    before = backend.statistics()
    try:
        agent = run(loop, Agent.start(backend, spec))
        try:
            assert run(loop, agent.run("import os; result = os.getuid()")) == 993
        finally:
            run(loop, agent.close())
        after = backend.statistics()
        assert after["forked"] == before["forked"] and after["spawned"] == before["spawned"] + 1
        assert "the sandbox did not start" in backend._broken[key]
    finally:
        backend._broken.pop(key, None)


def test_a_zygote_start_cancelled_half_way_leaves_the_others_to_bubblewrap(loop, backend: ZygoteBackend,
                                                                            code: Path) -> None:
    spec = make_spec(code, environment={"LANG": "C.UTF-8", "PYTHONOPTIMIZE": "1"})  # a zygote of its own
    key = plan(spec).key  # type: ignore[union-attr]

    async def scenario() -> None:
        first = asyncio.ensure_future(backend._zygote(key))
        await asyncio.sleep(0)  # it is starting the zygote now
        assert key in backend._starting
        second = asyncio.ensure_future(backend._zygote(key))
        await asyncio.sleep(0)
        first.cancel()
        with pytest.raises(asyncio.CancelledError):
            await first
        assert await second is None  # bubblewrap for this one, no CancelledError leaking into it
        assert key not in backend._broken and key not in backend._starting
        again = await backend._zygote(key)  # the next one starts it
        assert again is not None and not again.dead

    run(loop, scenario())


def test_a_runtime_zygote_learns_its_stem_cells_working_set(loop, backend: ZygoteBackend, code: Path) -> None:
    """A zygote of the real runtime rehearses, then learns which pages a stem cell writes on its
    way to its first invocation (its cells write them while idle: zygote.py `prefault`)."""
    spec = make_spec(code, runtime_dir=RUNTIME_DIR, command=tuple(stem_command("python3.11", PYTHON)))
    zygote = run(loop, backend._zygote(plan(spec).key))  # type: ignore[union-attr]
    assert zygote is not None and 50 < zygote.working_set_pages < 5000, zygote.working_set_pages
    assert zygote.rehearsed is True  # its runtime served every invocation of the rehearsal


def test_a_runtime_zygote_has_one_thread_so_it_forks_through_libc(loop, backend: ZygoteBackend, code: Path) -> None:
    """zygote.py `fork_plain` skips os.fork()'s after-fork work only in a process with one
    thread (else it falls back to os.fork(), silently): a thread started by the runtime, the
    rehearsal or a preload would lose the sandboxes that saving."""
    spec = make_spec(code, runtime_dir=RUNTIME_DIR, command=tuple(stem_command("python3.11", PYTHON)))
    zygote = run(loop, backend._zygote(plan(spec).key))  # type: ignore[union-attr]
    assert zygote is not None and zygote._proc is not None
    assert os.listdir(f"/proc/{zygote._proc.pid}/task") == [str(zygote._proc.pid)]


def test_cancelled_spawns_leave_no_bookkeeping_in_the_zygote(loop, backend: ZygoteBackend, code: Path) -> None:
    async def scenario() -> None:
        zygote = await backend._zygote(plan(make_spec(code, "exit3.py")).key)  # type: ignore[union-attr]
        assert zygote is not None
        for attempt in range(40):  # cancelled at every point up to the zygote's answer
            spawning = asyncio.ensure_future(backend.spawn(make_spec(code, "exit3.py")))
            while not zygote._spawns and not spawning.done():
                await asyncio.sleep(0)
            for _ in range(attempt % 8):
                await asyncio.sleep(0.0005)
            spawning.cancel()
            await asyncio.wait({spawning}, timeout=20)
            if not spawning.cancelled() and spawning.exception() is None:
                sandbox = spawning.result()
                await sandbox.wait()
                await sandbox.cleanup()
        deadline = time.monotonic() + 10
        while True:
            zygotes = [z for z in backend._zygotes.values() if z.key.flavour == "script"]
            left = [(z._spawns, z._starting, z._births) for z in zygotes if z._spawns or z._starting or z._births]
            if not left:
                break
            assert time.monotonic() < deadline, left
            await asyncio.sleep(0.02)

    run(loop, scenario())
