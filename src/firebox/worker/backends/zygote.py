"""The zygote backend: isolated sandboxes forked from pre-imported Python interpreters.

`ZygoteBackend` is the isolated backend (it IS an `IsolatedBackend`: same uid pool, cgroups,
/etc template, private network namespaces, probe) that starts Python sandboxes by asking a
zygote (`runtimes/python/zygote.py`) to fork one, instead of starting bubblewrap and a new
interpreter. Everything else (Node.js, custom runtimes, a command it does not recognise, a
zygote that failed) goes to bubblewrap as before.

Which commands (`plan`): the Python bootstrap and stem-cell commands of `runtimes.api`, and
`python3.x [flags] script.py [args]` (the tests' agent). A zygote serves one `ZygoteKey`: the
interpreter and its flags, the runtime and extra bind directories, the flavour of what it has
preloaded (`plain`: the runtime; `boto3`: the runtime and boto3; `script`: nothing), and the
START-UP environment: every variable the interpreter or libc reads while starting (PYTHON*,
LD_*, LC_*, MALLOC_*, GLIBC_*, TZ, LANG, LANGUAGE, PATH) and those the preload reads. A child
therefore starts from exactly the state an exec'd interpreter with the sandbox's environment
would have reached; a function whose start-up variables differ gets a zygote of its own (at
most `max_zygotes` live at once; beyond, bubblewrap).

A spawn: the platform makes the network namespace (with the Runtime API listener inside), the
cgroups, picks the uid, clones the code directory's mount (detached, read-only) and opens the
output pipes, and sends them to the zygote with the request; the sandbox's environment and
command go on a socket of their own that only the forked child reads (the zygote's memory is
inherited by every later child, so it must never hold a function's variables). The zygote
answers with the host pid of the forked sandbox, pid 1 of its own pid namespace and the
runtime itself, on which the backend opens a pidfd: `kill()` SIGKILLs it, which ends the whole
pid namespace; the zygote reaps it and reports its exit status. A zygote's address space holds
nothing secret: it is started with `env` = the start-up variables only and knows nothing of the
platform but the host paths of its root's parts. When a fork fails, the sandbox starts in
bubblewrap (and so do the key's next ones, unless it was only the zygote dying).

The zygote's life: started on first use (about 60 ms; for `boto3`, 300 ms), kept while it has
live sandboxes or is among the `max_zygotes` most recently used. When the platform's end of its
control socket closes (the platform exited or died), it SIGKILLs every sandbox it started and
exits. If it dies, its sandboxes' exits are still seen through their pidfds (reported as -9).
"""

from __future__ import annotations

import array
import asyncio
import base64
import contextlib
import ctypes
import json
import logging
import os
import re
import signal
import socket
import struct
import subprocess
import time
from collections import OrderedDict
from pathlib import Path
from typing import NamedTuple

from firebox.errors import ServiceError
from firebox.runtimes.api import PYTHON_FLAGS, PYTHON_LOADER, RUNTIME_DIR
from firebox.worker import netns, seccomp
from firebox.worker.backends._common import RunningSandbox, check_host_dirs
from firebox.worker.backends.isolated import (
    _ETC_BINDS,
    IsolatedBackend,
    _hostname,
    _InitHandle,
)
from firebox.worker.cgroups import SandboxCgroup
from firebox.worker.sandbox_api import RUNTIME_API_VARIABLE, SandboxSpec

log = logging.getLogger(__name__)

