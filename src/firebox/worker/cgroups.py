"""Control groups for sandboxes: the memory limit (`MemorySize`), its peak (`Max Memory Used`),
OOM-kill counts, a process limit, and "kill everything in the sandbox".

Layout
------
One group per backend instance, `firebox/<pid>-<random>`, made under the platform's OWN cgroup
of each hierarchy (read from /proc/self/cgroup), so sandboxes are charged to wherever the platform
runs (a systemd service, a container); `base=` overrides that. One leaf per sandbox under it,
named by the sandbox id. Instance groups whose pid is dead (a crashed platform) are swept on
start. `CgroupDriver.close()` removes the instance group.

Drivers, chosen by probing which files exist (`CgroupDriver.detect`):

cgroup v1 (this machine: controllers mounted at /sys/fs/cgroup/<controller>)
    memory: `memory.limit_in_bytes` = MemorySize, `memory.memsw.limit_in_bytes` = the same when
    present (no swap beyond the limit), `memory.swappiness` = 0 (written once, on the instance
    group: a new group starts with its parent's swappiness, so each sandbox's is 0 without a
    write of its own; whether `memsw` exists is learnt there once too); the peak is
    `memory.max_usage_in_bytes`, reset by writing 0; OOM kills are the `oom_kill N` line of
    `memory.oom_control`. pids (when mounted): `pids.max`. Killing: SIGKILL every pid listed in
    `cgroup.procs`, a few passes (a fork racing the kill shows up in the next pass).
cgroup v2 (unified, used only when its `cgroup.controllers` offers `memory`)
    `memory.max` = MemorySize, `memory.swap.max` = 0, `memory.oom.group` = 1 (an OOM kill takes
    the whole sandbox, as a Lambda OOM does), `pids.max`; the peak is `memory.peak` (kernel
    5.19+). Resetting it: since Linux 6.12 a write to `memory.peak` resets the peak *as seen
    through that open file*, so the driver keeps one fd open per sandbox and reads through it.
    On older kernels the write fails and the peak stays the sandbox's lifetime peak (documented
    over-estimate for warm invocations). OOM kills: `oom_kill N` of `memory.events`. Killing:
    `cgroup.kill` (5.14+), else the v1 way. The instance group enables `+memory +pids` in its
    parents' `cgroup.subtree_control`; under v2's "no internal processes" rule that works when
    the base group holds no process itself (the root does qualify), otherwise detection fails
    with the reason, and the backends run without cgroups.

Note: `pids.max` (and RLIMIT_NPROC) count threads, not just processes.

Sandboxes join their groups from the launcher's `preexec_fn`, as root, before dropping to the
sandbox's uid (`SandboxCgroup.attach_self`; see there why v1 writes "0" to `tasks`).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import secrets
import signal
import time
from dataclasses import dataclass
from pathlib import Path

FIREBOX_GROUP = "firebox"
_KILL_PASSES = 16
_REMOVE_TIMEOUT_S = 5.0


class CgroupsUnavailable(OSError):
    """No usable, writable memory cgroup on this host (the reason is the message)."""


@dataclass(frozen=True)
class _Mount:
    fstype: str  # "cgroup" or "cgroup2"
    root: str  # the mount's root inside its hierarchy
    mountpoint: Path
    options: frozenset[str]  # super options: the v1 controllers


def _mounts() -> list[_Mount]:
    found = []
    with open("/proc/self/mountinfo", encoding="utf-8") as info:
        for line in info:
            left, _, right = line.partition(" - ")
            fields, rest = left.split(), right.split()
            if len(fields) < 5 or len(rest) < 3 or rest[0] not in ("cgroup", "cgroup2"):
                continue
            mountpoint = fields[4].replace("\\040", " ")
            found.append(_Mount(rest[0], fields[3], Path(mountpoint), frozenset(rest[2].split(","))))
    return found


def _own_cgroups() -> dict[str, str]:
    """controller (or "" for the unified hierarchy) -> this process's path in it."""
    own: dict[str, str] = {}
    with open("/proc/self/cgroup", encoding="utf-8") as lines:
        for line in lines:
            _, controllers, path = line.rstrip("\n").split(":", 2)
            for controller in controllers.split(",") if controllers else [""]:
                own[controller] = path
    return own


