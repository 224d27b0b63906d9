"""What both backends share: per-sandbox uids, rlimits, the running-sandbox object."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ctypes.util
import grp
import os
import pwd
import resource
import shutil
import signal
import socket
import tempfile
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path

from firebox.errors import ServiceError
from firebox.worker.cgroups import SandboxCgroup
from firebox.worker.sandbox_api import SandboxSpec

# Host uids (and gids of the same number) handed to sandboxes, one per live sandbox.
DEFAULT_UID_RANGE = range(60000, 65000)
_EXIT_TIMEOUT_S = 5.0
PR_SET_PDEATHSIG = 1

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)


class UidPool:
    """A free list of host uids for sandboxes. Never hands out a uid or gid that the host's
    passwd/group databases name, nor the platform's own. A uid comes back (`release`) only once
    every process that ran under it is gone (the sandbox's `cleanup` makes sure)."""

    def __init__(self, ids: range = DEFAULT_UID_RANGE) -> None:
        taken = {os.getuid(), os.geteuid(), os.getgid(), os.getegid()}
        with contextlib.suppress(OSError):
            taken |= {entry.pw_uid for entry in pwd.getpwall()}
        with contextlib.suppress(OSError):
            taken |= {entry.gr_gid for entry in grp.getgrall()}
        self._free: deque[int] = deque(uid for uid in ids if uid not in taken and uid > 0)
        self._used: set[int] = set()
        self.size = len(self._free)

    def allocate(self) -> int:
        if not self._free:
            raise ServiceError(f"no free sandbox uid: all {self.size} are in use")
        uid = self._free.popleft()
        self._used.add(uid)
        return uid

    def release(self, uid: int) -> None:
        if uid in self._used:
            self._used.remove(uid)
            self._free.append(uid)  # FIFO: a released uid is reused as late as possible

    @property
    def in_use(self) -> int:
        return len(self._used)


def check_host_dirs(spec: SandboxSpec) -> None:
    """FileNotFoundError unless every host directory the sandbox needs exists."""
    for path in (spec.code_dir, spec.runtime_dir, *(host for host, _ in spec.extra_ro_binds)):
        if not Path(path).is_dir():
            raise FileNotFoundError(f"sandbox {spec.sandbox_id}: host directory {path} does not exist")


def set_rlimits(spec: SandboxSpec, *, per_uid: bool) -> None:
    """In the child, before exec. RLIMIT_NPROC counts the processes of the real uid, so it is
    set only when the sandbox runs under its own uid (`per_uid`)."""
    resource.setrlimit(resource.RLIMIT_NOFILE, (spec.max_open_files, spec.max_open_files))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    # No RLIMIT_FSIZE: /tmp's own size bounds what can be written (ENOSPC, as on Lambda), while a
    # file-size limit would answer EFBIG and SIGXFSZ-kill programs that write one large file.
    if per_uid:
        resource.setrlimit(resource.RLIMIT_NPROC, (spec.max_processes, spec.max_processes))


def yield_to_platform() -> None:
    """In the child, before exec: the SCHED_BATCH policy, which every process of the sandbox
    inherits. Its CPU share is a normal process's (the same weight); only a wake-up differs:
    a sandbox woken by its event never preempts the task running on that CPU, most often the
    platform's event loop that has just written the event (the kernel puts a woken task on
    its waker's CPU). With the default policy, the loop stopped there with every other request
    it held. Measured on the 2-core VM, one server, the policy of its 28 sandboxes switched
    between rounds of 8,000 warm invokes at 16 clients (6 and 8 alternated rounds, medians):
    3,432 -> 3,616/s, p99 9.2 -> 8.2 ms; and 3,295 -> 3,531/s, p99 8.9 -> 8.4 ms. One client:
    p50 0.44 ms either way. The price: a sandbox woken by anything else (its own timer or socket)
    also waits, on a busy CPU, for the running task's slice to end (a few ms at most) instead of
    preempting it; an idle CPU takes it at once either way. Refused (a seccomp profile around
    the platform that denies it), the sandbox runs under the default policy: a speed-up, not a
    guarantee worth failing a spawn."""
    with contextlib.suppress(OSError):
        os.sched_setscheduler(0, os.SCHED_BATCH, os.sched_param(0))


def drop_to(uid: int, gid: int) -> None:
    """In the child, as root: become uid/gid with no supplementary groups."""
    os.setgroups([])
    os.setgid(gid)
    os.setuid(uid)


def die_with_parent() -> None:
    """SIGKILL this child when the thread that forked it dies. Call AFTER any uid change (a
    credential change clears the setting)."""
    _libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


def decode_status(code: int, *, bwrap: bool) -> int:
    """subprocess-style status: bubblewrap reports a signal death of its command as 128+N."""
    if bwrap and 128 < code <= 128 + 64:
        return -(code - 128)
    return code


def make_state_dir(prefix: str) -> Path:
    """A new `/tmp/<prefix>-<pid>-<random>` directory; first removes those of the same prefix
    whose pid is dead (a platform killed with -9 cannot clean up after itself)."""
    base = Path(tempfile.gettempdir())
    for stale in base.glob(f"{prefix}-*"):
        pid = stale.name[len(prefix) + 1:].partition("-")[0]
        if pid.isdigit() and not os.path.exists(f"/proc/{pid}") and stale.is_dir() and not stale.is_symlink():
            shutil.rmtree(stale, ignore_errors=True)
    return Path(tempfile.mkdtemp(prefix=f"{prefix}-{os.getpid()}-", dir=base))


def make_private_dir(parent: Path, name: str, owner: int | None) -> Path:
    path = parent / name
    path.mkdir(mode=0o700)
    if owner is not None:
        os.chown(path, owner, owner)
    return path


class RunningSandbox:
    """The `SandboxProcess` both backends return; backend specifics come in as callables."""

    def __init__(
        self,
        *,
        spec: SandboxSpec,
        proc: asyncio.subprocess.Process,
        listener: socket.socket,
        address: str,
        cgroup: SandboxCgroup | None,
        uid: int | None,
        bwrap: bool,
        extra_kill: Callable[[], bool],
        release_uid: Callable[[int], None],
        on_cleanup: Callable[[RunningSandbox], None],
        private_dirs: tuple[Path, ...] = (),
        closers: tuple[Callable[[], None], ...] = (),
        leftovers_of_uid: bool = False,
        connection: socket.socket | None = None,
    ) -> None:
        self.spec = spec
        self.sandbox_id = spec.sandbox_id
        self.pid = proc.pid
        self.runtime_api = listener
        self.runtime_api_address = address
        self.runtime_api_connection = connection
        assert proc.stdout is not None and proc.stderr is not None
        self.stdout: asyncio.StreamReader = proc.stdout
        self.stderr: asyncio.StreamReader = proc.stderr
        self.uid = uid
        self.cgroup = cgroup
        self.started_at = time.monotonic()
        self._proc = proc
        self._bwrap = bwrap
        self._extra_kill = extra_kill
        self._release_uid = release_uid
        self._on_cleanup = on_cleanup
        self._private_dirs = private_dirs
        self._leftovers_of_uid = leftovers_of_uid
        self._cleanup: asyncio.Future[None] | None = None
        self._status: int | None = None
        # For SIGKILL, not Popen.kill: that polls first (a waitpid), and can so reap the process
        # between its exit and asyncio's child watcher, which then reports 255 for it instead
        # of its status. A pidfd neither reaps it nor ever reaches another process by its pid.
        self._pidfd: int | None = None
        self._kill_by_pid = False  # a kernel without pidfds (before 5.3)
        try:
            self._pidfd = os.pidfd_open(proc.pid)
        except ProcessLookupError:
            pass  # gone already, and reaped: nothing to kill, and its pid may be another's now
        except OSError:
            self._kill_by_pid = True
        self._closers = (*closers, self._close_pidfd)

    @property
    def returncode(self) -> int | None:
        """The decoded status once `wait` saw the exit, else None."""
        return self._status

    async def wait(self) -> int:
        code = await self._proc.wait()
        self._status = decode_status(code, bwrap=self._bwrap)
        return self._status

    def kill(self) -> None:
        # `extra_kill` True: it ends the whole sandbox by itself (bwrap: SIGKILL to the pid
        # namespace's init), and the launcher then exits on its own once every process of the
        # sandbox is gone, so `wait()` returning means all of them are. Killing the launcher
        # too would let `wait()` return while the namespace is still being torn down.
        ends_all = self._extra_kill()
        spare = frozenset({self._proc.pid}) if ends_all else frozenset()
        if not ends_all and self._proc.returncode is None:
            self._sigkill()
        if self.cgroup is not None and not self.cgroup.removed:
            self.cgroup.kill(exclude=spare)

    def _sigkill(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            if self._pidfd is not None:
                signal.pidfd_send_signal(self._pidfd, signal.SIGKILL)
            elif self._kill_by_pid:
                os.kill(self.pid, signal.SIGKILL)

    def _close_pidfd(self) -> None:
        if self._pidfd is not None:
            os.close(self._pidfd)
            self._pidfd = None

    def memory_peak_bytes(self) -> int | None:
        return self.cgroup.memory_peak() if self.cgroup is not None else None

    def reset_memory_peak(self) -> None:
        if self.cgroup is not None:
            self.cgroup.reset_memory_peak()

    def take_memory_peak(self) -> int | None:
        return self.cgroup.take_memory_peak() if self.cgroup is not None else None

    def oom_kills(self) -> int:
        return self.cgroup.oom_kills() if self.cgroup is not None else 0

    def set_memory_limit(self, memory_bytes: int) -> bool:
        """Change the sandbox's memory limit (a stem cell being specialised); False when no
        cgroup enforces one. OSError when the cgroup refused."""
        if self.cgroup is None or self.cgroup.removed:
            return False
        self.cgroup.set_memory_limit(memory_bytes)
        return True

    async def cleanup(self) -> None:
        if self._cleanup is None:
            self._cleanup = asyncio.ensure_future(self._do_cleanup())
        await asyncio.shield(self._cleanup)

    async def _do_cleanup(self) -> None:
        if self._proc.returncode is None:
            self.kill()
        deadline = time.monotonic() + _EXIT_TIMEOUT_S
        while True:
            try:
                await asyncio.wait_for(self.wait(), timeout=0.25)
                break
            except asyncio.TimeoutError:
                if time.monotonic() > deadline:
                    break
                self.kill()
        transport = getattr(self._proc, "_transport", None)
        if transport is not None:
            transport.close()  # the pipes: the platform may not have read them to EOF
        self.runtime_api.close()
        if self.runtime_api_connection is not None:
            self.runtime_api_connection.close()
        for close in self._closers:
            with contextlib.suppress(OSError):
                close()
        all_gone = self._proc.returncode is not None
        if self.cgroup is not None:
            all_gone = await self.cgroup.remove() and all_gone
        if self._leftovers_of_uid and self.uid is not None:
            all_gone = await _kill_uid(self.uid) and all_gone
        for directory in self._private_dirs:
            shutil.rmtree(directory, ignore_errors=True)
        if self.uid is not None and all_gone:
            self._release_uid(self.uid)  # else quarantined: never reused by this backend
        self._on_cleanup(self)


class SandboxLedger:
    """What a backend keeps about its sandboxes, the same for every backend: the live ones,
    counts, spawn time, and whether it is closed."""

    def __init__(self) -> None:
        self.live: dict[str, RunningSandbox] = {}
        self.counts = {"spawned": 0, "failed": 0, "cleaned": 0}
        self.spawn_seconds = 0.0
        self.closed = False

    def admit(self, spec: SandboxSpec) -> None:
        """Before a spawn: refuse it when the backend is closed or the id is taken."""
        if self.closed:
            raise ServiceError("the sandbox backend is closed")
        if spec.sandbox_id in self.live:
            raise ValueError(f"sandbox {spec.sandbox_id} exists already")

    def spawned(self, sandbox: RunningSandbox, started: float) -> None:
        self.live[sandbox.sandbox_id] = sandbox
        self.counts["spawned"] += 1
        self.spawn_seconds += time.monotonic() - started

    def failed(self) -> None:
        self.counts["failed"] += 1

    def forget(self, sandbox: RunningSandbox) -> None:
        """`RunningSandbox.on_cleanup`: the sandbox is gone."""
        if self.live.pop(sandbox.sandbox_id, None) is not None:
            self.counts["cleaned"] += 1

    def statistics(self, name: str, uids: UidPool | None, cgroups: str | None) -> dict[str, object]:
        spawned = self.counts["spawned"]
        return {
            "backend": name,
            "live": len(self.live),
            **self.counts,
            "uids_in_use": uids.in_use if uids else None,
            "uids_total": uids.size if uids else None,
            "cgroups": cgroups,
            "mean_spawn_ms": round(1000 * self.spawn_seconds / spawned, 2) if spawned else None,
        }

    async def close(self) -> bool:
        """Clean up every live sandbox; False when it was closed already."""
        if self.closed:
            return False
        self.closed = True
        for sandbox in list(self.live.values()):
            await sandbox.cleanup()
        return True


def pids_of_uid(uid: int) -> list[int]:
    """Live host pids owned by `uid` (a /proc scan: the fallback when no cgroup exists)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            if os.stat(f"/proc/{entry}").st_uid != uid:
                continue
            with open(f"/proc/{entry}/stat", "rb") as stat:
                state = stat.read().rpartition(b")")[2].split()[0]
        except (OSError, IndexError):
            continue
        if state not in (b"Z", b"X"):  # a zombie holds nothing; its parent reaps it
            found.append(int(entry))
    return found


async def _kill_uid(uid: int, timeout_s: float = _EXIT_TIMEOUT_S) -> bool:
    deadline = time.monotonic() + timeout_s
    while pids := pids_of_uid(uid):
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.01)
    return True