ZYGOTE_SCRIPT = RUNTIME_DIR / "python" / "zygote.py"
MAX_ZYGOTES = 4
_START_TIMEOUT_S = 30.0
_SPAWN_TIMEOUT_S = 10.0
_SHM_BYTES = 64 * 1024 * 1024
# Room in the zygote's argv and environment areas, which its children overwrite with their own
# command and environment (what /proc/<pid>/cmdline and environ show; see zygote.py `show_as`).
# Lambda caps a function's variables at 4 KB; the platform adds about 1 KB.
_ARGV_ROOM = 4096
_ENVIRON_ROOM = 16384
_PYTHON = re.compile(r"python3(\.\d+)?")
_STARTUP_PREFIXES = ("PYTHON", "LD_", "LC_", "MALLOC_", "GLIBC_")
_STARTUP_NAMES = frozenset({"TZ", "LANG", "LANGUAGE", "PATH"})
# What the preloads read (stem.py's `preload`: bootstrap.setup_path).
_PRELOAD_NAMES = frozenset({"LAMBDA_TASK_ROOT", "FIREBOX_RUNTIME_LIBS"})
_BOOTSTRAP = "python/bootstrap.py"
_STEM = "python/stem.py"


class ZygoteKey(NamedTuple):
    interpreter: str
    flags: tuple[str, ...]
    runtime_dir: str
    extra_binds: tuple[tuple[str, str], ...]
    flavour: str  # plain | boto3 | script
    startup_env: tuple[tuple[str, str], ...]


class Plan(NamedTuple):
    key: ZygoteKey
    kind: str  # bootstrap | stem | script
    argv: tuple[str, ...]  # for `script`: sys.argv


def startup_environment(environment: dict[str, str] | object) -> tuple[tuple[str, str], ...]:
    """The variables an interpreter (or libc, or the preload) reads while it starts."""
    return tuple(sorted(
        (name, value) for name, value in dict(environment).items()  # type: ignore[call-overload]
        if name.startswith(_STARTUP_PREFIXES) or name in _STARTUP_NAMES or name in _PRELOAD_NAMES
    ))


def plan(spec: SandboxSpec) -> Plan | None:
    """How a zygote would run `spec`, or None when it cannot (bubblewrap then)."""
    argv = spec.command
    if not spec.runtime.startswith("python") or len(argv) < 2 or not _PYTHON.fullmatch(Path(argv[0]).name):
        return None
    index = 1
    while index < len(argv) and argv[index] in PYTHON_FLAGS:
        index += 1
    flags, rest = tuple(argv[1:index]), argv[index:]
    runtime = str(spec.runtime_dir)
    binds = tuple((str(host), target) for host, target in spec.extra_ro_binds)
    startup = startup_environment(spec.environment)

    def key(flavour: str) -> ZygoteKey:
        return ZygoteKey(argv[0], flags, runtime, binds, flavour, startup)

    if len(rest) >= 3 and rest[0] == "-c" and rest[1] == PYTHON_LOADER:
        if rest[2:] == ("/var/runtime/" + _BOOTSTRAP,):
            return Plan(key("plain"), "bootstrap", ())
        if rest[2] == "/var/runtime/" + _STEM and len(rest) <= 4:
            flavour = rest[3] if len(rest) == 4 else "plain"
            return Plan(key(flavour), "stem", ()) if flavour in ("plain", "boto3") else None
        return None
    if rest and rest[0].endswith(".py") and rest[0].startswith("/") and not rest[0].startswith("-"):
        return Plan(key("script"), "script", tuple(rest))
    return None