def _inside(mount: _Mount, path: str) -> Path:
    """The directory of hierarchy path `path` under `mount` (mounted at `mount.root`)."""
    root = mount.root.rstrip("/")
    if root and (path == root or path.startswith(root + "/")):
        path = path[len(root):]
    return mount.mountpoint / path.lstrip("/")


def _write(path: Path | str, value: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
    try:
        os.write(fd, value.encode())
    finally:
        os.close(fd)


def _read_int(path: Path) -> int:
    return int(path.read_text().split()[0])


def _keyed(path: Path, key: str) -> int:
    for line in path.read_text().splitlines():
        name, _, value = line.partition(" ")
        if name == key:
            return int(value)
    return 0


def _procs(directory: Path) -> set[int]:
    try:
        return {int(pid) for pid in (directory / "cgroup.procs").read_text().split()}
    except FileNotFoundError:
        return set()


def _kill_pids(pids: set[int]) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def _kill_all(directory: Path, exclude: frozenset[int] = frozenset()) -> None:
    for _ in range(_KILL_PASSES):
        pids = _procs(directory) - exclude
        if not pids:
            return
        _kill_pids(pids)


def _rmdir_tree(directory: Path) -> None:
    """rmdir `directory` and its sub-groups (deepest first); cgroup files vanish with them."""
    for sub in sorted((p for p in directory.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts)):
        with contextlib.suppress(FileNotFoundError):
            os.rmdir(sub)
    with contextlib.suppress(FileNotFoundError):
        os.rmdir(directory)


class SandboxCgroup:
    """One sandbox's groups. Reads are cheap file reads; all methods are synchronous except
    `remove`. After `remove`, readers return None / 0."""

    version: int

    def __init__(self, dirs: tuple[Path, ...]) -> None:
        self.dirs = dirs  # the sandbox's directory in each hierarchy it uses (memory first)
        self.procs_paths: tuple[str, ...] = tuple(f"{d}/cgroup.procs" for d in dirs)
        self.self_paths: tuple[str, ...] = tuple(f"{d}/{'tasks' if self.version == 1 else 'cgroup.procs'}" for d in dirs)
        self.removed = False
        self.memory_limit: int | None = None  # the limit this object last wrote (None: unknown)

    def attach(self, pid: int) -> None:
        """Move process `pid` into the sandbox's groups."""
        data = str(pid).encode()
        for path in self.procs_paths:
            fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
            try:
                os.write(fd, data)
            finally:
                os.close(fd)

    def attach_self(self) -> None:
        """Move the calling, SINGLE-THREADED process into the sandbox's groups: for the
        launcher's `preexec_fn`. v1: "0" is written to each group's `tasks` (this thread only),
        which is the one migration the kernel does without taking the global
        cgroup_threadgroup_rwsem; taking it (any `cgroup.procs` write) costs a full RCU grace
        period, measured at ~12 ms per sandbox start here. v2: "0" to `cgroup.procs`."""
        for path in self.self_paths:
            fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
            try:
                os.write(fd, b"0")
            finally:
                os.close(fd)

    def pids(self) -> set[int]:
        found: set[int] = set()
        for directory in self.dirs:
            found |= _procs(directory)
        return found

    def kill(self, exclude: frozenset[int] = frozenset()) -> None:
        """SIGKILL every process in the sandbox's groups but `exclude` (a few passes; never
        blocks long)."""
        for directory in self.dirs:
            _kill_all(directory, exclude)

    # Max Memory Used is read and reset after every invocation: through one file kept open
    # (`_open_peak`; v1 memory.max_usage_in_bytes, v2 memory.peak), a pread and a pwrite,
    # instead of an open/read/close and an open/write/close on the warm path.
    _peak_fd: int | None = None
    _PEAK_RESET: bytes  # what a write to the peak file resets it with

    def _open_peak(self, path: str) -> None:
        with contextlib.suppress(OSError):
            self._peak_fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)

    def memory_peak(self) -> int | None:
        if self.removed or self._peak_fd is None:
            return None
        try:
            return int(os.pread(self._peak_fd, 64, 0).split()[0])
        except (OSError, ValueError, IndexError):
            return None

    def set_memory_limit(self, memory_bytes: int) -> None:
        """Change the memory limit of a running sandbox (a stem cell becoming a function's);
        OSError on failure."""
        raise NotImplementedError

    def reset_memory_peak(self) -> None:
        if not self.removed and self._peak_fd is not None:
            try:  # not contextlib.suppress: this is on every invocation (about 3,900 instructions)
                os.pwrite(self._peak_fd, self._PEAK_RESET, 0)
            except OSError:
                pass  # v2 before Linux 6.12: the peak stays the lifetime peak

    def take_memory_peak(self) -> int | None:
        """`memory_peak()`, then `reset_memory_peak()`, written out in one: what the end of each
        invocation asks."""
        if self.removed or self._peak_fd is None:
            return None
        try:
            peak: int | None = int(os.pread(self._peak_fd, 64, 0))  # one number and a newline
        except (OSError, ValueError):
            peak = None
        try:
            os.pwrite(self._peak_fd, self._PEAK_RESET, 0)
        except OSError:
            pass
        return peak

    def oom_kills(self) -> int:
        raise NotImplementedError

    def _close_files(self) -> None:
        if self._peak_fd is not None:
            os.close(self._peak_fd)
            self._peak_fd = None

    def _remove_once(self) -> bool:
        """One pass: rmdir what is empty, kill what is not; True when every group is gone."""
        self._close_files()
        pending = []
        for directory in self.dirs:
            try:
                os.rmdir(directory)
            except FileNotFoundError:
                pass
            except OSError as exc:
                if exc.errno != errno.EBUSY:
                    raise
                _kill_all(directory)
                pending.append(directory)
        self.removed = not pending
        return self.removed

    async def remove(self, timeout_s: float = _REMOVE_TIMEOUT_S) -> bool:
        """Kill what is left and rmdir the groups, retrying while tasks drain; False if some
        group could not be removed before the deadline (it stays, and is swept with the instance
        group later)."""
        deadline = time.monotonic() + timeout_s
        delay = 0.001
        while not (self.removed or self._remove_once()):
            if time.monotonic() > deadline:
                return False
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.05)
        return True

    def remove_sync(self, timeout_s: float = _REMOVE_TIMEOUT_S) -> bool:
        """`remove` for synchronous callers (the start-up probe)."""
        deadline = time.monotonic() + timeout_s
        delay = 0.001
        while not (self.removed or self._remove_once()):
            if time.monotonic() > deadline:
                return False
            time.sleep(delay)
            delay = min(delay * 2, 0.05)
        return True


