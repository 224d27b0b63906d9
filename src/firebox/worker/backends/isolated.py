"""The isolated backend: one bubblewrap sandbox per `spawn`.

Launch sequence (`spawn`)
-------------------------
1. `netns.LoopbackMaker.create()` (on the maker's one long-lived thread): a new network
   namespace with only `lo` up and the Runtime API listener on 127.0.0.1:9001 inside it.
2. A host uid/gid from the backend's pool (60000-64999 by default): one per live sandbox, so
   RLIMIT_NPROC is per sandbox and no two sandboxes share an identity.
3. The cgroups (`cgroups.py`): memory limit = MemorySize, pids.max = max_processes.
4. `asyncio.create_subprocess_exec(bwrap, "--args", FD, "--", *command)` with `env={}` (nothing
   of the platform's environment reaches bwrap, hence nothing reaches `/proc/1/environ` inside)
   and a `preexec_fn` that, as root in the forked child and in this order: joins the network
   namespace (`setns`), writes its pid into the sandbox's cgroups, sets rlimits (NOFILE, NPROC,
   CORE=0), drops supplementary groups, then setgid/setuid to the
   sandbox's host uid. bwrap therefore NEVER runs as root: run as root, the sandbox's uid would
   map to host root and any bound host path would be readable with root's rights.
   Between the cgroups and the rlimits, still as root, it also enters a private mount
   namespace (`unshare(CLONE_NEWNS)`, propagation made private so nothing reaches the host)
   and bind-mounts `code_dir`, `runtime_dir` and the extra binds onto fixed mount points under
   the backend's state dir (`<state>/mnt/task`...). bwrap resolves bind sources as the
   sandbox's uid; through those mount points it never walks the directories' real ancestors,
   so the code cache may live under a 0700 data dir or a home directory. (Binding by fd does
   not help: bwrap turns `--ro-bind-fd` back into a path.) The directories' files must still
   be readable by others: the code cache makes them so. The mount namespace dies with the
   sandbox: nothing to undo, even after a crash.
5. bwrap's options come through a memfd (`--args`), so `/proc/1/cmdline` inside shows no host
   paths nor the environment; bwrap closes that fd and the seccomp fd before exec. The state
   dir itself (default `/tmp/firebox-sandboxes-<pid>-*`, made 0755) must be traversable.
6. `--info-fd` reports the host pid of the sandbox's pid-namespace init; the backend opens a
   pidfd on it. `kill()` SIGKILLs that init, which makes the kernel kill every process of the
   pid namespace at once (no fork-bomb race), then kills whatever the cgroup still lists.

Inside: uid 993 / gid 990 (AWS's `sbx_user1051`), hostname `169.254.<a>.<b>` (derived from the
sandbox id, like Lambda's link-local hostnames), a read-only root: the host's `/usr` (and `/bin`,
`/sbin`, `/lib*` as the same symlinks or binds as on the host), a minimal `/etc` written by the
backend (passwd/group with the sandbox user, hosts, nsswitch.conf, empty resolv.conf, UTC
localtime, services/protocols, plus the host's ld.so.cache, /etc/ssl and /etc/alternatives bound
read-only), fresh `/proc` and `/dev`, `/var/task` and `/var/runtime` read-only, the extra binds,
and `/tmp` as a tmpfs of EphemeralStorage bytes. The environment is exactly the spec's plus
AWS_LAMBDA_RUNTIME_API, and `PWD=/var/task`, which bwrap sets after `--chdir`.

Caveats
-------
- `/tmp` is a tmpfs: its pages are charged to the sandbox's memory cgroup, so /tmp use counts
  against MemorySize (Lambda's /tmp is disk). A disk-backed, quota-bounded /tmp needs project
  quotas on the host filesystem.
- Needs root (the private network namespace, the uid drop, cgroups). Without root the backend
  refuses to start and `choose_backend` falls back to the process backend.
- Cgroups unwritable (even as root, e.g. in some containers): the sandbox still runs, but the
  memory limit is not enforced and `memory_peak_bytes()` is None; `reason` says so.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ctypes.util
import json
import logging
import os
import secrets
import shutil
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from firebox.errors import ServiceError
from firebox.worker import netns, seccomp
from firebox.worker.backends._common import (
    DEFAULT_UID_RANGE,
    RunningSandbox,
    SandboxLedger,
    UidPool,
    check_host_dirs,
    drop_to,
    make_state_dir,
    set_rlimits,
    yield_to_platform,
)
from firebox.worker.cgroups import CgroupDriver, CgroupsUnavailable, SandboxCgroup
from firebox.worker.sandbox_api import RUNTIME_API_VARIABLE, SandboxSpec
from firebox.worker.subprocesses import sigkill

log = logging.getLogger(__name__)

BWRAP = Path("/usr/bin/bwrap")
SANDBOX_UID = 993  # AWS Lambda's sbx_user1051
SANDBOX_GID = 990
SANDBOX_USER = "sbx_user1051"
_INFO_TIMEOUT_S = 10.0
_HOST_TOP_DIRS = ("bin", "sbin", "lib", "lib64", "lib32")
_ETC_BINDS = ("ld.so.cache", "ssl", "alternatives")  # host files bound read-only into /etc
_ETC_COPIES = ("services", "protocols")  # small, public host files copied into the template

_ETC_FILES = {
    "passwd": (
        "root:x:0:0:root:/root:/sbin/nologin\n"
        f"{SANDBOX_USER}:x:{SANDBOX_UID}:{SANDBOX_GID}::/home/{SANDBOX_USER}:/sbin/nologin\n"
        "nobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin\n"
    ),
    "group": f"root:x:0:\n{SANDBOX_USER}:x:{SANDBOX_GID}:\nnogroup:x:65534:\n",
    "hosts": "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n",
    "nsswitch.conf": (
        "passwd: files\ngroup: files\nshadow: files\nhosts: files dns\nnetworks: files\n"
        "protocols: files\nservices: files\nethers: files\nrpc: files\n"
    ),
    "resolv.conf": "",
}


@dataclass
class _Launch:
    """One bwrap start, prepared: argv, the fds it inherits, the preexec function."""

    argv: list[str]
    pass_fds: tuple[int, ...]
    preexec: Callable[[], None]
    info_read: int
    close_after_start: list[int] = field(default_factory=list)

    def close_child_fds(self) -> None:
        for fd in self.close_after_start:
            with contextlib.suppress(OSError):
                os.close(fd)
        self.close_after_start.clear()


@dataclass
class Held:
    """What `IsolatedBackend._take` has taken so far for one sandbox."""

    net: netns.PrivateLoopback | None = None
    uid: int | None = None
    cgroup: SandboxCgroup | None = None


class IsolatedBackend:
    """`SandboxBackend` on bubblewrap. See the module docstring. Construct, then (optionally)
    `probe()`; `choose_backend` does both."""

    name = "isolated"
    isolated = True

    def __init__(
        self,
        *,
        bwrap: Path = BWRAP,
        state_dir: Path | None = None,
        uid_range: range = DEFAULT_UID_RANGE,
        use_cgroups: bool = True,
        cgroup_base: str | None = None,
        runtime_api_port: int = netns.RUNTIME_API_PORT,
    ) -> None:
        if os.geteuid() != 0:
            raise PermissionError(
                "the isolated backend needs root: it makes a private network namespace per sandbox "
                "and starts each sandbox under its own unprivileged uid"
            )
        if not (bwrap.is_file() and os.access(bwrap, os.X_OK)):
            raise FileNotFoundError(f"bubblewrap not found at {bwrap} (Debian package bubblewrap)")
        self._bwrap = bwrap
        self._port = runtime_api_port
        self._loopbacks = netns.LoopbackMaker(runtime_api_port)
        seccomp.compiled_filter()  # fails loudly (SeccompUnavailable) when libseccomp is missing
        self._own_state = state_dir is None
        self.state_dir = make_state_dir("firebox-sandboxes") if state_dir is None else Path(state_dir)
        self.state_dir.mkdir(parents=True, exist_ok=True)
        os.chmod(self.state_dir, 0o755)  # bwrap binds from here as the sandbox's uid
        self._etc = self._write_etc_template(self.state_dir / "etc")
        self._empty = self.state_dir / "empty"
        self._empty.mkdir(mode=0o755, exist_ok=True)
        self._staging = self.state_dir / "mnt"
        self._staging.mkdir(mode=0o755, exist_ok=True)
        self._uids = UidPool(uid_range)
        self._cgroups: CgroupDriver | None = None
        self.cgroup_problem: str | None = None
        if use_cgroups:
            try:
                self._cgroups = CgroupDriver.detect(base=cgroup_base)
            except (CgroupsUnavailable, OSError) as exc:
                self.cgroup_problem = str(exc)
        else:
            self.cgroup_problem = "cgroups disabled by configuration"
        self.version = _bwrap_version(bwrap)
        self._ledger = SandboxLedger()
        self.reason = self._reason()

    def _reason(self) -> str:
        limits = self._cgroups.description if self._cgroups else None
        text = (
            f"isolated: bubblewrap {self.version} sandboxes with user/pid/ipc/uts/mount/net namespaces, "
            "a private loopback per sandbox, seccomp, no capabilities, per-sandbox uids"
        )
        if limits:
            return f"{text}, memory and process limits through {limits}"
        return (
            f"{text}; WARNING: no usable cgroups ({self.cgroup_problem}): memory limits are NOT "
            "enforced and Max Memory Used is unknown"
        )

    # --- the /etc template ----------------------------------------------------------------

    @staticmethod
    def _write_etc_template(etc: Path) -> Path:
        if etc.exists():
            shutil.rmtree(etc)
        etc.mkdir(mode=0o755)
        for name, text in _ETC_FILES.items():
            (etc / name).write_text(text)
        for name in _ETC_COPIES:
            source = Path("/etc") / name
            if source.is_file():
                shutil.copyfile(source, etc / name)
        for name in _ETC_BINDS:  # mount points for the host files bound over them
            source = Path("/etc") / name
            if source.is_dir():
                (etc / name).mkdir(mode=0o755)
            elif source.exists():
                (etc / name).touch(mode=0o644)
        os.symlink("/usr/share/zoneinfo/Etc/UTC", etc / "localtime")
        for path in etc.rglob("*"):
            if not path.is_symlink():
                path.chmod(0o755 if path.is_dir() else 0o644)
        return etc

    # --- launching ------------------------------------------------------------------------

    def _bwrap_options(self, spec: SandboxSpec, seccomp_fd: int, info_fd: int) -> list[str]:
        opts = [
            "--unshare-user", "--unshare-pid", "--unshare-ipc", "--unshare-uts", "--unshare-cgroup-try",
            "--disable-userns", "--die-with-parent", "--new-session", "--cap-drop", "ALL",
            "--uid", str(SANDBOX_UID), "--gid", str(SANDBOX_GID),
            "--hostname", _hostname(spec.sandbox_id),
            "--ro-bind", "/usr", "/usr",
        ]
        for name in _HOST_TOP_DIRS:
            host = Path("/") / name
            if host.is_symlink():
                opts += ["--symlink", os.readlink(host), f"/{name}"]
            elif host.is_dir():
                opts += ["--ro-bind", str(host), f"/{name}"]
        opts += ["--ro-bind", str(self._etc), "/etc"]
        for name in _ETC_BINDS:
            if (self._etc / name).exists() and (Path("/etc") / name).exists():
                opts += ["--ro-bind", f"/etc/{name}", f"/etc/{name}"]
        opts += [
            "--proc", "/proc", "--dev", "/dev",
            "--ro-bind", str(self._stage("task")), "/var/task",
            "--ro-bind", str(self._stage("runtime")), "/var/runtime",
        ]
        for index, (_, target) in enumerate(spec.extra_ro_binds):
            opts += ["--ro-bind", str(self._stage(f"extra{index}")), target]
        opts += [
            "--size", str(spec.ephemeral_bytes), "--perms", "1777", "--tmpfs", "/tmp",
            "--remount-ro", "/",
            "--chdir", "/var/task",
            "--clearenv",
        ]
        for name, value in spec.environment.items():
            opts += ["--setenv", name, value]
        opts += ["--setenv", RUNTIME_API_VARIABLE, f"{netns.RUNTIME_API_HOST}:{self._port}"]
        opts += ["--seccomp", str(seccomp_fd), "--info-fd", str(info_fd)]
        return opts

    def _stage(self, name: str) -> Path:
        """A mount point under the state dir onto which the launcher binds a host directory in
        the sandbox's own mount namespace (see `_prepare`)."""
        path = self._staging / name
        if not path.is_dir():
            path.mkdir(mode=0o755, exist_ok=True)
        return path

    def _prepare(self, spec: SandboxSpec, net: netns.PrivateLoopback, uid: int,
                 cgroup: SandboxCgroup | None) -> _Launch:
        opened: list[int] = []
        try:
            seccomp_fd = seccomp.filter_fd()
            opened.append(seccomp_fd)
            info_read, info_write = os.pipe2(os.O_CLOEXEC)
            opened += [info_write]
            options = self._bwrap_options(spec, seccomp_fd, info_write)
            args_fd = os.memfd_create("firebox-bwrap-args", os.MFD_CLOEXEC)
            opened.append(args_fd)
            os.write(args_fd, b"".join(option.encode() + b"\0" for option in options))
            os.lseek(args_fd, 0, os.SEEK_SET)
        except BaseException:
            for fd in opened:
                os.close(fd)
            raise
        netns_fd = net.netns_fd
        attach = cgroup.attach_self if cgroup is not None else None
        staged = [(str(spec.code_dir).encode(), str(self._stage("task")).encode()),
                  (str(spec.runtime_dir).encode(), str(self._stage("runtime")).encode())]
        staged += [(str(host).encode(), str(self._stage(f"extra{index}")).encode())
                   for index, (host, _) in enumerate(spec.extra_ro_binds)]

        def preexec() -> None:  # in the forked child, as root, before exec
            netns.enter_netns(netns_fd)
            if attach is not None:
                attach()
            # A private mount namespace in which the host directories appear at the staging
            # mount points: bwrap, running as the sandbox's uid, then binds those and never
            # walks the directories' real ancestors (a 0700 data dir, a home directory).
            netns.unshare(CLONE_NEWNS)
            _mount(None, b"/", MS_REC | MS_PRIVATE)
            for source, target in staged:
                _mount(source, target, MS_BIND | MS_REC)
            set_rlimits(spec, per_uid=True)
            yield_to_platform()
            drop_to(uid, uid)

        argv = [str(self._bwrap), "--args", str(args_fd), "--", *spec.command]
        return _Launch(argv, tuple(opened), preexec, info_read, close_after_start=opened)

    async def spawn(self, spec: SandboxSpec) -> RunningSandbox:
        self._ledger.admit(spec)
        check_host_dirs(spec)
        started = time.monotonic()
        held = Held()
        launch: _Launch | None = None
        proc: asyncio.subprocess.Process | None = None
        try:
            net, uid, cgroup = await self._take(spec, held)
            launch = self._prepare(spec, net, uid, cgroup)
            # Shielded: cancelled half-way, asyncio would have forked bwrap without handing us
            # the process, and nothing would kill the sandbox it starts (whose processes hold
            # the output pipes: the clean-up would then wait on them). A cancelled spawn
            # finishes starting (milliseconds) and is killed below.
            creating = asyncio.ensure_future(asyncio.create_subprocess_exec(
                *launch.argv,
                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                env={}, cwd="/", pass_fds=launch.pass_fds, preexec_fn=launch.preexec,
                start_new_session=True,
            ))
            try:
                proc = await asyncio.shield(creating)
            except asyncio.CancelledError:
                with contextlib.suppress(Exception):
                    proc = await creating
                raise
            finally:
                launch.close_child_fds()
                net.close_netns_fd()
            info = await _read_info(launch.info_read, _INFO_TIMEOUT_S)
            if info is None:
                status = await _exit_within(proc, _INFO_TIMEOUT_S)
                detail = (await _drain(proc.stderr)).decode(errors="replace").strip()
                raise ServiceError(f"the sandbox did not start (bwrap status {status}): {detail[-500:]}")
            init = _open_init(info.get("child-pid"), proc.pid)
        except BaseException:
            self._ledger.failed()
            if launch is not None:
                with contextlib.suppress(OSError):
                    os.close(launch.info_read)
            if proc is not None:
                if held.cgroup is not None:
                    held.cgroup.kill()  # the sandbox's own processes too: they hold the pipes
                sigkill(proc)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(asyncio.shield(proc.wait()), _INFO_TIMEOUT_S)
                if (transport := getattr(proc, "_transport", None)) is not None:
                    transport.close()
            await self._give_back(held)
            raise
        os.close(launch.info_read)

        handle = _InitHandle(init)
        sandbox = RunningSandbox(
            spec=spec, proc=proc, listener=net.listener, address=net.address, cgroup=cgroup, uid=uid,
            bwrap=True, extra_kill=handle.kill, release_uid=self._uids.release,
            on_cleanup=self._ledger.forget, closers=(handle.close,),
        )
        self._ledger.spawned(sandbox, started)
        return sandbox

    async def _take(self, spec: SandboxSpec, held: Held) -> tuple[netns.PrivateLoopback, int, SandboxCgroup | None]:
        """What every sandbox of this backend gets, whoever starts it (bubblewrap or a zygote):
        a private network namespace, a host uid, its cgroups. Recorded in `held` as they are
        taken, so that `_give_back` returns exactly those after a failure half-way."""
        held.net = await self._loopbacks.create()
        held.uid = self._uids.allocate()
        if self._cgroups is not None:
            held.cgroup = self._cgroups.create(spec.sandbox_id, memory_bytes=spec.memory_bytes,
                                               max_pids=spec.max_processes)
        return held.net, held.uid, held.cgroup

    async def _give_back(self, held: Held) -> None:
        """Release what `_take` took for a sandbox that did not start (its cgroup's leftover
        processes are killed by the removal)."""
        if held.net is not None:
            held.net.close()
        if held.cgroup is not None:
            await held.cgroup.remove()
        if held.uid is not None:
            self._uids.release(held.uid)

    # --- the start-up probe ---------------------------------------------------------------

    def probe(self, timeout_s: float = 15.0) -> str | None:
        """Start one real sandbox (every flag, seccomp, netns, uid drop, cgroups) that prints
        its /proc/self/status; None when it ran and is isolated as designed, else the problem."""
        spec = SandboxSpec(
            sandbox_id=secrets.token_hex(16), function_name="firebox-probe", version="$LATEST",
            runtime="provided.al2023", code_dir=self._empty, runtime_dir=self._empty,
            command=("/usr/bin/cat", "/proc/self/status"), environment={"LANG": "C.UTF-8"},
            memory_mb=64, ephemeral_storage_mb=1, max_processes=16, max_open_files=64,
        )
        cgroup = None
        uid = self._uids.allocate()
        try:
            net = netns.create_private_loopback(self._port)
        except OSError as exc:
            self._uids.release(uid)
            return f"cannot create a private network namespace: {exc}"
        try:
            if self._cgroups is not None:
                cgroup = self._cgroups.create(spec.sandbox_id, memory_bytes=spec.memory_bytes, max_pids=16)
            launch = self._prepare(spec, net, uid, cgroup)
            try:
                result = subprocess.run(
                    launch.argv, stdin=subprocess.DEVNULL, capture_output=True, env={}, cwd="/",
                    pass_fds=launch.pass_fds, preexec_fn=launch.preexec, start_new_session=True,
                    timeout=timeout_s, check=False,
                )
            finally:
                launch.close_child_fds()
                os.close(launch.info_read)
        except (OSError, subprocess.SubprocessError, ServiceError) as exc:
            return f"the probe sandbox failed to start: {exc}"
        finally:
            net.close()
            if cgroup is not None:
                cgroup.remove_sync()
            self._uids.release(uid)
        if result.returncode != 0:
            return f"the probe sandbox exited {result.returncode}: {result.stderr.decode(errors='replace').strip()[-300:]}"
        return isolation_problem(result.stdout.decode(errors="replace"))

    # --- the rest of the contract ---------------------------------------------------------

    def statistics(self) -> dict[str, object]:
        cgroups = self._cgroups.description if self._cgroups else None
        return self._ledger.statistics(self.name, self._uids, cgroups)

    async def close(self) -> None:
        if not await self._ledger.close():
            return
        self.close_sync()

    def close_sync(self) -> None:
        """Release the cgroup instance group and the state dir (no sandbox may be live)."""
        self._ledger.closed = True
        self._loopbacks.close()
        if self._cgroups is not None:
            self._cgroups.close()
        if self._own_state:
            shutil.rmtree(self.state_dir, ignore_errors=True)
        else:
            shutil.rmtree(self._etc, ignore_errors=True)
            for directory in (*self._staging.glob("*"), self._staging, self._empty):
                with contextlib.suppress(OSError):
                    directory.rmdir()  # rmdir only: never recurse into a mount point


