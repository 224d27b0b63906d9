"""The platform's side of one zygote process (`runtimes/python/zygote.py`): starting it, its
control socket, the spawns in flight and the exits it reports; and what a forked sandbox is to
`RunningSandbox` (`ForkedProcess`). The backend that decides what to fork is `zygote.py`.

The control socket's messages (JSON, one per SOCK_SEQPACKET datagram):
- the zygote: `{"ready": pid, "working_set_pages": n, "rehearsed": bool or null}` once started,
  or `{"error": ...}`;
- the zygote, per spawn: `{"id", "pid"}` when it has forked the sandbox;
- the sandbox itself: `{"id", "started": true}` once isolated, or `{"id", "error"}`;
- the zygote: `{"exited": pid, "status"}` when it has reaped a sandbox.
`pid` and `started` come from two processes, in either order; a spawn is done when both came.
"""

from __future__ import annotations

import array
import asyncio
import contextlib
import ctypes
import json
import logging
import os
import signal
import socket
import struct
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

from firebox.errors import ServiceError
from firebox.runtimes.api import RUNTIME_DIR
from firebox.worker.backends.isolated import _InitHandle
from firebox.worker.subprocesses import sigkill

log = logging.getLogger(__name__)

ZYGOTE_SCRIPT = RUNTIME_DIR / "python" / "zygote.py"
_START_TIMEOUT_S = 30.0
_SPAWN_TIMEOUT_S = 10.0
# Room in the zygote's argv and environment areas, which its children overwrite with their own
# command and environment (what /proc/<pid>/cmdline and environ show; see zygote.py `show_as`).
# Lambda caps a function's variables at 4 KB; the platform adds about 1 KB.
_ARGV_ROOM = 4096
_ENVIRON_ROOM = 16384


class ZygoteKey(NamedTuple):
    interpreter: str
    flags: tuple[str, ...]
    runtime_dir: str
    extra_binds: tuple[tuple[str, str], ...]
    flavour: str  # plain | boto3 | script
    startup_env: tuple[tuple[str, str], ...]