class _V1Sandbox(SandboxCgroup):
    version = 1
    _PEAK_RESET = b"0"

    def __init__(self, memory: Path, pids: Path | None) -> None:
        super().__init__((memory,) + ((pids,) if pids else ()))
        self.memory = memory
        self._open_peak(f"{memory}/memory.max_usage_in_bytes")

    def set_memory_limit(self, memory_bytes: int) -> None:
        if memory_bytes == self.memory_limit:
            return  # a stem cell specialised for the limit it has already: nothing to write
        # memory.memsw.limit_in_bytes must stay >= memory.limit_in_bytes at every step.
        memsw = self.memory / "memory.memsw.limit_in_bytes"
        files = ["memory.limit_in_bytes"]
        if memsw.exists():
            current = self.memory_limit if self.memory_limit is not None else _read_int(self.memory / "memory.limit_in_bytes")
            files = ["memory.memsw.limit_in_bytes", *files] if memory_bytes > current else [*files, "memory.memsw.limit_in_bytes"]
        for name in files:
            _write(self.memory / name, str(memory_bytes))
        self.memory_limit = memory_bytes

    def oom_kills(self) -> int:
        if self.removed:
            return 0
        try:
            return _keyed(self.memory / "memory.oom_control", "oom_kill")
        except FileNotFoundError:
            return 0