CLONE_NEWNS = 0x00020000
MS_BIND = 4096
MS_REC = 16384
MS_PRIVATE = 1 << 18
_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
_libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_void_p]


def _mount(source: bytes | None, target: bytes, flags: int) -> None:
    if _libc.mount(source, target, None, flags, None) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"mount {source!r} on {target!r}: {os.strerror(err)}")


class _InitHandle:
    """A pidfd on the sandbox's pid-namespace init. SIGKILL to it ends every process of the
    namespace at once. Closing forgets the fd, so a later kill() cannot hit a reused fd."""

    def __init__(self, pidfd: int | None) -> None:
        self._pidfd = pidfd

    def kill(self) -> bool:
        if self._pidfd is None:
            return False
        try:
            signal.pidfd_send_signal(self._pidfd, signal.SIGKILL)
        except OSError:  # ESRCH: it is gone already
            return False
        return True

    def close(self) -> None:
        if self._pidfd is not None:
            os.close(self._pidfd)
            self._pidfd = None


def isolation_problem(status_text: str) -> str | None:
    """What a probe sandbox's /proc/self/status shows wrong (None: uid 993, no capabilities,
    not even in the bounding set, no_new_privs, a seccomp filter)."""
    status = {key: value.strip() for key, _, value in (line.partition(":") for line in status_text.splitlines())}
    expected = {"CapEff": "0000000000000000", "CapBnd": "0000000000000000", "NoNewPrivs": "1", "Seccomp": "2"}
    wrong = {k: status.get(k) for k, v in expected.items() if status.get(k) != v}
    if status.get("Uid", "").split()[:1] != [str(SANDBOX_UID)]:
        wrong["Uid"] = status.get("Uid")
    return f"the probe sandbox is not isolated as designed: {wrong}" if wrong else None