class _ChildExit:
    """The exit status of one forked sandbox, from its zygote's report (or, if the zygote died,
    from its pidfd: -9)."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.future: asyncio.Future[int] = loop.create_future()

    def set(self, status: int) -> None:
        if not self.future.done():
            self.future.set_result(status)


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
        self._spawns: dict[str, asyncio.Future[int]] = {}
        self._births: dict[int, int | None] = {}  # reported sandbox pid -> exit status seen early
        self._starting_pids: dict[int, str] = {}  # pid -> spawn id, until the sandbox is ready
        self._pids_of_spawns: dict[str, int] = {}
        self._ready_spawns: set[str] = set()
        self._children: dict[int, tuple[_ChildExit, int | None]] = {}
        self._stderr_task: asyncio.Task[None] | None = None
        self.dead = False
        self.last_used = time.monotonic()
        self.working_set_pages = 0  # what its stem cells write while idle (zygote.py `prefault`)

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
            self._ready.done() or self._ready.set_result(int(message["ready"]))  # type: ignore[arg-type]
        elif "exited" in message:
            pid, status = int(message["exited"]), int(message["status"])  # type: ignore[arg-type]
            if pid in self._children:
                self._children.pop(pid)[0].set(status)
            elif pid in self._starting_pids:  # died while starting, without saying why
                spawn_id = self._starting_pids[pid]
                future = self._spawns.get(spawn_id)
                self._forget_spawn(spawn_id)
                if future is not None and not future.done():
                    future.set_exception(ServiceError(f"the sandbox did not start: it exited with status {status}"))
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
        future = self._spawns.get(spawn_id)
        if future is None or future.done():
            return
        if "pid" in message:
            pid = int(message["pid"])  # type: ignore[arg-type]
            self._births[pid] = None
            self._starting_pids[pid] = spawn_id
            self._pids_of_spawns[spawn_id] = pid
        if message.get("started"):
            self._ready_spawns.add(spawn_id)
        if "error" in message:
            self._forget_spawn(spawn_id)  # its exit, reported later, concerns no one
            future.set_exception(ServiceError(f"the sandbox did not start: {message['error']}"))
        elif spawn_id in self._ready_spawns and spawn_id in self._pids_of_spawns:
            self._spawns.pop(spawn_id)
            self._ready_spawns.discard(spawn_id)
            pid = self._pids_of_spawns.pop(spawn_id)
            self._starting_pids.pop(pid, None)
            future.set_result(pid)

    def _died(self) -> None:
        if self.dead:
            return
        self.dead = True
        assert self._loop is not None and self._sock is not None
        self._loop.remove_reader(self._sock.fileno())
        error = ServiceError("the zygote exited")
        if self._ready is not None and not self._ready.done():
            self._ready.set_exception(error)
        for future in self._spawns.values():
            future.done() or future.set_exception(error)
        self._spawns.clear()
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
        self.last_used = time.monotonic()
        future = self._loop.create_future()
        self._spawns[str(request["id"])] = future
        payload = json.dumps(request).encode()
        ancillary = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))]
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
                self._spawns.pop(str(request["id"]), None)
                raise ServiceError(f"the zygote is not reachable: {exc}") from exc
        try:
            return await asyncio.wait_for(asyncio.shield(future), _SPAWN_TIMEOUT_S)
        except TimeoutError:
            self._forget_spawn(str(request["id"]))
            raise ServiceError("the zygote did not answer in time") from None
        except BaseException:  # cancelled: what the zygote says of it later concerns no one
            self._forget_spawn(str(request["id"]))
            if future.done() and not future.cancelled() and future.exception() is None:
                self._births.pop(future.result(), None)  # it had answered: the exit is no one's
            raise

    def _forget_spawn(self, spawn_id: str) -> None:
        """Drop what is known of a spawn no one waits for any more (failed, timed out,
        cancelled); later messages about it find nothing and are ignored."""
        self._spawns.pop(spawn_id, None)
        self._ready_spawns.discard(spawn_id)
        pid = self._pids_of_spawns.pop(spawn_id, None)
        if pid is not None:
            self._births.pop(pid, None)
            self._starting_pids.pop(pid, None)

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
                with contextlib.suppress(ProcessLookupError):
                    self._proc.kill()
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


class _ForkedProcess:
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


async def _read_pipe(loop: asyncio.AbstractEventLoop, fd: int) -> tuple[asyncio.StreamReader, asyncio.BaseTransport]:
    reader = asyncio.StreamReader(loop=loop)
    transport, _ = await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader, loop=loop),
                                                os.fdopen(fd, "rb", buffering=0))
    return reader, transport


class ZygoteBackend(IsolatedBackend):
    """`SandboxBackend`: the isolated backend, forking Python sandboxes from zygotes."""

    def __init__(self, *, max_zygotes: int = MAX_ZYGOTES, **options: object) -> None:
        super().__init__(**options)  # type: ignore[arg-type]
        self._seccomp = base64.b64encode(seccomp.compiled_filter(deny_new_userns=True)).decode()
        self._zygotes: OrderedDict[ZygoteKey, Zygote] = OrderedDict()
        self._starting: dict[ZygoteKey, asyncio.Future[Zygote | None]] = {}
        self._broken: dict[ZygoteKey, str] = {}
        self._max_zygotes = max_zygotes
        self._forked = 0
        self.zygote_problem: str | None = None

    def _reason(self) -> str:
        if getattr(self, "zygote_problem", None):
            return super()._reason() + f"; zygotes OFF ({self.zygote_problem})"
        return super()._reason() + "; Python sandboxes forked from pre-imported zygotes"

    # --- zygotes --------------------------------------------------------------------------

    async def _zygote(self, key: ZygoteKey) -> Zygote | None:
        zygote = self._zygotes.get(key)
        if zygote is not None and not zygote.dead:
            self._zygotes.move_to_end(key)
            return zygote
        if key in self._broken or self.zygote_problem is not None or self._ledger.closed:
            return None
        if key in self._starting:
            return await asyncio.shield(self._starting[key])
        if zygote is not None:  # dead: forget it once its children are gone
            self._zygotes.pop(key)
        if not self._make_room():
            return None
        future: asyncio.Future[Zygote | None] = asyncio.get_running_loop().create_future()
        self._starting[key] = future
        try:
            root = self.state_dir / "zygotes" / os.urandom(8).hex()
            zygote = Zygote(key, root, self._zygote_config(key, root))
            try:
                await zygote.start()
            except (OSError, ServiceError) as exc:
                self._broken[key] = str(exc)
                log.warning("a zygote (%s) failed to start, its sandboxes use bubblewrap: %s", key.flavour, exc)
                future.set_result(None)
                return None
            self._zygotes[key] = zygote
            future.set_result(zygote)
            return zygote
        except BaseException:
            # Cancelled (or worse) while starting: whoever waits on this start uses bubblewrap
            # this time (None), and the next spawn of the key tries again.
            if not future.done():
                future.set_result(None)
            raise
        finally:
            del self._starting[key]

    def _make_room(self) -> bool:
        """Below `max_zygotes` live zygotes, stopping the least recently used idle one if need be."""
        if len(self._zygotes) < self._max_zygotes:
            return True
        for key, zygote in self._zygotes.items():
            if zygote.live_children == 0:
                del self._zygotes[key]
                asyncio.ensure_future(zygote.close())
                return True
        return False

    def _zygote_config(self, key: ZygoteKey, root: Path) -> dict[str, object]:
        return {
            "root": str(root),
            "etc": str(self._etc),
            "etc_binds": [name for name in _ETC_BINDS
                          if (self._etc / name).exists() and (Path("/etc") / name).exists()],
            "runtime_dir": key.runtime_dir,
            "extra_binds": [list(pair) for pair in key.extra_binds],
            "flavour": key.flavour,
            "seccomp": self._seccomp,
        }

    # --- spawning -------------------------------------------------------------------------

    async def spawn(self, spec: SandboxSpec) -> RunningSandbox:
        how = plan(spec)
        zygote = await self._zygote(how.key) if how is not None else None
        if zygote is None or how is None:
            return await super().spawn(spec)
        try:
            return await self._fork(zygote, how, spec)
        except ServiceError as exc:
            # The fork failed (the zygote died, or something in its set-up does not work on
            # this host): this sandbox starts in bubblewrap, and so do the key's next ones
            # unless only the zygote died (it is restarted on next use).
            if not zygote.dead:
                self._broken[how.key] = str(exc)
            log.warning("a zygote (%s) could not fork a sandbox, bubblewrap starts it: %s", how.key.flavour, exc)
            return await super().spawn(spec)

    async def _fork(self, zygote: Zygote, how: Plan, spec: SandboxSpec) -> RunningSandbox:
        self._ledger.admit(spec)
        check_host_dirs(spec)
        loop = asyncio.get_running_loop()
        started = time.monotonic()
        net: netns.PrivateLoopback | None = None
        uid: int | None = None
        cgroup: SandboxCgroup | None = None
        mine: list[int] = []  # read ends and the pidfd: ours to keep or close on failure
        theirs: list[int] = []  # what the zygote's child gets: closed here once it is sent
        transports: list[asyncio.BaseTransport] = []
        pidfd: int | None = None
        try:
            net = await asyncio.to_thread(netns.create_private_loopback, self._port)
            uid = self._uids.allocate()
            if self._cgroups is not None:
                cgroup = self._cgroups.create(spec.sandbox_id, memory_bytes=spec.memory_bytes,
                                              max_pids=spec.max_processes)
            out_read, out_write = os.pipe2(os.O_CLOEXEC)
            mine.append(out_read)
            theirs.append(out_write)
            err_read, err_write = os.pipe2(os.O_CLOEXEC)
            mine.append(err_read)
            theirs.append(err_write)
            theirs.insert(0, detached_readonly_tree(spec.code_dir))
            # The environment and command go to the child alone, never through the zygote (whose
            # memory every later child inherits): on a socket of their own.
            private, private_theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
            theirs.insert(0, private_theirs.detach())
            fds = [theirs[0], net.netns_fd, *theirs[1:]]
            if cgroup is not None:
                for path in cgroup.self_paths:
                    theirs.append(os.open(path, os.O_WRONLY | os.O_CLOEXEC))
                    fds.append(theirs[-1])
            environment = {**spec.environment, RUNTIME_API_VARIABLE: f"{netns.RUNTIME_API_HOST}:{self._port}"}
            request = {
                "id": spec.sandbox_id, "uid": uid, "hostname": _hostname(spec.sandbox_id),
                "tmp_bytes": spec.ephemeral_bytes, "shm_bytes": min(_SHM_BYTES, spec.memory_bytes),
                "max_open_files": spec.max_open_files, "max_processes": spec.max_processes,
            }
            with private:
                private.send(json.dumps({"kind": how.kind, "argv": list(how.argv), "cmdline": list(spec.command),
                                         "environment": environment}).encode())
            try:
                pid = await zygote.spawn(request, fds)
            finally:
                for fd in theirs:
                    os.close(fd)
                theirs.clear()
                net.close_netns_fd()
            pidfd = _open_pidfd(pid, uid)
            exit = zygote.claim(pid, pidfd)
            stdout, out_transport = await _read_pipe(loop, mine.pop(0))
            transports.append(out_transport)
            stderr, err_transport = await _read_pipe(loop, mine.pop(0))
            transports.append(err_transport)
        except BaseException:
            self._ledger.failed()
            for fd in (*mine, *theirs):
                with contextlib.suppress(OSError):
                    os.close(fd)
            for transport in transports:
                transport.close()
            if pidfd is not None:
                with contextlib.suppress(OSError):
                    signal.pidfd_send_signal(pidfd, signal.SIGKILL)
                os.close(pidfd)
            if cgroup is not None:
                cgroup.kill()
                await cgroup.remove()
            if net is not None:
                net.close()
            if uid is not None:
                self._uids.release(uid)
            raise
        handle = _InitHandle(pidfd)
        process = _ForkedProcess(pid, exit, stdout, stderr, transports, handle)
        sandbox = RunningSandbox(
            spec=spec, proc=process, listener=net.listener, address=net.address,  # type: ignore[arg-type]
            cgroup=cgroup, uid=uid, bwrap=True, extra_kill=handle.kill, release_uid=self._uids.release,
            on_cleanup=self._ledger.forget, closers=(handle.close,),
        )
        self._forked += 1
        self._ledger.spawned(sandbox, started)
        return sandbox

    # --- the start-up probe ---------------------------------------------------------------

    def probe(self, timeout_s: float = 15.0) -> str | None:
        """The bubblewrap probe, then one forked sandbox that prints its /proc/self/status: None
        when both are isolated as designed. A failed zygote probe only turns zygotes off
        (`zygote_problem`): the backend still works, with bubblewrap alone."""
        problem = super().probe(timeout_s)
        if problem is not None:
            return problem
        interpreter = next((str(p) for p in sorted(Path("/usr/bin").glob("python3.*")) if _PYTHON.fullmatch(p.name)), None)
        if interpreter is None:
            self.zygote_problem = "no /usr/bin/python3.x to start a zygote with"
        else:
            try:
                status = _in_new_loop(self._probe_zygote(interpreter), timeout_s)
                self.zygote_problem = _isolation_problem(status)
            except Exception as exc:  # noqa: BLE001 - any failure turns zygotes off, loudly
                self.zygote_problem = f"the probe sandbox failed: {type(exc).__name__}: {exc}"
        if self.zygote_problem is not None:
            log.warning("zygotes are off, every sandbox starts with bubblewrap: %s", self.zygote_problem)
        self.reason = self._reason()
        return None

    async def _probe_zygote(self, interpreter: str) -> str:
        probe_dir = self.state_dir / "probe"
        probe_dir.mkdir(mode=0o755, exist_ok=True)
        script = probe_dir / "status.py"
        script.write_text("import sys\nsys.stdout.write(open('/proc/self/status').read())\n")
        script.chmod(0o644)
        spec = SandboxSpec(
            sandbox_id=os.urandom(16).hex(), function_name="firebox-probe", version="$LATEST",
            runtime="python3", code_dir=probe_dir, runtime_dir=self._empty,
            command=(interpreter, "/var/task/status.py"), environment={"LANG": "C.UTF-8"},
            memory_mb=64, ephemeral_storage_mb=1, max_processes=16, max_open_files=64,
        )
        how = plan(spec)
        assert how is not None
        try:
            zygote = await self._zygote(how.key)
            if zygote is None:
                raise ServiceError(self._broken.get(how.key, "the zygote did not start"))
            sandbox = await self._fork(zygote, how, spec)
            try:
                output = await sandbox.stdout.read()
                errors = await sandbox.stderr.read()
                if await sandbox.wait() != 0:
                    raise ServiceError(f"it exited {sandbox.returncode}: {errors.decode(errors='replace')[-300:]}")
            finally:
                await sandbox.cleanup()
        finally:
            for zygote in list(self._zygotes.values()):
                await zygote.close()
            self._zygotes.clear()
            self._broken.clear()
            script.unlink()
            probe_dir.rmdir()
        return output.decode(errors="replace")

    # --- the rest -------------------------------------------------------------------------

    def statistics(self) -> dict[str, object]:
        return {
            **super().statistics(),
            "forked": self._forked,
            "zygotes": [{"flavour": z.key.flavour, "live_children": z.live_children, "dead": z.dead,
                         "working_set_pages": z.working_set_pages} for z in self._zygotes.values()],
            "zygotes_broken": len(self._broken),
        }

    async def close(self) -> None:
        if not await self._ledger.close():
            return
        for zygote in list(self._zygotes.values()):
            await zygote.close()
        self._zygotes.clear()
        self.close_sync()


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


def _in_new_loop(coro: object, timeout_s: float) -> str:
    """Run `coro` to completion on a new event loop in a new thread (the caller may be inside
    a running loop)."""
    import concurrent.futures

    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, asyncio.wait_for(coro, timeout_s)).result()  # type: ignore[arg-type]


def _isolation_problem(status_text: str) -> str | None:
    """What a sandbox's /proc/self/status shows wrong, or None."""
    status = {key: value.strip() for key, _, value in (line.partition(":") for line in status_text.splitlines())}
    expected = {"CapEff": "0000000000000000", "CapBnd": "0000000000000000", "NoNewPrivs": "1", "Seccomp": "2"}
    wrong = {k: status.get(k) for k, v in expected.items() if status.get(k) != v}
    if status.get("Uid", "").split()[:1] != ["993"]:
        wrong["Uid"] = status.get("Uid")
    return f"the probe sandbox is not isolated as designed: {wrong}" if wrong else None


def _open_pidfd(pid: int, uid: int) -> int | None:
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