class _V2Sandbox(SandboxCgroup):
    version = 2
    _PEAK_RESET = b"reset\n"  # (Linux 6.12 and later)

    def __init__(self, directory: Path) -> None:
        super().__init__((directory,))
        self.directory = directory
        self._open_peak(f"{directory}/memory.peak")

    def set_memory_limit(self, memory_bytes: int) -> None:
        if memory_bytes != self.memory_limit:
            _write(self.directory / "memory.max", str(memory_bytes))
            self.memory_limit = memory_bytes

    def oom_kills(self) -> int:
        if self.removed:
            return 0
        try:
            return _keyed(self.directory / "memory.events", "oom_kill")
        except FileNotFoundError:
            return 0

    def kill(self, exclude: frozenset[int] = frozenset()) -> None:
        if not exclude:
            try:
                _write(self.directory / "cgroup.kill", "1")
                return
            except OSError:
                pass
        super().kill(exclude)


class CgroupDriver:
    """Makes the instance group and one leaf per sandbox. Use `detect()`."""

    def __init__(self, version: int, instance_dirs: tuple[Path, ...], controllers: tuple[str, ...]) -> None:
        self.version = version
        self.instance_dirs = instance_dirs  # memory first; for v1 then pids (when mounted)
        self.controllers = controllers
        self.description = f"cgroup v{version} ({', '.join(controllers)})"
        # v1, learnt once on the instance group rather than per sandbox (`_make_v1`): whether
        # groups have swap accounting (`memory.memsw.*`), and whether a new group starts with
        # swappiness 0 (the kernel copies the parent's into a new group).
        self.v1_memsw = False
        self.v1_swappiness_inherited = False

    @classmethod
    def detect(cls, *, base: str | None = None, instance_id: str | None = None) -> CgroupDriver:
        """A driver with its instance group created, or CgroupsUnavailable saying why not.

        `base`: the hierarchy path to create `firebox/<instance>` under (default: this
        process's own cgroup in each hierarchy)."""
        instance = instance_id or f"{os.getpid()}-{secrets.token_hex(4)}"
        try:
            mounts = _mounts()
            own = _own_cgroups()
        except OSError as exc:
            raise CgroupsUnavailable(errno.ENOENT, f"cannot read the cgroup mounts: {exc}") from exc
        v1 = {name: m for m in mounts if m.fstype == "cgroup" for name in m.options}
        unified = next((m for m in mounts if m.fstype == "cgroup2"), None)
        problems = []
        if unified is not None:
            controllers = _v2_controllers(unified.mountpoint)
            if "memory" in controllers:
                try:
                    return cls._make_v2(unified, base if base is not None else own.get("", "/"), instance)
                except OSError as exc:
                    problems.append(f"cgroup v2 at {unified.mountpoint}: {exc}")
        if "memory" in v1:
            try:
                return cls._make_v1(v1["memory"], v1.get("pids"), own, base, instance)
            except OSError as exc:
                problems.append(f"cgroup v1 memory at {v1['memory'].mountpoint}: {exc}")
        if not problems:
            problems.append("no cgroup hierarchy with the memory controller is mounted")
        raise CgroupsUnavailable(errno.ENOTSUP, "; ".join(problems))

    @classmethod
    def _make_v1(cls, memory: _Mount, pids: _Mount | None, own: dict[str, str], base: str | None,
                 instance: str) -> CgroupDriver:
        mounts = [("memory", memory)] + ([("pids", pids)] if pids else [])
        made: list[Path] = []
        try:
            for controller, mount in mounts:
                top = _inside(mount, base if base is not None else own.get(controller, "/")) / FIREBOX_GROUP
                top.mkdir(exist_ok=True)
                _sweep_stale(top)
                directory = top / instance
                directory.mkdir()
                made.append(directory)
            # A probe write proves we may configure groups here (root, or a delegated tree).
            _write(made[0] / "memory.limit_in_bytes", "-1")
        except OSError:
            for directory in made:
                with contextlib.suppress(OSError):
                    os.rmdir(directory)
            raise
        driver = cls(1, tuple(made), tuple(name for name, _ in mounts))
        driver.v1_memsw = (made[0] / "memory.memsw.limit_in_bytes").exists()
        try:
            _write(made[0] / "memory.swappiness", "0")
            driver.v1_swappiness_inherited = True
        except OSError:
            pass  # then `create` tries it on each sandbox's group, as best effort
        return driver

    @classmethod
    def _make_v2(cls, unified: _Mount, base: str, instance: str) -> CgroupDriver:
        parent = _inside(unified, base)
        top = parent / FIREBOX_GROUP
        wanted = [c for c in ("memory", "pids") if c in _v2_controllers(parent)]
        enable = " ".join(f"+{c}" for c in wanted)
        _write(parent / "cgroup.subtree_control", enable)
        top.mkdir(exist_ok=True)
        _sweep_stale(top)
        _write(top / "cgroup.subtree_control", enable)
        directory = top / instance
        directory.mkdir()
        try:
            _write(directory / "cgroup.subtree_control", enable)
        except OSError:
            os.rmdir(directory)
            raise
        return cls(2, (directory,), tuple(wanted))

    def create(self, name: str, *, memory_bytes: int, max_pids: int | None) -> SandboxCgroup:
        """The sandbox's groups, configured; CgroupsUnavailable-free: OSError on failure."""
        if not name or "/" in name or name.startswith("."):
            raise ValueError(f"bad cgroup name {name!r}")
        # Files are named by formatted strings, not pathlib's operators: this runs once per
        # sandbox started, and each operator parses its parts again (measured, a v1 host's
        # create(): 186-216 -> 143-156 us).
        dirs = [d / name for d in self.instance_dirs]
        made: list[Path] = []
        try:
            for directory in dirs:
                os.mkdir(directory)
                made.append(directory)
            if self.version == 1:
                memory = dirs[0]
                if not self.v1_swappiness_inherited:
                    with contextlib.suppress(OSError):
                        _write(f"{memory}/memory.swappiness", "0")
                _write(f"{memory}/memory.limit_in_bytes", str(memory_bytes))
                if self.v1_memsw:  # absent swap accounting: nothing to cap
                    with contextlib.suppress(OSError):
                        _write(f"{memory}/memory.memsw.limit_in_bytes", str(memory_bytes))
                pids_dir = dirs[1] if len(dirs) > 1 else None
                if pids_dir is not None and max_pids is not None:
                    _write(f"{pids_dir}/pids.max", str(max_pids))
                made_v1 = _V1Sandbox(memory, pids_dir)
                made_v1.memory_limit = memory_bytes
                return made_v1
            directory = dirs[0]
            _write(f"{directory}/memory.max", str(memory_bytes))
            for file, value in (("memory.swap.max", "0"), ("memory.oom.group", "1")):
                if os.path.exists(f"{directory}/{file}"):
                    _write(f"{directory}/{file}", value)
            if max_pids is not None and os.path.exists(f"{directory}/pids.max"):
                _write(f"{directory}/pids.max", str(max_pids))
            made_v2 = _V2Sandbox(directory)
            made_v2.memory_limit = memory_bytes
            return made_v2
        except BaseException:
            for directory in reversed(made):
                _kill_all(directory)
                with contextlib.suppress(OSError):
                    os.rmdir(directory)
            raise

    def close(self) -> None:
        """Remove the instance group (sandboxes should have been removed first; anything left
        is killed)."""
        for directory in self.instance_dirs:
            for sub in [p for p in directory.iterdir() if p.is_dir()] if directory.is_dir() else []:
                _kill_all(sub)
            with contextlib.suppress(OSError):
                _rmdir_tree(directory)


def _v2_controllers(directory: Path) -> set[str]:
    try:
        return set((directory / "cgroup.controllers").read_text().split())
    except OSError:
        return set()


def _sweep_stale(top: Path) -> None:
    """Remove instance groups left by platform processes that are gone (best effort)."""
    try:
        entries = list(top.iterdir())
    except OSError:
        return
    for entry in entries:
        pid, _, _ = entry.name.partition("-")
        if not entry.is_dir() or not pid.isdigit() or os.path.exists(f"/proc/{pid}"):
            continue
        for sub in [entry, *(p for p in entry.rglob("*") if p.is_dir())]:
            _kill_all(sub)
        with contextlib.suppress(OSError):
            _rmdir_tree(entry)