def _hostname(sandbox_id: str) -> str:
    return f"169.254.{int(sandbox_id[:2], 16)}.{int(sandbox_id[2:4], 16)}"


def _bwrap_version(bwrap: Path) -> str:
    try:
        out = subprocess.run([str(bwrap), "--version"], capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.SubprocessError):
        return "(unknown version)"
    return out.stdout.strip().removeprefix("bubblewrap ").strip() or "(unknown version)"


def _open_init(child_pid: object, bwrap_pid: int) -> int | None:
    """A pidfd on the sandbox's pid-namespace init, checked to be bwrap's child (not a recycled
    pid); None when it is gone already (bwrap then exits by itself)."""
    if not isinstance(child_pid, int) or child_pid <= 0:
        return None
    try:
        pidfd = os.pidfd_open(child_pid)
    except OSError:
        return None
    try:
        with open(f"/proc/{child_pid}/stat", "rb") as stat:
            parent = int(stat.read().rpartition(b")")[2].split()[1])
    except (OSError, ValueError, IndexError):
        parent = -1
    if parent != bwrap_pid:
        os.close(pidfd)
        return None
    return pidfd


async def _read_info(fd: int, timeout_s: float) -> dict[str, object] | None:
    """bwrap's --info-fd JSON, or None when bwrap closed the pipe without writing it."""
    loop = asyncio.get_running_loop()
    os.set_blocking(fd, False)
    buffer = b""
    deadline = loop.time() + timeout_s
    while True:
        try:
            chunk = os.read(fd, 65536)
        except BlockingIOError:
            ready: asyncio.Future[None] = loop.create_future()
            loop.add_reader(fd, lambda: ready.done() or ready.set_result(None))
            try:
                await asyncio.wait_for(ready, max(0.0, deadline - loop.time()))
            except asyncio.TimeoutError:
                return None
            finally:
                loop.remove_reader(fd)
            continue
        if not chunk:
            return None
        buffer += chunk
        with contextlib.suppress(ValueError):
            info = json.loads(buffer)
            if isinstance(info, dict):
                return info


async def _exit_within(proc: asyncio.subprocess.Process, timeout_s: float) -> int | None:
    try:
        return await asyncio.wait_for(proc.wait(), timeout_s)
    except asyncio.TimeoutError:
        return None


async def _drain(stream: asyncio.StreamReader | None, limit: int = 65536) -> bytes:
    if stream is None:
        return b""
    try:
        return await asyncio.wait_for(stream.read(limit), 1.0)
    except asyncio.TimeoutError:
        return b""