class _ChildExit:
    """The exit status of one forked sandbox, from its zygote's report (or, if the zygote died,
    from its pidfd: -9)."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.future: asyncio.Future[int] = loop.create_future()

    def set(self, status: int) -> None:
        if not self.future.done():
            self.future.set_result(status)


@dataclass
class _Spawn:
    """A spawn in flight: done when both the zygote's `pid` and the sandbox's `started` came."""

    future: asyncio.Future[int]
    pid: int | None = None
    started: bool = False


class Zygote:
    """One running zygote process and the platform's end of its control socket."""

    def __init__(self, key: ZygoteKey, root: Path, config: dict[str, object]) -> None:
        self.key = key
        self.root = root
        self._config = config
        self._proc: asyncio.subprocess.Process | None = None
        self._sock: socket.socket | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._ready: asyncio.Future[int] | None = None
        self._spawns: dict[str, _Spawn] = {}  # in flight, by sandbox id
        self._starting: dict[int, str] = {}  # pid -> sandbox id, until that spawn is done
        self._births: dict[int, int | None] = {}  # done spawns' pids -> exit status seen before `claim`
        self._children: dict[int, tuple[_ChildExit, int | None]] = {}  # claimed: exit, pidfd
        self._stderr_task: asyncio.Task[None] | None = None
        self.dead = False
        self.working_set_pages = 0  # what its stem cells write while idle (zygote.py `prefault`)
        self.rehearsed: bool | None = None  # its runtime served the whole rehearsal (zygote.py `rehearse`)

    @property
    def live_children(self) -> int:
        return len(self._children)

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._loop = loop
        mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        mine.setblocking(False)
        self._sock = mine
        self._ready = loop.create_future()
        try:
            self.root.mkdir(mode=0o755, parents=True, exist_ok=True)
            mine.send(json.dumps(self._config).encode())
            self._proc = await asyncio.create_subprocess_exec(
                self.key.interpreter, *self.key.flags, str(ZYGOTE_SCRIPT), str(theirs.fileno()), " " * _ARGV_ROOM,
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                env={**dict(self.key.startup_env), "FIREBOX_ZYGOTE_ROOM": " " * _ENVIRON_ROOM}, cwd="/", pass_fds=(theirs.fileno(),), start_new_session=True,
            )
        finally:
            theirs.close()
        loop.add_reader(mine.fileno(), self._on_readable)
        self._stderr_task = asyncio.ensure_future(self._log_stderr())
        try:
            await asyncio.wait_for(asyncio.shield(self._ready), _START_TIMEOUT_S)
        except BaseException:
            await self.close()
            raise

    async def _log_stderr(self) -> None:
        assert self._proc is not None and self._proc.stderr is not None
        async for line in self._proc.stderr:
            log.warning("zygote %s: %s", self.key.flavour, line.decode(errors="replace").rstrip())

    def _on_readable(self) -> None:
        assert self._sock is not None
        while True:
            try:
                data = self._sock.recv(65536)
            except BlockingIOError:
                return
            except OSError:
                data = b""
            if not data:
                self._died()
                return
            self._handle(json.loads(data))

    def _handle(self, message: dict[str, object]) -> None:
        assert self._ready is not None
        if "ready" in message:
            self.working_set_pages = int(message.get("working_set_pages") or 0)  # type: ignore[arg-type]
            self.rehearsed = message.get("rehearsed")  # type: ignore[assignment]
            if self.rehearsed is False:
                log.warning("zygote %s: its runtime stopped before the end of its rehearsal; every sandbox "
                            "forked from it warms the runtime's code itself (more memory each)", self.key.flavour)
            self._ready.done() or self._ready.set_result(int(message["ready"]))  # type: ignore[arg-type]
        elif "exited" in message:
            pid, status = int(message["exited"]), int(message["status"])  # type: ignore[arg-type]
            if pid in self._children:
                self._children.pop(pid)[0].set(status)
            elif pid in self._starting:  # died while starting, without saying why
                self._fail(self._starting[pid], f"it exited with status {status}")
            elif pid in self._births:
                self._births[pid] = status
        elif message.get("id") is None:
            error = ServiceError(f"the zygote failed: {message.get('error')}")
            if not self._ready.done():
                self._ready.set_exception(error)
        else:
            self._spawn_progress(str(message["id"]), message)

    def _spawn_progress(self, spawn_id: str, message: dict[str, object]) -> None:
        """The zygote's `pid` and the sandbox's `started` (in either order), or an `error`."""
        spawn = self._spawns.get(spawn_id)
        if spawn is None:
            return  # forgotten (failed, timed out, cancelled): nothing waits for it
        if "error" in message:
            self._fail(spawn_id, str(message["error"]))
            return
        if "pid" in message:
            spawn.pid = int(message["pid"])  # type: ignore[arg-type]
            self._starting[spawn.pid] = spawn_id
        spawn.started = spawn.started or bool(message.get("started"))
        if spawn.started and spawn.pid is not None:
            self._forget(spawn_id)
            self._births[spawn.pid] = None
            spawn.future.set_result(spawn.pid)

    def _fail(self, spawn_id: str, why: str) -> None:
        spawn = self._forget(spawn_id)
        if spawn is not None and not spawn.future.done():
            spawn.future.set_exception(ServiceError(f"the sandbox did not start: {why}"))

    def _forget(self, spawn_id: str) -> _Spawn | None:
        """Drop a spawn from the tables of spawns in flight; later messages about it are
        ignored (its exit too, unless `spawn` handed its pid out)."""
        spawn = self._spawns.pop(spawn_id, None)
        if spawn is not None and spawn.pid is not None:
            self._starting.pop(spawn.pid, None)
        return spawn

    def _died(self) -> None:
        if self.dead:
            return
        self.dead = True
        assert self._loop is not None and self._sock is not None
        self._loop.remove_reader(self._sock.fileno())
        error = ServiceError("the zygote exited")
        if self._ready is not None and not self._ready.done():
            self._ready.set_exception(error)
        for spawn in self._spawns.values():
            spawn.future.done() or spawn.future.set_exception(error)
        self._spawns.clear()
        self._starting.clear()
        for child, pidfd in self._children.values():  # their exits now come from their pidfds
            _watch_pidfd(self._loop, pidfd, child)
        self._children.clear()

    def claim(self, pid: int, pidfd: int | None) -> _ChildExit:
        """The exit of the sandbox `pid` (reported by `spawn`), watched from now on."""
        assert self._loop is not None
        child = _ChildExit(self._loop)
        early = self._births.pop(pid, None)
        if early is not None:
            child.set(early)
        elif self.dead or pidfd is None:
            _watch_pidfd(self._loop, pidfd, child)
        else:
            self._children[pid] = (child, pidfd)
        return child

    async def spawn(self, request: dict[str, object], fds: list[int]) -> int:
        """Ask for one sandbox; the host pid of its process (pid 1 of its namespace)."""
        if self.dead or self._sock is None or self._loop is None:
            raise ServiceError("the zygote is not running")
        spawn_id = str(request["id"])
        spawn = self._spawns[spawn_id] = _Spawn(self._loop.create_future())
        payload = json.dumps(request).encode()
        ancillary = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))]
        try:
            while True:
                try:
                    self._sock.sendmsg([payload], ancillary)
                    break
                except BlockingIOError:
                    writable: asyncio.Future[None] = self._loop.create_future()
                    self._loop.add_writer(self._sock.fileno(), _set_once, writable)
                    try:
                        await writable
                    finally:
                        self._loop.remove_writer(self._sock.fileno())
                except OSError as exc:
                    raise ServiceError(f"the zygote is not reachable: {exc}") from exc
            return await asyncio.wait_for(asyncio.shield(spawn.future), _SPAWN_TIMEOUT_S)
        except TimeoutError:
            self._forget(spawn_id)
            raise ServiceError("the zygote did not answer in time") from None
        except BaseException:
            # Cancelled, perhaps after the answer came in (wait_for can do that): whatever the
            # zygote says of this sandbox later concerns no one.
            self._forget(spawn_id)
            if spawn.pid is not None:
                self._births.pop(spawn.pid, None)
            raise

    async def close(self) -> None:
        """Stop the zygote: it kills the sandboxes it still has (none, when the backend calls)."""
        if self._sock is not None:
            if not self.dead and self._loop is not None:
                self._loop.remove_reader(self._sock.fileno())
            self.dead = True
            self._sock.close()
        if self._proc is not None and self._proc.returncode is None:
            try:
                await asyncio.wait_for(self._proc.wait(), 5)
            except TimeoutError:
                sigkill(self._proc)
                await self._proc.wait()
        if self._stderr_task is not None:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await asyncio.wait_for(self._stderr_task, 1)
        for child, _ in self._children.values():
            child.set(-signal.SIGKILL)
        self._children.clear()
        if self.root.is_dir():
            with contextlib.suppress(OSError):
                self.root.rmdir()


