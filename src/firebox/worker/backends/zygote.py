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
cgroups, picks the uid, clones the code directory's mount (detached, read-only), opens the
output pipes and, for our runtimes (not `script`), a socketpair whose one end the runtime keeps
as its Runtime API connection (`runtime_api_connection` is the other; the listener stays, for
whatever else inside wants AWS_LAMBDA_RUNTIME_API), and sends them to the zygote with the
request; the sandbox's environment and command go on a socket of their own that only the
forked child reads (the zygote's memory is inherited by every later child, so it must never
hold a function's variables). The zygote
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

import asyncio
import base64
import contextlib
import json
import logging
import os
import re
import signal
import socket
import time
from collections import OrderedDict
from pathlib import Path
from typing import NamedTuple

from firebox.errors import ServiceError
from firebox.runtimes.api import PYTHON_FLAGS, PYTHON_LOADER
from firebox.worker import netns, seccomp
from firebox.worker.backends._common import RunningSandbox, check_host_dirs
from firebox.worker.backends.isolated import (
    _ETC_BINDS,
    Held,
    IsolatedBackend,
    _hostname,
    _InitHandle,
    isolation_problem,
)
from firebox.worker.backends.zygote_process import (
    ForkedProcess,
    Zygote,
    ZygoteKey,
    detached_readonly_tree,
    open_pidfd,
    read_pipe,
)
from firebox.worker.sandbox_api import RUNTIME_API_VARIABLE, SandboxSpec

__all__ = ["Plan", "ZygoteBackend", "ZygoteKey", "plan", "startup_environment"]

log = logging.getLogger(__name__)

MAX_ZYGOTES = 4
_SHM_BYTES = 64 * 1024 * 1024
_PYTHON = re.compile(r"python3(\.\d+)?")
_STARTUP_PREFIXES = ("PYTHON", "LD_", "LC_", "MALLOC_", "GLIBC_")
_STARTUP_NAMES = frozenset({"TZ", "LANG", "LANGUAGE", "PATH"})
# What the preloads read (stem.py's `preload`: bootstrap.setup_path).
_PRELOAD_NAMES = frozenset({"LAMBDA_TASK_ROOT", "FIREBOX_RUNTIME_LIBS"})
_BOOTSTRAP = "python/bootstrap.py"
_STEM = "python/stem.py"


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
        held = Held()
        mine: list[int] = []  # our ends (the private socket, the pipes' read ends): closed on failure
        theirs: list[int] = []  # what the zygote's child gets: closed here once it is sent
        transports: list[asyncio.BaseTransport] = []
        pidfd: int | None = None
        connection: socket.socket | None = None  # our end of the runtime's Runtime API socket
        try:
            net, uid, cgroup = await self._take(spec, held)
            # The environment and command go to the child alone, never through the zygote (whose
            # memory every later child inherits): on a socket of their own.
            private, private_theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
            mine.append(private.detach())
            theirs.append(private_theirs.detach())
            theirs.append(detached_readonly_tree(spec.code_dir))
            for _ in ("stdout", "stderr"):
                read_end, write_end = os.pipe2(os.O_CLOEXEC)
                mine.append(read_end)
                theirs.append(write_end)
            if how.kind != "script":
                # Our runtimes (bootstrap, stem) start holding a connected socket to the Runtime
                # API: no connect in the cold start, and cheaper round trips than loopback TCP.
                connection, runtime_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
                connection.setblocking(False)
                theirs.append(runtime_end.detach())
            for path in cgroup.self_paths if cgroup is not None else ():
                theirs.append(os.open(path, os.O_WRONLY | os.O_CLOEXEC))
            # In the order the child takes them: its socket, netns, code, stdout, stderr, the
            # runtime's socket (unless `script`), cgroups.
            fds = [theirs[0], net.netns_fd, *theirs[1:]]
            environment = {**spec.environment, RUNTIME_API_VARIABLE: f"{netns.RUNTIME_API_HOST}:{self._port}"}
            request = {
                "id": spec.sandbox_id, "uid": uid, "hostname": _hostname(spec.sandbox_id),
                "tmp_bytes": spec.ephemeral_bytes, "shm_bytes": min(_SHM_BYTES, spec.memory_bytes),
                "max_open_files": spec.max_open_files, "max_processes": spec.max_processes,
                "runtime_socket": connection is not None,
            }
            with socket.socket(fileno=mine.pop(0)) as private:
                private.send(json.dumps({"kind": how.kind, "argv": list(how.argv), "cmdline": list(spec.command),
                                         "environment": environment}).encode())
            try:
                pid = await zygote.spawn(request, fds)
            finally:
                for fd in theirs:
                    os.close(fd)
                theirs.clear()
                net.close_netns_fd()
            pidfd = open_pidfd(pid, uid)
            exit = zygote.claim(pid, pidfd)
            stdout, out_transport = await read_pipe(loop, mine.pop(0))
            transports.append(out_transport)
            stderr, err_transport = await read_pipe(loop, mine.pop(0))
            transports.append(err_transport)
        except BaseException:
            self._ledger.failed()
            if connection is not None:
                connection.close()
            for fd in (*mine, *theirs):
                with contextlib.suppress(OSError):
                    os.close(fd)
            for transport in transports:
                transport.close()
            if pidfd is not None:
                with contextlib.suppress(OSError):
                    signal.pidfd_send_signal(pidfd, signal.SIGKILL)
                os.close(pidfd)
            await self._give_back(held)
            raise
        handle = _InitHandle(pidfd)
        process = ForkedProcess(pid, exit, stdout, stderr, transports, handle)
        sandbox = RunningSandbox(
            spec=spec, proc=process, listener=net.listener, address=net.address,  # type: ignore[arg-type]
            cgroup=cgroup, uid=uid, bwrap=True, extra_kill=handle.kill, release_uid=self._uids.release,
            on_cleanup=self._ledger.forget, closers=(handle.close,), connection=connection,
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
                self.zygote_problem = isolation_problem(status)
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
                         "working_set_pages": z.working_set_pages, "rehearsed": z.rehearsed}
                        for z in self._zygotes.values()],
            "zygotes_broken": len(self._broken),
        }

    async def close(self) -> None:
        if not await self._ledger.close():
            return
        for zygote in list(self._zygotes.values()):
            await zygote.close()
        self._zygotes.clear()
        self.close_sync()


def _in_new_loop(coro: object, timeout_s: float) -> str:
    """Run `coro` to completion on a new event loop in a new thread (the caller may be inside
    a running loop)."""
    import concurrent.futures

    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, asyncio.wait_for(coro, timeout_s)).result()  # type: ignore[arg-type]