def _set_once(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


def _watch_pidfd(loop: asyncio.AbstractEventLoop, pidfd: int | None, child: _ChildExit) -> None:
    """Resolve `child` with -9 once the process behind `pidfd` has exited."""
    if pidfd is None:
        child.set(-signal.SIGKILL)
        return

    def exited() -> None:
        loop.remove_reader(pidfd)
        child.set(-signal.SIGKILL)

    loop.add_reader(pidfd, exited)
    child.future.add_done_callback(lambda _: loop.remove_reader(pidfd))


class ForkedProcess:
    """What `RunningSandbox` needs of a process (`asyncio.subprocess.Process`'s shape) for a
    sandbox forked by a zygote: its pid, the output pipes, the exit status."""

    def __init__(self, pid: int, exit: _ChildExit, stdout: asyncio.StreamReader, stderr: asyncio.StreamReader,
                 transports: list[asyncio.BaseTransport], handle: _InitHandle) -> None:
        self.pid = pid
        self.stdout = stdout
        self.stderr = stderr
        self.returncode: int | None = None
        self._exit = exit
        self._transport = _Transports(transports)
        self._handle = handle

    async def wait(self) -> int:
        self.returncode = await asyncio.shield(self._exit.future)
        return self.returncode

    def kill(self) -> None:
        self._handle.kill()


class _Transports:
    def __init__(self, transports: list[asyncio.BaseTransport]) -> None:
        self._transports = transports

    def close(self) -> None:
        for transport in self._transports:
            transport.close()


async def read_pipe(loop: asyncio.AbstractEventLoop, fd: int) -> tuple[asyncio.StreamReader, asyncio.BaseTransport]:
    reader = asyncio.StreamReader(loop=loop)
    transport, _ = await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader, loop=loop),
                                                os.fdopen(fd, "rb", buffering=0))
    return reader, transport



def open_pidfd(pid: int, uid: int) -> int | None:
    """A pidfd on the sandbox's process, checked to run under the sandbox's uid (not a recycled
    pid); None when it is gone already."""
    try:
        pidfd = os.pidfd_open(pid)
    except OSError:
        return None
    try:
        owner = os.stat(f"/proc/{pid}").st_uid
    except OSError:
        owner = -1
    if owner != uid:
        os.close(pidfd)
        return None
    return pidfd


_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long
SYS_OPEN_TREE = 428
SYS_MOUNT_SETATTR = 442
OPEN_TREE_CLONE = 1
AT_RECURSIVE = 0x8000
AT_EMPTY_PATH = 0x1000
MOUNT_ATTR_RDONLY = 0x1
MOUNT_ATTR_NOSUID = 0x2
MOUNT_ATTR_NODEV = 0x4


def detached_readonly_tree(directory: Path) -> int:
    """An fd holding a detached copy of the mount tree at `directory` (open_tree
    OPEN_TREE_CLONE), read-only, nosuid, nodev: a zygote's child attaches it (move_mount) in its
    own mount namespace, which a plain bind from this namespace could not reach."""
    fd = _libc.syscall(SYS_OPEN_TREE, -100, os.fsencode(directory), OPEN_TREE_CLONE | AT_RECURSIVE | os.O_CLOEXEC)
    if fd < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"open_tree({directory}): {os.strerror(err)}")
    attr = struct.pack("QQQQ", MOUNT_ATTR_RDONLY | MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV, 0, 0, 0)
    if _libc.syscall(SYS_MOUNT_SETATTR, fd, b"", AT_EMPTY_PATH | AT_RECURSIVE, attr, len(attr)) != 0:
        err = ctypes.get_errno()
        os.close(fd)
        raise OSError(err, f"mount_setattr({directory}): {os.strerror(err)}")
    return fd

